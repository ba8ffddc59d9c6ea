"""RFC 6121 §8.5.2.2 / XEP-0160 offline storage under races: a message that arrives while
its recipient logs in is delivered exactly once, at once, whatever the order in which the
server handles it and the login's initial presence; several resources logging in at once
(on one node, on different nodes) share the stored messages without a duplicate.

The race: the router finds no available resource and stores the message (a Raft write)
while the recipient's session, just made available, reads the offline store before that
write applied; without a fix the message waits until the user's next login. Each round
sends the message and the initial presence back to back (the message first, 0-3 ms
apart) and counts what the recipient gets: every message must arrive within DELIVERY
seconds of its round's login, and exactly once over the whole test (a last login collects
any message that stayed stored).
"""

import collections
import time
import uuid

import pytest

from cluster import shared_cluster  # noqa: F401 (fixture)
from rawxmpp import C, XMPPTimeout

pytestmark = [pytest.mark.starling_only, pytest.mark.timeout(240)]

ROUNDS = 30
# Seconds between the message and the initial presence, per round in turn.
GAPS = (0.0, 0.0, 0.001, 0.003)
# A message must reach the recipient within this long after its round's presence.
DELIVERY = 3.0
# How long a round waits for a second copy after the first.
DUPLICATE_WAIT = 0.3
ROSTER_GET = "<query xmlns='jabber:iq:roster'/>"


class Tally:
    """Every copy of the test's messages that reached any session of the recipient."""

    def __init__(self):
        self.copies = collections.Counter()
        self.late = []  # (message id, round it arrived in) for arrivals in a later round
        self.mids = {}  # message id -> round it was sent in

    def sent(self, mid, rnd):
        self.mids[mid] = rnd

    def take(self, elements, rnd):
        for el in elements:
            mid = el.get("id")
            if el.tag == C("message") and mid in self.mids:
                self.copies[mid] += 1
                if self.mids[mid] != rnd:
                    self.late.append((mid, rnd))

    def report(self):
        missing = [m for m in self.mids if self.copies[m] == 0]
        dups = {m: n for m, n in self.copies.items() if n > 1}
        return missing, dups


def until(client, mid, timeout):
    """Everything `client` receives until the message `mid` (included), for up to
    `timeout` seconds; then whatever else comes within DUPLICATE_WAIT."""
    out = []
    deadline = time.monotonic() + timeout
    found = False
    while not found and time.monotonic() < deadline:
        try:
            el = client.recv(timeout=max(0.01, deadline - time.monotonic()))
        except XMPPTimeout:
            break
        out.append(el)
        found = el.tag == C("message") and el.get("id") == mid
    out.extend(client.drain(DUPLICATE_WAIT))
    return found, out


def login_bound(node, jid, pw, resource, first=False):
    """Bound and interested (roster fetched, as a client does), not yet available."""
    if first and hasattr(node, "login_eventually"):
        c, _ = node.login_eventually(jid, pw, resource=resource)
    else:
        c = node.login(jid, pw, resource=resource)
    c.iq("get", ROSTER_GET)
    return c


def collect_leftovers(node, jid, pw, tally, rnd):
    """A last login: what stayed stored arrives now (too late)."""
    c = node.login(jid, pw, resource="last")
    c.presence()
    tally.take(c.drain(1.0), rnd)
    c.close()


def race_rounds(sender, node, jid, pw, rounds=ROUNDS):
    """Rounds of a message sent at the moment of the recipient's initial presence;
    returns (rounds whose message did not arrive in time, tally)."""
    tally = Tally()
    slow = []
    for i in range(rounds):
        u = login_bound(node, jid, pw, f"r{i}", first=i == 0)
        mid = f"race{i}-{uuid.uuid4().hex[:8]}"
        tally.sent(mid, i)
        gap = GAPS[i % len(GAPS)]
        sender.message(jid, f"round {i}", mid=mid)
        if gap:
            time.sleep(gap)
        u.presence()
        found, got = until(u, mid, DELIVERY)
        tally.take(got, i)
        if not found:
            slow.append(i)
        u.close()
    collect_leftovers(node, jid, pw, tally, rounds)
    return slow, tally


def check(slow, tally, what):
    missing, dups = tally.report()
    print(f"FIGURE: {what}_rounds={len(tally.mids)} late={len(slow)} "
          f"missing={len(missing)} duplicated={len(dups)}")
    assert not slow and not missing and not dups, (
        f"{what}: of {len(tally.mids)} messages sent at the moment of the recipient's initial "
        f"presence, {len(slow)} did not arrive within {DELIVERY} s (rounds {slow}), "
        f"{len(missing)} never arrived, {len(dups)} arrived more than once ({dups}); "
        f"arrived in a later round: {tally.late}")


def two_resources_rounds(sender, node_a, node_b, jid, pw, rounds):
    """Rounds of two resources (priority 1 on `node_a`, 0 on `node_b`) sending initial
    presence at once, with two messages stored before and one sent at that moment: each
    message reaches exactly one of them, within DELIVERY seconds."""
    tally = Tally()
    slow = []
    for i in range(rounds):
        before = [f"stored{i}.{k}-{uuid.uuid4().hex[:8]}" for k in range(2)]
        for k, mid in enumerate(before):
            tally.sent(mid, i)
            sender.message(jid, f"stored {i}.{k}", mid=mid)
        # Stored once the sender's session handled them (it handles stanzas in order).
        sender.ping_server()
        a = login_bound(node_a, jid, pw, f"a{i}", first=i == 0)
        b = login_bound(node_b, jid, pw, f"b{i}", first=i == 0)
        mid = f"race{i}-{uuid.uuid4().hex[:8]}"
        tally.sent(mid, i)
        sender.message(jid, f"round {i}", mid=mid)
        a.send_raw("<presence><priority>1</priority></presence>")
        b.presence()
        wanted = set(before) | {mid}
        got = []
        deadline = time.monotonic() + DELIVERY
        while time.monotonic() < deadline:
            for c in (a, b):
                got.extend(c.drain(0.05))
            if wanted <= {e.get("id") for e in got}:
                break
        for c in (a, b):
            got.extend(c.drain(DUPLICATE_WAIT))
        tally.take(got, i)
        if not wanted <= {e.get("id") for e in got}:
            slow.append(i)
        a.close()
        b.close()
    collect_leftovers(node_a, jid, pw, tally, rounds)
    return slow, tally


# ------------------------------------------------------------------ one node

def test_message_at_initial_presence_delivered_once_one_node(server, clients):
    sender = clients.add(server.online("ors"))
    jid, _, pw = server.new_user("orr")
    slow, tally = race_rounds(sender, server, jid, pw)
    check(slow, tally, "offline_race_one_node")
    server.assert_healthy(sender)


def test_two_resources_share_stored_messages_one_node(server, clients):
    sender = clients.add(server.online("ors"))
    jid, _, pw = server.new_user("orr")
    slow, tally = two_resources_rounds(sender, server, server, jid, pw, rounds=15)
    check(slow, tally, "offline_two_resources_one_node")
    server.assert_healthy(sender)


# ------------------------------------------------------------------ cluster

@pytest.mark.cluster
@pytest.mark.parametrize("where", ["another node", "the sender's node"])
def test_message_at_initial_presence_delivered_once_in_a_cluster(shared_cluster, clients, where):
    cl = shared_cluster
    sender = clients.add(cl[1].online("ors"))
    jid, _, pw = cl[1].new_user("orr")
    node = cl[2] if where == "another node" else cl[1]
    slow, tally = race_rounds(sender, node, jid, pw)
    check(slow, tally, "offline_race_" + ("two_nodes" if where == "another node" else "cluster_one_node"))
    node.assert_healthy(sender)


@pytest.mark.cluster
def test_two_resources_on_two_nodes_share_stored_messages(shared_cluster, clients):
    cl = shared_cluster
    sender = clients.add(cl[1].online("ors"))
    jid, _, pw = cl[1].new_user("orr")
    slow, tally = two_resources_rounds(sender, cl[2], cl[3], jid, pw, rounds=15)
    check(slow, tally, "offline_two_resources_two_nodes")
    cl[3].assert_healthy()
