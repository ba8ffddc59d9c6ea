"""Conformance audit of the mobile-client XEPs against their text, raw XML, for the
points the other files (test_sm*, test_carbons, test_blocking, test_csi*, test_mam,
test_sint_*) leave untested:

- XEP-0198: <r/> and <a/> before <enable/> (<failed/> with <unexpected-request/>, the
  stream goes on); a stanza answered with an error is still counted (h); <enable/> on a
  resumed stream is a second negotiation (<unexpected-request/>); 'max' from the client
  is honoured when smaller than the server's.
- XEP-0352 5.1 (in-order processing): <active/> followed by a request: the held presence
  is written before the answer; 5.2: a resumed stream starts active, and what the
  inactive session held is not lost on resumption (XEP-0198 resends it).
- XEP-0334: <no-store/> keeps a message out of offline storage (4.2; undeliverable, so
  <service-unavailable/>, RFC 6121 8.5.2.2.1); <store/> makes a headline wait offline.
- XEP-0280 6: an error in answer to an eligible message is eligible (the user's other
  carbons-enabled resources get a <received/> copy of the bounce); not for a <private/>
  one.
- XEP-0359: a <stanza-id/> naming the user's own archive that the sending client made up
  is not in the <sent/> copy its other resources get; <origin-id/> is kept end to end.
- XEP-0191: an IQ result or error the user sends to a JID it blocks goes nowhere; a
  blocked full JID blocks that resource only for IQs too; <unblock/> of a JID not in the
  list is no error.

Something that must NOT arrive is checked with a marker sent later over the same path.
"""

import re
import time

import pytest

from cluster import cluster  # noqa: F401 (fixture)
from im import make_mutual
from rawxmpp import C, bare, new_id, q, stanza_error, tostring

NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
NS_SID = "urn:xmpp:sid:0"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_BLOCK = "urn:xmpp:blocking"
ACTIVE = f"<active xmlns='{NS_CSI}'/>"
INACTIVE = f"<inactive xmlns='{NS_CSI}'/>"
CHATSTATE = "<active xmlns='http://jabber.org/protocol/chatstates'/>"


def sm(name):
    return q(NS_SM, name)


def login_sm(server, jid, pw, resource="phone", resume=True, max_=None):
    """Logged in and bound, stream management enabled; returns (client, <enabled/>)."""
    c = server.client()
    c.start()
    c.auth(jid.split("@")[0], pw)
    c.bind(resource)
    attrs = (" resume='true'" if resume else "") + (f" max='{max_}'" if max_ else "")
    c.send_raw(f"<enable xmlns='{NS_SM}'{attrs}/>")
    enabled = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed")), what="enabled")
    assert enabled.tag == sm("enabled"), tostring(enabled)
    c.password = pw
    c.bare = jid
    return c, enabled


def h_of(c):
    """Sends <r/>; the server's h."""
    c.send_raw(f"<r xmlns='{NS_SM}'/>")
    return int(c.recv(lambda e: e.tag == sm("a"), what="<a/>").get("h"))


def drop(c):
    """The network goes away: no </stream:stream>."""
    c.sock.close()
    c.closed = True


def resume(server, jid, pw, previd, h):
    c = server.client()
    c.start()
    c.auth(jid.split("@")[0], pw)
    c.send_raw(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
    return c, c.recv(lambda e: e.tag in (sm("resumed"), sm("failed")), what="resumed or failed")


def failed_with(el, condition):
    return el.tag == sm("failed") and el.find(q(NS_STANZAS, condition)) is not None


def presence_from(full, status=None):
    return lambda e: (e.tag == C("presence") and e.get("from") == full and e.get("type") is None
                      and (status is None or e.findtext(C("status")) == status))


def message_id(mid):
    return lambda e: e.tag == C("message") and e.get("id") == mid


def seen_before(c, mid, pred):
    """Reads up to the message `mid`; the elements matching pred that came first."""
    c.recv(message_id(mid), what=f"marker {mid}")
    return [e for e in c.queue if pred(e)]


def go_inactive(c):
    c.send_raw(INACTIVE)
    assert c.ping_server().get("type") == "result"


# ------------------------------------------------------------------ XEP-0198

def test_r_and_a_before_enable_are_unexpected_requests_and_the_stream_goes_on(server, clients):
    c = clients.add(server.online("smre"))
    c.send_raw(f"<r xmlns='{NS_SM}'/>")
    f = c.recv(lambda e: e.tag in (sm("a"), sm("failed")), what="failed")
    assert failed_with(f, "unexpected-request"), tostring(f)
    c.send_raw(f"<a xmlns='{NS_SM}' h='0'/>")
    f = c.recv(lambda e: e.tag == sm("failed"), what="failed")
    assert failed_with(f, "unexpected-request"), tostring(f)
    # not negotiated by accident: <enable/> still works, counting from zero
    c.send_raw(f"<enable xmlns='{NS_SM}'/>")
    assert c.recv(lambda e: e.tag in (sm("enabled"), sm("failed"))).tag == sm("enabled")
    assert h_of(c) == 0
    server.assert_healthy(c)


def test_a_stanza_answered_with_an_error_is_still_handled(server, clients):
    """Section 4: h counts the stanzas handled, whatever their outcome."""
    jid, _, pw = server.new_user("smer")
    c, _ = login_sm(server, jid, pw, resume=False)
    clients.add(c)
    r = c.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="a@b@c")
    assert stanza_error(r) == ("modify", "jid-malformed"), tostring(r)
    r = c.iq("get", "<nothing xmlns='urn:example:unknown'/>")
    assert r.get("type") == "error", tostring(r)
    c.message(f"nobody-{new_id()}@{server.domain}", "to no one")
    c.recv(lambda e: e.tag == C("message") and e.get("type") == "error", what="bounce")
    assert h_of(c) == 3


def test_enable_on_a_resumed_stream_is_unexpected_request(server, clients):
    jid, _, pw = server.new_user("smrr")
    c, enabled = login_sm(server, jid, pw)
    assert h_of(c) == 0
    drop(c)
    c2, r = resume(server, jid, pw, enabled.get("id"), 0)
    clients.add(c2)
    c2.jid = c.jid
    assert r.tag == sm("resumed"), tostring(r)
    assert r.get("previd") == enabled.get("id") and r.get("h") == "0", tostring(r)
    c2.send_raw(f"<enable xmlns='{NS_SM}' resume='true'/>")
    f = c2.recv(lambda e: e.tag in (sm("enabled"), sm("failed")), what="failed")
    assert failed_with(f, "unexpected-request"), tostring(f)
    # still managed: the old counters go on
    assert h_of(c2) == 0
    assert c2.ping_server().get("type") == "result"
    assert h_of(c2) == 1


def test_an_older_ack_acknowledges_nothing_and_is_no_error(server, clients):
    """Section 4: the error is for an 'h' above what was sent; an <a/> behind the last
    one (reordered, repeated) is no such thing. The count stays where the newest put it."""
    a = clients.add(server.online("smoa"))
    jid, _, pw = server.new_user("smol")
    c, _ = login_sm(server, jid, pw, resume=False)
    clients.add(c)
    mids = [a.message(jid + "/phone", f"m{i}") for i in range(3)]
    for mid in mids:
        c.recv(message_id(mid), what=mid)
    c.send_raw(f"<a xmlns='{NS_SM}' h='3'/><a xmlns='{NS_SM}' h='1'/>")
    assert c.ping_server().get("type") == "result"  # the 4th stanza sent
    assert c.stream_error is None
    # still counted from 3: 4 is exact, 5 is one too many
    c.send_raw(f"<a xmlns='{NS_SM}' h='4'/><a xmlns='{NS_SM}' h='5'/>")
    err = c.expect_stream_error()
    assert err == "undefined-condition", err
    raw = b"".join(c.log).decode("utf-8", "replace")
    assert re.search(r"<handled-count-too-high [^>]*h=['\"]5['\"]", raw), raw[-600:]
    assert re.search(r"send-count=['\"]4['\"]", raw), raw[-600:]
    server.assert_healthy(a)


def test_a_smaller_max_asked_by_the_client_is_honoured(server, clients):
    jid, _, pw = server.new_user("smmx")
    c, enabled = login_sm(server, jid, pw, max_=7)
    clients.add(c)
    assert enabled.get("resume") in ("true", "1") and enabled.get("id"), tostring(enabled)
    assert enabled.get("max") == "7", tostring(enabled)


def delays_from(el, domain):
    return [d for d in el.findall(q("urn:xmpp:delay", "delay")) if d.get("from") == domain]


def test_unacked_message_routed_elsewhere_carries_a_delay(server, clients):
    """Section 4: a stanza never acknowledged goes to another resource (or offline
    storage) when the session ends, with a XEP-0203 <delay/> (one of the server's)."""
    a = clients.add(server.online("smda"))
    jid, _, pw = server.new_user("smdu")
    c, _ = login_sm(server, jid, pw, max_=1)
    c.iq("get", "<query xmlns='jabber:iq:roster'/>")
    c.presence()
    c.recv(presence_from(c.jid), what="own presence")
    other = clients.add(server.login(jid, pw, resource="desk", presence=True))
    mid = a.message(c.jid, "to the phone")
    c.recv(message_id(mid), what="the message on the phone")
    drop(c)
    m = other.recv(message_id(mid), timeout=6, what="the message routed to the other resource")
    d = delays_from(m, server.domain)
    assert len(d) == 1, "no (or several) <delay/> of the server's: " + tostring(m)
    assert d[0].get("stamp"), tostring(m)
    # to offline storage: still one delay of the server's
    other.close()
    c, _ = login_sm(server, jid, pw, max_=1)
    c.iq("get", "<query xmlns='jabber:iq:roster'/>")
    c.presence()
    c.recv(presence_from(c.jid), what="own presence")
    mid = a.message(c.jid, "to the phone again")
    c.recv(message_id(mid), what="the message on the phone")
    drop(c)
    time.sleep(2)
    again = clients.add(server.login(jid, pw, resource="later", presence=True))
    m = again.recv(message_id(mid), timeout=6, what="the message from offline storage")
    assert len(delays_from(m, server.domain)) == 1, tostring(m)


@pytest.fixture
def no_resume_server(tmp_path_factory):
    """A server whose sessions cannot be resumed (sm.resume_timeout_secs = 0)."""
    from conftest import make_server
    s = make_server(tmp_path_factory, "nores")
    if s.kind != "starling":
        pytest.skip("a Starling configuration key")
    with open(s.config_path, "a") as f:
        f.write("\n[sm]\nresume_timeout_secs = 0\n")
    s.start()
    yield s
    s.stop()


@pytest.mark.starling_only
def test_no_resumption_offered_when_sessions_cannot_be_resumed(no_resume_server, clients):
    """Section 5: <enabled/> says resume='true' (with an id) only if the server will allow
    the stream to be resumed."""
    server = no_resume_server
    jid, _, pw = server.new_user("smnr")
    c, enabled = login_sm(server, jid, pw, resume=True)
    clients.add(c)
    assert enabled.get("resume") not in ("true", "1") and enabled.get("id") is None, tostring(enabled)
    assert h_of(c) == 0


# ------------------------------------------------------------------ XEP-0352

def test_active_then_a_request_gets_the_held_presence_before_the_answer(server, clients):
    """5.1: the actions of a CSI nonza happen before the requests that follow it."""
    u = clients.add(server.online("csio"))
    contact = clients.add(server.online("csic"))
    make_mutual(u, contact)
    go_inactive(u)
    contact.presence(status="held while inactive")
    held = seen_before(u, contact.message(u.jid, None, extra=CHATSTATE),
                       presence_from(contact.jid, "held while inactive"))
    assert not held, "presence reached an inactive client: " + tostring(held[0])
    for attempt in range(5):
        iid = new_id("ping")
        u.send_raw(ACTIVE + f"<iq type='get' id='{iid}' to='{server.domain}'>"
                            "<ping xmlns='urn:xmpp:ping'/></iq>")
        u.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="pong")
        flushed = [e for e in u.queue if presence_from(contact.jid)(e)]
        assert flushed, f"the pong came before the held presence (round {attempt})"
        assert flushed[-1].findtext(C("status")) == ("held while inactive" if attempt == 0
                                                      else f"round {attempt}")
        u.queue.clear()
        go_inactive(u)
        contact.presence(status=f"round {attempt + 1}")
        held = seen_before(u, contact.message(u.jid, None, extra=CHATSTATE),
                           presence_from(contact.jid))
        assert not held, tostring(held[0])


def test_presence_held_while_inactive_is_not_lost_when_the_session_resumes(server, clients):
    """5.2: a resumed stream starts active; the presence its inactive session held is
    owed to the client like anything unacknowledged (XEP-0198 resends it)."""
    jid, _, pw = server.new_user("csir")
    u, enabled = login_sm(server, jid, pw)
    u.iq("get", "<query xmlns='jabber:iq:roster'/>")
    u.presence()
    u.recv(presence_from(u.jid), what="own presence")
    contact = clients.add(server.online("csirc"))
    make_mutual(u, contact)
    go_inactive(u)
    contact.presence(status="while you were away")
    held = seen_before(u, contact.message(u.jid, None, extra=CHATSTATE),
                       presence_from(contact.jid, "while you were away"))
    assert not held, "presence reached an inactive client: " + tostring(held[0])
    # directed presence from someone without a subscription: no probe fetches it again
    stranger = clients.add(server.online("csirs"))
    stranger.presence(to=u.jid, status="directed while away")
    held = seen_before(u, stranger.message(u.jid, None, extra=CHATSTATE),
                       presence_from(stranger.jid, "directed while away"))
    assert not held, "presence reached an inactive client: " + tostring(held[0])
    drop(u)
    # h='0': the client says it handled nothing, so everything is sent again
    u2, r = resume(server, jid, pw, enabled.get("id"), 0)
    clients.add(u2)
    assert r.tag == sm("resumed"), tostring(r)
    p = u2.recv(presence_from(contact.jid, "while you were away"), timeout=5,
                what="the presence held before the resumption")
    assert p is not None
    u2.recv(presence_from(stranger.jid, "directed while away"), timeout=5,
            what="the directed presence held before the resumption")
    # active now: the next update comes at once
    contact.presence(status="back")
    u2.recv(presence_from(contact.jid, "back"), timeout=5, what="presence on the resumed stream")


def test_inactive_said_before_binding_applies_to_the_bound_session(server, clients):
    """The CSI feature is offered with binding, after authentication: a client may say it
    is inactive before it binds; the nonza gets no answer and the stream goes on."""
    jid, user, pw = server.new_user("csib")
    u = clients.add(server.client())
    u.start()
    u.auth(user, pw)
    u.send_raw(INACTIVE)
    u.bind("phone")
    u.bare = jid
    u.iq("get", "<query xmlns='jabber:iq:roster'/>")
    u.presence()
    u.recv(presence_from(u.jid), what="own presence")
    contact = clients.add(server.online("csibc"))
    make_mutual(u, contact)
    u.drain(0.3)
    contact.presence(status="held from the start")
    held = seen_before(u, contact.message(u.jid, None, extra=CHATSTATE),
                       presence_from(contact.jid, "held from the start"))
    assert not held, "the session did not start inactive: " + tostring(held[0])
    u.send_raw(ACTIVE)
    u.recv(presence_from(contact.jid, "held from the start"), what="presence on <active/>")
    server.assert_healthy(u)


def test_unknown_csi_element_before_binding_is_unsupported_stanza_type(server, clients):
    jid, user, pw = server.new_user("csiu")
    u = clients.add(server.client())
    u.start()
    u.auth(user, pw)
    u.send_raw(f"<sleepy xmlns='{NS_CSI}'/>")
    assert u.expect_stream_error() == "unsupported-stanza-type"
    server.assert_healthy()


@pytest.mark.starling_only
@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_presence_held_while_inactive_reaches_a_session_resumed_on_another_node(cluster, clients):  # noqa: F811
    """5.2 across nodes: the node that lets the session go hands what its inactive client
    held to the node that resumes it."""
    cl = cluster
    jid, _, pw = cl[1].new_user("csix")
    u, enabled = login_sm(cl[1], jid, pw)
    u.iq("get", "<query xmlns='jabber:iq:roster'/>")
    u.presence()
    u.recv(presence_from(u.jid), what="own presence")
    go_inactive(u)
    # directed presence from someone without a subscription: no probe fetches it again
    stranger = clients.add(cl[1].online("csixs"))
    stranger.presence(to=u.jid, status="held on node 1")
    held = seen_before(u, stranger.message(u.jid, None, extra=CHATSTATE),
                       presence_from(stranger.jid, "held on node 1"))
    assert not held, "presence reached an inactive client: " + tostring(held[0])
    drop(u)
    u2, r = resume(cl[2], jid, pw, enabled.get("id"), 0)
    clients.add(u2)
    assert r.tag == sm("resumed"), tostring(r)
    u2.recv(presence_from(stranger.jid, "held on node 1"), timeout=10,
            what="the presence held on node 1")


# ------------------------------------------------------------------ XEP-0334

def test_no_store_message_is_not_kept_offline(server, clients):
    a = clients.add(server.online("nsa"))
    jid, _, pw = server.new_user("nsb")
    gone = a.message(jid, "not for later", extra=f"<no-store xmlns='{NS_HINTS}'/>")
    err = a.recv(lambda e: e.tag == C("message") and e.get("id") == gone, what="error")
    assert stanza_error(err) == ("cancel", "service-unavailable"), tostring(err)
    # <no-permanent-store/> allows offline storage
    kept = a.message(jid, "for later", extra=f"<no-permanent-store xmlns='{NS_HINTS}'/>")
    assert a.ping_server().get("type") == "result"  # a's session handled (stored) it
    b = clients.add(server.login(jid, pw, resource="r", presence=True))
    m = b.recv(message_id(kept), what="the offline message")
    assert m.findtext(C("body")) == "for later"
    stray = [tostring(e) for e in b.queue if message_id(gone)(e)]
    assert not stray, "a <no-store/> message was stored offline: " + stray[0]
    b.expect_nothing(message_id(gone), 0.3, what="the no-store message")


def test_headline_with_store_hint_waits_offline(server, clients):
    a = clients.add(server.online("nsh"))
    jid, _, pw = server.new_user("nsi")
    plain = a.message(jid, "gone with the wind", type_="headline")
    stored = a.message(jid, "keep me", type_="headline", extra=f"<store xmlns='{NS_HINTS}'/>")
    assert a.ping_server().get("type") == "result"
    b = clients.add(server.login(jid, pw, resource="r", presence=True))
    m = b.recv(message_id(stored), what="the stored headline")
    assert m.findtext(C("body")) == "keep me"
    assert not [e for e in b.queue if message_id(plain)(e)], "a headline without <store/> was kept"


def test_headline_with_store_hint_is_archived(server, clients):
    """XEP-0334 4.4: a message of any type but error with <store/> is archived (XEP-0313)."""
    a = clients.add(server.online("nsm"))
    b = clients.add(server.online("nsn"))
    plain = a.message(b.bare, "not archived", type_="headline")
    stored = a.message(b.bare, "archived", type_="headline", extra=f"<store xmlns='{NS_HINTS}'/>")
    got = b.recv(message_id(stored), what="the stored headline")
    assert [s.get("by") for s in got.findall(q(NS_SID, "stanza-id"))] == [b.bare], tostring(got)
    b.recv(message_id(plain), what="the plain headline")
    qid = new_id("q")
    iid = new_id("mam")
    b.send_raw(f"<iq type='set' id='{iid}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'/></iq>")
    fin = b.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="fin")
    assert fin.get("type") == "result", tostring(fin)
    archived = [e.find(f"{q('urn:xmpp:mam:2', 'result')}/{q(NS_FORWARD, 'forwarded')}/{C('message')}")
                for e in b.queue if e.tag == C("message")]
    ids = [m.get("id") for m in archived if m is not None]
    assert ids == [stored], ids


# ------------------------------------------------------------------ XEP-0280 / XEP-0359

def two_resources(server, clients, prefix):
    jid, _, pw = server.new_user(prefix)
    r0 = clients.add(server.login(jid, pw, resource="r0", presence=True))
    r1 = clients.add(server.login(jid, pw, resource="r1", presence=True))
    for c in (r0, r1):
        r = c.iq("set", f"<enable xmlns='{NS_CARBONS}'/>")
        assert r.get("type") == "result", tostring(r)
        c.drain(0.2)
    return jid, r0, r1


def carbon_of(kind, mid):
    def pred(e):
        w = e.find(q(NS_CARBONS, kind))
        if e.tag != C("message") or w is None:
            return False
        inner = w.find(f"{q(NS_FORWARD, 'forwarded')}/{C('message')}")
        return inner is not None and inner.get("id") == mid
    return pred


def inner_of(el, kind):
    return el.find(f"{q(NS_CARBONS, kind)}/{q(NS_FORWARD, 'forwarded')}/{C('message')}")


def test_error_bounce_of_an_eligible_message_is_copied(server, clients):
    """6: an error sent in response to an eligible message is eligible: the resource that
    saw the <sent/> copy also sees the error as <received/>."""
    jid, r0, r1 = two_resources(server, clients, "cbe")
    nobody = f"nobody-{new_id()}@{server.domain}"
    mid = r0.message(nobody, "hello?")
    err = r0.recv(lambda e: message_id(mid)(e) and e.get("type") == "error", what="bounce")
    assert stanza_error(err) == ("cancel", "service-unavailable"), tostring(err)
    r1.recv(carbon_of("sent", mid), what="sent copy")
    copy = r1.recv(carbon_of("received", mid), what="received copy of the error")
    assert copy.get("from") == jid and copy.get("to") == r1.jid, tostring(copy)
    inner = inner_of(copy, "received")
    assert inner.get("type") == "error" and inner.get("to") == r0.jid, tostring(copy)
    # the resource that got the error gets no copy of it
    marker = r1.message(r0.jid, "marker")
    r0.recv(message_id(marker), what="marker")
    assert not [e for e in r0.queue if carbon_of("received", mid)(e)]
    # a <private/> message's error is not copied either
    pm = r0.message(nobody, "psst", extra=f"<private xmlns='{NS_CARBONS}'/>")
    r0.recv(lambda e: message_id(pm)(e) and e.get("type") == "error", what="bounce")
    marker = r0.message(r1.jid, "marker2")
    r1.recv(message_id(marker), what="marker2")
    stray = [tostring(e) for e in r1.queue if carbon_of("received", pm)(e) or carbon_of("sent", pm)(e)]
    assert not stray, "copy of a private message's error: " + stray[0]


def test_sent_copy_has_no_client_made_stanza_id_of_the_users_archive(server, clients):
    """XEP-0359 7: only the archive names itself in a <stanza-id/>; one the client made up
    naming its own account is not passed on in the <sent/> copy. <origin-id/> is kept."""
    jid, r0, r1 = two_resources(server, clients, "sid")
    peer = clients.add(server.online("sidp"))
    extra = (f"<stanza-id xmlns='{NS_SID}' by='{jid}' id='forged-own'/>"
             f"<stanza-id xmlns='{NS_SID}' by='{server.domain}' id='forged-server'/>"
             f"<stanza-id xmlns='{NS_SID}' by='{peer.bare}' id='forged-peer'/>"
             f"<origin-id xmlns='{NS_SID}' id='origin-1'/>")
    mid = r0.message(peer.jid, "with ids", extra=extra)
    copy = r1.recv(carbon_of("sent", mid), what="sent copy")
    inner = inner_of(copy, "sent")
    ids = [(s.get("by"), s.get("id")) for s in inner.findall(q(NS_SID, "stanza-id"))]
    assert not {"forged-own", "forged-server"} & {i for _, i in ids}, \
        "forged stanza-id in the sent copy: " + tostring(copy)
    assert inner.find(q(NS_SID, "origin-id")).get("id") == "origin-1", tostring(copy)
    got = peer.recv(message_id(mid), what="the message")
    ids = [s.get("id") for s in got.findall(q(NS_SID, "stanza-id"))]
    assert not {"forged-own", "forged-server", "forged-peer"} & set(ids), tostring(got)
    assert got.find(q(NS_SID, "origin-id")).get("id") == "origin-1", tostring(got)


# ------------------------------------------------------------------ XEP-0191

def test_iq_results_and_errors_to_a_blocked_jid_go_nowhere(server, clients):
    u = clients.add(server.online("bq"))
    other = clients.add(server.online("bqo"))
    r = u.iq("set", f"<block xmlns='{NS_BLOCK}'><item jid='{other.bare}'/></block>")
    assert r.get("type") == "result", tostring(r)
    u.drain(0.3)
    u.send_raw(f"<iq type='result' id='res-1' to='{other.jid}'/>")
    u.send_raw(f"<iq type='error' id='err-1' to='{other.jid}'><error type='cancel'>"
               f"<item-not-found xmlns='{NS_STANZAS}'/></error></iq>")
    # no error comes back for them (an error is never answered with one) ...
    assert u.ping_server().get("type") == "result"
    assert not [tostring(e) for e in u.queue if e.get("id") in ("res-1", "err-1")]
    # ... and nothing reaches the blocked JID: unblock, then a marker over the same path
    r = u.iq("set", f"<unblock xmlns='{NS_BLOCK}'><item jid='{other.bare}'/></unblock>")
    assert r.get("type") == "result", tostring(r)
    marker = u.message(other.jid, "marker")
    seen = seen_before(other, marker, lambda e: e.tag == C("iq") and e.get("id") in ("res-1", "err-1"))
    assert not seen, "reached the blocked JID: " + tostring(seen[0])


def test_blocked_full_jid_blocks_iqs_from_that_resource_only(server, clients):
    """XEP-0016 2.1 matching (XEP-0191 defers to it): a full JID item blocks that resource's
    IQs (<service-unavailable/>), not those of the account's other resources."""
    u = clients.add(server.online("bfr"))
    jid, _, pw = server.new_user("bfo")
    bad = clients.add(server.login(jid, pw, resource="bad", presence=True))
    good = clients.add(server.login(jid, pw, resource="good", presence=True))
    r = u.iq("set", f"<block xmlns='{NS_BLOCK}'><item jid='{bad.jid}'/></block>")
    assert r.get("type") == "result", tostring(r)
    r = bad.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=u.jid)
    assert stanza_error(r) == ("cancel", "service-unavailable"), tostring(r)
    iid = new_id("ping")
    good.send_raw(f"<iq type='get' id='{iid}' to='{u.jid}'><ping xmlns='urn:xmpp:ping'/></iq>")
    req = u.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="ping from the other resource")
    assert req.get("from") == good.jid, tostring(req)
    u.send_raw(f"<iq type='result' id='{iid}' to='{good.jid}'/>")
    r = good.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="pong")
    assert r.get("type") == "result", tostring(r)
    assert not [tostring(e) for e in u.queue if e.tag == C("iq") and e.get("from") == bad.jid]


def test_offline_message_from_a_jid_blocked_since_is_not_delivered(server, clients):
    """3.3: the server does not deliver stanzas from a blocked JID to the user, also
    those it stored before the block."""
    a = clients.add(server.online("bof"))
    friend = clients.add(server.online("bfriend"))
    jid, _, pw = server.new_user("bou")
    before = a.message(jid, "stored before the block")
    kept = friend.message(jid, "from a friend")
    for c in (a, friend):
        assert c.ping_server().get("type") == "result"  # stored
    u = clients.add(server.login(jid, pw, resource="r"))
    r = u.iq("set", f"<block xmlns='{NS_BLOCK}'><item jid='{a.bare}'/></block>")
    assert r.get("type") == "result", tostring(r)
    u.presence()
    u.recv(message_id(kept), what="the friend's offline message")
    stray = [tostring(e) for e in u.queue if message_id(before)(e)]
    assert not stray, "a blocked JID's stored message was delivered: " + stray[0]
    u.expect_nothing(message_id(before), 0.3, what="the blocked JID's message")
    # not kept for later either: unblocked, the next login has nothing of it
    r = u.iq("set", f"<unblock xmlns='{NS_BLOCK}'><item jid='{a.bare}'/></unblock>")
    assert r.get("type") == "result", tostring(r)
    u.close()
    u2 = clients.add(server.login(jid, pw, resource="again", presence=True))
    marker = friend.message(jid, "marker")
    assert not seen_before(u2, marker, message_id(before)), "kept and delivered later"


def test_blocked_room_occupant_is_not_delivered(server, clients):
    """3.3: nothing from a blocked JID reaches the user, a room occupant's JID included
    (its groupchat messages and private messages)."""
    from test_muc import instant, join, new_room
    owner = clients.add(server.online("bmo"))
    u = clients.add(server.online("bmu"))
    room = new_room(server)
    instant(owner, room, "loud")
    join(u, room, "quiet")
    r = u.iq("set", f"<block xmlns='{NS_BLOCK}'><item jid='{room}/loud'/></block>")
    assert r.get("type") == "result", tostring(r)
    other = clients.add(server.online("bmm"))
    join(other, room, "other")
    owner.send_raw(f"<message to='{room}/quiet' type='chat' id='p-blocked'><body>y</body></message>")
    owner.send_raw(f"<message to='{room}' type='groupchat' id='g-blocked'><body>x</body></message>")
    owner.recv(message_id("g-blocked"), what="the room's reflection")  # the room handled both
    other.send_raw(f"<message to='{room}' type='groupchat' id='g-marker'><body>m</body></message>")
    seen = seen_before(u, "g-marker", lambda e: e.get("id") in ("g-blocked", "p-blocked"))
    assert not seen, "delivered from a blocked occupant: " + tostring(seen[0])


def test_unblocking_a_jid_not_in_the_list_is_no_error(server, clients):
    u = clients.add(server.online("bun"))
    r = u.iq("set", f"<unblock xmlns='{NS_BLOCK}'><item jid='stranger@{server.domain}'/></unblock>")
    assert r.get("type") == "result", tostring(r)
    r = u.iq("get", f"<blocklist xmlns='{NS_BLOCK}'/>")
    assert r.find(q(NS_BLOCK, "blocklist")).findall(q(NS_BLOCK, "item")) == []
