"""XMPP over BOSH (XEP-0124, XEP-0206): raw HTTP requests against `[bosh]` over HTTPS.
Also XEP-0156 host-meta on that listener.

A web client's whole life: session creation (stream features in the first answer), SASL,
the stream restart, bind, presence and messages both ways with a TCP client (long-polling
for what arrives), termination. Bad input: malformed XML, an unknown domain or sid, a rid
out of the window, a retransmitted rid (the same answer again), a wrong password; a held
request released by the next one; a session left without requests ends (inactivity) and
its contacts see it go.
"""
import base64
import http.client
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from cluster import Cluster
from conftest import StarlingServer, free_port
from rawxmpp import C, q, tostring

NS_BIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_STREAM = "http://etherx.jabber.org/streams"
INACTIVITY = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    s = StarlingServer(str(tmp_path_factory.mktemp("bosh")),
                       extra_toml=f"[bosh]\nenabled = true\nport = {port}\ntls = true\n"
                                  f"max_wait_secs = 10\ninactivity_secs = {INACTIVITY}\n")
    s.bosh_port = port
    s.start()
    yield s
    s.stop()


def post(server, text, timeout=20):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", server.bosh_port, timeout=timeout, context=ctx)
    try:
        c.request("POST", "/http-bind", body=text.encode(),
                  headers={"Content-Type": "text/xml; charset=utf-8"})
        r = c.getresponse()
        data = r.read()
        return r.status, ET.fromstring(data) if data else None
    finally:
        c.close()


class Bosh:
    """One BOSH session, driven by hand."""

    def __init__(self, server, wait=5, **attrs):
        self.server = server
        self.rid = 4000 + int(uuid.uuid4().int % 100000)
        extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
        status, b = post(server, f"<body xmlns='{NS_BIND}' xmlns:xmpp='{NS_XBOSH}' rid='{self.rid}' "
                                 f"to='{server.domain}' wait='{wait}' hold='1' ver='1.6' xml:lang='en' "
                                 f"xmpp:version='1.0'{extra}/>")
        assert status == 200 and b.get("type") is None, tostring(b)
        self.sid = b.get("sid")
        self.created = b
        self.queue = list(b)

    def send(self, payload="", **attrs):
        self.rid += 1
        extra = "".join(f" {k.replace('_', ':')}='{v}'" for k, v in attrs.items())
        # `via`: the nodes to send through in turn (a load balancer that keeps no client on
        # one node); default, the node the session was made on
        target = self.via[self.rid % len(self.via)] if getattr(self, "via", None) else self.server
        status, b = post(target, f"<body xmlns='{NS_BIND}' xmlns:xmpp='{NS_XBOSH}' rid='{self.rid}' "
                                      f"sid='{self.sid}'{extra}>{payload}</body>")
        assert status == 200, (status, tostring(b) if b is not None else None)
        self.queue.extend(list(b))
        return b

    def recv(self, pred, timeout=15, what="element"):
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.queue):
                if pred(e):
                    return self.queue.pop(i)
            assert time.time() < deadline, f"no {what}; got {[tostring(e)[:200] for e in self.queue]}"
            self.send()

    def login(self, user, password, resource="web"):
        mechs = [m.text for m in self.created.iter(q(NS_SASL, "mechanism"))]
        assert "PLAIN" in mechs, tostring(self.created)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        self.recv(lambda e: e.tag == q(NS_SASL, "success"), what="SASL success")
        self.queue.clear()
        b = self.send(xmpp_restart="true", to=self.server.domain)
        feats = self.recv(lambda e: e.tag == q(NS_STREAM, "features"), what="features after restart")
        assert feats.find(q("urn:ietf:params:xml:ns:xmpp-bind", "bind")) is not None, tostring(b)
        self.send("<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        r = self.recv(lambda e: e.tag == C("iq") and e.get("id") == "bind1", what="bind result")
        assert r.get("type") == "result", tostring(r)
        self.jid = r.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid").text
        return self.jid


def test_session_creation_answers_with_the_stream_features(server):
    b = Bosh(server)
    c = b.created
    assert c.get("sid") and c.get("authid") and c.get("requests") == "2" and c.get("hold") == "1"
    assert int(c.get("wait")) <= 10 and c.get("inactivity") == str(INACTIVITY)
    assert c.get("from") == server.domain and c.get(f"{{{NS_XBOSH}}}version") == "1.0"
    assert c.find(q(NS_STREAM, "features")) is not None, tostring(c)
    # no STARTTLS over BOSH: the HTTP connection is the secure layer
    assert c.find(".//{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None


def test_host_meta_names_the_endpoint(server):
    """XEP-0156: the listener tells web clients where BOSH is, as XRD and as JSON."""
    import json
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for path in ("/.well-known/host-meta", "/.well-known/host-meta.json"):
        c = http.client.HTTPSConnection("127.0.0.1", server.bosh_port, timeout=10, context=ctx)
        c.request("GET", path, headers={"Host": f"{server.domain}:{server.bosh_port}"})
        r = c.getresponse()
        data = r.read().decode()
        c.close()
        assert r.status == 200 and r.getheader("Access-Control-Allow-Origin") == "*"
        href = f"https://{server.domain}:{server.bosh_port}/http-bind"
        if path.endswith(".json"):
            links = json.loads(data)["links"]
            assert {"rel": "urn:xmpp:alt-connections:xbosh", "href": href} in links, data
        else:
            assert f"rel='urn:xmpp:alt-connections:xbosh' href='{href}'" in data, data


def test_login_chat_both_ways_and_terminate(server, clients):
    tcp = clients.add(server.online("bt"))
    jid, user, pw = server.new_user("bw")
    b = Bosh(server)
    full = b.login(user, pw)
    assert full.startswith(jid + "/")
    b.send("<presence xmlns='jabber:client'/>")
    make_mutual_bosh(server, b, tcp, jid)
    # a message from the TCP client reaches the BOSH client through a held request
    got = []
    poll = threading.Thread(target=lambda: got.append(b.recv(
        lambda e: e.tag == C("message") and e.get("id") == "m1", what="the message")))
    poll.start()
    time.sleep(0.5)
    tcp.message(full, "to the web", mid="m1")
    poll.join(20)
    assert got and got[0].findtext(C("body")) == "to the web"
    # and back
    b.send(f"<message xmlns='jabber:client' to='{tcp.jid}' id='m2' type='chat'><body>from the web</body></message>")
    m = tcp.recv_stanza("message", id="m2", timeout=15)
    assert m.get("from") == full and m.findtext(C("body")) == "from the web"
    # terminate: the contact sees it go
    b.rid += 1
    status, t = post(server, f"<body xmlns='{NS_BIND}' rid='{b.rid}' sid='{b.sid}' type='terminate'>"
                             "<presence xmlns='jabber:client' type='unavailable'/></body>")
    assert status == 200 and t.get("type") == "terminate"
    tcp.recv(lambda e: e.tag == C("presence") and e.get("from") == full and e.get("type") == "unavailable",
             15, what="unavailable")
    status, t = post(server, f"<body xmlns='{NS_BIND}' rid='{b.rid + 1}' sid='{b.sid}'/>")
    assert status == 404 and t.get("condition") == "item-not-found"
    server.assert_healthy(tcp)


def make_mutual_bosh(server, b, tcp, bosh_bare):
    """Mutual subscription between a BOSH user and a TCP client."""
    tcp.presence(to=bosh_bare, type_="subscribe")
    b.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", what="subscribe")
    b.send(f"<presence xmlns='jabber:client' to='{tcp.bare}' type='subscribed'/>"
           f"<presence xmlns='jabber:client' to='{tcp.bare}' type='subscribe'/>")
    tcp.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 15, what="subscribe back")
    tcp.presence(to=bosh_bare, type_="subscribed")
    tcp.recv(lambda e: e.tag == C("presence") and e.get("from", "").startswith(bosh_bare + "/")
             and e.get("type") is None, 15, what="the web user's presence")


def test_held_request_is_released_by_the_next(server):
    jid, user, pw = server.new_user("bh")
    b = Bosh(server, wait=10)
    b.login(user, pw)
    rid = b.rid + 1
    held = {}

    def hold():
        t0 = time.time()
        held["answer"] = post(server, f"<body xmlns='{NS_BIND}' rid='{rid}' sid='{b.sid}'/>")
        held["took"] = time.time() - t0
    t = threading.Thread(target=hold)
    t.start()
    time.sleep(1.0)
    assert t.is_alive(), "an empty request with nothing to say is held"
    b.rid = rid + 1
    second = threading.Thread(target=lambda: post(server, f"<body xmlns='{NS_BIND}' rid='{rid + 1}' sid='{b.sid}'/>"))
    second.start()
    t.join(5)
    assert not t.is_alive(), "the held request was not released"
    assert held["answer"][0] == 200 and len(list(held["answer"][1])) == 0
    assert held["took"] < 5
    second.join(15)


def test_bad_requests(server):
    # not XML, not a body
    status, b = post(server, "<body xmlns='x' rid='1'")
    assert status == 400 and b.get("condition") == "bad-request"
    status, b = post(server, "<notbody xmlns='jabber:client' rid='1'/>")
    assert status == 400 and b.get("condition") == "bad-request"
    status, b = post(server, f"<body xmlns='{NS_BIND}' to='{server.domain}'/>")
    assert status == 400, "no rid"
    # unknown domain, unknown session
    status, b = post(server, f"<body xmlns='{NS_BIND}' rid='1' to='nowhere.example' wait='5' hold='1'/>")
    assert b.get("type") == "terminate" and b.get("condition") == "host-unknown"
    status, b = post(server, f"<body xmlns='{NS_BIND}' rid='2' sid='nosuchsession'/>")
    assert status == 404 and b.get("condition") == "item-not-found"
    # a retransmitted rid gets the same answer; a rid far ahead ends the session
    s = Bosh(server)
    first = s.send(f"<iq xmlns='jabber:client' type='get' id='p1' to='{server.domain}'>"
                   "<ping xmlns='urn:xmpp:ping'/></iq>")
    status, again = post(server, f"<body xmlns='{NS_BIND}' rid='{s.rid}' sid='{s.sid}'/>")
    assert status == 200 and ET.tostring(again) == ET.tostring(first)
    status, b = post(server, f"<body xmlns='{NS_BIND}' rid='{s.rid + 50}' sid='{s.sid}'/>")
    assert status == 404 and b.get("condition") == "item-not-found"
    # a wrong password is a SASL failure inside the session
    jid, user, pw = server.new_user("bx")
    s = Bosh(server)
    token = base64.b64encode(f"\0{user}\0wrong".encode()).decode()
    s.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
    f = s.recv(lambda e: e.tag == q(NS_SASL, "failure"), what="SASL failure")
    assert f.find(q(NS_SASL, "not-authorized")) is not None
    server.assert_healthy()


def test_key_sequence_protects_the_session(server):
    """XEP-0124 15: a session created with a newkey takes each new request only with the key
    before the last one (hex SHA-1 of the key = the last key); a client switches to a new
    sequence by sending its last key with a newkey; a wrong or missing key ends the session
    with item-not-found, its payload not processed; a retransmitted request is answered again."""
    import hashlib

    def sequence(n):
        keys = [hashlib.sha1(uuid.uuid4().hex.encode()).hexdigest()]
        for _ in range(n - 1):
            keys.append(hashlib.sha1(keys[-1].encode()).hexdigest())
        return keys  # K(1) .. K(n); K(n) is sent first, as newkey

    ping = f"<iq xmlns='jabber:client' type='get' id='{{}}' to='{server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
    # (every request carries a ping, so that it is answered at once: an unauthenticated
    # stream would time out during empty polls)
    k = sequence(4)
    s = Bosh(server, newkey=k[3].upper())  # a key is checked as a number: hex in either case
    s.send(ping.format("k1"), key=k[2])
    s.recv(lambda e: e.get("id") == "k1", what="ping answer")
    first = s.send(ping.format("k2"), key=k[1])
    # a retransmission: the same answer again, although its key is no longer the next one
    status, again = post(server, f"<body xmlns='{NS_BIND}' rid='{s.rid}' sid='{s.sid}' key='{k[1]}'>"
                                 f"{ping.format('k2')}</body>")
    assert status == 200 and ET.tostring(again) == ET.tostring(first)
    # the last key of the sequence, with the first key of a new one
    k2 = sequence(3)
    s.send(ping.format("k3"), key=k[0], newkey=k2[2])
    s.send(ping.format("k4"), key=k2[1])
    s.recv(lambda e: e.get("id") == "k4", what="ping answer in the new sequence")
    # an old key: the session ends, the payload is not processed
    s.rid += 1
    status, b = post(server, f"<body xmlns='{NS_BIND}' rid='{s.rid}' sid='{s.sid}' key='{k[0]}'>"
                             f"{ping.format('stolen')}</body>")
    assert status == 404 and b.get("type") == "terminate" and b.get("condition") == "item-not-found"
    assert len(b) == 0, tostring(b)  # nothing answered: the payload was not taken
    status, b = post(server, f"<body xmlns='{NS_BIND}' rid='{s.rid + 1}' sid='{s.sid}' key='{k2[0]}'/>")
    assert status == 404 and b.get("condition") == "item-not-found", "the session must be gone"
    # no key at all, in a session that has one: the same
    k3 = sequence(2)
    s = Bosh(server, newkey=k3[1])
    s.rid += 1
    status, b = post(server, f"<body xmlns='{NS_BIND}' rid='{s.rid}' sid='{s.sid}'/>")
    assert status == 404 and b.get("condition") == "item-not-found"
    # a session created without a newkey ignores keys
    s = Bosh(server)
    s.send(ping.format("nk"), key="whatever")
    s.recv(lambda e: e.get("id") == "nk", what="ping answer without keys")
    server.assert_healthy()


def test_inactive_session_ends_and_contacts_see_it(server, clients):
    tcp = clients.add(server.online("bi"))
    jid, user, pw = server.new_user("bj")
    b = Bosh(server)
    full = b.login(user, pw)
    b.send("<presence xmlns='jabber:client'/>")
    make_mutual_bosh(server, b, tcp, jid)
    # no more requests: after `inactivity` the session ends like a closed connection
    tcp.recv(lambda e: e.tag == C("presence") and e.get("from") == full and e.get("type") == "unavailable",
             INACTIVITY + 15, what="unavailable after inactivity")
    status, t = post(server, f"<body xmlns='{NS_BIND}' rid='{b.rid + 1}' sid='{b.sid}'/>")
    assert status == 404 and t.get("condition") == "item-not-found"
    server.assert_healthy(tcp)


def test_bosh_session_in_a_cluster(tmp_path_factory, clients):
    """A BOSH session made on node 1 is a session of the cluster: its requests may reach any
    node (they are forwarded to node 1), and a TCP client on node 2 and the web user exchange
    presence and messages across the nodes."""
    ports = {}

    def extra(node):
        ports[node.node_id] = free_port()
        return ["[bosh]", "enabled = true", f"port = {ports[node.node_id]}", "tls = true"]

    c = Cluster(str(tmp_path_factory.mktemp("bosh-cluster")), 3, extra_config=extra)
    try:
        node1 = c[1]
        node1.bosh_port = ports[1]
        tcp = clients.add(c[2].online("bc"))
        jid, user, pw = node1.new_user("bd")
        b = Bosh(node1)
        assert b.sid.startswith("1-"), "the sid names the node"
        for i in (2, 3):
            c[i].bosh_port = ports[i]
        b.via = [c[1], c[2], c[3]]
        full = b.login(user, pw)
        b.send("<presence xmlns='jabber:client'/>")
        make_mutual_bosh(node1, b, tcp, jid)
        tcp.message(full, "across nodes", mid="x1")
        m = b.recv(lambda e: e.tag == C("message") and e.get("id") == "x1", what="the message from node 2")
        assert m.findtext(C("body")) == "across nodes"
        b.send(f"<message xmlns='jabber:client' to='{tcp.jid}' id='x2' type='chat'><body>back</body></message>")
        assert tcp.recv_stanza("message", id="x2", timeout=15).get("from") == full
        # an unknown session named for node 3 is unknown there too
        status, t = post(c[2], f"<body xmlns='{NS_BIND}' rid='5' sid='3-00ff'/>")
        assert status == 404 and t.get("condition") == "item-not-found"
    finally:
        c.stop()
