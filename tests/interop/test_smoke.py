from rawxmpp import *

def test_login_and_message(server):
    a = server.online("a")
    b = server.online("b")
    mid = a.message(b.jid, "hello")
    m = b.recv_stanza("message", id=mid)
    assert m.get("from") == a.jid
    server.assert_healthy(a, b)
