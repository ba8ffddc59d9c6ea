"""Port of VersionServerIntegrationTest (XMPP interop tests): XEP-0092 section 2, the server's software version.
Like the Java test: only when the server advertises jabber:iq:version (disco#info on the domain)."""

import pytest

from rawxmpp import new_id
from test_sint_helpers import desc, iq_reply, server_features

NS_VERSION = "jabber:iq:version"


def version_result(server, clients):
    c = clients.add(server.online("sintver"))
    if NS_VERSION not in server_features(c, server.domain):
        pytest.skip("server does not advertise jabber:iq:version (the Java test is then 'not possible')")
    iid = new_id("ver")
    c.send_raw(f"<iq type='get' id='{iid}' to='{server.domain}'><query xmlns='{NS_VERSION}'/></iq>")
    r = iq_reply(c, iid)
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"
    q = r.find(f"{{{NS_VERSION}}}query")
    assert q is not None, desc(r)
    return q


def test_result_contains_name(server, clients):
    """XEP-0092 2: "The following children of the <query/> are allowed in an IQ result: [...] <name/> -- The
    natural-language name of the software. This element is REQUIRED in a result." """
    q = version_result(server, clients)
    assert q.find(f"{{{NS_VERSION}}}name") is not None, "no <name/> in the version result"


def test_result_contains_version(server, clients):
    """XEP-0092 2: "The following children of the <query/> are allowed in an IQ result: [...] <version/> -- The
    specific version of the software. This element is REQUIRED in a result." """
    q = version_result(server, clients)
    assert q.find(f"{{{NS_VERSION}}}version") is not None, "no <version/> in the version result"
