"""XEP-0065 SOCKS5 bytestreams proxy (`[proxy65]`, `proxy.<domain>`): discovery, the proxy's
network address, both parties connecting over SOCKS5 (RFC 1928) with the XEP's address,
activation by the initiator, a megabyte across each way; bad input: activation of an
unknown stream (`<item-not-found/>`) or with one party only (`<not-allowed/>`), a third
connection for the same stream, SOCKS4, BIND, an IPv4 address, no acceptable method.
"""
import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from conftest import StarlingServer, free_port
from rawxmpp import C, q, stanza_error, tostring

NS_BS = "http://jabber.org/protocol/bytestreams"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def proxy_server(tmp_path_factory, name, more=""):
    """A server with the proxy on a free port of 127.0.0.1 (and the `[proxy65]` settings
    `more`); started, its proxy's port in `proxy_port`."""
    port = free_port()
    s = StarlingServer(str(tmp_path_factory.mktemp(name)),
                       extra_toml=f"[proxy65]\nenabled = true\nbind = \"127.0.0.1\"\nport = {port}\n"
                                  f"host = \"127.0.0.1\"\n{more}")
    s.proxy_port = port
    s.start()
    return s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = proxy_server(tmp_path_factory, "proxy65")
    yield s
    s.stop()


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def socks5(port, address):
    """A SOCKS5 CONNECT to `address` (the XEP's hash); the connected socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert recv_exact(s, 2) == b"\x05\x00"
    a = address.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(a)]) + a + b"\x00\x00")
    reply = recv_exact(s, 5 + len(a) + 2)
    assert reply[:2] == b"\x05\x00", reply
    assert reply[5:5 + len(a)] == a
    return s


def both_ways(i_sock, t_sock, data, back, timeout):
    """Sends `data` from the initiator and `back` from the target at once, each read by a
    thread of its own; returns what (target, initiator) received (None: nothing complete)."""
    got = {}

    def read(sock, n, key):
        sock.settimeout(timeout)
        got[key] = recv_exact(sock, n)
    readers = [threading.Thread(target=read, args=(t_sock, len(data), "t")),
               threading.Thread(target=read, args=(i_sock, len(back), "i"))]
    for th in readers:
        th.start()
    i_sock.sendall(data)
    t_sock.sendall(back)
    for th in readers:
        th.join(timeout)
    return got.get("t"), got.get("i")


def address(sid, initiator, target):
    return hashlib.sha1((sid + initiator + target).encode()).hexdigest()


def closed(sock, timeout=5):
    """The server closed the connection (a FIN, or a reset for unread bytes)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def proxy_jid(server):
    return f"proxy.{server.domain}"


def activate(c, server, sid, target):
    return c.iq("set", f"<query xmlns='{NS_BS}' sid='{sid}'><activate>{target}</activate></query>",
                to=proxy_jid(server))


def test_discovered_and_gives_its_address(server, clients):
    c = clients.add(server.online("pd"))
    items = c.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=server.domain)
    jids = [i.get("jid") for i in items.iter(q(DISCO_ITEMS, "item"))]
    assert proxy_jid(server) in jids, tostring(items)
    info = c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=proxy_jid(server))
    ids = [(i.get("category"), i.get("type")) for i in info.iter(q(DISCO_INFO, "identity"))]
    assert ("proxy", "bytestreams") in ids
    assert NS_BS in [f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))]
    r = c.iq("get", f"<query xmlns='{NS_BS}'/>", to=proxy_jid(server))
    host = r.find(q(NS_BS, "query")).find(q(NS_BS, "streamhost"))
    assert host.get("jid") == proxy_jid(server) and host.get("host") == "127.0.0.1"
    assert host.get("port") == str(server.proxy_port)


def test_bytestream_through_the_proxy(server, clients):
    initiator = clients.add(server.online("pi"))
    target = clients.add(server.online("pt"))
    sid = "s" + os.urandom(6).hex()
    addr = address(sid, initiator.jid, target.jid)
    t_sock = socks5(server.proxy_port, addr)      # the target connects first
    i_sock = socks5(server.proxy_port, addr)      # then the initiator
    # bytes sent before activation are kept, not dropped (§8.1)
    i_sock.sendall(b"early")
    r = activate(initiator, server, sid, target.jid)
    assert r.get("type") == "result", tostring(r)
    assert recv_exact(t_sock, 5) == b"early"
    data = os.urandom(1 << 20)
    back = os.urandom(1 << 20)
    got_t, got_i = both_ways(i_sock, t_sock, data, back, 30)
    assert got_t == data and got_i == back
    i_sock.close()
    t_sock.settimeout(10)
    assert t_sock.recv(10) == b"", "the other side is closed with it"
    t_sock.close()
    # activated once: the stream is gone from the proxy
    r = activate(initiator, server, sid, target.jid)
    assert stanza_error(r)[1] == "item-not-found"
    server.assert_healthy(initiator, target)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    s = proxy_server(tmp_path_factory, "proxy65-limited", "max_bytes_per_second = 32768\n")
    yield s
    s.stop()


def test_transfers_keep_to_the_bandwidth_limit(limited, clients):
    """`[proxy65] max_bytes_per_second`: each direction of a transfer moves at most that many
    bytes a second (96 KiB at 32 KiB/s take at least ~2.5 s, both ways at once), and every
    byte arrives; a limit is a floor on the time, never a loss."""
    initiator = clients.add(limited.online("li"))
    target = clients.add(limited.online("lt"))
    sid = "l" + os.urandom(6).hex()
    addr = address(sid, initiator.jid, target.jid)
    t_sock = socks5(limited.proxy_port, addr)
    i_sock = socks5(limited.proxy_port, addr)
    assert activate(initiator, limited, sid, target.jid).get("type") == "result"
    data, back = os.urandom(96 << 10), os.urandom(96 << 10)
    start = time.monotonic()
    got_t, got_i = both_ways(i_sock, t_sock, data, back, 40)
    took = time.monotonic() - start
    assert got_t == data and got_i == back
    assert took >= 2.4, f"96 KiB each way in {took:.2f} s: the limit was not applied"
    i_sock.close()
    t_sock.close()
    limited.assert_healthy(initiator, target)


def test_activation_errors(server, clients):
    initiator = clients.add(server.online("pe"))
    target = clients.add(server.online("pf"))
    # nobody connected: item-not-found
    r = activate(initiator, server, "nosuchsid", target.jid)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    # one party only: not-allowed
    sid = "one" + os.urandom(4).hex()
    lone = socks5(server.proxy_port, address(sid, initiator.jid, target.jid))
    r = activate(initiator, server, sid, target.jid)
    assert stanza_error(r)[1] == "not-allowed", tostring(r)
    # someone else cannot activate it (the hash has the initiator's JID): item-not-found
    second = socks5(server.proxy_port, address(sid, initiator.jid, target.jid))
    r = activate(target, server, sid, target.jid)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    # a third connection for the same stream is closed
    third = socket.create_connection(("127.0.0.1", server.proxy_port), timeout=10)
    third.sendall(b"\x05\x01\x00")
    assert recv_exact(third, 2) == b"\x05\x00"
    a = address(sid, initiator.jid, target.jid).encode()
    third.sendall(b"\x05\x01\x00\x03" + bytes([len(a)]) + a + b"\x00\x00")
    assert closed(third), "a third connection for one stream is refused"
    for s in (lone, second, third):
        s.close()
    # malformed requests
    r = initiator.iq("set", f"<query xmlns='{NS_BS}'/>", to=proxy_jid(server))
    assert stanza_error(r)[1] == "bad-request"
    r = activate(initiator, server, "x", "not a jid@@")
    assert stanza_error(r)[1] == "jid-malformed"
    server.assert_healthy(initiator, target)


def test_bad_socks5(server):
    def conn():
        s = socket.create_connection(("127.0.0.1", server.proxy_port), timeout=5)
        return s
    # SOCKS4: closed
    s = conn()
    s.sendall(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")
    assert closed(s)
    # no acceptable method (only username/password): X'FF', closed
    s = conn()
    s.sendall(b"\x05\x01\x02")
    assert recv_exact(s, 2) == b"\x05\xff"
    assert closed(s)
    # BIND: command not supported (7)
    s = conn()
    s.sendall(b"\x05\x01\x00")
    recv_exact(s, 2)
    s.sendall(b"\x05\x02\x00\x03\x28" + b"a" * 40 + b"\x00\x00")
    assert recv_exact(s, 2) == b"\x05\x07"
    # an IPv4 address: address type not supported (8)
    s = conn()
    s.sendall(b"\x05\x01\x00")
    recv_exact(s, 2)
    s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert recv_exact(s, 2) == b"\x05\x08"
    # a name that is not the XEP's hash: refused (4)
    s = conn()
    s.sendall(b"\x05\x01\x00")
    recv_exact(s, 2)
    s.sendall(b"\x05\x01\x00\x03\x0bexample.com\x00\x50")
    assert recv_exact(s, 2) == b"\x05\x04"
    server.assert_healthy()
