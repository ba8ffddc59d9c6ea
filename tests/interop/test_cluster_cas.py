"""Issue 8, item 3: per-user durable writes are compare-and-set across the cluster.

One user's roster is changed at the same time through two nodes (roster sets from a
resource on node 1 and one on node 2, pipelined) while contacts on node 3 approve the
user's subscription requests (each approval rewrites the user's roster item on node 3).
With read-modify-write guarded only inside one process, two nodes read the same roster
version and one update (or one version number) is lost. Here every change must be in
the final roster, the pushes must carry one gap-free sequence of versions, and every
interested resource must receive a push for every version.
"""

import threading
import time

import pytest

from cluster import online_on, relogin, shared_cluster  # noqa: F401 (fixture)
from im import RQ, is_push, recv_push_until, roster_get, roster_items
from rawxmpp import C, NS_ROSTER, XMPPTimeout, tostring

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(240)]

SETS_PER_NODE = 100
CONTACTS = 20


def _pipelined_sets(c, prefix, n, results):
    """Sends n roster sets without waiting, then collects their answers."""
    ids = []
    for k in range(n):
        iid = f"{prefix}-set-{k}"
        ids.append(iid)
        c.send_raw(f"<iq type='set' id='{iid}'><query xmlns='{NS_ROSTER}'>"
                   f"<item jid='{prefix}{k}@localhost' name='{prefix} {k}'><group>g{k % 5}</group>"
                   f"</item></query></iq>")
    for iid in ids:
        r = c.recv(lambda e, iid=iid: e.tag == C("iq") and e.get("id") == iid, timeout=60,
                   what=f"answer to {iid}")
        results.append((iid, r.get("type"), tostring(r)[:300]))


def _push_versions(c, expected: int, timeout: float = 30):
    """Reads roster pushes until `expected` distinct versions were seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while len(set(seen)) < expected and time.monotonic() < deadline:
        try:
            e = c.recv(lambda e: is_push(e), timeout=max(0.1, deadline - time.monotonic()),
                       what="roster push")
        except XMPPTimeout:
            break
        c.send_raw(f"<iq type='result' id='{e.get('id')}'/>")
        seen.append(int(e.find(RQ).get("ver")))
    return seen


def test_concurrent_roster_changes_through_three_nodes_lose_nothing(shared_cluster, clients):
    cl = shared_cluster
    u1 = clients.add(online_on(cl[1], "cas", presence=False))
    u2 = clients.add(relogin(cl[2], u1, resource="two", presence=False))
    v0 = int(roster_get(u1).find(RQ).get("ver"))
    roster_get(u2)  # both resources are interested (RFC 6121 2.1.6)

    # Contacts on node 3, each asked by the user for a subscription (ask='subscribe').
    contacts = []
    for i in range(CONTACTS):
        c = clients.add(online_on(cl[3], f"cas{i}_"))
        u1.send_raw(f"<presence to='{c.bare}' type='subscribe'/>")
        contacts.append(c)
    for c in contacts:
        c.recv(lambda e, u=u1.bare: e.tag == C("presence") and e.get("type") == "subscribe"
               and (e.get("from") or "").split("/")[0] == u, what="subscribe request")
    for c in contacts:
        recv_push_until(u1, c.bare, ask="subscribe")
    v1 = int(roster_get(u1, ver="none").find(RQ).get("ver"))
    assert v1 == v0 + CONTACTS, f"{CONTACTS} subscription requests made {v1 - v0} roster versions"
    u1.drain(0.5)
    u2.drain(0.5)

    # Now, at once: 100 sets through node 1, 100 through node 2, 20 approvals on node 3.
    results = []
    threads = [
        threading.Thread(target=_pipelined_sets, args=(u1, "one", SETS_PER_NODE, results)),
        threading.Thread(target=_pipelined_sets, args=(u2, "two", SETS_PER_NODE, results)),
    ]
    for t in threads:
        t.start()
    for c in contacts:
        c.send_raw(f"<presence to='{u1.bare}' type='subscribed'/>")
    for t in threads:
        t.join(120)
    assert len(results) == 2 * SETS_PER_NODE, f"only {len(results)} answers"
    failed = [r for r in results if r[1] != "result"]
    assert not failed, f"{len(failed)} roster sets failed, e.g. {failed[:3]}"

    changes = 2 * SETS_PER_NODE + CONTACTS
    vers1 = _push_versions(u1, changes)
    vers2 = _push_versions(u2, changes)
    want = set(range(v1 + 1, v1 + changes + 1))
    for name, vers in (("node 1", vers1), ("node 2", vers2)):
        dup = len(vers) - len(set(vers))
        assert dup == 0, f"{name}: {dup} roster versions pushed twice (two changes got one version)"
        missing = sorted(want - set(vers))
        assert not missing, f"{name}: no push for {len(missing)} versions, e.g. {missing[:5]}"
        extra = sorted(set(vers) - want)
        assert not extra, f"{name}: pushes outside the sequence: {extra[:5]}"

    # Every change is in the roster, read on the third node.
    u3 = clients.add(relogin(cl[3], u1, resource="three", presence=False))
    r = roster_get(u3)
    assert int(r.find(RQ).get("ver")) == v1 + changes
    items = roster_items(r)
    for prefix in ("one", "two"):
        for k in range(SETS_PER_NODE):
            it = items.get(f"{prefix}{k}@localhost")
            assert it is not None, f"{prefix}{k} lost"
            assert it.get("name") == f"{prefix} {k}"
    for c in contacts:
        it = items.get(c.bare)
        assert it is not None and it.get("subscription") == "to" and it.get("ask") is None, \
            f"approval by {c.bare} lost: {None if it is None else dict(it.attrib)}"
    assert len(items) == 2 * SETS_PER_NODE + CONTACTS
