"""XEP-0352 Client State Indication (urn:xmpp:csi:0): the stream feature, the
<active/>/<inactive/> nonzas, and what an inactive client is spared: presence updates
wait (only the latest per sender), and go out before anything the client must see at
once (a message with a body, a subscription request) and on <active/>.

Absence is shown with a marker over the same path: a contact's bodiless chat-state
message goes through at once without releasing held presence, so presence that arrives
neither before nor with it was held.
"""

import asyncio
import re
import ssl
import urllib.request

import pytest

from conftest import make_server
from im import make_mutual
from rawxmpp import C, NS_SASL, bare, q, tostring

NS_CSI = "urn:xmpp:csi:0"
ACTIVE = f"<active xmlns='{NS_CSI}'/>"
INACTIVE = f"<inactive xmlns='{NS_CSI}'/>"
CHATSTATE = "<active xmlns='http://jabber.org/protocol/chatstates'/>"


def presence_from(c, full, status=None):
    return lambda e: (e.tag == C("presence") and e.get("from") == full and e.get("type") is None
                      and (status is None or e.findtext(C("status")) == status))


def marker(sender, to):
    """A bodiless message from `sender` (not a reason to wake the client); returns its id."""
    return sender.message(to, None, extra=CHATSTATE)


def seen_before(c, mid, pred):
    """Reads up to the message `mid`; returns the elements matching pred that came first."""
    c.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what=f"marker {mid}")
    return [e for e in c.queue if pred(e)]


def go_inactive(c):
    """Sends <inactive/>; the server's answer to a ping sent after it means the session took
    it before anything sent to the client from now on."""
    c.send_raw(INACTIVE)
    assert c.ping_server().get("type") == "result"


def pair(server, clients):
    """u and a contact with a mutual subscription, both available, all presence read."""
    u = clients.add(server.online("csiu"))
    contact = clients.add(server.online("csic"))
    make_mutual(u, contact)
    return u, contact


# ------------------------------------------------------------------ stream feature and nonzas

def test_feature_advertised_after_authentication_only(server, clients):
    c = clients.add(server.client())
    c.start()  # TLS up, SASL next
    assert c.feature(NS_CSI, "csi") is None, tostring(c.features)
    assert c.feature(NS_SASL, "mechanisms") is not None
    jid, user, pw = server.new_user("csif")
    c.auth(user, pw)
    assert c.feature(NS_CSI, "csi") is not None, tostring(c.features)


@pytest.mark.parametrize("nonza", [INACTIVE, ACTIVE])
def test_nonza_before_authentication_is_a_stream_error(server, clients, nonza):
    c = clients.add(server.client())
    c.start()
    c.send_raw(nonza)
    assert c.expect_stream_error() is not None
    c.wait_closed()
    server.assert_healthy()


@pytest.mark.parametrize("el", ["<idle xmlns='urn:xmpp:csi:0'/>", "<csi xmlns='urn:xmpp:csi:0'/>"])
def test_unknown_csi_element_is_unsupported_stanza_type(server, clients, el):
    """RFC 6120 §4.9.3.24: a first-level element the server does not support; only this
    stream ends."""
    a = clients.add(server.online("csie"))
    other = clients.add(server.online("csio"))
    a.send_raw(el)
    assert a.expect_stream_error() == "unsupported-stanza-type"
    a.wait_closed()
    server.assert_healthy(other)


def test_nonzas_get_no_answer_and_the_stream_goes_on(server, clients):
    a = clients.add(server.online("csin"))
    a.send_raw(INACTIVE + ACTIVE + INACTIVE + INACTIVE + ACTIVE)
    r = a.ping_server()
    assert r.get("type") == "result"
    assert not [e for e in a.queue if e.tag != C("presence")], [tostring(e) for e in a.queue]


# ------------------------------------------------------------------ holding presence

def test_inactive_holds_presence_and_active_sends_only_the_latest(server, clients):
    u, contact = pair(server, clients)
    go_inactive(u)
    for i in range(5):
        contact.presence(status=f"s{i}")
    held = seen_before(u, marker(contact, u.jid), lambda e: e.tag == C("presence"))
    assert not held, "presence reached an inactive client: " + tostring(held[0])
    u.send_raw(ACTIVE)
    p = u.recv(presence_from(u, contact.jid), what="the held presence")
    assert p.findtext(C("status")) == "s4", tostring(p)
    # Exactly one: nothing else from the contact before the next marker.
    extra = seen_before(u, marker(contact, u.jid), presence_from(u, contact.jid))
    assert not extra, "more than the latest presence: " + tostring(extra[0])


def test_unavailable_is_held_too_and_replaces_available(server, clients):
    u, contact = pair(server, clients)
    go_inactive(u)
    contact.presence(status="away for a bit")
    other = clients.add(server.login(contact.bare, contact.password, resource="second"))
    other.presence(to=bare(u.jid), type_="unavailable")  # directed, from another resource
    contact.presence(type_="unavailable")
    # One marker per connection: each follows that connection's presence.
    for sender in (other, contact):
        held = seen_before(u, marker(sender, u.jid), lambda e: e.tag == C("presence"))
        assert not held, tostring(held[0])
    u.send_raw(ACTIVE)
    p = u.recv(lambda e: e.tag == C("presence") and e.get("from") == contact.jid, what="held presence")
    assert p.get("type") == "unavailable", tostring(p)
    p2 = u.recv(lambda e: e.tag == C("presence") and e.get("from") == other.jid, what="held presence 2")
    assert p2.get("type") == "unavailable", tostring(p2)


def test_message_with_body_flushes_held_presence_before_itself(server, clients):
    u, contact = pair(server, clients)
    go_inactive(u)
    contact.presence(status="before the message")
    held = seen_before(u, marker(contact, u.jid), presence_from(u, contact.jid))
    assert not held, tostring(held[0])
    mid = contact.message(u.jid, "wake up")
    first = u.recv(lambda e: e.get("from") == contact.jid and e.tag in (C("presence"), C("message")),
                   what="presence or message")
    assert first.tag == C("presence") and first.findtext(C("status")) == "before the message", \
        "held presence must come before the message: " + tostring(first)
    m = u.recv(lambda e: e.tag == C("message") and e.get("from") == contact.jid, what="the message")
    assert m.get("id") == mid
    # Still inactive: the next update is held again.
    contact.presence(status="after")
    held = seen_before(u, marker(contact, u.jid), presence_from(u, contact.jid))
    assert not held, tostring(held[0])


def test_own_presence_reflection_is_not_held(server, clients):
    """The client's own presence, reflected back to it (RFC 6121 §4.4.2), is its own doing:
    it arrives while the contact's update still waits."""
    u, contact = pair(server, clients)
    go_inactive(u)
    contact.presence(status="contact update")
    contact_marker = marker(contact, u.jid)
    u.presence(status="my new status")
    mine = u.recv(presence_from(u, u.jid, "my new status"), what="own presence reflected")
    assert mine is not None
    held = seen_before(u, contact_marker, presence_from(u, contact.jid))
    assert not held, tostring(held[0])


def test_subscription_request_is_not_held(server, clients):
    u = clients.add(server.online("csis"))
    stranger = clients.add(server.online("csit"))
    go_inactive(u)
    stranger.presence(to=bare(u.jid), type_="subscribe")
    p = u.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", timeout=5,
               what="subscription request while inactive")
    assert bare(p.get("from")) == bare(stranger.jid)


def test_iq_flushes_held_presence(server, clients):
    """An IQ for the client (here a roster push) is never delayed, nor overtakes held presence."""
    u, contact = pair(server, clients)
    u2 = clients.add(server.login(u.bare, u.password, resource="other"))
    u2.iq("get", "<query xmlns='jabber:iq:roster'/>")
    go_inactive(u)
    contact.presence(status="then a push")
    held = seen_before(u, marker(contact, u.jid), presence_from(u, contact.jid))
    assert not held, tostring(held[0])
    u2.iq("set", "<query xmlns='jabber:iq:roster'><item jid='someone@example.org' name='S'/></query>")
    first = u.recv(lambda e: (e.tag == C("presence") and e.get("from") == contact.jid) or
                   (e.tag == C("iq") and e.get("type") == "set"), what="presence or roster push")
    assert first.tag == C("presence"), "held presence must come before the push: " + tostring(first)
    u.recv(lambda e: e.tag == C("iq") and e.get("type") == "set", what="roster push")


# ------------------------------------------------------------------ the bound

@pytest.fixture
def csi_server(tmp_path_factory):
    """A server that holds presence from at most 3 senders per inactive session."""
    s = make_server(tmp_path_factory, "csi")
    if s.kind != "starling":
        pytest.skip("a Starling configuration key")
    with open(s.config_path, "a") as f:
        f.write("\n[csi]\nmax_held = 3\n")
    s.start()
    yield s
    s.stop()


@pytest.mark.starling_only
def test_one_sender_past_the_bound_sends_everything(csi_server, clients):
    server = csi_server
    u = clients.add(server.online("csib"))
    c0 = clients.add(server.online("csibc", resource="c0"))
    make_mutual(u, c0)
    cs = [c0] + [clients.add(server.login(c0.bare, c0.password, resource=f"c{i}", presence=True))
                 for i in (1, 2, 3)]
    for c in cs:
        c.drain(0.2)
    u.drain(0.3)
    go_inactive(u)
    for c in cs[:3]:
        c.presence(status="held")
    for c in cs[:3]:
        held = seen_before(u, marker(c, u.jid), lambda e: e.tag == C("presence"))
        assert not held, "three senders are within the bound: " + tostring(held[0])
    cs[3].presence(status="one too many")
    for c in cs:
        p = u.recv(presence_from(u, c.jid), what=f"presence of {c.jid}")
        assert p.findtext(C("status")) in ("held", "one too many"), tostring(p)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    held_n = re.search(r"^starling_csi_presence_held_total (\d+)", metrics, re.M)
    flushes = re.search(r"^starling_csi_flushes_total (\d+)", metrics, re.M)
    assert held_n and int(held_n.group(1)) >= 4, metrics[-2000:]
    assert flushes and int(flushes.group(1)) >= 1, metrics[-2000:]


# ------------------------------------------------------------------ a client library

def test_slixmpp_csi(server, clients):
    """slixmpp sees the feature and sends <inactive/>; presence then waits for <active/>."""
    slixmpp = pytest.importorskip("slixmpp")
    u, contact = pair(server, clients)
    u.close()

    async def scenario():
        c = slixmpp.ClientXMPP(u.bare + "/slix", u.password)
        c.register_plugin("xep_0352")
        c.register_plugin("xep_0199")
        c.register_plugin("xep_0085")
        c.ssl_context.check_hostname = False
        c.ssl_context.verify_mode = ssl.CERT_NONE
        loop = asyncio.get_event_loop()
        started, chat = loop.create_future(), loop.create_future()
        statuses = []
        c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        c.add_event_handler("presence_available",
                            lambda p: p["from"] == contact.jid and statuses.append(p["status"]))
        c.add_event_handler("chatstate_active", lambda m: chat.done() or chat.set_result(m))
        c.connect(server.host, server.c2s_port)
        await asyncio.wait_for(started, 15)
        assert c["xep_0352"].enabled, "slixmpp saw no csi stream feature"
        c.send_presence()
        await c.get_roster()
        for _ in range(100):  # the contact's current presence (the answer to the probe)
            if statuses:
                break
            await asyncio.sleep(0.05)
        assert statuses, "the contact's presence never came"
        statuses.clear()
        c["xep_0352"].send_inactive()
        await c["xep_0199"].ping(jid=server.domain, timeout=10)  # the server took the nonza
        for i in range(3):
            contact.presence(status=f"x{i}")
        mid = marker(contact, c.boundjid.full)
        m = await asyncio.wait_for(chat, 10)
        assert m["id"] == mid
        assert statuses == [], statuses
        c["xep_0352"].send_active()
        for _ in range(100):
            if statuses:
                break
            await asyncio.sleep(0.05)
        assert statuses == ["x2"], statuses
        c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 40))
