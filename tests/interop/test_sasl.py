"""RFC 6120 section 6 (SASL): SCRAM-SHA-1/256/512, PLAIN only over TLS, failures of 6.5."""

import base64

import pytest

from rawxmpp import NS_SASL, SASLFailure, StreamClosed, local, tostring


@pytest.mark.parametrize("mech", [
    "SCRAM-SHA-1",
    pytest.param("SCRAM-SHA-256", marks=pytest.mark.starling_only),  # Prosody stores one hash (SHA-1)
    pytest.param("SCRAM-SHA-512", marks=pytest.mark.starling_only),  # not in Prosody 0.12
])
def test_scram_login(server, clients, mech):
    jid, user, pw = server.new_user("scram")
    c = clients.add(server.client()).start()
    assert mech in c.mechanisms(), c.mechanisms()
    c.auth(user, pw, mech)  # verifies the server signature too
    assert c.bind().startswith(jid + "/")
    # RFC 7677 4 / RFC 5802 9: at least 4096 iterations, a real salt, a server nonce part
    p = c.scram_params
    assert p["iterations"] >= 4096, p
    assert len(p["salt"]) >= 8, p


def test_plain_after_tls(server, clients):
    jid, user, pw = server.new_user("plain")
    c = clients.add(server.client()).start()
    assert "PLAIN" in c.mechanisms()
    c.auth(user, pw, "PLAIN")
    assert c.bind("p").startswith(jid)


def test_plain_with_own_authzid(server, clients):
    jid, user, pw = server.new_user("pa")
    c = clients.add(server.client()).start()
    c.auth(user, pw, "PLAIN", authzid=jid)
    assert c.bind().startswith(jid + "/")


def test_password_with_special_chars(server, clients):
    jid, user, pw = server.new_user("sp", password="p,a=ss w\u00f6rd")
    c = clients.add(server.client()).start()
    c.auth(user, pw, "SCRAM-SHA-1")
    d = clients.add(server.client()).start()
    d.auth(user, pw, "PLAIN")


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "PLAIN"])
def test_wrong_password_not_authorized(server, clients, source_ip, mech):
    jid, user, pw = server.new_user("wp")
    good = clients.add(server.online("good"))
    c = clients.add(server.client(source_ip=source_ip)).start()
    with pytest.raises(SASLFailure) as e:
        c.auth(user, pw + "x", mech)
    assert e.value.condition == "not-authorized"
    server.assert_healthy(good)


def test_unknown_user_not_authorized(server, clients, source_ip):
    """6.5.10: an unknown user gets the same <not-authorized/> (no account enumeration)."""
    c = clients.add(server.client(source_ip=source_ip)).start()
    with pytest.raises(SASLFailure) as e:
        c.auth("nosuchuser" + source_ip.replace(".", ""), "whatever", "SCRAM-SHA-1")
    assert e.value.condition == "not-authorized"


def test_retry_after_failure_on_same_stream(server, clients, source_ip):
    """6.4.5: the server allows a retry on the same stream after a failure."""
    jid, user, pw = server.new_user("rt")
    c = clients.add(server.client(source_ip=source_ip)).start()
    with pytest.raises(SASLFailure):
        c.auth(user, "bad", "SCRAM-SHA-1")
    c.auth(user, pw, "SCRAM-SHA-1")
    assert c.bind().startswith(jid)


def test_tampered_scram_proof(server, clients, source_ip):
    jid, user, pw = server.new_user("tp")
    good = clients.add(server.online("good"))
    c = clients.add(server.client(source_ip=source_ip)).start()
    with pytest.raises(SASLFailure) as e:
        c.auth(user, pw, "SCRAM-SHA-1", tamper_proof=True)
    assert e.value.condition == "not-authorized"
    server.assert_healthy(good)


def test_tampered_scram_nonce(server, clients, source_ip):
    """A client-final-message with a nonce other than the server's -> failure, never success."""
    jid, user, pw = server.new_user("tn")
    c = clients.add(server.client(source_ip=source_ip)).start()
    with pytest.raises(SASLFailure) as e:
        c.auth(user, pw, "SCRAM-SHA-1", tamper_nonce=True)
    assert e.value.condition in ("not-authorized", "malformed-request"), e.value.condition
    server.assert_healthy()


def test_abort(server, clients):
    """6.4.4 / 6.5.1: <abort/> -> <failure><aborted/></failure>."""
    jid, user, pw = server.new_user("ab")
    good = clients.add(server.online("good"))
    c = clients.add(server.client()).start()
    with pytest.raises(SASLFailure) as e:
        c.auth_scram(user, pw, "SCRAM-SHA-1", abort_after_first=True)
    assert e.value.condition == "aborted"
    # and the client may then authenticate normally
    c.auth(user, pw, "SCRAM-SHA-1")
    assert c.bind().startswith(jid)
    server.assert_healthy(good)


@pytest.mark.prosody_deviates('an authzid naming another user is ignored instead of <invalid-authzid/> (RFC 6120 6.5.7)')
@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-1"])
def test_authzid_of_other_user(server, clients, source_ip, mech):
    """6.5.7: authorizing as somebody else -> <invalid-authzid/>."""
    jid, user, pw = server.new_user("az")
    other, _, _ = server.new_user("victim")
    good = clients.add(server.online("good"))
    c = clients.add(server.client(source_ip=source_ip)).start()
    with pytest.raises(SASLFailure) as e:
        if mech == "PLAIN":
            c.auth_plain(user, pw, authzid=other)
        else:
            c.auth_scram(user, pw, mech, authzid=other)
    assert e.value.condition == "invalid-authzid"
    server.assert_healthy(good)


def test_invalid_mechanism(server, clients):
    """6.5.6: a mechanism the server does not offer -> <invalid-mechanism/>."""
    c = clients.add(server.client()).start()
    c.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='X-NOPE'>AAAA</auth>")
    el = c.recv(lambda e: e.tag.startswith("{" + NS_SASL), what="SASL failure")
    assert local(el.tag) == "failure"
    assert [local(x.tag) for x in el if local(x.tag) != "text"] == ["invalid-mechanism"], tostring(el)
    server.assert_healthy()


def test_incorrect_encoding(server, clients):
    """6.5.2: bad base64 in <auth/> -> <incorrect-encoding/>."""
    c = clients.add(server.client()).start()
    c.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>!!!not base64***</auth>")
    el = c.recv(lambda e: e.tag.startswith("{" + NS_SASL), what="SASL failure")
    assert local(el.tag) == "failure", tostring(el)
    conds = [local(x.tag) for x in el if local(x.tag) != "text"]
    assert conds == ["incorrect-encoding"], tostring(el)
    server.assert_healthy()


def test_malformed_plain_request(server, clients, source_ip):
    """6.5.8: a PLAIN message without the NUL separators -> <malformed-request/>."""
    c = clients.add(server.client(source_ip=source_ip)).start()
    payload = base64.b64encode(b"just-one-field").decode()
    c.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    el = c.recv(lambda e: e.tag.startswith("{" + NS_SASL), what="SASL failure")
    conds = [local(x.tag) for x in el if local(x.tag) != "text"]
    assert local(el.tag) == "failure" and conds in (["malformed-request"], ["not-authorized"]), tostring(el)


def test_plain_not_offered_without_tls(server, clients):
    c = clients.add(server.client().connect())
    c.open_stream()
    assert "PLAIN" not in c.mechanisms()


def test_plain_without_tls_refused(server, clients, source_ip):
    """PLAIN before TLS must never succeed: 6.5.4 <encryption-required/> (or, since TLS is
    mandatory-to-negotiate here, the stream is closed with an error)."""
    jid, user, pw = server.new_user("nt")
    good = clients.add(server.online("good"))
    c = clients.add(server.client(source_ip=source_ip).connect())
    c.open_stream()
    payload = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    c.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    try:
        el = c.recv(lambda e: e.tag.startswith("{" + NS_SASL), what="SASL reply")
    except StreamClosed:
        assert c.stream_error in ("policy-violation", "not-authorized", "encryption-required"), c.stream_error
    else:
        assert local(el.tag) == "failure", "PLAIN over plaintext succeeded: " + tostring(el)
        conds = [local(x.tag) for x in el if local(x.tag) != "text"]
        assert conds in (["encryption-required"], ["invalid-mechanism"]), tostring(el)
    server.assert_healthy(good)


def _read_until(c, pattern, timeout=10.0):
    """Raw bytes from the socket until `pattern` (a regex) matches them."""
    import re
    import time
    data, deadline = b"", time.monotonic() + timeout
    while not re.search(pattern, data) and time.monotonic() < deadline:
        c.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = c.sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_new_stream_pipelined_behind_auth(server, clients):
    """RFC 6120 6.4.6: the restart after <success/>. Tsung (and other pipelining clients) send
    the new stream header, bind and session right behind <auth/>, in one write, before the
    server has answered: the server must read them as the new stream, not lose them with the
    old parser's buffer."""
    jid, user, pw = server.new_user("pipe")
    c = clients.add(server.client()).start()
    payload = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    c.send_raw(
        f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>"
        + c.stream_header()
        + "<iq type='set' id='pipe-bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
          "<resource>pipe</resource></bind></iq>"
        + "<iq type='set' id='pipe-sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
    )
    data = _read_until(c, rb"id=['\"]pipe-sess['\"]")
    text = data.decode("utf-8", "replace")
    assert "<success" in text, text
    assert "stream:error" not in text, text
    assert f"<jid>{jid}/pipe</jid>" in text, text
    assert text.index("<success") < text.index("<stream:stream") < text.index("<jid>"), text
    import re
    session = re.search(r"<iq[^>]*id=['\"]pipe-sess['\"][^>]*>", text)
    assert session and "type='result'" in session.group(0).replace('"', "'"), text
