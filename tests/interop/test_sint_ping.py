"""Port of Smack's PingIntegrationTest (XEP-0199): pingServer (the server answers a ping to
the domain) and pingAsync (three clients ping the two others' full JIDs at once; every ping
is routed to the client, which answers as Smack's PingManager does, and every answer comes
back: six pongs)."""

from rawxmpp import C, tostring
from test_sint_helpers import rnd

PING = "<ping xmlns='urn:xmpp:ping'/>"


def test_ping_server(server, clients):
    c = clients.add(server.online("sintping"))
    r = c.iq("get", PING, to=server.domain)
    assert r.get("type") == "result", tostring(r)


def test_ping_async(server, clients):
    cons = [clients.add(server.online(f"sintping{i}")) for i in range(3)]
    sent = {}  # iq id -> (sender, target)
    for c in cons:
        for t in cons:
            if t is not c:
                iid = f"ping-{rnd()}"
                sent[iid] = (c, t)
                c.send_raw(f"<iq type='get' id='{iid}' to='{t.jid}'>{PING}</iq>")
    # every target answers the pings it gets (in any order)
    for iid, (c, t) in sent.items():
        req = t.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") == "get", 10,
                     what=f"ping {iid} at {t.jid}")
        assert req.get("from") == c.jid, tostring(req)
        t.send_raw(f"<iq type='result' id='{iid}' to='{req.get('from')}'/>")
    for iid, (c, t) in sent.items():
        r = c.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") in ("result", "error"), 10,
                   what=f"pong {iid}")
        assert r.get("type") == "result" and r.get("from") == t.jid, tostring(r)
