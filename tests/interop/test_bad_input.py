"""Bad input (issue item 10): every case gets the RFC's stream/stanza error or a clean close,
the server survives, and a well-behaved client on the same server keeps working.

SASL-level bad input (wrong password, tampered SCRAM, abort, foreign authzid, PLAIN without
TLS) is in test_sasl.py, spoofed 'from' in test_bind.py, malformed JIDs in test_messages.py /
test_presence.py / test_bind.py; each of those also checks a well-behaved client afterwards.
"""

import os
import socket
import threading
import time

import pytest

from conftest import HANDSHAKE_TIMEOUT, MAX_STANZA
from rawxmpp import NS_SASL, C, SASLFailure, StreamClosed, XMPPTimeout, stanza_error, tostring

STREAM_OPEN = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xml:lang='en' "
               "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stream_error_after(server, clients, payload, authed=True, timeout=5.0):
    """Send payload on an authenticated (or TLS-only) stream; return the stream error."""
    good = clients.add(server.online("good"))
    if authed:
        c = clients.add(server.online("bad"))
    else:
        c = clients.add(server.client()).start()
    c.send_raw(payload)
    cond = c.expect_stream_error(timeout)
    c.wait_closed(5)
    server.assert_healthy(good)
    return cond


# ------------------------------------------------------------------ XML-level

def test_malformed_xml(server, clients):
    assert stream_error_after(server, clients, "<message><body>x</bod></message>") == "not-well-formed"


def test_end_tag_of_an_outer_element_is_not_well_formed_at_once(server, clients):
    """XML 1.0 3 (element type match): </message> while <body> is open is an error then
    and there, not a stanza waiting for one more end tag until the connection times out."""
    assert stream_error_after(server, clients, "<message><body>unclosed</message>") == "not-well-formed"


def test_malformed_xml_before_auth(server, clients):
    assert stream_error_after(server, clients, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'<<", authed=False) \
        == "not-well-formed"


def test_unbound_prefix(server, clients):
    assert stream_error_after(server, clients, "<message><x:body>x</x:body></message>") == "not-well-formed"


def test_invalid_utf8(server, clients):
    """Invalid UTF-8 is not well-formed XML (RFC 6120 11.6 + XML 1.0 4.3.3)."""
    payload = b"<message to='x@localhost'><body>\xc3\x28\xff\xfe</body></message>"
    cond = stream_error_after(server, clients, payload)
    assert cond in ("not-well-formed", "unsupported-encoding"), cond


def test_invalid_xml_char(server, clients):
    """A control character that XML 1.0 forbids (&#x1; / raw U+0001) is not well-formed."""
    assert stream_error_after(server, clients, "<message><body>\x01</body></message>") == "not-well-formed"


def test_oversize_stanza(server, clients):
    """A stanza above max_stanza_size (256 KiB) -> <policy-violation/> (RFC 6120 4.9.3.14)."""
    body = "x" * (MAX_STANZA + 10000)
    assert stream_error_after(server, clients, f"<message to='a@localhost'><body>{body}</body></message>") \
        == "policy-violation"


def test_oversize_stanza_trickled(server, clients):
    """The limit holds for a stanza that arrives in many small writes, with no end tag ever."""
    good = clients.add(server.online("good"))
    c = clients.add(server.online("bad"))
    c.send_raw("<message to='a@localhost'><body>")
    chunk = "y" * 16384
    sent = 0
    try:
        while sent < MAX_STANZA * 2 and c.stream_error is None:
            c.send_raw(chunk)
            sent += len(chunk)
    except OSError:
        pass
    assert c.expect_stream_error() == "policy-violation"
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('restricted XML gets <not-well-formed/>, RFC 6120 11.1 names <restricted-xml/>')
def test_dtd_in_prolog(server, clients):
    """RFC 6120 11.1: no DTD -> <restricted-xml/>."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.send_raw("<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY boom 'BOOM'>]>" + STREAM_OPEN[21:])
    assert c.expect_stream_error() == "restricted-xml"
    c.wait_closed()
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('restricted XML gets <not-well-formed/>, RFC 6120 11.1 names <restricted-xml/>')
def test_entity_expansion_billion_laughs(server, clients):
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    ents = "<!ENTITY a0 'lol'>" + "".join(f"<!ENTITY a{i} '{('&a%d;' % (i - 1)) * 10}'>" for i in range(1, 10))
    c.send_raw(f"<?xml version='1.0'?><!DOCTYPE stream:stream [{ents}]>" + STREAM_OPEN[21:] + "<message>&a9;</message>")
    assert c.expect_stream_error() == "restricted-xml"
    server.assert_healthy(good)
    assert server.alive()


@pytest.mark.prosody_deviates("an undeclared entity reference gets <not-well-formed/>; RFC 6120 11.1 names <restricted-xml/>")
def test_entity_reference_in_stanza(server, clients):
    """Only the five predefined entities are allowed; anything else -> <restricted-xml/>."""
    assert stream_error_after(server, clients, "<message to='a@localhost'><body>&xxe;</body></message>") \
        == "restricted-xml"


def test_predefined_entities_and_char_refs_are_fine(server, clients):
    a = clients.add(server.online("pe"))
    b = clients.add(server.online("pf"))
    a.send_raw(f"<message to='{b.jid}' id='ent1'><body>&lt;&gt;&amp;&apos;&quot;&#65;&#x42;</body></message>")
    m = b.recv_stanza("message", id="ent1")
    assert m.findtext(C("body")) == "<>&'\"AB"


@pytest.mark.prosody_deviates('restricted XML gets <not-well-formed/>, RFC 6120 11.1 names <restricted-xml/>')
def test_processing_instruction(server, clients):
    """RFC 6120 11.1: processing instructions -> <restricted-xml/>."""
    assert stream_error_after(server, clients, "<?evil instruction?>") == "restricted-xml"


@pytest.mark.prosody_deviates('restricted XML gets <not-well-formed/>, RFC 6120 11.1 names <restricted-xml/>')
def test_processing_instruction_inside_stanza(server, clients):
    assert stream_error_after(server, clients, "<message to='a@localhost'><?pi x?><body>x</body></message>") \
        == "restricted-xml"


@pytest.mark.prosody_deviates("no nesting-depth limit: the deeply nested stanza is accepted")
def test_deep_nesting(server, clients):
    depth = 20000
    payload = "<message to='a@localhost'>" + "<a>" * depth + "</a>" * depth + "</message>"
    assert len(payload) < MAX_STANZA
    assert stream_error_after(server, clients, payload) == "policy-violation"


@pytest.mark.prosody_deviates("no attribute-count limit: the stanza is accepted")
def test_many_attributes(server, clients):
    attrs = " ".join(f"a{i}='v'" for i in range(8000))
    payload = f"<message to='a@localhost'><x xmlns='urn:example' {attrs}/></message>"
    assert len(payload) < MAX_STANZA
    assert stream_error_after(server, clients, payload) == "policy-violation"


def test_duplicate_attribute(server, clients):
    assert stream_error_after(server, clients, "<message to='a@localhost' to='b@localhost'/>") == "not-well-formed"


# --------------------------------------------------------------- stream header

def test_wrong_stream_namespace(server, clients):
    """RFC 6120 4.9.3.10: stream namespace other than http://etherx.jabber.org/streams."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.send_raw(STREAM_OPEN.replace("http://etherx.jabber.org/streams", "http://wrong.example/streams"))
    assert c.expect_stream_error() == "invalid-namespace"
    c.wait_closed()
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('version="2.0" is not rejected with <unsupported-version/> (RFC 6120 4.9.3.25)')
def test_bad_version(server, clients):
    """RFC 6120 4.9.3.25: major version the server does not support -> <unsupported-version/>."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.send_raw(STREAM_OPEN.replace(" version='1.0' xml:lang", " version='2.0' xml:lang"))
    assert c.expect_stream_error() == "unsupported-version"
    c.wait_closed()
    server.assert_healthy(good)


def test_header_missing_a_quote_is_not_well_formed_at_once(server, clients):
    """XML 1.0 3.1: after an attribute value's closing quote comes whitespace or the tag's end.
    A header whose value runs into the next name (the one compliance.conversations.im sends,
    with the default namespace's closing quote missing) is <not-well-formed/> as soon as it is
    read (our header first, RFC 6120 4.9.1.1), not when the handshake times out waiting for a
    '>' that would not end the tag; and the same inside a stanza."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.send_raw("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
               "xmlns='jabber:client xmlns:stream='http://etherx.jabber.org/streams'>")
    assert c.expect_stream_error(1.0) == "not-well-formed"
    c.wait_closed()
    assert stream_error_after(server, clients, "<message to='a@localhost'type='chat'", timeout=1.0) \
        == "not-well-formed"
    server.assert_healthy(good)


def test_not_a_stream_header(server, clients):
    """Some other root element than <stream:stream/> -> an error in the streams namespace."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.send_raw("<?xml version='1.0'?><html xmlns='http://www.w3.org/1999/xhtml'>")
    assert c.expect_stream_error() in ("invalid-namespace", "bad-format", "not-well-formed")
    server.assert_healthy(good)


def test_http_request_on_xmpp_port(server, clients):
    good = clients.add(server.online("good"))
    s = socket.create_connection((server.host, server.c2s_port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    s.settimeout(5)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    assert b"<stream:features" not in data
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('a stream header inside the stream is silently ignored')
def test_second_stream_header(server, clients):
    """A stream header inside an established stream is not a stanza -> stream error."""
    cond = stream_error_after(server, clients, STREAM_OPEN[21:])
    assert cond in ("unsupported-stanza-type", "not-well-formed", "invalid-xml"), cond


@pytest.mark.prosody_deviates('stanzas before authentication are ignored until the handshake timeout instead of <not-authorized/> (RFC 6120 4.9.3.12)')
def test_stanza_before_auth(server, clients):
    """RFC 6120 4.9.3.12: a stanza before authentication -> <not-authorized/>."""
    assert stream_error_after(server, clients, "<message to='x@localhost'><body>hi</body></message>",
                              authed=False) == "not-authorized"


@pytest.mark.prosody_deviates('stanzas before authentication are ignored until the handshake timeout instead of <not-authorized/> (RFC 6120 4.9.3.12)')
def test_bind_before_auth(server, clients):
    cond = stream_error_after(server, clients,
                              "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
                              authed=False)
    assert cond == "not-authorized"


@pytest.mark.prosody_deviates('stanzas before authentication are ignored until the handshake timeout instead of <not-authorized/> (RFC 6120 4.9.3.12)')
def test_stanza_before_tls(server, clients):
    """Before TLS (mandatory here) nothing but STARTTLS is accepted."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.open_stream()
    c.send_raw("<message to='x@localhost'><body>hi</body></message>")
    assert c.expect_stream_error() in ("not-authorized", "policy-violation")
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('a stanza before bind gets a <service-unavailable/> stanza error, not <not-authorized/> (RFC 6120 7.1)')
def test_stanza_before_bind(server, clients):
    """After SASL but before bind, stanzas are refused (RFC 6120 7.1: not-authorized)."""
    jid, user, pw = server.new_user("nb")
    good = clients.add(server.online("good"))
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    c.send_raw("<message to='x@localhost' id='pre-bind'><body>hi</body></message>")
    try:
        e = c.recv(lambda e: e.get("id") == "pre-bind", timeout=3)
        assert stanza_error(e)[1] == "not-authorized", tostring(e)
    except StreamClosed:
        assert c.stream_error == "not-authorized"
    server.assert_healthy(good)


# ------------------------------------------------------------ connection abuse

def test_many_unauthenticated_connections(server, clients, source_ip):
    good = clients.add(server.online("good"))
    socks = []
    try:
        for i in range(200):
            s = socket.socket()
            s.bind((source_ip, 0))
            s.settimeout(5)
            try:
                s.connect((server.host, server.c2s_port))
                s.sendall(STREAM_OPEN.encode())
            except OSError:
                s.close()
                continue  # refusing excess connections from one address is fine
            socks.append(s)
        # while they are all open, well-behaved clients work
        server.assert_healthy(good)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    server.assert_healthy(good)


def test_silent_client_closed_after_handshake_timeout(server, clients):
    """A client that connects and says nothing is disconnected after the handshake timeout."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client(timeout=HANDSHAKE_TIMEOUT + 10).connect())
    t0 = time.monotonic()
    cond = c.wait_closed(HANDSHAKE_TIMEOUT + 8)
    took = time.monotonic() - t0
    assert took >= HANDSHAKE_TIMEOUT - 0.5, f"closed after {took:.1f}s, before the handshake timeout"
    assert cond in (None, "connection-timeout"), cond
    server.assert_healthy(good)


def test_client_stuck_after_stream_header_timed_out(server, clients):
    """Header sent, then silence: RFC 6120 4.9.3.4 <connection-timeout/>."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client(timeout=HANDSHAKE_TIMEOUT + 10).connect())
    c.open_stream()
    t0 = time.monotonic()
    cond = c.wait_closed(HANDSHAKE_TIMEOUT + 8)
    assert time.monotonic() - t0 >= HANDSHAKE_TIMEOUT - 1
    assert cond == "connection-timeout", cond
    server.assert_healthy(good)


def test_client_that_writes_but_never_reads(server, clients):
    """Output to a client that never reads is bounded: the server does not grow without limit,
    and other clients keep being served while it is stuck."""
    good = clients.add(server.online("good"))
    c = clients.add(server.online("noread"))
    rss0 = rss_kib(server.pid)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = "z" * 4000
    req = "".join(f"<message to='{c.jid}' type='chat'><body>{big}</body></message>" for _ in range(16))
    stop = time.monotonic() + 8
    sent = 0
    c.sock.settimeout(0.5)
    while time.monotonic() < stop and sent < 60 * 1024 * 1024:
        try:
            c.sock.sendall(req.encode())
            sent += len(req)
        except (socket.timeout, ssl_errors()):
            break  # the server stopped reading from us: back-pressure, fine
        except OSError:
            break  # the server closed us: fine too
    server.assert_healthy(good)
    grown_mib = (rss_kib(server.pid) - rss0) / 1024
    assert grown_mib < 128, f"server RSS grew {grown_mib:.0f} MiB for one client that does not read ({sent >> 20} MiB sent)"
    c.drop()
    time.sleep(0.3)
    server.assert_healthy(good)


def ssl_errors():
    import ssl
    return ssl.SSLError


@pytest.mark.prosody_deviates("no throttling of failed authentication attempts by default")
def test_repeated_wrong_passwords_throttled(fresh_server, clients, source_ip):
    """Failed attempts are delayed / rate-limited per account and per address."""
    srv = fresh_server
    jid, user, pw = srv.new_user("victim")
    durations, refused = [], 0
    for i in range(8):
        c = clients.add(srv.client(source_ip=source_ip, timeout=15))
        t0 = time.monotonic()
        try:
            c.start()
            c.auth_scram(user, "wrong-" + str(i), "SCRAM-SHA-1")
        except SASLFailure as e:
            if e.condition == "temporary-auth-failure":
                refused += 1
            else:
                assert e.condition == "not-authorized", e.condition
        except (StreamClosed, XMPPTimeout, OSError):
            refused += 1
        else:
            raise AssertionError("wrong password accepted")
        durations.append(time.monotonic() - t0)
        c.shutdown()
    late = sum(durations[4:])
    assert refused > 0 or late >= 2.0, f"no throttling: durations={['%.2f' % d for d in durations]}"
    # the right password from another address still gets in promptly, and other users are unaffected
    t0 = time.monotonic()
    other = clients.add(srv.online("other"))
    assert time.monotonic() - t0 < 5
    srv.assert_healthy(other)


@pytest.mark.prosody_deviates("no throttling of failed authentication attempts by default")
def test_wrong_passwords_from_one_address_throttled(fresh_server, clients, source_ip):
    """Per-address limit: failures spread over many accounts from one address are slowed too,
    while another address is served promptly."""
    srv = fresh_server
    victims = [srv.new_user("spray") for _ in range(8)]
    durations, refused = [], 0
    for i, (jid, user, pw) in enumerate(victims):
        c = clients.add(srv.client(source_ip=source_ip, timeout=15))
        t0 = time.monotonic()
        try:
            c.start()
            c.auth_scram(user, "wrong", "SCRAM-SHA-1")
        except SASLFailure as e:
            if e.condition == "temporary-auth-failure":
                refused += 1
            else:
                assert e.condition == "not-authorized", e.condition
        except (StreamClosed, XMPPTimeout, OSError):
            refused += 1
        else:
            raise AssertionError("wrong password accepted")
        durations.append(time.monotonic() - t0)
        c.shutdown()
    late = sum(durations[4:])
    assert refused > 0 or late >= 2.0, f"no per-address throttling: durations={['%.2f' % d for d in durations]}"
    # a victim account itself is not locked for its owner coming from elsewhere
    jid, user, pw = victims[0]
    t0 = time.monotonic()
    ok = clients.add(srv.login(jid, pw))
    assert time.monotonic() - t0 < 5
    srv.assert_healthy(ok)


def _read_until_closed(sock, timeout):
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(4096):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def test_garbage_instead_of_tls_handshake(server, clients):
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.open_stream()
    c.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    c.recv(lambda e: e.tag.endswith("}proceed"), what="proceed")
    c.sock.sendall(os.urandom(2048))
    assert _read_until_closed(c.sock, 5), "connection not closed after a garbage TLS handshake"
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('c2s_timeout does not cover a stalled STARTTLS handshake')
def test_tls_handshake_never_finished_times_out(server, clients):
    """<proceed/>, then silence: the handshake timeout covers the TLS stage too."""
    good = clients.add(server.online("good"))
    c = clients.add(server.client().connect())
    c.open_stream()
    c.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    c.recv(lambda e: e.tag.endswith("}proceed"), what="proceed")
    assert _read_until_closed(c.sock, HANDSHAKE_TIMEOUT + 8), "stalled TLS handshake never timed out"
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('c2s_timeout does not cover a stalled direct-TLS handshake')
def test_direct_tls_partial_client_hello_times_out(server, clients):
    good = clients.add(server.online("good"))
    s = socket.create_connection((server.host, server.tls_port), timeout=5)
    try:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a truncated ClientHello
        t0 = time.monotonic()
        assert _read_until_closed(s, HANDSHAKE_TIMEOUT + 8), "stalled direct-TLS handshake never timed out"
        assert time.monotonic() - t0 >= HANDSHAKE_TIMEOUT - 1
    finally:
        s.close()
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('c2s_timeout ends at SASL success; an unbound session stays open')
def test_authenticated_but_never_bound_times_out(server, clients):
    """SASL done, no bind: still inside the handshake, so the handshake timeout applies."""
    jid, user, pw = server.new_user("nobind")
    good = clients.add(server.online("good"))
    c = clients.add(server.client(timeout=HANDSHAKE_TIMEOUT + 10)).start()
    c.auth(user, pw)
    cond = c.wait_closed(HANDSHAKE_TIMEOUT + 12)
    assert cond in (None, "connection-timeout"), cond
    server.assert_healthy(good)
