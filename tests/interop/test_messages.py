"""RFC 6121 section 8: message delivery rules; XEP-0160/0203 offline storage."""

import re
import time

import pytest

from conftest import OFFLINE_MAX
from rawxmpp import C, NS_DELAY, bare, new_id, q, stanza_error, tostring


def is_msg(mid):
    return lambda e: e.tag == C("message") and e.get("id") == mid


def got(c, mid, timeout=None):
    return c.recv(is_msg(mid), timeout, what=f"message {mid}")


def nothing(c, mid, timeout=0.7):
    c.expect_nothing(is_msg(mid), timeout, what=f"message {mid}")


def error_reply(c, mid, timeout=None):
    e = c.recv(lambda e: e.tag == C("message") and e.get("id") == mid and e.get("type") == "error",
               timeout, what=f"error for {mid}")
    return stanza_error(e)


def user_with(server, clients, *priorities):
    """One account with a resource per priority (None = available, default priority 0)."""
    jid, user, pw = server.new_user("md")
    res = []
    for i, p in enumerate(priorities):
        c = clients.add(server.login(jid, pw, resource=f"r{i}"))
        c.presence(priority=p)
        res.append(c)
    time.sleep(0.2)
    for c in res:
        c.drain(0.1)
    return jid, pw, res


# ------------------------------------------------------------- online delivery

def test_full_jid_delivery_only_to_that_resource(server, clients):
    s = clients.add(server.online("snd"))
    jid, pw, (r0, r1) = user_with(server, clients, 5, 1)
    mid = s.message(r1.jid, "to r1")
    m = got(r1, mid)
    assert m.get("from") == s.jid and m.get("to") == r1.jid
    nothing(r0, mid)


@pytest.mark.parametrize("mtype", ["chat", "normal"])
def test_bare_jid_goes_to_highest_priority(server, clients, mtype):
    s = clients.add(server.online("snd"))
    jid, pw, (lo, hi, neg) = user_with(server, clients, 1, 7, -1)
    mid = s.message(jid, "hi", type_=mtype)
    assert got(hi, mid).findtext(C("body")) == "hi"
    nothing(neg, mid)  # 8.5.2.1.1: never to a negative-priority resource


def test_bare_jid_equal_priority_reaches_a_resource(server, clients):
    s = clients.add(server.online("snd"))
    jid, pw, (x, y) = user_with(server, clients, 3, 3)
    mid = s.message(jid, "eq")
    deadline = time.monotonic() + 3
    hits = 0
    for c in (x, y):
        try:
            got(c, mid, timeout=max(0.1, deadline - time.monotonic()))
            hits += 1
        except AssertionError:
            pass
    assert hits >= 1


def test_headline_to_all_non_negative(server, clients):
    """8.5.2.1.1: headline to the bare JID goes to every non-negative resource."""
    s = clients.add(server.online("snd"))
    jid, pw, (a, b, neg) = user_with(server, clients, 0, 4, -5)
    mid = s.message(jid, "news", type_="headline")
    got(a, mid), got(b, mid)
    nothing(neg, mid)


def test_negative_priority_receives_full_jid_messages(server, clients):
    s = clients.add(server.online("snd"))
    jid, pw, (neg,) = user_with(server, clients, -3)
    mid = s.message(neg.jid, "direct")
    got(neg, mid)


def test_groupchat_to_bare_jid_is_service_unavailable(server, clients):
    """8.5.2.1.1 / 8.5.2.2.1: groupchat to a user's bare JID -> <service-unavailable/>."""
    s = clients.add(server.online("snd"))
    jid, pw, (r,) = user_with(server, clients, 1)
    mid = s.message(jid, "gc", type_="groupchat")
    assert error_reply(s, mid) == ("cancel", "service-unavailable")
    nothing(r, mid)


def test_groupchat_to_unknown_full_jid_is_service_unavailable(server, clients):
    """8.5.3.2.1: groupchat to a full JID with no such resource -> <service-unavailable/>."""
    s = clients.add(server.online("snd"))
    jid, pw, (r,) = user_with(server, clients, 1)
    mid = s.message(jid + "/nope", "gc", type_="groupchat")
    assert error_reply(s, mid) == ("cancel", "service-unavailable")


def test_error_message_to_bare_jid_is_dropped(server, clients):
    s = clients.add(server.online("snd"))
    jid, pw, (r,) = user_with(server, clients, 1)
    mid = s.message(jid, None, type_="error",
                    extra="<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")
    nothing(r, mid)
    s.expect_nothing(is_msg(mid), 0.3)


def test_chat_to_unknown_resource_falls_back_to_bare(server, clients):
    """8.5.3.2.1: chat to an unavailable resource is treated as sent to the bare JID (or bounced)."""
    s = clients.add(server.online("snd"))
    jid, pw, (r,) = user_with(server, clients, 2)
    mid = s.message(jid + "/gone", "where?")
    try:
        m = got(r, mid, timeout=2)
        assert m.findtext(C("body")) == "where?"
    except AssertionError:
        assert error_reply(s, mid, timeout=0.5) == ("cancel", "service-unavailable")


def test_iq_to_unknown_full_jid_is_service_unavailable(server, clients):
    """8.5.3.2.1: IQ to a full JID with no such resource -> <service-unavailable/>."""
    s = clients.add(server.online("snd"))
    jid, pw, (r,) = user_with(server, clients, 2)
    res = s.iq("get", "<query xmlns='jabber:iq:version'/>", to=jid + "/gone")
    assert stanza_error(res) == ("cancel", "service-unavailable"), tostring(res)


def test_iq_to_full_jid_routed_and_answered(server, clients):
    s = clients.add(server.online("snd"))
    jid, pw, (r,) = user_with(server, clients, 0)
    iid = new_id()
    s.send_raw(f"<iq type='get' id='{iid}' to='{r.jid}'><query xmlns='urn:example:q'/></iq>")
    req = r.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="routed iq")
    assert req.get("from") == s.jid
    r.send_raw(f"<iq type='result' id='{iid}' to='{s.jid}'><query xmlns='urn:example:q'><a/></query></iq>")
    res = s.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="iq result")
    assert res.get("type") == "result" and res.get("from") == r.jid


def test_message_to_nonexistent_user(server, clients):
    """8.5.1: no such account -> <service-unavailable/> for message (chat); the error comes
    from the address the message was sent to (RFC 6120 8.3.1)."""
    s = clients.add(server.online("snd"))
    to = "nobody-here-" + new_id() + "@" + server.domain
    mid = s.message(to, "anyone?")
    e = s.recv(lambda e: e.get("id") == mid and e.get("type") == "error", what="error reply")
    assert stanza_error(e) == ("cancel", "service-unavailable"), tostring(e)
    assert e.get("from") == to and e.get("to") in (s.jid, None), tostring(e)


def test_message_to_unknown_remote_domain(server, clients):
    """RFC 6120 8.3.3.15: a domain that cannot be resolved -> <remote-server-not-found/>."""
    s = clients.add(server.online("snd"))
    mid = s.message("someone@no-such-domain.invalid", "hello?")
    assert error_reply(s, mid, timeout=15) == ("cancel", "remote-server-not-found")
    server.assert_healthy(s)


def test_message_to_own_bare_jid(server, clients):
    """8.5.2.1.1 applies to the user's own bare JID too: delivered to the available resource(s)."""
    jid, pw, (a, b) = user_with(server, clients, 1, 5)
    mid = a.message(jid, "note to self")
    assert got(b, mid).get("from") == a.jid


def test_iq_to_nonexistent_user(server, clients):
    s = clients.add(server.online("snd"))
    r = s.iq("get", "<query xmlns='jabber:iq:version'/>", to="nobody-" + new_id() + "@" + server.domain)
    assert stanza_error(r) == ("cancel", "service-unavailable"), tostring(r)


def test_message_to_malformed_jid(server, clients):
    """RFC 6120 8.3.3.8: a 'to' that is not a valid JID -> <jid-malformed/>."""
    s = clients.add(server.online("snd"))
    for bad in ("a@b@c", "@localhost", "user@", "us er@localhost/" + "x" * 1100):
        mid = new_id()
        s.send_raw(f"<message to='{bad}' id='{mid}' type='chat'><body>x</body></message>")
        assert error_reply(s, mid) == ("modify", "jid-malformed"), bad
    server.assert_healthy(s)


def test_unknown_payload_in_message_routed_untouched(server, clients):
    s = clients.add(server.online("snd"))
    r = clients.add(server.online("rcv"))
    payload = ("<thing xmlns='urn:example:unknown:1' mode='x'><deep><deeper n='1'>v&lt;1&gt;</deeper></deep>"
               "<other xmlns='urn:example:unknown:2'>z</other></thing>")
    mid = s.message(r.jid, None, type_="normal", extra=payload)
    m = got(r, mid)
    t = m.find("{urn:example:unknown:1}thing")
    assert t is not None and t.get("mode") == "x", tostring(m)
    assert t.find("{urn:example:unknown:1}deep/{urn:example:unknown:1}deeper").text == "v<1>"
    assert t.find("{urn:example:unknown:2}other").text == "z"


def test_message_body_unicode_and_thread(server, clients):
    s = clients.add(server.online("snd"))
    r = clients.add(server.online("rcv"))
    body = "h\u00e9llo \u4e16\u754c \U0001F600 <&>"
    mid = s.message(r.jid, body, extra="<thread>t-1</thread><subject>s</subject>")
    m = got(r, mid)
    assert m.findtext(C("body")) == body and m.findtext(C("thread")) == "t-1"


# ------------------------------------------------------------- offline storage

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_offline_storage_delivered_on_initial_presence(server, clients):
    s = clients.add(server.online("snd"))
    jid, user, pw = server.new_user("off")
    mids = [s.message(jid, f"offline {i}", type_=t) for i, t in enumerate(["chat", "normal", "chat", "normal"])]
    s.expect_nothing(lambda e: e.get("type") == "error", 0.5)
    time.sleep(0.2)
    r = clients.add(server.login(jid, pw, resource="late"))
    # not before initial presence (8.5.2.2.1 / XEP-0160)
    r.expect_nothing(lambda e: e.tag == C("message"), 0.7)
    r.presence()
    # XEP-0160 2: delivered in the order they were received
    msgs = [r.recv(lambda e: e.tag == C("message"), what="offline message") for _ in mids]
    assert [m.get("id") for m in msgs] == mids
    for i, m in enumerate(msgs):
        assert m.findtext(C("body")) == f"offline {i}"
        assert bare(m.get("from")) == s.bare
        d = m.find(q(NS_DELAY, "delay"))
        assert d is not None, "no XEP-0203 delay: " + tostring(m)
        assert STAMP.match(d.get("stamp")), d.get("stamp")
        assert d.get("from") in (server.domain, None, s.bare, s.jid)
    # delivered once: a later login does not get them again
    r.close()
    r2 = clients.add(server.login(jid, pw, presence=True))
    r2.expect_nothing(lambda e: e.tag == C("message"), 0.7)


def test_offline_when_only_negative_priority(server, clients):
    """8.5.2.1.1: only negative-priority resources -> treated as offline (stored)."""
    s = clients.add(server.online("snd"))
    jid, pw, (neg,) = user_with(server, clients, -1)
    mid = s.message(jid, "store me")
    nothing(neg, mid)
    s.expect_nothing(lambda e: e.get("type") == "error", 0.3)
    r = clients.add(server.login(jid, pw, resource="pos", presence=True))
    assert got(r, mid).find(q(NS_DELAY, "delay")) is not None


def test_offline_headline_not_stored(server, clients):
    """8.5.2.2.1: headline to an offline user is silently dropped."""
    s = clients.add(server.online("snd"))
    jid, user, pw = server.new_user("hl")
    mid = s.message(jid, "news", type_="headline")
    s.expect_nothing(is_msg(mid), 0.5)
    r = clients.add(server.login(jid, pw, presence=True))
    nothing(r, mid)


def test_offline_chat_states_alone_are_not_stored(server, clients):
    """XEP-0160 3: a chat message with only chat state notifications SHOULD NOT be
    stored offline (one with a body and a chat state is)."""
    s = clients.add(server.online("snd"))
    jid, user, pw = server.new_user("cso")
    states = new_id("cs")
    s.send_raw(f"<message id='{states}' to='{jid}' type='chat'>"
               "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
               "<thread>t1</thread></message>")
    both = new_id("cb")
    s.send_raw(f"<message id='{both}' to='{jid}' type='chat'><body>hi</body>"
               "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    s.expect_nothing(lambda e: e.get("type") == "error", 0.5)
    r = clients.add(server.login(jid, pw, presence=True))
    got(r, both)
    nothing(r, states)


def test_offline_groupchat_is_service_unavailable(server, clients):
    s = clients.add(server.online("snd"))
    jid, user, pw = server.new_user("gco")
    mid = s.message(jid, "gc", type_="groupchat")
    assert error_reply(s, mid) == ("cancel", "service-unavailable")


@pytest.mark.starling_only
def test_offline_quota_full(server, clients):
    """XEP-0160 / RFC 6121 8.5.2.2.1: storage full -> <service-unavailable/>, earlier ones kept."""
    s = clients.add(server.online("snd"))
    jid, user, pw = server.new_user("quota")
    mids = [s.message(jid, f"q{i}") for i in range(OFFLINE_MAX)]
    s.expect_nothing(lambda e: e.get("type") == "error", 0.7)
    over = s.message(jid, "one too many")
    assert error_reply(s, over) == ("cancel", "service-unavailable")
    r = clients.add(server.login(jid, pw, presence=True))
    for mid in mids:
        got(r, mid)
    nothing(r, over)
