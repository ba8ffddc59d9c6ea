"""RFC 7395 XMPP over WebSocket, with aiohttp's WebSocket client and raw XML, over wss
(the server's TLS) and over a plain listener (the one a TLS-terminating proxy would use).

Every message is parsed on its own (ElementTree): RFC 7395 3.3.3 makes each a complete
XML document, so namespaces must be declared in it.

- XEP-0156 host-meta (XRD and JSON) names the endpoint;
- the whole login: <open/>, features without STARTTLS (3.8), SASL PLAIN, <open/> again
  (stream restart, 3.5), bind, presence, a message each way with a client on the TCP
  port, ping, <close/> answered with <close/> and the WebSocket close;
- stream management over WebSocket, and a session lost on WebSocket resumed over TCP;
- bad input: no 'xmpp' subprotocol (HTTP 400, 3.1), another path (404), a message that
  is not well-formed XML (<not-well-formed/> stream error, then <close/>), a binary
  message (the connection is closed): each affects only its own connection.
"""

import asyncio
import base64
import xml.etree.ElementTree as ET

import aiohttp
import pytest

from rawxmpp import C, new_id, q

pytestmark = pytest.mark.starling_only

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SM = "urn:xmpp:sm:3"
PATH = "/xmpp-websocket"


@pytest.fixture(scope="module", params=["wss", "ws"])
def ws_server(request, tmp_path_factory):
    from conftest import free_port, make_server
    s = make_server(tmp_path_factory, "ws" + request.param)
    s.ws_port = free_port()
    s.ws_scheme = request.param
    tls = "true" if request.param == "wss" else "false"
    with open(s.config_path, "a") as f:
        f.write(f"\n[websocket]\nenabled = true\nport = {s.ws_port}\ntls = {tls}\n")
    s.start()
    yield s
    s.stop()


def url(server, path=PATH):
    return f"{server.ws_scheme}://127.0.0.1:{server.ws_port}{path}"


class Ws:
    """One WebSocket XMPP client: each received text message parsed on its own."""

    def __init__(self, session, ws):
        self.session, self.ws = session, ws

    @classmethod
    async def connect(cls, server, protocols=("xmpp",), path=PATH):
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url(server, path), protocols=protocols, ssl=False,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def send(self, xml):
        await self.ws.send_str(xml)

    async def recv(self, timeout=10):
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return msg
        return ET.fromstring(msg.data)

    async def recv_el(self, tag, timeout=10):
        while True:
            el = await self.recv(timeout)
            assert isinstance(el, ET.Element), f"expected {tag}, got {el}"
            if el.tag == tag:
                return el

    async def open(self, domain):
        await self.send(f"<open xmlns='{NS_FRAMING}' to='{domain}' version='1.0'/>")
        op = await self.recv()
        assert isinstance(op, ET.Element) and op.tag == q(NS_FRAMING, "open"), op
        assert op.get("from") == domain and op.get("id") and op.get("version") == "1.0", op.attrib
        features = await self.recv()
        assert features.tag == q(NS_STREAMS, "features"), features
        return features

    async def login(self, server, user, password, resource="web"):
        features = await self.open(server.domain)
        # 3.8: no STARTTLS over WebSocket
        assert features.find(q("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is None
        mechs = [m.text for m in features.iter(q(NS_SASL, "mechanism"))]
        assert "PLAIN" in mechs, mechs
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        ok = await self.recv()
        assert ok.tag == q(NS_SASL, "success"), ET.tostring(ok)
        features = await self.open(server.domain)
        assert features.find(q(NS_BIND, "bind")) is not None
        await self.send(f"<iq type='set' id='b1' xmlns='jabber:client'><bind xmlns='{NS_BIND}'>"
                        f"<resource>{resource}</resource></bind></iq>")
        r = await self.recv()
        assert r.tag == C("iq") and r.get("type") == "result", ET.tostring(r)
        self.jid = r.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}").text
        return self.jid

    async def close(self):
        await self.ws.close()
        await self.session.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_login_chat_and_close(ws_server, clients):
    server = ws_server
    tcp = clients.add(server.online("wst"))
    jid, user, pw = server.new_user("wsu")

    async def scenario():
        c = await Ws.connect(server)
        assert c.ws.protocol == "xmpp"
        try:
            full = await c.login(server, user, pw)
            assert full == f"{jid}/web"
            await c.send("<presence xmlns='jabber:client'/>")
            await c.send(f"<message xmlns='jabber:client' to='{tcp.jid}' type='chat' id='m1'>"
                         "<body>from the web</body></message>")
            m = await asyncio.to_thread(tcp.recv_stanza, "message", id="m1")
            assert m.findtext(C("body")) == "from the web" and m.get("from") == full
            mid = await asyncio.to_thread(tcp.message, full, "to the web & back <3")
            got = await c.recv_el(C("message"))
            assert got.get("id") == mid and got.findtext(C("body")) == "to the web & back <3"
            await c.send("<iq xmlns='jabber:client' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
            pong = await c.recv_el(C("iq"))
            assert pong.get("id") == "p1" and pong.get("type") == "result"
            await c.send(f"<close xmlns='{NS_FRAMING}'/>")
            closed = await c.recv_el(q(NS_FRAMING, "close"))
            assert closed is not None
            end = await c.recv()
            assert not isinstance(end, ET.Element) and end.type in (
                aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), end
        finally:
            await c.close()

    run(scenario())
    server.assert_healthy(tcp)


def test_session_lost_on_websocket_is_resumed_over_tcp(ws_server, clients):
    server = ws_server
    tcp = clients.add(server.online("wst"))
    jid, user, pw = server.new_user("wsr")

    async def scenario():
        c = await Ws.connect(server)
        full = await c.login(server, user, pw, resource="tab")
        await c.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
        enabled = await c.recv_el(q(NS_SM, "enabled"))
        await c.send("<presence xmlns='jabber:client'/>")
        # the tab goes away without a word
        await c.ws.close()
        await c.session.close()
        return full, enabled.get("id")

    full, previd = run(scenario())
    mid = tcp.message(full, "while you were away")
    r = server.client()
    r.start()
    r.auth(user, pw)
    r.send_raw(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>")
    resumed = r.recv(lambda e: e.tag in (q(NS_SM, "resumed"), q(NS_SM, "failed")), what="resumed")
    clients.add(r)
    assert resumed.tag == q(NS_SM, "resumed"), ET.tostring(resumed)
    m = r.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="the message")
    assert m.findtext(C("body")) == "while you were away"


def test_the_xmpp_subprotocol_is_required(ws_server):
    async def scenario():
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await Ws.connect(ws_server, protocols=())
        assert e.value.status == 400
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await Ws.connect(ws_server, path="/elsewhere")
        assert e.value.status == 404

    run(scenario())
    ws_server.assert_healthy()


def test_host_meta_names_the_endpoint(ws_server):
    """XEP-0156: web clients find the WebSocket endpoint in host-meta (XRD and JSON)."""
    server = ws_server
    base = f"{'https' if server.ws_scheme == 'wss' else 'http'}://127.0.0.1:{server.ws_port}"

    async def scenario():
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/.well-known/host-meta", ssl=False) as r:
                assert r.status == 200
                xrd = ET.fromstring(await r.text())
                links = xrd.findall("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
                assert [(link.get("rel"), link.get("href")) for link in links] == [
                    ("urn:xmpp:alt-connections:websocket", f"wss://127.0.0.1:{server.ws_port}{PATH}")]
            async with s.get(base + "/.well-known/host-meta.json", ssl=False) as r:
                assert r.status == 200
                doc = await r.json(content_type=None)
                assert doc["links"][0]["rel"] == "urn:xmpp:alt-connections:websocket"

    run(scenario())


def test_not_well_formed_xml_is_a_stream_error(ws_server, clients):
    async def scenario():
        c = await Ws.connect(ws_server)
        try:
            await c.open(ws_server.domain)
            await c.send("<message xmlns='jabber:client'><body>unclosed</message>")
            err = await c.recv_el(q(NS_STREAMS, "error"))
            assert err.find(q("urn:ietf:params:xml:ns:xmpp-streams", "not-well-formed")) is not None, \
                ET.tostring(err)
            await c.recv_el(q(NS_FRAMING, "close"))
        finally:
            await c.close()

    run(scenario())
    ws_server.assert_healthy()


def test_a_binary_message_closes_only_that_connection(ws_server, clients):
    other = clients.add(ws_server.online("wso"))

    async def scenario():
        c = await Ws.connect(ws_server)
        try:
            await c.open(ws_server.domain)
            await c.ws.send_bytes(b"<presence/>")
            for _ in range(5):
                msg = await c.recv()
                if not isinstance(msg, ET.Element):
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                        aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR), msg
                    return
            pytest.fail("the connection stayed open after a binary message")
        finally:
            await c.close()

    run(scenario())
    ws_server.assert_healthy(other)


def test_many_stanzas_in_one_write_arrive_as_separate_messages(ws_server, clients):
    """The server writes queued stanzas in one go; over WebSocket each is its own message."""
    tcp = clients.add(ws_server.online("wsb"))
    jid, user, pw = ws_server.new_user("wsm")

    async def scenario():
        c = await Ws.connect(ws_server)
        try:
            full = await c.login(ws_server, user, pw)
            await c.send("<presence xmlns='jabber:client'/>")
            ids = [new_id() for _ in range(20)]
            for i in ids:
                tcp.send_raw(f"<message to='{full}' id='{i}' type='chat'><body>{i}</body></message>")
            got = []
            while len(got) < len(ids):
                el = await c.recv()
                assert isinstance(el, ET.Element), el
                if el.tag == C("message"):
                    got.append(el.get("id"))
            assert got == ids
        finally:
            await c.close()

    run(scenario())


def test_sasl2_and_bind2_over_websocket(ws_server, clients):
    """XEP-0388/0386 over WebSocket: <success/> and the features after it (no restart, no
    new <open/>) arrive as two messages, each a complete document."""
    server = ws_server
    tcp = clients.add(server.online("ws2t"))
    jid, user, pw = server.new_user("ws2")
    ns2 = "urn:xmpp:sasl:2"

    async def scenario():
        c = await Ws.connect(server)
        try:
            features = await c.open(server.domain)
            assert features.find(q(ns2, "authentication")) is not None, ET.tostring(features)
            token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
            await c.send(f"<authenticate xmlns='{ns2}' mechanism='PLAIN'>"
                         f"<initial-response>{token}</initial-response>"
                         "<bind xmlns='urn:xmpp:bind:0'><tag>Web</tag></bind></authenticate>")
            ok = await c.recv()
            assert ok.tag == q(ns2, "success"), ET.tostring(ok)
            full = ok.findtext(q(ns2, "authorization-identifier"))
            assert full.startswith(jid + "/Web/"), full
            assert ok.find(q("urn:xmpp:bind:0", "bound")) is not None
            after = await c.recv()
            assert after.tag == q(NS_STREAMS, "features"), ET.tostring(after)
            mid = await asyncio.to_thread(tcp.message, full, "to the bound web client")
            got = await c.recv_el(C("message"))
            assert got.get("id") == mid
        finally:
            await c.close()

    run(scenario())
    server.assert_healthy(tcp)
