"""Issue 4: membership changes under traffic.

* A fourth node joins (``starling serve --join``) while users exchange messages:
  nothing acknowledged is lost, then users log in on the new node and it serves.
* ``starling cluster leave`` on one node (a follower, or the leader) while users
  exchange messages: the leaving node's clients get a stream error, the node is no
  longer a member, it takes no new logins, and the remaining nodes keep serving.
  With ``[cluster] see_other_host`` set (when the binary knows the key) the stream
  error must be ``<see-other-host>`` naming that host (RFC 6120 4.9.3.19); without
  it ``<see-other-host/>`` or ``<system-shutdown/>`` (4.9.3.17).
"""

import time

import pytest

from cluster import Checks, Cluster, Traffic, cluster, online_on, relogin, supports_cluster_key  # noqa: F401
from rawxmpp import C, NS_STREAMS_ERR, q

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(150)]

RATE = 5
LB = "xmpp.example.net:5222"  # where the leaving node sends its clients (a load balancer)


@pytest.fixture
def leave_cluster(tmp_path_factory):
    """3 nodes; with ``cluster.see_other_host = LB`` when the binary supports the key."""
    opts = {"see_other_host": LB} if supports_cluster_key("see_other_host") else {}
    c = Cluster(str(tmp_path_factory.mktemp("cluster")), 3, cluster_options=opts)
    yield c
    c.stop()


def _check_leave_error(chk, cl, who, client):
    """The stream error a client of the leaving node got."""
    err = client.stream_error
    soh = cl.cluster_options.get("see_other_host")
    if soh:
        el = client.stream_error_el
        text = None if el is None else el.findtext(q(NS_STREAMS_ERR, "see-other-host"))
        chk.expect(err == "see-other-host" and (text or "").strip() == soh,
                   f"{who}: expected <see-other-host>{soh}</see-other-host>, got {err!r} "
                   f"(text {text!r})")
    else:
        chk.expect(err in ("see-other-host", "system-shutdown"), f"{who}: stream error {err!r}")


def _check_traffic(chk, label, tr, fig):
    r = tr.report(label.split()[0].replace("-", "_"), fig)
    chk.expect(not r["lost"], f"{label}: acknowledged messages not delivered: {r['lost']}")
    chk.expect(not r["closed"], f"{label}: streams ended: {r['closed']}")
    chk.expect(r["acked"] > 0 and r["acked"] >= 0.8 * r["sent"],
               f"{label}: only {r['acked']} of {r['sent']} messages acknowledged")


def _exchange(chk, what, a, b):
    """a -> b and b -> a, one message each."""
    for x, y in ((a, b), (b, a)):
        mid = x.message(y.jid, what)
        m = chk.run(f"{what}: {x.jid} -> {y.jid}", y.recv_stanza, "message", id=mid)
        chk.expect(m is None or m.findtext(C("body")) == what, f"{what}: body")


def test_fourth_node_joins_under_traffic(cluster, clients):
    cl = cluster
    chk = Checks()
    fig = lambda name, v, unit="": cl.figure(f"join_{name}", v, unit)  # noqa: E731
    old = online_on(cl[1], "old")  # an account from before the join
    old.close()
    local = Traffic([(clients.add(online_on(cl[i], "la")), clients.add(online_on(cl[i], "lb")))
                     for i in (1, 2, 3)], rate=RATE, max_seconds=15)
    cross = Traffic([(clients.add(online_on(cl[1], "xa")), clients.add(online_on(cl[2], "xb"))),
                     (clients.add(online_on(cl[2], "ya")), clients.add(online_on(cl[3], "yb")))],
                    rate=RATE, max_seconds=15)
    local.start()
    cross.start()
    time.sleep(1.5)
    t0 = time.monotonic()
    n4 = cl.add_node(via=2)  # through a member that may be a follower (it forwards)
    fig("join_returned_s", time.monotonic() - t0, "s")
    chk.run("four healthy members", cl.wait_members, [1, 2, 3, 4], 20)
    fig("joined_healthy_s", time.monotonic() - t0, "s")
    st = chk.run("status answered by the new node", n4.status)
    chk.expect(st is not None and set(st["members"]) == {1, 2, 3, 4} and st["leader"] in (1, 2, 3, 4),
               f"the new node's view: {st and st['text']}")
    time.sleep(2.0)
    local.stop()
    cross.stop()
    _check_traffic(chk, "same-node pairs during the join", local, fig)
    _check_traffic(chk, "cross-node pairs during the join", cross, fig)

    # The new node serves: an account from before the join, accounts made through it.
    o4 = chk.run("old account logs in on the new node", relogin, n4, old, presence=False, timeout=10)
    if o4:
        clients.add(o4)
        pong = chk.run("ping on the new node", o4.ping_server)
        chk.expect(pong is None or pong.get("type") == "result", "ping on the new node")
    a = chk.run("new account through node 4", online_on, n4, "na")
    b = chk.run("new account through node 4", online_on, n4, "nb")
    if a and b:
        clients.add(a), clients.add(b)
        _exchange(chk, "on node 4", a, b)
        b1 = chk.run("node-4 account logs in on node 1", relogin, cl[1], b, resource="one", timeout=10)
        if b1:
            clients.add(b1)
            _exchange(chk, "node 4 <-> node 1", a, b1)
    chk.done()


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_leave_under_traffic(leave_cluster, clients, role):
    cl = leave_cluster
    chk = Checks()
    fig = lambda name, v, unit="": cl.figure(f"leave_{role}_{name}", v, unit)  # noqa: E731
    leader = cl.leader()
    k = leader if role == "leader" else next(i for i in sorted(cl.nodes) if i != leader)
    r1, r2 = [i for i in sorted(cl.nodes) if i != k]

    idle = clients.add(online_on(cl[k], "idle"))
    gone = Traffic([(clients.add(online_on(cl[k], "ka")), clients.add(online_on(cl[k], "kb")))],
                   rate=RATE, max_seconds=15)
    local = Traffic([(clients.add(online_on(cl[i], "la")), clients.add(online_on(cl[i], "lb")))
                     for i in (r1, r2)], rate=RATE, max_seconds=15)
    cross = Traffic([(clients.add(online_on(cl[r1], "xa")), clients.add(online_on(cl[r2], "xb")))],
                    rate=RATE, max_seconds=15)
    for tr in (gone, local, cross):
        tr.start()
    time.sleep(1.5)
    t0 = time.monotonic()
    r = cl.leave(k)
    fig("command_s", time.monotonic() - t0, "s")
    chk.expect(r.returncode == 0, f"starling cluster leave failed ({r.returncode}): {r.stdout}{r.stderr}")

    # Its clients are told to go (and a client would reconnect elsewhere).
    chk.run("stream error for an idle client of the leaving node", idle.expect_stream_error, 5)
    _check_leave_error(chk, cl, "idle client of the leaving node", idle)
    for p in gone.peers:
        p.join(5)
        _check_leave_error(chk, cl, f"{p.client.jid} on the leaving node ({p.closed})", p.client)
    fig("stream_error", idle.stream_error or "none")
    gone.stop(grace=0.5)

    # The node is no longer a member; the remaining two have a leader and are healthy.
    st = chk.run("membership without the leaving node", cl.wait_members, [r1, r2], 15, r1)
    if st:
        fig("out_of_membership_s", time.monotonic() - t0, "s")
    st2 = chk.run("the other remaining node agrees", cl.wait_members, [r1, r2], 10, r2)
    chk.expect(st2 is None or k not in st2["members"], "left node still a member")
    # The left node takes no new logins.
    refusal = cl[k].login_refusal(idle.bare, idle.password)
    chk.expect(refusal is not None, f"the node that left still accepts logins")

    time.sleep(2.0)
    local.stop()
    cross.stop()
    _check_traffic(chk, "same-node pairs during the leave", local, fig)
    _check_traffic(chk, "cross-node pairs during the leave", cross, fig)

    # The remaining nodes keep serving: the left node's users log in there,
    # new accounts (a write that needs the new quorum) work.
    i2 = chk.run("a user of the left node logs in on a remaining node", relogin, cl[r1], idle, timeout=10)
    if i2:
        clients.add(i2)
    a = chk.run("new account on a remaining node", online_on, cl[r1], "ra")
    b = chk.run("new account on a remaining node", online_on, cl[r1], "rb")
    if a and b:
        clients.add(a), clients.add(b)
        _exchange(chk, f"on node {r1}", a, b)
        b2 = chk.run(f"login on node {r2}", relogin, cl[r2], b, resource="two", timeout=10)
        if b2:
            clients.add(b2)
    chk.done()


def test_node_whose_join_failed_joins_when_restarted(cluster, clients):
    """A node started with ``--join`` whose join cannot complete (here: the seed address
    answers nothing) and is killed while it retries must, restarted with a reachable
    seed, join the cluster: never come up as a cluster of its own (split brain)."""
    cl = cluster
    i = max(cl.nodes) + 1
    from cluster import ClusterNode, pick_port
    node = ClusterNode(cl, i)
    cl.nodes[i] = node
    dead_seed = f"127.0.0.1:{pick_port()}"  # nothing listens there
    node.start(join=dead_seed, wait=False)
    time.sleep(3)
    assert node.alive(), "the joining node gave up at once instead of retrying"
    assert "could not join yet" in node.log_since_start()
    node.kill9()
    node.start(join=cl[1].cluster_addr)
    st = cl.wait_members(sorted(cl.nodes), timeout=30)
    assert i in st["members"], st["text"]
    own = node.status()
    assert own["leader"] == st["leader"], f"node {i} follows another leader:\n{own['text']}"
    # One cluster: an account made through node 1 logs in on the new node.
    jid, _, pw = cl[1].new_user("fj")
    c, _ = node.login_eventually(jid, pw, timeout=10)
    clients.add(c)
    assert c.ping_server().get("type") == "result"
