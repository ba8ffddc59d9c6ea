"""Ports of Smack's own SASL2 / Bind2 / FAST interop tests (smack-integration-test,
igniterealtime/Smack): Sasl2IntegrationTest (XEP-0388 1.0.4: testSasl2Authentication,
testSasl2AuthenticationFailure), Bind2IntegrationTest (XEP-0386 1.1.0:
testBind2ResourceBinding, testBind2ServerGeneratedResource) and FastIntegrationTest
(XEP-0484 0.2.0: testFastTokenRequestAndSubsequentAuthentication,
testInvalidFastTokenDegradesGracefully).

The Java tests assert on the state Smack's ModularXmppClientToServerConnection is left in, so
each port drives the wire the way that connection does (SmackConnection below, read from
Smack's Sasl2Module, Sasl2Authentication, Bind2Module, FastModule, SaslHtMechanism,
ScramMechanism, SASLAuthentication and SmackInitialization) and asserts, on the raw XML the
server sent, what each Java assertion rests on:

* the stream header carries from='user@domain' (AbstractXMPPConnection.sendStreamOpen);
* every <authenticate/> carries <user-agent id='<UUID v4>'><software>Smack</software>
  </user-agent> (Sasl2ModuleDescriptor's default, one id per connection configuration) first;
  then, when the Bind2 module is present and the server offers Bind2 inline,
  <bind xmlns='urn:xmpp:bind:0'/> with <tag/> = the requested resource (none when the
  resource is null: login() on these connections, which SINT builds without a resource); then
  what the FAST module's hook adds: <fast count='N'/> with a usable token, else
  <request-token mechanism='...'/> (its preferred mechanism, HT-SHA-256-ENDP by default, if
  offered, else an offered HT mechanism). The FAST state follows the Bind2 state in Smack's
  state graph, so a connection without the Bind2 module (Sasl2IntegrationTest's) has no FAST
  hook at all;
* the mechanism is the best one by Smack's priority among those offered (SASL2 <mechanism/>s
  plus the inline FAST ones) and enabled: SCRAM-SHA-512 (80) before SCRAM-SHA-256 (100),
  SCRAM-SHA-1 (110) and PLAIN (410); HT-SHA-256-NONE (66) only with a FAST token;
* SCRAM as ScramMechanism does it: a 32-character printable nonce, and gs2 flag 'y' on a TLS
  stream when the '-PLUS' variant is enabled in Smack (it is, for -512 and -256; SCRAM-SHA-1-PLUS
  is blacklisted), since the server offers no '-PLUS';
* what Smack verifies before it calls a login successful: the SCRAM server-final / the HT
  responder HMAC in <additional-data/> (afterFinalSaslChallenge throws otherwise); the
  <authorization-identifier/> parsed as a JID, bound when it has a resource; when not bound,
  the <stream:features/> that follow <success/> (it waits for them) and RFC 6120 binding.

test_sasl2.authenticate / fast_login are not used for the exchanges: they send gs2 flag 'n',
a user-agent of their own, and an order of inline elements other than Smack's; this file
reuses test_sasl2's namespaces and reply reader.
"""

import base64
import datetime
import hashlib
import hmac
import random
import string
import uuid

import pytest

from rawxmpp import NS_BIND, NS_SASL, NS_STREAM, NS_TLS, SASLFailure, local, ns_of, q, tostring
from test_sasl2 import HT, NS_BIND2, NS_FAST, NS_SASL2, reply, s2

# The Prosody 0.12 the suite is validated against has no SASL2 (mod_sasl2 is a community
# module): every test would only be 'not possible' there.
pytestmark = pytest.mark.starling_only

SMACK_SOFTWARE = "Smack"  # Sasl2Nonza.UserAgent.DEFAULT_SOFTWARE

# SASLAuthentication's registry, by priority (lower first), for what these tests can meet:
# ScramSha512Mechanism.PRIORITY 80, ScramSha256Mechanism 100, SCRAMSHA1Mechanism 110,
# HtSha256NoneMechanism 66, smack-java's PLAIN 410.
PRIORITY = {HT: 66, "SCRAM-SHA-512": 80, "SCRAM-SHA-256": 100, "SCRAM-SHA-1": 110, "PLAIN": 410}
BLACKLISTED = {"SCRAM-SHA-1-PLUS"}  # SASLAuthentication's static block
SMACK_HT = {f"HT-{h}-{cb}" for h in ("SHA-256", "SHA-512", "SHA3-256", "SHA3-512")
            for cb in ("NONE", "ENDP")}  # the SaslHtMechanisms SmackInitialization registers
SASL_ERRORS = {"aborted", "account-disabled", "credentials-expired", "encryption-required",
               "incorrect-encoding", "invalid-authzid", "invalid-mechanism", "malformed-request",
               "mechanism-too-weak", "not-authorized", "temporary-auth-failure"}


def insecure_random_string(n):
    """StringUtils.insecureRandomString: letters and digits."""
    return "".join(random.choice(string.ascii_letters + string.digits) for _ in range(n))


def b64(data):
    return base64.b64encode(data).decode()


def has_resource(jid):
    """JidCreate.from(..).hasResource(): a '/' after the domain part."""
    return "/" in jid


def resourcepart(jid):
    return jid.split("/", 1)[1] if has_resource(jid) else None


# ------------------------------------------------------------------- SASL mechanisms

class SmackSaslError(AssertionError):
    """Smack's SmackSaslException: the client refuses what the server sent."""


class Scram:
    """ScramMechanism (RFC 5802), as Smack sends it."""

    def __init__(self, name, user, password, gs2_flag):
        self.name = name
        self.H = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256,
                  "SCRAM-SHA-512": hashlib.sha512}[name]
        self.user, self.password = user, password
        self.gs2 = gs2_flag + ",,"
        self.state = "initial"

    def initial_response(self):
        # getRandomAscii(): 32 printable ASCII characters, no ','
        chars = [chr(c) for c in range(33, 127) if chr(c) != ","]
        self.nonce = "".join(random.SystemRandom().choice(chars) for _ in range(32))
        escaped = "".join({",": "=2C", "=": "=3D"}.get(ch, ch) for ch in self.user)
        self.first_bare = f"n={escaped},r={self.nonce}"
        self.state = "auth-text-sent"
        return (self.gs2 + self.first_bare).encode()

    def evaluate(self, data):
        text = data.decode("utf-8")
        if self.state == "auth-text-sent":
            attrs = {}
            for kv in text.split(","):
                if len(kv) < 3 or kv[1] != "=":
                    raise SmackSaslError(f"{self.name}: invalid key-value pair {kv!r} in {text!r}")
                attrs[kv[0]] = kv[2:]
            r = attrs.get("r")
            if r is None or len(r) <= len(self.nonce) or not r.startswith(self.nonce):
                raise SmackSaslError(f"{self.name}: server nonce {r!r} does not extend ours")
            if "i" not in attrs or "s" not in attrs:
                raise SmackSaslError(f"{self.name}: no iterations or salt in {text!r}")
            cfwp = f"c={b64(self.gs2.encode())},r={r}"
            auth_message = f"{self.first_bare},{text},{cfwp}".encode()
            salted = hashlib.pbkdf2_hmac(self.H().name, self.password.encode(),
                                         base64.b64decode(attrs["s"]), int(attrs["i"]))
            server_key = hmac.new(salted, b"Server Key", self.H).digest()
            client_key = hmac.new(salted, b"Client Key", self.H).digest()
            self.server_signature = hmac.new(server_key, auth_message, self.H).digest()
            signature = hmac.new(self.H(client_key).digest(), auth_message, self.H).digest()
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            self.state = "response-sent"
            return f"{cfwp},p={b64(proof)}".encode()
        if self.state == "response-sent":
            if text != "v=" + b64(self.server_signature):
                raise SmackSaslError(f"{self.name}: server final message {text!r} does not "
                                     "match the calculated one")
            self.state = "valid-server-response"
            return None
        raise SmackSaslError(f"{self.name}: data in state {self.state}: {text!r}")

    def check_successful(self):
        if self.state != "valid-server-response":
            raise SmackSaslError(f"{self.name} is missing valid server response (RFC 5802 §3: the "
                                 "server-final-message, which XEP-0388 carries in <additional-data/>)")



class Plain:
    name = "PLAIN"

    def __init__(self, user, password):
        self.user, self.password = user, password

    def initial_response(self):
        return f"\0{self.user}\0{self.password}".encode()

    def evaluate(self, data):
        return None

    def check_successful(self):
        pass


class HashedToken:
    """SaslHtMechanism HT-SHA-256-NONE (draft-schmaus-kitten-sasl-ht): initial response
    authcid NUL HMAC(token, "Initiator"); the server's final message must be
    HMAC(token, "Responder")."""

    name = HT

    def __init__(self, user, token):
        self.user, self.token = user, token
        self.state = "initial"

    def initial_response(self):
        self.state = "auth-sent"
        proof = hmac.new(self.token.encode(), b"Initiator", hashlib.sha256).digest()
        return self.user.encode() + b"\0" + proof

    def evaluate(self, data):
        want = hmac.new(self.token.encode(), b"Responder", hashlib.sha256).digest()
        if not hmac.compare_digest(data, want):
            raise SmackSaslError("SASL-HT mutual authentication failed: responder-msg mismatch")
        self.state = "valid-server-response"
        return None

    def check_successful(self):
        if self.state != "valid-server-response":
            raise SmackSaslError(f"SASL-HT ({HT}) is missing valid server response (the HMAC of "
                                 "'Responder' in <additional-data/>)")


# -------------------------------------------------------------- Smack's connection

class FastConfig:
    """FastModuleDescriptor.Builder: preferred mechanism HT-SHA-256-ENDP, autoRequestToken
    true, no token, unless set."""

    def __init__(self, preferred="HT-SHA-256-ENDP", auto_request=True, token=None):
        self.preferred, self.auto_request = preferred, auto_request
        self.token = token  # (token, mechanism, expiry or None, count)


class LoginResult:
    def __init__(self):
        self.mechanism = None  # Sasl2AuthenticationResult.getUsedSaslMechanism()
        self.success = None  # .getSuccessNonza()
        self.authorization_identifier = None
        self.resource_bound = False  # .isResourceBound()
        self.bind2 = None  # Bind2Module.getBind2SuccessResult(): dict, set only when bound
        self.failures = []  # SASL2 <failure/>s Smack fell back from (FAST)


class SmackConnection:
    """What ModularXmppClientToServerConnection puts on the wire, with the SASL2, Bind2 and FAST
    modules of the given configuration (all three by default, as SmackInitialization adds
    them)."""

    def __init__(self, server, clients, user, password, *, bind2=True, fast=None,
                 enabled=None, source_ip=None):
        self.server, self.clients = server, clients
        self.user, self.password = user, password
        self.bind2_module = bind2
        self.fast = fast if fast is not None else FastConfig()
        self.fast_module = True
        self.enabled = enabled  # ConnectionConfiguration's enabled SASL mechanisms (None: all)
        self.source_ip = source_ip
        self.ua_id = str(uuid.uuid4())  # one UserAgent per Sasl2ModuleDescriptor
        self.c = None
        self.authenticated = False
        self.user_jid = None

    # ConnectionConfiguration.isEnabledSaslMechanism
    def is_enabled(self, mech):
        return mech not in BLACKLISTED if self.enabled is None else mech in self.enabled

    def connect(self):
        """connect(): TCP, stream open (with 'from'), STARTTLS, stream open: the features."""
        c = self.clients.add(self.server.client(source_ip=self.source_ip))
        c.connect()
        frm = f" from='{self.user}@{self.server.domain}'"
        c.open_stream(extra=frm)
        if not c.tls:
            c.send_raw(f"<starttls xmlns='{NS_TLS}'/>")
            el = c.recv(lambda e: ns_of(e.tag) == NS_TLS, what="starttls reply")
            assert local(el.tag) == "proceed", tostring(el)
            c._wrap_tls()
            c.open_stream(extra=frm)
        self.c = c
        self.authenticated = False
        self.user_jid = None
        return c.features

    def disconnect(self):
        if self.c is not None:
            self.c.close()
        self.authenticated = False

    # ---------------------------------------------------------------- features
    def sasl2_feature(self):
        return self.c.feature(NS_SASL2, "authentication")

    def inline(self, ns, name):
        auth = self.sasl2_feature()
        inline = None if auth is None else auth.find(s2("inline"))
        return None if inline is None else inline.find(q(ns, name))

    def fast_mechanisms(self):
        fast = self.inline(NS_FAST, "fast")
        return [] if fast is None else [m.text.strip() for m in fast.findall(q(NS_FAST, "mechanism"))]

    def all_mechanisms(self):
        """Sasl2Feature.getAllAvailableMechanisms(): <mechanism/>s and the inline FAST ones."""
        mechs = [m.text.strip() for m in self.sasl2_feature().findall(s2("mechanism"))]
        return mechs + [m for m in self.fast_mechanisms() if m not in mechs]

    # -------------------------------------------------------------------- FAST
    def token_usable(self):
        """FastModule.hasUsableToken."""
        t = self.fast.token
        if not self.fast_module or t is None:
            return False
        token, mech, expiry, _ = t
        if expiry is not None and expiry < datetime.datetime.now(datetime.timezone.utc):
            return False
        return mech in self.all_mechanisms() and mech in SMACK_HT

    def best_fast_mechanism(self):
        """FastModule.selectBestAdvertisedFastMechanism."""
        offered = self.fast_mechanisms()
        if not offered:
            return None
        if self.fast.preferred in offered:
            return self.fast.preferred
        ours = [m for m in offered if m in SMACK_HT]
        if len(ours) > 1:
            pytest.fail(f"port limitation: Smack's order among {ours} is not modelled")
        return ours[0] if ours else offered[0]

    # --------------------------------------------------------------- mechanism
    def select(self, hooks, filter_ht=False):
        """SASLAuthentication.selectMechanism with Sasl2Authentication's skip reasons."""
        offered = self.all_mechanisms()
        for name in offered:
            if name.endswith("-PLUS") and name not in BLACKLISTED and self.is_enabled(name):
                pytest.fail(f"port limitation: Smack would try {name} (channel binding), not ported")
            if name in SMACK_HT and name != HT and self.fast.token and self.fast.token[1] == name:
                pytest.fail(f"port limitation: {name} is not ported")
        for name in sorted((m for m in offered if m in PRIORITY), key=PRIORITY.get):
            if not self.is_enabled(name):
                continue
            if name == HT:
                if filter_ht:
                    continue  # "FAST authentication failed; degrading to non-FAST"
                if not hooks:
                    continue  # a SaslTokenMechanism without token and without hook
                if self.fast.token is None:
                    continue  # "no FAST token stored in FastModule"
                if self.fast.token[1] != name:
                    continue
                return HashedToken(self.user, self.fast.token[0])
            if hooks and self.token_usable():
                continue  # "FAST token is present for ...; skipping ..."
            if name == "PLAIN":
                return Plain(self.user, self.password)
            # ScramMechanism.getGs2CbindFlag: TLS and the -PLUS variant enabled -> 'y'
            flag = "y" if self.c.tls and self.is_enabled(name + "-PLUS") else "n"
            return Scram(name, self.user, self.password, flag)
        raise AssertionError(f"Smack finds no SASL mechanism to use among {offered}")

    # ------------------------------------------------------------------- login
    def login(self, password=None, resource=None):
        """AbstractXMPPConnection.login(username, password, resource) on a connected
        connection: the walk Sasl2Init -> [Bind2 -> [FAST]] -> Sasl2Auth -> bound."""
        password = self.password if password is None else password
        saved, self.password = self.password, password
        try:
            return self._login(resource)
        finally:
            self.password = saved

    def _login(self, resource):
        c = self.c
        result = LoginResult()
        auth = self.sasl2_feature()
        assert auth is not None, "Sasl2InitState: 'SASL 2 Feature not announced': " + tostring(c.features)
        extensions = [f"<user-agent xmlns='{NS_SASL2}' id='{self.ua_id}'>"
                      f"<software>{SMACK_SOFTWARE}</software></user-agent>"]
        hooks = False
        bind2_entered = self.bind2_module and self.inline(NS_BIND2, "bind") is not None
        if bind2_entered:
            extensions.append(f"<bind xmlns='{NS_BIND2}'><tag>{resource}</tag></bind>"
                              if resource is not None else f"<bind xmlns='{NS_BIND2}'/>")
            # FastState.isTransitionToPossible
            if self.fast_module and (self.token_usable() or (
                    self.fast.auto_request and self.inline(NS_FAST, "fast") is not None)):
                hooks = True
        if hooks:  # FastModule.addAuthenticateExtensionsInternal
            if self.token_usable():
                token, mech, expiry, count = self.fast.token
                self.fast.token = (token, mech, expiry, count + 1)
                extensions.append(f"<fast xmlns='{NS_FAST}' count='{count + 1}'/>")
            elif self.fast.auto_request and self.inline(NS_FAST, "fast") is not None:
                m = self.best_fast_mechanism()
                if m is not None:
                    extensions.append(f"<request-token xmlns='{NS_FAST}' mechanism='{m}'/>")
        mech = self.select(hooks)
        try:
            success = self.sasl2_exchange(mech, extensions)
        except SASLFailure as e:
            # FastModule.onSasl2FailureInternal: a failed HT login degrades to the rest
            if not (hooks and isinstance(mech, HashedToken)):
                raise
            result.failures.append(e.element)
            self.fast.token = None  # deleteFastToken()
            extensions = [x for x in extensions if not x.startswith(f"<fast xmlns='{NS_FAST}'")]
            if self.fast.auto_request and self.inline(NS_FAST, "fast") is not None:
                m = self.best_fast_mechanism()
                if m is not None:
                    extensions.append(f"<request-token xmlns='{NS_FAST}' mechanism='{m}'/>")
            mech = self.select(hooks, filter_ht=True)
            success = self.sasl2_exchange(mech, extensions)
        result.mechanism = mech.name
        result.success = success
        ident = success.findtext(s2("authorization-identifier"))
        result.authorization_identifier = ident
        if ident is not None and has_resource(ident):
            result.resource_bound = True
            self.user_jid = ident  # connectionInternal.setUser(boundFullJid)
        if hooks:  # FastModule.onSasl2SuccessInternal
            tok = success.find(q(NS_FAST, "token"))
            if tok is not None:
                assert tok.get("token") is not None, \
                    "Smack's TokenProvider: \"Missing 'token' attribute on token element\": " + tostring(success)
                requested = [x for x in extensions if x.startswith(f"<request-token xmlns='{NS_FAST}'")]
                tmech = (requested[0].split("mechanism='")[1].split("'")[0] if requested
                         else mech.name if isinstance(mech, HashedToken) else self.fast.preferred)
                expiry = tok.get("expiry")
                when = None
                if expiry is not None:
                    try:
                        when = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
                    except ValueError:
                        raise AssertionError(f"Smack cannot parse the token's expiry {expiry!r} "
                                             "(XEP-0082 DateTime)") from None
                self.fast.token = (tok.get("token"), tmech, when, 0)
        if bind2_entered and result.resource_bound:  # Bind2Module's success callback
            result.bind2 = {"bound_resource": resourcepart(ident), "requested_resource": resource,
                            "bound": success.find(q(NS_BIND2, "bound")), "success": success}
        if not result.resource_bound:
            # Sasl2AuthState: waitForFeaturesReceived("server stream features after SASL2
            # authentication"), then RFC 6120 binding (ResourceBindingState)
            c.features = c.recv(lambda e: e.tag == q(NS_STREAM, "features"),
                                what="the stream features after SASL2 <success/> (XEP-0388)")
            assert c.feature(NS_BIND, "bind") is not None, \
                "Smack: ResourceBindingNotOfferedException: " + tostring(c.features)
            self.user_jid = c.bind(resource)
        self.authenticated = True
        return result

    def sasl2_exchange(self, mech, extensions):
        """Sasl2Authentication.authenticate(mechanism, ...): <authenticate/>, challenges
        answered, and <success/> checked as Smack checks it. Raises SASLFailure with the
        condition Smack's FailureProvider reads."""
        c = self.c
        ir = mech.initial_response()
        irx = f"<initial-response>{b64(ir)}</initial-response>" if ir is not None else ""
        c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mech.name}'>{irx}"
                   f"{''.join(extensions)}</authenticate>")
        el = reply(c)
        while el.tag == s2("challenge"):
            data = mech.evaluate(base64.b64decode((el.text or "").strip()))
            c.send_raw(f"<response xmlns='{NS_SASL2}'>{b64(data)}</response>" if data
                       else f"<response xmlns='{NS_SASL2}'/>")
            el = reply(c)
        if el.tag == s2("continue"):
            raise AssertionError("Smack: 'SASL2 continue task not supported': " + tostring(el))
        if el.tag == s2("failure"):
            condition = None
            for ch in el:
                if ns_of(ch.tag) == NS_SASL or (ns_of(ch.tag) == NS_SASL2 and local(ch.tag) in SASL_ERRORS):
                    condition = local(ch.tag)
            raise SASLFailure(condition, el)
        assert el.tag == s2("success"), "Smack: 'Unexpected SASL2 response nonza': " + tostring(el)
        data = el.findtext(s2("additional-data"))
        if data:
            mech.evaluate(base64.b64decode(data.strip()))
        try:
            mech.check_successful()  # afterFinalSaslChallenge()
        except SmackSaslError as e:
            raise AssertionError(f"{e}: {tostring(el)}") from None
        return el


def not_possible_unless(server, clients, inline=None):
    """The Java class's constructor: a connection is connected, and the class is 'not
    possible' without SASL2's feature (or without the given inline feature in it)."""
    _, user, pw = new_account(server)
    conn = SmackConnection(server, clients, user, pw)
    conn.connect()
    feature = conn.sasl2_feature()
    try:
        if feature is None:
            pytest.fail("Smack marks this 'not possible': XEP-0388: Extensible SASL Profile "
                        "(SASL2) not supported by service: " + tostring(conn.c.features))
        if inline is not None and conn.inline(*inline) is None:
            what = {NS_BIND2: "XEP-0386: Bind 2 (Bind2)", NS_FAST: "XEP-0484: FAST"}[inline[0]]
            pytest.fail(f"Smack marks this 'not possible': {what} not supported by service: "
                        + tostring(feature))
    finally:
        conn.disconnect()


def new_account(server, prefix="sinttest-"):
    """A fresh account as SINT registers one per low-level connection (random 24-character
    password)."""
    return server.new_user(prefix, password=insecure_random_string(24))


# ------------------------------------------------------------------ Sasl2IntegrationTest

def test_sasl2_authentication(server, clients):
    """Sasl2IntegrationTest.testSasl2Authentication, on a connection without the Bind2
    module (so no Bind2 and no FAST inline): connect().login() authenticates with SASL2,
    the result has its <success/> and mechanism, is not resource bound, and the connection
    ends with a full JID (RFC 6120 binding after SASL2).

    XEP-0388 §2.6.1 Success: '<success/> ... contains an <authorization-identifier/> element
    containing the negotiated identity - this is a bare JID, unless resource binding has
    occurred, in which case it is a full JID', and 'The <success> element is immediately
    followed by a <features> element containing the applicable stream features of the newly
    authenticated stream. Note that no stream restart occurs.'"""
    not_possible_unless(server, clients)
    jid, user, pw = new_account(server)
    conn = SmackConnection(server, clients, user, pw, bind2=False)
    conn.connect()
    try:
        result = conn.login()
        assert conn.authenticated, "Expected connection to be authenticated"
        assert conn.user_jid is not None, "Expected connection to have a bound user JID"
        assert resourcepart(conn.user_jid), \
            f"Expected connection user JID to have a resourcepart: {conn.user_jid}"
        assert result is not None, "Sasl2AuthenticationResult should be set after successful SASL2 authentication"
        assert result.success is not None, "Sasl2 Success nonza should not be null"
        assert result.mechanism is not None, "Used SASL mechanism should not be null"
        assert not result.resource_bound, \
            "Result should not be resource bound via SASL2 when Bind2 is disabled: " + tostring(result.success)
    finally:
        conn.disconnect()


def test_sasl2_authentication_failure(server, clients, source_ip):
    """Sasl2IntegrationTest.testSasl2AuthenticationFailure: login(username,
    'invalid-password-' + 16 random characters) on a connection without Bind2 throws a
    SASLErrorException carrying the SASL2 <failure/>, whose condition is not-authorized, and
    the connection is not authenticated.

    XEP-0388 §2.6.2 Failure: 'A <failure/> element is used by the server to terminate the
    authentication attempt. ... It MUST contain one of the SASL error codes from RFC 6120
    Section 6.5.'; RFC 6120 §6.5.10 <not-authorized/>: 'The authentication failed because the
    initiating entity provided credentials that are invalid'."""
    not_possible_unless(server, clients)
    jid, user, pw = new_account(server)
    conn = SmackConnection(server, clients, user, pw, bind2=False, source_ip=source_ip)
    conn.connect()
    try:
        with pytest.raises(SASLFailure) as e:
            conn.login(password="invalid-password-" + insecure_random_string(16))
        failure = e.value.element
        assert failure is not None and failure.tag == s2("failure"), "SASL2 Failure element should be present"
        assert e.value.condition == "not-authorized", tostring(failure)
        assert not conn.authenticated, "Connection should not be authenticated after failed login"
        conn.c.expect_nothing(lambda el: el.tag == s2("success"), 0.5, what="a <success/>")
    finally:
        conn.disconnect()


# ------------------------------------------------------------------ Bind2IntegrationTest

def test_bind2_resource_binding(server, clients):
    """Bind2IntegrationTest.testBind2ResourceBinding: login with resource 'bind2-test-' + 6
    random characters (sent as the Bind2 <tag/>): authenticated, the user JID has a
    resourcepart, the Bind2SuccessResult exists (Smack makes it only when the
    <authorization-identifier/> is a full JID) with its <bound/> and <success/>, its bound
    resource is the connection's, its requested resource the one asked for.

    XEP-0386 §Performing the bind: 'the server MUST respond with the SASL <success/> element,
    including the client's full JID in the <authorization-identity/> element, and a <bound/>
    element qualified by the 'urn:xmpp:bind:0' namespace'."""
    not_possible_unless(server, clients, (NS_BIND2, "bind"))
    jid, user, pw = new_account(server)
    conn = SmackConnection(server, clients, user, pw)
    conn.connect()
    try:
        requested = "bind2-test-" + insecure_random_string(6)
        result = conn.login(resource=requested)
        assert conn.authenticated, "Expected connection to be authenticated"
        assert conn.user_jid is not None, "Expected connection to have a bound user JID"
        assert resourcepart(conn.user_jid), \
            f"Expected connection user JID to have a resourcepart: {conn.user_jid}"
        b = result.bind2
        assert b is not None, "Bind2SuccessResult should not be null: " + tostring(result.success)
        assert b["bound"] is not None, \
            "Bound element in Bind2SuccessResult should not be null: " + tostring(result.success)
        assert b["success"] is not None, "Success nonza in Bind2SuccessResult should not be null"
        assert resourcepart(conn.user_jid) == b["bound_resource"]
        assert b["requested_resource"] == requested
    finally:
        conn.disconnect()


def test_bind2_server_generated_resource(server, clients):
    """Bind2IntegrationTest.testBind2ServerGeneratedResource: login with a null resource
    (<bind xmlns='urn:xmpp:bind:0'/>, no <tag/>): authenticated, the bound JID has a
    resourcepart, the Bind2SuccessResult exists with its <bound/> and <success/>, its bound
    resource is the connection's and it has no requested resource.

    XEP-0386 §Performing the bind: 'the server MUST respond with the SASL <success/> element,
    including the client's full JID in the <authorization-identity/> element, and a <bound/>
    element qualified by the 'urn:xmpp:bind:0' namespace'."""
    not_possible_unless(server, clients, (NS_BIND2, "bind"))
    jid, user, pw = new_account(server)
    conn = SmackConnection(server, clients, user, pw)
    conn.connect()
    try:
        result = conn.login(resource=None)
        assert conn.authenticated, "Expected connection to be authenticated"
        assert conn.user_jid is not None, "Expected connection to have a bound user JID"
        assert resourcepart(conn.user_jid), \
            f"Expected bound resourcepart to be present: {conn.user_jid}"
        b = result.bind2
        assert b is not None, "Bind2SuccessResult should not be null: " + tostring(result.success)
        assert b["bound"] is not None, \
            "Bound element in Bind2SuccessResult should not be null: " + tostring(result.success)
        assert b["success"] is not None, "Success nonza in Bind2SuccessResult should not be null"
        assert resourcepart(conn.user_jid) == b["bound_resource"]
        assert b["requested_resource"] is None, \
            "Expected requestedResource to be null for server-generated resource"
    finally:
        conn.disconnect()


# -------------------------------------------------------------------- FastIntegrationTest

def test_fast_token_request_and_subsequent_authentication(server, clients):
    """FastIntegrationTest.testFastTokenRequestAndSubsequentAuthentication: a connection whose
    FAST module prefers HT-SHA-256-NONE and requests tokens, with only SCRAM-SHA-256-PLUS,
    SCRAM-SHA-256, HT-SHA-256-NONE and HT-SHA-256-ENDP enabled, logs in (SCRAM-SHA-256 with
    <request-token mechanism='HT-SHA-256-NONE'/>) and holds a FAST token; disconnected and
    connected again, the same connection logs in with that token, by a SaslHtMechanism.

    XEP-0484 §Server provides token to client: 'Upon receiving a token request and successfully
    authenticating the client, the server generates a new unique token, valid for the requested
    mechanism, and includes it in the SASL2 <success/> response in a <token/> element'; §Client
    authenticates using FAST: 'The client authenticates normally using SASL2, using the FAST SASL
    mechanism it previously selected, and the token provided by the server' (with <fast/>, here
    count='1'); draft-schmaus-kitten-sasl-ht: the server's final message is HMAC(token,
    'Responder'), which Smack requires before the login succeeds."""
    not_possible_unless(server, clients, (NS_FAST, "fast"))
    jid, user, pw = new_account(server)
    conn = SmackConnection(server, clients, user, pw,
                           fast=FastConfig(preferred=HT, auto_request=True),
                           enabled={"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", HT, "HT-SHA-256-ENDP"})
    conn.connect()
    try:
        first = conn.login()
        assert conn.authenticated, "Connection 1 should be authenticated"
        assert conn.fast_module
        assert conn.fast.token is not None, \
            "FAST token should have been received and stored: " + tostring(first.success)
    finally:
        conn.disconnect()

    # Reconnect using the stored FAST token for fast re-authentication
    conn.connect()
    try:
        second = conn.login()
        assert conn.authenticated, "Connection should be authenticated using FAST"
        assert second is not None and second.success is not None
        assert second.mechanism in SMACK_HT, \
            (f"Expected FAST authentication to use SaslHtMechanism, used {second.mechanism} "
             f"(token {conn.fast.token[1:] if conn.fast.token else None}): " + tostring(second.success))
    finally:
        conn.disconnect()


def test_fast_invalid_fast_token_degrades_gracefully(server, clients, source_ip):
    """FastIntegrationTest.testInvalidFastTokenDegradesGracefully: a connection whose FAST
    module holds the token 'invalid-fast-token-xyz' for HT-SHA-256-NONE (and requests tokens)
    logs in: the HT-SHA-256-NONE attempt fails, Smack drops the token and authenticates again
    on the same stream with its password (no HT mechanism, <request-token/> instead of
    <fast/>), and the connection is authenticated.

    XEP-0484 §Business Rules: 'If a client attempts authentication using a token, but the
    server returns a SASL <failure/>, the client SHOULD discard the token and automatically fall
    back to alternative authentication mechanisms.'; XEP-0388 §2.6 Completing Authentication:
    'It may also fail, in which case the client is not authenticated and the stream and
    session state remain entirely unchanged.'"""
    not_possible_unless(server, clients, (NS_FAST, "fast"))
    jid, user, pw = new_account(server)
    conn = SmackConnection(server, clients, user, pw, source_ip=source_ip,
                           fast=FastConfig(auto_request=True,
                                           token=("invalid-fast-token-xyz", HT, None, 0)))
    conn.connect()
    try:
        # Should not fail, but fall back gracefully
        result = conn.login()
        assert conn.authenticated, ("Connection should be authenticated after graceful fallback: "
                                    + " then ".join(tostring(f) for f in result.failures)
                                    + " then " + tostring(result.success))
    finally:
        conn.disconnect()
