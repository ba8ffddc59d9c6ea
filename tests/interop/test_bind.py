"""RFC 6120 section 7 (resource binding), legacy session, from-stamping."""

from rawxmpp import C, NS_BIND, StreamClosed, new_id, stanza_error, tostring
import pytest



def test_client_chosen_resource(server, clients):
    jid, user, pw = server.new_user("cr")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    assert c.bind("laptop") == f"{jid}/laptop"


def test_server_generated_resource(server, clients):
    jid, user, pw = server.new_user("sg")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    full = c.bind()
    assert full.startswith(jid + "/") and len(full) > len(jid) + 1
    d = clients.add(server.client()).start()
    d.auth(user, pw)
    assert d.bind() != full, "two server-generated resources must differ"


def test_empty_resource_element_gets_generated(server, clients):
    jid, user, pw = server.new_user("eg")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    iid = new_id()
    c.send_raw(f"<iq type='set' id='{iid}'><bind xmlns='{NS_BIND}'/></iq>")
    r = c.recv_stanza("iq", id=iid)
    assert r.get("type") == "result"
    assert r.find(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid").text.startswith(jid + "/")


def test_resource_conflict_replaces_older_session(server, clients):
    """7.7.2.2: the server may terminate the older session; Starling does, with <conflict/>."""
    jid, user, pw = server.new_user("cf")
    old = clients.add(server.login(jid, pw, resource="same", presence=True))
    new = clients.add(server.login(jid, pw, resource="same", presence=True))
    assert new.jid == f"{jid}/same"
    assert old.expect_stream_error() == "conflict"
    old.wait_closed()
    # the new session is the one that receives traffic
    peer = clients.add(server.online("peer"))
    mid = peer.message(new.jid, "to the new one")
    assert new.recv_stanza("message", id=mid).get("from") == peer.jid
    server.assert_healthy(new)


def test_legacy_session_iq(server, clients):
    jid, user, pw = server.new_user("ls")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    c.bind()
    r = c.session()
    assert r.get("type") == "result", tostring(r)


@pytest.mark.prosody_deviates('an invalid resourcepart is replaced by a generated one instead of <bad-request/> (RFC 6120 7.7.2.1)')
def test_bind_malformed_resource(server, clients):
    """7.7.2.1: a resourcepart that violates the RFC 7622 rules -> <bad-request/>."""
    jid, user, pw = server.new_user("bm")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    r = c.bind("x" * 1100, expect_error=True)  # > 1023 octets
    assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
    # a control character that XML allows but PRECIS OpaqueString does not (RFC 7622 3.4): DEL
    r = c.bind("bad\u007fres", expect_error=True)
    assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
    # the stream survives and a valid bind still works
    assert c.bind("fine").endswith("/fine")
    server.assert_healthy(c)


def test_from_is_stamped(server, clients):
    """8.1.2.1: the server stamps the full JID of the sender, whatever the client put in 'from'."""
    a = clients.add(server.online("st"))
    b = clients.add(server.online("rcv"))
    mid = new_id()
    a.send_raw(f"<message to='{b.jid}' id='{mid}' type='chat'><body>x</body></message>")
    m = b.recv_stanza("message", id=mid)
    assert m.get("from") == a.jid


def test_spoofed_from(server, clients):
    """A 'from' naming another user is either rewritten to the real sender or rejected
    with <invalid-from/> (RFC 6120 8.1.2.1 / 4.9.3.9); it is never delivered as is."""
    a = clients.add(server.online("sp"))
    b = clients.add(server.online("rcv"))
    victim = clients.add(server.online("vic"))
    mid = new_id()
    a.send_raw(f"<message from='{victim.jid}' to='{b.jid}' id='{mid}' type='chat'><body>x</body></message>")
    try:
        m = b.recv_stanza("message", id=mid, timeout=2)
    except Exception:
        assert a.stream_error == "invalid-from" or a.drain(0.5) is not None
        assert a.stream_error == "invalid-from", "spoofed stanza neither stamped nor rejected"
    else:
        assert m.get("from") == a.jid, tostring(m)
    server.assert_healthy(b, victim)


def test_iq_without_id_is_bad_request(server, clients):
    """8.1.3: 'id' is required on IQ; a server answers <bad-request/> (or closes the stream)."""
    a = clients.add(server.online("noid"))
    a.send_raw("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
    try:
        r = a.recv_stanza("iq", timeout=3)
    except StreamClosed:
        assert a.stream_error in ("invalid-xml", "bad-format"), a.stream_error
    else:
        assert stanza_error(r) == ("modify", "bad-request"), tostring(r)


def _spoof_outcome(sender, receiver, pred, timeout=3.0):
    """Either the receiver gets the stanza (returned) or the sender gets <invalid-from/> (None)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return receiver.recv(pred, timeout=0.2)
        except AssertionError:
            pass
        try:
            sender.recv(lambda e: False, timeout=0.2)
        except StreamClosed:
            pass
        except AssertionError:
            pass
        if sender.stream_error is not None:
            assert sender.stream_error == "invalid-from", sender.stream_error
            return None
    raise AssertionError("spoofed stanza neither delivered (stamped) nor rejected with <invalid-from/>")


def test_spoofed_from_in_presence(server, clients):
    a = clients.add(server.online("spp"))
    b = clients.add(server.online("rcp"))
    a.send_raw(f"<presence from='someone@else.example/x' to='{b.jid}'><status>spoof</status></presence>")
    p = _spoof_outcome(a, b, lambda e: e.tag == C("presence") and e.findtext(C("status")) == "spoof")
    if p is not None:
        assert p.get("from") == a.jid, tostring(p)
    server.assert_healthy(b)


def test_spoofed_from_in_iq(server, clients):
    a = clients.add(server.online("spi"))
    b = clients.add(server.online("rci"))
    iid = new_id()
    a.send_raw(f"<iq type='get' id='{iid}' from='{b.jid}' to='{b.jid}'><query xmlns='urn:example:q'/></iq>")
    req = _spoof_outcome(a, b, lambda e: e.get("id") == iid)
    if req is not None:
        assert req.get("from") == a.jid, tostring(req)
    server.assert_healthy(b)
