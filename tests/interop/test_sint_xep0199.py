"""Port of PingServerIntegrationTest (XMPP interop tests): XEP-0199 section 4.2, client-to-server ping.
Whether support is advertised is decided, like in the Java test, by disco#info on the server domain."""

import pytest

from rawxmpp import new_id
from test_sint_helpers import PING, desc, iq_reply, server_features

NS_PING = "urn:xmpp:ping"


def targets(c, server):
    return {"ToBareClientJid": c.bare, "ToDomainJid": server.domain, "NoToAddress": None}


@pytest.mark.parametrize("where", ["ToBareClientJid", "ToDomainJid", "NoToAddress"])
def test_ping_server(server, clients, where):
    """XEP-0199 4.2: "A client may also ping its server by sending an IQ-get over the stream between the two
    entities. [...] The client MAY include a 'to' address of the client's bare JID <localpart@domain.tld> or
    [...] MAY include no 'to' address (this signifies that the stanza shall be handled by the server on behalf of
    the connected user's bare JID, which in the case of <iq/> stanzas is equivalent to directing the IQ-get to the
    server itself) [...] If the server supports the ping namespace, it MUST return an IQ-result [...] If the server
    does not support the ping namespace, it MUST return a <service-unavailable/> error [...] The other error
    conditions defined in RFC 6120 could also be returned if appropriate." """
    c = clients.add(server.online("sintping"))
    supported = NS_PING in server_features(c, server.domain)
    to = targets(c, server)[where]
    iid = new_id("ping")
    t = f" to='{to}'" if to else ""
    c.send_raw(f"<iq type='get' id='{iid}'{t}>{PING}</iq>")
    r = iq_reply(c, iid)
    assert r is not None, "no response to the ping"
    if supported:
        assert r.get("type") == "result", "server advertises urn:xmpp:ping but answered: " + desc(r)
    else:
        assert r.get("type") == "error", "server does not advertise urn:xmpp:ping but answered: " + desc(r)
