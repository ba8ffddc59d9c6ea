"""Issue 4: one XMPP service on three nodes. Users on different nodes see each other
as if on one server (RFC 6121 rosters, presence, messages, offline storage), and
the account database is one (an account made through any node logs in on any node).

alice is on node 1, bob on node 2, carol on node 3 unless a test says otherwise.
"""

import time

import pytest

from cluster import online_on, relogin, shared_cluster  # noqa: F401 (fixture)
from im import make_mutual, recv_presence, recv_push, recv_push_until, roster_get, roster_items, roster_set
from rawxmpp import C, NS_DELAY, SASLFailure, q, tostring

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(120)]


# ------------------------------------------------------------------ accounts

def test_account_made_through_any_node_logs_in_on_every_node(shared_cluster, clients):
    cl = shared_cluster
    worst = 0.0
    for maker in (1, 2, 3):
        jid, _, pw = cl[maker].new_user(f"acc{maker}_")
        for i in (1, 2, 3):
            c, took = cl[i].login_eventually(jid, pw, timeout=5)
            clients.add(c)
            worst = max(worst, took)
            assert c.ping_server().get("type") == "result"
            c.close()
    cl.figure("account_visible_on_other_nodes_max_s", worst, "s")


def test_password_change_and_delete_apply_on_every_node(shared_cluster, clients):
    cl = shared_cluster
    jid, _, pw = cl[1].new_user("pwd")
    cl[2].passwd(jid, "new-" + pw)
    # A changed password: the old one is refused everywhere once the change applied there.
    for i in (1, 3):
        c, _ = cl[i].login_eventually(jid, "new-" + pw, timeout=5)
        c.close()
        with pytest.raises(SASLFailure) as e:
            cl[i].login(jid, pw)
        assert e.value.condition == "not-authorized"
    cl[3].del_user(jid)
    deadline = time.monotonic() + 5
    for i in (1, 2):
        while True:
            try:
                c = cl[i].login(jid, "new-" + pw)
            except SASLFailure as e:
                assert e.condition == "not-authorized", e.condition
                break
            c.close()
            assert time.monotonic() < deadline, f"deleted account still logs in on node {i}"
            time.sleep(0.2)


def test_account_usable_at_once_on_the_node_it_was_made_through(shared_cluster, clients):
    """Read-your-writes: `starling user add` through a node returns once the account is
    committed; a login on that same node right after it must succeed, on the leader and
    on the followers alike."""
    cl = shared_cluster
    refused = []
    for i in (1, 2, 3):
        for _ in range(10):
            jid, _, pw = cl[i].new_user(f"ryw{i}_")
            r = cl[i].login_refusal(jid, pw)
            if r is not None:
                refused.append(f"node {i} (leader {cl.leader()}): {jid}: {r}")
    assert not refused, "logins refused right after the account was made through the same node:\n" + \
        "\n".join(refused)


# ------------------------------------------------------------------ rosters and subscriptions

@pytest.mark.parametrize("where", ["leader", "follower"])
def test_subscription_approved_at_once_on_one_node(shared_cluster, clients, where):
    """RFC 6121 3.1.3-3.1.5 with both users on one node (the leader, or a follower): the
    contact approves the request as soon as it arrives; every time the result must be
    subscription 'from' for the contact and 'to' for the user (not a pre-approval, 3.4,
    which would mean the contact's server had not seen the request it just delivered).
    Twenty rounds: a node that answers from a stale replica fails some of them."""
    cl = shared_cluster
    leader = cl.leader()
    node = cl[leader] if where == "leader" else cl[next(i for i in (1, 2, 3) if i != leader)]
    bad = []
    for n in range(20):
        if len(bad) >= 3:
            break
        a = clients.add(online_on(node, "qa"))
        b = clients.add(online_on(node, "qb"))
        a.timeout = 2.0  # the push comes within milliseconds when it comes
        a.presence(to=b.bare, type_="subscribe")
        recv_presence(b, a.bare, "subscribe")
        b.presence(to=a.bare, type_="subscribed")
        try:
            recv_push_until(a, b.bare, subscription="to")
        except AssertionError:
            items = roster_items(roster_get(b))
            bi = items.get(a.bare)
            bad.append(f"round {n}: the user's roster never became 'to'; the contact's item is "
                       f"{None if bi is None else dict(bi.attrib)}")
        a.close()
        b.close()
    assert not bad, f"on node {node.node_id} ({where}):\n" + "\n".join(bad)


def test_roster_is_one_roster_on_every_node(shared_cluster, clients):
    """A roster change made on node 1 is in the roster fetched on nodes 2 and 3."""
    cl = shared_cluster
    alice = clients.add(online_on(cl[1], "ra", presence=False))
    roster_get(alice)  # an interested resource (RFC 6121 2.1.6) gets the push
    jid, _, _ = cl[3].new_user("rb")
    r = roster_set(alice, jid, name="Bob", groups=["Friends"])
    assert r.get("type") == "result", tostring(r)
    recv_push(alice, jid)
    for i in (2, 3):
        a2 = clients.add(relogin(cl[i], alice, resource=f"on{i}", presence=False))
        item = roster_items(roster_get(a2)).get(jid)
        assert item is not None, f"roster item missing on node {i}"
        assert item.get("name") == "Bob" and item.findtext(q("jabber:iq:roster", "group")) == "Friends"
        a2.close()


def test_roster_push_reaches_own_resource_on_other_node(shared_cluster, clients):
    """RFC 6121 2.1.6: a roster set is pushed to every interested resource of the user,
    wherever it is bound."""
    cl = shared_cluster
    a1 = clients.add(online_on(cl[1], "rp"))
    a2 = clients.add(relogin(cl[2], a1, resource="second"))
    jid, _, _ = cl[3].new_user("rq")
    roster_set(a1, jid, name="Q")
    recv_push(a1, jid)
    item = recv_push(a2, jid)
    assert item.get("name") == "Q", tostring(item)


def test_subscription_between_nodes(shared_cluster, clients):
    """RFC 6121 3.1: alice (node 1) subscribes to bob (node 2), bob approves."""
    cl = shared_cluster
    alice = clients.add(online_on(cl[1], "sa"))
    bob = clients.add(online_on(cl[2], "sb"))
    alice.presence(to=bob.bare, type_="subscribe")
    item = recv_push(alice, bob.bare)
    assert item.get("ask") == "subscribe", tostring(item)
    recv_presence(bob, alice.bare, "subscribe")
    bob.presence(to=alice.bare, type_="subscribed")
    assert recv_push(bob, alice.bare).get("subscription") == "from"
    item = recv_push_until(alice, bob.bare, subscription="to")
    assert item.get("ask") is None, tostring(item)
    recv_presence(alice, bob.bare, "subscribed")
    # 3.1.6: bob's server sends bob's available presence to alice
    recv_presence(alice, bob.jid, None)
    # and the result is the same roster on a third node
    a3 = clients.add(relogin(cl[3], alice, resource="third", presence=False))
    assert roster_items(roster_get(a3))[bob.bare].get("subscription") == "to"


def test_pending_subscription_to_user_on_other_node_delivered_at_login(shared_cluster, clients):
    """RFC 6121 3.1.3: a request to an offline contact is delivered when the contact
    becomes available, on whichever node it logs in."""
    cl = shared_cluster
    alice = clients.add(online_on(cl[1], "pa"))
    bjid, _, bpw = cl[2].new_user("pb")
    alice.presence(to=bjid, type_="subscribe")
    recv_push(alice, bjid)
    alice.ping_server()
    bob, _ = cl[3].login_eventually(bjid, bpw, presence=True)
    clients.add(bob)
    recv_presence(bob, alice.bare, "subscribe")


# ------------------------------------------------------------------ presence

def _mutual_then_spread(cl, clients, prefix):
    """alice and bob with subscription=both (made on the leader, so the handshake itself
    depends neither on cross-node delivery nor on a follower's replica being current);
    then alice goes to node 1, bob to node 2."""
    a = online_on(cl.leader_node(), prefix + "a")
    b = online_on(cl.leader_node(), prefix + "b")
    make_mutual(a, b)
    a.close()
    b.close()
    bob = clients.add(relogin(cl[2], b))
    return bob, a


def test_presence_broadcast_across_nodes(shared_cluster, clients):
    """RFC 6121 4.2 / 4.5: bob (node 2) sees alice (node 1) become available and, when
    her stream closes, unavailable."""
    cl = shared_cluster
    bob, a = _mutual_then_spread(cl, clients, "pr")
    alice = clients.add(relogin(cl[1], a, resource="desk"))
    p = recv_presence(bob, alice.jid, None)
    assert p.get("type") is None
    # 4.4.2: alice's server answers bob's probe: alice sees bob's presence too
    recv_presence(alice, bob.jid, None)
    alice.presence(status="busy")
    p = recv_presence(bob, alice.jid, None)
    assert p.findtext(C("status")) == "busy", tostring(p)
    alice.close()
    recv_presence(bob, alice.jid, "unavailable")


def test_presence_on_third_node_after_contact_already_online(shared_cluster, clients):
    """RFC 6121 4.3 probes: carol (node 3) logs in after alice (node 1) is available and
    receives alice's current presence."""
    cl = shared_cluster
    a = online_on(cl.leader_node(), "pca")
    c = online_on(cl.leader_node(), "pcc")
    make_mutual(a, c)
    a.close()
    c.close()
    alice = clients.add(relogin(cl[1], a, resource="here"))
    alice.presence(status="present")
    alice.drain(0.3)
    carol = clients.add(relogin(cl[3], c, resource="there"))
    p = recv_presence(carol, alice.jid, None)
    assert p.findtext(C("status")) == "present", tostring(p)


# ------------------------------------------------------------------ messages

def test_chat_between_nodes_bare_and_full_jid(shared_cluster, clients):
    cl = shared_cluster
    alice = clients.add(online_on(cl[1], "ca"))
    bob = clients.add(online_on(cl[2], "cb"))
    carol = clients.add(online_on(cl[3], "cc"))
    mid = alice.message(bob.bare, "to your bare JID")
    m = bob.recv_stanza("message", id=mid)
    assert m.findtext(C("body")) == "to your bare JID"
    assert m.get("from") == alice.jid, tostring(m)
    mid = alice.message(bob.jid, "to your full JID")
    m = bob.recv_stanza("message", id=mid)
    assert m.get("from") == alice.jid and m.get("to") == bob.jid, tostring(m)
    mid = bob.message(alice.jid, "reply")
    assert alice.recv_stanza("message", id=mid).get("from") == bob.jid
    mid = carol.message(alice.bare, "from node 3")
    assert alice.recv_stanza("message", id=mid).get("from") == carol.jid
    # nothing of it went to offline storage: a second resource of bob gets nothing stored
    b2 = clients.add(relogin(cl[3], bob, resource="late"))
    b2.expect_nothing(lambda e: e.tag == C("message"), timeout=1.0, what="message stored offline")


def test_message_to_unavailable_full_jid_on_other_node(shared_cluster, clients):
    """RFC 6121 8.5.3.2.1: a chat message to a full JID with no such resource goes to
    the user's other (available) resource, here on another node."""
    cl = shared_cluster
    alice = clients.add(online_on(cl[1], "ua"))
    bob = clients.add(online_on(cl[2], "ub"))
    mid = alice.message(bob.bare + "/no-such-resource", "fallback")
    m = bob.recv_stanza("message", id=mid)
    assert m.findtext(C("body")) == "fallback"


def test_offline_message_delivered_on_other_node_with_delay(shared_cluster, clients):
    """RFC 6121 8.5.2.2 / XEP-0160 / XEP-0203: stored while bob is offline, delivered
    when bob logs in on another node, with a delay element."""
    cl = shared_cluster
    alice = clients.add(online_on(cl[1], "oa"))
    bjid, _, bpw = cl[2].new_user("ob")
    ids = [alice.message(bjid, f"stored {i}") for i in range(3)]
    assert alice.ping_server().get("type") == "result"
    bob, _ = cl[3].login_eventually(bjid, bpw, presence=True)
    clients.add(bob)
    got = []
    while len(got) < len(ids):
        m = bob.recv_stanza("message", timeout=10)
        d = m.find(q(NS_DELAY, "delay"))
        assert d is not None and d.get("stamp"), tostring(m)
        assert m.get("from") == alice.jid, tostring(m)
        got.append(m.get("id"))
    assert got == ids


# ------------------------------------------------------------------ resources on several nodes

def _priority_swap(cl, clients, settle: float):
    """u/one on node 1 (priority 5) and u/two on node 2 (priority 1); a sender on node 3
    sends to the bare JID: 'one' gets it. Then the priorities swap (one 0, two 7); once
    both resources have seen each other's new presence (and ``settle`` seconds more) the
    next message must reach 'two' and not 'one'."""
    u1 = clients.add(online_on(cl[1], "hp", resource="one", priority=5))
    u2 = clients.add(relogin(cl[2], u1, resource="two", priority=1))
    s = clients.add(online_on(cl[3], "hs"))
    is_msg = lambda e: e.tag == C("message")  # noqa: E731
    mid = s.message(u1.bare, "to the highest")
    m = u1.recv_stanza("message", id=mid)
    assert m.get("from") == s.jid
    u2.expect_nothing(is_msg, timeout=1.0, what="message at the lower-priority resource")
    u1.presence(priority=0)
    u2.presence(priority=7)
    recv_presence(u1, u2.jid, None)  # 4.4.2: own resources see each other's presence
    recv_presence(u2, u1.jid, None)
    time.sleep(settle)
    mid = s.message(u1.bare, "to the new highest")
    m = u2.recv_stanza("message", id=mid, timeout=3)
    assert m.get("from") == s.jid
    u1.expect_nothing(is_msg, timeout=1.0, what="message at the lower-priority resource")


def test_bare_jid_message_to_highest_priority_resource_across_nodes(shared_cluster, clients):
    """RFC 6121 8.5.2.1.1: a message to the bare JID goes to the available resource with
    the highest priority, whichever node it is on (checked both ways round; the new
    priorities are given a second to reach every node)."""
    _priority_swap(shared_cluster, clients, settle=1.0)


def test_same_full_jid_on_second_node_replaces_older_session(shared_cluster, clients):
    """RFC 6120 7.7.2.2: binding a full JID that is already bound, here on another node,
    ends the older session with <conflict/>; the new one is served."""
    cl = shared_cluster
    old = clients.add(online_on(cl[1], "cf", resource="phone"))
    new = clients.add(relogin(cl[2], old, resource="phone"))
    assert new.jid == old.jid
    assert old.expect_stream_error(timeout=5) == "conflict"
    s = clients.add(online_on(cl[3], "cs"))
    mid = s.message(new.jid, "to the new session")
    assert new.recv_stanza("message", id=mid).get("from") == s.jid
    assert new.ping_server().get("type") == "result"
