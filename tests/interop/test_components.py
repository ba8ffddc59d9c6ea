"""XEP-0114 external components: the accept protocol (handshake, its stream errors),
routing between components and local users both ways (messages with offline storage,
IQ, presence subscriptions), address checks, and a component reached from every node
of a 3-node cluster, with <service-unavailable/> once it is gone.

The component side is raw XML (``Component``, a rawxmpp client speaking
jabber:component:accept); one test uses slixmpp's ComponentXMPP.
"""

import hashlib
import time
import uuid

import pytest

from cluster import Cluster, pick_port
from conftest import HOST, StarlingServer, free_port, wait_port
from rawxmpp import NS_STANZAS, C, Client, StreamClosed, XMPPTimeout, new_id, q, tostring

pytestmark = [pytest.mark.starling_only]

NS_COMPONENT = "jabber:component:accept"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PING = "urn:xmpp:ping"

GW = "gw.localhost"
GW2 = "other.example.org"
GW3 = "irc.elsewhere.net"  # no subdomain of a served domain: allowed by other_domains
SECRET = "s3cret-" + uuid.uuid4().hex[:6]


def K(name: str) -> str:
    """Tag in the component namespace."""
    return q(NS_COMPONENT, name)


class Component(Client):
    """A raw XEP-0114 component connection."""

    def __init__(self, host, port, domain, **kw):
        super().__init__(host, port, domain, **kw)

    def open(self, to=None, ns=NS_COMPONENT) -> dict:
        """Connects and sends the stream header; returns the server's header attributes."""
        self.connect()
        to = self.domain if to is None else to
        self.send_raw(f"<?xml version='1.0'?><stream:stream xmlns='{ns}' "
                      f"xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>")
        deadline = time.monotonic() + self.timeout
        while self.header is None:
            if not self._read_some(deadline):
                raise XMPPTimeout("no stream header from the server")
        return self.header

    def handshake(self, secret: str):
        sid = self.header.get("id")
        digest = hashlib.sha1((sid + secret).encode()).hexdigest()
        self.send_raw(f"<handshake>{digest}</handshake>")
        return self.recv(lambda e: e.tag == K("handshake"), what="<handshake/>")

    def login(self, secret: str) -> "Component":
        self.open()
        self.handshake(secret)
        return self

    def recv_stanza(self, name: str, timeout=None, **attrs):
        def pred(e):
            return e.tag == K(name) and all(e.get(k.rstrip("_")) == v for k, v in attrs.items())
        return self.recv(pred, timeout, what=f"<{name} {attrs}>")

    def iq_from(self, frm: str, to: str, type_: str, payload: str, timeout=None):
        iid = new_id("ciq")
        self.send_raw(f"<iq from='{frm}' to='{to}' type='{type_}' id='{iid}'>{payload}</iq>")
        return self.recv(lambda e: e.tag == K("iq") and e.get("id") == iid and
                         e.get("type") in ("result", "error"), timeout, what=f"iq reply {iid}")




def error_condition(el) -> str:
    err = el.find(K("error"))
    if err is None:
        err = el.find(C("error"))
    assert err is not None, tostring(el)
    for child in err:
        if child.tag.startswith("{%s}" % NS_STANZAS) and not child.tag.endswith("}text"):
            return child.tag.split("}")[1]
    raise AssertionError(f"no condition in {tostring(el)}")


class ComponentServer(StarlingServer):
    """A server with the component listener on and two components configured."""

    def __init__(self, workdir, **kw):
        super().__init__(workdir, **kw)
        self.component_port = free_port()
        with open(self.config_path, "a") as f:
            f.write("\n".join([
                "", "[components]", "enabled = true", f'bind = "{HOST}"', f"port = {self.component_port}",
                f'other_domains = ["{GW3}"]',
                "[components.secrets]", f'"{GW}" = "{SECRET}"', f'"{GW2}" = "{SECRET}2"',
                f'"{GW3}" = "{SECRET}3"', "",
            ]))

    def start(self):
        super().start()
        wait_port(self.component_port, 10, self.proc)

    def component(self, domain=GW, timeout=None) -> Component:
        kw = {} if timeout is None else {"timeout": timeout}
        return Component(self.host, self.component_port, domain, **kw)


@pytest.fixture(scope="module")
def cserver(tmp_path_factory):
    s = ComponentServer(str(tmp_path_factory.mktemp("components")))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def gw(cserver, clients):
    """The component gw.localhost, logged in (one at a time: a test gets it to itself)."""
    # The previous test's connection is unregistered a moment after it closed; until then
    # the server answers `conflict` (the domain is connected), which a loaded machine makes
    # last longer: log in again then, for a bounded time.
    deadline = time.monotonic() + 10
    while True:
        c = clients.add(cserver.component())
        try:
            c.login(SECRET)
            break
        except StreamClosed as e:
            if e.stream_error != "conflict" or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield c
    c.close()


# ------------------------------------------------------------ the accept protocol

def test_handshake_accepted(cserver, clients):
    c = clients.add(cserver.component())
    h = c.open()
    assert h.get("from") == GW
    assert h.get("id"), h
    assert c.parser.root.tag == q("http://etherx.jabber.org/streams", "stream")
    ok = c.handshake(SECRET)
    assert len(ok) == 0 and not (ok.text or "").strip()
    # The connection serves: a ping to the server is answered.
    r = c.iq_from(GW, "localhost", "get", f"<ping xmlns='{NS_PING}'/>")
    assert r.get("type") == "result", tostring(r)
    assert r.get("to") == GW and r.get("from") == "localhost"
    c.close()


def test_wrong_secret_is_not_authorized(cserver, clients):
    c = clients.add(cserver.component())
    c.open()
    c.send_raw("<handshake>%s</handshake>" % hashlib.sha1((c.header["id"] + "wrong").encode()).hexdigest())
    assert c.expect_stream_error() == "not-authorized"
    c.wait_closed()
    cserver.assert_healthy()


def test_unknown_component_is_host_unknown(cserver, clients):
    c = clients.add(cserver.component(domain="nobody.localhost"))
    c.open()
    assert c.expect_stream_error() == "host-unknown"
    # A served domain is no component either.
    c2 = clients.add(cserver.component(domain="localhost"))
    c2.open()
    assert c2.expect_stream_error() == "host-unknown"
    cserver.assert_healthy()


def test_client_namespace_is_invalid_namespace(cserver, clients):
    c = clients.add(cserver.component())
    c.open(ns="jabber:client")
    assert c.expect_stream_error() == "invalid-namespace"
    cserver.assert_healthy()


def test_bad_xml_is_not_well_formed(cserver, clients):
    c = clients.add(cserver.component())
    c.open()
    c.send_raw("<handshake>abc</hand>")
    assert c.expect_stream_error() == "not-well-formed"
    # After the handshake too.
    gw = clients.add(cserver.component())
    gw.login(SECRET)
    gw.send_raw("<message from='a@gw.localhost' to='x@localhost'><body>x</body></mess>")
    assert gw.expect_stream_error() == "not-well-formed"
    gw.wait_closed()
    cserver.assert_healthy()


def test_second_connection_for_a_component_is_conflict(cserver, gw, clients):
    second = clients.add(cserver.component())
    second.open()
    second.send_raw("<handshake>%s</handshake>" % hashlib.sha1((second.header["id"] + SECRET).encode()).hexdigest())
    assert second.expect_stream_error() == "conflict"
    # The first one still serves.
    r = gw.iq_from(GW, "localhost", "get", f"<ping xmlns='{NS_PING}'/>")
    assert r.get("type") == "result"


def test_component_port_flag_and_defaults(tmp_path, clients):
    """`starling serve --component-port P` moves the listener (the config file only
    enables it); with `enabled` left at its default there is no listener at all."""
    import subprocess
    from conftest import STARLING_BIN, _stop_pid, child_env
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(["[components]", "enabled = true", "[components.secrets]",
                               f'"{GW}" = "{SECRET}"', ""]))
    off = tmp_path / "off.toml"
    off.write_text("\n".join(["[components.secrets]", f'"{GW}" = "{SECRET}"', ""]))
    for conf, enabled in ((cfg, True), (off, False)):
        data = tmp_path / f"data-{enabled}"
        c2s, port = free_port(), free_port()
        cmd = [STARLING_BIN, "serve", "--data-dir", str(data), "--domain", "localhost",
               "--c2s-port", str(c2s), "--c2s-tls-port", str(free_port()), "--metrics-port", "0",
               "--cluster-port", str(free_port()), "--component-port", str(port), "--config", str(conf)]
        with open(tmp_path / f"log-{enabled}", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(tmp_path), env=child_env())
        try:
            wait_port(c2s, 60, proc)
            if enabled:
                wait_port(port, 10, proc)
                c = clients.add(Component(HOST, port, GW))
                c.login(SECRET)
                r = c.iq_from(GW, "localhost", "get", f"<ping xmlns='{NS_PING}'/>")
                assert r.get("type") == "result"
            else:
                with pytest.raises(OSError):
                    Component(HOST, port, GW).connect()
        finally:
            _stop_pid(proc)


# ------------------------------------------------------------ routing

def test_messages_both_ways(cserver, gw, clients):
    u = clients.add(cserver.online("cu"))
    mid = u.message(f"contact@{GW}", "to the gateway")
    m = gw.recv_stanza("message", id=mid)
    assert m.get("from") == u.jid and m.get("to") == f"contact@{GW}"
    assert m.findtext(K("body")) == "to the gateway"
    # And back, to the full JID and to the bare JID.
    gw.send_raw(f"<message from='contact@{GW}/legacy' to='{u.jid}' id='r1' type='chat'>"
                f"<body>from the gateway</body></message>")
    r = u.recv_stanza("message", id="r1")
    assert r.get("from") == f"contact@{GW}/legacy"
    assert r.findtext(C("body")) == "from the gateway"
    gw.send_raw(f"<message from='{GW}' to='{u.bare}' id='r2' type='chat'><body>bare</body></message>")
    assert u.recv_stanza("message", id="r2").get("from") == GW


def test_messages_with_a_component_are_archived(cserver, gw, clients):
    """XEP-0313: the user's archive keeps what the user sent to a JID at the component and
    what came from one; the component gets no stanza-id of the user's archive."""
    from test_mam import mam, stanza_ids
    u = clients.add(cserver.online("arc"))
    mid = u.message(f"pal@{GW}", "sent to the gateway")
    got = gw.recv_stanza("message", id=mid)
    assert not got.findall(q("urn:xmpp:sid:0", "stanza-id")), tostring(got)
    gw.send_raw(f"<message from='pal@{GW}/x' to='{u.jid}' id='in1' type='chat'><body>from the gateway</body></message>")
    m = u.recv_stanza("message", id="in1")
    ids = stanza_ids(m, by=u.bare)
    assert len(ids) == 1, tostring(m)
    results, fin = mam(u)
    bodies = [r.body for r in results]
    assert bodies == ["sent to the gateway", "from the gateway"], bodies
    assert results[0].msg.get("to") == f"pal@{GW}"
    assert results[1].id == ids[0]


def test_message_to_offline_user_is_stored(cserver, gw, clients):
    jid, user, pw = cserver.new_user("off")
    gw.send_raw(f"<message from='bot@{GW}' to='{jid}' id='off1' type='chat'><body>while away</body></message>")
    # A message to an account that does not exist bounces to the component.
    gw.send_raw(f"<message from='bot@{GW}' to='nobody-{uuid.uuid4().hex[:6]}@localhost' id='nx' type='chat'>"
                f"<body>x</body></message>")
    err = gw.recv_stanza("message", id="nx", type="error")
    assert error_condition(err) == "service-unavailable"
    time.sleep(0.3)
    u = clients.add(cserver.login(jid, pw, presence=True))
    m = u.recv_stanza("message", id="off1")
    assert m.findtext(C("body")) == "while away"
    assert m.find(q("urn:xmpp:delay", "delay")) is not None, tostring(m)
    # The user's message to the component, sent while the component is away, bounces.
    gw.close()
    time.sleep(0.3)
    mid = u.message(f"bot@{GW}", "anyone?")
    err = u.recv_stanza("message", id=mid, type="error")
    assert error_condition(err) == "service-unavailable"


def test_iq_user_to_component_and_its_result(cserver, gw, clients):
    u = clients.add(cserver.online("iq"))
    iid = new_id("q")
    u.send_raw(f"<iq type='get' id='{iid}' to='{GW}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
    got = gw.recv_stanza("iq", id=iid)
    assert got.get("from") == u.jid and got.get("type") == "get"
    gw.send_raw(f"<iq type='result' id='{iid}' from='{GW}' to='{u.jid}'>"
                f"<query xmlns='{NS_DISCO_INFO}'><identity category='gateway' type='irc' name='IRC'/></query></iq>")
    r = u.recv_stanza("iq", id=iid)
    assert r.get("type") == "result" and r.get("from") == GW
    assert r.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity").get("type") == "irc"
    # The component asks the user's client; the client's answer goes to the component
    # (an IQ result to its bare domain).
    gw.send_raw(f"<iq type='get' id='g1' from='{GW}' to='{u.jid}'><ping xmlns='{NS_PING}'/></iq>")
    p = u.recv_stanza("iq", id="g1")
    assert p.get("from") == GW
    u.send_raw(f"<iq type='result' id='g1' to='{GW}'/>")
    assert gw.recv_stanza("iq", id="g1", type="result").get("from") == u.jid
    # An IQ to a resource that is not there: service-unavailable (RFC 6121 8.5.3.2.3).
    r = gw.iq_from(GW, f"{u.bare}/gone", "get", f"<ping xmlns='{NS_PING}'/>")
    assert r.get("type") == "error" and error_condition(r) == "service-unavailable"
    # The server answers for the account's bare JID (its vCard, XEP-0054).
    assert u.iq("set", "<vCard xmlns='vcard-temp'><FN>Ann</FN></vCard>").get("type") == "result"
    r = gw.iq_from(GW, u.bare, "get", "<vCard xmlns='vcard-temp'/>")
    assert r.get("type") == "result", tostring(r)
    assert r.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Ann", tostring(r)
    # A vCard set for another account is not the component's to make.
    r = gw.iq_from(GW, u.bare, "set", "<vCard xmlns='vcard-temp'><FN>Eve</FN></vCard>")
    assert r.get("type") == "error" and error_condition(r) == "forbidden", tostring(r)
    # ... and an account that does not exist is service-unavailable (RFC 6121 8.5.1).
    r = gw.iq_from(GW, f"nobody-{uuid.uuid4().hex[:6]}@localhost", "get", "<vCard xmlns='vcard-temp'/>")
    assert r.get("type") == "error" and error_condition(r) == "service-unavailable", tostring(r)


def test_component_listed_in_disco_items_of_its_domain(cserver, clients):
    u = clients.add(cserver.online("dis"))
    r = u.iq("get", f"<query xmlns='{NS_DISCO_ITEMS}'/>", to="localhost")
    jids = [i.get("jid") for i in r.iter(f"{{{NS_DISCO_ITEMS}}}item")]
    assert GW in jids, tostring(r)
    assert GW2 not in jids and GW3 not in jids
    # Another served domain lists its own; one outside the served domains is listed nowhere.
    r = u.iq("get", f"<query xmlns='{NS_DISCO_ITEMS}'/>", to="example.org")
    jids = [i.get("jid") for i in r.iter(f"{{{NS_DISCO_ITEMS}}}item")]
    assert GW2 in jids and GW not in jids and GW3 not in jids, tostring(r)
    # It is reachable all the same.
    c = clients.add(cserver.component(domain=GW3))
    c.login(SECRET + "3")
    mid = u.message(f"nick@{GW3}", "elsewhere")
    assert c.recv_stanza("message", id=mid).get("from") == u.jid


def test_presence_subscription_from_component(cserver, gw, clients):
    u = clients.add(cserver.online("sub"))
    contact = f"friend@{GW}"
    gw.send_raw(f"<presence from='{contact}/x' to='{u.bare}' type='subscribe'/>")
    s = u.recv_stanza("presence", type="subscribe")
    assert s.get("from") == contact  # bare, RFC 6121 3.1.2
    u.presence(to=contact, type_="subscribed")
    got = gw.recv_stanza("presence", type="subscribed")
    assert got.get("from") == u.bare and got.get("to") == contact
    # Now the contact sees the user's presence (RFC 6121 3.1.5, and later broadcasts).
    avail = gw.recv(lambda e: e.tag == K("presence") and e.get("type") is None and
                    e.get("from") == u.jid, what="the user's presence")
    assert avail.get("to") == contact
    u.presence(status="busy")
    upd = gw.recv(lambda e: e.tag == K("presence") and e.get("from") == u.jid and
                  e.findtext(K("status")) == "busy", what="presence broadcast")
    assert upd.get("to") == contact
    # The roster of the user has the contact with subscription 'from'.
    r = u.iq("get", "<query xmlns='jabber:iq:roster'/>")
    items = {i.get("jid"): i.get("subscription") for i in r.iter("{jabber:iq:roster}item")}
    assert items.get(contact) == "from", tostring(r)
    # A probe from the contact is answered with the user's presence (it has 'from').
    gw.send_raw(f"<presence from='{contact}/x' to='{u.bare}' type='probe'/>")
    pr = gw.recv(lambda e: e.tag == K("presence") and e.get("from") == u.jid and
                 e.get("to") == f"{contact}/x", what="probe answer")
    assert pr.findtext(K("status")) == "busy", tostring(pr)
    # ... and one from a JID of the component without a subscription is not.
    gw.send_raw(f"<presence from='stranger@{GW}' to='{u.bare}' type='probe'/>")
    gw.expect_nothing(lambda e: e.tag == K("presence") and e.get("to") == f"stranger@{GW}", timeout=0.5)
    # The component's available presence reaches the user.
    gw.send_raw(f"<presence from='{contact}/x' to='{u.bare}'><status>here</status></presence>")
    p = u.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{contact}/x", what="contact presence")
    assert p.findtext(C("status")) == "here"


def test_user_subscribes_to_component_contact(cserver, gw, clients):
    u = clients.add(cserver.online("sub2"))
    contact = f"buddy@{GW}"
    u.presence(to=contact, type_="subscribe")
    s = gw.recv_stanza("presence", type="subscribe")
    assert s.get("from") == u.bare and s.get("to") == contact
    gw.send_raw(f"<presence from='{contact}' to='{u.bare}' type='subscribed'/>")
    u.recv_stanza("presence", type="subscribed")
    # Subscribed 'to': the user's next login probes the contact at the component.
    u.close()
    time.sleep(0.2)
    u2 = clients.add(cserver.login(u.bare, u.password, presence=True))
    probe = gw.recv_stanza("presence", type="probe")
    assert probe.get("from") == u.bare and probe.get("to") == contact
    assert u2.jid


def test_component_as_push_app_server(cserver, gw, clients):
    """XEP-0357 with the app server a component (as push gateways usually are): notified
    for a message that went to offline storage; an error answer disables the registration."""
    from test_push import enable, is_push

    def push_at_component(node):
        def pred(e):
            return e.tag == K("iq") and is_push(node)(_client_ns(e))
        return pred
    a = clients.add(cserver.online("ppa"))
    jid, _, pw = cserver.new_user("ppu")
    u = cserver.login(jid, pw, resource="phone")
    node = "n-" + new_id()
    assert enable(u, GW, node).get("type") == "result"
    u.close()
    time.sleep(0.2)
    a.message(jid, "one")
    iq = gw.recv(push_at_component(node), what="first notification")
    assert iq.get("from") == jid and iq.get("to") == GW
    gw.send_raw(f"<iq type='result' id='{iq.get('id')}' from='{GW}' to='{jid}'/>")
    a.message(jid, "two")
    iq = gw.recv(push_at_component(node), what="second notification")
    gw.send_raw(f"<iq type='error' id='{iq.get('id')}' from='{GW}' to='{jid}'>"
                f"<error type='cancel'><item-not-found xmlns='{NS_STANZAS}'/></error></iq>")
    assert gw.iq_from(GW, "localhost", "get", f"<ping xmlns='{NS_PING}'/>").get("type") == "result"
    a.message(jid, "three")
    gw.expect_nothing(push_at_component(node), timeout=1.5, what="a notification after the error")


def _client_ns(el):
    """A copy of a component-namespace stanza in jabber:client (for jabber:client matchers)."""
    import copy
    c = copy.deepcopy(el)
    for e in c.iter():
        if e.tag.startswith("{%s}" % NS_COMPONENT):
            e.tag = C(e.tag.split("}", 1)[1])
    return c


def test_component_user_in_a_local_room(cserver, gw, clients):
    """A gateway's user (a JID at the component) joins a MUC room of the server: it gets
    the room's presence and groupchat through the component, and speaks in it."""
    from test_muc import instant, recv_gc
    NS_MUC = "http://jabber.org/protocol/muc"
    u = clients.add(cserver.online("mucu"))
    room = f"r{uuid.uuid4().hex[:8]}@conference.localhost"
    instant(u, room, "owner")
    gw.send_raw(f"<presence from='irc@{GW}/x' to='{room}/ircnick'><x xmlns='{NS_MUC}'/></presence>")
    own = gw.recv(lambda e: e.tag == K("presence") and e.get("from") == f"{room}/ircnick", timeout=10,
                  what="own presence in the room")
    assert own.get("to") == f"irc@{GW}/x" and own.get("type") is None, tostring(own)
    u.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/ircnick", what="join seen")
    u.message(room, "hello bridge", type_="groupchat")
    m = gw.recv(lambda e: e.tag == K("message") and e.findtext(K("body")) == "hello bridge", timeout=10,
                what="groupchat at the component")
    assert m.get("from") == f"{room}/owner" and m.get("to") == f"irc@{GW}/x"
    gw.send_raw(f"<message from='irc@{GW}/x' to='{room}' type='groupchat'><body>hello room</body></message>")
    assert recv_gc(u, room, "hello room").get("from") == f"{room}/ircnick"


def test_spoofed_from_is_invalid_from(cserver, clients):
    victim = clients.add(cserver.online("vic"))
    c = clients.add(cserver.component())
    c.login(SECRET)
    c.send_raw(f"<message from='admin@localhost' to='{victim.jid}' id='spoof'><body>x</body></message>")
    assert c.expect_stream_error() == "invalid-from"
    victim.expect_nothing(lambda e: e.get("id") == "spoof", timeout=0.5)
    # Another component's domain is no better, nor is no 'from' at all.
    c2 = clients.add(cserver.component())
    c2.login(SECRET)
    c2.send_raw(f"<message from='x@{GW2}' to='{victim.jid}'><body>x</body></message>")
    assert c2.expect_stream_error() == "invalid-from"
    c3 = clients.add(cserver.component())
    c3.login(SECRET)
    c3.send_raw(f"<message to='{victim.jid}' id='nofrom'><body>x</body></message>")
    assert c3.expect_stream_error() == "invalid-from"
    victim.expect_nothing(lambda e: e.get("id") == "nofrom", timeout=0.5)
    # No 'to': bad-request, and the connection goes on.
    c4 = clients.add(cserver.component())
    c4.login(SECRET)
    c4.send_raw(f"<presence from='{GW}' id='noto'/>")
    err = c4.recv_stanza("presence", id="noto", type="error")
    assert error_condition(err) == "bad-request" and err.get("to") == GW
    assert c4.iq_from(GW, "localhost", "get", f"<ping xmlns='{NS_PING}'/>").get("type") == "result"
    cserver.assert_healthy(victim)


def test_bad_stanzas_from_a_component(cserver, gw, clients):
    # A malformed 'to' is a stanza error; the connection goes on.
    gw.send_raw(f"<message from='a@{GW}' to='a@b@c' id='bad1'><body>x</body></message>")
    err = gw.recv_stanza("message", id="bad1", type="error")
    assert error_condition(err) == "jid-malformed"
    iq = gw.iq_from(GW, "localhost", "get", f"<ping xmlns='{NS_PING}'/>")
    assert iq.get("type") == "result"
    # An IQ without an id, or with two payloads to the server: bad-request.
    gw.send_raw(f"<iq from='{GW}' to='localhost' type='get' id='two'><ping xmlns='{NS_PING}'/>"
                f"<ping xmlns='{NS_PING}'/></iq>")
    assert error_condition(gw.recv_stanza("iq", id="two", type="error")) == "bad-request"
    # To another domain: no federation here.
    r = gw.iq_from(GW, "example.net", "get", f"<ping xmlns='{NS_PING}'/>")
    assert error_condition(r) == "remote-server-not-found", tostring(r)
    # Something that is no stanza ends the stream.
    other = clients.add(cserver.component(domain=GW2))
    other.login(SECRET + "2")
    other.send_raw("<foo xmlns='urn:example:x'/>")
    assert other.expect_stream_error() == "unsupported-stanza-type"
    cserver.assert_healthy()


def test_component_to_component(cserver, gw, clients):
    other = clients.add(cserver.component(domain=GW2))
    other.login(SECRET + "2")
    gw.send_raw(f"<message from='a@{GW}' to='b@{GW2}' id='cc'><body>hop</body></message>")
    m = other.recv_stanza("message", id="cc")
    assert m.get("from") == f"a@{GW}"


def test_slixmpp_component(cserver, clients):
    """slixmpp's ComponentXMPP logs in and exchanges a message with a user."""
    import asyncio
    from slixmpp.componentxmpp import ComponentXMPP

    u = clients.add(cserver.online("sli"))

    async def scenario():
        xmpp = ComponentXMPP(GW, SECRET, HOST, cserver.component_port)
        started = asyncio.get_event_loop().create_future()
        got = asyncio.get_event_loop().create_future()
        xmpp.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))

        def on_message(msg):
            if not got.done():
                got.set_result((str(msg["from"]), msg["body"]))
            msg.reply("echo " + msg["body"]).send()
        xmpp.add_event_handler("message", on_message)
        xmpp.connect()
        await asyncio.wait_for(started, 15)
        mid = u.message(f"echo@{GW}", "ping")
        frm, body = await asyncio.wait_for(got, 10)
        assert (frm, body) == (u.jid, "ping")
        loop = asyncio.get_event_loop()
        r = await loop.run_in_executor(None, lambda: u.recv(
            lambda e: e.tag == C("message") and e.findtext(C("body")) == "echo ping", timeout=10, what="echo"))
        assert r.get("from") == f"echo@{GW}", tostring(r)
        assert mid
        xmpp.disconnect()
        await asyncio.sleep(0.3)

    asyncio.run(asyncio.wait_for(scenario(), 40))


# ------------------------------------------------------------ cluster

@pytest.mark.cluster
@pytest.mark.timeout(150)
def test_component_reached_from_every_node(tmp_path_factory, clients):
    def extra(node):
        if not hasattr(node, "component_port"):
            node.component_port = pick_port()
        return ["[components]", "enabled = true", f'bind = "{HOST}"', f"port = {node.component_port}",
                "[components.secrets]", f'"{GW}" = "{SECRET}"']
    cl = Cluster(str(tmp_path_factory.mktemp("ccluster")), 3, extra_config=extra)
    try:
        gw = clients.add(Component(HOST, cl[1].component_port, GW))
        gw.login(SECRET)
        u2 = clients.add(cl[2].online("n2"))
        u3 = clients.add(cl[3].online("n3"))
        # From node 2 to the component on node 1 at once (a replica that has not applied
        # the component's route yet confirms with the registry before bouncing), and back.
        mid = u2.message(f"c@{GW}", "across")
        m = gw.recv_stanza("message", id=mid, timeout=5)
        assert m.get("from") == u2.jid
        u2.expect_nothing(lambda e: e.get("type") == "error", timeout=0.3)
        gw.send_raw(f"<message from='c@{GW}' to='{u2.jid}' id='back'><body>back</body></message>")
        assert u2.recv_stanza("message", id="back").findtext(C("body")) == "back"
        # IQ from node 3 and its result.
        iid = new_id("x")
        u3.send_raw(f"<iq type='get' id='{iid}' to='{GW}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
        gw.recv_stanza("iq", id=iid)
        gw.send_raw(f"<iq type='result' id='{iid}' from='{GW}' to='{u3.jid}'/>")
        assert u3.recv_stanza("iq", id=iid).get("type") == "result"
        # A second connection for the component on node 2: conflict (one in the cluster).
        dup = clients.add(Component(HOST, cl[2].component_port, GW))
        dup.open()
        dup.send_raw("<handshake>%s</handshake>" % hashlib.sha1((dup.header["id"] + SECRET).encode()).hexdigest())
        assert dup.expect_stream_error() == "conflict"
        # The component goes: stanzas to it from node 2 bounce with service-unavailable.
        gw.close()
        mid = u2.message(f"c@{GW}", "gone?")
        err = u2.recv_stanza("message", id=mid, type="error", timeout=5)
        assert error_condition(err) == "service-unavailable"
        r = u3.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=GW)
        assert r.get("type") == "error" and error_condition(r) == "service-unavailable"
        # It can connect to another node now, and is reached from node 1.
        gw3 = clients.add(Component(HOST, cl[3].component_port, GW))
        gw3.login(SECRET)
        u1 = clients.add(cl[1].online("n1"))
        mid = u1.message(f"c@{GW}", "to node 3")
        gw3.recv_stanza("message", id=mid, timeout=5)
        for i in (1, 2, 3):
            assert cl[i].alive(), cl[i].log_tail()
    finally:
        cl.stop()


@pytest.mark.cluster
@pytest.mark.timeout(150)
def test_component_of_a_killed_node(tmp_path_factory, clients):
    """The node holding the component dies (kill -9): stanzas for it from the other
    nodes get <service-unavailable/>, and once the dead node's lease lapsed (its routes
    dropped) the component logs in on a survivor and is reached again."""
    def extra(node):
        if not hasattr(node, "component_port"):
            node.component_port = pick_port()
        return ["[components]", "enabled = true", f'bind = "{HOST}"', f"port = {node.component_port}",
                "[components.secrets]", f'"{GW}" = "{SECRET}"']
    cl = Cluster(str(tmp_path_factory.mktemp("ckill")), 3, extra_config=extra)
    try:
        gw = clients.add(Component(HOST, cl[3].component_port, GW))
        gw.login(SECRET)
        u1 = clients.add(cl[1].online("k1"))
        u2 = clients.add(cl[2].online("k2"))
        deadline = time.monotonic() + 5
        while True:
            mid = u2.message(f"c@{GW}", "before")
            try:
                gw.recv_stanza("message", id=mid, timeout=1)
                break
            except XMPPTimeout:
                u2.drain(0.1)
                assert time.monotonic() < deadline, "the component on node 3 never got node 2's message"
        t_kill = cl.kill9(3)
        # A message to it is answered with an error (not lost silently).
        mid = u2.message(f"c@{GW}", "anyone?")
        err = u2.recv_stanza("message", id=mid, type="error", timeout=15)
        assert error_condition(err) == "service-unavailable", tostring(err)
        cl.figure("component_unavailable_after_kill_s", time.monotonic() - t_kill, "s")
        r = u1.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=GW, timeout=15)
        assert r.get("type") == "error" and error_condition(r) == "service-unavailable", tostring(r)
        # It logs in on node 1 once node 3's lease lapsed (conflict until then).
        deadline = time.monotonic() + 30
        while True:
            again = clients.add(Component(HOST, cl[1].component_port, GW))
            again.open()
            sid = again.header["id"]
            again.send_raw("<handshake>%s</handshake>" % hashlib.sha1((sid + SECRET).encode()).hexdigest())
            got = again.recv(lambda e: e.tag == K("handshake") or e.tag.endswith("}error"), timeout=10,
                             what="handshake answer")
            if got.tag == K("handshake"):
                break
            assert again.stream_error == "conflict", again.stream_error
            again.shutdown()
            assert time.monotonic() < deadline, "the component could not log in again after its node died"
            time.sleep(0.5)
        cl.figure("component_relogin_after_kill_s", time.monotonic() - t_kill, "s")
        deadline = time.monotonic() + 5
        while True:
            mid = u2.message(f"c@{GW}", "after")
            try:
                again.recv_stanza("message", id=mid, timeout=1)
                break
            except XMPPTimeout:
                u2.drain(0.1)
                assert time.monotonic() < deadline, "the component on node 1 never got node 2's message"
        cl.wait_leader(exclude=(3,), via=1)
        cl[1].assert_healthy(u1)
    finally:
        cl.stop()
