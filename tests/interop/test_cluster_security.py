"""Issue 4: nodes talk over mutual TLS with certificates of the cluster's CA; nothing
else joins.

* The cluster port refuses a TLS client that presents no certificate, or one from
  another CA, and accepts one with a certificate of the cluster CA (the control that
  shows the probe can tell the difference). Plain HTTP/2 gets nowhere either.
* ``starling serve --join`` with a certificate from a different CA (made with
  ``starling cluster ca``) fails, whether the node trusts the cluster's CA or its own.
* A node with no cluster certificate cannot join: ``--join`` is refused at start,
  and ``starling cluster join`` of a running certificate-less node fails.
* Afterwards the cluster is unaffected: the same three members, a leader, logins and
  messages on every node.
"""

import os
import socket
import ssl
import time

import pytest

from cluster import Cluster, ClusterNode, shared_cluster  # noqa: F401
from conftest import HOST

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(120)]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + empty SETTINGS


def _h2_over_tls(port, ca=None, cert=None, key=None) -> str:
    """Connects to the cluster port with TLS (ALPN h2), optionally with a client
    certificate, sends the HTTP/2 preface and reads. 'accepted' if the server sent an
    HTTP/2 frame back, else a description of how it refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((HOST, port), timeout=5)
    try:
        s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        # TLS 1.3: a refused client certificate shows up as an alert on the first read.
        s.sendall(H2_PREFACE)
        data = s.recv(9)
        if len(data) >= 4 and data[3] == 0x4:  # a SETTINGS frame
            return "accepted"
        return f"closed ({data!r})"
    except (ssl.SSLError, ConnectionError, socket.timeout, OSError) as e:
        return f"refused ({type(e).__name__}: {e})"
    finally:
        raw.close()


def _h2_plain(port) -> str:
    with socket.create_connection((HOST, port), timeout=5) as s:
        try:
            s.sendall(H2_PREFACE)
            data = s.recv(9)
        except OSError as e:
            return f"refused ({e})"
        return "accepted" if len(data) >= 4 and data[3] == 0x4 else f"closed ({data!r})"


def _assert_unaffected(cl, rogue_ids=()):
    st = cl.wait_members([1, 2, 3], timeout=10)
    for r in rogue_ids:
        assert r not in st["members"], st["text"]
    for i in (1, 2, 3):
        st_i = cl.status(i)
        assert set(st_i["members"]) == {1, 2, 3}, st_i["text"]
        cl[i].assert_healthy()


def test_cluster_port_requires_a_cluster_ca_client_certificate(shared_cluster):
    cl = shared_cluster
    port = cl[1].cluster_port
    other = Cluster.make_ca(os.path.join(cl.workdir, "probe-other-ca"))
    ocert, okey = cl.make_cert("probe-other", "127.0.0.1", ca_dir=os.path.dirname(other))
    # control: a certificate of the cluster CA is accepted
    assert _h2_over_tls(port, cl.ca_cert, cl[2].cert, cl[2].key) == "accepted"
    # no client certificate
    r = _h2_over_tls(port, cl.ca_cert)
    assert r != "accepted", "cluster port accepted a TLS client without a certificate"
    # a certificate of another CA
    r = _h2_over_tls(port, cl.ca_cert, ocert, okey)
    assert r != "accepted", "cluster port accepted a client certificate of another CA"
    # no TLS at all
    assert _h2_plain(port) != "accepted", "cluster port speaks plain HTTP/2"
    _assert_unaffected(cl)


@pytest.mark.parametrize("trust", ["cluster-ca", "own-ca"])
def test_node_with_certificate_of_other_ca_cannot_join(shared_cluster, trust):
    cl = shared_cluster
    node_id = {"cluster-ca": 41, "own-ca": 42}[trust]
    other_dir = os.path.join(cl.workdir, f"other-ca-{trust}")
    other_ca = Cluster.make_ca(other_dir)
    rogue = ClusterNode(cl, node_id)  # not in cl.nodes: stopped here
    try:
        rogue.cert, rogue.key = cl.make_cert(f"rogue{node_id}", "127.0.0.1", ca_dir=other_dir)
        if trust == "own-ca":
            rogue.ca_cert = other_ca
        rogue.write_config()
        t0 = time.monotonic()
        rogue.start(join=cl[1].cluster_addr, wait=False)
        # It must not get in: it gives up (exits) or keeps waiting, but never serves
        # as a member and never appears in the membership.
        deadline = t0 + 10
        while time.monotonic() < deadline and rogue.alive():
            st = cl.status(1)
            assert node_id not in st["members"], "rogue node joined:\n" + st["text"]
            time.sleep(0.3)
        log = rogue.log_since_start()
        assert "joined the cluster" not in log, log[-2000:]
        if rogue.alive():
            # Still retrying (a refused handshake looks like a transport
            # error to the joiner): it has not opened its c2s port.
            assert "could not join yet" in log, log[-2000:]
            assert "c2s listening" not in log, log[-2000:]
            # The rogue process itself listens on no TCP port but its cluster port (its c2s
            # port number may meanwhile be taken by another test's process: ask the kernel
            # whose sockets they are rather than connecting).
            ours = _listening_ports(rogue.proc.pid)
            assert rogue.c2s_port not in ours and rogue.tls_port not in ours, ours
        else:
            assert rogue.proc.returncode != 0, f"exited 0:\n{log[-2000:]}"
            assert "joining the cluster" in log, f"exited for another reason:\n{log[-2000:]}"
    finally:
        rogue.stop()
    _assert_unaffected(cl, [node_id])


def _listening_ports(pid: int) -> set:
    """TCP ports process ``pid`` listens on (from its socket inodes and /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_node_without_cluster_certificate_cannot_join(shared_cluster):
    cl = shared_cluster
    node_id = 60
    bare = ClusterNode(cl, node_id)  # not in cl.nodes: stopped here
    try:
        bare.write_config(tls=False)
        # --join without certificates: refused before it starts
        bare.start(join=cl[1].cluster_addr, wait=False)
        bare.proc.wait(30)
        log = bare.log_since_start()
        assert bare.proc.returncode != 0, log[-2000:]
        assert "cluster.join needs cluster.ca_cert" in log, log[-2000:]
        # a certificate-less node running on its own asks to join: refused
        bare.start()
        r = bare.cli("cluster", "join", cl[1].cluster_addr, check=False, timeout=60)
        assert r.returncode != 0, f"cluster join of a node without certificates succeeded: {r.stdout}{r.stderr}"
        st = cl.status(1)
        assert node_id not in st["members"], st["text"]
    finally:
        bare.stop()
    _assert_unaffected(cl, [node_id])
