"""Federation with another implementation: Starling (starling.interop) and Prosody
(prosody.interop, the Debian package) in a network namespace this test creates, each finding the other through DNS SRV
records (`_xmpp-server._tcp`) served by fakedns.py (not under .test: Prosody's libunbound
answers the RFC 6761 special-use names itself) on the namespace's 127.0.0.1:53 (the
namespace's resolv.conf, bind-mounted by `ip netns exec`, names it). Prosody requires
encryption and authenticates with dialback (its certificates, like ours, are self-signed):
each server verifies the other's links through its own outgoing link, as on the Internet.

Checked, both ways: chat messages, a subscription with its roster state and presence, IQ
(ping and disco) to the other server, and an error from the other side (a message to a user
Prosody does not have).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

import rawxmpp
from cluster import NetnsClient, _ip, socket_in_netns
from conftest import STARLING_BIN, StarlingServer, _stop_pid, child_env, free_port
from rawxmpp import C, q, tostring

pytestmark = pytest.mark.starling_only

PROSODY = shutil.which("prosody")
PROSODYCTL = shutil.which("prosodyctl")

PROSODY_CFG = """
run_as_root = true
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
plugin_paths = {{}}
network_backend = "epoll"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{}}
s2s_ports = {{ {s2s} }}
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = false
authentication = "internal_hashed"
storage = "internal"
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version" }}
certificates = "{dir}/certs"
ssl = {{ key = "{dir}/certs/prosody.interop.key"; certificate = "{dir}/certs/prosody.interop.crt" }}
VirtualHost "prosody.interop"
"""


def wait_port_in(ns: str, port: int, timeout: float, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        s = socket_in_netns(ns)
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
            return
        except OSError:
            time.sleep(0.2)
        finally:
            s.close()
    raise RuntimeError(f"port {port} in {ns} not open after {timeout}s")


class NsStarling(StarlingServer):
    """A StarlingServer run inside network namespace `ns`, resolving other domains by DNS."""

    def __init__(self, workdir, ns, **kw):
        super().__init__(workdir, **kw)
        self.ns = ns
        self.cmd_prefix = ["ip", "netns", "exec", ns, "env", "STARLING_S2S__DNS=true"]

    def start(self):
        cmd = [*self.cmd_prefix, STARLING_BIN, "serve", "--data-dir", self.data_dir]
        for d in self.domains:
            cmd += ["--domain", d]
        cmd += ["--c2s-port", str(self.c2s_port), "--c2s-tls-port", str(self.tls_port),
                "--metrics-port", str(self.metrics_port), "--s2s-port", str(self.s2s_port),
                "--config", self.config_path]
        if not hasattr(self, "cluster_port"):
            self.cluster_port = free_port()
        cmd += ["--cluster-port", str(self.cluster_port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir, env=child_env())
        try:
            wait_port_in(self.ns, self.c2s_port, 60, self.proc)
        except RuntimeError as e:
            self.stop()
            pytest.fail(f"{e}\n{self.log_tail()}")

    def client(self, *, direct_tls=False, domain=None, source_ip=None, timeout=None, port=None):
        c = NetnsClient("127.0.0.1", port or self.c2s_port, domain or self.domain,
                        **({} if timeout is None else {"timeout": timeout}))
        c.netns = self.ns
        return c


class NsProsody:
    def __init__(self, workdir, ns):
        self.dir, self.ns = workdir, ns
        self.c2s, self.s2s = free_port(), free_port()
        os.makedirs(f"{workdir}/certs", exist_ok=True)
        os.makedirs(f"{workdir}/data", exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=prosody.interop", "-addext", "subjectAltName=DNS:prosody.interop",
                        "-keyout", f"{workdir}/certs/prosody.interop.key", "-out", f"{workdir}/certs/prosody.interop.crt"],
                       check=True, capture_output=True, timeout=60)
        self.cfg = f"{workdir}/prosody.cfg.lua"
        with open(self.cfg, "w") as f:
            f.write(PROSODY_CFG.format(dir=workdir, c2s=self.c2s, s2s=self.s2s))
        self.proc = None

    def start(self):
        log = open(f"{self.dir}/console.log", "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, PROSODY, "-F", "--config", self.cfg],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.dir)
        log.close()
        wait_port_in(self.ns, self.c2s, 30, self.proc)

    def add_user(self, user, password):
        subprocess.run([PROSODYCTL, "--config", self.cfg, "register", user, "prosody.interop", password],
                       check=True, capture_output=True, timeout=60)

    def login(self, user, password):
        c = NetnsClient("127.0.0.1", self.c2s, "prosody.interop")
        c.netns = self.ns
        c.login(user, password, presence=True)
        c.bare = f"{user}@prosody.interop"
        return c

    def log_tail(self):
        try:
            with open(f"{self.dir}/prosody.log", "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        _stop_pid(self.proc)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    if not PROSODY or not PROSODYCTL:
        pytest.fail("prosody is not installed (tests/interop/setup.sh installs it from Debian)")
    ns = f"stls2s{os.getpid()}{uuid.uuid4().hex[:4]}"
    etc = f"/etc/netns/{ns}"
    made = []
    try:
        _ip("netns", "add", ns)
        made.append("ns")
        _ip("-n", ns, "link", "set", "lo", "up")
        os.makedirs(etc, exist_ok=True)
        made.append("etc")
        with open(f"{etc}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
        a = NsStarling(str(tmp_path_factory.mktemp("fed-a")), ns, domains=["starling.interop"],
                       extra_toml="[s2s]\nenabled = true\nbind = \"127.0.0.1\"\nconnect_timeout_secs = 10")
        p = NsProsody(str(tmp_path_factory.mktemp("fed-p")), ns)
        zone = {"a": {"starling.interop": "127.0.0.1", "prosody.interop": "127.0.0.1"},
                "srv": {"_xmpp-server._tcp.starling.interop": [[0, 5, a.s2s_port, "starling.interop"]],
                        "_xmpp-server._tcp.prosody.interop": [[0, 5, p.s2s, "prosody.interop"]]}}
        zonefile = os.path.join(p.dir, "zone.json")
        with open(zonefile, "w") as f:
            json.dump(zone, f)
        here = os.path.dirname(os.path.abspath(__file__))
        dns = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.join(here, "fakedns.py"),
                                "127.0.0.1", "53", zonefile, "--max-secs", "900"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        made.append(dns)
        assert dns.stdout.readline().strip() == b"ready"
        p.start()
        made.append(p)
        a.start()
        made.append(a)
        yield a, p
    finally:
        for m in reversed(made):
            if isinstance(m, (NsStarling, NsProsody)):
                m.stop()
            elif isinstance(m, subprocess.Popen):
                _stop_pid(m)
        if "etc" in made:
            shutil.rmtree(etc, ignore_errors=True)
        if "ns" in made:
            _ip("netns", "del", ns, check=False)


def prosody_user(p, clients, prefix):
    user = f"{prefix}{uuid.uuid4().hex[:8]}"
    p.add_user(user, "pw-" + user)
    return clients.add(p.login(user, "pw-" + user))


def test_chat_both_ways_with_prosody(federation, clients):
    a, p = federation
    ua = clients.add(a.online("sa"))
    up = prosody_user(p, clients, "pp")
    mid = ua.message(up.bare, "hello prosody")
    try:
        m = up.recv_stanza("message", id=mid, timeout=20)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- prosody log:\n{p.log_tail()}\n--- starling log:\n{a.log_tail()}")
    assert m.get("from") == ua.jid and m.findtext(C("body")) == "hello prosody"
    mid = up.message(ua.jid, "hello starling")
    m = ua.recv_stanza("message", id=mid, timeout=20)
    assert m.get("from") == up.jid and m.findtext(C("body")) == "hello starling"


def test_subscription_and_presence_with_prosody(federation, clients):
    a, p = federation
    ua = clients.add(a.online("sb"))
    up = prosody_user(p, clients, "pq")
    ua.presence(to=up.bare, type_="subscribe")
    req = up.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 20,
                  what="subscribe at prosody")
    assert req.get("from") == ua.bare
    up.presence(to=ua.bare, type_="subscribed")
    ua.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribed" and e.get("from") == up.bare,
            20, what="subscribed from prosody")
    # Prosody sends its user's presence once subscribed.
    ua.recv(lambda e: e.tag == C("presence") and e.get("from") == up.jid and e.get("type") is None,
            20, what="presence of the prosody contact")
    r = ua.iq("get", "<query xmlns='jabber:iq:roster'/>")
    items = {i.get("jid"): i.get("subscription") for i in r.iter(q("jabber:iq:roster", "item"))}
    assert items.get(up.bare) == "to", items
    # And the other way: prosody's user subscribes to ours, who approves.
    up.presence(to=ua.bare, type_="subscribe")
    ua.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe" and e.get("from") == up.bare,
            20, what="subscribe from prosody")
    ua.presence(to=up.bare, type_="subscribed")
    up.recv(lambda e: e.tag == C("presence") and e.get("from") == ua.jid and e.get("type") is None,
            20, what="our presence at prosody")
    ua.presence(type_="unavailable")
    up.recv(lambda e: e.tag == C("presence") and e.get("from") == ua.jid and e.get("type") == "unavailable",
            20, what="unavailable at prosody")


def test_iq_between_starling_and_prosody(federation, clients):
    a, p = federation
    ua = clients.add(a.online("sc"))
    up = prosody_user(p, clients, "pr")
    r = ua.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="prosody.interop", timeout=20)
    assert r.get("type") == "result", tostring(r)
    r = up.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="starling.interop", timeout=20)
    assert r.get("type") == "result", tostring(r)
    feats = {f.get("var") for f in r.iter(q("http://jabber.org/protocol/disco#info", "feature"))}
    assert "urn:xmpp:ping" in feats
    r = up.iq("get", "<query xmlns='jabber:iq:version'/>", to="starling.interop", timeout=20)
    assert r.get("type") == "result" and r.find(q("jabber:iq:version", "query")) is not None


def test_error_from_prosody_comes_back(federation, clients):
    a, p = federation
    ua = clients.add(a.online("sd"))
    mid = ua.message("nobody-here@prosody.interop", "anyone?")
    err = ua.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 20, what="error from prosody")
    assert err.get("type") == "error", tostring(err)
    assert err.find(f"{C('error')}/{q('urn:ietf:params:xml:ns:xmpp-stanzas', 'service-unavailable')}") \
        is not None, tostring(err)
    a.assert_healthy(ua)
