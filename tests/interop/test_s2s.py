"""Server-to-server federation (RFC 6120 §3-§5, §13.7; XEP-0220 dialback, XEP-0185 keys).

Two Starling servers on loopback, a.test and b.test, each finding the other through
`[s2s] hosts` (DNS is off in tests). Clients talk to their own server only; everything
between the domains crosses a real s2s link: STARTTLS, dialback (each side asks the
other's authoritative server over its own outgoing link), then stanzas.

The raw-stream tests open server streams by hand with rawxmpp: they play another
domain's server, with the dialback secret of a.test known to the test (`[s2s] secret`),
to reach the checks a real peer never trips (spoofed `from`, bad keys, bad namespaces).
"""
import base64
import hashlib
import hmac
import re
import socket
import threading
import time
import urllib.request
import uuid

import pytest

import rawxmpp
from cluster import Cluster
from conftest import StarlingServer, free_port, _starling_has_flag
from pki import SRV_NAME, XMPP_ADDR, CertAuthority
from rawxmpp import C, q, stanza_error, tostring

NS_SERVER = "jabber:server"
NS_DB = "jabber:server:dialback"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
SECRET_A = "a-test-dialback-secret"
GW_A = "gw.a.test"  # a XEP-0114 component of a.test
GW_SECRET = "gw-secret"


def S(name):
    return q(NS_SERVER, name)


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185: HMAC-SHA256 keyed with hex(SHA-256(secret))."""
    k = hashlib.sha256(secret.encode()).hexdigest().encode()
    return hmac.new(k, f"{receiving} {originating} {stream_id}".encode(), hashlib.sha256).hexdigest()


def s2s_toml(hosts: dict, secret=None, extra="") -> str:
    lines = ["[s2s]", "enabled = true", 'bind = "127.0.0.1"', "connect_timeout_secs = 5"]
    if secret:
        lines.append(f'secret = "{secret}"')
    lines += [extra, "", "[s2s.hosts]"]
    lines += [f'"{d}" = "127.0.0.1:{p}"' for d, p in hosts.items()]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if not _starling_has_flag("--s2s-port"):
        pytest.fail("this starling has no --s2s-port: no federation")
    pa, pb, closed, pc = free_port(), free_port(), free_port(), free_port()
    components = "\n".join(["", "[components]", "enabled = true", 'bind = "127.0.0.1"', f"port = {pc}",
                             "[components.secrets]", f'"{GW_A}" = "{GW_SECRET}"'])
    a = StarlingServer(str(tmp_path_factory.mktemp("s2s-a")), domains=["a.test"],
                       extra_toml=s2s_toml({"b.test": pb, "conference.b.test": pb, "closed.test": closed},
                                         secret=SECRET_A) + "\n" + components)
    b = StarlingServer(str(tmp_path_factory.mktemp("s2s-b")), domains=["b.test"],
                       extra_toml=s2s_toml({"a.test": pa, GW_A: pa}) + "\n\n[mam]\nenabled = true")
    a.s2s_port, b.s2s_port = pa, pb
    a.component_port = pc
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def online(server, clients, prefix="u"):
    c = server.online(prefix)
    clients.add(c)
    return c


def subscribe_both(x, y):
    """x and y (clients of different servers) subscribe to each other's presence."""
    x.presence(to=y.bare, type_="subscribe")
    req = y.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 15,
                 what="subscribe request across domains")
    assert req.get("from") == x.bare
    y.presence(to=x.bare, type_="subscribed")
    x.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribed", 15, what="subscribed")
    y.presence(to=x.bare, type_="subscribe")
    x.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 15, what="subscribe back")
    x.presence(to=y.bare, type_="subscribed")
    y.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribed", 15, what="subscribed back")


def metric(server, name, **labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------ through clients

def test_message_both_ways(pair, clients):
    a, b = pair
    ua, ub = online(a, clients, "fa"), online(b, clients, "fb")
    mid = ua.message(ub.jid, "hello from a.test")
    m = ub.recv_stanza("message", id=mid, timeout=15)
    assert m.get("from") == ua.jid
    assert m.findtext(C("body")) == "hello from a.test"
    mid = ub.message(ua.bare, "and back from b.test")
    m = ua.recv_stanza("message", id=mid, timeout=15)
    assert m.get("from") == ub.jid and m.findtext(C("body")) == "and back from b.test"


def test_many_messages_arrive_in_order(pair, clients):
    a, b = pair
    ua, ub = online(a, clients, "oa"), online(b, clients, "ob")
    for i in range(100):
        ua.message(ub.jid, f"n{i}", mid=f"ord{i}")
    got = []
    deadline = time.time() + 20
    while len(got) < 100 and time.time() < deadline:
        m = ub.recv_stanza("message", timeout=max(0.1, deadline - time.time()))
        got.append(m.findtext(C("body")))
    assert got == [f"n{i}" for i in range(100)]


def test_offline_message_for_remote_user(pair, clients):
    a, b = pair
    ua = online(a, clients, "xa")
    jid_b, user_b, pw_b = b.new_user("xb")
    mid = ua.message(jid_b, "kept for later")
    ua.expect_nothing(lambda e: e.tag == C("message") and e.get("type") == "error", timeout=2)
    ub = clients.add(b.login(jid_b, pw_b, presence=True))
    m = ub.recv_stanza("message", id=mid, timeout=15)
    assert m.findtext(C("body")) == "kept for later"
    assert m.find(q("urn:xmpp:delay", "delay")) is not None


def test_iq_to_remote_server_and_to_remote_client(pair, clients):
    a, b = pair
    ua, ub = online(a, clients, "ia"), online(b, clients, "ib")
    r = ua.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="b.test", timeout=15)
    assert r.get("type") == "result" and r.get("from") == "b.test", tostring(r)
    r = ua.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="b.test", timeout=15)
    assert r.get("type") == "result"
    features = {f.get("var") for f in r.iter(q("http://jabber.org/protocol/disco#info", "feature"))}
    assert "urn:xmpp:ping" in features
    # A request to a client of b.test, answered by that client.
    iid = rawxmpp.new_id("v")
    ua.send_raw(f"<iq type='get' id='{iid}' to='{ub.jid}'><query xmlns='jabber:iq:version'/></iq>")
    req = ub.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 15, what="iq across domains")
    assert req.get("from") == ua.jid
    ub.send_raw(f"<iq type='result' id='{iid}' to='{ua.jid}'><query xmlns='jabber:iq:version'>"
                f"<name>t</name><version>1</version></query></iq>")
    res = ua.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 15, what="iq result")
    assert res.get("type") == "result" and res.get("from") == ub.jid


def test_iq_to_gone_remote_resource_is_service_unavailable(pair, clients):
    a, b = pair
    ua, ub = online(a, clients, "ga"), online(b, clients, "gb")
    r = ua.iq("get", "<query xmlns='jabber:iq:version'/>", to=ub.bare + "/no-such-resource", timeout=15)
    assert r.get("type") == "error"
    assert r.find(f"{C('error')}/{q(NS_STANZAS, 'service-unavailable')}") is not None, tostring(r)


def test_subscription_and_presence_across_domains(pair, clients):
    a, b = pair
    ua, ub = online(a, clients, "pa"), online(b, clients, "pb")
    subscribe_both(ua, ub)
    # Roster state on both sides: both.
    for c, other in ((ua, ub), (ub, ua)):
        r = c.iq("get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        items = {i.get("jid"): i.get("subscription") for i in r.iter(q("jabber:iq:roster", "item"))}
        assert items.get(other.bare) == "both", (c.bare, items)
    # A new resource of ub: its available presence reaches ua, and a probe answers it.
    jid, pw = ub.bare, ub.password
    ub2 = clients.add(b.login(jid, pw, resource="second", presence=True))
    p = ua.recv(lambda e: e.tag == C("presence") and e.get("from") == ub2.jid and e.get("type") is None,
                15, what="presence of a remote contact's new resource")
    assert p is not None
    ub2.presence(type_="unavailable")
    ua.recv(lambda e: e.tag == C("presence") and e.get("from") == ub2.jid
            and e.get("type") == "unavailable", 15, what="unavailable across domains")
    # A second resource of ua logging in probes b.test and learns ub's presence.
    ua2 = clients.add(a.login(ua.bare, ua.password, resource="late", presence=True))
    ua2.recv(lambda e: e.tag == C("presence") and e.get("from") == ub.jid and e.get("type") is None,
             15, what="probe answered across domains")


def test_message_to_unreachable_domain_bounces(pair, clients):
    a, _ = pair
    ua = online(a, clients, "ua")
    # closed.test maps to a port nobody listens on; nowhere.test to nothing (no DNS in tests).
    for target in ("someone@closed.test", "someone@nowhere.test"):
        mid = ua.message(target, "into the void")
        err = ua.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 15, what="bounce")
        assert err.get("type") == "error" and err.get("from") == target
        assert err.find(f"{C('error')}/{q(NS_STANZAS, 'remote-server-not-found')}") is not None, tostring(err)
    a.assert_healthy(ua)


def test_outgoing_message_is_in_the_senders_archive(pair, clients):
    a, b = pair
    # b.test archives (its [mam] section): the sender's copy of a message to a.test.
    ub, ua = online(b, clients, "ma"), online(a, clients, "mb")
    body = "archived " + uuid.uuid4().hex[:8]
    mid = ub.message(ua.bare, body)
    ua.recv_stanza("message", id=mid, timeout=15)
    qid = rawxmpp.new_id("mam")
    ub.send_raw(f"<iq type='set' id='{qid}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'/></iq>")
    found = []
    deadline = time.time() + 10
    while time.time() < deadline:
        e = ub.recv(lambda e: e.tag == C("message") or (e.tag == C("iq") and e.get("id") == qid), 10,
                    what="archive results")
        if e.tag == C("iq"):
            break
        found += [b_.text for b_ in e.iter(C("body"))]
    assert body in found


# ------------------------------------------------------------------ raw server streams

class RawServer(rawxmpp.Client):
    """A hand-made server stream to `domain`'s s2s port, claiming to be `origin`."""

    def __init__(self, port, to, origin):
        super().__init__("127.0.0.1", port, to, timeout=15)
        self.origin = origin

    def open(self, tls=True, to=None, ns=NS_SERVER):
        self.connect()
        extra = f" xmlns:db='{NS_DB}'" + (f" from='{self.origin}'" if self.origin else "")
        self.open_stream(ns=ns, to=to, extra=extra)
        if tls:
            assert self.feature(NS_TLS, "starttls") is not None, tostring(self.features)
            self.send_raw(f"<starttls xmlns='{NS_TLS}'/>")
            el = self.recv(lambda e: rawxmpp.ns_of(e.tag) == NS_TLS, what="proceed")
            assert rawxmpp.local(el.tag) == "proceed"
            self._wrap_tls()
            self.open_stream(ns=ns, to=to, extra=extra)
        return self

    def stream_id(self):
        return self.parser.header_attrs.get("id")

    def db_result(self, key, origin=None, to=None):
        origin = origin or self.origin
        self.send_raw(f"<db:result from='{origin}' to='{to or self.domain}'>{key}</db:result>")
        return self.recv(lambda e: e.tag == q(NS_DB, "result"), 15, what="db:result answer")


def test_stream_with_client_namespace_is_invalid_namespace(pair):
    _, b = pair
    s = RawServer(b.s2s_port, "b.test", "a.test")
    s.connect()
    s.send_raw(s.stream_header(ns="jabber:client", extra=f" xmlns:db='{NS_DB}'"))
    assert s.expect_stream_error() == "invalid-namespace"


def test_stream_to_unknown_domain_is_host_unknown(pair):
    _, b = pair
    s = RawServer(b.s2s_port, "elsewhere.test", "a.test")
    s.connect()
    s.send_raw(s.stream_header(ns=NS_SERVER, extra=f" xmlns:db='{NS_DB}'"))
    assert s.expect_stream_error() == "host-unknown"


def test_tls_is_required_before_dialback(pair):
    _, b = pair
    s = RawServer(b.s2s_port, "b.test", "a.test").open(tls=False)
    starttls = s.feature(NS_TLS, "starttls")
    assert starttls is not None and starttls.find(q(NS_TLS, "required")) is not None
    assert s.feature("urn:xmpp:features:dialback", "dialback") is None
    r = s.db_result("00")
    assert r.get("type") == "error"
    assert r.find(f"{S('error')}/{q(NS_STANZAS, 'policy-violation')}") is not None, tostring(r)


def test_dialback_with_a_wrong_key_is_invalid_and_stanzas_are_refused(pair):
    a, b = pair
    s = RawServer(b.s2s_port, "b.test", "a.test").open()
    assert s.feature("urn:xmpp:features:dialback", "dialback") is not None
    # b.test asks a.test's server (the real one) about a key it never made: `invalid`, and
    # the stream is closed (XEP-0220 §2.2.1).
    r = s.db_result("0" * 64)
    assert r.get("type") == "invalid", tostring(r)
    with pytest.raises(rawxmpp.StreamClosed):
        s.recv(lambda e: False, 5, what="the end of the stream")
    b.assert_healthy()


def test_invalid_key_on_a_stream_with_another_domain_is_a_forbidden_error(pair, clients):
    """XEP-0220 §2.1.2: when the stream carries an authorised domain pair, an invalid key
    for another pair gets a <forbidden/> dialback error and the stream (with its pair) stays."""
    a, b = pair
    ub = online(b, clients, "fz")
    s = RawServer(b.s2s_port, "b.test", "a.test").open()
    assert s.db_result(dialback_key(SECRET_A, "b.test", "a.test", s.stream_id())).get("type") == "valid"
    # gw.a.test is a component of a.test: its key, made with another stream id, is invalid
    r = s.db_result(dialback_key(SECRET_A, "b.test", GW_A, "not-this-stream"), origin=GW_A)
    assert r.get("type") == "error", tostring(r)
    assert r.find(q(NS_DB, "error")) is None  # the error child is in jabber:server
    err = [ch for ch in r if rawxmpp.local(ch.tag) == "error"]
    assert err and err[0].find(q(NS_STANZAS, "forbidden")) is not None, tostring(r)
    s.send_raw(f"<message from='still@a.test' to='{ub.jid}' id='fz1' type='chat'><body>ok</body></message>")
    assert ub.recv_stanza("message", id="fz1", timeout=10).get("from") == "still@a.test"
    b.assert_healthy(ub)


def test_dialback_valid_key_then_spoofed_from_is_invalid_from(pair, clients):
    a, b = pair
    ub = online(b, clients, "sb")
    s = RawServer(b.s2s_port, "b.test", "a.test").open()
    # Knowing a.test's secret, the test makes the key a.test's server would make: b.test
    # checks it with a.test's server (db:verify), which finds it valid.
    key = dialback_key(SECRET_A, "b.test", "a.test", s.stream_id())
    r = s.db_result(key)
    assert r.get("type") == "valid", tostring(r)
    # Authorised for a.test: a stanza from a.test is delivered...
    s.send_raw(f"<message from='ghost@a.test/r' to='{ub.jid}' id='ok1' type='chat'><body>hi</body></message>")
    m = ub.recv_stanza("message", id="ok1", timeout=10)
    assert m.get("from") == "ghost@a.test/r"
    # ...one from another domain ends the stream.
    s.send_raw(f"<message from='mallory@evil.test' to='{ub.jid}' id='bad1'><body>x</body></message>")
    assert s.expect_stream_error() == "invalid-from"
    ub.expect_nothing(lambda e: e.tag == C("message") and e.get("id") == "bad1", timeout=1)
    b.assert_healthy(ub)


def test_db_verify_answers_for_keys_this_server_made(pair):
    a, _ = pair
    s = RawServer(a.s2s_port, "a.test", "b.test").open()
    good = dialback_key(SECRET_A, "b.test", "a.test", "stream-123")
    s.send_raw(f"<db:verify from='b.test' to='a.test' id='stream-123'>{good}</db:verify>")
    v = s.recv(lambda e: e.tag == q(NS_DB, "verify"), 10, what="db:verify answer")
    assert v.get("type") == "valid" and v.get("id") == "stream-123" and v.get("from") == "a.test"
    s.send_raw(f"<db:verify from='b.test' to='a.test' id='stream-123'>{'1' * 64}</db:verify>")
    v = s.recv(lambda e: e.tag == q(NS_DB, "verify"), 10, what="db:verify answer")
    assert v.get("type") == "invalid"


def test_stanza_before_dialback_and_malformed_xml(pair):
    a, _ = pair
    s = RawServer(a.s2s_port, "a.test", "b.test").open()
    s.send_raw("<presence from='x@b.test' to='y@a.test'/>")
    assert s.expect_stream_error() == "invalid-from"
    s2 = RawServer(a.s2s_port, "a.test", "b.test").open()
    s2.send_raw("<message><body>x</message>")
    assert s2.expect_stream_error() == "not-well-formed"
    a.assert_healthy()


# ------------------------------------------------------------------ push over federation

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"


def is_push(e):
    return (e.tag == C("iq") and e.get("type") == "set"
            and e.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}") is not None)


def test_push_notification_to_an_app_server_on_another_domain(pair, clients):
    """XEP-0357: the public app servers are on other domains; the notification crosses."""
    a, b = pair
    app = clients.add(b.online("app", resource="push"))
    jid, _, pw = a.new_user("pu")
    u = clients.add(a.login(jid, pw, resource="phone"))
    r = u.iq("set", f"<enable xmlns='{NS_PUSH}' jid='{app.jid}' node='n1'/>")
    assert r.get("type") == "result", tostring(r)
    u.close()
    sender = online(a, clients, "ps")
    sender.message(jid, "wake up")
    iq = app.recv(is_push, 15, what="push notification across domains")
    assert iq.get("from") == jid
    assert iq.find(f".//{q(NS_PUBSUB, 'publish')}").get("node") == "n1"
    app.send_raw(f"<iq type='error' id='{iq.get('id')}' to='{iq.get('from')}'><error type='cancel'>"
                 "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
    # The app server's error (crossing back) disabled the registration.
    time.sleep(1)
    sender.message(jid, "again")
    app.expect_nothing(is_push, timeout=2, what="a notification after the app server's error")


def test_without_federation_a_remote_app_server_is_refused(tmp_path_factory, clients):
    s = StarlingServer(str(tmp_path_factory.mktemp("nofed")), extra_toml="[s2s]\nenabled = false")
    s.start()
    try:
        u = clients.add(s.online("nf"))
        r = u.iq("set", f"<enable xmlns='{NS_PUSH}' jid='push.example.net' node='x'/>")
        assert rawxmpp.stanza_error(r) == ("cancel", "remote-server-not-found"), tostring(r)
        mid = u.message("someone@example.net", "no federation")
        err = u.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 10, what="bounce")
        assert err.find(f"{C('error')}/{q(NS_STANZAS, 'remote-server-not-found')}") is not None
        s.assert_healthy(u)
    finally:
        s.stop()


# ------------------------------------------------------------------ group chat across domains

def test_user_of_another_domain_in_a_room(pair, clients):
    """XEP-0045 over federation: a.test's user joins a room of conference.b.test, talks and leaves."""
    from test_muc import NS_USER, codes, instant, join
    a, b = pair
    ub, ua = online(b, clients, "rb"), online(a, clients, "ra")
    room = f"fed{uuid.uuid4().hex[:6]}@conference.b.test"
    instant(ub, room, "owner")
    before, own, _, _ = join(ua, room, "visitor")
    assert any(p.get("from") == f"{room}/owner" for p in before)
    assert "110" in codes(own)
    p = ub.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/visitor", 15,
                what="remote occupant's join")
    assert p.find(q(NS_USER, "x")) is not None
    ua.send_raw(f"<message to='{room}' type='groupchat' id='g1'><body>from a.test</body></message>")
    for c in (ub, ua):
        m = c.recv(lambda e: e.tag == C("message") and e.get("id") == "g1", 15, what="groupchat")
        assert m.get("from") == f"{room}/visitor" and m.findtext(C("body")) == "from a.test"
    ub.send_raw(f"<message to='{room}' type='groupchat' id='g2'><body>from b.test</body></message>")
    m = ua.recv(lambda e: e.tag == C("message") and e.get("id") == "g2", 15, what="groupchat to remote")
    assert m.get("from") == f"{room}/owner"
    # Leaving: the room hears the unavailable presence from a.test.
    ua.presence(to=f"{room}/visitor", type_="unavailable")
    ub.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/visitor"
            and e.get("type") == "unavailable", 15, what="remote occupant left")


class FakeReceivingServer(threading.Thread):
    """A receiving server for `domain` on loopback (no TLS) that answers every
    <db:result/> with `answer` (a db:result type) and records what it was sent."""

    def __init__(self, domain, answer):
        super().__init__(daemon=True)
        self.domain, self.answer = domain, answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.got = b""

    def run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.settimeout(20)
        try:
            while b"<stream:stream" not in self.got:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                self.got += chunk
            conn.sendall(f"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                         f"xmlns:db='jabber:server:dialback' xmlns:stream='{NS_STREAM}' id='fake1' "
                         f"from='{self.domain}' version='1.0'><stream:features><dialback "
                         f"xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>".encode())
            while b"</db:result>" not in self.got:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                self.got += chunk
            frm = re.search(rb"<db:result[^>]*from=['\"]([^'\"]+)", self.got).group(1).decode()
            reply = f"<db:result from='{self.domain}' to='{frm}' type='{self.answer}'"
            if self.answer == "error":
                reply += "><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"
            else:
                reply += "/>"
            conn.sendall(reply.encode())
            while chunk := conn.recv(4096):
                self.got += chunk
        except OSError:
            pass
        finally:
            conn.close()
            self.sock.close()


@pytest.mark.parametrize("answer,condition", [("invalid", "internal-server-error"),
                                              ("error", "remote-server-timeout")])
def test_refused_dialback_returns_queued_stanzas(tmp_path_factory, clients, answer, condition):
    """XEP-0220 §2.1.1: when the receiving server says our key is `invalid`, what waits for
    the link returns with <internal-server-error/>; a dialback error, <remote-server-timeout/>."""
    fake = FakeReceivingServer("evil.test", answer)
    fake.start()
    a = StarlingServer(str(tmp_path_factory.mktemp("s2s-refused")), domains=["a3.test"],
                       extra_toml=s2s_toml({"evil.test": fake.port}, extra="require_tls = false"))
    a.start()
    try:
        u = clients.add(a.online("rf"))
        u.send_raw("<message to='x@evil.test' id='rf1' type='chat'><body>waits</body></message>")
        e = u.recv(lambda e: e.tag == C("message") and e.get("id") == "rf1", 20, what="the bounce")
        assert e.get("type") == "error" and stanza_error(e)[1] == condition, tostring(e)
        assert b"<db:result" in fake.got
        a.assert_healthy(u)
    finally:
        a.stop()
        fake.join(5)


def test_blocked_domains_both_ways(pair, tmp_path_factory, clients):
    """[s2s] blocked_domains: a message to a blocked domain (or its subdomain) returns
    <forbidden/> at once; a blocked domain's dialback request gets a <forbidden/> dialback
    error and its stanzas are refused; other domains are unaffected."""
    a, b = pair
    z = StarlingServer(str(tmp_path_factory.mktemp("s2s-z")), domains=["z.test"],
                       extra_toml=s2s_toml({"b.test": b.s2s_port, "a.test": a.s2s_port},
                                           extra='blocked_domains = ["B.test"]'))
    z.start()
    try:
        uz = clients.add(z.online("bz"))
        for to in ("x@b.test", "room@conference.b.test"):
            uz.send_raw(f"<message to='{to}' id='bl-{to}' type='chat'><body>no</body></message>")
            e = uz.recv(lambda e: e.tag == C("message") and e.get("id") == f"bl-{to}", 10, what="the bounce")
            assert e.get("type") == "error" and stanza_error(e)[1] == "forbidden", tostring(e)
        assert metric(z, "starling_s2s_connections_total", direction="out") == 0
        # b.test (played by a raw stream) asks to send to z.test
        s = RawServer(z.s2s_port, "z.test", "b.test").open()
        r = s.db_result("0" * 64, origin="b.test", to="z.test")
        assert r.get("type") == "error", tostring(r)
        err = [ch for ch in r if rawxmpp.local(ch.tag) == "error"]
        assert err and err[0].find(q(NS_STANZAS, "forbidden")) is not None, tostring(r)
        s.send_raw(f"<message from='m@b.test' to='{uz.jid}' id='bl3'><body>x</body></message>")
        assert s.expect_stream_error() == "invalid-from"
        uz.expect_nothing(lambda e: e.tag == C("message") and e.get("id") == "bl3", timeout=1)
        # a.test is not blocked: z.test's link to it is made (dialback sent; a.test cannot
        # check the key, z.test being unknown to it, so the message returns, but not as
        # <forbidden/>)
        uz.send_raw("<message to='x@a.test' id='bl4' type='chat'><body>ok</body></message>")
        e = uz.recv(lambda e: e.tag == C("message") and e.get("id") == "bl4", 20, what="a.test's answer")
        assert stanza_error(e)[1] != "forbidden", tostring(e)
        assert metric(z, "starling_s2s_connections_total", direction="out") == 1
        z.assert_healthy(uz)
    finally:
        z.stop()


# ------------------------------------------------------------------ PEP across domains

def caps_query_from(domain):
    return lambda e: (e.tag == C("iq") and e.get("type") == "get" and e.get("from") == domain
                      and e.find(q("http://jabber.org/protocol/disco#info", "query")) is not None)


def test_pep_notifications_reach_contacts_on_another_domain(pair, clients):
    """XEP-0163 4.3 over federation: a.test learns b.test contacts' resources and caps from
    the presence b.test sends, asks an unknown ver of the resource itself (its answer comes
    back over federation and is verified), sends the last item once it is known, then every
    notification; a new resource with known caps gets the last item on its presence; a
    contact the owner has not approved, or whose caps lack +notify, gets nothing."""
    from test_pep import Caps, available, is_event, ok, publish, recv_event, OMEMO_DEVICES, NS_EVENT, TUNE
    a, b = pair
    ua = online(a, clients, "pea")
    owner = ua.bare
    caps = Caps(OMEMO_DEVICES)
    ub = clients.add(b.online("peb", presence=False))
    available(ub, caps)
    subscribe_both(ua, ub)

    def devices(*ids):
        inner = "".join(f"<device id='{i}'/>" for i in ids)
        return f"<list xmlns='eu.siacs.conversations.axolotl'>{inner}</list>"

    def device_ids(ev):
        item = ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item"))
        return [d.get("id") for d in item.find("{eu.siacs.conversations.axolotl}list")]

    ok(publish(ua, OMEMO_DEVICES, devices(1), item_id="current", options={"pubsub#access_model": "open"}))
    # a.test has never seen this ver: it asks the b.test resource, over federation
    query = ub.recv(caps_query_from("a.test"), 15, what="a.test's caps query")
    ub.expect_nothing(lambda e: is_event(e, owner, OMEMO_DEVICES), 0.5,
                      what="a notification before the caps are known")
    caps.answer(ub, query)
    m = ub.recv(lambda e: is_event(e, owner, OMEMO_DEVICES), 15, what="the last item, caps verified")
    assert m.get("to") == ub.jid and m.find(q("urn:xmpp:delay", "delay")) is not None, tostring(m)
    assert device_ids(m.find(q(NS_EVENT, "event"))) == ["1"]

    ok(publish(ua, OMEMO_DEVICES, devices(1, 2), item_id="current"))
    ev = recv_event(ub, owner, OMEMO_DEVICES, timeout=15)
    assert device_ids(ev) == ["1", "2"]

    # a second resource of the contact with the same (now known) caps: the last item on
    # its presence, no query
    jid_b, pw_b = ub.bare, ub.password
    ub2 = clients.add(b.login(jid_b, pw_b, resource="second", presence=False))
    available(ub2, caps)
    m = ub2.recv(lambda e: is_event(e, owner, OMEMO_DEVICES), 15, what="last item for a new resource")
    assert device_ids(m.find(q(NS_EVENT, "event"))) == ["1", "2"]
    ub2.expect_nothing(caps_query_from("a.test"), 0.5, what="a query for a known ver")

    # not approved by the owner (ua subscribes to it, it does not to ua): it gets nothing,
    # though a.test has its presence and verified caps; nor does a contact without +notify
    stranger = clients.add(b.online("pes", presence=False))
    available(stranger, caps)
    ua.presence(to=stranger.bare, type_="subscribe")
    stranger.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 15, what="subscribe")
    stranger.presence(to=ua.bare, type_="subscribed")
    ua.recv(lambda e: e.tag == C("presence") and e.get("from", "").startswith(stranger.bare)
            and e.get("type") is None, 15, what="the stranger's presence")
    tunes = Caps(TUNE)
    other = clients.add(b.online("pet", presence=False))
    available(other, tunes)
    subscribe_both(ua, other)
    query = other.recv(caps_query_from("a.test"), 15, what="a.test's caps query")
    tunes.answer(other, query)
    ok(other.ping_server())
    ok(publish(ua, OMEMO_DEVICES, devices(1, 2, 3), item_id="current"))
    for c in (ub, ub2):
        assert device_ids(recv_event(c, owner, OMEMO_DEVICES, timeout=15)) == ["1", "2", "3"]
    for c in (stranger, other):
        c.expect_nothing(lambda e: is_event(e, owner, OMEMO_DEVICES), 1.5, what="a notification")

    # the contact's resource goes: no more notifications for it (a.test sends one across,
    # counted), still for the other one
    ub2.close()
    ua.recv(lambda e: e.tag == C("presence") and e.get("from") == ub2.jid
            and e.get("type") == "unavailable", 15, what="the second resource's unavailable")
    before = metric(a, "starling_pep_remote_notifications_total")
    ok(publish(ua, OMEMO_DEVICES, devices(4), item_id="current"))
    assert device_ids(recv_event(ub, owner, OMEMO_DEVICES, timeout=15)) == ["4"]
    assert metric(a, "starling_pep_remote_notifications_total") - before == 1
    a.assert_healthy(ua)
    b.assert_healthy(ub)


def test_remote_presence_is_remembered_only_for_roster_contacts_and_bounded(pair, clients):
    """A server (here a raw stream authorised as a.test) cannot make b.test remember
    resources that are not its users' roster contacts, nor more than 256 per user; an
    unavailable presence forgets them; the user's session is unaffected throughout."""
    a, b = pair
    ub = online(b, clients, "rc")
    ok_roster = ub.iq("set", "<query xmlns='jabber:iq:roster'><item jid='friend@a.test'/></query>")
    assert ok_roster.get("type") == "result", tostring(ok_roster)
    s = RawServer(b.s2s_port, "b.test", "a.test").open()
    assert s.db_result(dialback_key(SECRET_A, "b.test", "a.test", s.stream_id())).get("type") == "valid"
    base = metric(b, "starling_s2s_remote_contacts")
    c = "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='AAAAAAAAAAAAAAAAAAAAAAAAAAA='/>"
    for i in range(50):
        s.send_raw(f"<presence from='ghost{i}@a.test/r' to='{ub.bare}'>{c}</presence>")
    for i in range(300):
        s.send_raw(f"<presence from='friend@a.test/r{i}' to='{ub.bare}'>{c}</presence>")
    # the stream's stanzas are handled in order: once the last one reached the user...
    got = 0
    deadline = time.time() + 20
    while got < 300 and time.time() < deadline:
        ub.recv(lambda e: e.tag == C("presence") and e.get("from", "").startswith("friend@a.test/"), 20,
                what="presence from a roster contact")
        got += 1
    assert got == 300
    assert metric(b, "starling_s2s_remote_contacts") - base == 256
    s.send_raw(f"<presence from='friend@a.test' to='{ub.bare}' type='unavailable'/>")
    ub.recv(lambda e: e.tag == C("presence") and e.get("from") == "friend@a.test"
            and e.get("type") == "unavailable", 20, what="unavailable")
    assert metric(b, "starling_s2s_remote_contacts") == base
    b.assert_healthy(ub)


# ------------------------------------------------------------------ SASL EXTERNAL (XEP-0178)

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


@pytest.fixture(scope="module")
def external_pair(tmp_path_factory):
    """e1.test and e2.test, each with a certificate of the test's CA, each trusting it."""
    ca = CertAuthority(str(tmp_path_factory.mktemp("ca")))
    p1, p2, p2_tls = free_port(), free_port(), free_port()
    servers = []
    # e1 reaches e2 over direct TLS (XEP-0368, e2's tls_port), e2 reaches e1 with STARTTLS.
    for domain, other, addr, extra in (("e1.test", "e2.test", f"tls://127.0.0.1:{p2_tls}", ""),
                                       ("e2.test", "e1.test", f"127.0.0.1:{p1}", f"\ntls_port = {p2_tls}")):
        crt, key = ca.issue(domain)
        lines = ["[s2s]", "enabled = true", 'bind = "127.0.0.1"', "connect_timeout_secs = 5",
                 f'ca_file = "{ca.crt}"', "system_roots = false" + extra, "", "[s2s.hosts]",
                 f'"{other}" = "{addr}"']
        toml = ("\n".join(lines)
                + f'\n\n[[tls.certs]]\ndomain = "{domain}"\ncert = "{crt}"\nkey = "{key}"\n')
        servers.append(StarlingServer(str(tmp_path_factory.mktemp(domain)), domains=[domain], extra_toml=toml))
    e1, e2 = servers
    e1.s2s_port, e2.s2s_port = p1, p2
    e2.s2s_tls_port = p2_tls
    e1.start()
    e2.start()
    yield e1, e2, ca
    e1.stop()
    e2.stop()


def test_sasl_external_between_servers_with_ca_certificates(external_pair, clients):
    """XEP-0178 / RFC 6120 §13.8.4: with certificates of a CA both trust, each link is
    authenticated with SASL EXTERNAL (the receiving server offers it after checking the
    certificate the link presented) and no dialback is done."""
    e1, e2, _ = external_pair
    u1, u2 = online(e1, clients, "x1"), online(e2, clients, "x2")
    mid = u1.message(u2.jid, "over EXTERNAL")
    assert u2.recv_stanza("message", id=mid, timeout=15).findtext(C("body")) == "over EXTERNAL"
    mid = u2.message(u1.jid, "and back")
    assert u1.recv_stanza("message", id=mid, timeout=15).findtext(C("body")) == "and back"
    for s in (e1, e2):
        assert metric(s, "starling_s2s_sasl_external_total", direction="out", result="success") >= 1
        assert metric(s, "starling_s2s_sasl_external_total", direction="in", result="success") >= 1
        assert metric(s, "starling_s2s_dialback_total") == 0
    # XEP-0368: e1's link went to e2's direct TLS port, e2's to e1's STARTTLS port
    assert metric(e1, "starling_s2s_connections_total", direction="out", tls="direct") >= 1
    assert metric(e2, "starling_s2s_connections_total", direction="in", tls="direct") >= 1
    assert metric(e2, "starling_s2s_connections_total", direction="out", tls="starttls") >= 1
    assert metric(e1, "starling_s2s_connections_total", direction="in", tls="starttls") >= 1
    assert metric(e1, "starling_s2s_connections_total", direction="out", tls="starttls") == 0


def test_direct_tls_port_for_servers(external_pair):
    """XEP-0368 on the receiving side: TLS at once with ALPN xmpp-server, then a stream
    whose features offer no STARTTLS (and EXTERNAL for a trusted certificate)."""
    e1, e2, ca = external_pair
    s = RawServer(e2.s2s_tls_port, "e2.test", "e1.test")
    s.client_cert = (f"{ca.dir}/e1.test.crt", f"{ca.dir}/e1.test.key")
    s.connect()
    s._wrap_tls(alpn=["xmpp-server"])
    assert s.sock.selected_alpn_protocol() == "xmpp-server"
    s.open_stream(ns=NS_SERVER, extra=f" xmlns:db='{NS_DB}' from='e1.test'")
    assert s.feature(NS_TLS, "starttls") is None, tostring(s.features)
    assert s.mechanisms() == ["EXTERNAL"]
    assert s.feature("urn:xmpp:features:dialback", "dialback") is not None
    # A second STARTTLS on a TLS stream is a policy violation (RFC 6120 §5.4.3.1).
    s.send_raw(f"<starttls xmlns='{NS_TLS}'/>")
    assert s.expect_stream_error() == "policy-violation"
    # Plain bytes on the TLS port: the connection closes, the server stays healthy.
    raw = socket.create_connection(("127.0.0.1", e2.s2s_tls_port), timeout=5)
    raw.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server'>")
    raw.settimeout(5)
    data = b""
    try:
        while chunk := raw.recv(100):
            data += chunk
    finally:
        raw.close()
    assert data == b"" or data[0] == 0x15, data  # nothing, or a TLS alert; then closed
    e2.assert_healthy()


def external_stream(server, origin, cert=None):
    s = RawServer(server.s2s_port, server.domain, origin)
    s.client_cert = cert
    return s.open()


def test_sasl_external_offered_only_for_a_trusted_certificate_of_the_claimed_domain(external_pair, clients):
    """The receiving side: EXTERNAL is offered only when a certificate the CA issued for the
    stream's `from` was presented; the authorization identity must be that domain
    (<invalid-authzid/>), EXTERNAL not offered is <invalid-mechanism/>; after <success/> and a
    new stream, stanzas of that domain are taken without dialback."""
    e1, e2, ca = external_pair
    u2 = online(e2, clients, "x3")
    # No certificate, a self-signed one, one of the CA for another domain: not offered.
    cert_other = ca.issue("e3.test")
    for origin, cert in (("e1.test", None), ("e1.test", ca.self_signed("e1.test", "e1-self")),
                         ("e1.test", cert_other)):
        s = external_stream(e2, origin, cert)
        assert "EXTERNAL" not in s.mechanisms(), tostring(s.features)
        assert s.feature("urn:xmpp:features:dialback", "dialback") is not None
        s.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>")
        f = s.recv(lambda e: e.tag == q(NS_SASL, "failure"), 10, what="SASL failure")
        assert f.find(q(NS_SASL, "invalid-mechanism")) is not None, tostring(f)
        s.close()
    # A CA certificate of e1.test, presented as e1.test.
    cert1 = (f"{ca.dir}/e1.test.crt", f"{ca.dir}/e1.test.key")
    s = external_stream(e2, "e1.test", cert1)
    assert s.mechanisms() == ["EXTERNAL"], tostring(s.features)
    s.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGEAYg==</auth>")
    f = s.recv(lambda e: e.tag == q(NS_SASL, "failure"), 10, what="SASL failure")
    assert f.find(q(NS_SASL, "invalid-mechanism")) is not None, tostring(f)
    s.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{base64.b64encode(b'e3.test').decode()}</auth>")
    f = s.recv(lambda e: e.tag == q(NS_SASL, "failure"), 10, what="SASL failure")
    assert f.find(q(NS_SASL, "invalid-authzid")) is not None, tostring(f)
    s.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{base64.b64encode(b'e1.test').decode()}</auth>")
    s.recv(lambda e: e.tag == q(NS_SASL, "success"), 10, what="SASL success")
    s.open_stream(ns=NS_SERVER, extra=f" xmlns:db='{NS_DB}' from='e1.test'")
    assert "EXTERNAL" not in s.mechanisms()
    s.send_raw(f"<message from='ext@e1.test/r' to='{u2.jid}' id='ext1' type='chat'><body>hi</body></message>")
    m = u2.recv_stanza("message", id="ext1", timeout=10)
    assert m.get("from") == "ext@e1.test/r"
    # still only for e1.test
    s.send_raw(f"<message from='m@e3.test' to='{u2.jid}' id='ext2'><body>x</body></message>")
    assert s.expect_stream_error() == "invalid-from"
    u2.expect_nothing(lambda e: e.tag == C("message") and e.get("id") == "ext2", timeout=1)
    # Three failures end the stream.
    s = external_stream(e2, "e1.test", cert1)
    for _ in range(3):
        s.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>!!!</auth>")
    f = s.recv(lambda e: e.tag == q(NS_SASL, "failure"), 10, what="SASL failure")
    assert f.find(q(NS_SASL, "incorrect-encoding")) is not None, tostring(f)
    assert s.expect_stream_error() == "policy-violation"
    e2.assert_healthy(u2)


@pytest.mark.parametrize("san,offered", [
    (f"otherName:{XMPP_ADDR};UTF8:e1.test", True),
    (f"otherName:{SRV_NAME};IA5:_xmpp-server.e1.test", True),
    (f"otherName:{SRV_NAME};IA5:_XMPP-Server.E1.test", True),
    (f"otherName:{SRV_NAME};IA5:_xmpp-client.e1.test", False),
    (f"otherName:{XMPP_ADDR};UTF8:someone@e1.test", False),
    (f"otherName:{XMPP_ADDR};UTF8:e3.test,otherName:{SRV_NAME};IA5:_xmpp-server.e3.test", False),
    ("DNS:*.e1.test", False),
], ids=["xmppAddr", "SRV-ID", "SRV-ID-case", "SRV-ID-client", "xmppAddr-user", "other-domain",
        "wildcard-below"])
def test_sasl_external_for_each_kind_of_server_identity(external_pair, san, offered):
    """RFC 6120 §13.7.1.2 / RFC 6125: a server certificate names its domain by a DNS-ID
    (wildcards included), an SRV-ID `_xmpp-server.<domain>` or an XmppAddr. A certificate of the
    trusted CA naming e1.test in any of these ways gets EXTERNAL for a stream from e1.test (and
    the authentication succeeds); an SRV-ID of the client service, a user's address, another
    domain's identities or a wildcard a level below do not (dialback is still offered)."""
    e1, e2, ca = external_pair
    cert = ca.issue("e1.test", name="e1-" + hashlib.sha1(san.encode()).hexdigest()[:10], san=san)
    s = external_stream(e2, "e1.test", cert)
    assert ("EXTERNAL" in s.mechanisms()) == offered, tostring(s.features)
    assert s.feature("urn:xmpp:features:dialback", "dialback") is not None
    if offered:
        s.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>")
        s.recv(lambda e: e.tag == q(NS_SASL, "success"), 10, what="SASL success")
        s.open_stream(ns=NS_SERVER, extra=f" xmlns:db='{NS_DB}' from='e1.test'")
        assert "EXTERNAL" not in s.mechanisms()
    s.close()


def test_a_revoked_server_certificate_gets_no_external(tmp_path_factory):
    """`[s2s] crl_file` (RFC 5280 revocation lists of the CAs of `ca_file`): a server whose
    certificate the CA revokes is no longer offered EXTERNAL once the CA's new list is in the
    file (read again when it changes, no restart); dialback is still offered, so the domain can
    still prove itself the other way. A certificate the list does not name keeps EXTERNAL."""
    d = str(tmp_path_factory.mktemp("crl-ca"))
    ca = CertAuthority(d)
    crls = ca.crl(f"{d}/crls.pem")
    crt, key = ca.issue("e4.test")
    port = free_port()
    toml = ("\n".join(["[s2s]", "enabled = true", 'bind = "127.0.0.1"', f'ca_file = "{ca.crt}"',
                       f'crl_file = "{crls}"', "system_roots = false"])
            + f'\n\n[[tls.certs]]\ndomain = "e4.test"\ncert = "{crt}"\nkey = "{key}"\n')
    e4 = StarlingServer(str(tmp_path_factory.mktemp("e4.test")), domains=["e4.test"], extra_toml=toml)
    e4.s2s_port = port
    e4.start()
    try:
        revoked, kept = ca.issue("e5.test"), ca.issue("e6.test")
        for origin, cert in (("e5.test", revoked), ("e6.test", kept)):
            s = external_stream(e4, origin, cert)
            assert "EXTERNAL" in s.mechanisms(), tostring(s.features)
            s.close()
        ca.revoke(revoked[0])
        ca.crl(crls)
        deadline = time.monotonic() + 10
        while True:
            s = external_stream(e4, "e5.test", revoked)
            if "EXTERNAL" not in s.mechanisms():
                break
            s.close()
            assert time.monotonic() < deadline, "the new list was not read"
            time.sleep(0.3)
        assert s.feature("urn:xmpp:features:dialback", "dialback") is not None, tostring(s.features)
        s.close()
        s = external_stream(e4, "e6.test", kept)
        assert "EXTERNAL" in s.mechanisms(), tostring(s.features)
        s.close()
    finally:
        e4.stop()


# ------------------------------------------------------------------ a cluster as one domain

@pytest.fixture(scope="module")
def federated_cluster(tmp_path_factory):
    """c.test, a 3-node cluster, and x.test, which knows only node 1's address."""
    px = free_port()
    ports = {}

    def extra(node):
        node.s2s_port = ports.setdefault(node.node_id, free_port())
        return [s2s_toml({"x.test": px})]

    c = Cluster(str(tmp_path_factory.mktemp("s2s-cluster")), 3, domain="c.test", extra_config=extra)
    x = None
    try:
        x = StarlingServer(str(tmp_path_factory.mktemp("s2s-x")), domains=["x.test"],
                           extra_toml=s2s_toml({"c.test": ports[1]}))
        x.s2s_port = px
        x.start()
        yield c, x
    finally:
        if x:
            x.stop()
        c.stop()


def test_cluster_domain_federates_through_any_node(federated_cluster, clients):
    """Node 2's outgoing link is verified by x.test through node 1 (the dialback secret is
    shared through the store), and what x.test sends through node 1 reaches a user on node 3."""
    c, x = federated_cluster
    ux = clients.add(x.online("cx"))
    u2 = clients.add(c[2].online("c2"))
    u3 = clients.add(c[3].online("c3"))
    mid = u2.message(ux.jid, "from node 2")
    m = ux.recv_stanza("message", id=mid, timeout=20)
    assert m.get("from") == u2.jid
    mid = ux.message(u3.jid, "to node 3")
    m = u3.recv_stanza("message", id=mid, timeout=20)
    assert m.get("from") == ux.jid and m.findtext(C("body")) == "to node 3"


def test_cluster_pep_reaches_remote_contact_known_to_another_node(federated_cluster, clients):
    """x.test's presence (and caps answer) reaches c.test through node 1 only; the owner
    publishes on node 2, which asks every node to notify the remote contacts it knows."""
    from test_pep import Caps, available, is_event, ok, publish, recv_event, NS_EVENT
    c, x = federated_cluster
    node = "urn:xmpp:omemo:2:devices"
    caps = Caps(node)
    ux = clients.add(x.online("px", presence=False))
    available(ux, caps)
    u2 = clients.add(c[2].online("p2"))
    owner = u2.bare
    subscribe_both(u2, ux)
    ok(publish(u2, node, "<devices xmlns='urn:xmpp:omemo:2'><device id='7'/></devices>", item_id="current"))
    query = ux.recv(caps_query_from("c.test"), 20, what="c.test's caps query")
    caps.answer(ux, query)

    def devices(e):
        ev = e.find(q(NS_EVENT, "event"))
        item = ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item"))
        return [d.get("id") for d in item.find("{urn:xmpp:omemo:2}devices")]

    # the last item once node 1 verified the caps (or, if node 2's request to notify
    # reached node 1 after that, the notification itself)
    m = ux.recv(lambda e: is_event(e, owner, node), 20, what="the last item")
    assert devices(m) == ["7"]
    ok(publish(u2, node, "<devices xmlns='urn:xmpp:omemo:2'><device id='8'/></devices>", item_id="current"))
    m = ux.recv(lambda e: is_event(e, owner, node) and devices(e) == ["8"], 20, what="the notification")
    assert m.get("type") == "headline" and m.find(q("urn:xmpp:delay", "delay")) is None, tostring(m)


# ------------------------------------------------------------------ a component of one domain, federating

def test_component_talks_to_another_domain(pair, clients):
    """A XEP-0114 component of a.test (gw.a.test) reaches b.test over a link of its own domain
    (b.test checks gw.a.test's dialback key with a.test's server), and b.test's user answers it."""
    from test_components import Component, K
    a, b = pair
    ub = online(b, clients, "cb")
    comp = Component("127.0.0.1", a.component_port, GW_A, timeout=15)
    clients.add(comp)
    comp.login(GW_SECRET)
    comp.send_raw(f"<message from='bot@{GW_A}' to='{ub.jid}' id='c1' type='chat'><body>from a gateway</body></message>")
    m = ub.recv_stanza("message", id="c1", timeout=15)
    assert m.get("from") == f"bot@{GW_A}" and m.findtext(C("body")) == "from a gateway"
    ub.message(f"bot@{GW_A}", "and back", mid="c2")
    m = comp.recv(lambda e: e.tag == K("message") and e.get("id") == "c2", 15, what="reply at the component")
    assert m.get("from") == ub.jid
