"""Port of the Conversations "Compliance Tester" (github.com/iNPUTmice/ComplianceTester, Java,
the checker whose suites compliance.conversations.im shows and ejabberd / Prosody deployments are
measured with) to raw XML against Starling: one test per Java test class of
``src/main/java/eu/siacs/compliance/tests``, and one test per suite of
``src/main/java/eu/siacs/compliance/suites`` run the way ``ComplianceTester.main`` runs it.

How the Java runs (``ComplianceTester``, ``TestSuiteFactory``, ``suites/AbstractTestSuite``):
one Babbler (rocks.xmpp 0.7.4) ``XmppClient`` per suite connects (STARTTLS), logs in with
SCRAM and binds the resource ``ComplianceTester``; every test of the suite then runs on that one
session. A test's ``run()`` returns PASSED or FAILED (an ``XmppException``, a stanza error or a
timeout is FAILED); a suite is PASSED when none of its tests FAILED (``AbstractTestSuite.result``;
the Java runs each test twice and keeps the second result, done here too). Library calls, as
rocks.xmpp 0.7.4 makes them:

* ``StreamFeaturesManager.getFeatures()``: every feature element of every ``<stream:features/>``
  of the connection (before STARTTLS, after it, after SASL), keyed by its class, i.e. by element
  name and namespace; only cleared on a new connection.
* ``ServiceDiscoveryManager.discoverInformation(jid)``: ``<iq type='get' to=jid><query
  xmlns='http://jabber.org/protocol/disco#info'/></iq>``; features are the ``var`` of the
  ``<feature/>`` children, identities (category, type), extensions the ``jabber:x:data`` forms.
* ``discoverItems(domain)``: the same with ``disco#items``, no node, no RSM.
* ``MultiUserChatManager.discoverChatServices()`` = ``discoverServices(Muc.NAMESPACE)``: the
  domain's items whose disco#info has ``http://jabber.org/protocol/muc``; in 0.7.x one item whose
  disco#info fails makes the whole call fail (the tester says so in AbstractServiceTest:
  "this is how it should be. but it throws an exeception if one of the items fails").
* ``ChatRoom.enter(nick)``: ``<presence to='room/nick'><x xmlns='http://jabber.org/protocol/muc'/>
  </presence>``; ``getConfigurationForm()``: muc#owner get; ``destroy()``: muc#owner set with
  ``<destroy/>``.
* ``RegistrationManager.isRegistrationSupported()``: the ``<register
  xmlns='http://jabber.org/features/iq-register'/>`` stream feature, else ``jabber:iq:register``
  in the domain's disco#info; ``getRegistration()``: ``<iq type='get'><query
  xmlns='jabber:iq:register'/></iq>`` (no ``to``), before authentication.

Sources read: the newest versions of each file that could be read (the ``eu.siacs`` package;
the later rewrite at compliance.conversations.im moved to ``im.conversations.compliance`` and
differs in places, noted per test): Conversations suite = AdvancedServerIM + CSI, HttpUpload,
Proxy65, Push, XmppOverTls, OMEMO, MamMuc (the last three added in 2017-2018; the order of
MamMuc after OMEMO is the one of published 15-test reports); AdvancedServerIM = AdvancedServerCore
+ RosterVersioning, MessageCarbons, Blocking, MultiUserChat, StreamManagement, MAM;
AdvancedServerMobile = AdvancedServerCore + StreamManagement, CSI, Push; AdvancedServerCore =
EntityCapabilities, PEP. ``EverythingTestSuite`` (an early suite no longer run by ``main``) is
not ported. AbuseContactTest, InBandRegistrationTest and OfflineStorage are in no current suite;
they are ported as tests of their own. Two classes in no suite are not ported because they look
in the wrong place by the XEPs: PushOnServer (``urn:xmpp:push:0`` in the domain's disco#info;
XEP-0357 §5 and the Java's own comment put it on the account, where Push finds it) and Jingle
(``urn:xmpp:jingle:1`` on the domain: a server is not a Jingle endpoint, XEP-0166).

XmppOverTls (XEP-0368) resolves ``_xmpps-client._tcp.<domain>`` in public DNS and only then
connects: that lookup cannot happen on loopback and is left out (the SRV record is the
deployment's DNS, not the server). What the checker decides from the server itself is ported:
a direct-TLS connection to the port such a record would name (Starling's ``--c2s-tls-port``),
with SNI = the domain, whose handshake succeeds with the JVM's default trust (here: the CA of the
deployment's certificate, a test CA standing in for a public one) and whose certificate passes
``XmppDomainVerifier`` for the domain (XmppAddr, SRV-ID ``_xmpp-client.<domain>``, DNS names with
``*.`` wildcards, the CN only when there is no subjectAltName at all). (The rewrite behind
compliance.conversations.im also offers ALPN ``xmpp-client``, writes a stream header of its own
and wants the first 21 characters of the answer, within 1 s, to start with ``<?xml``; that step is
ported too, header included: it misses a quote, and the server must say so at once.)

HttpUpload: the stored ``eu.siacs...tests.HttpUpload`` asks for ``urn:xmpp:http:upload``
(XEP-0363 before 0.3.0, 2017); the rewrite asks for ``urn:xmpp:http:upload:0``, which is what is
ported (see the test).

The server is configured like a production deployment that enables what the tester looks for
where Starling has a setting: ``[upload]`` (XEP-0363), ``[proxy65]`` (XEP-0065), ``[push]``,
``[mam]``, ``[sm]``, ``[muc]`` (these four on by default, set explicitly), ``[registration]``
(XEP-0077), ``[contact]`` (XEP-0157 abuse / security / support addresses),
``[[external_services]]`` (XEP-0215 STUN/TURN; no tester class checks it) and ``[tls] certs``
(a CA-issued certificate for the domain, as a deployment has). Starling-only (the config keys).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from conftest import StarlingServer, free_port
from pki import CertAuthority
from rawxmpp import C, StreamClosed, XMPPTimeout, local, new_id, q, tostring

pytestmark = pytest.mark.starling_only

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
NS_VERSION = "jabber:iq:version"
MAM_NAMESPACES = ["urn:xmpp:mam:0", "urn:xmpp:mam:1", "urn:xmpp:mam:2"]  # MAM.NAMESPACES
RESOURCE = "ComplianceTester"  # AbstractTestSuite.run: login(local, password, "ComplianceTester")
TIMEOUT = 10  # the Java waits 10 s (getResult(10, SECONDS)) or Babbler's default

DOMAIN = "localhost"
TURN_SECRET = "compliance-turn-secret"


# --------------------------------------------------------------------------- server

def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    """One Starling configured like a production deployment (see the module docstring)."""
    workdir = str(tmp_path_factory.mktemp("compliance"))
    ca_dir = os.path.join(workdir, "ca")
    os.makedirs(ca_dir)
    ca = CertAuthority(ca_dir)
    # A deployment's certificate (like one from a public CA): the domain and its services.
    crt, key = ca.issue(DOMAIN, san=",".join(f"DNS:{n}" for n in (
        DOMAIN, f"conference.{DOMAIN}", f"upload.{DOMAIN}", f"proxy.{DOMAIN}", f"pubsub.{DOMAIN}")))
    upload_port, proxy_port = free_port(), free_port()
    extra = "\n".join([
        "[upload]",
        "enabled = true",
        'bind = "127.0.0.1"',
        f"port = {upload_port}",
        f'public_url = "https://127.0.0.1:{upload_port}"',
        "",
        "[proxy65]",
        "enabled = true",
        'bind = "127.0.0.1"',
        f"port = {proxy_port}",
        'host = "127.0.0.1"',
        "",
        "[push]",
        "enabled = true",
        "",
        "[mam]",
        "enabled = true",
        "",
        "[sm]",
        "enabled = true",
        "",
        "[muc]",
        "enabled = true",
        "",
        "[contact]",
        'abuse = ["mailto:abuse@{domain}", "xmpp:abuse@{domain}"]',
        'security = ["mailto:security@{domain}"]',
        'support = ["xmpp:support@{domain}"]',
        "",
        "[tls]",
        f"certs = [{{ domain = {_toml_str(DOMAIN)}, cert = {_toml_str(crt)}, key = {_toml_str(key)} }}]",
        "",
        "[[external_services]]",
        f'host = "turn.{DOMAIN}"',
        "port = 3478",
        'type = "stun"',
        'transport = "udp"',
        "",
        "[[external_services]]",
        f'host = "turn.{DOMAIN}"',
        "port = 3478",
        'type = "turn"',
        'transport = "udp"',
        "restricted = true",
        f'secret = "{TURN_SECRET}"',
        "",
        "[[external_services]]",
        f'host = "turn.{DOMAIN}"',
        "port = 5349",
        'type = "turns"',
        'transport = "tcp"',
        "restricted = true",
        f'secret = "{TURN_SECRET}"',
        "",
    ])
    s = StarlingServer(workdir, extra_toml=extra)
    s.ca_file = ca.crt
    s.upload_port, s.proxy_port = upload_port, proxy_port
    s.start()
    deadline = time.monotonic() + 20
    for port in (upload_port, proxy_port):
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    s.stop()
                    pytest.fail(f"listener on {port} did not open:\n" + s.log_tail())
                time.sleep(0.2)
    yield s
    s.stop()


# --------------------------------------------------------------------------- the client side

class Failed(Exception):
    """What makes a Java test return FAILED: a stanza error, no answer, a broken stream."""


class Outcome:
    def __init__(self, passed: bool, evidence: str):
        self.passed = passed
        self.evidence = evidence

    def __repr__(self):
        return ("PASSED" if self.passed else "FAILED") + ": " + self.evidence


FEATURES_RE = r"<stream:features/>|<stream:features[ >].*?</stream:features>"


def wire(c, el: ET.Element) -> str:
    """The XML of first-level element ``el`` as the server wrote it (from the client's log of
    received bytes), for failure messages; ElementTree's rendering when it cannot be found."""
    text = b"".join(c.log).decode("utf-8", "replace")
    iid, name = el.get("id"), local(el.tag)
    if iid:
        for quote in ("'", '"'):
            k = text.rfind(f"id={quote}{iid}{quote}")
            if k < 0:
                continue
            start = text.rfind("<" + name, 0, k)
            head_end = text.find(">", k)
            if start < 0 or head_end < 0:
                break
            if text[head_end - 1] == "/":
                return text[start:head_end + 1]
            end = text.find(f"</{name}>", head_end)
            if end >= 0:
                return text[start:end + len(name) + 3]
    return tostring(el)


class Session:
    """The suite's XmppClient: connect (STARTTLS), SCRAM login, bind ``ComplianceTester``; every
    ``<stream:features/>`` of the connection is kept (StreamFeaturesManager)."""

    def __init__(self, server, user=None, password=None):
        if user is None:
            _, user, password = server.new_user("ct")
        self.server = server
        self.domain = server.domain
        self.bare = f"{user}@{self.domain}"
        self.features_seen: list[ET.Element] = []
        c = server.client(timeout=TIMEOUT)
        c.connect()
        self.features_seen.append(c.open_stream())
        if not c.tls:
            self.features_seen.append(c.starttls())
        c.auth_scram(user, password)
        self.features_seen.append(c.open_stream())
        c.bind(RESOURCE)
        self.c = c
        self.jid = c.jid
        received = b"".join(c.log).decode("utf-8", "replace")
        raw = re.findall(FEATURES_RE, received, re.S)
        if len(raw) != len(self.features_seen):
            raw = [tostring(f) for f in self.features_seen]
        self.features_raw = raw

    def close(self):
        self.c.close()

    # -- StreamFeaturesManager.getFeatures().containsKey(X.class)
    def stream_feature(self, ns: str, name: str) -> Outcome:
        for f, raw in zip(self.features_seen, self.features_raw):
            if f.find(q(ns, name)) is not None:
                return Outcome(True, raw)
        return Outcome(False, f"no <{name} xmlns='{ns}'/> child in any of the connection's "
                       "stream features: " + " | ".join(self.features_raw))

    # -- IQ round trip; a stanza error or no answer is an XmppException
    def query(self, type_: str, payload: str, to=None) -> ET.Element:
        try:
            r = self.c.iq(type_, payload, to=to, timeout=TIMEOUT)
        except (XMPPTimeout, StreamClosed) as e:
            raise Failed(f"no answer to {payload} at {to}: {e}")
        if r.get("type") != "result":
            raise Failed(f"{payload} to {to} answered {wire(self.c, r)}")
        return r

    def disco_info(self, jid: str) -> "Info":
        r = self.query("get", f"<query xmlns='{NS_INFO}'/>", to=jid)
        info = r.find(q(NS_INFO, "query"))
        if info is None:
            raise Failed(f"disco#info result without <query/>: {tostring(r)}")
        return Info(info, wire(self.c, r))

    def disco_items(self, jid: str) -> tuple:
        """([item JIDs], raw answer)."""
        r = self.query("get", f"<query xmlns='{NS_ITEMS}'/>", to=jid)
        items = r.find(q(NS_ITEMS, "query"))
        if items is None:
            raise Failed(f"disco#items result without <query/>: {wire(self.c, r)}")
        return [i.get("jid") for i in items.findall(q(NS_ITEMS, "item"))], wire(self.c, r)


class Info:
    """A disco#info answer: its ``<query/>`` and the raw ``<iq/>`` (for failure messages)."""

    def __init__(self, query: ET.Element, raw: str):
        self.query = query
        self.raw = raw

    def findall(self, path):
        return self.query.findall(path)


def features_of(info) -> set:
    return {f.get("var") for f in info.findall(q(NS_INFO, "feature"))}


def identities_of(info) -> list:
    return [(i.get("category") or "", i.get("type") or "") for i in info.findall(q(NS_INFO, "identity"))]


def forms_of(info) -> list:
    return info.findall(q(NS_DATA, "x"))


def find_field(form: ET.Element, var: str):
    """DataForm.findField(var)."""
    for f in form.findall(q(NS_DATA, "field")):
        if f.get("var") == var:
            return f
    return None


def has_anyone(needles, haystack) -> bool:
    """TestUtils.hasAnyone."""
    return any(n in haystack for n in needles)


# --------------------------------------------------------------------------- the abstract tests

def disco_test(s: Session, namespaces, check_on_server: bool) -> Outcome:
    """AbstractDiscoTest.run: disco#info of the domain (checkOnServer) or of the account's bare
    JID; PASSED when any of the namespaces is a feature; an error is FAILED."""
    target = s.domain if check_on_server else s.bare
    try:
        info = s.disco_info(target)
    except Failed as e:
        return Outcome(False, str(e))
    feats = features_of(info)
    if has_anyone(namespaces, feats):
        return Outcome(True, info.raw)
    return Outcome(False, f"none of {namespaces} in the disco#info of {target}: {info.raw}")


def service_test(s: Session, namespace: str) -> Outcome:
    """AbstractServiceTest.run (newest: the items of the domain, then the domain itself, each
    asked for disco#info; an item whose disco#info fails is skipped; PASSED when one has the
    feature; a failed disco#items is FAILED)."""
    try:
        items, raw_items = s.disco_items(s.domain)
    except Failed as e:
        return Outcome(False, str(e))
    seen = [raw_items]
    for jid in items + [s.domain]:
        try:
            info = s.disco_info(jid)
        except Failed as e:
            seen.append(str(e))
            continue
        if namespace in features_of(info):
            return Outcome(True, info.raw)
        seen.append(info.raw)
    return Outcome(False, f"no item of {s.domain} (nor the domain) has feature {namespace}: "
                   + " | ".join(seen))


# --------------------------------------------------------------------------- the tests, as the Java

def entity_capabilities(s: Session) -> Outcome:
    # EntityCapabilities extends AbstractStreamFeatureTest: rocks.xmpp EntityCapabilities
    return s.stream_feature("http://jabber.org/protocol/caps", "c")


def pep(s: Session) -> Outcome:
    try:
        info = s.disco_info(s.bare)
    except Failed as e:
        return Outcome(False, str(e))
    for cat, typ in identities_of(info):
        if typ.lower() == "pep" and cat.lower() == "pubsub":
            return Outcome(True, info.raw)
    return Outcome(False, f"no identity pubsub/pep for {s.bare}: {info.raw}")


def roster_versioning(s: Session) -> Outcome:
    return s.stream_feature("urn:xmpp:features:rosterver", "ver")


def message_carbons(s: Session) -> Outcome:
    return disco_test(s, ["urn:xmpp:carbons:2"], True)


def blocking(s: Session) -> Outcome:
    return disco_test(s, ["urn:xmpp:blocking"], True)


def multi_user_chat(s: Session) -> Outcome:
    return service_test(s, NS_MUC)


def stream_management(s: Session) -> Outcome:
    # rocks.xmpp.extensions.sm.model.StreamManagement: <sm xmlns='urn:xmpp:sm:3'/>
    return s.stream_feature("urn:xmpp:sm:3", "sm")


def mam(s: Session) -> Outcome:
    # newest MAM: NAMESPACES mam:0/1/2, checkOnServer() false (the account)
    return disco_test(s, MAM_NAMESPACES, False)


def csi(s: Session) -> Outcome:
    # newest CSI extends AbstractStreamFeatureTest: eu.siacs ClientStateIndication, <csi/>
    # in urn:xmpp:csi:0 (an early version asked disco for urn:xmpp:carbons:2 by mistake)
    return s.stream_feature("urn:xmpp:csi:0", "csi")


def http_upload(s: Session) -> Outcome:
    # the rewrite's namespace (the eu.siacs source's "urn:xmpp:http:upload" is XEP-0363 < 0.3.0)
    return service_test(s, "urn:xmpp:http:upload:0")


def proxy65(s: Session) -> Outcome:
    # Socks5ByteStream.NAMESPACE
    return service_test(s, "http://jabber.org/protocol/bytestreams")


def push(s: Session) -> Outcome:
    return disco_test(s, ["urn:xmpp:push:0"], False)


def offline_storage(s: Session) -> Outcome:
    return disco_test(s, ["msgoffline"], True)


def omemo(s: Session) -> Outcome:
    """newest eu.siacs OMEMO: publish-options or the Conversations whitelist feature on the
    account, and a pubsub/pep identity."""
    try:
        info = s.disco_info(s.bare)
    except Failed as e:
        return Outcome(False, str(e))
    feats = features_of(info)
    if ("http://jabber.org/protocol/pubsub#publish-options" not in feats
            and "eu.siacs.conversations.axolotl.whitelisted" not in feats):
        return Outcome(False, f"neither pubsub#publish-options nor "
                       f"eu.siacs.conversations.axolotl.whitelisted for {s.bare}: {info.raw}")
    for cat, typ in identities_of(info):
        if typ.lower() == "pep" and cat.lower() == "pubsub":
            return Outcome(True, info.raw)
    return Outcome(False, f"no identity pubsub/pep for {s.bare}: {info.raw}")


def abuse_contact(s: Session) -> Outcome:
    """AbuseContactTest: a form of the domain's disco#info with a field abuse-addresses that has
    at least one value."""
    try:
        info = s.disco_info(s.domain)
    except Failed as e:
        return Outcome(False, str(e))
    for form in forms_of(info):
        f = find_field(form, "abuse-addresses")
        if f is not None and f.findall(q(NS_DATA, "value")):
            return Outcome(True, info.raw)
    return Outcome(False, f"no abuse-addresses field with a value in {s.domain}'s disco#info: {info.raw}")


def discover_chat_services(s: Session) -> list:
    """MultiUserChatManager.discoverChatServices() of rocks.xmpp 0.7.x: the domain's items whose
    disco#info has the MUC feature, in order; a failed disco#info of any item fails the call."""
    items, _ = s.disco_items(s.domain)
    out = []
    for jid in items:
        if NS_MUC in features_of(s.disco_info(jid)):
            out.append(jid)
    return out


def mam_muc(s: Session) -> Outcome:
    """newest eu.siacs MamMuc: the first chat service, a room named by a random UUID entered
    under a random UUID nick (not waiting for the answer), its configuration form has a field
    ``mam`` (then destroyed, PASSED) or else its disco#info has a MAM namespace; the room is
    destroyed either way, a failed destroy is FAILED."""
    try:
        services = discover_chat_services(s)
        if not services:
            return Outcome(False, f"no chat service among the items of {s.domain}")
        room = f"{uuid.uuid4()}@{services[0]}"
        s.c.send_raw(f"<presence to='{room}/{uuid.uuid4()}'><x xmlns='{NS_MUC}'/></presence>")
        evidence = []
        try:
            r = s.query("get", f"<query xmlns='{NS_MUC_OWNER}'/>", to=room)
            evidence.append(wire(s.c, r))
            form = r.find(f"{q(NS_MUC_OWNER, 'query')}/{q(NS_DATA, 'x')}")
            if form is None:
                # findField on a null form: a NullPointerException, not caught by the test
                return Outcome(False, f"configuration form missing: {wire(s.c, r)}")
            if find_field(form, "mam") is not None:
                s.query("set", f"<query xmlns='{NS_MUC_OWNER}'><destroy/></query>", to=room)
                return Outcome(True, wire(s.c, r))
        except Failed as e:
            evidence.append(str(e))  # ExecutionException: ignored
        info = s.disco_info(room)
        has = has_anyone(MAM_NAMESPACES, features_of(info))
        evidence.append(info.raw)
        s.query("set", f"<query xmlns='{NS_MUC_OWNER}'><destroy/></query>", to=room)
        if has:
            return Outcome(True, info.raw)
        return Outcome(False, "no field 'mam' in the room's configuration form and none of "
                       f"{MAM_NAMESPACES} in its disco#info: " + " | ".join(evidence))
    except Failed as e:
        return Outcome(False, str(e))


def in_band_registration(s: Session) -> Outcome:
    """InBandRegistrationTest: a second, unauthenticated connection to the domain
    (XmppClient.create(domain).connect(): STARTTLS); registration supported (stream feature, else
    jabber:iq:register in the domain's disco#info), then the registration form fetched
    (``<iq type='get'><query xmlns='jabber:iq:register'/></iq>``) without an error."""
    c = s.server.client(timeout=TIMEOUT)
    try:
        c.connect()
        seen = [c.open_stream()]
        if not c.tls:
            seen.append(c.starttls())
        supported = any(f.find(q(NS_REGISTER_FEATURE, "register")) is not None for f in seen)
        evidence = re.findall(FEATURES_RE, b"".join(c.log).decode("utf-8", "replace"), re.S)
        if not supported:
            r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=s.domain, timeout=TIMEOUT)
            evidence.append(wire(c, r))
            if r.get("type") != "result":
                return Outcome(False, "no register stream feature, disco#info failed: "
                               + " | ".join(evidence))
            info = r.find(q(NS_INFO, "query"))
            if info is None or NS_REGISTER not in features_of(info):
                return Outcome(False, "registration not supported: " + " | ".join(evidence))
        iid = new_id("reg")
        c.send_raw(f"<iq type='get' id='{iid}'><query xmlns='{NS_REGISTER}'/></iq>")
        r = c.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, timeout=TIMEOUT,
                   what="registration form")
        evidence.append(wire(c, r))
        if r.get("type") == "result":
            return Outcome(True, wire(c, r))
        return Outcome(False, "getRegistration() failed: " + " | ".join(evidence))
    except (XMPPTimeout, StreamClosed) as e:
        return Outcome(False, f"{e}")
    finally:
        c.shutdown()


def _der_items(b: bytes) -> list:
    """The (tag, content) TLVs one after the other in DER ``b``."""
    out, i = [], 0
    while i < len(b):
        tag, n = b[i], b[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(b[i:i + k], "big")
            i += k
        out.append((tag, b[i:i + n]))
        i += n
    return out


OID_CN = bytes([0x55, 0x04, 0x03])                                       # 2.5.4.3
OID_SAN = bytes([0x55, 0x1D, 0x11])                                      # 2.5.29.17
OID_XMPP_ADDR = bytes([0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05])  # 1.3.6.1.5.5.7.8.5
OID_SRV_NAME = bytes([0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07])   # 1.3.6.1.5.5.7.8.7


def certificate_names(der: bytes) -> dict:
    """The subject CNs and the subjectAltName XmppAddrs, SRV-IDs and DNS names of a DER
    certificate (what XmppDomainVerifier reads through BouncyCastle)."""
    names = {"XMPPAddr": [], "SRV": [], "DNS": [], "CN": []}
    tbs = _der_items(_der_items(der)[0][1])[0][1]
    fields = _der_items(tbs)
    if fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    subject = fields[4][1]
    for _, rdn in _der_items(subject):
        for _, atv in _der_items(rdn):
            parts = _der_items(atv)
            if parts[0][1] == OID_CN:
                names["CN"].append(parts[1][1].decode("utf-8", "replace"))
    for tag, body in fields[6:]:
        if tag != 0xA3:  # [3] extensions
            continue
        for _, ext in _der_items(_der_items(body)[0][1]):
            parts = _der_items(ext)
            if parts[0][1] != OID_SAN:
                continue
            for gtag, gval in _der_items(_der_items(parts[-1][1])[0][1]):
                if gtag == 0x82:  # dNSName
                    names["DNS"].append(gval.decode("ascii", "replace"))
                elif gtag == 0xA0:  # otherName: type-id, [0] EXPLICIT value
                    on = _der_items(gval)
                    if len(on) >= 2 and on[1][0] == 0xA0:
                        vtag, v = _der_items(on[1][1])[0]
                        if vtag not in (0x0C, 0x16):  # UTF8String, IA5String
                            continue
                        if on[0][1] == OID_XMPP_ADDR:
                            names["XMPPAddr"].append(v.decode("utf-8", "replace"))
                        elif on[0][1] == OID_SRV_NAME:
                            names["SRV"].append(v.decode("utf-8", "replace"))
    return names


def xmpp_domain_verifier(domain: str, der: bytes):
    """eu.siacs.utils.XmppDomainVerifier.verify on the leaf certificate: an XmppAddr equal to
    the domain, an SRV-ID ``_xmpp-client.<domain>``, or a DNS name equal to it (``*.`` matching
    the domain without its first label); the CN counts only without any of the three."""
    names = certificate_names(der)
    domains = list(names["DNS"])
    if not names["XMPPAddr"] and not names["SRV"] and not domains:
        domains = list(names["CN"])
    if domain in names["XMPPAddr"] or ("_xmpp-client." + domain) in names["SRV"]:
        return True, names
    for entry in domains:
        if entry.startswith("*."):
            i = domain.find(".")
            if i != -1 and domain[i:] == entry[1:]:
                return True, names
        elif entry == domain:
            return True, names
    return False, names


def xmpp_over_tls(s: Session) -> Outcome:
    """XmppOverTls without its DNS step: the direct-TLS port an ``_xmpps-client._tcp`` record
    would name, SNI = the domain, a handshake with the default trust (the deployment CA) within
    the socket timeout of 1 s, and XmppDomainVerifier on the certificate."""
    server = s.server
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SSLSocketFactory.getDefault(): no endpoint identification
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=server.ca_file)
    try:
        with socket.create_connection((server.host, server.tls_port), timeout=1) as raw:
            with ctx.wrap_socket(raw, server_hostname=s.domain) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        return Outcome(False, f"direct TLS to {server.host}:{server.tls_port} (SNI {s.domain}): {e!r}")
    ok, names = xmpp_domain_verifier(s.domain, der)
    if not ok:
        return Outcome(False, f"certificate names {names}")
    return stream_answer_over_tls(s, ctx)


# The header the rewrite's XmppOverTls writes, as it writes it: the default namespace's value
# misses its closing quote, so the header is not well-formed.
REWRITE_HEADER = ("<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
                  "xmlns='jabber:client xmlns:stream='http://etherx.jabber.org/streams'>")


def stream_answer_over_tls(s: Session, ctx) -> Outcome:
    """The rewrite's step after the handshake (ALPN ``xmpp-client``): it writes its header and
    wants the first 21 characters of the answer, within 1 s, to start with ``<?xml``. An XML
    stream answers a header it cannot parse with its own header and a stream error (RFC 6120
    §4.9.1.1, §4.9.3.13 not-well-formed), at once rather than at the handshake timeout."""
    server = s.server
    ctx.set_alpn_protocols(["xmpp-client"])
    try:
        with socket.create_connection((server.host, server.tls_port), timeout=1) as raw:
            with ctx.wrap_socket(raw, server_hostname=s.domain) as tls:
                tls.sendall(REWRITE_HEADER.format(domain=s.domain).encode())
                got = b""
                deadline = time.monotonic() + 1
                while len(got) < 21 and time.monotonic() < deadline:
                    chunk = tls.recv(21 - len(got))
                    if not chunk:
                        break
                    got += chunk
    except (OSError, ssl.SSLError) as e:
        return Outcome(False, f"direct TLS stream to {server.host}:{server.tls_port}: {e!r}")
    return Outcome(got.startswith(b"<?xml"), f"first bytes of the answer within 1 s: {got!r}")


# --------------------------------------------------------------------------- suites

# Java class -> (port, name printed by getName())
TESTS = {
    "EntityCapabilities": (entity_capabilities, "XEP-0115: Entity Capabilities"),
    "PEP": (pep, "XEP-0163: Personal Eventing Protocol"),
    "RosterVersioning": (roster_versioning, "Roster Versioning"),
    "MessageCarbons": (message_carbons, "XEP-0280: Message Carbons"),
    "Blocking": (blocking, "XEP-0191: Blocking Command"),
    "MultiUserChat": (multi_user_chat, "XEP-0045: Multi-User Chat"),
    "StreamManagement": (stream_management, "XEP-0198: Stream Management"),
    "MAM": (mam, "XEP-0313: Message Archive Management"),
    "CSI": (csi, "XEP-0352: Client State Indication"),
    "HttpUpload": (http_upload, "XEP-0363: HTTP File Upload"),
    "Proxy65": (proxy65, "XEP-0065: SOCKS5 Bytestreams (Proxy)"),
    "Push": (push, "XEP-0357: Push Notifications"),
    "XmppOverTls": (xmpp_over_tls, "XEP-0368: SRV records for XMPP over TLS"),
    "OMEMO": (omemo, "XEP-0384: OMEMO Encryption"),
    "MamMuc": (mam_muc, "XEP-0313: Message Archive Management (MUC)"),
    "OfflineStorage": (offline_storage, "XEP-0160: Best Practices for Handling Offline Messages"),
    "AbuseContactTest": (abuse_contact, "XEP-0157: Contact Addresses for XMPP Services"),
    "InBandRegistrationTest": (in_band_registration, "XEP-0077: In-Band Registration"),
}

CORE = ["EntityCapabilities", "PEP"]
IM = CORE + ["RosterVersioning", "MessageCarbons", "Blocking", "MultiUserChat", "StreamManagement", "MAM"]
MOBILE = CORE + ["StreamManagement", "CSI", "Push"]
CONVERSATIONS = IM + ["CSI", "HttpUpload", "Proxy65", "Push", "XmppOverTls", "OMEMO", "MamMuc"]


def run_one(server, java_class: str) -> Outcome:
    s = Session(server)
    try:
        return TESTS[java_class][0](s)
    finally:
        s.close()


def check(server, java_class: str) -> None:
    """Runs one Java test on a session of its own; a FAILED result fails the pytest test with
    what the server sent."""
    o = run_one(server, java_class)
    if not o.passed:
        pytest.fail(f"{java_class} ({TESTS[java_class][1]}): FAILED\n{o.evidence}", pytrace=False)


def run_suite(server, name: str, tests: list, pre_hook=False) -> str:
    """AbstractTestSuite.run + result(): one session, each test run (twice, the second result
    kept), PASSED when no test FAILED. Returns the report ComplianceTester prints; fails the
    pytest test when the suite result is FAILED."""
    s = Session(server)
    lines = [f"Use compliance suite '{name}' to test {server.domain}", ""]
    results = {}
    try:
        if pre_hook:  # Conversations.preHook: printServerVersion (errors ignored)
            try:
                r = s.query("get", f"<query xmlns='{NS_VERSION}'/>", to=s.domain)
                v = r.find(q(NS_VERSION, "query"))
                lines.append(f"Server is {v.findtext(q(NS_VERSION, 'name'))} "
                             f"{v.findtext(q(NS_VERSION, 'version'))}")
            except Failed:
                pass
        for cls in tests:
            fn, title = TESTS[cls]
            first = fn(s)
            second = fn(s)
            lines.append(f"running {title}…\t\t{'PASSED' if first.passed else 'FAILED'}")
            results[cls] = second
    finally:
        s.close()
    passed = sum(o.passed for o in results.values())
    lines.append(f"passed {passed}/{len(results)}")
    failed = {k: o for k, o in results.items() if not o.passed}
    verdict = "PASSED" if not failed else "FAILED"
    lines += ["", f"{name}: {verdict}"]
    report = "\n".join(lines)
    if failed:
        pytest.fail(report + "\n\n" + "\n".join(f"{k}: {o.evidence}" for k, o in failed.items()),
                    pytrace=False)
    return report


# --------------------------------------------------------------------------- one test per class

def test_entity_capabilities(prod):
    """EntityCapabilities (XEP-0115 §6.3, "Stream Feature"): a ``<c
    xmlns='http://jabber.org/protocol/caps'/>`` element in the server's stream features (any of
    the connection's ``<stream:features/>``). Setting: none (Starling always sends it)."""
    check(prod, "EntityCapabilities")


def test_pep(prod):
    """PEP (XEP-0163, account owner service discovery): the account's bare JID answers disco#info with an identity of
    category ``pubsub`` and type ``pep`` (case-insensitive). Setting: none ([pep] defaults)."""
    check(prod, "PEP")


def test_roster_versioning(prod):
    """RosterVersioning (RFC 6121 §2.6.1): the ``<ver xmlns='urn:xmpp:features:rosterver'/>``
    stream feature. Setting: none."""
    check(prod, "RosterVersioning")


def test_message_carbons(prod):
    """MessageCarbons (XEP-0280, discovering support): the feature ``urn:xmpp:carbons:2`` in the domain's
    disco#info. Setting: none."""
    check(prod, "MessageCarbons")


def test_blocking(prod):
    """Blocking (XEP-0191, discovering support): the feature ``urn:xmpp:blocking`` in the domain's disco#info.
    Setting: none."""
    check(prod, "Blocking")


def test_multi_user_chat(prod):
    """MultiUserChat (XEP-0045 §6.1): an item of the domain's disco#items (or the domain itself)
    whose disco#info has the feature ``http://jabber.org/protocol/muc`` (AbstractServiceTest).
    Setting: ``[muc] enabled`` (default true)."""
    check(prod, "MultiUserChat")


def test_stream_management(prod):
    """StreamManagement (XEP-0198 §2): the ``<sm xmlns='urn:xmpp:sm:3'/>`` stream feature.
    Setting: ``[sm] enabled`` (default true)."""
    check(prod, "StreamManagement")


def test_mam(prod):
    """MAM (XEP-0313, discovering support; newest version: on the account): one of ``urn:xmpp:mam:0``,
    ``urn:xmpp:mam:1``, ``urn:xmpp:mam:2`` in the disco#info of the account's bare JID.
    Setting: ``[mam] enabled`` (default true)."""
    check(prod, "MAM")


def test_csi(prod):
    """CSI (XEP-0352, stream feature): the ``<csi xmlns='urn:xmpp:csi:0'/>`` stream feature. Setting: none."""
    check(prod, "CSI")


def test_http_upload(prod):
    """HttpUpload (XEP-0363 §3): an item of the domain (or the domain itself) whose disco#info
    has the feature ``urn:xmpp:http:upload:0`` (AbstractServiceTest), as the rewrite behind
    compliance.conversations.im asks (Prosody 0.12's upload service advertises only that one
    and passes there). The stored ``eu.siacs`` source asks for ``urn:xmpp:http:upload``, the
    namespace of XEP-0363 before 0.3.0 (2017), whose protocol (no headers, no slot form)
    Starling does not speak. Setting: ``[upload] enabled = true``."""
    check(prod, "HttpUpload")


def test_proxy65(prod):
    """Proxy65 (XEP-0065, discovering proxies): an item of the domain (or the domain itself) whose disco#info has
    the feature ``http://jabber.org/protocol/bytestreams`` (AbstractServiceTest). Setting:
    ``[proxy65] enabled = true``."""
    check(prod, "Proxy65")


def test_push(prod):
    """Push (XEP-0357 §5): the feature ``urn:xmpp:push:0`` in the disco#info of the account's
    bare JID. Setting: ``[push] enabled`` (default true)."""
    check(prod, "Push")


def test_offline_storage(prod):
    """OfflineStorage (XEP-0160, advertised as the ``msgoffline`` feature of XEP-0013 / the
    XEP-0030 registry): ``msgoffline`` in the domain's disco#info. In no suite. Setting: none."""
    check(prod, "OfflineStorage")


def test_omemo(prod):
    """OMEMO (XEP-0384's need for XEP-0060 §7.1.5 publish-options on PEP, newest eu.siacs
    version): the account's disco#info has ``http://jabber.org/protocol/pubsub#publish-options``
    (or Conversations' ``eu.siacs.conversations.axolotl.whitelisted``) and an identity
    pubsub/pep. Setting: none ([pep] defaults)."""
    check(prod, "OMEMO")


def test_mam_muc(prod):
    """MamMuc (XEP-0313 on XEP-0045 rooms): the first MUC service (rocks.xmpp 0.7
    discoverChatServices, which fails when one domain item's disco#info fails), a new room
    (random UUID) entered under a random UUID nick; PASSED when the room's configuration form
    has a field ``mam`` or the room's disco#info has urn:xmpp:mam:0/1/2; the room is destroyed
    (an error there is FAILED). Setting: ``[muc] enabled`` and ``[mam] enabled``."""
    check(prod, "MamMuc")


def test_abuse_contact_test(prod):
    """AbuseContactTest (XEP-0157, in a XEP-0128 form ``http://jabber.org/network/serverinfo``): a
    form in the domain's disco#info with a field ``abuse-addresses`` that has a value. In no
    suite. Setting: ``[contact] abuse`` (default ``mailto:abuse@{domain}``; set here)."""
    check(prod, "AbuseContactTest")


def test_in_band_registration_test(prod):
    """InBandRegistrationTest (XEP-0077: stream feature, entity registers with a host): an unauthenticated connection (STARTTLS)
    sees the ``<register xmlns='http://jabber.org/features/iq-register'/>`` stream feature (or
    ``jabber:iq:register`` in the domain's disco#info), and ``<iq type='get'><query
    xmlns='jabber:iq:register'/></iq>`` is answered with a result. In no suite. Setting:
    ``[registration] enabled = true``."""
    check(prod, "InBandRegistrationTest")


def test_xmpp_over_tls(prod):
    """XmppOverTls (XEP-0368), the part decided by the server: a direct-TLS connection to
    the port an ``_xmpps-client._tcp`` SRV record would name, with SNI = the domain, completes
    the handshake under the default trust and the certificate passes XmppDomainVerifier for the
    domain; then, as the rewrite behind compliance.conversations.im does it (ALPN
    ``xmpp-client``), its own (not well-formed) stream header is answered within 1 s with text
    starting ``<?xml``. The SRV lookup itself is the deployment's DNS and is not tested (module
    docstring). Settings: ``[c2s] tls_port`` (here ``--c2s-tls-port``) and ``[tls] certs``."""
    check(prod, "XmppOverTls")


# --------------------------------------------------------------------------- the suites

def test_suite_advanced_server_core(prod):
    """The "Advanced Server Core Compliance Suite" (AdvancedServerCore: EntityCapabilities,
    PEP) on one session: PASSED when no test failed."""
    run_suite(prod, "Advanced Server Core Compliance Suite", CORE)


def test_suite_advanced_server_im(prod):
    """The "Advanced Server IM Compliance Suite" (AdvancedServerIM: Core + RosterVersioning,
    MessageCarbons, Blocking, MultiUserChat, StreamManagement, MAM)."""
    run_suite(prod, "Advanced Server IM Compliance Suite", IM)


def test_suite_advanced_server_mobile(prod):
    """The "Advanced Server Mobile Compliance Suite" (AdvancedServerMobile: Core +
    StreamManagement, CSI, Push)."""
    run_suite(prod, "Advanced Server Mobile Compliance Suite", MOBILE)


def test_suite_conversations(prod):
    """The "Conversations Compliance Suite" (Conversations: AdvancedServerIM + CSI, HttpUpload,
    Proxy65, Push, XmppOverTls, OMEMO, MamMuc; preHook prints the server's XEP-0092 version), the
    result compliance.conversations.im shows as the suite's."""
    run_suite(prod, "Conversations Compliance Suite", CONVERSATIONS, pre_hook=True)
