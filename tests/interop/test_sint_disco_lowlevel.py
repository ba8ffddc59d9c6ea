"""Port of the server extensions' ServiceDiscoveryLowLevelIntegrationTest (XEP-0030 3.1,
4.1: a disco#info / disco#items request to the bare JID of a hosted account is answered by
the server on behalf of the account, with a result or an error): conTwo is disconnected
first, so the answer can only come from the server; it must come from conTwo's bare JID.
Beyond the Java: the same while conTwo is online (the server still answers, the client is
not asked)."""

import pytest

from rawxmpp import C, q, tostring
from test_sint_helpers import rnd


@pytest.mark.parametrize("ns", ["http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items"],
                         ids=["info", "items"])
@pytest.mark.parametrize("online", [False, True], ids=["conTwo-offline", "conTwo-online"])
def test_server_response_for_request_to_bare_jid(server, clients, ns, online):
    one = clients.add(server.online("sintdl1"))
    two = clients.add(server.online("sintdl2"))
    if not online:
        two.close()
    iid = f"dl-{rnd()}"
    one.send_raw(f"<iq type='get' id='{iid}' to='{two.bare}'><query xmlns='{ns}'/></iq>")
    r = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what="the server's answer")
    assert r.get("type") in ("result", "error"), tostring(r)
    assert r.get("from") == two.bare, tostring(r)
    if online:
        two.expect_nothing(lambda e: e.tag == C("iq") and e.get("id") == iid, 0.3, what="the query")
