"""XEP-0198 stream management: enable, acks both ways, resumption, failures, and what happens
to unacknowledged stanzas when a session finally ends (section 4). Raw XML: a library would
ack and resume by itself and hide what the server counts."""

import time

import pytest

from conftest import make_server
from rawxmpp import C, NS_DELAY, bare, local, new_id, ns_of, q, stanza_error, tostring

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STANZAS = {"message", "presence", "iq"}


def sm(name):
    return q(NS_SM, name)


def is_stanza(e):
    return ns_of(e.tag) == "jabber:client" and local(e.tag) in STANZAS


def login_sm(server, jid, pw, resource="phone", resume=True, max_=None, presence=True):
    """Logged in, stream management enabled, (optionally) available; returns (client, enabled)."""
    c = server.client()
    c.start()
    c.auth(jid.split("@")[0], pw)
    c.bind(resource)
    attrs = " resume='true'" if resume else ""
    attrs += f" max='{max_}'" if max_ else ""
    c.send_raw(f"<enable xmlns='{NS_SM}'{attrs}/>")
    enabled = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed")), what="enabled")
    assert enabled.tag == sm("enabled"), tostring(enabled)
    if enabled.get("id"):
        previous_jid[enabled.get("id")] = c.jid
    if presence:
        c.presence()
        c.recv(lambda e: e.tag == C("presence") and e.get("from") == c.jid, what="own presence")
    return c, enabled


def ack_h(c, timeout=None):
    """Sends <r/>, returns the h of the server's <a/>."""
    c.send_raw(f"<r xmlns='{NS_SM}'/>")
    a = c.recv(lambda e: e.tag == sm("a"), timeout, what="a")
    return int(a.get("h"))


def drop(c):
    """The network goes away: no </stream:stream>, no TLS close."""
    c.sock.close()
    c.closed = True


def resume(server, jid, pw, previd, h):
    c = server.client()
    c.start()
    c.auth(jid.split("@")[0], pw)
    c.send_raw(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
    r = c.recv(lambda e: e.tag in (sm("resumed"), sm("failed")), what="resumed or failed")
    if r.tag == sm("resumed"):
        c.jid = previous_jid.get(previd)
    return c, r


previous_jid = {}  # SM-ID -> the full JID it was enabled for


def bodies(c, n, timeout=10):
    """The bodies of the next n messages."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        m = c.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None,
                   max(0.1, deadline - time.monotonic()), what=f"message {len(out) + 1} of {n}")
        out.append(m.findtext(C("body")))
    return out


def test_feature_after_authentication_only(server):
    c = server.client()
    c.start()
    assert c.feature(NS_SM, "sm") is None, "stream management offered before authentication"
    jid, user, pw = server.new_user("smf")
    c.auth(user, pw)
    assert c.feature(NS_SM, "sm") is not None, tostring(c.features)
    c.close()


def test_enable_resume_gives_id_and_max(server):
    jid, _, pw = server.new_user("sme")
    c, enabled = login_sm(server, jid, pw, max_=60)
    assert enabled.get("id") and enabled.get("resume") in ("true", "1")
    assert 0 < int(enabled.get("max")) <= 60
    c.close()


def test_enable_without_resume_has_no_id(server):
    jid, _, pw = server.new_user("smn")
    c, enabled = login_sm(server, jid, pw, resume=False)
    assert enabled.get("id") is None and enabled.get("resume") not in ("true", "1")
    assert ack_h(c) == 1, "the initial presence is one handled stanza"
    c.close()


def test_enable_twice_is_unexpected_request(server):
    jid, _, pw = server.new_user("sm2")
    c, _ = login_sm(server, jid, pw)
    c.send_raw(f"<enable xmlns='{NS_SM}'/>")
    f = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed")))
    assert f.tag == sm("failed")
    assert f.find(q("urn:ietf:params:xml:ns:xmpp-stanzas", "unexpected-request")) is not None, tostring(f)
    # the stream goes on
    assert c.ping_server().get("type") == "result"
    c.close()


def test_enable_before_bind_is_unexpected_request_and_bind_still_works(server):
    jid, user, pw = server.new_user("smb")
    c = server.client()
    c.start()
    c.auth(user, pw)
    c.send_raw(f"<enable xmlns='{NS_SM}' resume='true'/>")
    f = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed")))
    assert f.tag == sm("failed"), tostring(f)
    assert f.find(q("urn:ietf:params:xml:ns:xmpp-stanzas", "unexpected-request")) is not None
    c.bind("late")
    c.send_raw(f"<enable xmlns='{NS_SM}'/>")
    assert c.recv(lambda e: e.tag in (sm("enabled"), sm("failed"))).tag == sm("enabled")
    c.close()


def test_server_counts_handled_stanzas(server):
    jid, _, pw = server.new_user("smh")
    c, _ = login_sm(server, jid, pw)
    for _ in range(3):
        c.ping_server()
    # presence + 3 pings; a message to nobody is handled too
    c.message("nobody-here@localhost", "x")
    assert ack_h(c) == 5
    c.close()


def test_server_asks_for_acks_and_takes_them(server):
    a = server.online("sma")
    jid, _, pw = server.new_user("smr")
    c, _ = login_sm(server, jid, pw)
    for i in range(12):
        a.message(jid, f"m{i}")
    assert bodies(c, 12) == [f"m{i}" for i in range(12)]
    # the server asks at least every few stanzas (request_every, default 5)
    c.recv(lambda e: e.tag == sm("r"), what="r from the server")
    c.send_raw(f"<a xmlns='{NS_SM}' h='13'/>")  # own presence and twelve messages
    assert c.ping_server().get("type") == "result", "a valid ack keeps the stream"
    a.close()
    c.close()


def test_ack_with_non_number_is_a_stream_error(server):
    jid, _, pw = server.new_user("smx")
    c, _ = login_sm(server, jid, pw)
    c.send_raw(f"<a xmlns='{NS_SM}' h='lots'/>")
    assert c.expect_stream_error() in ("invalid-xml", "bad-format", "undefined-condition")


def test_ack_of_more_than_was_sent_is_handled_count_too_high(server):
    jid, _, pw = server.new_user("smt")
    c, _ = login_sm(server, jid, pw)  # one stanza sent to it: its own presence
    c.send_raw(f"<a xmlns='{NS_SM}' h='7'/>")
    assert c.expect_stream_error() == "undefined-condition"
    too_high = c.stream_error_el.find(sm("handled-count-too-high"))
    assert too_high is not None, tostring(c.stream_error_el)
    assert too_high.get("h") == "7" and too_high.get("send-count") == "1"


def test_flaky_client_resumes_and_receives_every_stanza_once(server):
    """Messages in flight when the connection drops, and more while it is away: after
    <resume/> the client has each exactly once, in order."""
    a = server.online("smfa")
    jid, _, pw = server.new_user("smfl")
    c, enabled = login_sm(server, jid, pw)
    for i in range(10):
        a.message(jid, f"m{i}")
    got = bodies(c, 10)
    received = 1 + 10  # own presence + messages
    c.send_raw(f"<a xmlns='{NS_SM}' h='4'/>")  # acks only part of them
    drop(c)
    for i in range(10, 25):
        a.message(jid, f"m{i}")
    assert a.ping_server().get("type") == "result"  # all 15 routed by now
    c2, r = resume(server, jid, pw, enabled.get("id"), received)
    assert r.tag == sm("resumed"), tostring(r)
    assert r.get("previd") == enabled.get("id")
    assert int(r.get("h")) == 1, "the server handled one stanza of ours (the presence)"
    got += bodies(c2, 15)
    assert got == [f"m{i}" for i in range(25)]
    c2.expect_nothing(lambda e: e.tag == C("message"), 0.5, what="a duplicate")
    # the resumed session is the same full JID and still available
    assert c2.ping_server().get("type") == "result"
    mid = a.message(c.jid, "to the full jid")
    assert c2.recv_stanza("message", id=mid).get("to") == c.jid
    a.close()
    c2.close()


def test_resume_resends_what_was_not_acked(server):
    a = server.online("smua")
    jid, _, pw = server.new_user("smu")
    c, enabled = login_sm(server, jid, pw)
    for i in range(4):
        a.message(jid, f"u{i}")
    assert bodies(c, 4) == [f"u{i}" for i in range(4)]
    drop(c)
    # it reports having handled only the presence and the first two messages
    c2, r = resume(server, jid, pw, enabled.get("id"), 3)
    assert r.tag == sm("resumed"), tostring(r)
    assert bodies(c2, 2) == ["u2", "u3"]
    # counting goes on from 3 as the client counts: acking 5 is exact
    c2.send_raw(f"<a xmlns='{NS_SM}' h='5'/>")
    assert c2.ping_server().get("type") == "result"
    a.close()
    c2.close()


def test_resume_of_a_live_connection_takes_it_over(server):
    """The server has not noticed the old connection is gone (a NAT dropped it): resuming
    closes the old stream and carries on with the new one."""
    jid, _, pw = server.new_user("smlv")
    c, enabled = login_sm(server, jid, pw)
    c2, r = resume(server, jid, pw, enabled.get("id"), 1)
    assert r.tag == sm("resumed"), tostring(r)
    assert c.expect_stream_error() == "conflict"
    assert c2.ping_server().get("type") == "result"
    c2.close()


def test_resume_someone_elses_session_fails_item_not_found(server):
    jid, _, pw = server.new_user("smv")
    victim, enabled = login_sm(server, jid, pw)
    ojid, ouser, opw = server.new_user("smo")
    c = server.client()
    c.start()
    c.auth(ouser, opw)
    c.send_raw(f"<resume xmlns='{NS_SM}' previd='{enabled.get('id')}' h='0'/>")
    f = c.recv(lambda e: e.tag in (sm("resumed"), sm("failed")))
    assert f.tag == sm("failed"), tostring(f)
    assert f.find(q("urn:ietf:params:xml:ns:xmpp-stanzas", "item-not-found")) is not None
    # the stream may go on to bind a new session; the victim is untouched
    assert c.bind("mine") == f"{ojid}/mine"
    assert victim.ping_server().get("type") == "result"
    c.close()
    victim.close()


def test_resume_unknown_id_fails_and_bind_follows(server):
    jid, user, pw = server.new_user("smk")
    c, r = resume(server, jid, pw, "1-doesnotexist", 0)
    assert r.tag == sm("failed")
    assert r.find(q("urn:ietf:params:xml:ns:xmpp-stanzas", "item-not-found")) is not None
    assert c.bind("fresh")
    c.close()


def test_resume_with_h_larger_than_sent_fails(server):
    jid, _, pw = server.new_user("smhh")
    c, enabled = login_sm(server, jid, pw)
    drop(c)
    c2, r = resume(server, jid, pw, enabled.get("id"), 50)
    assert r.tag == sm("failed"), tostring(r)
    assert r.find(q(NS_STANZAS, "undefined-condition")) is not None, tostring(r)
    assert r.find(sm("handled-count-too-high")) is not None, tostring(r)
    # the old session ends over it: the client is told what it had handled (its presence)
    assert r.get("h") == "1", tostring(r)
    assert c2.bind("after")
    c2.close()


def test_resume_after_clean_close_fails(server):
    jid, _, pw = server.new_user("smcc")
    c, enabled = login_sm(server, jid, pw)
    c.close()
    c2, r = resume(server, jid, pw, enabled.get("id"), 1)
    assert r.tag == sm("failed")
    c2.close()


def handled(c, n):
    """Sends n IQs the server answers, waits for the answers; the server handled n more."""
    for _ in range(n):
        assert c.ping_server().get("type") == "result"


def failed_h(r):
    """The h of a <failed/> for an ended session (XEP-0198 section 5), checked for its
    condition."""
    assert r.tag == sm("failed"), tostring(r)
    assert r.find(q(NS_STANZAS, "item-not-found")) is not None, tostring(r)
    assert r.get("h") is not None, "no h in the <failed/>: " + tostring(r)
    return int(r.get("h"))


def test_resume_after_timeout_fails_with_the_h_the_session_handled(server):
    """XEP-0198 section 5: a session that timed out is not resumed, but the <failed/>
    says how many of the client's stanzas it handled (its presence and three IQs), so the
    client knows what to send again; a new session binds on the same stream."""
    jid, _, pw = server.new_user("smto")
    c, enabled = login_sm(server, jid, pw, max_=1)
    handled(c, 3)
    drop(c)
    time.sleep(3)  # the resumption time (1 s) is over
    c2, r = resume(server, jid, pw, enabled.get("id"), 0)
    assert failed_h(r) == 4, tostring(r)
    assert c2.bind("fresh")
    assert c2.ping_server().get("type") == "result"
    c2.close()
    # asked again, the same answer; still not resumable
    c3, r = resume(server, jid, pw, enabled.get("id"), 0)
    assert failed_h(r) == 4
    c3.close()
    server.assert_healthy()


@pytest.mark.prosody_deviates("keeps the h of a session that timed out only, not of one closed or replaced",
                                strict=False)
def test_resume_of_a_replaced_session_fails_with_its_h(server):
    """A session replaced by a new one of the same resource (RFC 6120 conflict) ended: its
    SM-ID fails with item-not-found and the h it had."""
    jid, _, pw = server.new_user("smrp")
    c, enabled = login_sm(server, jid, pw, resource="desk")
    handled(c, 2)
    n = server.client()
    n.start()
    n.auth(jid.split("@")[0], pw)
    n.bind("desk")
    assert c.expect_stream_error() == "conflict"
    c2, r = resume(server, jid, pw, enabled.get("id"), 0)
    assert failed_h(r) == 3, tostring(r)
    c2.close()
    assert n.ping_server().get("type") == "result"
    n.close()


@pytest.mark.prosody_deviates("keeps the h of a session that timed out only, not of one closed or replaced",
                                strict=False)
def test_ended_session_h_is_told_only_to_its_user(server):
    """A cleanly closed session's SM-ID fails with its h for its user; anyone else gets a
    bare item-not-found (the h is the owner's)."""
    jid, _, pw = server.new_user("smow")
    other, _, opw = server.new_user("smot")
    c, enabled = login_sm(server, jid, pw)
    handled(c, 1)
    c.close()
    c3, r = resume(server, other, opw, enabled.get("id"), 0)
    assert r.tag == sm("failed"), tostring(r)
    assert r.find(q(NS_STANZAS, "item-not-found")) is not None, tostring(r)
    assert r.get("h") is None, tostring(r)
    c3.close()
    c2, r = resume(server, jid, pw, enabled.get("id"), 0)
    assert failed_h(r) == 2
    c2.close()


def sm_server(tmp_path_factory, name, sm_toml):
    s = make_server(tmp_path_factory, name)
    if s.kind != "starling":
        pytest.skip("a Starling configuration key")
    with open(s.config_path, "a") as f:
        f.write("\n[sm]\n" + sm_toml + "\n")
    s.start()
    return s


@pytest.fixture
def short_retention_server(tmp_path_factory):
    """What is kept of an ended session is kept 2 s."""
    s = sm_server(tmp_path_factory, "smret", "ended_retention_secs = 2")
    yield s
    s.stop()


@pytest.fixture
def no_resumption_server(tmp_path_factory):
    """Stream management without resumption (a resumption time of 0)."""
    s = sm_server(tmp_path_factory, "smnores", "resume_timeout_secs = 0")
    yield s
    s.stop()


@pytest.mark.starling_only
def test_an_ended_session_s_h_is_kept_for_the_retention_time_only(short_retention_server):
    server = short_retention_server
    jid, _, pw = server.new_user("smrt")
    c, enabled = login_sm(server, jid, pw)
    handled(c, 1)
    c.close()
    c2, r = resume(server, jid, pw, enabled.get("id"), 0)
    assert failed_h(r) == 2
    c2.close()
    time.sleep(3)
    c3, r = resume(server, jid, pw, enabled.get("id"), 0)
    assert r.tag == sm("failed"), tostring(r)
    assert r.find(q(NS_STANZAS, "item-not-found")) is not None, tostring(r)
    assert r.get("h") is None, "kept past its time: " + tostring(r)
    c3.close()
    server.assert_healthy()


@pytest.mark.starling_only
def test_resume_where_resumption_is_not_offered_is_feature_not_implemented(no_resumption_server):
    """XEP-0198 section 5: a server that does not support resumption answers <resume/> with
    <feature-not-implemented/>; the client binds a new session on the same stream."""
    server = no_resumption_server
    jid, _, pw = server.new_user("smnr")
    c, enabled = login_sm(server, jid, pw)
    assert enabled.get("id") is None and enabled.get("resume") is None, tostring(enabled)
    c.close()
    c2, r = resume(server, jid, pw, "1-anything", 0)
    assert r.tag == sm("failed"), tostring(r)
    assert r.find(q(NS_STANZAS, "feature-not-implemented")) is not None, tostring(r)
    assert c2.bind("fresh")
    assert c2.ping_server().get("type") == "result"
    c2.close()
    server.assert_healthy()


def test_resume_on_a_bound_stream_is_unexpected_request(server):
    jid, _, pw = server.new_user("smrb")
    c, enabled = login_sm(server, jid, pw)
    c.send_raw(f"<resume xmlns='{NS_SM}' previd='{enabled.get('id')}' h='0'/>")
    f = c.recv(lambda e: e.tag in (sm("resumed"), sm("failed")))
    assert f.tag == sm("failed")
    assert f.find(q("urn:ietf:params:xml:ns:xmpp-stanzas", "unexpected-request")) is not None
    c.close()


def test_contacts_see_the_detached_session_until_it_times_out(server):
    """While a session waits for resumption it stays available; when it times out its
    contacts get unavailable."""
    w = server.online("smw")
    jid, _, pw = server.new_user("smd")
    c, enabled = login_sm(server, jid, pw, max_=2)
    # w subscribes to c, c approves: w gets c's presence
    w.presence(to=jid, type_="subscribe")
    c.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", what="subscribe")
    c.presence(to=w.bare, type_="subscribed")
    w.recv(lambda e: e.tag == C("presence") and e.get("from") == c.jid and e.get("type") is None,
           what="c available")
    drop(c)
    w.expect_nothing(lambda e: e.tag == C("presence") and e.get("from") == c.jid, 1.0,
                     what="unavailable while detached")
    un = w.recv(lambda e: e.tag == C("presence") and e.get("from") == c.jid, timeout=5,
                what="unavailable after the resumption timeout")
    assert un.get("type") == "unavailable"
    w.close()


def test_unacked_messages_go_offline_when_the_session_ends(server):
    """XEP-0198 section 4: what the client never acknowledged is not lost when the session
    times out: messages are stored offline and come with the next initial presence."""
    a = server.online("smoa")
    jid, _, pw = server.new_user("smof")
    c, enabled = login_sm(server, jid, pw, max_=1)
    for i in range(3):
        a.message(jid, f"o{i}")
    assert bodies(c, 3) == ["o0", "o1", "o2"]
    drop(c)
    time.sleep(2.5)  # the resumption window (1 s) passes
    c2 = server.login(jid, pw, resource="again")
    c2.presence()
    msgs = bodies(c2, 3)
    assert msgs == ["o0", "o1", "o2"]
    a.close()
    c2.close()


def test_unacked_iq_request_gets_an_error_when_the_session_ends(server):
    a = server.online("smia")
    jid, _, pw = server.new_user("smi")
    c, enabled = login_sm(server, jid, pw, max_=1)
    iid = new_id("q")
    a.send_raw(f"<iq type='get' id='{iid}' to='{c.jid}'><query xmlns='jabber:iq:version'/></iq>")
    c.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="the request")
    drop(c)
    err = a.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, timeout=6, what="error reply")
    assert err.get("type") == "error", tostring(err)
    assert stanza_error(err)[1] == "service-unavailable"
    a.close()


def test_slixmpp_stream_management(server):
    """A library client with XEP-0198 enabled: the server's acks requests are answered and
    every message arrives."""
    import asyncio
    import ssl

    import pytest
    slixmpp = pytest.importorskip("slixmpp")

    jid, _, pw = server.new_user("smsl")
    sender = server.online("smss")

    async def scenario():
        x = slixmpp.ClientXMPP(jid + "/lib", pw)
        x.register_plugin("xep_0198")
        x.ssl_context.check_hostname = False
        x.ssl_context.verify_mode = ssl.CERT_NONE
        loop = asyncio.get_event_loop()
        enabled, done = loop.create_future(), loop.create_future()
        got = []
        x.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))

        def on_message(m):
            got.append(m["body"])
            if len(got) == 8 and not done.done():
                done.set_result(True)

        x.add_event_handler("message", on_message)
        x.add_event_handler("session_start", lambda _: x.send_presence())
        x.connect(server.host, server.c2s_port)
        await asyncio.wait_for(enabled, 15)
        await asyncio.sleep(0.3)
        for i in range(8):
            sender.message(jid, f"s{i}")
        await asyncio.wait_for(done, 15)
        # the plugin counted what it handled (at least the eight messages)
        assert x.plugin["xep_0198"].handled >= 8, x.plugin["xep_0198"].handled
        x.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 40))
    sender.close()


def test_messages_delivered_ahead_of_their_archive_write_are_in_a_query_sent_at_once(server):
    """A sender with stream management and a recipient on the same node: the message is
    delivered before its archive write commits (the sender's h waits for it). A query the
    recipient sends the moment it has the messages (as Smack's MAM test does) still finds
    every one."""
    from test_mam import NS_MAM, mam
    a_jid, _, a_pw = server.new_user("smbehinda")
    b = server.online("smbehindb")
    a, _ = login_sm(server, a_jid, a_pw)
    n = 20
    for i in range(n):
        a.message(b.bare, f"ahead {i}")
    got = bodies(b, n)
    assert got == [f"ahead {i}" for i in range(n)]
    results, fin = mam(b, f"<x xmlns='jabber:x:data' type='submit'>"
                          f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
                          f"<field var='with'><value>{a_jid}</value></field></x>")
    assert [r.body for r in results] == got
    assert fin.complete
    # ...and the sender's h counts them (plus its presence).
    assert ack_h(a) == n + 1
    a.close()
    b.close()
