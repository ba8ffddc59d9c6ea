"""Issue 4: a partitioned minority refuses writes; the majority keeps serving.

Three nodes, each in a network namespace of its own, joined through a bridge in a
namespace of the test (cluster.Netns; the host's interfaces are not touched). One
node (the leader, or a follower) is cut off by setting its veth down. Its clients
still reach it (they connect from inside its namespace), so the test can see:

* within the lease TTL the cut node turns unhealthy and refuses logins with SASL
  <temporary-auth-failure/>, and an account write through it fails (within WRITE_MAX s);
* the two others (a majority) keep a leader, accept logins, new accounts and messages;
* after healing, the cut node accepts logins again and has caught up (an account made
  during the cut logs in on it).

Needs root (``ip netns``); fails with a clear message otherwise.
"""

import subprocess
import threading
import time

import pytest

from cluster import LEASE_TTL, Checks, Cluster, online_on
from rawxmpp import C

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(150)]

REFUSE_MAX = LEASE_TTL + 3.0   # unhealthy within the TTL after its last committed renewal
RECOVER_MAX = 15.0
WRITE_MAX = 45                 # a write through the cut node must fail (not hang) within this


@pytest.fixture
def netns_cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("nscluster")), 3, netns=True)
    yield c
    c.stop()  # stops the nodes by PID, then deletes the namespaces


def _same_node_message(chk, node, what):
    a = chk.run(f"login on node {node.node_id} ({what})", online_on, node, "ma")
    b = chk.run(f"login on node {node.node_id} ({what})", online_on, node, "mb")
    if not (a and b):
        return
    try:
        mid = a.message(b.jid, what)
        m = chk.run(f"message on node {node.node_id} ({what})", b.recv_stanza, "message", id=mid)
        chk.expect(m is None or m.findtext(C("body")) == what, "message body")
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_partitioned_minority_refuses_logins_and_writes(netns_cluster, clients, role):
    cl = netns_cluster
    chk = Checks()
    fig = lambda name, v, unit="", **kw: cl.figure(f"partition_{role}_{name}", v, unit, **kw)  # noqa: E731
    st0 = cl.status()
    leader = st0["leader"]
    k = leader if role == "leader" else next(i for i in sorted(cl.nodes) if i != leader)
    m1, m2 = [i for i in sorted(cl.nodes) if i != k]
    ujid, _, upw = cl[m1].new_user("cut")
    cl[k].login_eventually(ujid, upw, timeout=10)[0].close()  # replicated to k before the cut

    t_cut = time.monotonic()
    cl.netns.cut(k)
    # The majority's leader (a new one when the leader was cut), watched from node m1.
    majority_leader = {}

    def watch_leader():
        try:
            majority_leader["id"], _ = cl.wait_leader((k,), 3 * LEASE_TTL, m1)
            majority_leader["at"] = time.monotonic()
        except AssertionError as e:
            majority_leader["error"] = str(e)
    leader_watch = threading.Thread(target=watch_leader, daemon=True)
    leader_watch.start()

    # A write through the cut node fails (the CLI waits for the store's write timeout).
    minority_write = {}

    def write_on_minority():
        t = time.monotonic()
        try:
            r = cl[k].cli("user", "add", f"minority{int(t * 1000) % 10**8}@{cl.domain}", "pw-minority",
                          check=False, timeout=WRITE_MAX)
            minority_write.update(rc=r.returncode, out=(r.stdout + r.stderr).strip()[-500:])
        except subprocess.TimeoutExpired:
            minority_write.update(rc=None, out=f"no answer within {WRITE_MAX}s")
        minority_write["took"] = time.monotonic() - t
    writer = threading.Thread(target=write_on_minority, daemon=True)
    writer.start()

    # The cut node refuses logins with temporary-auth-failure within the TTL.
    refused_at, last = None, None
    while time.monotonic() < t_cut + REFUSE_MAX + 5:
        # a short read timeout: a login that passes SASL just before the node turns
        # unhealthy can wait long in bind (its route write cannot commit)
        last = cl[k].login_refusal(ujid, upw, timeout=2)
        if last == "temporary-auth-failure":
            refused_at = time.monotonic()
            break
        time.sleep(0.25)
    if chk.expect(refused_at is not None,
                  f"node {k} cut off: no <temporary-auth-failure/> within {REFUSE_MAX + 5:.0f}s "
                  f"(last login attempt: {last or 'succeeded'})"):
        fig("cut_to_refusing_logins_s", refused_at - t_cut, "s")
        chk.expect(refused_at - t_cut <= REFUSE_MAX,
                   f"refusing logins only {refused_at - t_cut:.1f}s after the cut (> {REFUSE_MAX}s)")
        time.sleep(0.5)
        again = cl[k].login_refusal(ujid, upw)
        chk.expect(again == "temporary-auth-failure", f"node {k} still cut off, login: {again or 'accepted'}")

    # The majority keeps serving: a leader, logins, accounts (writes), messages.
    leader_watch.join(3 * LEASE_TTL + 20)
    if chk.expect("id" in majority_leader, f"no leader on the majority side: {majority_leader}"):
        fig("cut_to_majority_leader_s", majority_leader["at"] - t_cut, "s", leader=majority_leader["id"])
    z = chk.run(f"new account through node {m1} during the cut", cl[m1].new_user, "during")
    if z:
        c = chk.run(f"that account logs in on node {m2}", cl[m2].login_eventually, z[0], z[2], timeout=10)
        if c:
            c[0].close()
    for i in (m1, m2):
        _same_node_message(chk, cl[i], f"during the cut of node {k}")
        c = chk.run(f"old account logs in on node {i}", cl[i].login_eventually, ujid, upw, timeout=5)
        if c:
            c[0].close()
    st = chk.run("majority status", cl.status, m1)
    chk.expect(st is None or (st["members"].get(k, {}).get("healthy") is False),
               f"the majority does not see node {k} as unhealthy:\n{st and st['text']}")

    writer.join(WRITE_MAX + 10)
    rc = minority_write.get("rc")
    chk.expect(rc is not None and rc != 0,
               f"an account write through the cut node did not fail: {minority_write or 'still running'}")
    if rc:
        fig("minority_write_failed_after_s", minority_write["took"], "s")

    # Heal: the node takes logins again and has caught up.
    t_heal = time.monotonic()
    cl.netns.heal(k)
    back = chk.run(f"node {k} accepts logins after healing", cl[k].login_eventually, ujid, upw,
                   timeout=RECOVER_MAX)
    if back:
        back[0].close()
        fig("heal_to_accepting_logins_s", time.monotonic() - t_heal, "s")
    chk.run("three healthy members after healing", cl.wait_members, [1, 2, 3], RECOVER_MAX, k)
    if z:
        c = chk.run(f"account made during the cut logs in on node {k}", cl[k].login_eventually,
                    z[0], z[2], timeout=10)
        if c:
            c[0].close()
    _same_node_message(chk, cl[k], "after healing")
    st1 = chk.run("status after healing", cl.status, m1)
    if st1:
        fig("term_change", st1["term"] - st0["term"], "", leader_before=leader, leader_after=st1["leader"])
    chk.done()
