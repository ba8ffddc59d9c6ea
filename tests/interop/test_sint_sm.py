"""Ports of the XEP-0198 Stream Management interop tests: Smack's StreamManagementTest
(testStreamManagement) and the server extensions' StreamManagementLowLevelIntegrationTest
(enable with and without resumption and 'max', enable before authentication, <r/> answered,
the SM-ID present and unique for subsequent and simultaneous sessions, <resume/> answered,
an unknown 'previd' refused).

Smack enables stream management right after resource binding, as login_sm does; its
instantShutdown drops the socket without closing the stream, as drop does.
"""

from rawxmpp import C, q, tostring
from test_sint_helpers import rnd
from test_sm import NS_SM, ack_h, drop, login_sm, resume, sm


def enable(server, resume_=None, max_=None):
    """Smack's login with stream management on: bind, then <enable/> (resume / max as
    configured); the server MUST answer <enabled/> or <failed/> (XEP-0198 3)."""
    jid, user, pw = server.new_user("sintsm")
    c = server.client()
    c.start()
    c.auth(user, pw)
    c.bind(f"smack-{rnd(5)}")
    attrs = "" if resume_ is None else f" resume='{resume_}'"
    attrs += f" max='{max_}'" if max_ else ""
    c.send_raw(f"<enable xmlns='{NS_SM}'{attrs}/>")
    r = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed")), 5, what="<enabled/> or <failed/>")
    c.password, c.bare = pw, jid
    return c, r


def test_stream_management(server, clients):
    """StreamManagementTest.testStreamManagement: body1 reaches conTwo; conOne's connection
    is cut (instantShutdown) while body2 waits in its unacknowledged queue; conOne resumes
    and sends it again (XEP-0198 5: the client retransmits what the server did not ack), then
    body3: conTwo gets all three, in order, from conOne's one full JID."""
    two = clients.add(server.online("sintsm2"))
    jid, _, pw = server.new_user("sintsm1")
    one, enabled = login_sm(server, jid, pw, resume=True)
    clients.add(one)
    full = one.jid
    run = rnd()
    b1, b2, b3 = (f"Hi, what's up? {run}", f"Hi, what's up? I've been just instantly shutdown{run}",
                  f"Hi, what's up? I've been just resumed{run}")
    one.message(two.jid, b1, type_=None)
    got = two.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None, 5, what="body1")
    assert (got.findtext(C("body")), got.get("from")) == (b1, full), tostring(got)
    # the server handled presence + body1: that is what Smack has seen acked at most; body2 is
    # queued on the client when the connection goes
    handled_by_client = 1  # own presence reflected
    drop(one)
    one2, r = resume(server, jid, pw, enabled.get("id"), handled_by_client)
    clients.add(one2)
    assert r.tag == sm("resumed"), tostring(r)
    h = int(r.get("h"))
    assert h == 2, f"the server handled presence and body1, it says {h}: {tostring(r)}"
    one2.message(two.jid, b2, type_=None)
    one2.message(two.jid, b3, type_=None)
    for want in (b2, b3):
        got = two.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None, 5, what=want)
        assert (got.findtext(C("body")), got.get("from")) == (want, full), tostring(got)
    two.expect_nothing(lambda e: e.tag == C("message"), 0.3, what="a duplicate")


def test_enable(server, clients):
    """...testEnable (XEP-0198 3: the server MUST reply to <enable/> with <enabled/> or
    <failed/>), no resumption asked."""
    c, r = enable(server)
    clients.add(c)
    assert r.tag in (sm("enabled"), sm("failed")), tostring(r)
    assert c.ping_server().get("type") == "result"


def test_enable_with_resumption(server, clients):
    """...testEnableWithResumption: resume='true'."""
    c, r = enable(server, resume_="true")
    clients.add(c)
    assert r.tag in (sm("enabled"), sm("failed")), tostring(r)
    assert c.ping_server().get("type") == "result"


def test_enable_with_resumption_and_max_resumption_time(server, clients):
    """...testEnableWithResumptionAndMaxResumptionTime: resume='true' max='30'."""
    c, r = enable(server, resume_="true", max_=30)
    clients.add(c)
    assert r.tag in (sm("enabled"), sm("failed")), tostring(r)
    if r.get("max") is not None:
        assert int(r.get("max")) > 0, tostring(r)
    assert c.ping_server().get("type") == "result"


def test_enable_before_login(server, clients):
    """...testEnableBeforeLogin (XEP-0198 3: the client MUST NOT negotiate stream management
    until it is authenticated; the server SHALL enforce this order and return a <failed/>
    element): an <enable/> after STARTTLS, before SASL, is answered with <failed/> (Smack then
    fails its login with that <failed/>, not with a stream error)."""
    jid, user, pw = server.new_user("sintsmb")
    c = clients.add(server.client())
    c.start()
    c.send_raw(f"<enable xmlns='{NS_SM}'/>")
    r = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed")) or e.tag.endswith("}error"), 5,
               what="<failed/>")
    assert r.tag == sm("failed"), tostring(r)
    server.assert_healthy()


def test_requests_are_acknowledged(server, clients):
    """...testRequestsAreAcknowledged (XEP-0198 4: an <r/> MUST be acknowledged with an
    <a/>): a ping to the domain, then <r/>."""
    c, r = enable(server)
    clients.add(c)
    assert r.tag == sm("enabled"), tostring(r)
    iid = f"ping-{rnd()}"
    c.send_raw(f"<iq type='get' id='{iid}' to='{server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert ack_h(c, 5) >= 1


def test_enabled_with_resumption_has_id(server, clients):
    """...testEnabledWithResumptionHasId (XEP-0198 5: a server that allows resumption MUST
    include an 'id')."""
    c, r = enable(server, resume_="true")
    clients.add(c)
    assert r.tag == sm("enabled"), tostring(r)
    if r.get("resume") in ("true", "1"):
        assert r.get("id"), tostring(r)


def _sm_id(c, r):
    assert r.tag == sm("enabled") and r.get("resume") in ("true", "1"), \
        "Smack marks this 'not possible' when the stream cannot be resumed: " + tostring(r)
    return r.get("id")


def test_sm_id_unique_in_subsequent_sessions(server, clients):
    """...testStreamManagementIdUniqueInSubsequentSessions (XEP-0198 5: the SM-ID MUST NOT
    be reused for subsequent sessions): five sessions one after the other."""
    ids = set()
    for _ in range(5):
        c, r = enable(server, resume_="true")
        ids.add(_sm_id(c, r))
        c.close()
    assert len(ids) == 5, ids


def test_sm_id_unique_in_simultaneous_sessions(server, clients):
    """...testStreamManagementIdUniqueInSimultaneousSessions (... nor for simultaneous
    sessions): five sessions at once."""
    ids = set()
    for _ in range(5):
        c, r = enable(server, resume_="true")
        clients.add(c)
        ids.add(_sm_id(c, r))
    assert len(ids) == 5, ids


def test_resume_response(server, clients):
    """...testResumeResponse (XEP-0198 5: to <resume/> the server MUST return <resumed/>, or
    <failed/> when it does not support resumption): enable with resumption, drop the
    connection (instantShutdown), resume."""
    jid, _, pw = server.new_user("sintsmr")
    c, enabled = login_sm(server, jid, pw, resume=True, presence=False)
    sm_id = _sm_id(c, enabled)
    drop(c)
    c2, r = resume(server, jid, pw, sm_id, 0)
    clients.add(c2)
    assert r.tag in (sm("resumed"), sm("failed")), tostring(r)
    assert r.tag == sm("resumed"), "Starling keeps detached sessions resumable: " + tostring(r)
    assert c2.ping_server().get("type") == "result"


def test_reject_invalid_resume(server, clients):
    """...testRejectInvalidResume (XEP-0198 5: if the server does not recognise the 'previd'
    it MUST return <failed/>): previd 'non-existing-previd-' + 23 random characters."""
    jid, _, pw = server.new_user("sintsmi")
    c, r = resume(server, jid, pw, "non-existing-previd-" + rnd(23), 0)
    clients.add(c)
    assert r.tag == sm("failed"), tostring(r)
    # the stream goes on: Smack then binds a new session
    assert c.bind(f"after-{rnd(4)}")



def test_sm_before_authentication_fails_and_the_stream_goes_on(server, clients):
    """Beyond the Java (same rule, XEP-0198 3): <enable/> and <resume/> before STARTTLS and
    before SASL each get <failed/> with <unexpected-request/>; the client then negotiates TLS,
    authenticates, binds and enables stream management on the same connection."""
    jid, user, pw = server.new_user("sintsmp")
    c = clients.add(server.client())
    c.connect()
    c.open_stream()
    for el in (f"<enable xmlns='{NS_SM}' resume='true'/>", f"<resume xmlns='{NS_SM}' previd='x{rnd()}' h='0'/>"):
        c.send_raw(el)
        r = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed"), sm("resumed")) or e.tag.endswith("}error"), 5,
                   what="<failed/> before STARTTLS")
        assert r.tag == sm("failed"), tostring(r)
        assert r.find(q("urn:ietf:params:xml:ns:xmpp-stanzas", "unexpected-request")) is not None, tostring(r)
    c.starttls()
    for el in (f"<enable xmlns='{NS_SM}'/>", f"<resume xmlns='{NS_SM}' previd='x{rnd()}' h='0'/>"):
        c.send_raw(el)
        r = c.recv(lambda e: e.tag in (sm("enabled"), sm("failed"), sm("resumed")) or e.tag.endswith("}error"), 5,
                   what="<failed/> before SASL")
        assert r.tag == sm("failed"), tostring(r)
        assert r.find(q("urn:ietf:params:xml:ns:xmpp-stanzas", "unexpected-request")) is not None, tostring(r)
    c.auth(user, pw)
    c.bind("after")
    c.send_raw(f"<enable xmlns='{NS_SM}'/>")
    assert c.recv(lambda e: e.tag in (sm("enabled"), sm("failed")), 5).tag == sm("enabled")
    assert c.ping_server().get("type") == "result"
