"""Interop with a real client library (slixmpp): login over STARTTLS, roster, messages, ping."""

import asyncio

import pytest

slixmpp = pytest.importorskip("slixmpp")


def make_client(server, jid, password):
    c = slixmpp.ClientXMPP(jid, password)
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0199")
    c.register_plugin("xep_0092")
    # the server uses a self-signed certificate: no verification in tests
    c.ssl_context.check_hostname = False
    import ssl
    c.ssl_context.verify_mode = ssl.CERT_NONE
    return c


async def connected(c, server):
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.add_event_handler("failed_auth", lambda _: started.done() or started.set_exception(AssertionError("auth failed")))
    c.connect(server.host, server.c2s_port)
    await asyncio.wait_for(started, 15)
    c.send_presence()
    await c.get_roster()


def test_slixmpp_chat_and_disco(server):
    ajid, _, apw = server.new_user("slixa")
    bjid, _, bpw = server.new_user("slixb")

    async def scenario():
        a = make_client(server, ajid, apw)
        b = make_client(server, bjid, bpw)
        got = asyncio.get_event_loop().create_future()
        b.add_event_handler("message", lambda m: got.done() or got.set_result(m))
        await connected(a, server)
        await connected(b, server)
        a.send_message(mto=b.boundjid.full, mbody="hello from slixmpp", mtype="chat")
        m = await asyncio.wait_for(got, 10)
        assert m["body"] == "hello from slixmpp"
        assert m["from"] == a.boundjid
        info = await a["xep_0030"].get_info(jid=server.domain, timeout=10)
        assert "urn:xmpp:ping" in info["disco_info"]["features"]
        rtt = await a["xep_0199"].ping(jid=server.domain, timeout=10)
        assert rtt is not None
        for c in (a, b):
            c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_slixmpp_subscription(server):
    ajid, _, apw = server.new_user("slixc")
    bjid, _, bpw = server.new_user("slixd")

    async def scenario():
        a = make_client(server, ajid, apw)
        b = make_client(server, bjid, bpw)
        b.auto_authorize = True
        b.auto_subscribe = True
        await connected(a, server)
        await connected(b, server)
        avail = asyncio.get_event_loop().create_future()
        a.add_event_handler("got_online", lambda p: p["from"].bare == bjid and (avail.done() or avail.set_result(p)))
        a.send_presence_subscription(pto=bjid)
        await asyncio.wait_for(avail, 10)
        for _ in range(50):
            if a.client_roster[bjid]["subscription"] in ("to", "both"):
                break
            await asyncio.sleep(0.1)
        assert a.client_roster[bjid]["subscription"] in ("to", "both")
        for c in (a, b):
            c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 40))
