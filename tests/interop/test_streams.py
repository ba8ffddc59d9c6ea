"""RFC 6120 streams: header, features, STARTTLS, direct TLS (XEP-0368), keepalives, close."""

import socket
import ssl
import time

import pytest

from rawxmpp import (NS_BIND, NS_SASL, NS_STREAM, NS_TLS, C, StreamClosed, local, q, tostring)


def test_stream_header_reply(server, clients):
    c = clients.add(server.client().connect())
    c.open_stream()
    h = c.header
    assert h.get("from") == server.domain, h
    assert h.get("id"), "stream id missing"
    assert h.get("version") == "1.0"
    # a second stream gets another id
    d = clients.add(server.client().connect())
    d.open_stream()
    assert d.header.get("id") != h.get("id")


def test_features_before_tls_require_starttls(server, clients):
    c = clients.add(server.client().connect())
    c.open_stream()
    st = c.feature(NS_TLS, "starttls")
    assert st is not None, tostring(c.features)
    # TLS is mandatory-to-negotiate: RFC 6120 5.3.1 says the server SHOULD include <required/>
    assert st.find(q(NS_TLS, "required")) is not None, tostring(c.features)
    assert "PLAIN" not in c.mechanisms()
    assert c.feature(NS_BIND, "bind") is None


def test_starttls_then_features(server, clients):
    c = clients.add(server.client().connect())
    c.open_stream()
    c.starttls()
    assert c.tls
    assert c.feature(NS_TLS, "starttls") is None, "STARTTLS offered again after TLS"
    mechs = c.mechanisms()
    assert "SCRAM-SHA-1" in mechs and "PLAIN" in mechs, mechs
    assert c.header.get("from") == server.domain


def test_direct_tls_login(server, clients):
    c = clients.add(server.client(direct_tls=True))
    c.connect()
    assert c.sock.selected_alpn_protocol() in (None, "xmpp-client")
    c.open_stream()
    assert c.feature(NS_TLS, "starttls") is None
    assert "PLAIN" in c.mechanisms()
    jid, user, pw = server.new_user("dtls")
    c.auth(user, pw, "PLAIN")
    full = c.bind("dt")
    assert full == f"{jid}/dt"
    assert c.ping_server().get("type") == "result"


def test_direct_tls_port_rejects_plaintext(server):
    """A plaintext stream header sent to the direct-TLS port is not accepted as XMPP."""
    s = socket.create_connection((server.host, server.tls_port), timeout=5)
    try:
        s.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                  b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
        assert b"<stream:features" not in data and b"features" not in data
    finally:
        s.close()
    server.assert_healthy()


def test_certificate_is_presented(server):
    """A certificate is generated at first start and served (self-signed is fine)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((server.host, server.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
            assert der and len(der) > 100
            assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_tls_versions_below_1_2_refused(server):
    """RFC 7590: TLS 1.2 or better; TLS 1.0/1.1 handshakes must fail."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("local OpenSSL cannot even offer TLS<1.2")
    with socket.create_connection((server.host, server.tls_port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)) as e:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                pass
    if "NO_PROTOCOLS_AVAILABLE" in str(e.value).upper() or "NO PROTOCOLS AVAILABLE" in str(e.value).upper():
        pytest.skip("local OpenSSL cannot offer TLS<1.2: " + str(e.value))
    server.assert_healthy()


def test_features_after_auth_offer_bind(server, clients):
    jid, user, pw = server.new_user("fb")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    assert c.feature(NS_BIND, "bind") is not None, tostring(c.features)
    assert c.feature(NS_SASL, "mechanisms") is None
    assert c.feature(NS_TLS, "starttls") is None


def test_whitespace_keepalive(server, clients):
    c = clients.add(server.online("ka"))
    for _ in range(3):
        c.send_raw(" ")
        c.send_raw("\n\t ")
        time.sleep(0.05)
    assert c.ping_server().get("type") == "result"
    # also before authentication
    d = clients.add(server.client().connect())
    d.open_stream()
    d.send_raw("   \n")
    d.starttls()
    d.send_raw(" ")
    assert "SCRAM-SHA-1" in d.mechanisms()


def test_clean_close(server, clients):
    c = clients.add(server.online("cl"))
    c.send_raw("</stream:stream>")
    c.wait_closed(5)
    assert c.stream_ended, "server did not answer </stream:stream> with its own closing tag"
    assert c.stream_error is None
    server.assert_healthy()


def test_host_unknown(server, clients):
    """RFC 6120 4.9.3.6: a 'to' naming no domain served here -> <host-unknown/>."""
    c = clients.add(server.client(domain="no-such-host.invalid").connect())
    c.send_raw(c.stream_header(to="no-such-host.invalid"))
    assert c.expect_stream_error() == "host-unknown"
    c.wait_closed()
    server.assert_healthy()


@pytest.mark.prosody_deviates('wrong content namespace is not rejected (times out instead of <invalid-namespace/>)')
def test_stream_error_precedes_close_and_is_wellformed(server, clients):
    """A stream error arrives inside an opened stream and the server then closes the stream."""
    c = clients.add(server.client().connect())
    c.send_raw(c.stream_header(ns="jabber:server-nope"))
    cond = c.expect_stream_error()
    assert cond == "invalid-namespace"
    assert c.header is not None, "server must open its own stream before sending the error (RFC 6120 4.9.1.2)"
    c.wait_closed()


def test_unsupported_stanza_type(server, clients):
    """RFC 6120 4.9.3.24: an unknown first-level element -> <unsupported-stanza-type/>."""
    c = clients.add(server.online("ust"))
    c.send_raw("<foo xmlns='jabber:client'/>")
    assert c.expect_stream_error() == "unsupported-stanza-type"
    c.wait_closed()
    server.assert_healthy()


@pytest.mark.prosody_deviates('UTF-16 stream gets <not-well-formed/>, RFC 6120 4.9.3.22 names <unsupported-encoding/>')
def test_unsupported_encoding(server, clients):
    """RFC 6120 4.9.3.22 / 11.6: a stream in UTF-16 -> <unsupported-encoding/>."""
    c = clients.add(server.client().connect())
    hdr = ("<?xml version='1.0' encoding='UTF-16'?><stream:stream to='localhost' version='1.0' "
           "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
    c.send_raw(hdr.encode("utf-16"))
    try:
        cond = c.expect_stream_error()
    except AssertionError:
        # a clean close without an error is not what the RFC asks for
        raise
    assert cond in ("unsupported-encoding",), cond
    server.assert_healthy()


@pytest.mark.prosody_deviates('a comment between stanzas gets <not-well-formed/>, RFC 6120 11.1 names <restricted-xml/>')
def test_restricted_xml_comment(server, clients):
    """RFC 6120 11.1: comments are restricted XML."""
    c = clients.add(server.online("cm"))
    c.send_raw("<!-- hello -->")
    assert c.expect_stream_error() == "restricted-xml"
    server.assert_healthy()
