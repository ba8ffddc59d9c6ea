"""Issue 4: three nodes behind HAProxy (Debian's haproxy, as deploy/local-cluster.sh
runs it). Users log in through the load balancer, land on different nodes, see each
other's presence and chat; ``kill -9`` of a node: its user's contacts see it go
unavailable, and the user logs in again through the load balancer (onto a surviving
node) and is served as before.
"""

import os
import shutil
import subprocess
import time

import pytest

from cluster import LEASE_TTL, Cluster, figure
from conftest import _stop_pid, free_port, wait_port
from im import make_mutual, recv_presence
from rawxmpp import C, StreamClosed, XMPPTimeout

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(150)]

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


@pytest.fixture
def lb_cluster(tmp_path_factory):
    """3 nodes and an HAProxy in front of their c2s ports (round robin, health checks,
    a failed connection redispatched to another node)."""
    if not os.path.exists(HAPROXY):
        pytest.fail("haproxy is not installed (tests/interop/setup.sh installs it)")
    wd = str(tmp_path_factory.mktemp("lbcluster"))
    cl = Cluster(wd, 3)
    port = free_port()
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{cl[i].c2s_port} check inter 300 fall 2 rise 2"
        for i in sorted(cl.nodes))
    cfg = os.path.join(wd, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch
frontend c2s
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
""")
    log = open(os.path.join(wd, "haproxy.log"), "wb")
    proc = subprocess.Popen([HAPROXY, "-f", cfg, "-db"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        wait_port(port, 10, proc)
        yield cl, port
    finally:
        _stop_pid(proc)
        log.close()
        cl.stop()


def _login_via_lb(cl, port, jid, pw, timeout=15.0):
    """Logs in through the load balancer, retrying refused connections and logins."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            return cl[1].login(jid, pw, presence=True, port=port)
        except Exception as e:  # noqa: BLE001 - connection refused/reset, SASL failure
            last = e
            time.sleep(0.2)
    raise AssertionError(f"no login through the load balancer within {timeout} s: {last!r}")


def _sessions(cl, via):
    st = cl.status(via)
    return {i: m.get("sessions", 0) for i, m in st["members"].items()}


def test_users_behind_haproxy_survive_a_node_kill(lb_cluster):
    cl, port = lb_cluster
    accounts = [cl[1].new_user(p) for p in ("la", "lb", "lc")]
    users = [_login_via_lb(cl, port, jid, pw) for jid, _, pw in accounts]
    try:
        # Round robin: one session per node.
        deadline = time.monotonic() + 5
        while True:
            per_node = _sessions(cl, 1)
            if sorted(per_node.values()) == [1, 1, 1] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(per_node.values()) == [1, 1, 1], f"sessions per node: {per_node}"
        for i in range(3):
            for j in range(i + 1, 3):
                make_mutual(users[i], users[j])
        for x in users:
            for y in users:
                if x is not y:
                    mid = x.message(y.jid, "through the balancer")
                    assert y.recv_stanza("message", id=mid).findtext(C("body")) == "through the balancer"

        # kill -9 a node that is not the leader; find whose stream it ended.
        leader = cl.leader()
        victim_node = next(i for i in sorted(cl.nodes) if i != leader)
        t0 = time.monotonic()
        cl[victim_node].kill9()
        victim = None
        deadline = time.monotonic() + 5
        while victim is None and time.monotonic() < deadline:
            for u in users:
                try:
                    u.ping_server(timeout=0.5)
                except (StreamClosed, XMPPTimeout, OSError):
                    victim = u
                    break
        assert victim is not None, "no client lost its stream when its node was killed"
        survivors = [u for u in users if u is not victim]
        # Its contacts see it go unavailable (its node's lease lapses).
        for s in survivors:
            recv_presence(s, victim.jid, "unavailable", timeout=4 * LEASE_TTL)
        figure("haproxy_kill9_contacts_notified_s", time.monotonic() - t0, "s", cl.workdir)

        # It logs in again through the load balancer, onto a surviving node.
        jid, _, pw = accounts[users.index(victim)]
        t1 = time.monotonic()
        back = _login_via_lb(cl, port, jid, pw)
        figure("haproxy_kill9_relogin_s", time.monotonic() - t1, "s", cl.workdir)
        users[users.index(victim)] = back
        for s in survivors:
            recv_presence(s, back.jid, None, timeout=10)
            mid = s.message(back.jid, "welcome back")
            assert back.recv_stanza("message", id=mid).findtext(C("body")) == "welcome back"
            mid = back.message(s.jid, "thanks")
            assert s.recv_stanza("message", id=mid).findtext(C("body")) == "thanks"
        per_node = _sessions(cl, leader)
        assert per_node.get(victim_node, 0) == 0, f"sessions still on the dead node: {per_node}"
    finally:
        for u in users:
            try:
                u.close()
            except Exception:  # noqa: BLE001
                pass
