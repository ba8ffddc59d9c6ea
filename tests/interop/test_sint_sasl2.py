"""Ports of the XEP-0388 (Extensible SASL Profile, version 1.0.4) interop tests of
XMPP-Interop-Testing/smack-sint-server-extensions (package org.jivesoftware.smack):
Sasl2FeatureAdvertisementIntegrationTest (testSasl2NotOfferedPreTls,
testChannelBindingMechanismsImplyXep0440Advertisement), Sasl2NegotiationIntegrationTest
(testUnadvertisedMechanismFails, testMismatchedAuthzidFails,
testFailureConditionIsRfc6120SaslError, testFurtherAuthenticateAfterSuccessResultsInStreamError,
testStrayTrafficDuringNegotiationCausesDisconnect), Sasl2NegotiationLowLevelIntegrationTest
(testWhitespaceDuringNegotiationCausesDisconnect), Sasl2AuthorizationIdentifierIntegrationTest
(testAuthorizationIdentifierIsBareJidWithoutResourceBinding,
testAuthorizationIdentifierIsFullJidWithResourceBinding) and
Sasl2UserAgentPrivacyIntegrationTest (testUserAgentInfoNotLeakedToOtherEntities).

How the Java tests talk to the server, and how the port does the same:
- Every test takes "specific unconnected connections": one fresh account each, a
  ModularXmppClientToServerConnection that connect()s as far as the features after STARTTLS.
  Smack's stream headers carry from='<username>@<domain>' (AbstractXMPPConnection
  .sendStreamOpen; the Java testMismatchedAuthzidFails relies on it) and, after the first one,
  the server's stream id: `smack_connect` sends the same.
- Each class's constructor is Sasl2TestUtils.requireSasl2(connection[, "PLAIN"]) on a
  connection of its own: 'not possible' without the <authentication xmlns='urn:xmpp:sasl:2'/>
  feature (or without PLAIN in it). `class_check` does that before each test, with
  pytest.fail("Smack marks this 'not possible': ...") (Starling offers SASL2 with PLAIN).
- Most tests send one Sasl2Nonza with the package-private sendAndWaitForResponse(nonza,
  successClass, failureClass): the first reply of either class counts, other nonzas are
  ignored, <failure/> is a FailedNonzaException. `exchange` is that; `authenticate_xml` is
  Sasl2Nonza.Authenticate.toXML (initial-response, user-agent, extensions, in that order).
- testFailureConditionIsRfc6120SaslError uses the high-level login(): through SASL2, the
  mechanism Smack's selectMechanism prefers among those offered (by Smack's priorities,
  SCRAM-SHA-512 of Starling's), with the Sasl2Module's <user-agent/> (software 'Smack') and
  the Bind2 module's <bind/>; `smack_login_failure` sends that. The condition is read as
  Smack's Sasl2Provider.FailureProvider reads it (`smack_sasl_error`).
- The two raw-socket tests (pre-TLS features; a whitespace during the exchange) are raw
  sockets here too, with the Java's 10 s windows.
- The UserAgent test's first connection is a live Smack client, whose ServiceDiscoveryManager
  answers disco#info itself; `discover_info` lets the raw client answer as Smack does
  (identity client/pc 'Smack') while the second connection asks.

The server: one per module, with Starling's default configuration (registration on for
nothing but symmetry: accounts are made with `starling user add`). The shared `server`
fixture has handshake_timeout_secs = 3, under the Java's 10 s windows for "the server
disconnected": a server that ignored the stray traffic would still "disconnect" there, at
its handshake timeout. Starling's default (30 s) is what a SINT run against it would see.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import string
import time
import uuid

import pytest

from conftest import make_server
from rawxmpp import C, NS_SASL, NS_TLS, XMPPTimeout, local, new_id, ns_of, q, tostring
from test_sasl2 import NS_BIND2, NS_SASL2, s2

pytestmark = pytest.mark.starling_only

NS_SASL_CB = "urn:xmpp:sasl-cb:0"  # XEP-0440
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
# org.jivesoftware.smack.sasl.SASLError: the RFC 6120 §6.5 conditions Smack knows
SASL_ERRORS = {"aborted", "account-disabled", "credentials-expired", "encryption-required",
               "incorrect-encoding", "invalid-authzid", "invalid-mechanism", "malformed-request",
               "mechanism-too-weak", "not-authorized", "temporary-auth-failure"}
# SASLMechanism.getPriority() of Smack's password mechanisms (lower = preferred); the -PLUS
# ones need channel binding, HT-* a FAST token, so neither is chosen by a plain login()
SMACK_PRIORITY = {"SCRAM-SHA-512": 80, "SCRAM-SHA-256": 100, "SCRAM-SHA-1": 110, "PLAIN": 410}
WINDOW = 10  # seconds: the Java's socket timeouts / disconnect deadline


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = make_server(tmp_path_factory, "sint-sasl2", limits=False)
    s.start()
    yield s
    s.stop()


# ------------------------------------------------------------------------ helpers

def smack_connect(server, clients, prefix="sints2"):
    """getSpecificUnconnectedConnection() + connect(): a fresh account; stream headers with
    from='user@domain' (and the stream id after the first), STARTTLS, the features after it."""
    jid, user, pw = server.new_user(prefix)
    c = clients.add(server.client())
    c.connect()
    frm = f" from='{user}@{server.domain}'"
    c.open_stream(extra=frm)
    stream_id = (c.header or {}).get("id")
    c.send_raw(f"<starttls xmlns='{NS_TLS}'/>")
    el = c.recv(lambda e: ns_of(e.tag) == NS_TLS, what="starttls reply")
    assert local(el.tag) == "proceed", tostring(el)
    c._wrap_tls()
    c.open_stream(extra=frm + (f" id='{stream_id}'" if stream_id else ""))
    c.user, c.password, c.bare = user, pw, jid
    return c


def require_sasl2(c, mechanism=None):
    """Sasl2TestUtils.requireSasl2: the SASL2 feature's mechanisms (Sasl2Feature.getMechanisms)."""
    feature = c.feature(NS_SASL2, "authentication")
    if feature is None:
        pytest.fail("Smack marks this 'not possible': XEP-0388: Extensible SASL Profile (SASL2) "
                    "is not supported by service: " + tostring(c.features))
    mechanisms = [(m.text or "").strip() for m in feature.findall(s2("mechanism"))]
    if mechanism is not None and mechanism not in mechanisms:
        pytest.fail(f"Smack marks this 'not possible': SASL2 is supported, but the '{mechanism}' "
                    f"mechanism is not offered by service: {mechanisms}")
    return mechanisms


def class_check(server, clients, mechanism=None):
    """The test class's constructor: a connection of its own, requireSasl2, disconnect."""
    c = smack_connect(server, clients, "sints2k")
    require_sasl2(c, mechanism)
    c.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain(user, password, authzid=""):
    """Smack's PLAIN initial response: authzid NUL authcid NUL password, base64."""
    return b64(f"{authzid}\0{user}\0{password}".encode())


def user_agent_xml(ua_id, software=None, device=None):
    """Sasl2Nonza.UserAgent.toXML (inside <authenticate/>: the SASL2 namespace is inherited)."""
    if software is None and device is None:
        return f"<user-agent id='{ua_id}'/>"
    inner = (f"<software>{software}</software>" if software is not None else "")
    inner += (f"<device>{device}</device>" if device is not None else "")
    return f"<user-agent id='{ua_id}'>{inner}</user-agent>"


BIND2 = f"<bind xmlns='{NS_BIND2}'/>"  # new Bind2Elements.Bind(null, null)


def authenticate_xml(mechanism, initial_response=None, user_agent=None, extensions=()):
    """Sasl2Nonza.Authenticate.toXML."""
    head = f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'"
    if initial_response is None and user_agent is None and not extensions:
        return head + "/>"
    body = f"<initial-response>{initial_response}</initial-response>" if initial_response is not None else ""
    return head + ">" + body + (user_agent or "") + "".join(extensions) + "</authenticate>"


def exchange(c, nonza, success, failure="failure"):
    """sendAndWaitForResponse(nonza, successClass, failureClass): the first SASL2 <success>
    (of that name) or <failure> nonza; other nonzas are not an answer. Returns it (the caller
    asserts which one it is: a <failure/> is Smack's FailedNonzaException)."""
    c.send_raw(nonza)
    return c.recv(lambda e: e.tag in (s2(success), s2(failure)),
                  what=f"SASL2 <{success}/> or <{failure}/>")


def smack_sasl_error(failure):
    """Sasl2Provider.FailureProvider + Failure.getSASLError(): the condition is the last child
    in the RFC 6120 SASL namespace (or a SASL2-namespaced one whose name is a SASLError; a SASL2
    <text/> is descriptive text); getSASLError() is null unless it names a SASLError."""
    condition = None
    for ch in failure:
        ns, name = ns_of(ch.tag), local(ch.tag)
        if name == "text" and ns == NS_SASL2:
            continue
        if ns == NS_SASL or (ns == NS_SASL2 and name in SASL_ERRORS):
            condition = name
    return condition if condition in SASL_ERRORS else None


def has_resource(jid):
    return "/" in jid


def smack_login_failure(c, password, mechanisms):
    """connection.login(username, password) through SASL2 (Sasl2Module): the mechanism Smack
    prefers, its <user-agent/> and the Bind2 module's <bind/>; a SCRAM exchange computed with
    the given password. Returns the server's final SASL2 nonza (<success/> or <failure/>)."""
    offered = [m for m in mechanisms if m in SMACK_PRIORITY]
    mech = min(offered, key=SMACK_PRIORITY.get)
    extensions = (user_agent_xml(uuid.uuid4(), "Smack"), BIND2)
    if mech == "PLAIN":
        return exchange(c, authenticate_xml(mech, plain(c.user, password), None, extensions), "success")
    H = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256,
         "SCRAM-SHA-512": hashlib.sha512}[mech]
    alphabet = string.ascii_letters + string.digits + "!#$%&'()*+-./:;<>?@[]^_`{|}~"
    cnonce = "".join(secrets.choice(alphabet) for _ in range(32))
    first_bare = f"n={c.user},r={cnonce}"
    c.send_raw(authenticate_xml(mech, b64(("n,," + first_bare).encode()), None, extensions))
    el = c.recv(lambda e: e.tag in (s2("challenge"), s2("success"), s2("continue"), s2("failure")),
                what="SASL2 reply to <authenticate/>")
    if el.tag != s2("challenge"):
        return el
    server_first = base64.b64decode(el.text or "").decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    without_proof = f"c={b64(b'n,,')},r={attrs['r']}"
    salted = hashlib.pbkdf2_hmac(H().name, password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", H).digest()
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(H(client_key).digest(), auth_message, H).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    c.send_raw(f"<response xmlns='{NS_SASL2}'>{b64(f'{without_proof},p={b64(proof)}'.encode())}</response>")
    return c.recv(lambda e: e.tag in (s2("success"), s2("continue"), s2("failure")),
                  what="SASL2 outcome")


def open_header(domain):
    """The raw tests' stream header (no xml:lang, no from)."""
    return (f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()


def read_until(sock, buffer: bytearray, marker: str, timeout_message: str) -> str:
    """readUntil: read until the text so far contains marker (or EOF); returns it and empties
    the buffer. A read timeout is the Java's IOException."""
    try:
        while marker not in buffer.decode("utf-8", "replace"):
            data = sock.recv(4096)
            if not data:
                break
            buffer.extend(data)
    except socket.timeout:
        raise AssertionError(f"{timeout_message} Data received so far: {buffer.decode('utf-8', 'replace')!r}")
    text = buffer.decode("utf-8", "replace")
    buffer.clear()
    return text


def discover_info(asker, target, answerer, timeout=5.0):
    """ServiceDiscoveryManager.getInstanceFor(asker).discoverInfo(target), while `answerer`
    (the Smack connection at `target`) answers disco#info as its own ServiceDiscoveryManager
    does. Returns the reply the asker got."""
    iid = new_id("disco")
    asker.send_raw(f"<iq type='get' to='{target}' id='{iid}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
    is_reply = (lambda e: e.tag == C("iq") and e.get("id") == iid
                and e.get("type") in ("result", "error"))
    is_query = (lambda e: e.tag == C("iq") and e.get("type") == "get"
                and e.find(q(NS_DISCO_INFO, "query")) is not None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = answerer.recv(is_query, timeout=0.1, what="disco#info request")
        except XMPPTimeout:
            pass
        else:
            answerer.send_raw(
                f"<iq type='result' to='{req.get('from')}' id='{req.get('id')}'>"
                f"<query xmlns='{NS_DISCO_INFO}'><identity category='client' name='Smack' type='pc'/>"
                f"<feature var='{NS_DISCO_INFO}'/><feature var='http://jabber.org/protocol/disco#items'/>"
                f"</query></iq>")
        try:
            return asker.recv(is_reply, timeout=0.1, what="disco#info reply")
        except XMPPTimeout:
            pass
    raise AssertionError(f"no disco#info reply within {timeout}s (Smack: NoResponseException)")


# -------------------------------------------- Sasl2FeatureAdvertisementIntegrationTest

def test_sasl2_not_offered_pre_tls(srv, clients):
    """Sasl2FeatureAdvertisementIntegrationTest.testSasl2NotOfferedPreTls (XEP-0388 §3: "SASL2
    MUST only be used by Clients or offered by Servers after TLS negotiation."): the features
    of a plain-TCP stream, read raw, have nothing in urn:xmpp:sasl:2. 'Not possible' if they do
    not advertise STARTTLS."""
    class_check(srv, clients)
    with socket.create_connection((srv.host, srv.c2s_port), timeout=WINDOW) as sock:
        sock.settimeout(WINDOW)
        sock.sendall(open_header(srv.domain))
        pre_tls = read_until(sock, bytearray(), "</stream:features>",
                             "Timed out reading the pre-TLS '<stream:features/>'.")
    if NS_TLS not in pre_tls:
        pytest.fail("Smack marks this 'not possible': service does not advertise STARTTLS; "
                    "cannot verify that SASL2 is withheld until TLS has been negotiated.")
    assert NS_SASL2 not in pre_tls, (
        "Expected the service to not advertise the SASL2 '<authentication/>' stream feature "
        f"('{NS_SASL2}') before TLS has been negotiated, but the pre-TLS features did: {pre_tls}")


def test_channel_binding_mechanisms_imply_xep0440_advertisement(srv, clients):
    """Sasl2FeatureAdvertisementIntegrationTest.testChannelBindingMechanismsImplyXep0440Advertisement
    (XEP-0388 §2.1: "All servers and clients supporting channel-binding MUST implement
    [XEP-0440]."): a service offering a '*-PLUS' mechanism through SASL2 also has the
    <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'/> stream feature. 'Not possible' when no
    '*-PLUS' mechanism is offered (a SINT run reports it so, not as a failure)."""
    class_check(srv, clients)
    c = smack_connect(srv, clients)
    mechanisms = require_sasl2(c)
    if not any(m.endswith("-PLUS") for m in mechanisms):
        # Starling offers no -PLUS mechanism (docs/ARCHITECTURE.md, SASL): the Java test
        # does not run; were one offered, the assertion below would hold it to XEP-0440.
        pytest.skip("Smack marks this 'not possible': service does not offer any SASL "
                    f"channel-binding ('*-PLUS') mechanism through SASL2: {mechanisms}")
    assert c.feature(NS_SASL_CB, "sasl-channel-binding") is not None, (
        f"Expected the service, which offers channel-binding SASL mechanisms ({mechanisms}), to "
        "also advertise XEP-0440 support via a '<sasl-channel-binding/>' stream feature: "
        + tostring(c.features))


# ------------------------------------------------- Sasl2NegotiationIntegrationTest

def test_unadvertised_mechanism_fails(srv, clients):
    """Sasl2NegotiationIntegrationTest.testUnadvertisedMechanismFails (XEP-0388 §2.3: "If the
    "mechanism" attribute contains a string not previously announced by the server in the
    stream feature, the server MUST fail the authentication."): <authenticate
    mechanism='X-DOES-NOT-EXIST-...'/> (no initial response) is answered with <failure/>."""
    class_check(srv, clients, "PLAIN")
    c = smack_connect(srv, clients)
    bogus = "X-DOES-NOT-EXIST-" + secrets.token_hex(4)
    el = exchange(c, authenticate_xml(bogus), "success")
    assert el.tag == s2("failure"), (
        f"Expected the service to reject an '<authenticate/>' naming a mechanism ('{bogus}') it "
        "had not advertised, with a '<failure/>' element: " + tostring(el))


def test_mismatched_authzid_fails(srv, clients):
    """Sasl2NegotiationIntegrationTest.testMismatchedAuthzidFails (XEP-0388 §2.3 / §4.4: "If the
    stream's from attribute (if present) does not match the non-empty authorization string,
    the server MUST fail the authentication." / "Any non-empty authorization string MUST be
    considered an error if the stream's from attribute (if present) does not match."): the
    stream is from 'user@domain'; PLAIN with authzid 'not-user@domain' gets <failure/>."""
    class_check(srv, clients, "PLAIN")
    c = smack_connect(srv, clients)
    mismatched = f"not-{c.user}@{srv.domain}"
    el = exchange(c, authenticate_xml("PLAIN", plain(c.user, c.password, mismatched)), "success")
    assert el.tag == s2("failure"), (
        f"Expected the service to reject a PLAIN authentication whose authzid ('{mismatched}') "
        "did not match the stream's 'from' attribute, with a '<failure/>' element: " + tostring(el))


def test_failure_condition_is_rfc6120_sasl_error(srv, clients):
    """Sasl2NegotiationIntegrationTest.testFailureConditionIsRfc6120SaslError (XEP-0388 §2.6.2:
    "It MUST contain one of the SASL error codes from RFC 6120 Section 6.5."): login() with a
    wrong password fails with a SASL2 <failure/> whose condition, read as Smack reads it, is
    one of the RFC 6120 §6.5 conditions."""
    class_check(srv, clients, "PLAIN")
    c = smack_connect(srv, clients)
    mechanisms = require_sasl2(c)
    el = smack_login_failure(c, "invalid-password-" + secrets.token_hex(8), mechanisms)
    assert el.tag == s2("failure"), (
        "Expected a failed authentication attempt to be reported as a SASLErrorException: "
        + tostring(el))
    assert smack_sasl_error(el) is not None, (
        "Expected the condition element in the '<failure/>' sent by the service to be one of "
        "the SASL error codes defined in RFC 6120 Section 6.5, but it did not parse as one: "
        + tostring(el))


def test_further_authenticate_after_success_results_in_stream_error(srv, clients):
    """Sasl2NegotiationIntegrationTest.testFurtherAuthenticateAfterSuccessResultsInStreamError
    (XEP-0388 §4.8: "once <success/> or <continue/> has been sent by the server, any further
    <authenticate/> element MUST result in a stream error."): PLAIN succeeds, then <authenticate
    mechanism='PLAIN'/> is answered by a stream error (a close without one fails, as Smack's
    connectionClosed() does)."""
    class_check(srv, clients, "PLAIN")
    c = smack_connect(srv, clients)
    el = exchange(c, authenticate_xml("PLAIN", plain(c.user, c.password)), "success")
    assert el.tag == s2("success"), f"Expected the service to authenticate '{c.user}' using PLAIN: " + tostring(el)
    c.send_raw(authenticate_xml("PLAIN"))
    try:
        c.expect_stream_error(timeout=WINDOW)
    except AssertionError as e:
        raise AssertionError(
            "Expected the service to close the stream with a stream error, after a second "
            f"'<authenticate/>' element on an already-authenticated connection: {e}") from None


def test_stray_traffic_during_negotiation_causes_disconnect(srv, clients):
    """Sasl2NegotiationIntegrationTest.testStrayTrafficDuringNegotiationCausesDisconnect
    (XEP-0388 §2.4: "Servers MUST disconnect Clients immediately if any other traffic is
    received."): <authenticate mechanism='PLAIN'/> without initial response is answered with a
    <challenge/>; a <presence/> instead of <response/> or <abort/> ends the connection (with or
    without a stream error)."""
    class_check(srv, clients, "PLAIN")
    c = smack_connect(srv, clients)
    el = exchange(c, authenticate_xml("PLAIN"), "challenge")
    assert el.tag == s2("challenge"), (
        "Expected the service to request SASL data through a '<challenge/>' element, after an "
        "'<authenticate/>' element without an initial response: " + tostring(el))
    c.send_raw(f"<presence id='{new_id('p')}'/>")  # StanzaBuilder.buildPresence().build()
    try:
        c.wait_closed(timeout=WINDOW)
    except AssertionError as e:
        raise AssertionError(
            "Expected the service to disconnect the connection immediately, after it sent a "
            f"stanza while a SASL2 negotiation was in progress: {e}") from None


# ------------------------------------------ Sasl2NegotiationLowLevelIntegrationTest

def test_whitespace_during_negotiation_causes_disconnect(srv, clients):
    """Sasl2NegotiationLowLevelIntegrationTest.testWhitespaceDuringNegotiationCausesDisconnect
    (XEP-0388 §2.4: "Clients MUST NOT send whitespace [...] Servers MUST disconnect Clients
    immediately if any other traffic is received."): raw socket, STARTTLS, <authenticate
    mechanism='PLAIN'/>, a <challenge; then one space: the connection must end (EOF or reset)
    within 10 s."""
    class_check(srv, clients, "PLAIN")
    plain_sock = socket.create_connection((srv.host, srv.c2s_port), timeout=WINDOW)
    buffer = bytearray()
    try:
        plain_sock.sendall(open_header(srv.domain))
        read_until(plain_sock, buffer, "</stream:features>", "Timed out waiting for '</stream:features>'.")
        plain_sock.sendall(f"<starttls xmlns='{NS_TLS}'/>".encode())
        read_until(plain_sock, buffer, "proceed", "Timed out waiting for 'proceed'.")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(plain_sock, server_hostname=srv.domain)
    except BaseException:
        plain_sock.close()
        raise
    with sock:
        sock.settimeout(WINDOW)
        buffer.clear()
        sock.sendall(open_header(srv.domain))
        read_until(sock, buffer, "</stream:features>", "Timed out waiting for '</stream:features>'.")
        sock.sendall(f"<authenticate xmlns='{NS_SASL2}' mechanism='PLAIN'/>".encode())
        answer = read_until(sock, buffer, "challenge", "Timed out waiting for 'challenge'.")
        assert "<challenge" in answer, (
            "Expected the service to request SASL data through a '<challenge/>' element, after "
            f"an '<authenticate/>' element without an initial response. Data received: {answer}")
        sock.sendall(b" ")
        disconnected, received = False, bytearray()
        deadline = time.monotonic() + WINDOW
        try:
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(4096)
                if not data:
                    disconnected = True
                    break
                received.extend(data)  # a stream error / closing tag may come before the close
        except socket.timeout:
            pass
        except OSError:
            disconnected = True  # e.g. a reset
        assert disconnected, (
            "Expected the service to disconnect the connection, after a single whitespace "
            "character was sent while a SASL2 negotiation was in progress, but the connection "
            f"remained open for {WINDOW} seconds. Received meanwhile: {bytes(received)!r}")


# --------------------------------------- Sasl2AuthorizationIdentifierIntegrationTest

def test_authorization_identifier_is_bare_jid_without_resource_binding(srv, clients):
    """Sasl2AuthorizationIdentifierIntegrationTest.testAuthorizationIdentifierIsBareJidWithoutResourceBinding
    (XEP-0388 §2.6.1: "the Server sends a <success/> element, which contains an
    <authorization-identifier/> element containing the negotiated identity - this is a bare
    JID, unless resource binding has occurred, in which case it is a full JID."): PLAIN with no
    <bind/>: the <authorization-identifier/> is there and has no resource."""
    class_check(srv, clients, "PLAIN")
    c = smack_connect(srv, clients)
    el = exchange(c, authenticate_xml("PLAIN", plain(c.user, c.password)), "success")
    assert el.tag == s2("success"), "Expected the service to authenticate using PLAIN: " + tostring(el)
    authzid = el.findtext(s2("authorization-identifier"))
    assert authzid is not None, (
        "Expected the '<success/>' element to contain an '<authorization-identifier/>' element: "
        + tostring(el))
    assert not has_resource(authzid), (
        f"Expected the '<authorization-identifier/>' value ('{authzid}') to be a bare JID, since "
        "no resource binding occurred as part of SASL2 negotiation (but it had a resource).")


def test_authorization_identifier_is_full_jid_with_resource_binding(srv, clients):
    """Sasl2AuthorizationIdentifierIntegrationTest.testAuthorizationIdentifierIsFullJidWithResourceBinding
    (XEP-0388 §2.6.1, the same quote): PLAIN with <bind xmlns='urn:xmpp:bind:0'/>: the <success/>
    has a <bound/>, and the <authorization-identifier/> has a resource."""
    class_check(srv, clients, "PLAIN")
    c = smack_connect(srv, clients)
    require_sasl2(c)
    el = exchange(c, authenticate_xml("PLAIN", plain(c.user, c.password), None, [BIND2]), "success")
    assert el.tag == s2("success"), (
        "Expected the service to authenticate using PLAIN with an inline XEP-0386 bind request: "
        + tostring(el))
    assert el.find(q(NS_BIND2, "bound")) is not None, (
        "Expected the '<success/>' element to contain a '<bound/>' element in response to the "
        "inline bind request: " + tostring(el))
    authzid = el.findtext(s2("authorization-identifier"))
    assert authzid is not None, (
        "Expected the '<success/>' element to contain an '<authorization-identifier/>' element: "
        + tostring(el))
    assert has_resource(authzid), (
        f"Expected the '<authorization-identifier/>' value ('{authzid}') to be a full JID, since "
        "resource binding occurred as part of SASL2 negotiation (but it had no resource).")


# ---------------------------------------------- Sasl2UserAgentPrivacyIntegrationTest

def test_user_agent_info_not_leaked_to_other_entities(srv, clients):
    """Sasl2UserAgentPrivacyIntegrationTest.testUserAgentInfoNotLeakedToOtherEntities (XEP-0388
    §2.3: "Servers MUST NOT expose this information to other entities."): conOne logs in with
    PLAIN, <user-agent/> (software and device a random marker) and <bind/>; conTwo with PLAIN
    and <bind/>; conTwo's disco#info to conOne's full JID (answered by conOne's Smack) comes
    back without the marker."""
    class_check(srv, clients, "PLAIN")
    one = smack_connect(srv, clients, "sints2u1")
    two = smack_connect(srv, clients, "sints2u2")
    marker = "smack-sint-marker-" + secrets.token_hex(8)
    ua = user_agent_xml(uuid.uuid4(), marker, marker)
    el = exchange(one, authenticate_xml("PLAIN", plain(one.user, one.password), ua, [BIND2]), "success")
    assert el.tag == s2("success"), (
        f"Expected the service to authenticate '{one.user}' using PLAIN with a '<user-agent/>' "
        "element and an inline bind request: " + tostring(el))
    one_jid = el.findtext(s2("authorization-identifier"))
    el2 = exchange(two, authenticate_xml("PLAIN", plain(two.user, two.password), None, [BIND2]), "success")
    assert el2.tag == s2("success"), (
        f"Expected the service to authenticate '{two.user}' using PLAIN with an inline bind "
        "request: " + tostring(el2))
    two_jid = el2.findtext(s2("authorization-identifier"))
    assert two_jid is not None and has_resource(two_jid), (
        f"Expected the second connection's '<authorization-identifier/>' ('{two_jid}') to be a full JID.")
    reply = discover_info(two, one_jid, one)
    raw = tostring(reply)
    assert reply.get("type") == "result", (
        f"disco#info to '{one_jid}' was answered with an error (Smack's discoverInfo throws "
        f"XMPPErrorException): {raw}")
    assert marker not in raw, (
        f"Expected a disco#info response about '{one_jid}', queried by a different entity "
        f"('{two.user}'), to not contain the distinctive software/device value ('{marker}') "
        f"supplied in that account's SASL2 '<user-agent/>' element (but it did): {raw}")
