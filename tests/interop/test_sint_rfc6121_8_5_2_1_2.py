"""Port of RFC6121Section8_5_2_1_2_PresenceIntegrationTest (XMPP interop tests).

RFC 6121 8.5.2.1.2: directed presence with no type / of type 'unavailable' sent to the bare JID
of a user with available resources of the given priorities (the sender has no subscription).
The Java suite tags the stanza with a marker extension; here: <marker xmlns='urn:xmpp-interop:marker:0'/>.
"""

import time

import pytest

from rawxmpp import C
from test_sint_helpers import IDS, VALS, rnd, take_all, user_resources

MARK_NS = "urn:xmpp-interop:marker:0"


@pytest.mark.parametrize("prios", VALS, ids=IDS)
@pytest.mark.parametrize("ptype", [None, "unavailable"], ids=["Available", "Unavailable"])
def test_presence_to_bare_jid(server, clients, ptype, prios):
    """RFC 6121 8.5.2.1.2: "If the JID contained in the 'to' attribute is of the form <localpart@domainpart>,
    then the server MUST adhere to the following rules. [...] If there is at least one available resource
    [...], how the stanza is processed depends on the stanza type. [...] For a presence stanza with no type
    or of type "unavailable", the server MUST deliver it to all available resources. [...] In all cases, the
    server MUST NOT rewrite the 'to' attribute (i.e., it MUST leave it as <localpart@domainpart> rather than
    change it to <localpart@domainpart/resourcepart>)." """
    s = clients.add(server.online("sintpr"))
    bare, pw, res = user_resources(server, clients, prios)
    needle = rnd(9)
    t = f" type='{ptype}'" if ptype else ""
    s.send_raw(f"<presence{t} to='{bare}'><marker xmlns='{MARK_NS}'>{needle}</marker></presence>")

    def pred(e):
        m = e.find(f"{{{MARK_NS}}}marker")
        return (e.tag == C("presence") and e.get("from") == s.jid and e.get("type") == ptype
                and m is not None and m.text == needle)

    received = {}
    deadline = time.monotonic() + 5
    for r in res:
        try:
            received[r.jid] = r.recv(pred, max(0.05, deadline - time.monotonic()), what="directed presence")
        except AssertionError:
            got = take_all(r, pred)
            if got:
                received[r.jid] = got[0]
    missing = [r.jid for r in res if r.jid not in received]
    assert not missing, f"presence to the bare JID not delivered to available resource(s) {missing}"
    bad = {k: v.get("to") for k, v in received.items() if v.get("to") != bare}
    assert not bad, f"the server rewrote 'to' (MUST stay {bare}): {bad}"
