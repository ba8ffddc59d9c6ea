"""Issue 9: whole-cluster and partial restarts with kill -9, seen from outside.

The routing table and presence registry are moving from the durable Raft group to an
in-memory one ("registry"), so these tests only look at what clients see, which must hold
before and after that move:

* test_all_nodes_kill9_and_restarted: every node is killed at once and restarted (two
  first, the third later). Accounts, rosters (items, subscription states, roster version),
  pending subscription requests and offline messages survive; nothing of the sessions that
  existed before the kill survives: no stale route (RFC 6121 8.5.3.2.1 / 8.5.3.2.3 for
  stanzas to their full JIDs, 8.5.2.2.1 for a bare-JID message to a user who is not online)
  and no stale presence (probes answered only for resources that are online, 4.3.2); users
  who log in on different nodes afterwards see each other and chat.
* test_majority_restarted_while_one_node_survives: two nodes are killed and restarted while
  a session on the third stays connected; it must stay connected and reachable from users
  of the restarted nodes (messages to its full and bare JID, presence through a probe and
  through a new subscription), and the killed nodes' old sessions are gone.
* test_no_presence_of_a_node_still_down_after_full_restart (no stale presence once the
  registry is re-founded after losing its quorum) and
  test_survivor_reaches_restarted_node_at_once (node-to-node delivery reaches a restarted
  peer at once, not after its reconnect back-off) failed before issue 9's registry group
  and delivery fix.
* test_one_node_kill9_restarted_at_once: a node is killed and started again at once (before
  its lease could run out). Its old sessions' routes are gone everywhere (contacts get
  the unavailable presence the server sends for a session that ended uncleanly, RFC 6121
  4.5 / 4.3.2; an IQ to a dead full JID gets
  <service-unavailable/>; a chat to it goes to offline storage), and a user who reconnects
  at once with the same resource is not hit by the clean-up of its old session.
  test_cluster_failover.py covers a kill -9 with the restart long after the lease expired
  (contacts notified within 4 TTL, reconnect to a survivor, catch-up), and
  test_shape_regressions.py an IQ to a full JID whose node is down; not repeated here.

Every wait is bounded by a deadline; the negative checks ("no stale presence", "not
delivered") watch a window after a positive control arrived.
"""

import time

import pytest

from cluster import LEASE_TTL, Checks, cluster, online_on, shutdown_all  # noqa: F401 (fixture)
from im import RI, RQ, make_mutual, recv_presence, recv_push, recv_push_until, roster_get, roster_set
from rawxmpp import C, NS_DELAY, NS_ROSTER, XMPPTimeout, bare, new_id, q, tostring
from test_sint_helpers import error_condition, iq_reply

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(150)]

UNKNOWN = "urn:example:starling:restart:0"
SERVE_MAX = 30.0                # restart -> logins accepted (measured ~1-5 s)
NOTIFY_MAX = 4 * LEASE_TTL      # as in test_cluster_failover.py
QUIET = 1.5                     # window of the negative checks, after a positive control


# ------------------------------------------------------------------ helpers

def roster_snapshot(c):
    """(ver, {jid: (subscription, ask, name, groups)}) of c's roster (ver='': full roster)."""
    r = roster_get(c, ver="")
    qel = r.find(RQ)
    assert qel is not None, "roster result without <query/> for ver='': " + tostring(r)
    items = {}
    for i in qel.findall(RI):
        items[i.get("jid")] = (i.get("subscription") or "none", i.get("ask"), i.get("name"),
                               tuple(sorted(g.text or "" for g in i.findall(q(NS_ROSTER, "group")))))
    return qel.get("ver"), items


def wait_serving(node, jid, pw, timeout=SERVE_MAX):
    """Polls logins of an account on ``node`` until one succeeds; returns seconds waited."""
    c, took = node.login_eventually(jid, pw, timeout=timeout, resource=f"probe-{new_id('p')}")
    c.close()
    return took


def presences(c, window):
    """Every presence stanza that is queued at c or arrives within ``window`` seconds
    (other stanzas stay queued)."""
    out, deadline = [], time.monotonic() + window
    while True:
        rem = deadline - time.monotonic()
        try:
            out.append(c.recv(lambda e: e.tag == C("presence"), timeout=max(rem, 0.01)))
        except XMPPTimeout:
            return out
        if rem <= 0:
            return out


def available_not_online(got, online):
    """Available presence in ``got`` from a full JID that is not in ``online``."""
    return [tostring(p)[:300] for p in got if p.get("type") is None and p.get("from") not in online]


def iq_to(sender, to):
    """An IQ get with a payload nobody knows to ``to``; returns the answer (None: none in 5 s)."""
    iid = new_id("iq")
    sender.send_raw(f"<iq type='get' id='{iid}' to='{to}'><x xmlns='{UNKNOWN}'/></iq>")
    return iq_reply(sender, iid, timeout=5)


def expect_service_unavailable(chk, sender, to, what):
    r = iq_to(sender, to)
    chk.expect(r is not None and r.get("type") == "error" and error_condition(r) == "service-unavailable",
               f"{what}: IQ get from {sender.jid} to {to}: expected <service-unavailable/> "
               f"(RFC 6121 8.5.3.2.3), got {'no answer within 5 s' if r is None else tostring(r)[:400]}")


def recv_ids(c, ids, timeout, what):
    """Receives the messages with these ids (any order); returns them in arrival order."""
    want, order = set(ids), []
    deadline = time.monotonic() + timeout
    while want:
        try:
            m = c.recv(lambda e: e.tag == C("message") and e.get("id") in want,
                       timeout=max(deadline - time.monotonic(), 0.01), what=what)
        except XMPPTimeout:
            raise AssertionError(f"{what}: {len(want)} of {len(ids)} not received within {timeout}s "
                                 f"(missing ids {sorted(want)})")
        want.discard(m.get("id"))
        order.append(m)
    return order


def duplicates(c, ids, window=QUIET):
    """Messages with one of these ids that arrive (again) within ``window`` seconds."""
    ids = set(ids)
    got = []
    deadline = time.monotonic() + window
    while True:
        try:
            got.append(c.recv(lambda e: e.tag == C("message") and e.get("id") in ids,
                              timeout=max(deadline - time.monotonic(), 0.01)))
        except XMPPTimeout:
            return got


def has_delay(m):
    return m.find(f"{{{NS_DELAY}}}delay") is not None


def subscribe_one_way(a, b):
    """a subscribes to b's presence, b approves: a 'to' b, b 'from' a (protocol only)."""
    a.presence(to=bare(b.jid), type_="subscribe")
    recv_presence(b, bare(a.jid), "subscribe", by_bare=True)
    b.presence(to=bare(a.jid), type_="subscribed")
    recv_push_until(a, bare(b.jid), subscription="to")
    recv_push_until(b, bare(a.jid), subscription="from")
    a.drain(0.3)
    b.drain(0.3)


def chat_one_way(chk, s, r, what):
    """s -> r, to r's full and to its bare JID: each delivered to r's session."""
    for to in (r.jid, bare(r.jid)):
        body = f"{what} {new_id('b')}"
        mid = s.message(to, body)
        try:
            m = r.recv_stanza("message", id=mid, timeout=5)
            chk.expect(m.findtext(C("body")) == body and m.get("from") == s.jid,
                       f"{what}: {s.jid} -> {to}: wrong message {tostring(m)[:300]}")
        except (XMPPTimeout, AssertionError) as e:
            chk.expect(False, f"{what}: message {s.jid} -> {to} not delivered to {r.jid} within 5 s: "
                              f"{str(e)[:300]}")


def chat_both_ways(chk, x, y, what):
    """x -> y and y -> x, to the full and to the bare JID: each delivered to the other's session."""
    chat_one_way(chk, x, y, what)
    chat_one_way(chk, y, x, what)


def wait_reachable(sender, receiver, timeout):
    """Until an IQ from ``sender`` to ``receiver``'s full JID reaches ``receiver`` (while the
    server cannot deliver it, it answers <service-unavailable/>); returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        iid = new_id("reach")
        sender.send_raw(f"<iq type='get' id='{iid}' to='{receiver.jid}'><x xmlns='{UNKNOWN}'/></iq>")
        try:
            receiver.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, timeout=1.0, what="probe IQ")
            receiver.send_raw(f"<iq type='result' id='{iid}' to='{sender.jid}'/>")
            iq_reply(sender, iid)
            return time.monotonic() - t0
        except XMPPTimeout:
            iq_reply(sender, iid, timeout=0.5)   # the server's error, if any
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"an IQ from {sender.jid} does not reach {receiver.jid} within {timeout}s")
        time.sleep(0.2)


# ------------------------------------------------------------------ 1. all three nodes

def test_all_nodes_kill9_and_restarted(cluster, clients):
    cl = cluster
    chk = Checks()
    # -- before: accounts, rosters made over XMPP, offline messages, a session on every node.
    alice = clients.add(online_on(cl[1], "al", resource="a1"))
    bob = clients.add(online_on(cl[2], "bo", resource="b2"))
    carol = clients.add(online_on(cl[3], "ca", resource="c3"))
    dave_jid, _, dave_pw = cl[2].new_user("da")       # never online before the kill
    probe_jid, _, probe_pw = cl[1].new_user("zz")     # only used to poll for logins
    pw = {alice.bare: alice.password, bob.bare: bob.password, carol.bare: carol.password,
          dave_jid: dave_pw}

    make_mutual(alice, bob)                           # alice <-> bob: both (nodes 1, 2)
    make_mutual(bob, carol)                           # bob <-> carol: both (nodes 2, 3)
    subscribe_one_way(alice, carol)                   # alice 'to' carol, carol 'from' alice
    carol.presence(to=dave_jid, type_="subscribe")    # pending: dave is offline
    recv_push_until(carol, dave_jid, ask="subscribe")
    r = roster_set(alice, bob.bare, name="Bob", groups=["friends"])
    assert r.get("type") == "result", tostring(r)
    recv_push(alice, bob.bare)
    offline_ids = [bob.message(dave_jid, f"kept {i}") for i in range(3)]
    assert bob.ping_server().get("type") == "result"  # ... after the three were stored

    snap = {alice.bare: roster_snapshot(alice), bob.bare: roster_snapshot(bob),
            carol.bare: roster_snapshot(carol)}
    d0 = cl[2].login(dave_jid, dave_pw, resource="snap")   # no presence: nothing delivered
    snap[dave_jid] = roster_snapshot(d0)
    d0.close()
    expected = {alice.bare: {bob.bare: "both", carol.bare: "to"},
                bob.bare: {alice.bare: "both", carol.bare: "both"},
                carol.bare: {bob.bare: "both", alice.bare: "from", dave_jid: "none"}}
    for u, items in expected.items():
        got = {j: v[0] for j, v in snap[u][1].items()}
        assert got == items, f"setup: roster of {u} before the kill: {snap[u]}"
    assert snap[carol.bare][1][dave_jid][1] == "subscribe", snap[carol.bare]
    assert snap[alice.bare][1][bob.bare][2:] == ("Bob", ("friends",)), snap[alice.bare]

    # alice's second resource, on node 3; bob sees it (the route exists cluster-wide).
    alice2 = clients.add(cl[3].login(alice.bare, alice.password, resource="a3", presence=True))
    recv_presence(bob, alice2.jid, None, timeout=5)
    old = {"alice": alice.jid, "alice2": alice2.jid, "bob": bob.jid, "carol": carol.jid}

    # -- kill -9 all three at once.
    for i in (1, 2, 3):
        cl.kill9(i)
    shutdown_all(alice, alice2, bob, carol)

    # -- restart: nodes 3 and 1 first (a quorum), node 2 once they serve.
    t0 = time.monotonic()
    for i in (3, 1):
        cl[i].start(wait=False)
    for i in (3, 1):
        cl[i].wait_ready()
        wait_serving(cl[i], probe_jid, probe_pw)
    cl.figure("restart_all_two_serving_s", time.monotonic() - t0, "s")

    # bob logs in on node 1 while node 2 is down. None of his contacts is online and neither
    # is his old resource b2 (node 2). An IQ to b2 is answered by the server. Presence of b2
    # may show for as long as a node's failure may go unnoticed (NOTIFY_MAX, as in
    # test_cluster_failover.py), and must be withdrawn by then; that it should not show at
    # all is test_no_presence_of_a_node_still_down_after_full_restart.
    online = set()
    bob_n, _ = cl[1].login_eventually(bob.bare, bob.password, timeout=10, resource="b-new", presence=True)
    clients.add(bob_n)
    online.add(bob_n.jid)
    expect_service_unavailable(chk, bob_n, old["bob"], "bob's old session, node 2 still down")
    stale = {p.get("from") for p in presences(bob_n, QUIET)
             if p.get("type") is None and p.get("from") not in online}
    for jid in sorted(stale):
        got = chk.run(f"stale presence of {jid} withdrawn within {NOTIFY_MAX}s of the restart",
                      recv_presence, bob_n, jid, "unavailable", max(0.1, t0 + NOTIFY_MAX - time.monotonic()))
        if got is not None:
            cl.figure("restart_all_stale_presence_withdrawn_s", time.monotonic() - t0, "s", jid=jid)
    chk.expect(stale <= {old["bob"]}, f"bob got available presence of sessions that are not online: {stale}")

    t2 = time.monotonic()
    cl[2].start(wait=False)
    cl[2].wait_ready()
    wait_serving(cl[2], probe_jid, probe_pw)
    t_serving = time.monotonic()
    cl.figure("restart_all_third_serving_s", t_serving - t2, "s")
    chk.run("all three members healthy with a leader", cl.wait_members, [1, 2, 3], SERVE_MAX)

    # Every account logs in on every node with its password; its roster is the one of before
    # the kill (items, subscription states, ask, name, groups, version). No presence is sent,
    # so nothing is delivered to these sessions.
    for u in (alice.bare, bob.bare, carol.bare, dave_jid):
        for i in (1, 2, 3):
            c = chk.run(f"{u} logs in on node {i} after the restart", cl[i].login_eventually, u, pw[u],
                        timeout=10, resource=f"chk{i}")
            if c is None:
                continue
            clients.add(c[0])
            got = chk.run(f"roster of {u} on node {i}", roster_snapshot, c[0])
            chk.expect(got == snap[u], f"roster of {u} on node {i} after the restart: {got}; before: {snap[u]}")
            c[0].close()
    chk.expect(cl[1].login_refusal(alice.bare, "wrong-" + alice.password) == "not-authorized",
               "a wrong password is refused after the restart")

    # carol logs in on node 2: she sees bob (logged in on node 1 before node 2 came back) and
    # bob sees her; nobody else is online.
    carol_n, _ = cl[2].login_eventually(carol.bare, carol.password, timeout=10, resource="c-new",
                                        presence=True)
    clients.add(carol_n)
    online.add(carol_n.jid)
    chk.run("carol (node 2) gets bob's presence (probe)", recv_presence, carol_n, bob_n.jid, None, 5)
    chk.run("bob (node 1) gets carol's presence", recv_presence, bob_n, carol_n.jid, None, 5)
    got = presences(bob_n, QUIET) + presences(carol_n, QUIET)
    chk.expect(not available_not_online(got, online),
               f"available presence of a session that is not online (stale route / registry entry): "
               f"{available_not_online(got, online)}")

    # -- stale routes: stanzas to the full JIDs of sessions that existed before the kill.
    for sender in (bob_n, carol_n):
        for who in ("alice", "alice2", "carol"):
            expect_service_unavailable(chk, sender, old[who], f"old session {who} ({old[who]})")
    # alice is not online: a chat to an old full JID of hers and one to her bare JID go to
    # offline storage (8.5.3.2.1 chat, 8.5.2.2.1).
    to_alice_full = bob_n.message(old["alice2"], "to alice's old full JID")
    to_alice_bare = carol_n.message(alice.bare, "to alice's bare JID")
    # carol is online as c-new (priority 0): a chat to her old full JID goes to c-new
    # (8.5.3.2.1: "If there is one available resource with a non-negative presence priority
    # then the server MUST deliver the message to that resource"); a normal message is not
    # delivered to another resource (silently dropped or <service-unavailable/>).
    mid = bob_n.message(old["carol"], "chat to carol's old full JID")
    chk.run("chat to carol's old full JID delivered to her new resource",
            carol_n.recv_stanza, "message", id=mid, timeout=5)
    nid = bob_n.message(old["carol"], "normal to carol's old full JID", type_="normal")
    chk.run("normal message to carol's old full JID not delivered to her new resource", carol_n.expect_nothing,
            lambda e: e.tag == C("message") and e.get("id") == nid, QUIET, "a normal message to another resource")
    pong = chk.run("bob's session answers a ping", bob_n.ping_server, 5)
    chk.expect(pong is not None and pong.get("type") == "result", f"bob's ping: {pong}")
    for e in [e for e in bob_n.queue if e.tag == C("message") and e.get("id") == nid]:
        chk.expect(error_condition(e) == "service-unavailable", f"error for the normal message: {tostring(e)}")

    # alice logs in on node 3: the two messages, once, with <delay/>; presence of bob and
    # carol (her contacts that are online), of no old session.
    alice_n, _ = cl[3].login_eventually(alice.bare, alice.password, timeout=10, resource="a-new",
                                        presence=True)
    clients.add(alice_n)
    online.add(alice_n.jid)
    got = chk.run("alice gets the messages sent while she was offline",
                  recv_ids, alice_n, [to_alice_full, to_alice_bare], 10, "offline messages to alice")
    if got:
        chk.expect(all(has_delay(m) for m in got), f"offline messages without <delay/>: "
                                                    f"{[tostring(m)[:300] for m in got]}")
        dup = duplicates(alice_n, [to_alice_full, to_alice_bare])
        chk.expect(not dup, f"offline messages delivered twice: {[tostring(m)[:200] for m in dup]}")
    for who in (bob_n, carol_n):
        chk.run(f"alice gets {who.jid}'s presence", recv_presence, alice_n, who.jid, None, 5)
    chk.run("bob gets alice's new presence", recv_presence, bob_n, alice_n.jid, None, 5)
    got = presences(alice_n, QUIET)
    chk.expect(not available_not_online(got, online),
               f"alice got available presence of a session that is not online: {available_not_online(got, online)}")

    # dave logs in on node 2: the three messages stored before the kill, in order, once,
    # and carol's pending subscription request; then again on node 1: nothing.
    dave, _ = cl[2].login_eventually(dave_jid, dave_pw, timeout=10, resource="d", presence=True)
    clients.add(dave)
    got = chk.run("dave gets the messages stored before the kill", recv_ids, dave, offline_ids, 10,
                  "offline messages to dave")
    if got:
        chk.expect([m.get("id") for m in got] == offline_ids, f"offline messages reordered: "
                                                                f"{[m.get('id') for m in got]} != {offline_ids}")
        chk.expect(all(has_delay(m) for m in got), "offline messages without <delay/>")
        dup = duplicates(dave, offline_ids)
        chk.expect(not dup, f"offline messages delivered twice: {[tostring(m)[:200] for m in dup]}")
    chk.run("dave gets carol's pending subscription request", recv_presence, dave, carol.bare, "subscribe",
            5, True)
    dave.close()
    dave2, _ = cl[1].login_eventually(dave_jid, dave_pw, timeout=10, resource="d2", presence=True)
    clients.add(dave2)
    chk.run("dave's next session gets no stored message again", dave2.expect_nothing,
            lambda e: e.tag == C("message") and e.findtext(C("body")) is not None, QUIET, "message")
    dave2.close()

    # alice's second resource (node 1, priority -1): her own other resource a-new is
    # announced to it (RFC 6121 4.3.2 probe of own resources), her old ones are not, and
    # the offline messages are not delivered again.
    alice_2, _ = cl[1].login_eventually(alice.bare, alice.password, timeout=10, resource="a-two",
                                        presence=True, priority=-1)
    clients.add(alice_2)
    online.add(alice_2.jid)
    chk.run("alice's second resource gets a-new's presence", recv_presence, alice_2, alice_n.jid, None, 5)
    got = presences(alice_2, QUIET)
    chk.expect(not available_not_online(got, online),
               f"alice/a-two got available presence of a session that is not online: "
               f"{available_not_online(got, online)}")
    chk.expect(not duplicates(alice_2, [to_alice_full, to_alice_bare], 0.1),
               "offline messages delivered again to alice's second session")

    # Chat across nodes, once the sessions are older than a lease: whatever clean-up of the
    # sessions of before the kill is still to come must not touch these.
    rest = t_serving + 2 * LEASE_TTL + 1 - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    chat_both_ways(chk, alice_n, bob_n, "alice(node 3)/bob(node 1)")
    chat_both_ways(chk, bob_n, carol_n, "bob(node 1)/carol(node 2)")
    for c in (alice_n, alice_2, bob_n, carol_n):
        chk.expect(not c.closed and c.stream_error is None, f"{c.jid}'s session ended ({c.stream_error})")
    chk.done()


def test_no_presence_of_a_node_still_down_after_full_restart(cluster, clients):
    """All three nodes killed, two restarted: nobody is online, so a user logging in gets no
    available presence at all, in particular none of a session of the node still down
    (RFC 6121 4.3.2: a probe is answered with the presence of available resources only)."""
    cl = cluster
    alice = clients.add(online_on(cl[1], "al", resource="a1"))
    bob = clients.add(online_on(cl[2], "bo", resource="b2"))
    make_mutual(alice, bob)
    probe_jid, _, probe_pw = cl[1].new_user("zz")
    for i in (1, 2, 3):
        cl.kill9(i)
    shutdown_all(alice, bob)
    for i in (1, 3):
        cl[i].start(wait=False)
    for i in (1, 3):
        cl[i].wait_ready()
        wait_serving(cl[i], probe_jid, probe_pw)
    a, _ = cl[3].login_eventually(alice.bare, alice.password, timeout=10, resource="a-new", presence=True)
    clients.add(a)
    b, _ = cl[1].login_eventually(bob.bare, bob.password, timeout=10, resource="b-new", presence=True)
    clients.add(b)
    recv_presence(a, b.jid, None, timeout=5)      # control: presence does flow
    online = {a.jid, b.jid}
    stale = available_not_online(presences(a, QUIET) + presences(b, QUIET), online)
    assert not stale, f"available presence of sessions that are not online (node 2 is down): {stale}"


# ------------------------------------------------------------------ 2. a majority restarted

@pytest.mark.parametrize("survivor_role", ["leader", "follower"])
def test_majority_restarted_while_one_node_survives(cluster, clients, survivor_role):
    cl = cluster
    chk = Checks()
    leader = cl.leader()
    s = leader if survivor_role == "leader" else next(i for i in (1, 2, 3) if i != leader)
    k1, k2 = [i for i in (1, 2, 3) if i != s]

    a = clients.add(online_on(cl[s], "sa", resource="a"))     # stays connected throughout
    b = clients.add(online_on(cl[k1], "sb", resource="b"))    # dies with node k1
    c0 = clients.add(online_on(cl[k2], "sc", resource="c"))   # offline at the kill, back later
    make_mutual(a, b)
    make_mutual(a, c0)
    c_jid, c_pw = c0.bare, c0.password
    c0.close()
    recv_presence(a, c0.jid, "unavailable", timeout=5)
    d_jid, _, d_pw = cl[s].new_user("sd")                     # subscribes to a after the restart
    probe_jid, _, probe_pw = cl[s].new_user("zz")
    a.drain(0.3)

    t_kill = time.monotonic()
    cl.kill9(k1)
    cl.kill9(k2)
    shutdown_all(b)
    # The survivor has no quorum. Wait until it notices (it refuses logins once its lease has
    # run out; not asserted: how a minority node answers is not what this test is about).
    refused, deadline = None, time.monotonic() + 3 * LEASE_TTL
    while time.monotonic() < deadline:
        refused = cl[s].login_refusal(probe_jid, probe_pw, timeout=3)
        if refused is not None:
            break
        time.sleep(0.25)
    cl.figure(f"majority_down_{survivor_role}_login_refused_after_s",
              time.monotonic() - t_kill if refused else -1, "s", refusal=refused)
    # a's session is still there and answers.
    pong = chk.run("a's session answers a ping while the survivor has no quorum", a.ping_server, 5)
    chk.expect(pong is not None and pong.get("type") == "result", f"ping during the outage: {pong}")

    t0 = time.monotonic()
    for i in (k2, k1):
        cl[i].start(wait=False)
    for i in (k2, k1):
        cl[i].wait_ready()
    for i in (s, k1, k2):
        wait_serving(cl[i], probe_jid, probe_pw)
    cl.figure(f"majority_restart_{survivor_role}_serving_s", time.monotonic() - t0, "s")

    # b's session of before the kill is gone: a is told, an IQ to it is answered by the server.
    chk.run("a gets b's unavailable presence", recv_presence, a, b.jid, "unavailable", NOTIFY_MAX)

    # c logs in on a restarted node: she sees a (probe), a sees her, her messages reach a.
    c, _ = cl[k1].login_eventually(c_jid, c_pw, timeout=10, resource="c-new", presence=True)
    clients.add(c)
    chk.run(f"c (node {k1}) gets a's presence (probe)", recv_presence, c, a.jid, None, 5)
    chk.run(f"a (node {s}) gets c's presence", recv_presence, a, c.jid, None, 5)
    chat_one_way(chk, c, a, f"c(node {k1}) -> a(node {s})")
    expect_service_unavailable(chk, c, b.jid, "b's session of before the kill")

    # The other way: how long until the survivor's stanzas reach the restarted node (it
    # should be at once: test_survivor_reaches_restarted_node_at_once), then messages.
    took = chk.run(f"node {s} reaches node {k1} again", wait_reachable, a, c, 2 * LEASE_TTL)
    if took is not None:
        cl.figure(f"majority_restart_{survivor_role}_survivor_reaches_restarted_s", took, "s")
        chat_one_way(chk, a, c, f"a(node {s}) -> c(node {k1})")

    # d, on the other restarted node, subscribes to a; a approves; d gets a's presence
    # (RFC 6121 3.1.5: the contact's server sends the contact's available presence).
    d, _ = cl[k2].login_eventually(d_jid, d_pw, timeout=10, resource="d", presence=True)
    clients.add(d)
    chk.run(f"node {s} reaches node {k2} again", wait_reachable, a, d, 2 * LEASE_TTL)
    d.presence(to=a.bare, type_="subscribe")
    if chk.run("a gets d's subscription request", recv_presence, a, d_jid, "subscribe", 5, True) is not None:
        a.presence(to=d_jid, type_="subscribed")
        chk.run("d's roster: subscription to a", recv_push_until, d, a.bare, subscription="to")
        chk.run(f"d (node {k2}) gets a's presence after the approval", recv_presence, d, a.jid, None, 5)
        chat_both_ways(chk, a, d, f"a(node {s})/d(node {k2})")

    # a changes its presence: its contacts on both restarted nodes see it.
    a.presence(status="still here")
    update = lambda e: (e.tag == C("presence") and e.get("from") == a.jid  # noqa: E731
                        and e.findtext(C("status")) == "still here")
    for w in (c, d):
        p = chk.run(f"{w.jid} gets a's presence update", w.recv, update, 5, "a's presence update")
        chk.expect(p is None or p.get("type") is None, "a's update is available presence")

    pong = chk.run("a's session answers a ping at the end", a.ping_server, 5)
    chk.expect(pong is not None and pong.get("type") == "result", f"ping at the end: {pong}")
    chk.expect(not a.closed and a.stream_error is None,
               f"a's session (on the surviving node {s}) was ended: stream error {a.stream_error}")
    chk.done()


def test_survivor_reaches_restarted_node_at_once(cluster, clients):
    """Two nodes down for a few seconds and restarted; c logs in on one of them and a, on the
    survivor, sees c available. A chat a sends to c's full JID right then must be delivered
    to c (RFC 6121 8.5.3.1), not stored offline; an IQ to it must reach c."""
    cl = cluster
    chk = Checks()
    s = cl.leader()
    k1, k2 = [i for i in (1, 2, 3) if i != s]
    a = clients.add(online_on(cl[s], "sa", resource="a"))
    c0 = clients.add(online_on(cl[k1], "sc", resource="c"))
    make_mutual(a, c0)                # node s has sent stanzas to node k1 before
    c0.close()
    recv_presence(a, c0.jid, "unavailable", timeout=5)
    probe_jid, _, probe_pw = cl[s].new_user("zz")
    t_kill = time.monotonic()
    cl.kill9(k1)
    cl.kill9(k2)
    # An outage of a few seconds, as a real restart takes: until the survivor notices.
    deadline = t_kill + 3 * LEASE_TTL
    while cl[s].login_refusal(probe_jid, probe_pw, timeout=3) is None and time.monotonic() < deadline:
        time.sleep(0.25)
    for i in (k2, k1):
        cl[i].start(wait=False)
    for i in (k2, k1):
        cl[i].wait_ready()
    for i in (s, k1, k2):
        wait_serving(cl[i], probe_jid, probe_pw)
    c, _ = cl[k1].login_eventually(c0.bare, c0.password, timeout=10, resource="c-new", presence=True)
    clients.add(c)
    recv_presence(a, c.jid, None, timeout=5)      # a sees c available
    mid = a.message(c.jid, "right after you came back")
    assert a.ping_server().get("type") == "result"
    iid = new_id("iq")
    a.send_raw(f"<iq type='get' id='{iid}' to='{c.jid}'><x xmlns='{UNKNOWN}'/></iq>")
    got_iq = chk.run(f"IQ from a (node {s}) reaches c (node {k1})", c.recv,
                     lambda e: e.tag == C("iq") and e.get("id") == iid, 5, "IQ from a")
    if got_iq is None:
        r = iq_reply(a, iid, timeout=1)
        chk.expect(False, f"the IQ was answered by the server instead: {r is not None and tostring(r)}")
    try:
        c.recv_stanza("message", id=mid, timeout=5)
    except XMPPTimeout:
        c.close()
        c2, _ = cl[k2].login_eventually(c0.bare, c0.password, timeout=10, resource="c-again", presence=True)
        clients.add(c2)
        later = [m for m in c2.drain(1.5) if m.tag == C("message") and m.get("id") == mid]
        chk.expect(False, f"chat from a (node {s}) to the available {c.jid} (node {k1}) not delivered to it; "
                          + (f"it was stored offline instead: {tostring(later[0])[:300]}" if later
                             else "nor stored offline (lost)"))
    chk.done()


# ------------------------------------------------------------------ 3. one node, at once

@pytest.mark.parametrize("role", ["leader", "follower"])
def test_one_node_kill9_restarted_at_once(cluster, clients, role):
    cl = cluster
    chk = Checks()
    leader = cl.leader()
    k = leader if role == "leader" else next(i for i in (1, 2, 3) if i != leader)
    s1, s2 = [i for i in (1, 2, 3) if i != k]

    w1 = clients.add(online_on(cl[s1], "w1", resource="w"))
    w2 = clients.add(online_on(cl[s2], "w2", resource="w"))
    v1 = clients.add(online_on(cl[k], "v1", resource="v"))    # reconnects at once, same resource
    v2 = clients.add(online_on(cl[k], "v2", resource="v"))    # stays away
    make_mutual(w1, v1)
    make_mutual(w1, v2)
    make_mutual(w2, v2)
    x1 = clients.add(online_on(cl[s1], "x1", resource="x"))   # no contacts: sends the probes
    for c in (w1, w2):
        c.drain(0.3)

    t_kill = cl.kill9(k)
    shutdown_all(v1, v2)
    cl[k].start(wait=False)
    cl[k].wait_ready()
    # v1's client reconnects at once to the same node with the same resource.
    v1n, _ = cl[k].login_eventually(v1.bare, v1.password, timeout=SERVE_MAX, resource="v", presence=True)
    clients.add(v1n)
    cl.figure(f"restart_at_once_{role}_relogin_s", time.monotonic() - t_kill, "s")

    # v2's session is gone: its contacts on both other nodes are told.
    notified = t_kill + NOTIFY_MAX
    for w in (w1, w2):
        p = chk.run(f"{w.jid} gets v2's unavailable presence", recv_presence, w, v2.jid, "unavailable",
                    max(0.1, t_kill + NOTIFY_MAX - time.monotonic()))
        if p is not None:
            notified = time.monotonic()
            cl.figure(f"restart_at_once_{role}_contact_notified_s", notified - t_kill, "s")
    # An IQ to v2's old full JID, from another node and from the restarted node itself.
    x3 = clients.add(online_on(cl[k], "x3", resource="x"))
    for sender in (x1, x3):
        expect_service_unavailable(chk, sender, v2.jid, "v2's session of before the kill")
    # A chat to it goes to offline storage: v2 gets it once, at its next login (on s2).
    mid = x1.message(v2.jid, "to v2's old session")
    assert x1.ping_server().get("type") == "result"

    # Once the old sessions' clean-up has happened (v2's contacts were told; at least a
    # lease TTL after the kill): v1's new session, with the same full JID as its old one, is
    # still there, seen available, reachable.
    rest = max(notified + 1, t_kill + LEASE_TTL + 2) - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    seen = [p for p in presences(w1, 0.1) if p.get("from") == v1.jid]
    chk.expect(seen and seen[-1].get("type") is None,
               f"w1's last presence of {v1.jid} (reconnected at once) is not available: "
               f"{[tostring(p)[:200] for p in seen]}")
    chk.expect(not v1n.closed and v1n.stream_error is None, f"v1's new session ended ({v1n.stream_error})")
    chat_both_ways(chk, w1, v1n, f"w1(node {s1})/v1(node {k})")
    # An IQ from node s2 to v1's full JID reaches the new session, and its answer comes back.
    iid = new_id("iq")
    w2.send_raw(f"<iq type='get' id='{iid}' to='{v1n.jid}'><x xmlns='{UNKNOWN}'/></iq>")
    got = chk.run("IQ from w2 delivered to v1's new session", v1n.recv,
                  lambda e: e.tag == C("iq") and e.get("id") == iid, 5, "IQ from w2")
    if got is not None:
        chk.expect(got.get("from") == w2.jid, f"IQ from w2: {tostring(got)}")
        v1n.send_raw(f"<iq type='result' id='{iid}' to='{w2.jid}'/>")
        r = iq_reply(w2, iid)
        chk.expect(r is not None and r.get("type") == "result" and r.get("from") == v1n.jid,
                   f"v1's answer to w2: {'none within 5 s' if r is None else tostring(r)}")

    v2n, _ = cl[s2].login_eventually(v2.bare, v2.password, timeout=10, resource="v2-new", presence=True)
    clients.add(v2n)
    got = chk.run("v2 gets the chat sent to its old session", recv_ids, v2n, [mid], 10, "offline chat")
    if got:
        chk.expect(has_delay(got[0]), "offline message without <delay/>")
        chk.expect(not duplicates(v2n, [mid]), "offline message delivered twice")
    chk.done()
