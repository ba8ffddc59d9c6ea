"""Multi-process cluster harness for the black-box interop suite.

``Cluster(workdir, n=3)`` makes a cluster CA and node certificates once
(``starling cluster ca`` / ``starling cluster cert``), writes one TOML file per
node (as deploy/local-cluster.sh does: ``[c2s]``, ``[metrics]``, ``[cluster]``
with node_id/bind/port/ca_cert/cert/key), starts node 1, then nodes 2..N one
after another with ``--join <node 1's cluster address>`` (a node's c2s port
opens only after its join returned, so waiting for it serialises the joins:
two joins at once are refused by Raft), and waits until ``starling cluster
status`` shows every node as a healthy voter under one leader.

Every node is a ``ClusterNode``: a ``conftest.StarlingServer`` (so ``client()``,
``login()``, ``online()``, ``new_user()``, ``assert_healthy()`` work as with the
single-server fixtures) whose CLI calls go through its own config file and
admin socket.

With ``netns=True`` every node runs in a network namespace of its own
(``ip netns exec``), the namespaces joined by veth pairs to a bridge in one
more namespace; nothing is added to the host's namespace. Clients of node i
connect from inside node i's namespace (a socket created by a thread that
entered it with setns(2)) to 127.0.0.1, so cutting node i's veth isolates it
from its peers but not from its clients. See ``Netns``.

Lease timing is not configurable (cluster/src/lease.rs: renew every 1 s, TTL
4 s; Raft election timeout 1-2 s, cluster/src/raft/mod.rs), so the time
bounds in the tests are multiples of ``LEASE_TTL``.

Measured figures are printed as ``FIGURE: name=value unit`` lines (``pytest -s``)
and appended as JSON lines to ``<workdir>/figures.jsonl`` and, when set, to
the file named by ``$CLUSTER_FIGURES``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from typing import Callable, Optional

import pytest

import rawxmpp
from conftest import (HOST, STARLING_BIN, Server, StarlingServer, _stop_pid, child_env, free_port,
                      wait_port)
from rawxmpp import C, SASLFailure, StreamClosed, XMPPTimeout, bare, tostring

# cluster/src/lease.rs LeaseConfig::default(): renew_ms 1000, ttl_ms 4000 (not in the config file).
LEASE_TTL = 4.0
LEASE_RENEW = 1.0


# --------------------------------------------------------------------------- figures

def figure(name: str, value, unit: str = "", workdir: Optional[str] = None, **extra) -> None:
    """Prints a measured figure (``FIGURE:`` prefix) and records it as a JSON line."""
    if isinstance(value, float):
        value = round(value, 3)
    print(f"FIGURE: {name}={value}{(' ' + unit) if unit else ''}"
          + "".join(f" {k}={v}" for k, v in extra.items()), flush=True)
    rec = json.dumps({"name": name, "value": value, "unit": unit, "time": time.time(), **extra})
    for path in filter(None, [workdir and os.path.join(workdir, "figures.jsonl"),
                              os.environ.get("CLUSTER_FIGURES")]):
        with contextlib.suppress(OSError), open(path, "a") as f:
            f.write(rec + "\n")


class Checks:
    """Soft assertions: a test records every failed expectation and fails once at the
    end with all of them, so one run reports every missing behaviour (and every figure)."""

    def __init__(self):
        self.failures: list = []

    def expect(self, cond, msg: str) -> bool:
        if not cond:
            self.failures.append(msg)
            print(f"CHECK FAILED: {msg}", flush=True)
        return bool(cond)

    def run(self, what: str, fn: Callable, *a, **kw):
        """Runs fn; an exception is recorded as a failed expectation (returns None)."""
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - recorded, reported at the end
            self.expect(False, f"{what}: {type(e).__name__}: {str(e)[:1500]}")
            return None

    def done(self):
        if self.failures:
            pytest.fail(f"{len(self.failures)} failed expectation(s):\n- " + "\n- ".join(self.failures),
                        pytrace=False)


# --------------------------------------------------------------------------- namespaces

CLONE_NEWNET = 0x40000000
_libc = None


def _setns_net(name: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({name}): {os.strerror(e)}")
    finally:
        os.close(fd)


def socket_in_netns(name: str) -> socket.socket:
    """A TCP socket that lives in network namespace ``name``: made by a short-lived
    thread that entered the namespace (setns changes only the calling thread, and a
    socket keeps the namespace it was made in)."""
    out: dict = {}

    def run():
        try:
            _setns_net(name)
            out["sock"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["err"] = e
    t = threading.Thread(target=run, name=f"netns-{name}")
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out["sock"]


class NetnsClient(rawxmpp.Client):
    """rawxmpp.Client whose TCP socket is made inside a network namespace."""

    netns: Optional[str] = None

    def _new_socket(self) -> socket.socket:
        return socket_in_netns(self.netns)


def _ip(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Netns:
    """Network namespaces of one test: ``<tag>-br`` holds a bridge, ``<tag>-n<i>``
    holds node i with address 10.201.0.<i>/24 on a veth whose other end is enslaved
    to the bridge. Names carry the pid and a random tag. Nothing touches the host's
    namespace. ``cut(i)`` / ``heal(i)`` set the bridge-side veth of node i down/up."""

    SUBNET = "10.201.0"

    def __init__(self):
        self.tag = f"stl{os.getpid()}{uuid.uuid4().hex[:4]}"
        self.bridge_ns = f"{self.tag}-br"
        self.made: list = []
        try:
            _ip("netns", "add", self.bridge_ns)
        except (RuntimeError, OSError) as e:
            pytest.fail(f"cannot create a network namespace (the partition tests need root and "
                        f"`ip netns add`): {e}", pytrace=False)
        self.made.append(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def ns(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def addr(self, i: int) -> str:
        return f"{self.SUBNET}.{i}"

    def add_node(self, i: int) -> str:
        ns = self.ns(i)
        _ip("netns", "add", ns)
        self.made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # Made inside the bridge namespace, the peer end moved straight into the node's.
        _ip("-n", self.bridge_ns, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "up")
        _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return ns

    def cut(self, i: int) -> None:
        _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.bridge_ns, "link", "set", f"v{i}", "up")

    def cleanup(self) -> None:
        for ns in reversed(self.made):
            _ip("netns", "del", ns, check=False)
        self.made = []


# --------------------------------------------------------------------------- nodes

class ClusterNode(StarlingServer):
    """One node of a Cluster; a StarlingServer with its own config file."""

    def __init__(self, cluster: "Cluster", node_id: int):
        workdir = os.path.join(cluster.workdir, f"node{node_id}")
        os.makedirs(workdir, exist_ok=True)
        Server.__init__(self, workdir, registration=False, limits=True)
        self.cluster = cluster
        self.node_id = node_id
        self.domains = [cluster.domain]
        self.domain = cluster.domain
        self.netns = cluster.netns.add_node(node_id) if cluster.netns else None
        if self.netns:
            self.host = "127.0.0.1"          # reached from inside its namespace
            self.cluster_host = cluster.netns.addr(node_id)
            self.c2s_bind = "0.0.0.0"         # its own namespace: no clash
        else:
            self.cluster_host = HOST
            self.c2s_bind = HOST
        # Ports outside the kernel's ephemeral range (32768-60999), so that the many
        # client connections of a test cannot take them between pick and bind.
        self.c2s_port, self.tls_port, self.cluster_port = pick_port(), pick_port(), pick_port()
        self.metrics_port = 0  # not used by the cluster tests
        self.data_dir = os.path.join(workdir, "data")
        self.log_path = os.path.join(workdir, "server.log")
        self.config_path = os.path.join(workdir, "node.toml")
        self.cert, self.key = cluster.make_cert(f"node{node_id}", self.cluster_host)
        self.ca_cert = cluster.ca_cert
        self.started_once = False
        self.write_config()

    @property
    def cluster_addr(self) -> str:
        return f"{self.cluster_host}:{self.cluster_port}"

    def write_config(self, *, tls: Optional[bool] = None) -> None:
        """(Re)writes node.toml; ``tls=False``: no cluster certificates (kept on rewrites)."""
        if tls is None:
            tls = getattr(self, "cluster_tls", True)
        self.cluster_tls = tls
        lines = [
            f'domains = ["{self.domain}"]',
            f'data_dir = "{self.data_dir}"',
            "", "[c2s]", f'bind = "{self.c2s_bind}"', f"port = {self.c2s_port}", f"tls_port = {self.tls_port}",
            "handshake_timeout_secs = 10",
            "", "[auth]",
            # login retries while a node catches up must not trip the per-account lockout
            "max_failures_per_account = 100000", "max_failures_per_ip = 100000",
            "", "[metrics]", f'bind = "{HOST}"', f"port = {self.metrics_port}",
            "", "[cluster]", f"node_id = {self.node_id}", f'bind = "{self.cluster_host}"',
            f"port = {self.cluster_port}",
        ]
        if tls:
            lines += [f'ca_cert = "{self.ca_cert}"', f'cert = "{self.cert}"', f'key = "{self.key}"']
        for k, v in self.cluster.cluster_options.items():
            lines.append(f"{k} = {json.dumps(v)}")
        if self.cluster.extra_config:
            lines += ["", *self.cluster.extra_config(self)]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- processes
    def wrap(self, cmd: list) -> list:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self, join: Optional[str] = None, wait: bool = True) -> None:
        """Starts the node (``--join join`` for a fresh node joining a cluster) and waits
        for its c2s port, which opens only after the store is open and the join returned."""
        if not os.path.exists(STARLING_BIN):
            pytest.fail(f"starling binary not found at {STARLING_BIN} (set STARLING_BIN)")
        cmd = [STARLING_BIN, "serve", "--config", self.config_path]
        if getattr(self, "s2s_port", None):  # federation's listener (extra_config sets the port)
            cmd += ["--s2s-port", str(self.s2s_port)]
        if join:
            cmd += ["--join", join]
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            log.write(f"\n==== {' '.join(cmd)}\n".encode())
            log.flush()
            # `ip netns exec` execs the command: the PID is the node's.
            self.proc = subprocess.Popen(self.wrap(cmd), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, env=child_env())
        self.started_once = True
        if wait:
            self.wait_ready(join=join)

    def wait_ready(self, timeout: float = 60, join: Optional[str] = None, attempts: int = 3) -> None:
        try:
            self.wait_c2s(timeout)
        except RuntimeError as e:
            self.stop()
            log = self.log_since_start()
            # Someone took a c2s port between pick and bind (the c2s listeners open
            # last, after the store and any join): new c2s ports, same cluster port.
            if attempts > 1 and "Address already in use" in log and "listening on" in log:
                self.c2s_port, self.tls_port = pick_port(), pick_port()
                self.write_config()
                self.start(join=join, wait=False)
                return self.wait_ready(timeout, join, attempts - 1)
            pytest.fail(f"node {self.node_id}: {e}\n{log[-4000:]}", pytrace=False)

    def log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(getattr(self, "log_offset", 0))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_c2s(self, timeout: float) -> None:
        if not self.netns:
            wait_port(self.c2s_port, timeout, self.proc)
            wait_port(self.tls_port, 10, self.proc)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before opening its port")
            s = socket_in_netns(self.netns)
            try:
                s.settimeout(0.5)
                s.connect(("127.0.0.1", self.c2s_port))
                return
            except OSError:
                time.sleep(0.05)
            finally:
                s.close()
        raise RuntimeError(f"port {self.c2s_port} not open after {timeout}s")

    def kill9(self) -> float:
        """SIGKILL by PID; returns the monotonic time of the kill."""
        t = time.monotonic()
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        return t

    def stop(self) -> None:
        _stop_pid(self.proc)

    # -- clients
    def client(self, *, direct_tls=False, domain=None, source_ip=None, timeout=None, port=None):
        port = port or (self.tls_port if direct_tls else self.c2s_port)
        kw = {} if timeout is None else {"timeout": timeout}
        if self.netns:
            c = NetnsClient(self.host, port, domain or self.domain, direct_tls=direct_tls, **kw)
            c.netns = self.netns
            return c
        return rawxmpp.Client(self.host, port, domain or self.domain, direct_tls=direct_tls,
                              source_ip=source_ip, **kw)

    def login_eventually(self, jid: str, password: str, timeout: float = 10, **kw):
        """Logs in, retrying refused logins (not-authorized while an account has not
        replicated here yet, temporary-auth-failure while the node is unhealthy, a port
        not open yet) until ``timeout``. Returns (client, seconds taken); the client's
        ``login_attempts`` says how many attempts it took."""
        t0 = time.monotonic()
        last = None
        attempts = 0
        while True:
            attempts += 1
            try:
                c = self.login(jid, password, **kw)
                c.login_attempts = attempts
                return c, time.monotonic() - t0
            except (SASLFailure, StreamClosed, XMPPTimeout, OSError) as e:
                last = e
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"no login as {jid} on node {self.node_id} within {timeout}s; "
                                     f"last error: {last!r}")
            time.sleep(0.25)

    def online(self, prefix="u", resource=None, presence=True, priority=None, domain=None):
        """New account made through this node, logged in on it at once (and available
        unless presence=False): a write returns once the node it went through applied it,
        so the login must not be refused."""
        jid, user, pw = self.new_user(prefix, domain=domain)
        c = self.login(jid, pw, resource=resource, presence=presence, priority=priority)
        c.password = pw
        c.bare = jid
        return c

    def login_refusal(self, jid: str, password: str, timeout: Optional[float] = None) -> Optional[str]:
        """One login attempt: None if it succeeds (the client is closed), else the SASL
        failure condition (or 'connect: ...' / 'stream: ...', e.g. a bind that got no
        answer within ``timeout``, the client's read timeout)."""
        try:
            c = self.login(jid, password, **({} if timeout is None else {"timeout": timeout}))
        except SASLFailure as e:
            return e.condition
        except OSError as e:
            return f"connect: {e!r}"
        except (StreamClosed, XMPPTimeout) as e:
            return f"stream: {e!r}"[:300]
        c.close()
        return None

    # -- CLI (through this node's config file and admin socket)
    def cli(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        # The CLI opens the store itself when no node answers on the admin socket,
        # which for a cluster member would start a second Raft instance with the
        # node's id: never call it for a node that is not running.
        if not self.alive():
            raise AssertionError(f"node {self.node_id} is not running: no CLI call through its data dir")
        cmd = [STARLING_BIN, *args, "--config", self.config_path]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
                           env=child_env())
        if check and r.returncode != 0:
            raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stdout}\n{r.stderr}")
        return r

    def status(self, timeout: float = 15) -> dict:
        """``starling cluster status --addr <this node's cluster address>``, parsed."""
        cmd = self.wrap([STARLING_BIN, "cluster", "status", "--addr", self.cluster_addr,
                         "--config", self.config_path])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
                           env=child_env())
        if r.returncode != 0:
            raise RuntimeError(f"cluster status of node {self.node_id} failed ({r.returncode}): "
                               f"{r.stdout}{r.stderr}".strip())
        return parse_status(r.stdout)


_HEAD = re.compile(r"answered by node (\d+); leader (\S+); term (\d+); commit (\d+); applied (\d+)")
_MEMBER = re.compile(r"^\s*(\d+)\s+(\S+)\s+(true|false)\s+(\S+)\s+(\S+)\s+(true|false)\s+(-|\d+ ms)"
                     r"(?:\s+(\S+))?")


def parse_status(text: str) -> dict:
    """Parses the text of ``starling cluster status`` (node/src/admin.rs status_lines):

        answered by node 1; leader 1; term 1; commit 10; applied 10
          node  address                   voter   matched    lag  healthy  lease age  sessions
             1  127.0.0.1:27210            true        10      0     true     982 ms         3

    (older binaries have no sessions column)
    -> {"node": 1, "leader": 1 or None, "term", "commit", "applied", "text",
        "members": {id: {"addr", "voter", "matched", "lag", "healthy", "lease_age_ms", "sessions"}}}"""
    lines = [l for l in text.splitlines() if l.strip()]
    m = _HEAD.search(lines[0]) if lines else None
    if not m:
        raise ValueError(f"unexpected cluster status output: {text!r}")
    num = lambda s: None if s in (None, "-") else int(s)  # noqa: E731
    st = {"node": int(m.group(1)), "leader": num(m.group(2)), "term": int(m.group(3)),
          "commit": int(m.group(4)), "applied": int(m.group(5)), "members": {}, "text": text}
    for line in lines[2:]:
        f = _MEMBER.match(line)
        if not f:
            raise ValueError(f"unexpected member line {line!r} in {text!r}")
        sessions = f.group(8)
        st["members"][int(f.group(1))] = {
            "addr": f.group(2), "voter": f.group(3) == "true", "matched": num(f.group(4)),
            "lag": num(f.group(5)), "healthy": f.group(6) == "true",
            "lease_age_ms": None if f.group(7) == "-" else int(f.group(7).split()[0]),
            "sessions": int(sessions) if sessions and sessions.isdigit() else None,
        }
    return st


_key_support: dict = {}


def supports_cluster_key(key: str, value: str = '"probe"') -> bool:
    """Whether this starling binary knows ``[cluster] key`` (the config rejects unknown
    keys): probed by parsing a config that sets it (``starling cluster ca --config``)."""
    if key not in _key_support:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "probe.toml")
            with open(cfg, "w") as f:
                f.write(f"[cluster]\n{key} = {value}\n")
            r = subprocess.run([STARLING_BIN, "cluster", "ca", "--config", cfg, "--out", os.path.join(d, "ca")],
                               capture_output=True, text=True, timeout=60, env=child_env())
            _key_support[key] = r.returncode == 0
    return _key_support[key]


# --------------------------------------------------------------------------- cluster

class Cluster:
    """N starling processes forming one cluster; see the module docstring."""

    def __init__(self, workdir: str, n: int = 3, *, netns: bool = False, domain: str = "localhost",
                 start: bool = True, cluster_options: Optional[dict] = None,
                 extra_config: Optional[Callable[["ClusterNode"], list]] = None):
        self.workdir = workdir
        # more config lines (whole sections) for a node, appended to its node.toml
        self.extra_config = extra_config
        self.domain = domain
        # extra [cluster] keys for every node's config, e.g. {"see_other_host": "lb:5222"}
        self.cluster_options = dict(cluster_options or {})
        self.nodes: dict = {}
        self.netns: Optional[Netns] = Netns() if netns else None
        try:
            self.ca_dir = os.path.join(workdir, "ca")
            self.ca_cert = self.make_ca(self.ca_dir)
            for i in range(1, n + 1):
                self.nodes[i] = ClusterNode(self, i)
            if start:
                self.start()
        except BaseException:
            self.stop()
            raise

    # -- PKI
    @staticmethod
    def make_ca(out: str) -> str:
        _run([STARLING_BIN, "cluster", "ca", "--out", out])
        return os.path.join(out, "ca.pem")

    def make_cert(self, name: str, host: str, ca_dir: Optional[str] = None):
        ca_dir = ca_dir or self.ca_dir
        sans = ["127.0.0.1"] + ([host] if host != "127.0.0.1" else [])
        cmd = [STARLING_BIN, "cluster", "cert", "--ca-dir", ca_dir, "--name", name, "--out", ca_dir]
        for s in sans:
            cmd += ["--san", s]
        _run(cmd)
        return os.path.join(ca_dir, f"{name}.pem"), os.path.join(ca_dir, f"{name}-key.pem")

    # -- lifecycle
    def start(self) -> None:
        ids = sorted(self.nodes)
        t0 = time.monotonic()
        self.nodes[ids[0]].start()
        for i in ids[1:]:
            self.nodes[i].start(join=self.nodes[ids[0]].cluster_addr)
        self.wait_members(ids, timeout=30)
        figure("cluster_start_s", time.monotonic() - t0, "s", self.workdir, nodes=len(ids))

    def node(self, i: int) -> ClusterNode:
        return self.nodes[i]

    def __getitem__(self, i: int) -> ClusterNode:
        return self.nodes[i]

    def alive_ids(self) -> list:
        return [i for i, n in sorted(self.nodes.items()) if n.alive()]

    def status(self, i: Optional[int] = None) -> dict:
        """Status as node i sees it (default: the first running node)."""
        if i is None:
            i = self.alive_ids()[0]
        return self.nodes[i].status()

    def leader(self, via: Optional[int] = None) -> Optional[int]:
        return self.status(via)["leader"]

    def leader_node(self) -> ClusterNode:
        return self.nodes[self.wait_leader(timeout=15)[0]]

    def wait_status(self, pred: Callable[[dict], bool], timeout: float, via: Optional[int] = None,
                    what: str = "cluster status") -> dict:
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                st = self.status(via)
                last = st["text"]
                if pred(st):
                    return st
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {timeout}s; last status:\n{last}")
            time.sleep(0.2)

    def wait_members(self, ids, timeout: float = 30, via: Optional[int] = None) -> dict:
        """Until node ``via`` sees exactly ``ids`` as healthy voters and knows a leader among them."""
        ids = set(ids)

        def ok(st):
            m = st["members"]
            return (set(m) == ids and st["leader"] in ids
                    and all(m[i]["voter"] and m[i]["healthy"] for i in ids))
        return self.wait_status(ok, timeout, via, what=f"members {sorted(ids)} healthy with a leader")

    def wait_leader(self, exclude=(), timeout: float = 20, via: Optional[int] = None) -> tuple:
        """Until a leader not in ``exclude`` is known; returns (leader id, seconds waited)."""
        t0 = time.monotonic()
        st = self.wait_status(lambda s: s["leader"] is not None and s["leader"] not in exclude,
                              timeout, via, what=f"a leader other than {list(exclude)}")
        return st["leader"], time.monotonic() - t0

    def kill9(self, i: int) -> float:
        return self.nodes[i].kill9()

    def restart(self, i: int) -> float:
        """Starts node i again on its data directory (no --join: it is a member)."""
        n = self.nodes[i]
        n.stop()
        t = time.monotonic()
        n.start()
        return t

    def stop(self) -> None:
        for n in self.nodes.values():
            with contextlib.suppress(Exception):
                n.stop()
        if self.netns:
            self.netns.cleanup()

    def add_node(self, via: Optional[int] = None, wait: bool = True) -> ClusterNode:
        """A new node (next id) joining through ``via``'s cluster address."""
        i = max(self.nodes) + 1
        node = ClusterNode(self, i)
        self.nodes[i] = node
        seed = self.nodes[via if via is not None else self.alive_ids()[0]].cluster_addr
        node.start(join=seed, wait=wait)
        return node

    def leave(self, i: int, timeout: float = 60) -> subprocess.CompletedProcess:
        """``starling cluster leave`` through node i's admin socket."""
        return self.nodes[i].cli("cluster", "leave", check=False, timeout=timeout)

    def figure(self, name, value, unit="", **extra):
        figure(name, value, unit, self.workdir, **extra)


def pick_port() -> int:
    """A free TCP port below the ephemeral range (`conftest.free_port`)."""
    return free_port()


def _run(cmd) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env())
    if r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}): {r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def cluster(tmp_path_factory):
    """A fresh 3-node cluster for one test (tests that kill, restart, add or remove nodes)."""
    c = Cluster(str(tmp_path_factory.mktemp("cluster")), 3)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One 3-node cluster for a whole module of non-destructive tests."""
    c = Cluster(str(tmp_path_factory.mktemp("cluster")), 3)
    yield c
    c.stop()


# --------------------------------------------------------------------------- helpers

def online_on(node: ClusterNode, prefix="u", resource=None, presence=True, priority=None):
    """A new account created through ``node`` and logged in on it."""
    return node.online(prefix, resource=resource, presence=presence, priority=priority)


def relogin(node: ClusterNode, c, resource=None, presence=True, priority=None, timeout=10):
    """Logs the account of client ``c`` (from ``online``) in on ``node``."""
    n, _ = node.login_eventually(c.bare, c.password, timeout=timeout, resource=resource,
                                 presence=presence, priority=priority)
    n.password, n.bare = c.password, c.bare
    return n


class Waiter(threading.Thread):
    """Reads ``client`` in the background until an element matching ``pred`` arrives;
    ``at`` is its monotonic arrival time (None if none came within ``timeout``).
    The client must not be used by anyone else meanwhile."""

    def __init__(self, client, pred, timeout: float, what: str = "element"):
        super().__init__(daemon=True)
        self.client, self.pred, self.timeout, self.what = client, pred, timeout, what
        self.at: Optional[float] = None
        self.element = None
        self.error: Optional[str] = None
        self.start()

    def run(self):
        try:
            self.element = self.client.recv(self.pred, timeout=self.timeout, what=self.what)
            self.at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = f"{type(e).__name__}: {str(e)[:500]}"


# --------------------------------------------------------------------------- traffic

class Peer(threading.Thread):
    """One side of a message exchange: sends ``rate`` chat messages a second to its
    partner (at most ``max_msgs``), each followed by an IQ ping to its server, and
    reads everything that arrives. A message counts as *acked* when a ping sent after
    it is answered (a session handles its stanzas in order), as *delivered* when the
    partner's client received it."""

    def __init__(self, name: str, client, rate: float, max_msgs: int):
        super().__init__(daemon=True, name=name)
        self.tag = name
        self.client = client
        self.partner: Optional[Peer] = None
        self.full = False
        self.interval = 1.0 / rate
        self.max_msgs = max_msgs
        self.sent = 0
        self.acked = 0          # messages 0..acked-1 are acknowledged
        self.pings: dict = {}   # ping id -> number of messages sent before it
        self.received: dict = {}  # sender tag -> list of seq (in arrival order)
        self.errors: list = []
        self.refused: set = set()  # seqs of own messages the server answered with an error
        self.closed: Optional[str] = None
        self.stream_error: Optional[str] = None
        self.closed_at: Optional[float] = None
        self.stop_sending = threading.Event()
        self.finish = threading.Event()

    def _send(self):
        seq = self.sent
        mid = f"{self.tag}-{seq}"
        self.client.message(self.partner.client.jid if self.partner.full else bare(self.partner.client.jid),
                            f"{self.tag}:{seq}", mid=mid)
        self.sent += 1
        pid = rawxmpp.new_id("ack")
        self.pings[pid] = self.sent
        self.client.send_raw(f"<iq type='get' id='{pid}' to='{self.client.domain}'>"
                             "<ping xmlns='urn:xmpp:ping'/></iq>")

    def _read(self, timeout: float):
        try:
            el = self.client.recv(timeout=max(timeout, 0.01))
        except XMPPTimeout:
            return
        if el.tag == C("iq") and el.get("id") in self.pings:
            self.acked = max(self.acked, self.pings.pop(el.get("id")))
        elif el.tag == C("message"):
            if el.get("type") == "error":
                self.errors.append(tostring(el)[:400])
                # A bounce of one of ours (it carries the body): refused, not lost.
                tag, _, seq = (el.findtext(C("body")) or "").rpartition(":")
                if tag == self.tag and seq.isdigit():
                    self.refused.add(int(seq))
                return
            body = el.findtext(C("body")) or ""
            tag, _, seq = body.rpartition(":")
            if tag and seq.isdigit():
                self.received.setdefault(tag, []).append(int(seq))

    def run(self):
        next_send = time.monotonic()
        try:
            while not self.finish.is_set():
                now = time.monotonic()
                if not self.stop_sending.is_set() and self.sent < self.max_msgs and now >= next_send:
                    self._send()
                    next_send = max(next_send + self.interval, now)
                    continue
                self._read(min(0.1, max(next_send - now, 0.01)))
        except (StreamClosed, OSError) as e:
            self.closed = f"{type(e).__name__}: {str(e)[:300]}"
            self.stream_error = self.client.stream_error
            self.closed_at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.closed = f"{type(e).__name__}: {str(e)[:300]}"
            self.closed_at = time.monotonic()


class Traffic:
    """Bidirectional exchanges between pairs of clients, one thread per client.

    ``Traffic([(a, b), ...], rate=5, max_seconds=15)``: each client sends ``rate``
    messages a second to its partner for at most ``max_seconds`` (so at most
    rate*max_seconds messages per direction) until ``stop()``; ``full=True`` addresses
    the partner's full JID, else its bare JID."""

    def __init__(self, pairs, rate: float = 5, max_seconds: float = 15, full: bool = False):
        self.peers: list = []
        self.pairs = []
        for k, (a, b) in enumerate(pairs):
            pa = Peer(f"p{k}a{uuid.uuid4().hex[:4]}", a, rate, int(rate * max_seconds))
            pb = Peer(f"p{k}b{uuid.uuid4().hex[:4]}", b, rate, int(rate * max_seconds))
            pa.partner, pb.partner = pb, pa
            pa.full = pb.full = full
            self.peers += [pa, pb]
            self.pairs.append((pa, pb))
        self.started = None

    def start(self) -> "Traffic":
        self.started = time.monotonic()
        for p in self.peers:
            p.start()
        return self

    def stop(self, grace: float = 8.0, quiet: float = 1.0) -> None:
        """Stops sending, then keeps reading until every ping is answered and nothing
        arrived for ``quiet`` seconds (at most ``grace`` seconds)."""
        for p in self.peers:
            p.stop_sending.set()
        deadline = time.monotonic() + grace
        last = (-1, -1)
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            alive = [p for p in self.peers if p.closed is None]
            state = (sum(len(p.pings) for p in alive),
                     sum(sum(len(v) for v in p.received.values()) for p in self.peers))
            if state != last:
                last, last_change = state, time.monotonic()
            if state[0] == 0 and time.monotonic() - last_change >= quiet:
                break
            time.sleep(0.1)
        for p in self.peers:
            p.finish.set()
        for p in self.peers:
            p.join(5)

    def directions(self):
        for pa, pb in self.pairs:
            yield pa, pb
            yield pb, pa

    def report(self, label: str, fig=None) -> dict:
        """Counts per direction; returns {"sent", "acked", "delivered", "lost": [...], ...}.
        A message the server answered with an error (a bounce back to its sender, e.g. while
        the cluster had no leader for longer than a write waits) was refused, not accepted:
        it counts in "refused", not in "lost"."""
        tot = {"sent": 0, "acked": 0, "delivered": 0, "lost": [], "duplicates": 0, "errors": 0,
               "refused": 0, "closed": []}
        for s, r in self.directions():
            got = r.received.get(s.tag, [])
            acked = set(range(s.acked))
            tot["refused"] += len(acked & s.refused)
            lost = sorted(acked - set(got) - s.refused)
            tot["sent"] += s.sent
            tot["acked"] += s.acked
            tot["delivered"] += len(set(got))
            tot["duplicates"] += len(got) - len(set(got))
            tot["errors"] += len(s.errors)
            if lost:
                tot["lost"].append(f"{s.client.jid} -> {r.client.jid}: {len(lost)} of {s.acked} acked "
                                   f"not delivered (first {lost[:5]}); sender errors {s.errors[:2]}")
            if s.closed:
                tot["closed"].append(f"{s.client.jid}: {s.closed}")
        if fig:
            for k in ("sent", "acked", "delivered", "duplicates", "errors", "refused"):
                fig(f"{label}_{k}", tot[k])
        return tot


def pred_presence(from_bare: str, type_: Optional[str]):
    return lambda e: (e.tag == C("presence") and bare(e.get("from") or "") == from_bare
                      and e.get("type") == type_)


def shutdown_all(*clients):
    for c in clients:
        with contextlib.suppress(Exception):
            c.shutdown()
