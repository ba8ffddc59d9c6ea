"""RFC 6121 sections 3 and 4: subscription state machine, presence broadcast, probes, directed presence."""

import time

import pytest

from im import (make_mutual, no_presence, recv_presence, recv_push, recv_push_until, roster_get,
                roster_items, roster_set)
from rawxmpp import C, NS_ROSTER, bare, stanza_error, tostring


# ------------------------------------------------------------------ subscriptions

def test_subscribe_and_approve(server, clients):
    a = clients.add(server.online("sa"))
    b = clients.add(server.online("sb"))
    roster_get(a), roster_get(b)
    a.presence(to=b.bare + "/ignored-resource", type_="subscribe")  # 3.1.2: server uses the bare JID
    item = recv_push(a, b.bare)
    assert item.get("subscription") == "none" and item.get("ask") == "subscribe", tostring(item)
    p = recv_presence(b, a.bare, "subscribe")  # 3.1.3: from the bare JID of the user
    assert p.get("to") in (None, b.bare, b.jid)
    b.presence(to=a.bare, type_="subscribed")
    item = recv_push(b, a.bare)
    assert item.get("subscription") == "from", tostring(item)
    item = recv_push_until(a, b.bare, subscription="to")
    assert item.get("ask") is None, tostring(item)
    recv_presence(a, b.bare, "subscribed")
    # 3.1.6: the contact's server sends the contact's available presence to the user
    avail = recv_presence(a, b.jid, None)
    assert avail.get("type") is None
    assert roster_items(roster_get(a))[b.bare].get("subscription") == "to"
    assert roster_items(roster_get(b))[a.bare].get("subscription") == "from"


def test_mutual_subscription_both(server, clients):
    a = clients.add(server.online("ma"))
    b = clients.add(server.online("mb"))
    make_mutual(a, b)
    assert roster_items(roster_get(a))[b.bare].get("subscription") == "both"
    assert roster_items(roster_get(b))[a.bare].get("subscription") == "both"


@pytest.mark.prosody_deviates("re-sends available presence but no 'subscribed' (RFC 6121 3.1.3 auto-reply)")
def test_subscribe_when_already_subscribed_is_auto_approved(server, clients):
    """3.1.3: if the user already has a subscription, the contact's server auto-replies subscribed."""
    a = clients.add(server.online("aa"))
    b = clients.add(server.online("ab"))
    make_mutual(a, b)
    a.presence(to=b.bare, type_="subscribe")
    recv_presence(a, b.bare, "subscribed")
    no_presence(b, a.bare, "subscribe")


@pytest.mark.prosody_deviates("no unavailable presence from the contact's resources after unsubscribe (RFC 6121 3.3.3)")
def test_unsubscribe(server, clients):
    """3.3: user unsubscribes: both rosters updated, contact informed, user gets unavailable."""
    a = clients.add(server.online("ua"))
    b = clients.add(server.online("ub"))
    make_mutual(a, b)
    a.presence(to=b.bare, type_="unsubscribe")
    assert recv_push(a, b.bare).get("subscription") == "from"
    recv_presence(b, a.bare, "unsubscribe")
    assert recv_push(b, a.bare).get("subscription") == "to"
    recv_presence(a, b.jid, "unavailable")  # 3.3.3: contact's resources -> unavailable to user


def test_cancel_subscription_unsubscribed(server, clients):
    """3.2: contact cancels the user's subscription with unsubscribed."""
    a = clients.add(server.online("ca"))
    b = clients.add(server.online("cb"))
    make_mutual(a, b)
    b.presence(to=a.bare, type_="unsubscribed")
    assert recv_push(b, a.bare).get("subscription") == "to"
    recv_presence(a, b.bare, "unsubscribed")
    assert recv_push(a, b.bare).get("subscription") == "from"
    recv_presence(a, b.jid, "unavailable")
    # and presence no longer flows b -> a
    b.presence(status="now invisible to a")
    no_presence(a, b.bare, None)


def test_deny_subscription_request(server, clients):
    a = clients.add(server.online("da"))
    b = clients.add(server.online("db"))
    a.presence(to=b.bare, type_="subscribe")
    recv_presence(b, a.bare, "subscribe")
    b.presence(to=a.bare, type_="unsubscribed")
    recv_presence(a, b.bare, "unsubscribed")
    while True:
        item = recv_push_until(a, b.bare, subscription="none")
        if item.get("ask") is None:
            break
    assert roster_items(roster_get(a))[b.bare].get("subscription") == "none"


def test_unsolicited_subscribed_is_ignored(server, clients):
    """3.1.5 / 3.1.6: a 'subscribed' with no pending request changes nothing for the receiver."""
    a = clients.add(server.online("ia"))
    b = clients.add(server.online("ib"))
    b.presence(to=a.bare, type_="subscribed")
    time.sleep(0.5)
    items = roster_items(roster_get(a))
    assert b.bare not in items or items[b.bare].get("subscription") in ("none", None), tostring(items[b.bare])


def test_pending_request_delivered_at_login(server, clients):
    """3.1.3: a request to an offline contact is delivered when the contact becomes available."""
    a = clients.add(server.online("pa"))
    bjid, buser, bpw = server.new_user("pb")
    a.presence(to=bjid, type_="subscribe")
    recv_push(a, bjid)
    time.sleep(0.3)
    b = clients.add(server.login(bjid, bpw, presence=True))
    recv_presence(b, a.bare, "subscribe")


def test_pending_in_survives_restart(fresh_server, clients):
    srv = fresh_server
    a = clients.add(srv.online("ra"))
    bjid, buser, bpw = srv.new_user("rb")
    a.presence(to=bjid, type_="subscribe")
    recv_push(a, bjid)
    time.sleep(0.5)
    a.close()
    srv.restart()
    b = clients.add(srv.login(bjid, bpw, presence=True))
    recv_presence(b, a.bare, "subscribe", timeout=10)
    # ask='subscribe' also survived on the user's side
    a2 = clients.add(srv.login(a.bare, a.password))
    assert roster_items(roster_get(a2))[bjid].get("ask") == "subscribe"
    # and the request can still be approved after the restart
    b.presence(to=a.bare, type_="subscribed")
    assert recv_push_until(a2, bjid, subscription="to").get("subscription") == "to"


def test_cancel_pending_request_with_unsubscribe(server, clients):
    """Appendix A.2.1 / A.3.1: 'None + Pending Out' -> unsubscribe -> 'None'; the contact's
    pending-in is cleared, so the request is not delivered at the contact's next login."""
    a = clients.add(server.online("cpa"))
    bjid, buser, bpw = server.new_user("cpb")
    a.presence(to=bjid, type_="subscribe")
    assert recv_push(a, bjid).get("ask") == "subscribe"
    a.presence(to=bjid, type_="unsubscribe")
    item = recv_push(a, bjid)
    assert item.get("ask") is None and item.get("subscription") == "none", tostring(item)
    time.sleep(0.3)
    b = clients.add(server.login(bjid, bpw, presence=True))
    no_presence(b, a.bare, "subscribe", timeout=1.0)


def test_roster_remove_with_both_cancels_subscriptions(server, clients):
    """RFC 6121 2.5.2: removing an item with subscription 'both' sends unsubscribe and
    unsubscribed to the contact, whose roster becomes 'none' and who sees the user go unavailable."""
    a = clients.add(server.online("rma"))
    b = clients.add(server.online("rmb"))
    make_mutual(a, b)
    assert roster_set(a, b.bare, remove=True).get("type") == "result"
    assert recv_push(a, b.bare).get("subscription") == "remove"
    recv_presence(b, a.bare, "unsubscribe", by_bare=True)
    recv_presence(b, a.bare, "unsubscribed", by_bare=True)
    recv_push_until(b, a.bare, subscription="none")
    recv_presence(b, a.jid, "unavailable")
    assert roster_items(roster_get(b))[a.bare].get("subscription") == "none"


def test_resubscribe_after_cancel(server, clients):
    a = clients.add(server.online("rsa"))
    b = clients.add(server.online("rsb"))
    make_mutual(a, b)
    b.presence(to=a.bare, type_="unsubscribed")
    recv_push_until(a, b.bare, subscription="from")
    a.drain(0.3), b.drain(0.3)
    a.presence(to=b.bare, type_="subscribe")
    recv_presence(b, a.bare, "subscribe")
    b.presence(to=a.bare, type_="subscribed")
    recv_push_until(a, b.bare, subscription="both")
    recv_presence(a, b.jid, None)


def test_pre_approval(server, clients):
    """3.4: contact pre-approves; the later request is approved without asking the contact."""
    a = clients.add(server.online("qa"))
    b = clients.add(server.online("qb"))
    b.presence(to=a.bare, type_="subscribed")  # pre-approval
    item = recv_push(b, a.bare)
    assert item.get("subscription") == "none", tostring(item)
    a.presence(to=b.bare, type_="subscribe")
    recv_presence(a, b.bare, "subscribed")
    assert recv_push_until(a, b.bare, subscription="to") is not None
    assert recv_push_until(b, a.bare, subscription="from").get("approved") is None
    no_presence(b, a.bare, "subscribe")


@pytest.mark.prosody_deviates("pre-approval is stored but the roster item never carries approved='true'")
def test_pre_approval_shown_in_roster(server, clients):
    """3.4.1 / 2.1.2.1: a pre-approved item carries approved='true' in the push and the roster."""
    a = clients.add(server.online("qc"))
    b = clients.add(server.online("qd"))
    b.presence(to=a.bare, type_="subscribed")
    item = recv_push(b, a.bare)
    assert item.get("approved") == "true" and item.get("subscription") == "none", tostring(item)
    assert roster_items(roster_get(b))[a.bare].get("approved") == "true"


def test_pre_approval_feature_advertised(server, clients):
    jid, user, pw = server.new_user("pf")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    assert c.feature("urn:xmpp:features:pre-approval", "sub") is not None, tostring(c.features)


def test_subscribe_to_malformed_jid(server, clients):
    """A subscription request to a malformed JID -> <jid-malformed/> (RFC 6120 8.3.3.8)."""
    a = clients.add(server.online("jm"))
    a.send_raw("<presence to='a@b@c' type='subscribe' id='jm1'/>")
    e = a.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", what="presence error")
    assert stanza_error(e) == ("modify", "jid-malformed"), tostring(e)
    server.assert_healthy(a)


# ------------------------------------------------------------------ presence

def test_initial_presence_broadcast_and_probe(server, clients):
    a = clients.add(server.online("ba"))
    b = clients.add(server.online("bb"))
    make_mutual(a, b)
    bjid, bpw = b.bare, b.password
    b.close()
    recv_presence(a, b.jid, "unavailable")
    b2 = clients.add(server.login(bjid, bpw, resource="again"))
    b2.presence(status="back")
    p = recv_presence(a, b2.jid, None)  # broadcast (4.2.2)
    assert p.findtext(C("status")) == "back"
    recv_presence(b2, a.jid, None)  # probe answered by a's server (4.3)
    recv_presence(b2, b2.jid, None)  # own presence reflected (4.2.2)


def test_presence_update_broadcast(server, clients):
    a = clients.add(server.online("pu"))
    b = clients.add(server.online("pv"))
    make_mutual(a, b)
    a.presence(status="away now", extra="<show>away</show>")
    p = recv_presence(b, a.jid, None)
    assert p.findtext(C("show")) == "away" and p.findtext(C("status")) == "away now"


def test_no_presence_without_subscription(server, clients):
    a = clients.add(server.online("na"))
    b = clients.add(server.online("nb"))
    a.presence(status="hello world")
    no_presence(b, a.bare)


def test_unavailable_on_clean_disconnect(server, clients):
    a = clients.add(server.online("ud"))
    b = clients.add(server.online("ue"))
    make_mutual(a, b)
    b.close()
    recv_presence(a, b.jid, "unavailable")


def test_unavailable_on_dropped_tcp(server, clients):
    a = clients.add(server.online("dt"))
    b = clients.add(server.online("du"))
    make_mutual(a, b)
    b.drop()  # RST, no </stream:stream>
    recv_presence(a, b.jid, "unavailable", timeout=10)
    server.assert_healthy(a)


def test_unavailable_on_half_closed_tcp(server, clients):
    """The client just vanishes (FIN without closing the stream)."""
    import socket
    a = clients.add(server.online("hc"))
    b = clients.add(server.online("hd"))
    make_mutual(a, b)
    b.sock.shutdown(socket.SHUT_RDWR)
    recv_presence(a, b.jid, "unavailable", timeout=10)


def test_explicit_unavailable(server, clients):
    a = clients.add(server.online("ea"))
    b = clients.add(server.online("eb"))
    make_mutual(a, b)
    b.presence(type_="unavailable", status="bye")
    p = recv_presence(a, b.jid, "unavailable")
    assert p.findtext(C("status")) == "bye"


def test_presence_between_own_resources(server, clients):
    jid, user, pw = server.new_user("own")
    r1 = clients.add(server.login(jid, pw, resource="one", presence=True))
    r2 = clients.add(server.login(jid, pw, resource="two", presence=True))
    recv_presence(r1, r2.jid, None)
    recv_presence(r2, r1.jid, None)  # probe of own resources (4.3.2)
    r2.close()
    recv_presence(r1, r2.jid, "unavailable")


def test_directed_presence(server, clients):
    """4.6: directed presence reaches a non-contact, and it gets unavailable when the sender leaves."""
    a = clients.add(server.online("dpa"))
    b = clients.add(server.online("dpb"))
    a.presence(to=b.jid, status="just for you")
    p = recv_presence(b, a.jid, None)
    assert p.findtext(C("status")) == "just for you"
    a.close()
    recv_presence(b, a.jid, "unavailable")


def test_directed_presence_dropped_tcp(server, clients):
    a = clients.add(server.online("dqa"))
    b = clients.add(server.online("dqb"))
    a.presence(to=b.bare)
    recv_presence(b, a.jid, None)
    a.drop()
    recv_presence(b, a.jid, "unavailable", timeout=10)


def test_presence_probe_from_client_not_answered_without_subscription(server, clients):
    """4.3: a probe from a user without a subscription reveals nothing."""
    a = clients.add(server.online("pra"))
    b = clients.add(server.online("prb"))
    a.presence(to=b.bare, type_="probe")
    no_presence(a, b.bare, None)


def test_unknown_payload_in_presence_routed_untouched(server, clients):
    a = clients.add(server.online("xpa"))
    b = clients.add(server.online("xpb"))
    payload = "<custom xmlns='urn:example:presence-ext' a='1' b='two'><inner x='y'>text &amp; more</inner><e/></custom>"
    a.presence(to=b.jid, extra=payload)
    p = recv_presence(b, a.jid, None)
    el = p.find("{urn:example:presence-ext}custom")
    assert el is not None, tostring(p)
    assert el.attrib == {"a": "1", "b": "two"}
    inner = el.find("{urn:example:presence-ext}inner")
    assert inner.attrib == {"x": "y"} and inner.text == "text & more"
    assert el.find("{urn:example:presence-ext}e") is not None
