"""Port of RFC6121Section8_5_3_2_2_PresenceIntegrationTest (XMPP interop tests).

RFC 6121 8.5.3.2.2: presence (no type, unavailable, subscribed, unsubscribe, unsubscribed) sent to
<user@domain/not-online-xxx> of an existing user with resources of the given priorities (or none):
the server ignores it -- no resource of the user gets it, and the sender gets no error.
(The Java error detector looks for a *message* error and so never fires; the RFC's "silently ignore"
means no error, which is what is checked here for the presence.)
"""

import pytest

from rawxmpp import C
from test_sint_helpers import IDS2, VALS2, barrier, desc, rnd, take_all, user_with_resources_or_none

MARK_NS = "urn:xmpp-interop:marker:0"
Q = ("RFC 6121 8.5.3.2.2: \"If the domainpart of the JID contained in the 'to' attribute of an inbound stanza "
     "matches one of the configured domains of the server itself and the JID contained in the 'to' attribute is of "
     "the form <localpart@domainpart/resourcepart>, then the server MUST adhere to the following rules. [...] If no "
     "available resource or connected resource exactly matches the full JID, how the stanza is processed depends on "
     "the stanza type. [...] For a presence stanza with no 'type' attribute or a 'type' attribute of \"unavailable\", "
     "the server MUST silently ignore the stanza. [...] For a presence stanza of type \"subscribed\", "
     "\"unsubscribe\", or \"unsubscribed\", the server MUST ignore the stanza.\"")


@pytest.mark.parametrize("prios", VALS2, ids=IDS2)
@pytest.mark.parametrize("ptype", [None, "unavailable", "subscribed", "unsubscribe", "unsubscribed"],
                         ids=["Available", "Unavailable", "Subscribed", "Unsubscribe", "Unsubscribed"])
def test_presence_to_offline_resource_ignored(server, clients, ptype, prios):
    s = clients.add(server.online("sintnr"))
    bare, pw, res = user_with_resources_or_none(server, clients, prios)
    needle = rnd(9)
    t = f" type='{ptype}'" if ptype else ""
    s.send_raw(f"<presence{t} to='{bare}/not-online-{rnd(7)}'><marker xmlns='{MARK_NS}'>{needle}</marker></presence>")
    barrier(server, clients, s, res)

    def marked(e):
        m = e.find(f"{{{MARK_NS}}}marker")
        return e.tag == C("presence") and m is not None and m.text == needle

    got = {r.jid: take_all(r, lambda e: marked(e) and e.get("from") == s.jid and e.get("type") == ptype) for r in res}
    got = {k: v for k, v in got.items() if v}
    assert not got, f"presence to an offline resource was delivered to other resource(s) {list(got)}"
    errs = take_all(s, lambda e: marked(e) and e.get("type") == "error")
    assert not errs, "the sender got an error for a presence that must be silently ignored: " + desc(errs[0])


test_presence_to_offline_resource_ignored.__doc__ = Q
