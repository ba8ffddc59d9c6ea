"""Port of Smack's FileTransferIntegrationTest (XEP-0096 SI file transfer, XEP-0047 IBB,
XEP-0065 SOCKS5 bytestreams): fileTransferTest and ibbFileTransferTest. 20 KiB of random
text go from conOne to conTwo's full JID and arrive intact.

Every byte of these protocols goes through the server as IQs between two full JIDs (the SI
offer and its answer with the chosen stream method, the IBB open / data / close, the
bytestreams offer), except SOCKS5's data, which goes directly between the clients (Smack's
default offers its own local address as a streamhost; the server here has no proxy65, which
Smack looks for in the domain's disco#items and does without). Both clients are played by
this test, as Smack's FileTransferManager and its negotiators play them.
"""

import base64
import hashlib
import os
import socket
import threading

from rawxmpp import C, q, tostring
from test_sint_helpers import rnd

NS_SI = "http://jabber.org/protocol/si"
NS_FT = "http://jabber.org/protocol/si/profile/file-transfer"
NS_FNEG = "http://jabber.org/protocol/feature-neg"
NS_DATA = "jabber:x:data"
NS_IBB = "http://jabber.org/protocol/ibb"
NS_BS = "http://jabber.org/protocol/bytestreams"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_INFO = "http://jabber.org/protocol/disco#info"

DATA = os.urandom(1024 * 4 * 5 * 3 // 4 + 1)  # random bytes ...
DATA = base64.b64encode(DATA)[:1024 * 4 * 5]   # ... as Smack's 20 KiB random string


def relay(src, dst, iid, build_reply):
    """src's IQ with id iid arrives at dst, which answers with build_reply(req); returns the
    answer as src received it."""
    req = dst.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what=f"iq {iid} at {dst.jid}")
    assert req.get("from") == src.jid, tostring(req)
    dst.send_raw(build_reply(req))
    r = src.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what=f"answer to {iid}")
    assert r.get("from") == dst.jid, tostring(r)
    return req, r


def offer(one, two, methods):
    """XEP-0096 3: the SI offer with the stream methods to choose from; conTwo accepts with
    the first it supports from `methods` (IBB when both are offered and ibb_only)."""
    sid = f"jsi_{rnd(12)}"
    iid = f"si-{rnd()}"
    opts = "".join(f"<option><value>{m}</value></option>" for m in methods)
    one.send_raw(f"<iq type='set' id='{iid}' to='{two.jid}'><si xmlns='{NS_SI}' id='{sid}' mime-type='text/plain' "
                 f"profile='{NS_FT}'><file xmlns='{NS_FT}' name='hello.txt' size='{len(DATA)}'><desc>A greeting</desc>"
                 f"</file><feature xmlns='{NS_FNEG}'><x xmlns='{NS_DATA}' type='form'><field var='stream-method' "
                 f"type='list-single'>{opts}</field></x></feature></si></iq>")

    def accept(req):
        si = req.find(q(NS_SI, "si"))
        f = si.find(q(NS_FT, "file"))
        assert (f.get("name"), int(f.get("size")), f.findtext(q(NS_FT, "desc"))) == \
            ("hello.txt", len(DATA), "A greeting"), tostring(req)
        offered = [v.text for v in si.iter(q(NS_DATA, "value"))]
        assert offered == list(methods), tostring(req)
        return (f"<iq type='result' id='{iid}' to='{req.get('from')}'><si xmlns='{NS_SI}'><feature xmlns='{NS_FNEG}'>"
                f"<x xmlns='{NS_DATA}' type='submit'><field var='stream-method'><value>{methods[0]}</value></field>"
                "</x></feature></si></iq>")

    _, r = relay(one, two, iid, accept)
    assert r.get("type") == "result", tostring(r)
    chosen = r.find(q(NS_SI, "si")).find(q(NS_FNEG, "feature")).findtext(f".//{{{NS_DATA}}}value")
    assert chosen == methods[0], tostring(r)
    return sid


def ok(req):
    return f"<iq type='result' id='{req.get('id')}' to='{req.get('from')}'/>"


def test_ibb_file_transfer(server, clients):
    """FileTransferIntegrationTest.ibbFileTransferTest (FileTransferNegotiator.IBB_ONLY): the
    SI offer names only IBB; conOne opens an IBB session (block-size 4096), sends the data in
    <data/> IQs with seq 0, 1, ... (each answered by conTwo), closes; conTwo has the 20 KiB."""
    one = clients.add(server.online("sintft1"))
    two = clients.add(server.online("sintft2"))
    sid = offer(one, two, [NS_IBB])
    block = 4096
    iid = f"ibb-open-{rnd()}"
    one.send_raw(f"<iq type='set' id='{iid}' to='{two.jid}'><open xmlns='{NS_IBB}' block-size='{block}' sid='{sid}' "
                 "stanza='iq'/></iq>")
    req, r = relay(one, two, iid, ok)
    assert r.get("type") == "result" and req.find(q(NS_IBB, "open")).get("sid") == sid, tostring(req)
    got = b""
    for seq, start in enumerate(range(0, len(DATA), block)):
        chunk = base64.b64encode(DATA[start:start + block]).decode()
        iid = f"ibb-{seq}-{rnd(4)}"
        one.send_raw(f"<iq type='set' id='{iid}' to='{two.jid}'><data xmlns='{NS_IBB}' seq='{seq}' sid='{sid}'>"
                     f"{chunk}</data></iq>")
        req, r = relay(one, two, iid, ok)
        d = req.find(q(NS_IBB, "data"))
        assert int(d.get("seq")) == seq and d.get("sid") == sid, tostring(req)
        got += base64.b64decode(d.text)
        assert r.get("type") == "result", tostring(r)
    iid = f"ibb-close-{rnd()}"
    one.send_raw(f"<iq type='set' id='{iid}' to='{two.jid}'><close xmlns='{NS_IBB}' sid='{sid}'/></iq>")
    relay(one, two, iid, ok)
    assert got == DATA, "Received data does not match"


def _socks5_host(expected_addr, out):
    """A streamhost of conOne's own (XEP-0065 5.3.2 direct connection), as Smack offers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)

    def run():
        try:
            conn, _ = srv.accept()
            conn.settimeout(10)
            assert conn.recv(3) == b"\x05\x01\x00"
            conn.sendall(b"\x05\x00")
            head = conn.recv(5)
            assert head[:4] == b"\x05\x01\x00\x03"
            addr = conn.recv(head[4] + 2)[:-2]
            assert addr.decode() == expected_addr, addr
            conn.sendall(b"\x05\x00\x00\x03" + bytes([len(addr)]) + addr + b"\x00\x00")
            out["conn"] = conn
        except Exception as e:  # reported by the test
            out["error"] = e
        finally:
            srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def test_file_transfer(server, clients):
    """FileTransferIntegrationTest.fileTransferTest (Smack's default: SOCKS5 first, IBB as
    fallback): conOne looks for a proxy in the domain's disco#items (each item's disco#info
    for proxy/bytestreams; Starling has none), offers SI with both methods, conTwo picks
    bytestreams; conOne's bytestreams offer names its own streamhost; conTwo connects to it
    (SOCKS5 with DST.ADDR = SHA-1(sid + initiator + target)) and reports streamhost-used; the
    20 KiB arrive over that connection."""
    one = clients.add(server.online("sintft1"))
    two = clients.add(server.online("sintft2"))
    items = one.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=server.domain)
    assert items.get("type") == "result", tostring(items)
    for it in items.iter(q(NS_ITEMS, "item")):
        info = one.iq("get", f"<query xmlns='{NS_INFO}'/>", to=it.get("jid"))
        assert info.get("type") in ("result", "error"), tostring(info)
    sid = offer(one, two, [NS_BS, NS_IBB])
    dst = hashlib.sha1(f"{sid}{one.jid}{two.jid}".encode()).hexdigest()
    out = {}
    port, t = _socks5_host(dst, out)
    iid = f"bs-{rnd()}"
    one.send_raw(f"<iq type='set' id='{iid}' to='{two.jid}'><query xmlns='{NS_BS}' sid='{sid}' mode='tcp'>"
                 f"<streamhost jid='{one.jid}' host='127.0.0.1' port='{port}'/></query></iq>")

    def connect(req):
        sh = req.find(q(NS_BS, "query")).find(q(NS_BS, "streamhost"))
        s = socket.create_connection((sh.get("host"), int(sh.get("port"))), timeout=10)
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(dst)]) + dst.encode() + b"\x00\x00")
        reply = s.recv(5 + len(dst) + 2)
        assert reply[:2] == b"\x05\x00", reply
        out["target"] = s
        return (f"<iq type='result' id='{iid}' to='{req.get('from')}'><query xmlns='{NS_BS}' sid='{sid}'>"
                f"<streamhost-used jid='{sh.get('jid')}'/></query></iq>")

    _, r = relay(one, two, iid, connect)
    assert r.get("type") == "result", tostring(r)
    used = r.find(q(NS_BS, "query")).find(q(NS_BS, "streamhost-used"))
    assert used is not None and used.get("jid") == one.jid, tostring(r)
    t.join(10)
    assert "error" not in out, out.get("error")
    out["conn"].sendall(DATA)
    out["conn"].close()
    got = b""
    while len(got) < len(DATA):
        chunk = out["target"].recv(65536)
        if not chunk:
            break
        got += chunk
    out["target"].close()
    assert got == DATA, "Received data does not match"
