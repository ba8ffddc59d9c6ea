"""Federation with other implementations: Starling (starling.interop), Prosody 0.12
(prosody.interop) and ejabberd 23.01 (ejabberd.interop), the Debian packages, in a network
namespace this test creates, each finding the others through DNS SRV
records (`_xmpp-server._tcp`) served by fakedns.py (not under .test: Prosody's libunbound
answers the RFC 6761 special-use names itself) on the namespace's 127.0.0.1:53 (the
namespace's resolv.conf, bind-mounted by `ip netns exec`, names it). The peers require
encryption and authenticate with dialback (their certificates, like ours, are self-signed):
each server verifies the other's links through its own outgoing link, as on the Internet.

Checked with each peer, both ways: chat messages, a subscription with its roster state and
presence, IQ (ping, disco, version) to the other server, and an error from the other side (a
message to a user it does not have).
"""
import contextlib
import json
import os
import re
import signal
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
from rawxmpp import XMPPTimeout, C, q, tostring
from test_s2s import CertAuthority

pytestmark = pytest.mark.starling_only

PROSODY = shutil.which("prosody")
PROSODYCTL = shutil.which("prosodyctl")
EJABBERDCTL = shutil.which("ejabberdctl") or "/usr/sbin/ejabberdctl"

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
s2s_direct_tls_ports = {{ {s2s_tls} }}
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = false
authentication = "internal_hashed"
storage = "internal"
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version"; "pep" }}
certificates = "{dir}/certs"
ssl = {{ key = "{dir}/certs/prosody.interop.key"; certificate = "{dir}/certs/prosody.interop.crt"; cafile = "{ca}" }}
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


class NsPeer:
    """Another implementation's server in namespace `ns`: its c2s and s2s ports, clients, log."""

    domain = ""
    log_file = ""

    def __init__(self, workdir, ns, ca):
        self.dir, self.ns, self.ca = workdir, ns, ca
        self.c2s, self.s2s, self.s2s_tls = free_port(), free_port(), free_port()
        self.proc = None

    def issued(self, key, crt):
        """A certificate for the domain from the test's CA (which every server trusts)."""
        c, k = self.ca.issue(self.domain)
        shutil.copy(c, crt)
        shutil.copy(k, key)

    def login(self, user, password):
        c = NetnsClient("127.0.0.1", self.c2s, self.domain)
        c.netns = self.ns
        c.login(user, password, presence=True)
        c.bare = f"{user}@{self.domain}"
        return c

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, self.log_file), "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        _stop_pid(self.proc)


class NsProsody(NsPeer):
    domain = "prosody.interop"
    log_file = "prosody.log"

    def __init__(self, workdir, ns, ca):
        super().__init__(workdir, ns, ca)
        os.makedirs(f"{workdir}/certs", exist_ok=True)
        os.makedirs(f"{workdir}/data", exist_ok=True)
        self.issued(f"{workdir}/certs/{self.domain}.key", f"{workdir}/certs/{self.domain}.crt")
        self.cfg = f"{workdir}/prosody.cfg.lua"
        with open(self.cfg, "w") as f:
            f.write(PROSODY_CFG.format(dir=workdir, c2s=self.c2s, s2s=self.s2s, s2s_tls=self.s2s_tls, ca=ca.crt))

    def start(self):
        log = open(f"{self.dir}/console.log", "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, PROSODY, "-F", "--config", self.cfg],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.dir)
        log.close()
        wait_port_in(self.ns, self.c2s, 30, self.proc)

    def add_user(self, user, password):
        subprocess.run([PROSODYCTL, "--config", self.cfg, "register", user, self.domain, password],
                       check=True, capture_output=True, timeout=60)


EJABBERD_YML = """
hosts:
  - "ejabberd.interop"
loglevel: info
log_rotate_count: 0
certfiles:
  - "{dir}/cert.pem"
ca_file: "{ca}"
s2s_use_starttls: required
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: true
  -
    port: {s2s}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
  -
    port: {s2s_tls}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
    tls: true
auth_method: internal
acl:
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: all
  c2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
modules:
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
  mod_version: {{}}
  mod_s2s_dialback: {{}}
  mod_admin_extra: {{}}
  mod_caps: {{}}
  mod_pubsub:
    plugins:
      - "flat"
      - "pep"
"""


class NsEjabberd(NsPeer):
    """ejabberd (`ejabberdctl foreground`, a private copy that does not switch user) in `ns`."""

    domain = "ejabberd.interop"
    log_file = "log/ejabberd.log"

    def __init__(self, workdir, ns, ca):
        super().__init__(workdir, ns, ca)
        for d in ("etc", "db", "log"):
            os.makedirs(f"{workdir}/{d}", exist_ok=True)
        self.issued(f"{workdir}/etc/key.pem", f"{workdir}/etc/crt.pem")
        with open(f"{workdir}/etc/cert.pem", "w") as out:
            for part in ("key.pem", "crt.pem"):
                with open(f"{workdir}/etc/{part}") as f:
                    out.write(f.read())
        with open(f"{workdir}/etc/ejabberd.yml", "w") as f:
            f.write(EJABBERD_YML.format(dir=f"{workdir}/etc", c2s=self.c2s, s2s=self.s2s, s2s_tls=self.s2s_tls,
                                        ca=ca.crt))
        node = f"fed{uuid.uuid4().hex[:6]}@localhost"
        with open(f"{workdir}/etc/ejabberdctl.cfg", "w") as f:
            f.write(f'ERLANG_NODE={node}\nERL_OPTIONS="-setcookie {uuid.uuid4().hex}"\n'
                    "INET_DIST_INTERFACE=127.0.0.1\nERL_EPMD_ADDRESS=127.0.0.1\n"
                    "EJABBERD_BYPASS_WARNINGS=true\n")
        with open(EJABBERDCTL) as f:
            ctl = f.read().replace("\nINSTALLUSER=ejabberd\n", "\nINSTALLUSER=\n")
        self.ctl = f"{workdir}/ejabberdctl"
        with open(self.ctl, "w") as f:
            f.write(ctl)
        os.chmod(self.ctl, 0o755)

    def _ctl(self, *args, **kw):
        return ["ip", "netns", "exec", self.ns, self.ctl, "--config-dir", f"{self.dir}/etc",
                "--logs", f"{self.dir}/log", "--spool", f"{self.dir}/db", *args]

    def start(self):
        log = open(f"{self.dir}/log/console.log", "ab")
        self.proc = subprocess.Popen(self._ctl("foreground"), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True)
        log.close()
        wait_port_in(self.ns, self.c2s, 90, self.proc)

    def add_user(self, user, password):
        subprocess.run(self._ctl("register", user, self.domain, password), check=True,
                       capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Starling, Prosody and ejabberd in one network namespace with its own DNS."""
    if not PROSODY or not PROSODYCTL or not os.path.exists(EJABBERDCTL):
        pytest.fail("prosody and ejabberd must be installed (tests/interop/setup.sh installs them)")
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
        # One CA issued every server's certificate and is trusted by all: SASL EXTERNAL
        # (XEP-0178) where a server supports it, dialback where not.
        ca = CertAuthority(str(tmp_path_factory.mktemp("fed-ca")))
        crt, key = ca.issue("starling.interop")
        # dialback.interop: a second domain of the same server, with the certificate Starling
        # generates for itself (no CA): its links to the peers are authorised by dialback.
        a_tls = free_port()  # XEP-0368 direct TLS for servers
        a = NsStarling(str(tmp_path_factory.mktemp("fed-a")), ns, domains=["starling.interop", "dialback.interop"],
                       extra_toml="[s2s]\nenabled = true\nbind = \"127.0.0.1\"\nconnect_timeout_secs = 10\n"
                                  f"tls_port = {a_tls}\n"
                                  f"ca_file = \"{ca.crt}\"\nsystem_roots = false\n\n[[tls.certs]]\n"
                                  f"domain = \"starling.interop\"\ncert = \"{crt}\"\nkey = \"{key}\"\n")
        peers = {"prosody": NsProsody(str(tmp_path_factory.mktemp("fed-p")), ns, ca),
                 "ejabberd": NsEjabberd(str(tmp_path_factory.mktemp("fed-e")), ns, ca)}
        zone = {"a": {"starling.interop": "127.0.0.1", "dialback.interop": "127.0.0.1"},
                "srv": {}}
        # Each server on both: _xmpps-server (direct TLS) and _xmpp-server (STARTTLS).
        for d, plain, tls in [("starling.interop", a.s2s_port, a_tls), ("dialback.interop", a.s2s_port, a_tls),
                              *[(p.domain, p.s2s, p.s2s_tls) for p in peers.values()]]:
            zone["a"][d] = "127.0.0.1"
            zone["srv"][f"_xmpp-server._tcp.{d}"] = [[0, 5, plain, d]]
            zone["srv"][f"_xmpps-server._tcp.{d}"] = [[0, 5, tls, d]]
        zonefile = os.path.join(a.workdir, "zone.json")
        with open(zonefile, "w") as f:
            json.dump(zone, f)
        here = os.path.dirname(os.path.abspath(__file__))
        dns = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.join(here, "fakedns.py"),
                                "127.0.0.1", "53", zonefile, "--max-secs", "1200"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        made.append(dns)
        assert dns.stdout.readline().strip() == b"ready"
        for peer in peers.values():
            made.append(peer)
            peer.start()
        made.append(a)
        a.start()
        yield a, peers
    finally:
        for m in reversed(made):
            if isinstance(m, subprocess.Popen):
                _stop_pid(m)
            elif not isinstance(m, str):
                m.stop()
        if "ns" in made:
            # What ejabberd started on its own (epmd) lives in the namespace: stopped by PID.
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", ns, check=False)
        if "etc" in made:
            shutil.rmtree(etc, ignore_errors=True)


PEERS = ["prosody", "ejabberd"]


def peer_user(peer, clients, prefix):
    user = f"{prefix}{uuid.uuid4().hex[:8]}"
    peer.add_user(user, "pw-" + user)
    return clients.add(peer.login(user, "pw-" + user))


@pytest.mark.parametrize("name", PEERS)
def test_chat_both_ways(federation, clients, name):
    a, peers = federation
    p = peers[name]
    ua = clients.add(a.online("sa"))
    up = peer_user(p, clients, "pp")
    mid = ua.message(up.bare, f"hello {name}")
    try:
        m = up.recv_stanza("message", id=mid, timeout=20)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- {name} log:\n{p.log_tail()}\n--- starling log:\n{a.log_tail()}")
    assert m.get("from") == ua.jid and m.findtext(C("body")) == f"hello {name}"
    mid = up.message(ua.jid, "hello starling")
    m = ua.recv_stanza("message", id=mid, timeout=20)
    assert m.get("from") == up.jid and m.findtext(C("body")) == "hello starling"


@pytest.mark.parametrize("name", PEERS)
def test_subscription_and_presence(federation, clients, name):
    a, peers = federation
    ua = clients.add(a.online("sb"))
    up = peer_user(peers[name], clients, "pq")
    ua.presence(to=up.bare, type_="subscribe")
    req = up.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 20,
                  what=f"subscribe at {name}")
    assert req.get("from") == ua.bare
    up.presence(to=ua.bare, type_="subscribed")
    ua.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribed" and e.get("from") == up.bare,
            20, what=f"subscribed from {name}")
    # The peer sends its user's presence once subscribed.
    ua.recv(lambda e: e.tag == C("presence") and e.get("from") == up.jid and e.get("type") is None,
            20, what=f"presence of the {name} contact")
    r = ua.iq("get", "<query xmlns='jabber:iq:roster'/>")
    items = {i.get("jid"): i.get("subscription") for i in r.iter(q("jabber:iq:roster", "item"))}
    assert items.get(up.bare) == "to", items
    # And the other way: the peer's user subscribes to ours, who approves.
    up.presence(to=ua.bare, type_="subscribe")
    ua.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe" and e.get("from") == up.bare,
            20, what=f"subscribe from {name}")
    ua.presence(to=up.bare, type_="subscribed")
    up.recv(lambda e: e.tag == C("presence") and e.get("from") == ua.jid and e.get("type") is None,
            20, what=f"our presence at {name}")
    ua.presence(type_="unavailable")
    up.recv(lambda e: e.tag == C("presence") and e.get("from") == ua.jid and e.get("type") == "unavailable",
            20, what=f"unavailable at {name}")


@pytest.mark.parametrize("name", PEERS)
def test_iq_both_ways(federation, clients, name):
    a, peers = federation
    p = peers[name]
    ua = clients.add(a.online("sc"))
    up = peer_user(p, clients, "pr")
    r = ua.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=p.domain, timeout=20)
    assert r.get("type") == "result", tostring(r)
    r = up.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="starling.interop", timeout=20)
    assert r.get("type") == "result", tostring(r)
    feats = {f.get("var") for f in r.iter(q("http://jabber.org/protocol/disco#info", "feature"))}
    assert "urn:xmpp:ping" in feats
    r = up.iq("get", "<query xmlns='jabber:iq:version'/>", to="starling.interop", timeout=20)
    assert r.get("type") == "result" and r.find(q("jabber:iq:version", "query")) is not None
    # A request to our client, answered by it.
    up.send_raw(f"<iq type='get' id='cping' to='{ua.jid}'><ping xmlns='urn:xmpp:ping'/></iq>")
    req = ua.recv(lambda e: e.tag == C("iq") and e.get("id") == "cping", 20, what=f"ping from {name}")
    assert req.get("from") == up.jid
    ua.send_raw(f"<iq type='result' id='cping' to='{up.jid}'/>")
    r = up.recv(lambda e: e.tag == C("iq") and e.get("id") == "cping", 20, what="ping result")
    assert r.get("type") == "result" and r.get("from") == ua.jid, tostring(r)


@pytest.mark.parametrize("name", PEERS)
def test_error_from_the_peer_comes_back(federation, clients, name):
    a, peers = federation
    p = peers[name]
    ua = clients.add(a.online("sd"))
    mid = ua.message(f"nobody-here@{p.domain}", "anyone?")
    err = ua.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 20, what=f"error from {name}")
    assert err.get("type") == "error", tostring(err)
    assert err.find(f"{C('error')}/{q('urn:ietf:params:xml:ns:xmpp-stanzas', 'service-unavailable')}") \
        is not None, tostring(err)
    a.assert_healthy(ua)


def omemo2_devices(e):
    """The device ids of an OMEMO 2 device list notification."""
    from test_pep import NS_EVENT
    item = e.find(q(NS_EVENT, "event")).find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item"))
    return [d.get("id") for d in item.find("{urn:xmpp:omemo:2}devices")]


@pytest.mark.parametrize("name", PEERS)
def test_pep_notifications_to_a_contact_at_the_peer(federation, clients, name):
    """XEP-0163 across federation: the peer's user, a mutual contact, comes online with caps
    whose +notify our server does not know; our server asks it through the peer, then
    sends it the last item of our user's node and the next notification."""
    from test_pep import Caps, ok, publish, is_event
    a, peers = federation
    node = "urn:xmpp:omemo:2:devices"
    caps = Caps(node)
    ua = clients.add(a.online("pe"))
    up = peer_user(peers[name], clients, "pf")
    ua.presence(to=up.bare, type_="subscribe")
    up.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 20, what=f"subscribe at {name}")
    up.presence(to=ua.bare, type_="subscribed")
    up.presence(to=ua.bare, type_="subscribe")
    ua.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe" and e.get("from") == up.bare,
            20, what=f"subscribe from {name}")
    ua.presence(to=up.bare, type_="subscribed")
    up.recv(lambda e: e.tag == C("presence") and e.get("from") == ua.jid and e.get("type") is None,
            20, what=f"our presence at {name}")

    ok(publish(ua, node, "<devices xmlns='urn:xmpp:omemo:2'><device id='1'/></devices>", item_id="current"))
    up.presence(extra=caps.c())
    query = up.recv(lambda e: e.tag == C("iq") and e.get("type") == "get" and e.get("from") == a.domain
                    and e.find(q("http://jabber.org/protocol/disco#info", "query")) is not None,
                    20, what=f"our caps query through {name}")
    caps.answer(up, query)
    m = up.recv(lambda e: is_event(e, ua.bare, node), 20, what=f"the last item at {name}")
    assert omemo2_devices(m) == ["1"] and m.find(q("urn:xmpp:delay", "delay")) is not None
    ok(publish(ua, node, "<devices xmlns='urn:xmpp:omemo:2'><device id='2'/></devices>", item_id="current"))
    m = up.recv(lambda e: is_event(e, ua.bare, node) and omemo2_devices(e) == ["2"], 20,
                what=f"the notification at {name}")
    assert m.get("to") == up.jid and m.get("type") == "headline"



@pytest.mark.parametrize("name", PEERS)
def test_pep_notifications_from_a_contact_at_the_peer(federation, clients, name):
    """The other way: the peer's PEP service asks our user's caps (an IQ to our client,
    through our server) and sends our user the notifications it wants."""
    from test_pep import Caps, ok, publish, is_event
    a, peers = federation
    node = "urn:xmpp:omemo:2:devices"
    caps = Caps(node)
    ua = clients.add(a.online("pg"))
    up = peer_user(peers[name], clients, "ph")
    up.presence(to=ua.bare, type_="subscribe")
    ua.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe" and e.get("from") == up.bare,
            20, what=f"subscribe from {name}")
    ua.presence(to=up.bare, type_="subscribed")
    ua.presence(to=up.bare, type_="subscribe")
    up.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 20, what=f"subscribe at {name}")
    up.presence(to=ua.bare, type_="subscribed")
    ua.recv(lambda e: e.tag == C("presence") and e.get("from") == up.jid and e.get("type") is None,
            20, what=f"presence of the {name} contact")

    # the peer's user publishes; ours then advertises +notify and answers whoever asks its
    # caps (our server, the peer): the peer sends the last item (or, if it does not, the
    # next publish's notification)
    r = publish(up, node, "<devices xmlns='urn:xmpp:omemo:2'><device id='5'/></devices>", item_id="current")
    assert r.get("type") == "result", tostring(r)
    ua.presence(extra=caps.c())

    def wanted(e):
        return ((e.tag == C("iq") and e.get("type") == "get"
                 and e.find(q("http://jabber.org/protocol/disco#info", "query")) is not None)
                or is_event(e, up.bare, node))

    deadline = time.time() + 30
    peer_asked_at = None
    republished = False
    got = None
    while got is None and time.time() < deadline:
        if peer_asked_at and not republished and time.time() - peer_asked_at > 3:
            r = publish(up, node, "<devices xmlns='urn:xmpp:omemo:2'><device id='6'/></devices>",
                        item_id="current")
            assert r.get("type") == "result", tostring(r)
            republished = True
        try:
            e = ua.recv(wanted, 0.5, what=f"caps queries, then the notification from {name}")
        except XMPPTimeout:
            continue
        if e.tag == C("iq"):
            caps.answer(ua, e)
            if (e.get("from") or "") != a.domain and peer_asked_at is None:
                peer_asked_at = time.time()
            continue
        got = e
    assert got is not None, f"no notification from {name} (peer asked our caps: {peer_asked_at is not None})"
    assert got.get("to") == ua.jid and omemo2_devices(got) in (["5"], ["6"]), tostring(got)



def authorised(server, kind, remote):
    """Starling's log lines saying how a `link` (ours) or `stream` (theirs) with `remote`
    was authorised."""
    with open(server.log_path, "rb") as f:
        log = re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode("utf-8", "replace"))
    return [l for l in log.splitlines() if f"{kind} authorised" in l and f"remote={remote}" in l]


@pytest.mark.parametrize("name", PEERS)
def test_sasl_external_with_the_peer(federation, clients, name):
    """With certificates of a CA both sides trust, the links between Starling and the peer
    authenticate with SASL EXTERNAL (XEP-0178), as Starling's log says, not dialback."""
    a, peers = federation
    p = peers[name]
    ua = clients.add(a.online("xe"))
    up = peer_user(p, clients, "xf")
    mid = ua.message(up.bare, "external out")
    up.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 20, what=f"message at {name}")
    up.send_raw(f"<message to='{ua.jid}' id='xe2' type='chat'><body>external in</body></message>")
    ua.recv_stanza("message", id="xe2", timeout=20)
    out = authorised(a, "link", p.domain)
    inn = authorised(a, "stream", p.domain)
    assert out and all("SASL EXTERNAL" in l for l in out), out
    assert inn and all("SASL EXTERNAL" in l for l in inn), inn



@pytest.mark.parametrize("name", PEERS)
def test_dialback_with_the_peer_when_it_does_not_trust_our_certificate(federation, clients, name):
    """dialback.interop presents the self-signed certificate Starling made for it: the peer
    does not offer EXTERNAL to its link, which is authorised by dialback instead."""
    a, peers = federation
    p = peers[name]
    ua = clients.add(a.online("db", domain="dialback.interop"))
    up = peer_user(p, clients, "dc")
    mid = ua.message(up.bare, "dialback out")
    up.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 20, what=f"message at {name}")
    up.send_raw(f"<message to='{ua.jid}' id='db2' type='chat'><body>and in</body></message>")
    ua.recv_stanza("message", id="db2", timeout=20)
    out = [l for l in authorised(a, "link", p.domain) if "local=dialback.interop" in l]
    assert out and all("(dialback)" in l for l in out), out



def test_direct_tls_links(federation, clients):
    """XEP-0368: with _xmpps-server and _xmpp-server records of equal priority, Starling's
    links to both peers use direct TLS (ALPN xmpp-server), none STARTTLS; what the peers
    open to Starling is counted by kind (reported, as it is the peers' choice)."""
    a, peers = federation
    ua = clients.add(a.online("dt"))
    for name, p in peers.items():
        up = peer_user(p, clients, "du")
        mid = ua.message(up.bare, "direct")
        up.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 20, what=f"message at {name}")
        up.send_raw(f"<message to='{ua.jid}' id='dt-{name}' type='chat'><body>back</body></message>")
        ua.recv_stanza("message", id=f"dt-{name}", timeout=20)
    # the metrics port is in the namespace
    text = subprocess.run(["ip", "netns", "exec", a.ns, sys.executable, "-c",
                           "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("
                           f"'http://127.0.0.1:{a.metrics_port}/metrics', timeout=5).read().decode())"],
                          check=True, capture_output=True, text=True, timeout=30).stdout
    counts = {}
    for line in text.splitlines():
        m = re.match(r'starling_s2s_connections_total\{(.*)\} (\S+)', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[(labels["direction"], labels["tls"])] = float(m.group(2))
    print("s2s connections by kind:", counts)
    assert counts.get(("out", "direct"), 0) >= 2, counts
    assert counts.get(("out", "starttls"), 0) == 0, counts
