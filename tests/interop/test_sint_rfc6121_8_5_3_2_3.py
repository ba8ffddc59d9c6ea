"""Port of RFC6121Section8_5_3_2_3_IqIntegrationTest (XMPP interop tests).

RFC 6121 8.5.3.2.3: an IQ get/set to <user@domain/not-online-xxx> of an existing user that has
resources of the given priorities (or none): not delivered to any resource, and answered by the
server with <service-unavailable/> -- for a made-up namespace and for jabber:iq:roster alike.
"""

import pytest

from rawxmpp import C, NS_ROSTER, new_id
from test_sint_helpers import (IDS, VALS, TEST_NS, desc, error_condition, iq_reply, rnd, stop_markers, take_all,
                               user_with_resources_or_none)

QUOTE = """RFC 6121 8.5.3.2.3: "If the domainpart of the JID contained in the 'to' attribute of an inbound stanza
matches one of the configured domains of the server itself and the JID contained in the 'to' attribute is of the
form <localpart@domainpart/resourcepart>, then the server MUST adhere to the following rules. [...] If no
available resource or connected resource exactly matches the full JID, how the stanza is processed depends on the
stanza type. [...] For an IQ stanza, the server MUST return a <service-unavailable/> stanza error to the sender." """

P = [("NoResource", [])] + list(zip(IDS, VALS))
PAYLOADS = {"Unsupported": f"<test xmlns='{TEST_NS}'/>", "Supported": f"<query xmlns='{NS_ROSTER}'/>"}


@pytest.mark.parametrize("prios", [p[1] for p in P], ids=[p[0] for p in P])
@pytest.mark.parametrize("iqtype", ["get", "set"])
@pytest.mark.parametrize("kind", ["Unsupported", "Supported"])
def test_iq_to_offline_resource(server, clients, kind, iqtype, prios):
    s = clients.add(server.online("sintnr"))
    bare, pw, res = user_with_resources_or_none(server, clients, prios)
    iid = new_id("iqnr")
    s.send_raw(f"<iq type='{iqtype}' id='{iid}' to='{bare}/not-online-{rnd(7)}'>{PAYLOADS[kind]}</iq>")
    r = iq_reply(s, iid, timeout=4)
    if res:
        stop_markers(s, res)
    delivered = [x.jid for x in res if take_all(x, lambda e: e.tag == C("iq") and e.get("id") == iid)]
    assert not delivered, f"IQ to an offline resource was delivered to {delivered}"
    assert r is not None, "no reply to an IQ sent to an offline resource"
    assert r.get("type") == "error", "expected an IQ error: " + desc(r)
    assert error_condition(r) == "service-unavailable", desc(r)


test_iq_to_offline_resource.__doc__ = QUOTE
