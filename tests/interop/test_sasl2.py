"""XEP-0388 SASL2 and XEP-0386 Bind2, with what can be done inline: XEP-0198 enable and
resumption, XEP-0280 carbons, XEP-0352 client state. Raw XML: a library would hide what
the server puts in <success/> and in what order."""

import base64
import hashlib
import hmac
import os
import time

import pytest

from cluster import shared_cluster  # noqa: F401 (fixture)
from rawxmpp import (C, NS_SASL, NS_STREAM, SASLFailure, StreamClosed, XMPPTimeout, local,
                     new_id, ns_of, q, tostring)
from test_sm import drop, no_resumption_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.starling_only

NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_SM = "urn:xmpp:sm:3"
ENDP = "HT-SHA-256-ENDP"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_CSI = "urn:xmpp:csi:0"
CHATSTATE = "<active xmlns='http://jabber.org/protocol/chatstates'/>"


def s2(name):
    return q(NS_SASL2, name)


def reply(c):
    return c.recv(lambda e: ns_of(e.tag) == NS_SASL2, what="SASL2 reply")


def check(el):
    if local(el.tag) == "failure":
        conds = [ch for ch in el if ns_of(ch.tag) == NS_SASL]
        assert len(conds) == 1, "one RFC 6120 condition in its namespace: " + tostring(el)
        raise SASLFailure(local(conds[0].tag), el)
    return el


def user_agent(ua_id):
    return (f"<user-agent id='{ua_id}'><software>starling-tests</software>"
            f"<device>pytest</device></user-agent>") if ua_id else ""


def authenticate(c, user, pw, mech="SCRAM-SHA-256", inline="", ua_id=None, raw_initial=None):
    """One SASL2 exchange; returns <success/> (the stream's features after it are read
    into c.features). Raises SASLFailure on <failure/>."""
    extra = user_agent(ua_id) + inline
    if mech == "PLAIN":
        ir = raw_initial or base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
        c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='PLAIN'>"
                   f"<initial-response>{ir}</initial-response>{extra}</authenticate>")
        el = check(reply(c))
        final = None
    else:
        H = getattr(hashlib, {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256",
                              "SCRAM-SHA-512": "sha512"}.get(mech, "sha256"))
        cnonce = base64.b64encode(os.urandom(18)).decode()
        gs2, cfb = "n,,", f"n={user},r={cnonce}"
        ir = raw_initial or base64.b64encode((gs2 + cfb).encode()).decode()
        c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mech}'>"
                   f"<initial-response>{ir}</initial-response>{extra}</authenticate>")
        el = check(reply(c))
        assert el.tag == s2("challenge"), tostring(el)
        sf = base64.b64decode(el.text).decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        salt, it = base64.b64decode(attrs["s"]), int(attrs["i"])
        cfwp = f"c={base64.b64encode(gs2.encode()).decode()},r={attrs['r']}"
        salted = hashlib.pbkdf2_hmac(H().name, pw.encode(), salt, it)
        ckey = hmac.new(salted, b"Client Key", H).digest()
        authmsg = f"{cfb},{sf},{cfwp}".encode()
        csig = hmac.new(H(ckey).digest(), authmsg, H).digest()
        proof = bytes(a ^ b for a, b in zip(ckey, csig))
        cf = f"{cfwp},p={base64.b64encode(proof).decode()}"
        c.send_raw(f"<response xmlns='{NS_SASL2}'>{base64.b64encode(cf.encode()).decode()}</response>")
        el = check(reply(c))
        skey = hmac.new(salted, b"Server Key", H).digest()
        final = "v=" + base64.b64encode(hmac.new(skey, authmsg, H).digest()).decode()
    assert el.tag == s2("success"), tostring(el)
    if final is not None:
        # XEP-0388: the SCRAM server-final is the success's additional data
        got = base64.b64decode(el.findtext(s2("additional-data")) or "").decode()
        assert got == final, f"server signature mismatch: {got!r}"
    ident = el.findtext(s2("authorization-identifier"))
    assert ident, "a SASL2 success always has the authorization identifier: " + tostring(el)
    c.jid = ident
    c.authenticated = True
    # XEP-0388: <success/> is followed by the features of the stream, with no restart
    c.features = c.recv(lambda e: e.tag == q(NS_STREAM, "features"), what="features after success")
    return el


def bind2(tag=None, *, carbons=False, sm=False, inactive=False):
    inner = f"<tag>{tag}</tag>" if tag is not None else ""
    if carbons:
        inner += f"<enable xmlns='{NS_CARBONS}'/>"
    if sm:
        inner += f"<enable xmlns='{NS_SM}' resume='true'/>"
    if inactive:
        inner += f"<inactive xmlns='{NS_CSI}'/>"
    return f"<bind xmlns='{NS_BIND2}'>{inner}</bind>"


def bodies(c, n):
    return [c.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None,
                   what="message").findtext(C("body")) for _ in range(n)]


# --------------------------------------------------------------------- the feature

def test_feature_offered_with_legacy_mechanisms_kept(server, clients):
    c = clients.add(server.client()).start()
    auth = c.feature(NS_SASL2, "authentication")
    assert auth is not None, tostring(c.features)
    mechs = [m.text for m in auth.findall(s2("mechanism"))]
    assert mechs == c.mechanisms() and "SCRAM-SHA-256" in mechs, (mechs, c.mechanisms())
    inline = auth.find(s2("inline"))
    bind = inline.find(q(NS_BIND2, "bind"))
    vars_ = {f.get("var") for f in bind.find(q(NS_BIND2, "inline"))}
    assert vars_ == {NS_CARBONS, NS_CSI, NS_SM}, vars_
    assert inline.find(q(NS_SM, "sm")) is not None, tostring(auth)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1", "SCRAM-SHA-512", "PLAIN"])
def test_login_without_bind_then_legacy_bind_on_the_same_stream(server, clients, mech):
    jid, user, pw = server.new_user("s2")
    c = clients.add(server.client()).start()
    ok = authenticate(c, user, pw, mech)
    assert ok.findtext(s2("authorization-identifier")) == jid
    # not bound: RFC 6120 binding is offered on the same stream
    assert c.feature("urn:ietf:params:xml:ns:xmpp-bind", "bind") is not None, tostring(c.features)
    assert c.bind("legacy") == jid + "/legacy"
    assert c.ping_server().get("type") == "result"


# ------------------------------------------------------------------------- failures

def test_wrong_password_fails_and_a_retry_on_the_stream_succeeds(server, clients, source_ip):
    jid, user, pw = server.new_user("s2w")
    c = clients.add(server.client(source_ip=source_ip)).start()
    for mech in ("SCRAM-SHA-256", "PLAIN"):
        with pytest.raises(SASLFailure) as e:
            authenticate(c, user, pw + "x", mech, inline=bind2("x"))
        assert e.value.condition == "not-authorized"
    # the failed attempts bound nothing: a correct one does
    ok = authenticate(c, user, pw, inline=bind2("Retry"))
    assert ok.findtext(s2("authorization-identifier")).startswith(jid + "/Retry/")


def test_wrong_passwords_are_throttled_as_with_legacy_sasl(fresh_server, clients, source_ip):
    srv = fresh_server
    jid, user, pw = srv.new_user("s2t")
    durations, refused = [], 0
    for i in range(8):
        c = clients.add(srv.client(source_ip=source_ip, timeout=15))
        t0 = time.monotonic()
        try:
            c.start()
            authenticate(c, user, "wrong-" + str(i), "SCRAM-SHA-1")
        except SASLFailure as e:
            if e.condition == "temporary-auth-failure":
                refused += 1
            else:
                assert e.condition == "not-authorized", e.condition
        except (StreamClosed, XMPPTimeout, OSError):
            refused += 1
        else:
            raise AssertionError("wrong password accepted")
        durations.append(time.monotonic() - t0)
        c.shutdown()
    assert refused > 0 or sum(durations[4:]) >= 2.0, f"no throttling: {durations}"
    srv.assert_healthy()


def test_unknown_mechanism_is_invalid_mechanism(server, clients):
    c = clients.add(server.client()).start()
    c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='X-NOPE'>"
               f"<initial-response>AA==</initial-response></authenticate>")
    with pytest.raises(SASLFailure) as e:
        check(reply(c))
    assert e.value.condition == "invalid-mechanism"
    server.assert_healthy()


def test_malformed_base64_is_incorrect_encoding(server, clients):
    jid, user, pw = server.new_user("s2b")
    c = clients.add(server.client()).start()
    with pytest.raises(SASLFailure) as e:
        authenticate(c, user, pw, "PLAIN", raw_initial="b!ws")
    assert e.value.condition == "incorrect-encoding"
    ok = authenticate(c, user, pw, "PLAIN")  # the stream goes on
    assert ok.findtext(s2("authorization-identifier")) == jid


@pytest.mark.parametrize("tag", ["x" * 65, "bad\u202etag", "tab\there", ""])
def test_bad_bind_tag_is_malformed_request(server, clients, tag):
    jid, user, pw = server.new_user("s2g")
    other = clients.add(server.online("s2go"))
    c = clients.add(server.client()).start()
    with pytest.raises(SASLFailure) as e:
        authenticate(c, user, pw, inline=bind2(tag))
    assert e.value.condition == "malformed-request"
    assert e.value.element.findtext(s2("text")), tostring(e.value.element)
    ok = authenticate(c, user, pw, inline=bind2("Good"))
    assert ok.findtext(s2("authorization-identifier")).startswith(jid + "/Good/")
    server.assert_healthy(other)


def test_second_authenticate_after_success_is_a_stream_error(server, clients):
    jid, user, pw = server.new_user("s2a")
    other = clients.add(server.online("s2ao"))
    for inline in ("", bind2("T")):
        c = clients.add(server.client()).start()
        authenticate(c, user, pw, inline=inline)
        c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='PLAIN'>"
                   f"<initial-response>AA==</initial-response></authenticate>")
        assert c.expect_stream_error() is not None
    server.assert_healthy(other)


def test_bind2_before_authentication_is_a_stream_error(server, clients):
    other = clients.add(server.online("s2x"))
    c = clients.add(server.client()).start()
    c.send_raw(bind2("Early"))
    assert c.expect_stream_error() is not None
    server.assert_healthy(other)


def test_abort(server, clients):
    jid, user, pw = server.new_user("s2ab")
    c = clients.add(server.client()).start()
    ir = base64.b64encode(f"n,,n={user},r=abc".encode()).decode()
    c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='SCRAM-SHA-256'>"
               f"<initial-response>{ir}</initial-response></authenticate>")
    assert reply(c).tag == s2("challenge")
    c.send_raw(f"<abort xmlns='{NS_SASL2}'/>")
    with pytest.raises(SASLFailure) as e:
        check(reply(c))
    assert e.value.condition == "aborted"


def test_other_traffic_during_the_exchange_disconnects(server, clients):
    """XEP-0388 §During Authentication: only <response/> or <abort/>; anything else ends
    the stream (and only this one)."""
    jid, user, pw = server.new_user("s2d")
    other = clients.add(server.online("s2do"))
    c = clients.add(server.client()).start()
    ir = base64.b64encode(f"n,,n={user},r=abc".encode()).decode()
    c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='SCRAM-SHA-256'>"
               f"<initial-response>{ir}</initial-response></authenticate>")
    assert reply(c).tag == s2("challenge")
    c.send_raw("<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert c.expect_stream_error() == "policy-violation"
    server.assert_healthy(other)


# ---------------------------------------------------------------------------- Bind2

def test_bind2_with_inline_carbons_and_sm(server, clients):
    jid, user, pw = server.new_user("s2c")
    peer = clients.add(server.online("s2cp"))
    c = clients.add(server.client()).start()
    ok = authenticate(c, user, pw, inline=bind2("AwesomeXMPP", carbons=True, sm=True),
                      ua_id="d4565fa7-4d72-4749-b3d3-740edbf87770")
    full = ok.findtext(s2("authorization-identifier"))
    assert full.startswith(jid + "/AwesomeXMPP/") and len(full) > len(jid) + 13, full
    # the user-agent id is not exposed in the resource
    assert "d4565fa7" not in full
    bound = ok.find(q(NS_BIND2, "bound"))
    assert bound is not None, tostring(ok)
    enabled = bound.find(q(NS_SM, "enabled"))
    assert enabled is not None and enabled.get("id") and enabled.get("resume") == "true", tostring(ok)
    # the archive's state at binding (XEP-0386, XEP-0313 metadata): empty so far
    md = bound.find("{urn:xmpp:mam:2}metadata")
    assert md is not None and md.find("{urn:xmpp:mam:2}end") is None, tostring(ok)
    # bound: stanzas work at once, initial presence is the client's to send
    assert c.ping_server().get("type") == "result"
    # stream management is on: <r/> is answered with what it handled (the ping)
    c.send_raw(f"<r xmlns='{NS_SM}'/>")
    a = c.recv(lambda e: e.tag == q(NS_SM, "a"), what="ack")
    assert a.get("h") == "1", tostring(a)
    # carbons are on: what another resource sends is copied here
    c.presence()
    other = clients.add(server.login(jid, pw, resource="desk", presence=True))
    mid = other.message(peer.jid, "copied?")
    sent = c.recv(lambda e: e.tag == C("message") and e.find(q(NS_CARBONS, "sent")) is not None,
                  what="a sent carbon")
    fwd = sent.find(q(NS_CARBONS, "sent")).find("{urn:xmpp:forward:0}forwarded")
    assert fwd.find(C("message")).get("id") == mid, tostring(sent)
    # the same is said again inline: <enable/> a second time is refused
    c.send_raw(f"<enable xmlns='{NS_SM}' resume='true'/>")
    f = c.recv(lambda e: ns_of(e.tag) == NS_SM and local(e.tag) == "failed", what="failed")
    assert f.find("{urn:ietf:params:xml:ns:xmpp-stanzas}unexpected-request") is not None, tostring(f)
    assert c.ping_server().get("type") == "result"


def test_bind2_without_tag_and_stable_resource_per_user_agent(server, clients):
    jid, user, pw = server.new_user("s2r")
    c = clients.add(server.client()).start()
    first = authenticate(c, user, pw, inline=bind2(), ua_id="ua-1")
    r1 = first.findtext(s2("authorization-identifier"))
    assert r1.startswith(jid + "/") and len(r1) > len(jid) + 1
    # the same client (user-agent id) again: the same resource, the old session replaced
    d = clients.add(server.client()).start()
    r2 = authenticate(d, user, pw, inline=bind2(), ua_id="ua-1").findtext(s2("authorization-identifier"))
    assert r2 == r1
    assert c.expect_stream_error() == "conflict"
    # another client of the user: another resource
    e = clients.add(server.client()).start()
    r3 = authenticate(e, user, pw, inline=bind2(), ua_id="ua-2").findtext(s2("authorization-identifier"))
    assert r3 != r1
    server.assert_healthy(d, e)


def test_bind2_inactive_holds_presence(server, clients):
    jid, user, pw = server.new_user("s2i")
    contact = clients.add(server.online("s2ic"))
    c = clients.add(server.client()).start()
    ok = authenticate(c, user, pw, inline=bind2("Idle", inactive=True))
    me = ok.findtext(s2("authorization-identifier"))
    contact.presence(to=me, status="held")
    mid = contact.message(me, None, extra=CHATSTATE)  # not a reason to wake the client
    c.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="marker")
    held = [e for e in c.queue if e.tag == C("presence")]
    assert not held, "presence reached an inactive client: " + tostring(held[0])
    c.send_raw(f"<active xmlns='{NS_CSI}'/>")
    p = c.recv(lambda e: e.tag == C("presence") and e.get("from") == contact.jid, what="held presence")
    assert p.findtext(C("status")) == "held"


# ----------------------------------------------------------------- inline resumption

def test_bind2_clears_archived_offline_messages_and_keeps_the_rest(server, clients):
    """XEP-0386 §3.2: the bind clears the user's offline messages "without sending them (as
    they will be provided by MAM)". A message the archive does not hold (archiving preference
    'never' when it came) is not in MAM: it still comes with initial presence, as for any
    client; the archived one is read from the archive."""
    from test_mam import NS_MAM, archived_bodies
    jid, user, pw = server.new_user("b2o")
    sender = clients.add(server.online("b2os"))
    c = clients.add(server.login(jid, pw))  # bound, never available: messages are stored
    for default, body in (("never", "kept offline"), ("always", "in the archive")):
        r = c.iq("set", f"<prefs xmlns='{NS_MAM}' default='{default}'/>")
        assert r.get("type") == "result", tostring(r)
        sender.message(jid, body)
        assert sender.ping_server().get("type") == "result"  # handled (and stored) first
    c.close()
    d = clients.add(server.client()).start()
    authenticate(d, user, pw, inline=bind2("B"), ua_id=new_id("ua"))
    d.iq("get", "<query xmlns='jabber:iq:roster'/>")
    d.presence()
    got = bodies(d, 1)
    assert got == ["kept offline"], got
    with pytest.raises(XMPPTimeout):
        d.recv(lambda e: local(e.tag) == "message" and e.find(C("body")) is not None, timeout=1.5)
    assert archived_bodies(d) == ["in the archive"]
    # and gone from offline storage: a legacy login with presence gets nothing either
    e = clients.add(server.login(jid, pw, presence=True))
    with pytest.raises(XMPPTimeout):
        e.recv(lambda m: local(m.tag) == "message" and m.find(C("body")) is not None, timeout=1.5)


def login_bind2_sm(server, clients, user, pw, tag="Phone"):
    c = server.client().start()
    ok = authenticate(c, user, pw, inline=bind2(tag, sm=True), ua_id=new_id("ua"))
    enabled = ok.find(q(NS_BIND2, "bound")).find(q(NS_SM, "enabled"))
    return c, ok.findtext(s2("authorization-identifier")), enabled.get("id")


def resume_inline(node, user, pw, previd, h, also_bind=False):
    r = node.client().start()
    inline = f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>"
    if also_bind:
        inline += bind2("Fresh", sm=True)
    return r, authenticate(r, user, pw, inline=inline)


def test_inline_resume_after_a_dropped_connection(server, clients):
    jid, user, pw = server.new_user("s2s")
    sender = clients.add(server.online("s2ss"))
    c, full, previd = login_bind2_sm(server, clients, user, pw)
    for i in range(4):
        sender.message(full, f"m{i}")
    assert bodies(c, 4) == [f"m{i}" for i in range(4)]
    drop(c)
    for i in range(4, 7):
        sender.message(full, f"m{i}")
    assert sender.ping_server().get("type") == "result"
    # it reports having handled two of the four it got
    r, ok = resume_inline(server, user, pw, previd, 2, also_bind=True)
    clients.add(r)
    resumed = ok.find(q(NS_SM, "resumed"))
    assert resumed is not None and resumed.get("previd") == previd, tostring(ok)
    assert resumed.get("h") == "0", tostring(resumed)
    # resumption skips binding: the old full JID, no <bound/>
    assert ok.findtext(s2("authorization-identifier")) == full
    assert ok.find(q(NS_BIND2, "bound")) is None, tostring(ok)
    # everything not acknowledged comes again, in order, none lost
    assert bodies(r, 5) == [f"m{i}" for i in range(2, 7)]
    r.expect_nothing(lambda e: e.tag == C("message"), 0.7, what="a duplicate")
    # acks count on from the client's h
    r.send_raw(f"<a xmlns='{NS_SM}' h='7'/>")
    mid = sender.message(full, "after")
    assert r.recv_stanza("message", id=mid).get("to") == full
    server.assert_healthy(r, sender)


def test_inline_resume_failing_then_binding(server, clients):
    jid, user, pw = server.new_user("s2f")
    r, ok = resume_inline(server, user, pw, "no-such-session", 3, also_bind=True)
    clients.add(r)
    failed = ok.find(q(NS_SM, "failed"))
    assert failed is not None, tostring(ok)
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    bound = ok.find(q(NS_BIND2, "bound"))
    assert bound is not None and bound.find(q(NS_SM, "enabled")) is not None, tostring(ok)
    assert ok.findtext(s2("authorization-identifier")).startswith(jid + "/Fresh/")
    assert r.ping_server().get("type") == "result"


def test_inline_resume_of_someone_elses_session_fails(server, clients):
    _, vuser, vpw = server.new_user("s2v")
    victim, vfull, previd = login_bind2_sm(server, clients, vuser, vpw)
    clients.add(victim)
    _, user, pw = server.new_user("s2m")
    r, ok = resume_inline(server, user, pw, previd, 0)
    clients.add(r)
    failed = ok.find(q(NS_SM, "failed"))
    assert failed is not None, tostring(ok)
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    # not bound (no bind asked): legacy binding is offered
    assert r.feature("urn:ietf:params:xml:ns:xmpp-bind", "bind") is not None
    server.assert_healthy(victim)


def test_without_resumption_no_inline_sm_and_resume_is_feature_not_implemented(
        no_resumption_server, clients):
    server = no_resumption_server
    jid, user, pw = server.new_user("s2n")
    c = clients.add(server.client()).start()
    inline = c.feature(NS_SASL2, "authentication").find(s2("inline"))
    assert inline.find(q(NS_SM, "sm")) is None, "resumption offered with a resumption time of 0"
    r, ok = resume_inline(server, user, pw, "whatever", 0, also_bind=True)
    clients.add(r)
    failed = ok.find(q(NS_SM, "failed"))
    assert failed is not None, tostring(ok)
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}feature-not-implemented") is not None
    # Bind2 goes on; its <enable resume='true'/> gives a session without resumption
    enabled = ok.find(q(NS_BIND2, "bound")).find(q(NS_SM, "enabled"))
    assert enabled is not None and enabled.get("resume") is None and enabled.get("id") is None
    assert r.ping_server().get("type") == "result"


# -------------------------------------------------------------------------- cluster

@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_inline_resume_on_another_cluster_node(shared_cluster, clients):
    cl = shared_cluster
    sender = clients.add(cl[2].online("s2cs"))
    jid, user, pw = cl[1].new_user("s2cr")
    c, full, previd = login_bind2_sm(cl[1], clients, user, pw)
    clients.add(c)
    # as a client does after Bind2: initial presence (which publishes its route)
    c.presence()
    c.recv(lambda e: e.tag == C("presence") and e.get("from") == full, what="own presence")
    for i in range(6):
        sender.message(full, f"k{i}")
    assert bodies(c, 6) == [f"k{i}" for i in range(6)]
    c.send_raw(f"<a xmlns='{NS_SM}' h='2'/>")
    drop(c)
    for i in range(6, 9):
        sender.message(full, f"k{i}")
    assert sender.ping_server().get("type") == "result"
    time.sleep(0.6)  # the holding node records its checkpoint
    r, ok = resume_inline(cl[3], user, pw, previd, 1 + 6)
    clients.add(r)
    resumed = ok.find(q(NS_SM, "resumed"))
    assert resumed is not None and resumed.get("previd") == previd, tostring(ok)
    assert ok.findtext(s2("authorization-identifier")) == full
    assert bodies(r, 3) == ["k6", "k7", "k8"]
    r.expect_nothing(lambda e: e.tag == C("message") and e.find(C("body")) is not None, 0.7,
                     what="a duplicate")
    mid = sender.message(full, "after the move")
    assert r.recv_stanza("message", id=mid).get("to") == full


# ------------------------------------------------------------------- XEP-0484 FAST

NS_FAST = "urn:xmpp:fast:0"
HT = "HT-SHA-256-NONE"


def get_token(c, user, pw, ua_id, inline=""):
    ok = authenticate(c, user, pw, inline=f"<request-token xmlns='{NS_FAST}' mechanism='{HT}'/>"
                      + inline, ua_id=ua_id)
    tok = ok.find(q(NS_FAST, "token"))
    assert tok is not None and tok.get("token") and tok.get("expiry"), tostring(ok)
    return tok.get("token"), ok


def end_point(c):
    """RFC 5929 tls-server-end-point of the connection: the server certificate's SHA-256
    (it is signed with ecdsa-with-SHA256)."""
    return hashlib.sha256(c.sock.getpeercert(binary_form=True)).digest()


def fast_login(c, user, token, ua_id, inline="", fast_attrs="", mech=HT, cb=b""):
    """A HT-SHA-256-* login (`cb`: the channel binding the proofs cover); returns
    <success/> (raises SASLFailure)."""
    proof = hmac.new(token.encode(), b"Initiator" + cb, hashlib.sha256).digest()
    ir = base64.b64encode(user.encode() + b"\0" + proof).decode()
    c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mech}'>"
               f"<initial-response>{ir}</initial-response>{user_agent(ua_id)}"
               f"<fast xmlns='{NS_FAST}'{fast_attrs}/>{inline}</authenticate>")
    el = check(reply(c))
    assert el.tag == s2("success"), tostring(el)
    # the server proves it knows the token too
    want = hmac.new(token.encode(), b"Responder" + cb, hashlib.sha256).digest()
    assert base64.b64decode(el.findtext(s2("additional-data")) or "") == want, tostring(el)
    c.jid = el.findtext(s2("authorization-identifier"))
    c.features = c.recv(lambda e: e.tag == q(NS_STREAM, "features"), what="features after success")
    return el


def test_fast_offered_inline(server, clients):
    c = clients.add(server.client()).start()
    fast = c.feature(NS_SASL2, "authentication").find(s2("inline")).find(q(NS_FAST, "fast"))
    assert fast is not None, tostring(c.features)
    # bound to the TLS channel by the certificate's hash first, then without binding
    assert [m.text for m in fast.findall(q(NS_FAST, "mechanism"))] == [ENDP, HT]
    # a token mechanism is for SASL2 with a token only, not a legacy mechanism
    assert HT not in c.mechanisms() and ENDP not in c.mechanisms()


def test_fast_token_login_with_bind2(server, clients):
    jid, user, pw = server.new_user("f2")
    ua = new_id("ua")
    c = clients.add(server.client()).start()
    token, ok = get_token(c, user, pw, ua, inline=bind2("Fast"))
    assert ok.find(q(NS_BIND2, "bound")) is not None
    expiry = ok.find(q(NS_FAST, "token")).get("expiry")
    assert expiry.endswith("Z") and expiry[:4].isdigit(), expiry
    c.close()
    d = clients.add(server.client()).start()
    el = fast_login(d, user, token, ua, inline=bind2("Fast"))
    assert el.findtext(s2("authorization-identifier")).startswith(jid + "/Fast/")
    assert el.find(q(NS_FAST, "token")) is None, "a fresh token is not rotated: " + tostring(el)
    assert d.ping_server().get("type") == "result"


def test_fast_token_is_stored_hashed(server, clients):
    jid, user, pw = server.new_user("f2h")
    c = clients.add(server.client()).start()
    token, _ = get_token(c, user, pw, new_id("ua"))
    needle = token.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(needle).digest()).rstrip(b"=")
    seen_digest = False
    for root, _, files in os.walk(server.data_dir):
        for f in files:
            path = os.path.join(root, f)
            if not os.path.isfile(path) or os.path.islink(path):
                continue  # the admin socket
            with open(path, "rb") as fh:
                data = fh.read()
            assert needle not in data, f"the token is stored as is in {f}"
            seen_digest = seen_digest or digest in data
    # what is kept is on disk (the Raft log is written before the token is given out)
    assert seen_digest, "the token's digest was not found: the check read nothing"


def test_fast_wrong_token_or_other_client_is_not_authorized(server, clients, source_ip):
    jid, user, pw = server.new_user("f2w")
    ua = new_id("ua")
    c = clients.add(server.client()).start()
    token, _ = get_token(c, user, pw, ua, inline=bind2("W"))
    for tok, agent in ((token[:-1] + ("A" if token[-1] != "A" else "B"), ua), (token, new_id("ua"))):
        d = clients.add(server.client(source_ip=source_ip)).start()
        with pytest.raises(SASLFailure) as e:
            fast_login(d, user, tok, agent)
        assert e.value.condition == "not-authorized"
    server.assert_healthy(c)


def test_fast_rotation_keeps_the_old_token_until_the_new_one_is_used(server, clients):
    jid, user, pw = server.new_user("f2r")
    ua = new_id("ua")
    t1, _ = get_token(clients.add(server.client()).start(), user, pw, ua)
    fast_login(clients.add(server.client()).start(), user, t1, ua)  # t1 in use
    t2, _ = get_token(clients.add(server.client()).start(), user, pw, ua)
    assert t2 != t1
    # the client may not have received t2: t1 still works
    fast_login(clients.add(server.client()).start(), user, t1, ua)
    # t2 used: every earlier token is invalid (XEP-0484 §Token rotation), and says so
    # (§Server responsibilities: "credentials-expired", the client falls back to others)
    fast_login(clients.add(server.client()).start(), user, t2, ua)
    with pytest.raises(SASLFailure) as e:
        fast_login(clients.add(server.client()).start(), user, t1, ua)
    assert e.value.condition == "credentials-expired"


def test_fast_login_without_user_agent_is_malformed_request(server, clients):
    jid, user, pw = server.new_user("f2u")
    ua = new_id("ua")
    token, _ = get_token(clients.add(server.client()).start(), user, pw, ua)
    with pytest.raises(SASLFailure) as e:
        fast_login(clients.add(server.client()).start(), user, token, None)
    assert e.value.condition == "malformed-request"


def test_fast_invalidate(server, clients):
    jid, user, pw = server.new_user("f2i")
    ua = new_id("ua")
    token, _ = get_token(clients.add(server.client()).start(), user, pw, ua)
    el = fast_login(clients.add(server.client()).start(), user, token, ua,
                    fast_attrs=" invalidate='true'")
    assert el.find(q(NS_FAST, "token")) is None, tostring(el)
    d = clients.add(server.client()).start()
    with pytest.raises(SASLFailure) as e:
        fast_login(d, user, token, ua)
    assert e.value.condition == "credentials-expired"
    # "and then allow the client to authenticate using other mechanisms"
    authenticate(d, user, pw)
    assert d.bind("after") == jid + "/after"


def test_fast_tokens_end_with_a_password_change(server, clients):
    jid, user, pw = server.new_user("f2p")
    ua = new_id("ua")
    c = clients.add(server.client()).start()
    token, _ = get_token(c, user, pw, ua, inline=bind2("P"))
    r = c.iq("set", f"<query xmlns='jabber:iq:register'><username>{user}</username>"
                    f"<password>changed-pw</password></query>")
    assert r.get("type") == "result", tostring(r)
    with pytest.raises(SASLFailure) as e:
        fast_login(clients.add(server.client()).start(), user, token, ua)
    assert e.value.condition == "not-authorized"


@pytest.mark.parametrize("inline,ua,condition", [
    # not offered (tls-exporter: rustls exports nothing from the streams' connections)
    (f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-EXPR'/>", "ua-x", "invalid-mechanism"),
    (f"<request-token xmlns='{NS_FAST}'/>", "ua-x", "invalid-mechanism"),
    # tokens are per client
    (f"<request-token xmlns='{NS_FAST}' mechanism='{HT}'/>", None, "malformed-request"),
])
def test_fast_bad_token_request_is_refused(server, clients, inline, ua, condition):
    jid, user, pw = server.new_user("f2b")
    c = clients.add(server.client()).start()
    with pytest.raises(SASLFailure) as e:
        authenticate(c, user, pw, inline=inline, ua_id=ua)
    assert e.value.condition == condition
    # refused before the password was looked at: the stream goes on
    authenticate(c, user, pw)
    assert c.bind("after") == jid + "/after"
    server.assert_healthy()


def test_fast_endp_token_is_bound_to_the_channel(server, clients, source_ip):
    """HT-SHA-256-ENDP (draft-schmaus-kitten-sasl-ht: the proofs cover the channel binding,
    RFC 5929 tls-server-end-point here): a token asked for it logs in with the binding of
    the new connection, and the server's proof covers it too; the same proof without the
    binding (what a man in the middle with another certificate would have to send) and the
    token under the other mechanism are refused."""
    jid, user, pw = server.new_user("f2e")
    ua = new_id("ua")
    c = clients.add(server.client()).start()
    ok = authenticate(c, user, pw, inline=f"<request-token xmlns='{NS_FAST}' mechanism='{ENDP}'/>",
                      ua_id=ua)
    token = ok.find(q(NS_FAST, "token")).get("token")
    c.close()
    d = clients.add(server.client()).start()
    el = fast_login(d, user, token, ua, inline=bind2("E"), mech=ENDP, cb=end_point(d))
    assert el.findtext(s2("authorization-identifier")).startswith(jid + "/E/")
    for mech, cb in ((ENDP, b""), (ENDP, b"\0" * 32), (HT, b"")):
        e2 = clients.add(server.client(source_ip=source_ip)).start()
        with pytest.raises(SASLFailure) as e:
            fast_login(e2, user, token, ua, mech=mech, cb=cb)
        assert e.value.condition == "not-authorized", (mech, cb)
    assert d.ping_server().get("type") == "result"


def test_fast_login_without_fast_element_is_malformed_request(server, clients):
    """XEP-0484 §Client authenticates using FAST: a client providing a token "MUST include a
    <fast/> element"; without it the token is not looked at."""
    jid, user, pw = server.new_user("f2n")
    ua = new_id("ua")
    token, _ = get_token(clients.add(server.client()).start(), user, pw, ua)
    c = clients.add(server.client()).start()
    proof = hmac.new(token.encode(), b"Initiator", hashlib.sha256).digest()
    ir = base64.b64encode(user.encode() + b"\0" + proof).decode()
    c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='{HT}'>"
               f"<initial-response>{ir}</initial-response>{user_agent(ua)}</authenticate>")
    with pytest.raises(SASLFailure) as e:
        check(reply(c))
    assert e.value.condition == "malformed-request"
    # the token was not used up: it still logs in
    fast_login(clients.add(server.client()).start(), user, token, ua)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "PLAIN"])
def test_whitespace_inside_the_exchange_is_a_policy_violation(server, clients, mech):
    """XEP-0388 §2.4: "Clients MUST NOT send whitespace [...] Servers MUST disconnect Clients
    immediately if any other traffic is received": a space after <authenticate/> (sent
    before the challenge) or between the challenge and the response ends the stream with
    <policy-violation/>; whitespace before <authenticate/> is fine."""
    jid, user, pw = server.new_user("f2s")
    c = clients.add(server.client()).start()
    c.send_raw(f" \n<authenticate xmlns='{NS_SASL2}' mechanism='{mech}'/> ")
    err = c.recv(lambda e: e.tag == q(NS_STREAM, "error"), what="stream error")
    assert err.find(q("urn:ietf:params:xml:ns:xmpp-streams", "policy-violation")) is not None, \
        tostring(err)
    with pytest.raises(StreamClosed):
        c.recv(lambda e: False, what="the end of the stream", timeout=5)
    # legacy SASL (RFC 6120 allows whitespace between elements) is not affected
    d = clients.add(server.client()).start()
    d.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'/>")
    ch = d.recv(lambda e: ns_of(e.tag) == NS_SASL, what="challenge")
    assert local(ch.tag) == "challenge", tostring(ch)
    resp = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    d.send_raw(f" \n<response xmlns='{NS_SASL}'>{resp}</response>")
    ok = d.recv(lambda e: ns_of(e.tag) == NS_SASL, what="success")
    assert local(ok.tag) == "success", tostring(ok)
    server.assert_healthy()


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_fast_token_from_one_node_works_on_another(shared_cluster, clients):
    cl = shared_cluster
    jid, user, pw = cl[1].new_user("f2c")
    ua = new_id("ua")
    token, _ = get_token(clients.add(cl[1].client()).start(), user, pw, ua)
    deadline = time.monotonic() + 10
    while True:  # the token's write is replicated to node 3 promptly
        try:
            el = fast_login(clients.add(cl[3].client()).start(), user, token, ua, inline=bind2("C"))
            break
        except SASLFailure:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert el.findtext(s2("authorization-identifier")).startswith(jid + "/C/")
