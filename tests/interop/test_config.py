"""Limits and behaviour set from the config file, the certificate, restarts."""

import hashlib
import http.client
import socket
import ssl
import time
import urllib.parse

import pytest

from conftest import free_port, make_server
from rawxmpp import C, q, tostring


def cert_fingerprint(server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((server.host, server.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def test_certificate_and_accounts_persist_across_restart(fresh_server, clients):
    """The certificate generated at first start is kept, and so are accounts and data."""
    fp = cert_fingerprint(fresh_server)
    c = clients.add(fresh_server.online("keep"))
    r = c.iq("set", "<vCard xmlns='vcard-temp'><FN>Persisted</FN></vCard>")
    assert r.get("type") == "result"
    c.close()
    fresh_server.restart()
    assert cert_fingerprint(fresh_server) == fp
    d = clients.add(fresh_server.login(c.bare, c.password))
    r = d.iq("get", "<vCard xmlns='vcard-temp'/>")
    assert r.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Persisted"


def test_default_config_starts_and_serves(default_server, clients):
    """`starling serve` without a config file: a working server with STARTTLS and login."""
    a = clients.add(default_server.online("d1"))
    b = clients.add(default_server.online("d2"))
    mid = a.message(b.jid, "defaults")
    assert b.recv_stanza("message", id=mid).findtext(C("body")) == "defaults"


@pytest.mark.starling_only
def test_configured_max_stanza_size(tight_server, clients):
    good = clients.add(tight_server.online("good"))
    a = clients.add(tight_server.online("a"))
    mid = a.message(good.jid, "y" * 8000)
    assert good.recv_stanza("message", id=mid) is not None
    a.message(good.jid, "y" * 20000)
    assert a.expect_stream_error() == "policy-violation"
    tight_server.assert_healthy(good)


@pytest.mark.starling_only
def test_idle_timeout(tight_server, clients):
    """An authenticated client that sends nothing at all is closed after idle_timeout_secs;
    whitespace keepalives keep a session alive."""
    idle = clients.add(tight_server.online("idle"))
    alive = clients.add(tight_server.online("alive"))
    t0 = time.monotonic()
    deadline = t0 + 6
    closed_at = None
    while time.monotonic() < deadline:
        alive.send_raw(" ")
        try:
            idle._read_some(time.monotonic() + 0.5)
        except Exception:
            closed_at = time.monotonic() - t0
            break
    assert closed_at is not None, "idle client not closed within 6 s (idle_timeout_secs = 2)"
    assert closed_at >= 1.5, f"closed after {closed_at:.1f}s, before the idle timeout"
    assert idle.stream_error in (None, "connection-timeout"), idle.stream_error
    assert alive.ping_server().get("type") == "result"


@pytest.mark.prosody_deviates("on SIGTERM some streams are closed without <system-shutdown/> (racy)", strict=False)
def test_system_shutdown_stream_error(fresh_server, clients):
    """RFC 6120 4.9.3.17: stopping the server closes streams with <system-shutdown/>."""
    a = clients.add(fresh_server.online("sd"))
    b = clients.add(fresh_server.online("se"))
    fresh_server.stop()
    for c in (a, b):
        assert c.wait_closed(10) == "system-shutdown"
        assert c.stream_ended or c.closed


@pytest.mark.starling_only
def test_port_flags_turn_on_the_optional_listeners(tmp_path_factory, clients):
    """`--upload-port`, `--websocket-port`, `--bosh-port`, `--proxy65-port` with no config
    file: each listener is on, on its port, and its service is discovered. The slot URLs of
    the default `localhost` domain name a host that resolves (not `upload.localhost`)."""
    s = make_server(tmp_path_factory, "flags", registration=False, limits=False)
    up, ws, bosh, px = (free_port() for _ in range(4))
    s.extra_args = ["--upload-port", str(up), "--websocket-port", str(ws),
                    "--bosh-port", str(bosh), "--proxy65-port", str(px)]
    s.start()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def https(port, method, path, body=None, headers=None, host="127.0.0.1"):
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

        for port in (ws, bosh):  # XEP-0156 host-meta on both web listeners
            st, body = https(port, "GET", "/.well-known/host-meta")
            assert st == 200 and f":{port}/" in body.decode(), (port, st, body)

        c = clients.add(s.online("flags"))
        items = c.iq("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>", to="localhost")
        jids = {i.get("jid") for i in items.iter(q("http://jabber.org/protocol/disco#items", "item"))}
        assert {"upload.localhost", "proxy.localhost"} <= jids, tostring(items)

        bs = "http://jabber.org/protocol/bytestreams"
        r = c.iq("get", f"<query xmlns='{bs}'/>", to="proxy.localhost")
        host = r.find(q(bs, "query")).find(q(bs, "streamhost"))
        assert host is not None and host.get("port") == str(px), tostring(r)

        ns = "urn:xmpp:http:upload:0"
        r = c.iq("get", f"<request xmlns='{ns}' filename='f.txt' size='5' content-type='text/plain'/>",
                 to="upload.localhost")
        slot = r.find(q(ns, "slot"))
        assert slot is not None, tostring(r)
        put = urllib.parse.urlsplit(slot.find(q(ns, "put")).get("url"))
        get = urllib.parse.urlsplit(slot.find(q(ns, "get")).get("url"))
        assert (put.scheme, put.hostname, put.port) == ("https", "localhost", up), put
        socket.getaddrinfo(put.hostname, put.port)  # the URL's host resolves
        headers = {h.get("name"): h.text for h in slot.find(q(ns, "put")).findall(q(ns, "header"))}
        headers["Content-Type"] = "text/plain"
        st, body = https(up, "PUT", put.path, b"hello", headers, host=put.hostname)
        assert st == 201, (st, body)
        assert https(up, "GET", get.path, host=get.hostname) == (200, b"hello")
    finally:
        s.stop()
