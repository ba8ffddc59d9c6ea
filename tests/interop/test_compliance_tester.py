"""Port of the Conversations "Compliance Tester" to raw XML against Starling, in its two
generations:

1. ``eu.siacs.compliance`` (github.com/iNPUTmice/ComplianceTester, Java): the command-line
   checker with suites (Conversations, Advanced Server IM/Mobile/Core) that ejabberd and Prosody
   deployments used to be measured with. One test per class of
   ``src/main/java/eu/siacs/compliance/tests`` and one per suite of
   ``src/main/java/eu/siacs/compliance/suites``, run the way ``ComplianceTester.main`` runs it.
2. ``im.conversations.compliance`` ("caas", compliance-as-a-service; codeberg.org/iNPUTmice/caas,
   stored copies read: github.com/iNPUTmice/caas, the forks guusdk/caas (head b5075c4) and
   razqqm/caas (head b1f9789, a later copy of the codeberg tree, the only one read with the
   newest test classes PepNativeBookmarks, OccupantId, MessageDisplayedSynchronization and
   PubSubServerInformation; its other changes seen are web-side: i18n, templates)): the rewrite
   that compliance.conversations.im runs today. Every class of
   ``caas-app/src/main/java/im/conversations/compliance/xmpp/tests`` is ported (one pytest test
   per class, named after the Java class; ``CAAS`` below lists them with their
   ``@ComplianceTest`` short_name / full_name / informational flag), and the site's score is a
   test of its own (``test_caas_score``, ``test_caas_recommended``). Two informational classes
   run only inside those (shown, not counted), not as tests of their own, because Starling does
   not claim what they look for: CarbonsRules (``urn:xmpp:carbons:rules:0`` on the domain, by
   which XEP-0280 §6.2 makes every §6.1 rule REQUIRED, including copying an error "sent in
   response to" an eligible message, which needs per-message tracking Starling does not do) and
   PubSubServerInformation (XEP-0485, an administrator's opt-in to publish the domain's
   connections, which Starling has no setting for).

How the eu.siacs Java runs (``ComplianceTester``, ``TestSuiteFactory``,
``suites/AbstractTestSuite``): one Babbler (rocks.xmpp 0.7.4) ``XmppClient`` per suite connects
(STARTTLS), logs in with SCRAM and binds the resource ``ComplianceTester``; every test of the
suite then runs on that one session. A test's ``run()`` returns PASSED or FAILED (an
``XmppException``, a stanza error or a timeout is FAILED); a suite is PASSED when none of its
tests FAILED (``AbstractTestSuite.result``; the Java runs each test twice and keeps the second
result, done here too). Library calls, as
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

eu.siacs sources read: the newest versions of each file that could be read. Conversations suite =
AdvancedServerIM + CSI, HttpUpload, Proxy65, Push, XmppOverTls, OMEMO, MamMuc (the last three
added in 2017-2018; the order of MamMuc after OMEMO is the one of published 15-test reports);
AdvancedServerIM = AdvancedServerCore + RosterVersioning, MessageCarbons, Blocking, MultiUserChat,
StreamManagement, MAM; AdvancedServerMobile = AdvancedServerCore + StreamManagement, CSI, Push;
AdvancedServerCore = EntityCapabilities, PEP. ``EverythingTestSuite`` (an early suite no longer run
by ``main``) is not ported. AbuseContactTest, InBandRegistrationTest and OfflineStorage are in no
eu.siacs suite. Two eu.siacs classes in no suite are not ported because they look in the wrong
place by the XEPs: PushOnServer (``urn:xmpp:push:0`` in the domain's disco#info; XEP-0357 §5 and
the Java's own comment put it on the account, where Push finds it) and Jingle
(``urn:xmpp:jingle:1`` on the domain: a server is not a Jingle endpoint, XEP-0166); the rewrite
has neither.

How the rewrite runs (``xmpp/TestExecutor.executeTestsFor``, ``PeriodicTestRunner``): one Babbler
0.8.2 ``XmppClient`` per server (default response timeout 10 s, no initial presence, its own
caps manager off) connects with STARTTLS, logs in (SCRAM) with the resource ``caas`` and runs
every class of ``Tests.getTests()`` (generated from the ``@ComplianceTest`` annotations) once,
on that session. The site (``web/WebUtils.addResultStats``) scores a server on the tests that are
not ``informational``: "Specifications compliant: pass*100/total %"; the servers it recommends
(``InternalDBOperations.getCompliantServers``) pass every non-informational test and xep0077.
Babbler 0.8 differs from 0.7 where it matters here: ``discoverServices(feature)`` ignores an item
whose disco#info fails (``handle`` returns an empty list for it), ``discoverChatServices()`` is
``discoverServices(Identity.conferenceText())`` (items with an identity ``conference``/``text``,
compared exactly), and ``ChatRoom.enter`` waits for the room's self-presence (status 110 / 210 or
from the nick).

Where the rewrite's check differs from the eu.siacs one (OMEMO, MamMuc, InBandRegistrationTest,
XmppOverTls), the pytest test of the class follows the rewrite and says so; the eu.siacs suites
keep running the eu.siacs checks (they are that tester's suites). Classes of the rewrite that
are no longer in its newest tree (ContactTest, Vcard/VcardTest, Bookmark2Conversion, replaced by
PepNativeBookmarks under the same short_name: the site's ``toMap`` by short_name cannot hold both)
are ported as tests of their own and kept out of the score; the newest tree is formatted by
spotless (google-java-format AOSP, checked at compile), which those three files are not.

Public DNS: XmppOverTls resolves ``_xmpps-client._tcp.<domain>`` and AlternateConnections fetches
``https://<domain>/.well-known/host-meta`` (port 443); neither lookup nor port 443 exists on
loopback. What the checker decides from the server itself is ported: XmppOverTls connects to
the port such a record would name (Starling's ``--c2s-tls-port``), AlternateConnections fetches
host-meta from the HTTPS listener a deployment puts on 443 (``[bosh]``, which serves host-meta and
lists itself and ``[websocket]``). HTTP clients here resolve names under the served domain that
the machine cannot resolve (``upload.localhost``) to 127.0.0.1, the stand-in for the deployment's
DNS, and verify certificates against the deployment CA (a test CA standing in for a public one)
with host-name verification, as OkHttp does.

HttpUpload: the stored ``eu.siacs...tests.HttpUpload`` asks for ``urn:xmpp:http:upload``
(XEP-0363 before 0.3.0, 2017); the rewrite asks for ``urn:xmpp:http:upload:0``, which is what is
ported (see the test).

The server is configured like a production deployment that enables what the testers look for
where Starling has a setting: ``[upload]`` (XEP-0363, default ``public_url``: for the
single-label ``localhost``, ``https://localhost:<port>``), ``[proxy65]`` (XEP-0065), ``[push]``,
``[mam]``, ``[sm]``, ``[muc]`` (these four on by default, set explicitly), ``[registration]``
(XEP-0077), ``[contact]`` (XEP-0157 abuse / security / support addresses),
``[[external_services]]`` (XEP-0215 STUN/TURN), ``[bosh]`` and ``[websocket]`` (XEP-0206 / RFC
7395 and their XEP-0156 host-meta) and ``[tls] certs`` (a CA-issued certificate for the domain,
as a deployment has). Starling-only (the config keys).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import select
import socket
import ssl
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

import pytest

from conftest import StarlingServer, free_port
from pki import CertAuthority
from rawxmpp import C, StreamClosed, XMPPTimeout, local, new_id, q, stanza_error, tostring

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
RESOURCE_CAAS = "caas"  # the rewrite's TestExecutor: login(local, password, "caas")
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
    bosh_port, ws_port = free_port(), free_port()
    extra = "\n".join([
        "[upload]",
        "enabled = true",
        'bind = "127.0.0.1"',
        f"port = {upload_port}",  # slots: the default public_url (https://localhost:<port>)
        "",
        "[bosh]",
        "enabled = true",
        f"port = {bosh_port}",
        "tls = true",
        "",
        "[websocket]",
        "enabled = true",
        f"port = {ws_port}",
        "tls = true",
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
    s.bosh_port, s.ws_port = bosh_port, ws_port
    s.start()
    deadline = time.monotonic() + 20
    for port in (upload_port, proxy_port, bosh_port, ws_port):
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
    """The suite's XmppClient: connect (STARTTLS), SCRAM login, bind ``ComplianceTester`` (the
    rewrite: ``caas``), no initial presence; every ``<stream:features/>`` of the connection is kept
    (StreamFeaturesManager)."""

    def __init__(self, server, user=None, password=None, resource=RESOURCE):
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
        c.bind(resource)
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


def omemo_siacs(s: Session) -> Outcome:
    """newest eu.siacs OMEMO (the Conversations suite's; the rewrite's is ``omemo``):
    publish-options or the Conversations whitelist feature on the account, and a pubsub/pep
    identity."""
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


def mam_muc_siacs(s: Session) -> Outcome:
    """newest eu.siacs MamMuc (the Conversations suite's; the rewrite's is ``mam_muc``): the
    first chat service, a room named by a random UUID entered under a random UUID nick (not
    waiting for the answer), its configuration form has a field ``mam`` (then destroyed,
    PASSED) or else its disco#info has a MAM namespace; the room is destroyed either way, a
    failed destroy is FAILED."""
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


def in_band_registration_siacs(s: Session) -> Outcome:
    """eu.siacs InBandRegistrationTest (the rewrite's is ``in_band_registration``): a second,
    unauthenticated connection to the domain (XmppClient.create(domain).connect(): STARTTLS);
    registration supported (stream feature, else jabber:iq:register in the domain's
    disco#info), then the registration form fetched (``<iq type='get'><query
    xmlns='jabber:iq:register'/></iq>``) without an error."""
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


def tls_context(server, alpn=None) -> ssl.SSLContext:
    """SSLSocketFactory.getDefault(): the default trust (here the deployment CA), no endpoint
    identification (XmppDomainVerifier does it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=server.ca_file)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def xmpp_over_tls_siacs(s: Session) -> Outcome:
    """eu.siacs XmppOverTls without its DNS step (the Conversations suite's): the direct-TLS port
    an ``_xmpps-client._tcp`` record would name, SNI = the domain, a handshake with the default
    trust (the deployment CA) within the socket timeout of 1 s, and XmppDomainVerifier on the
    certificate."""
    server = s.server
    try:
        with socket.create_connection((server.host, server.tls_port), timeout=1) as raw:
            with tls_context(server).wrap_socket(raw, server_hostname=s.domain) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        return Outcome(False, f"direct TLS to {server.host}:{server.tls_port} (SNI {s.domain}): {e!r}")
    ok, names = xmpp_domain_verifier(s.domain, der)
    if not ok:
        return Outcome(False, f"certificate names {names}")
    return Outcome(True, f"certificate names {names}")


# The stream header the rewrite's XmppOverTls writes (caas b5075c4), as it writes it.
REWRITE_HEADER = ("<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' "
                  "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
# The header of an earlier version of it (pravi/caas 7883678), as it writes it: ``<stream>``
# without its prefix, and the default namespace's value misses its closing quote, so the header is
# not well-formed.
EARLIER_HEADER = ("<?xml version='1.0'?><stream to='{domain}' version='1.0' xml:lang='en' "
                  "xmlns='jabber:client xmlns:stream='http://etherx.jabber.org/streams'>")


def read_once_21(tls) -> bytes:
    """The earlier version's single ``BufferedReader.read(char[21])``, which must return 21: it
    blocks (1 s socket timeout) for the first bytes, then takes more only while more can be read
    without blocking (``ready()``). Returns what it got."""
    try:
        got = tls.recv(21)
    except (socket.timeout, TimeoutError):
        return b""
    while got and len(got) < 21:
        if not tls.pending():
            r, _, _ = select.select([tls], [], [], 0)
            if not r:
                break
        try:
            chunk = tls.recv(21 - len(got))
        except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
            break
        if not chunk:
            break
        got += chunk
    return got


def read_21(tls) -> bytes:
    """``BufferedReader.read`` into a char[21] until full, each read under the socket timeout
    of 1 s (``setSoTimeout(1000)``: a read that waits longer throws, which is FAILED); EOF first is
    FAILED too. Returns what came (fewer than 21 bytes: it stopped)."""
    got = b""
    while len(got) < 21:
        try:
            chunk = tls.recv(21 - len(got))
        except (socket.timeout, TimeoutError):
            break
        if not chunk:
            break
        got += chunk
    return got


def xmpp_over_tls(s: Session, header: str = REWRITE_HEADER, read=None) -> Outcome:
    """The rewrite's XmppOverTls without its DNS step: for the port an ``_xmpps-client._tcp``
    record would name, one connection with SNI = the domain and ALPN ``xmpp-client``, a handshake
    under the default trust with a 1 s socket timeout, XmppDomainVerifier on the certificate, then
    its stream header written and the first 21 characters of the answer read: PASSED when they
    start with ``<?xml``."""
    server = s.server
    try:
        with socket.create_connection((server.host, server.tls_port), timeout=1) as raw:
            with tls_context(server, alpn=["xmpp-client"]).wrap_socket(
                    raw, server_hostname=s.domain) as tls:
                der = tls.getpeercert(binary_form=True)
                ok, names = xmpp_domain_verifier(s.domain, der)
                if not ok:
                    return Outcome(False, f"certificate names {names}")
                tls.sendall(header.format(domain=s.domain).encode())
                got = (read or read_21)(tls)
    except (OSError, ssl.SSLError) as e:
        return Outcome(False, f"direct TLS to {server.host}:{server.tls_port} (SNI {s.domain}, "
                       f"ALPN xmpp-client): {e!r}")
    if len(got) < 21:
        return Outcome(False, f"fewer than 21 characters within the 1 s read timeout: {got!r}")
    return Outcome(got.startswith(b"<?xml"), f"first 21 characters of the answer: {got!r}")


def xmpp_over_tls_earlier_header(s: Session) -> Outcome:
    """The same as the earlier version did it: its header, which is not well-formed, and one
    read that must return 21 characters. An XML stream answers a header it cannot parse with its
    own header and a stream error (RFC 6120 §4.9.1.1, §4.9.3.13 not-well-formed), at once rather
    than at the handshake timeout."""
    return xmpp_over_tls(s, EARLIER_HEADER, read=read_once_21)


# --------------------------------------------------------------------------- the rewrite (caas)

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
NS_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
NS_CONFIG_NODE_MAX = "http://jabber.org/protocol/pubsub#config-node-max"
NS_AXOLOTL = "eu.siacs.conversations.axolotl"  # extensions/omemo/OMEMO.NAMESPACE
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_UPLOAD = "urn:xmpp:http:upload:0"  # extensions/upload/Upload.NAMESPACE
NS_EXTDISCO = "urn:xmpp:extdisco:2"  # extensions/extservices/Services.NAMESPACE
NS_VCARD = "vcard-temp"  # rocks.xmpp VCard.NAMESPACE
NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
ALT_RELS = ["urn:xmpp:alt-connections:xbosh", "urn:xmpp:alt-connections:websocket"]
SERVERINFO_FIELDS = ["abuse-addresses", "admin-addresses", "feedback-addresses", "sales-addresses",
                     "security-addresses", "support-addresses"]  # ContactTest.FIELDS


def discover_services_08(s: Session, predicate) -> tuple:
    """ServiceDiscoveryManager.discoverServices of rocks.xmpp 0.8: the domain's disco#items (its
    failure fails the call), then every item's disco#info; an item whose disco#info fails is
    left out ("If one disco#info fails, don't let the whole discoverServices() method fail").
    Returns ([JIDs of the items whose info satisfies ``predicate``], [raw answers])."""
    items, raw_items = s.disco_items(s.domain)
    found, seen = [], [raw_items]
    for jid in items:
        try:
            info = s.disco_info(jid)
        except Failed as e:
            seen.append(str(e))
            continue
        seen.append(info.raw)
        if predicate(info):
            found.append(jid)
    return found, seen


def is_conference_text(info) -> bool:
    """Identity.conferenceText(), compared with equals (case-sensitive)."""
    return ("conference", "text") in identities_of(info)


def pronounceable() -> str:
    """ConversationsUtils.generateConversationsLikePronounceableName: 5, 7, 9 or 11 letters,
    consonants and vowels alternating (a room name)."""
    vowel = secrets.randbelow(2) == 1
    out = []
    for _ in range(secrets.randbelow(4) * 2 + 5):
        out.append(secrets.choice("aeiou" if vowel else "bcfghjklmnpqrstvwxyz"))
        vowel = not vowel
    return "".join(out)


def enter_room(s: Session, room: str, nick: str) -> str:
    """ChatRoom.enter(nick) of rocks.xmpp 0.8: ``<presence to='room/nick'><x
    xmlns='http://jabber.org/protocol/muc'/></presence>`` and wait (10 s) for the room's
    self-presence: from the room with status 110 or 210, or from the nick; a presence error is
    an XmppException. Returns the raw self-presence."""
    iid = new_id("enter")
    s.c.send_raw(f"<presence id='{iid}' to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>")

    def self_presence(e):
        if e.tag != C("presence") or (e.get("from") or "").split("/", 1)[0] != room:
            return False
        codes = {st.get("code") for st in e.findall(f"{q(NS_MUC_USER, 'x')}/{q(NS_MUC_USER, 'status')}")}
        resource = (e.get("from") or "").partition("/")[2]
        return bool(codes & {"110", "210"}) or resource == nick

    try:
        p = s.c.recv(self_presence, timeout=TIMEOUT, what=f"self-presence from {room}")
    except (XMPPTimeout, StreamClosed) as e:
        raise Failed(f"entering {room}/{nick}: {e}")
    if p.get("type") == "error":
        raise Failed(f"entering {room}/{nick}: {wire(s.c, p)}")
    return wire(s.c, p)


def destroy_room(s: Session, room: str) -> None:
    """ChatRoom.destroy(): muc#owner set with ``<destroy/>``; an error is an XmppException."""
    s.query("set", f"<query xmlns='{NS_MUC_OWNER}'><destroy/></query>", to=room)


def room_feature_test(s: Session, features: list) -> Outcome:
    """VcardMuc / OccupantId: the first chat service (discoverChatServices of 0.8), a new room
    with a pronounceable name entered as ``test``, its disco#info, the room destroyed; PASSED when
    the room's features include one of ``features``; any error on the way is FAILED."""
    try:
        services, seen = discover_services_08(s, is_conference_text)
        if not services:
            return Outcome(False, "Unable to find a MUC service (no item with an identity "
                           "conference/text): " + " | ".join(seen))
        room = f"{pronounceable()}@{services[0]}"
        entered = enter_room(s, room, "test")
        info = s.disco_info(room)
        destroy_room(s, room)
    except Failed as e:
        return Outcome(False, str(e))
    if has_anyone(features, features_of(info)):
        return Outcome(True, info.raw)
    return Outcome(False, f"none of {features} in the disco#info of {room} (entered: {entered}): "
                   f"{info.raw}")


def mam_muc(s: Session) -> Outcome:
    """The rewrite's MamMuc (caas b5075c4; razqqm b1f9789 only says ``isEmpty()``): the first
    chat service, a pronounceable room entered as ``test`` (waiting for the self-presence), its
    configuration form fetched (an error there is ignored) and looked at for a field ``mam``,
    ``muc#roomconfig_mam`` or ``muc#roomconfig_enablearchiving``, the room's disco#info (an
    error is FAILED) looked at for urn:xmpp:mam:0/1/2, the room destroyed (an error is FAILED);
    PASSED when the form has one of the fields or the room one of the features."""
    try:
        services, seen = discover_services_08(s, is_conference_text)
        if not services:
            return Outcome(False, "Unable to find a MUC service: " + " | ".join(seen))
        room = f"{pronounceable()}@{services[0]}"
        evidence = [enter_room(s, room, "test")]
        has_field = False
        try:
            r = s.query("get", f"<query xmlns='{NS_MUC_OWNER}'/>", to=room)
            evidence.append(wire(s.c, r))
            form = r.find(f"{q(NS_MUC_OWNER, 'query')}/{q(NS_DATA, 'x')}")
            if form is None:
                # form.findField on null: a NullPointerException, which neither catch of run()
                # takes; it leaves executeTestsFor, and the whole run of the server with it
                return Outcome(False, "NullPointerException: no configuration form in "
                               + wire(s.c, r))
            has_field = any(find_field(form, v) is not None for v in
                            ("mam", "muc#roomconfig_mam", "muc#roomconfig_enablearchiving"))
        except Failed as e:
            evidence.append(str(e))  # ExecutionException: ignored
        info = s.disco_info(room)
        evidence.append(info.raw)
        has_feature = has_anyone(MAM_NAMESPACES, features_of(info))
        destroy_room(s, room)
    except Failed as e:
        return Outcome(False, str(e))
    if has_feature or has_field:
        return Outcome(True, " | ".join(evidence))
    return Outcome(False, "no field mam / muc#roomconfig_mam / muc#roomconfig_enablearchiving "
                   f"in the room's configuration form and none of {MAM_NAMESPACES} in its "
                   "disco#info: " + " | ".join(evidence))


def vcard_muc(s: Session) -> Outcome:
    return room_feature_test(s, [NS_VCARD])


def occupant_id(s: Session) -> Outcome:
    return room_feature_test(s, ["urn:xmpp:occupant-id:0"])


def has_pep_identity(info) -> bool:
    return any(t.lower() == "pep" and c.lower() == "pubsub" for c, t in identities_of(info))


def _publish(s: Session, node: str, access_model: str) -> ET.Element:
    """PubSubNode.publish(new Bundle(), PublishOptions(accessModel)) on the PEP service (the
    account's bare JID): an item (no id) holding ``<bundle
    xmlns='eu.siacs.conversations.axolotl'/>`` and the publish-options form."""
    payload = (
        f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item>"
        f"<bundle xmlns='{NS_AXOLOTL}'/></item></publish><publish-options>"
        f"<x xmlns='{NS_DATA}' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBLISH_OPTIONS}</value></field>"
        f"<field var='pubsub#access_model'><value>{access_model}</value></field>"
        f"</x></publish-options></pubsub>")
    try:
        return s.c.iq("set", payload, to=s.bare, timeout=TIMEOUT)
    except (XMPPTimeout, StreamClosed) as e:
        raise Failed(f"publish to {node}: {e}")


def publish_with_access_model(s: Session, node: str, access_model: str, retry: bool, evidence) -> bool:
    """OMEMO.publishWithAccessModel: publish with publish-options; on a ``<conflict/>`` error
    (XEP-0060 §7.1.5, precondition not met) and ``retry``, configure the node's access model
    and publish once more. Its result is not used by run()."""
    r = _publish(s, node, access_model)
    evidence.append(wire(s.c, r))
    if r.get("type") == "result":
        return True
    err = stanza_error(r)
    if err and err[1] == "conflict" and retry:
        conf = (f"<pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='{node}'>"
                f"<x xmlns='{NS_DATA}' type='submit'>"
                f"<field var='FORM_TYPE' type='hidden'><value>{NS_NODE_CONFIG}</value></field>"
                f"<field var='pubsub#access_model'><value>{access_model}</value></field>"
                f"</x></configure></pubsub>")
        try:
            c = s.query("set", conf, to=s.bare)
            evidence.append(wire(s.c, c))
        except Failed as e:
            evidence.append(str(e))
            return False
        return publish_with_access_model(s, node, access_model, False, evidence)
    return False


def omemo(s: Session) -> Outcome:
    """The rewrite's OMEMO: the account's disco#info (10 s) must have an identity pubsub/pep;
    with ``pubsub#publish-options`` among its features, a node
    ``eu.siacs.conversations.axolotl.<uuid>`` of the account's PEP service is published to with
    publish-options access_model=open (on conflict: configured, published again), its node
    configuration fetched (pubsub#owner ``<configure/>``), the node deleted; PASSED when the
    configuration's ``pubsub#access_model`` is ``open``. Without publish-options: PASSED when
    the account has the feature ``eu.siacs.conversations.axolotl.whitelisted``. Any error on
    the way is FAILED."""
    try:
        info = s.disco_info(s.bare)
    except Failed as e:
        return Outcome(False, str(e))
    if not has_pep_identity(info):
        return Outcome(False, f"no identity pubsub/pep for {s.bare}: {info.raw}")
    feats = features_of(info)
    if NS_PUBLISH_OPTIONS not in feats:
        if NS_AXOLOTL + ".whitelisted" in feats:
            return Outcome(True, info.raw)
        return Outcome(False, f"neither pubsub#publish-options nor {NS_AXOLOTL}.whitelisted "
                       f"for {s.bare}: {info.raw}")
    node = f"{NS_AXOLOTL}.{uuid.uuid4()}"
    evidence = [info.raw]
    try:
        publish_with_access_model(s, node, "open", True, evidence)
        r = s.query("get", f"<pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='{node}'/></pubsub>",
                    to=s.bare)
        evidence.append(wire(s.c, r))
        form = r.find(f"{q(NS_PUBSUB_OWNER, 'pubsub')}/{q(NS_PUBSUB_OWNER, 'configure')}/{q(NS_DATA, 'x')}")
        field = find_field(form, "pubsub#access_model") if form is not None else None
        access = field.findtext(q(NS_DATA, "value")) if field is not None else None
        d = s.query("set", f"<pubsub xmlns='{NS_PUBSUB_OWNER}'><delete node='{node}'/></pubsub>",
                    to=s.bare)
        evidence.append(wire(s.c, d))
    except Failed as e:
        return Outcome(False, str(e) + " | " + " | ".join(evidence))
    if access is None:
        # getAccessModel() is null: accessModel.equals(...) throws, caught: FAILED
        return Outcome(False, "no pubsub#access_model in the node configuration: "
                       + " | ".join(evidence))
    return Outcome(access == "open", f"access model {access!r}: " + " | ".join(evidence))


def in_band_registration(s: Session) -> Outcome:
    """The rewrite's InBandRegistrationTest: a new, unauthenticated XmppClient for the domain
    connects (STARTTLS; the features of every ``<stream:features/>`` up to authentication);
    PASSED when one of them is ``<register xmlns='http://jabber.org/features/iq-register'/>``.
    (The eu.siacs one also took jabber:iq:register in the domain's disco#info and fetched the
    registration form.)"""
    c = s.server.client(timeout=TIMEOUT)
    try:
        c.connect()
        seen = [c.open_stream()]
        if not c.tls:
            seen.append(c.starttls())
    except (XMPPTimeout, StreamClosed, OSError, AssertionError) as e:
        return Outcome(False, f"connect: {e}")
    finally:
        c.shutdown()
    raw = re.findall(FEATURES_RE, b"".join(c.log).decode("utf-8", "replace"), re.S)
    ok = any(f.find(q(NS_REGISTER_FEATURE, "register")) is not None for f in seen)
    return Outcome(ok, ("" if ok else "no <register xmlns='http://jabber.org/features/iq-register'/> "
                        "stream feature: ") + " | ".join(raw))


def contact_test(s: Session) -> Outcome:
    """ContactTest: a form of the domain's disco#info with one of the six serverinfo address
    fields having a value."""
    try:
        info = s.disco_info(s.domain)
    except Failed as e:
        return Outcome(False, str(e))
    for form in forms_of(info):
        for var in SERVERINFO_FIELDS:
            f = find_field(form, var)
            if f is not None and f.findall(q(NS_DATA, "value")):
                return Outcome(True, info.raw)
    return Outcome(False, f"none of {SERVERINFO_FIELDS} with a value in {s.domain}'s disco#info: "
                   f"{info.raw}")


def external_services(s: Session, types: list, credentials: bool) -> Outcome:
    """AbstractExternalServiceTest: ``<iq type='get' to=domain><services
    xmlns='urn:xmpp:extdisco:2'/></iq>`` (an error is FAILED); PASSED when a ``<service/>`` has
    a host, a port in 0..65535 (a missing one reads as 0), transport tcp or udp and a type of
    ``types``, and, for TURN, a non-empty username and password."""
    try:
        r = s.query("get", f"<services xmlns='{NS_EXTDISCO}'/>", to=s.domain)
    except Failed as e:
        return Outcome(False, str(e))
    raw = wire(s.c, r)
    services = r.find(q(NS_EXTDISCO, "services"))
    for svc in ([] if services is None else services.findall(q(NS_EXTDISCO, "service"))):
        try:
            port = int(svc.get("port") or 0)
        except ValueError:
            return Outcome(False, f"port not an int (JAXB fails): {raw}")
        if svc.get("host") is None or not 0 <= port <= 65535:
            continue
        if svc.get("transport") in ("tcp", "udp") and svc.get("type") in types:
            if credentials and not (svc.get("username") and svc.get("password")):
                continue
            return Outcome(True, raw)
    return Outcome(False, f"no usable {'/'.join(types)} service"
                   + (" with username and password" if credentials else "") + f": {raw}")


def stun(s: Session) -> Outcome:
    return external_services(s, ["stun", "stuns"], credentials=False)


def turn(s: Session) -> Outcome:
    return external_services(s, ["turn", "turns"], credentials=True)


# -- HTTP, as OkHttp 4.9 makes it

def resolve(server, host: str) -> str:
    """The served domain and the names under it (``upload.localhost``) are the server's
    loopback address, the stand-in for the deployment's DNS (no query leaves the machine);
    anything else must be an address already."""
    if host == server.domain or host.endswith("." + server.domain):
        return server.host
    return socket.getaddrinfo(host, None, socket.AF_INET, 0, 0, socket.AI_NUMERICHOST)[0][4][0]


def http_request(server, method: str, url: str, headers=None, follow=False):
    """One HTTP/1.1 request: TLS with the default trust (the deployment CA) and host-name
    verification; ``follow``: redirects followed (OkHttp's default). Returns (status, [(name,
    value)], body); an ``OSError`` / ``ssl.SSLError`` / ``http.client.HTTPException`` is the
    IOException of OkHttp."""
    for _ in range(20):
        u = urllib.parse.urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        sock = socket.create_connection((resolve(server, u.hostname), port), timeout=TIMEOUT)
        if u.scheme == "https":
            ctx = ssl.create_default_context(cafile=server.ca_file)
            ctx.set_alpn_protocols(["http/1.1"])
            sock = ctx.wrap_socket(sock, server_hostname=u.hostname)
        conn = http.client.HTTPConnection(u.hostname, port, timeout=TIMEOUT)
        conn.sock = sock
        try:
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            conn.request(method, path, headers={"User-Agent": "okhttp/4.9.3", **(headers or {})})
            resp = conn.getresponse()
            status, hdrs = resp.status, resp.getheaders()
            body = b"" if status == 101 or method == "OPTIONS" else resp.read()
        finally:
            conn.close()
        loc = dict((k.lower(), v) for k, v in hdrs).get("location")
        if follow and status in (301, 302, 303, 307, 308) and loc:
            url = urllib.parse.urljoin(url, loc)
            continue
        return status, hdrs, body
    raise http.client.HTTPException("too many redirects")


def header_values(headers, name: str):
    """OkHttp's ``containsIgnoreCase`` reads the values of the first header of that name."""
    return [v.strip() for k, v in headers if k.lower() == name.lower()]


def http_upload_cors(s: Session) -> Outcome:
    """HttpUploadCors: the first upload service (discoverServices(urn:xmpp:http:upload:0) of
    0.8, else the domain if it has the feature), a slot requested for ``hello.png``, 1234 bytes,
    image/png, and an OPTIONS request to its PUT URL with ``Origin:
    https://compliance.conversations.im``, ``Access-Control-Request-Method: PUT``,
    ``Access-Control-Request-Headers: content-type``; PASSED when the answer (any status) has
    the headers Access-Control-Allow-Origin, -Methods and -Headers."""
    try:
        items, seen = discover_services_08(s, lambda i: NS_UPLOAD in features_of(i))
        if items:
            jid = items[0]
        elif NS_UPLOAD in features_of(s.disco_info(s.domain)):
            jid = s.domain
        else:
            return Outcome(False, "No HTTP upload service found: " + " | ".join(seen))
        r = s.query("get", f"<request xmlns='{NS_UPLOAD}' filename='hello.png' size='1234' "
                    "content-type='image/png'/>", to=jid)
    except Failed as e:
        return Outcome(False, str(e))
    put = r.find(f"{q(NS_UPLOAD, 'slot')}/{q(NS_UPLOAD, 'put')}")
    if put is None or not put.get("url"):
        return Outcome(False, f"no slot/put url (NullPointerException): {wire(s.c, r)}")
    url = put.get("url")
    try:
        status, hdrs, _ = http_request(s.server, "OPTIONS", url, {
            "Origin": "https://compliance.conversations.im",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type"}, follow=True)
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        return Outcome(False, f"OPTIONS {url}: {e!r}")
    names = {k.lower() for k, _ in hdrs}
    missing = [h for h in ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
                           "Access-Control-Allow-Headers") if h.lower() not in names]
    evidence = f"OPTIONS {url} -> {status} {hdrs}"
    if missing:
        return Outcome(False, f"missing {missing}: {evidence}")
    return Outcome(True, evidence)


def alt_links(body: bytes, json_: bool) -> list:
    """The hrefs of the XRD's (or JRD's) links whose rel is xbosh or websocket; a body that does
    not parse raises (JAXB / Gson throw: the variant fails)."""
    if json_:
        doc = json.loads(body.decode("utf-8"))
        return [l.get("href") for l in (doc.get("links") or []) if l.get("rel") in ALT_RELS]
    root = ET.fromstring(body)
    if root.tag != q(NS_XRD, "XRD"):
        raise ValueError(f"root element {root.tag}")
    return [l.get("href") for l in root.findall(q(NS_XRD, "Link")) if l.get("rel") in ALT_RELS]


def check_alt_connection(server, href: str) -> tuple:
    """AlternateConnections.checkConnection: ws/wss links as http/https URLs (port 80/443 when
    none) asked with a WebSocket upgrade GET (``Sec-WebSocket-Protocol: xmpp``, version 13, the
    key being base64 of a UUID's 36 characters), PASSED on a status <= 299; http/https links
    asked with OPTIONS and ``Origin: null``, PASSED on a status <= 299 with
    Access-Control-Allow-Origin ``*`` or ``null``."""
    u = urllib.parse.urlsplit(href)
    scheme = {"wss": "https", "ws": "http"}.get(u.scheme, u.scheme)
    port = u.port or (443 if u.scheme in ("wss", "https") else 80)
    url = f"{scheme}://{u.hostname}:{port}{u.path}"
    ws = u.scheme in ("ws", "wss")
    if ws:
        headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Protocol": "xmpp",
                   "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": base64.b64encode(str(uuid.uuid4()).encode()).decode()}
        method = "GET"
    else:
        headers, method = {"Origin": "null"}, "OPTIONS"
    try:
        status, hdrs, _ = http_request(server, method, url, headers, follow=True)
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        return False, f"{method} {url}: {e!r}"
    if ws:
        return status <= 299, f"{method} {url} -> {status}"
    acao = header_values(hdrs, "Access-Control-Allow-Origin")
    return status <= 299 and ("*" in acao or "null" in acao), f"{method} {url} -> {status} {hdrs}"


def alternate_connections(s: Session) -> Outcome:
    """AlternateConnections (newest version, 5d04726): ``/.well-known/host-meta``, else
    ``host-meta.json``, fetched over HTTPS (redirects followed) must answer 200 with
    ``Access-Control-Allow-Origin: *`` and list at least one xbosh / websocket link, every one of
    which must pass check_alt_connection. The Java asks ``https://<domain>`` (port 443); here the
    HTTPS listener a deployment puts there, Starling's ``[bosh]`` one (module docstring)."""
    server = s.server
    evidence = []
    for json_ in (False, True):
        url = f"https://{s.domain}:{server.bosh_port}/.well-known/host-meta" + (".json" if json_ else "")
        try:
            status, hdrs, body = http_request(server, "GET", url, follow=True)
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            evidence.append(f"GET {url}: {e!r}")
            continue
        evidence.append(f"GET {url} -> {status} {hdrs} {body[:600]!r}")
        if status != 200 or "*" not in header_values(hdrs, "Access-Control-Allow-Origin"):
            continue
        try:
            links = alt_links(body, json_)
        except (ValueError, ET.ParseError, UnicodeDecodeError, AttributeError) as e:
            evidence.append(f"unparsable: {e!r}")
            continue
        results = [check_alt_connection(server, href) for href in links]
        evidence += [r[1] for r in results]
        if links and all(ok for ok, _ in results):
            return Outcome(True, " | ".join(evidence))
    return Outcome(False, " | ".join(evidence))


# short_name -> (Java class, full_name, informational, port); the newest tree (caas b5075c4 +
# razqqm b1f9789), as Tests.getTests() lists it to TestExecutor
CAAS = {
    "abuse-contact": ("AbuseContactTest", "XEP-0157: Contact Addresses for XMPP Services (Abuse)",
                      True, abuse_contact),
    "roster_versioning": ("RosterVersioning", "RFC 6121: Roster Versioning", False, roster_versioning),
    "stun": ("StunExternalServiceTest", "XEP-0215: External Service Discovery (STUN)", False, stun),
    "turn": ("TurnExternalServiceTest", "XEP-0215: External Service Discovery (TURN)", False, turn),
    "vcard_muc": ("VcardMuc", "XEP-0153: vCard-Based Avatar (MUC)", False, vcard_muc),
    "xep0045": ("MultiUserChat", "XEP-0045: Multi-User Chat", False, multi_user_chat),
    "xep0065": ("Proxy65", "XEP-0065: SOCKS5 Bytestreams (Proxy)", False, proxy65),
    "xep0077": ("InBandRegistrationTest", "XEP-0077: In-Band Registration", True, in_band_registration),
    "xep0115": ("EntityCapabilities", "XEP-0115: Entity Capabilities", False, entity_capabilities),
    "xep0156": ("AlternateConnections",
                "XEP-0156: Discovering Alternative XMPP Connection Methods (HTTP)", True,
                alternate_connections),
    "xep0160": ("OfflineStorage", "XEP-0160: Best Practices for Handling Offline Messages", False,
                offline_storage),
    "xep0163": ("PEP", "XEP-0163: Personal Eventing Protocol", False, pep),
    "xep0191": ("Blocking", "XEP-0191: Blocking Command", False, blocking),
    "xep0198": ("StreamManagement", "XEP-0198: Stream Management", False, stream_management),
    "xep0280": ("MessageCarbons", "XEP-0280: Message Carbons", False, message_carbons),
    "xep0280_rules": ("CarbonsRules", "XEP-0280: Message Carbons - Recommended Rules", True,
                      lambda s: disco_test(s, ["urn:xmpp:carbons:rules:0"], True)),
    "xep0313": ("MAM", "XEP-0313: Message Archive Management", False, mam),
    "xep0313extended": ("MamExtended", "XEP-0313: Message Archive Management (extended usage)",
                        True, lambda s: disco_test(s, ["urn:xmpp:mam:2#extended"], False)),
    "xep0313muc": ("MamMuc", "XEP-0313: Message Archive Management (Multi-User Chat)", False, mam_muc),
    "xep0352": ("CSI", "XEP-0352: Client State Indication", False, csi),
    "xep0357": ("Push", "XEP-0357: Push Notifications", False, push),
    "xep0363": ("HttpUpload", "XEP-0363: HTTP File Upload", False, http_upload),
    "xep0363_cors": ("HttpUploadCors", "XEP-0363: HTTP File Upload (CORS Headers)", True,
                     http_upload_cors),
    "xep0368": ("XmppOverTls", "XEP-0368: SRV records for XMPP over TLS", False, xmpp_over_tls),
    "xep0384": ("OMEMO", "XEP-0384: OMEMO Encryption", False, omemo),
    "xep0398": ("AvatarConversion", "XEP-0398: User Avatar to vCard-Based Avatars Conversion", False,
                lambda s: disco_test(s, ["urn:xmpp:pep-vcard-conversion:0"], False)),
    "xep0402": ("PepNativeBookmarks", "XEP-0402: PEP Native Bookmarks", False,
                lambda s: disco_test(s, ["urn:xmpp:bookmarks:1#compat", "urn:xmpp:bookmarks:1#compat-pep",
                                         NS_PUBLISH_OPTIONS, NS_CONFIG_NODE_MAX], False)),
    "xep0411": ("BookmarkConversion", "XEP-0411: Bookmarks Conversion", False,
                lambda s: disco_test(s, ["urn:xmpp:bookmarks-conversion:0"], False)),
    "xep0421": ("OccupantId", "XEP-0421: Anonymous unique occupant identifiers for MUCs", False,
                occupant_id),
    "xep0485": ("PubSubServerInformation", "XEP-0485: PubSub Server Information", True,
                lambda s: service_test(s, "urn:xmpp:serverinfo:0")),
    "xep0490": ("MessageDisplayedSynchronization", "XEP-0490: Message Displayed Synchronization",
                False, lambda s: disco_test(s, [NS_PUBLISH_OPTIONS, NS_CONFIG_NODE_MAX], False)),
}

# Classes of the rewrite no longer in its newest tree (module docstring): short_name ->
# (Java class, full_name, informational, port)
CAAS_EARLIER = {
    "xep0157": ("ContactTest", "XEP-0157: Contact Addresses for XMPP Services", True, contact_test),
    "vcard": ("VcardTest", "XEP-0153: vCard-Based Avatar", False,
              lambda s: disco_test(s, [NS_VCARD], True)),
    "xep0402 (Bookmark2Conversion)": ("Bookmark2Conversion", "XEP-0402: PEP Native Bookmarks", True,
                                      lambda s: disco_test(s, ["urn:xmpp:bookmarks:1#compat",
                                                               "urn:xmpp:bookmarks:1#compat-pep"], False)),
    "xep0368 (earlier header)": ("XmppOverTls", "XEP-0368: SRV records for XMPP over TLS", False,
                                 xmpp_over_tls_earlier_header),
}


def check_caas(server, short_name: str) -> None:
    """Runs one test of the rewrite on a session of its own (resource ``caas``); a FAILED result
    fails the pytest test with what the server sent."""
    cls, full, informational, fn = CAAS.get(short_name) or CAAS_EARLIER[short_name]
    s = Session(server, resource=RESOURCE_CAAS)
    try:
        o = fn(s)
    finally:
        s.close()
    if not o.passed:
        kind = "informational" if informational else "counts for the score"
        pytest.fail(f"{cls} [{short_name}] ({full}; {kind}): FAILED\n{o.evidence}", pytrace=False)


def run_caas(server) -> tuple:
    """TestExecutor.executeTestsFor: one session (resource ``caas``), every test of ``CAAS``
    run once. Returns ({short_name: Outcome}, the server page's lines)."""
    s = Session(server, resource=RESOURCE_CAAS)
    results = {}
    try:
        for short in sorted(CAAS):
            results[short] = CAAS[short][3](s)
    finally:
        s.close()
    lines = []
    for short, o in results.items():
        cls, full, informational, _ = CAAS[short]
        lines.append(f"{full} [{short}]{' (informational)' if informational else ''}\t"
                     f"{'PASSED' if o.passed else 'FAILED'}")
    return results, lines


def fail_unless(results: dict, lines: list, counted: list, title: str) -> None:
    failed = [k for k in counted if not results[k].passed]
    if failed:
        pytest.fail(title + "\n" + "\n".join(lines) + "\n\nfailed: "
                    + "\n".join(f"{k}: {results[k].evidence}" for k in failed), pytrace=False)


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
    "XmppOverTls": (xmpp_over_tls_siacs, "XEP-0368: SRV records for XMPP over TLS"),
    "OMEMO": (omemo_siacs, "XEP-0384: OMEMO Encryption"),
    "MamMuc": (mam_muc_siacs, "XEP-0313: Message Archive Management (MUC)"),
    "OfflineStorage": (offline_storage, "XEP-0160: Best Practices for Handling Offline Messages"),
    "AbuseContactTest": (abuse_contact, "XEP-0157: Contact Addresses for XMPP Services"),
    "InBandRegistrationTest": (in_band_registration_siacs, "XEP-0077: In-Band Registration"),
}

CORE = ["EntityCapabilities", "PEP"]
IM = CORE + ["RosterVersioning", "MessageCarbons", "Blocking", "MultiUserChat", "StreamManagement", "MAM"]
MOBILE = CORE + ["StreamManagement", "CSI", "Push"]
CONVERSATIONS = IM + ["CSI", "HttpUpload", "Proxy65", "Push", "XmppOverTls", "OMEMO", "MamMuc"]


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
#
# Each docstring: the Java class, [short_name] of the rewrite, whether it counts for the site's
# score, what it checks, the XEP, and the Starling setting it needs. Classes in both generations
# run the rewrite's check on a session with the resource ``caas``; where it is the same as the
# eu.siacs one this is said as "same check in eu.siacs".

def test_entity_capabilities(prod):
    """EntityCapabilities [xep0115] (counts; same check in eu.siacs): a ``<c
    xmlns='http://jabber.org/protocol/caps'/>`` element in the server's stream features (any of
    the connection's ``<stream:features/>``; rocks.xmpp 0.8 ``EntityCapabilities1``), XEP-0115
    §6.3 "Stream Feature". Setting: none (Starling always sends it)."""
    check_caas(prod, "xep0115")


def test_pep(prod):
    """PEP [xep0163] (counts; same check in eu.siacs; 10 s): the account's bare JID answers
    disco#info with an identity of category ``pubsub`` and type ``pep`` (case-insensitive),
    XEP-0163 account owner service discovery. Setting: none ([pep] defaults)."""
    check_caas(prod, "xep0163")


def test_roster_versioning(prod):
    """RosterVersioning [roster_versioning] "RFC 6121: Roster Versioning" (counts; same check in
    eu.siacs): the ``<ver xmlns='urn:xmpp:features:rosterver'/>`` stream feature, RFC 6121
    §2.6.1. Setting: none."""
    check_caas(prod, "roster_versioning")


def test_message_carbons(prod):
    """MessageCarbons [xep0280] (counts; same check in eu.siacs): the feature
    ``urn:xmpp:carbons:2`` in the domain's disco#info, XEP-0280 §3 discovering support.
    Setting: none."""
    check_caas(prod, "xep0280")


def test_blocking(prod):
    """Blocking [xep0191] (counts; same check in eu.siacs): the feature ``urn:xmpp:blocking`` in
    the domain's disco#info, XEP-0191 discovering support. Setting: none."""
    check_caas(prod, "xep0191")


def test_multi_user_chat(prod):
    """MultiUserChat [xep0045] (counts; same check in eu.siacs): an item of the domain's
    disco#items (an item whose disco#info fails is skipped, rocks.xmpp 0.8) or the domain itself
    whose disco#info has the feature ``http://jabber.org/protocol/muc`` (AbstractServiceTest),
    XEP-0045 §6.1. Setting: ``[muc] enabled`` (default true)."""
    check_caas(prod, "xep0045")


def test_stream_management(prod):
    """StreamManagement [xep0198] (counts; same check in eu.siacs): the ``<sm
    xmlns='urn:xmpp:sm:3'/>`` stream feature, XEP-0198 §2. Setting: ``[sm] enabled`` (default
    true)."""
    check_caas(prod, "xep0198")


def test_mam(prod):
    """MAM [xep0313] (counts; same check in eu.siacs): one of ``urn:xmpp:mam:0``,
    ``urn:xmpp:mam:1``, ``urn:xmpp:mam:2`` in the disco#info of the account's bare JID, XEP-0313
    (discovering support; newest version: on the account). Setting: ``[mam] enabled`` (default
    true)."""
    check_caas(prod, "xep0313")


def test_mam_extended(prod):
    """MamExtended [xep0313extended] "XEP-0313: Message Archive Management (extended usage)"
    (informational; rewrite only): ``urn:xmpp:mam:2#extended`` in the disco#info of the account's
    bare JID (XEP-0313 1.1: before-id / after-id / ids in queries and the archive metadata
    request). Setting: ``[mam] enabled`` (default true)."""
    check_caas(prod, "xep0313extended")


def test_csi(prod):
    """CSI [xep0352] (counts; same check in eu.siacs): the ``<csi xmlns='urn:xmpp:csi:0'/>``
    stream feature (rocks.xmpp 0.8 ``ClientState.FEATURE``), XEP-0352's stream feature.
    Setting: none."""
    check_caas(prod, "xep0352")


def test_http_upload(prod):
    """HttpUpload [xep0363] (counts): an item of the domain (or the domain itself) whose
    disco#info has the feature ``urn:xmpp:http:upload:0`` (AbstractServiceTest), XEP-0363 §3, as
    the rewrite asks (Prosody 0.12's upload service advertises only that one and passes there).
    The stored ``eu.siacs`` source asks for ``urn:xmpp:http:upload``, the namespace of XEP-0363
    before 0.3.0 (2017), whose protocol (no headers, no slot form) Starling does not speak; the
    eu.siacs suites here use the rewrite's namespace too. Setting: ``[upload] enabled = true``."""
    check_caas(prod, "xep0363")


def test_http_upload_cors(prod):
    """HttpUploadCors [xep0363_cors] "XEP-0363: HTTP File Upload (CORS Headers)" (informational;
    rewrite only): a slot for ``hello.png`` (1234 bytes, image/png) from the first upload
    service, then a CORS preflight (OPTIONS, Origin https://compliance.conversations.im,
    Access-Control-Request-Method PUT, -Headers content-type) to its PUT URL over HTTPS with
    host-name verification; the answer must carry Access-Control-Allow-Origin, -Methods and
    -Headers (XEP-0363's note that web clients need CORS on the upload URLs). Setting:
    ``[upload] enabled = true`` (slots at the default ``public_url``, here
    ``https://localhost:<port>``, under the domain's certificate)."""
    check_caas(prod, "xep0363_cors")


def test_proxy65(prod):
    """Proxy65 [xep0065] (counts; same check in eu.siacs): an item of the domain (or the domain
    itself) whose disco#info has the feature ``http://jabber.org/protocol/bytestreams``
    (AbstractServiceTest), XEP-0065 discovering proxies. Setting: ``[proxy65] enabled =
    true``."""
    check_caas(prod, "xep0065")


def test_push(prod):
    """Push [xep0357] (counts; same check in eu.siacs): the feature ``urn:xmpp:push:0`` in the
    disco#info of the account's bare JID, XEP-0357 §5. Setting: ``[push] enabled`` (default
    true)."""
    check_caas(prod, "xep0357")


def test_offline_storage(prod):
    """OfflineStorage [xep0160] (counts, unlike eu.siacs where it was in no suite; same check):
    ``msgoffline`` in the domain's disco#info (XEP-0160 "Best Practices for Handling Offline
    Messages", advertised as the ``msgoffline`` feature of XEP-0013 / the XEP-0030 registry).
    Setting: none (``[offline]``)."""
    check_caas(prod, "xep0160")


def test_omemo(prod):
    """OMEMO [xep0384] (counts), the rewrite's check, which differs from the eu.siacs one (that
    one, still run by the Conversations suite here, only wants publish-options or the whitelist
    feature next to the pep identity): the account's disco#info must have an identity
    pubsub/pep; with ``http://jabber.org/protocol/pubsub#publish-options`` it publishes a
    ``<bundle xmlns='eu.siacs.conversations.axolotl'/>`` item to a new PEP node
    ``eu.siacs.conversations.axolotl.<uuid>`` with publish-options ``pubsub#access_model=open``
    (on ``<conflict/>``: configures the node, publishes again), reads the node configuration
    (pubsub#owner) and deletes the node; PASSED when the access model is ``open``: XEP-0384
    wants device list and bundles readable by anyone, XEP-0060 §7.1.5 (publishing options) and
    §8.2 (configure a node), XEP-0163. Without
    publish-options: PASSED on ``eu.siacs.conversations.axolotl.whitelisted``. Setting: none
    ([pep] defaults)."""
    check_caas(prod, "xep0384")


def test_avatar_conversion(prod):
    """AvatarConversion [xep0398] "XEP-0398: User Avatar to vCard-Based Avatars Conversion"
    (counts; rewrite only): ``urn:xmpp:pep-vcard-conversion:0`` in the disco#info of the
    account's bare JID (XEP-0398: the server converts between the vCard and PEP avatars and
    says so on the account). Setting: none ([pep]; vCard)."""
    check_caas(prod, "xep0398")


def test_bookmark_conversion(prod):
    """BookmarkConversion [xep0411] "XEP-0411: Bookmarks Conversion" (counts; rewrite only):
    ``urn:xmpp:bookmarks-conversion:0`` in the disco#info of the account's bare JID (XEP-0411:
    private XML and PEP bookmarks kept in sync by the server). Setting: none ([pep];
    modules/private.rs)."""
    check_caas(prod, "xep0411")


def test_pep_native_bookmarks(prod):
    """PepNativeBookmarks [xep0402] "XEP-0402: PEP Native Bookmarks" (counts; razqqm b1f9789,
    replacing the informational Bookmark2Conversion): one of ``urn:xmpp:bookmarks:1#compat``,
    ``urn:xmpp:bookmarks:1#compat-pep``, ``pubsub#publish-options``, ``pubsub#config-node-max`` in
    the disco#info of the account's bare JID (XEP-0402 keeps bookmarks in the PEP node
    ``urn:xmpp:bookmarks:1`` with publish-options and max_items=max; the #compat features say
    the server converts XEP-0048 bookmarks). Setting: none ([pep])."""
    check_caas(prod, "xep0402")


def test_bookmark2_conversion(prod):
    """Bookmark2Conversion [xep0402] (informational; an earlier class of the rewrite, guusdk
    a770191, not in its newest tree, out of the score): ``urn:xmpp:bookmarks:1#compat`` or
    ``urn:xmpp:bookmarks:1#compat-pep`` in the disco#info of the account's bare JID (XEP-0402's
    compatibility with XEP-0048 private XML / PEP bookmarks). Setting: none ([pep])."""
    check_caas(prod, "xep0402 (Bookmark2Conversion)")


def test_message_displayed_synchronization(prod):
    """MessageDisplayedSynchronization [xep0490] "XEP-0490: Message Displayed Synchronization"
    (counts; razqqm b1f9789): ``pubsub#publish-options`` or ``pubsub#config-node-max`` in the
    disco#info of the account's bare JID (what XEP-0490 needs from the PEP service: a node
    ``urn:xmpp:mds:displayed:0`` with max_items=max and access_model=whitelist set by
    publish-options). Setting: none ([pep])."""
    check_caas(prod, "xep0490")


def test_mam_muc(prod):
    """MamMuc [xep0313muc] (counts), the rewrite's check, which differs from the eu.siacs one
    (UUID room and nick, MUC services found by feature, only the field ``mam``; still run by
    the Conversations suite here): the first chat service (an item of the domain with an identity
    conference/text), a room with a pronounceable name entered as ``test`` (the self-presence
    awaited), its configuration form (muc#owner; an error is ignored) looked at for ``mam``,
    ``muc#roomconfig_mam`` or ``muc#roomconfig_enablearchiving``, its disco#info for
    urn:xmpp:mam:0/1/2, then destroyed (an error is FAILED); XEP-0313 (MUC archives) on
    XEP-0045 rooms. Setting: ``[muc] enabled`` and ``[mam] enabled``."""
    check_caas(prod, "xep0313muc")


def test_vcard_muc(prod):
    """VcardMuc [vcard_muc] "XEP-0153: vCard-Based Avatar (MUC)" (counts; rewrite only): a new
    pronounceable room of the first chat service, entered as ``test``, has the feature
    ``vcard-temp`` in its disco#info (room avatars: XEP-0486, vcard-temp on the room JID); the
    room is destroyed. Setting: ``[muc] enabled``."""
    check_caas(prod, "vcard_muc")


def test_occupant_id(prod):
    """OccupantId [xep0421] "XEP-0421: Anonymous unique occupant identifiers for MUCs" (counts;
    razqqm b1f9789): a new pronounceable room of the first chat service, entered as ``test``,
    has the feature ``urn:xmpp:occupant-id:0`` in its disco#info (XEP-0421: a room that adds
    occupant ids advertises it); the room is destroyed. Setting: ``[muc] enabled``."""
    check_caas(prod, "xep0421")


def test_abuse_contact_test(prod):
    """AbuseContactTest [abuse-contact] "XEP-0157: Contact Addresses for XMPP Services (Abuse)"
    (informational; same check in eu.siacs): a XEP-0128 form in the domain's disco#info with a
    field ``abuse-addresses`` that has a value (XEP-0157, FORM_TYPE
    ``http://jabber.org/network/serverinfo``). Setting: ``[contact] abuse`` (default
    ``mailto:abuse@{domain}``; set here)."""
    check_caas(prod, "abuse-contact")


def test_contact_test(prod):
    """ContactTest [xep0157] "XEP-0157: Contact Addresses for XMPP Services" (informational; an
    earlier class of the rewrite, iNPUTmice/caas c8ff4a2, not in its newest tree): a form in
    the domain's disco#info with one of abuse-, admin-, feedback-, sales-, security- or
    support-addresses having a value (XEP-0157). Setting: ``[contact]``."""
    check_caas(prod, "xep0157")


def test_vcard_test(prod):
    """VcardTest / Vcard [vcard] "XEP-0153: vCard-Based Avatar" (no informational flag; earlier
    classes of the rewrite, iNPUTmice/caas 685745b / 7a9aecd, not in its newest tree, out of the
    score): ``vcard-temp`` in the domain's disco#info (XEP-0054: a server supporting vCards
    advertises vcard-temp). Setting: none (modules/vcard.rs)."""
    check_caas(prod, "vcard")


def test_stun_external_service_test(prod):
    """StunExternalServiceTest [stun] "XEP-0215: External Service Discovery (STUN)" (counts;
    rewrite only): ``<services xmlns='urn:xmpp:extdisco:2'/>`` asked of the domain lists a
    service with a host, a port in range, transport tcp/udp and type stun/stuns (XEP-0215).
    Setting: ``[[external_services]]`` (a stun entry here)."""
    check_caas(prod, "stun")


def test_turn_external_service_test(prod):
    """TurnExternalServiceTest [turn] "XEP-0215: External Service Discovery (TURN)" (counts;
    rewrite only): the same list has a turn/turns service over tcp/udp with a non-empty
    username and password right in the list (XEP-0215 allows them there; WebRTC needs them
    with a TURN server). Setting:
    ``[[external_services]]`` with ``restricted = true`` and ``secret`` (TURN REST credentials,
    set here)."""
    check_caas(prod, "turn")


def test_in_band_registration_test(prod):
    """InBandRegistrationTest [xep0077] (informational, but the site only recommends servers
    that pass it), the rewrite's check, which is narrower than the eu.siacs one (that one also
    took ``jabber:iq:register`` in the domain's disco#info and fetched the form): a new,
    unauthenticated connection (STARTTLS) sees the ``<register
    xmlns='http://jabber.org/features/iq-register'/>`` stream feature (XEP-0077's stream feature
    for in-band registration). Setting: ``[registration] enabled = true``."""
    check_caas(prod, "xep0077")


def test_alternate_connections(prod):
    """AlternateConnections [xep0156] "XEP-0156: Discovering Alternative XMPP Connection Methods
    (HTTP)" (informational; rewrite only), the part decided by the server: host-meta (XRD, else
    JSON) over HTTPS answers 200 with ``Access-Control-Allow-Origin: *`` and lists xbosh /
    websocket links (XEP-0156 HTTP lookup), and every link works: BOSH answers a CORS preflight
    (OPTIONS, Origin null) with a 2xx and Access-Control-Allow-Origin ``*``/``null``, WebSocket
    answers the checker's upgrade request with a status <= 299. The Java fetches ``https://<domain>/`` on
    port 443 (module docstring: here the ``[bosh]`` listener). Settings: ``[bosh]`` and
    ``[websocket]`` enabled with ``tls``."""
    check_caas(prod, "xep0156")


def test_xmpp_over_tls(prod):
    """XmppOverTls [xep0368] (counts), the rewrite's check (differs from eu.siacs, which stops
    after the certificate; run by the Conversations suite here), the part decided by the server:
    one direct-TLS connection to the port an ``_xmpps-client._tcp`` SRV record would name, with
    SNI = the domain and ALPN ``xmpp-client`` (XEP-0368), a handshake under the default trust
    whose certificate passes XmppDomainVerifier for the domain, then the checker's stream header
    (well-formed, ``xml:lang='en'``), and the first 21 characters of the answer, each read within
    1 s, start with ``<?xml``. The SRV lookup itself is the deployment's DNS and is not tested
    (module docstring). Settings: ``[c2s] tls_port`` (here ``--c2s-tls-port``) and ``[tls]
    certs``."""
    check_caas(prod, "xep0368")


def test_xmpp_over_tls_earlier_header(prod):
    """XmppOverTls as an earlier version of the rewrite ran it (pravi/caas 7883678), kept because
    it asks something of the server that the newest does not: its stream header is not
    well-formed (``<stream to=... xmlns='jabber:client xmlns:stream=...>``: no prefix, a quote
    missing), and one read of the answer (1 s timeout, then only what is ready) must give 21
    characters starting with ``<?xml``: a server answers a header it cannot parse with its own
    header and a ``<not-well-formed/>`` stream error (RFC 6120 §4.9.1.1, §4.9.3.13), at once.
    (This file's earlier port of that step sent ``<stream:stream`` without ``xml:lang`` and read
    for 1 s in all; this is the stored source's header and read.) Not in the score. Settings: as test_xmpp_over_tls."""
    check_caas(prod, "xep0368 (earlier header)")


# --------------------------------------------------------------------------- the suites

def test_suite_advanced_server_core(prod):
    """The "Advanced Server Core Compliance Suite" (eu.siacs AdvancedServerCore:
    EntityCapabilities, PEP) on one session: PASSED when no test failed."""
    run_suite(prod, "Advanced Server Core Compliance Suite", CORE)


def test_suite_advanced_server_im(prod):
    """The "Advanced Server IM Compliance Suite" (eu.siacs AdvancedServerIM: Core +
    RosterVersioning, MessageCarbons, Blocking, MultiUserChat, StreamManagement, MAM)."""
    run_suite(prod, "Advanced Server IM Compliance Suite", IM)


def test_suite_advanced_server_mobile(prod):
    """The "Advanced Server Mobile Compliance Suite" (eu.siacs AdvancedServerMobile: Core +
    StreamManagement, CSI, Push)."""
    run_suite(prod, "Advanced Server Mobile Compliance Suite", MOBILE)


def test_suite_conversations(prod):
    """The "Conversations Compliance Suite" (eu.siacs Conversations: AdvancedServerIM + CSI,
    HttpUpload, Proxy65, Push, XmppOverTls, OMEMO, MamMuc, the eu.siacs checks; preHook prints the
    server's XEP-0092 version), the result the old checker printed for the suite."""
    run_suite(prod, "Conversations Compliance Suite", CONVERSATIONS, pre_hook=True)


def test_caas_score(prod):
    """compliance.conversations.im's score: TestExecutor runs every test of the rewrite's newest
    tree once on one session (resource ``caas``); the server page shows "Specifications
    compliant: pass*100/total %" over the tests that are not informational
    (WebUtils.addResultStats). PASSED when that is 100 %: every non-informational test passes
    (abuse-contact, xep0077, xep0156, xep0280_rules, xep0313extended, xep0363_cors, xep0485 are
    shown but not counted)."""
    results, lines = run_caas(prod)
    counted = [k for k, v in CAAS.items() if not v[2]]
    passed = sum(results[k].passed for k in counted)
    title = (f"{prod.domain}: Specifications compliant {passed * 100 // len(counted)}% "
             f"({passed}/{len(counted)})")
    fail_unless(results, lines, counted, title)


def test_caas_recommended(prod):
    """The servers compliance.conversations.im suggests on its front page
    (InternalDBOperations.getCompliantServers): listed servers whose current results pass every
    non-informational test and ``xep0077`` (in-band registration). PASSED when Starling would be
    one of them."""
    results, lines = run_caas(prod)
    counted = [k for k, v in CAAS.items() if not v[2]] + ["xep0077"]
    fail_unless(results, lines, counted, f"{prod.domain}: not among the recommended servers")
