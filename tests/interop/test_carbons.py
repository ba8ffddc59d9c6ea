"""XEP-0280 Message Carbons (urn:xmpp:carbons:2): enabling per resource, received and
sent copies (their exact shape), which messages are copied (§6), <private/> and the
XEP-0334 <no-copy/> hint (§7), forged carbons (§11), and copies between resources on
different nodes of a cluster.

Absence is shown with a marker: a later stanza over the same path, sent after the one
that must not produce a copy; the marker arriving with no copy before it is the proof.
"""

import asyncio
import ssl

import pytest

from cluster import cluster, online_on, relogin  # noqa: F401 (fixture)
from rawxmpp import C, bare, new_id, q, stanza_error, tostring

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
PRIVATE = f"<private xmlns='{NS_CARBONS}'/>"
NO_COPY = f"<no-copy xmlns='{NS_HINTS}'/>"


# ------------------------------------------------------------------ helpers

def set_carbons(c, on=True, to=None):
    return c.iq("set", f"<{'enable' if on else 'disable'} xmlns='{NS_CARBONS}'/>", to=to)


def enable(c):
    r = set_carbons(c)
    assert r.get("type") == "result", tostring(r)


def forwarded(el, kind):
    """The message inside <kind><forwarded/></kind> of a carbon, or None."""
    w = el.find(q(NS_CARBONS, kind))
    if w is None:
        return None
    f = w.find(q(NS_FORWARD, "forwarded"))
    return None if f is None else f.find(C("message"))


def is_carbon_of(el, mid, kind=None):
    if el.tag != C("message"):
        return False
    for k in ([kind] if kind else ["sent", "received"]):
        inner = forwarded(el, k)
        if inner is not None and inner.get("id") == mid:
            return True
    return False


def carbon(c, kind, mid, timeout=None):
    """Waits for the <kind/> carbon of message `mid`; checks the wrapper (§7, §8)."""
    el = c.recv(lambda e: is_carbon_of(e, mid, kind), timeout, what=f"{kind} carbon of {mid}")
    assert el.get("from") == bare(c.jid), "a carbon comes from the user's bare JID: " + tostring(el)
    assert el.get("to") == c.jid, "a carbon is addressed to the receiving resource: " + tostring(el)
    return el, forwarded(el, kind)


def got(c, mid, timeout=None):
    return c.recv(lambda e: e.tag == C("message") and e.get("id") == mid and
                  e.find(q(NS_CARBONS, "received")) is None and e.find(q(NS_CARBONS, "sent")) is None,
                  timeout, what=f"message {mid}")


def no_carbon_before(c, mid, marker):
    """`marker` (a message id) arrives at `c`, and no carbon of `mid` came before it."""
    got(c, marker)
    stray = [e for e in c.queue if is_carbon_of(e, mid)]
    assert not stray, "unexpected carbon: " + tostring(stray[0])
    c.expect_nothing(lambda e: is_carbon_of(e, mid), 0.2, what=f"carbon of {mid}")


def account(server, clients, *prios, prefix="cb"):
    """One account with a resource per priority, each available; returns (jid, pw, [clients])."""
    jid, _, pw = server.new_user(prefix)
    res = [clients.add(server.login(jid, pw, resource=f"r{i}", priority=p)) for i, p in enumerate(prios)]
    for c in res:
        c.drain(0.2)
    return jid, pw, res


# ------------------------------------------------------------------ discovery and enabling

def test_server_advertises_carbons(server, clients):
    a = clients.add(server.online("cbd"))
    r = a.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=server.domain)
    feats = {f.get("var") for f in r.find(q(NS_DISCO_INFO, "query")).findall(q(NS_DISCO_INFO, "feature"))}
    assert NS_CARBONS in feats


def test_enable_and_disable_are_answered_and_may_repeat(server, clients):
    """§4, §5, §9.1: each request gets an empty result, repeated ones too; to the
    user's own server or bare JID as well as with no 'to'."""
    a = clients.add(server.online("cbe"))
    for on, to in [(True, None), (True, None), (False, None), (False, None),
                   (True, server.domain), (False, bare(a.jid))]:
        r = set_carbons(a, on, to=to)
        assert r.get("type") == "result", tostring(r)
        assert len(list(r)) == 0, tostring(r)


def test_enable_errors(server, clients):
    """Only a set enables; another user's carbons cannot be changed (§5.1: <not-allowed/>),
    and trying leaves them as they were."""
    a = clients.add(server.online("cbx"))
    s = clients.add(server.online("cbs"))
    bjid, _, (b0, b1) = account(server, clients, 0, 0)
    enable(b1)
    r = a.iq("get", f"<enable xmlns='{NS_CARBONS}'/>")
    assert r.get("type") == "error", tostring(r)
    for on in (True, False):
        r = set_carbons(a, on, to=bjid)
        assert stanza_error(r) == ("cancel", "not-allowed"), tostring(r)
    r = set_carbons(a, False, to="example.org")
    assert stanza_error(r) == ("cancel", "not-allowed"), tostring(r)
    r = a.iq("set", f"<toggle xmlns='{NS_CARBONS}'/>")
    assert r.get("type") == "error", tostring(r)
    # b1's carbons are still on.
    mid = s.message(b0.jid, "still copied?")
    got(b0, mid)
    carbon(b1, "received", mid)
    server.assert_healthy(a, b0, b1)


# ------------------------------------------------------------------ received copies

def test_received_copy_of_message_to_bare_jid(server, clients):
    """§7: a message to the bare JID goes to the highest priority resource; the other
    enabled resource gets a <received/> copy holding the message as delivered."""
    s = clients.add(server.online("cbsnd"))
    jid, _, (hi, lo) = account(server, clients, 5, 1)
    enable(hi)
    enable(lo)
    mid = s.message(jid, "to the bare JID")
    m = got(hi, mid)
    el, inner = carbon(lo, "received", mid)
    assert el.get("type") == "chat"
    assert inner.get("from") == s.jid and inner.get("to") == jid
    assert inner.findtext(C("body")) == "to the bare JID"
    assert inner.findtext(C("body")) == m.findtext(C("body"))
    # The resource that got the message gets no copy of it.
    marker = s.message(hi.jid, "marker")
    no_carbon_before(hi, mid, marker)


def test_received_copy_of_message_to_full_jid(server, clients):
    """§7 (v0.13+): a message to a full JID is copied to the user's other enabled resources."""
    s = clients.add(server.online("cbsnd"))
    jid, _, (r0, r1, r2) = account(server, clients, 0, 0, 0)
    enable(r1)
    enable(r2)
    mid = s.message(r0.jid, "to r0", type_="normal")
    got(r0, mid)
    for c in (r1, r2):
        el, inner = carbon(c, "received", mid)
        assert el.get("type") == "normal"
        assert inner.get("to") == r0.jid and inner.findtext(C("body")) == "to r0"
    mid2 = s.message(r1.jid, "to r1")
    got(r1, mid2)
    carbon(r2, "received", mid2)
    marker = s.message(r1.jid, "marker")
    no_carbon_before(r1, mid2, marker)


def test_no_copies_without_enable_or_after_disable(server, clients):
    s = clients.add(server.online("cbsnd"))
    jid, _, (r0, r1) = account(server, clients, 0, 0)
    # r1 never enabled
    mid = s.message(r0.jid, "one")
    got(r0, mid)
    no_carbon_before(r1, mid, s.message(r1.jid, "m1"))
    # r1 enabled, then disabled
    enable(r1)
    r = set_carbons(r1, False)
    assert r.get("type") == "result", tostring(r)
    mid = s.message(r0.jid, "two")
    got(r0, mid)
    no_carbon_before(r1, mid, s.message(r1.jid, "m2"))
    # sent by r0: no copy for r1 either
    mid = r0.message(s.jid, "three")
    got(s, mid)
    no_carbon_before(r1, mid, r0.message(r1.jid, "m3"))


def test_unavailable_resource_gets_no_copies(server, clients):
    """A resource that sent no presence (or went unavailable) is not in the conversation."""
    s = clients.add(server.online("cbsnd"))
    jid, pw, (r0,) = account(server, clients, 0)
    quiet = clients.add(server.login(jid, pw, resource="quiet"))
    enable(quiet)
    mid = s.message(r0.jid, "hi")
    got(r0, mid)
    no_carbon_before(quiet, mid, s.message(quiet.jid, "marker"))


@pytest.mark.parametrize("goes_to", ["another resource", "offline storage"])
def test_message_routed_again_is_not_copied_again(server, clients, goes_to):
    """A message its resource never acknowledged (XEP-0198) is routed again when that
    session ends: to the next resource or to offline storage. The enabled resource that
    got its received copy on the first delivery gets no second copy."""
    from test_sm import login_sm
    s = clients.add(server.online("cbsnd"))
    jid, pw, res = account(server, clients, *([1, -1] if goes_to == "another resource" else [-1]))
    watcher = res[-1]  # negative priority: never a recipient, copies only
    enable(watcher)
    phone, _ = login_sm(server, jid, pw, resource="phone", resume=False, presence=False)
    clients.add(phone)
    phone.send_raw("<presence><priority>5</priority></presence>")
    phone.recv(lambda e: e.tag == C("presence") and e.get("from") == phone.jid, what="own presence")
    mid = s.message(jid, "routed twice")
    got(phone, mid)
    carbon(watcher, "received", mid)
    phone.close()  # unacknowledged: the message is routed again
    if goes_to == "another resource":
        got(res[0], mid)
    else:
        back = clients.add(server.login(jid, pw, resource="back"))
        back.presence()
        got(back, mid)
    no_carbon_before(watcher, mid, s.message(watcher.jid, "marker"))


# ------------------------------------------------------------------ sent copies

def test_sent_copy(server, clients):
    """§8: what one resource sends reaches the user's other enabled resources as a <sent/>
    copy (whether or not the sender enabled carbons), never the sender itself."""
    s = clients.add(server.online("cbpeer"))
    jid, _, (r0, r1, r2) = account(server, clients, 0, 0, 0)
    enable(r0)
    enable(r1)
    mid = new_id("sent")
    r2.send_raw(f"<message to='{s.jid}' id='{mid}' type='chat'><body>from r2</body>"
                f"<thread>t1</thread></message>")
    m = got(s, mid)
    assert m.get("from") == r2.jid
    for c in (r0, r1):
        el, inner = carbon(c, "sent", mid)
        assert el.get("type") == "chat"
        assert inner.get("from") == r2.jid and inner.get("to") == s.jid
        assert inner.findtext(C("body")) == "from r2" and inner.findtext(C("thread")) == "t1"
    # r0 (enabled) sends: r1 gets the copy, r0 does not get its own message back.
    mid = r0.message(s.jid, "from r0")
    got(s, mid)
    carbon(r1, "sent", mid)
    no_carbon_before(r0, mid, s.message(r0.jid, "marker"))


def test_message_to_self_copied_once(server, clients):
    """A message a resource sends to the user's own bare JID: the highest priority resource
    gets it; the other enabled resources get one copy each, the sender none."""
    jid, _, (hi, mid_r, lo) = account(server, clients, 5, 3, 1)
    for c in (hi, mid_r, lo):
        enable(c)
    mid = lo.message(jid, "note to self")
    got(hi, mid)
    carbon(mid_r, "received", mid)
    marker = hi.message(mid_r.jid, "marker")
    no_carbon_before(mid_r, mid, marker)  # exactly one copy
    no_carbon_before(lo, mid, hi.message(lo.jid, "marker2"))
    no_carbon_before(hi, mid, lo.message(hi.jid, "marker3"))


# ------------------------------------------------------------------ which messages (§6)

@pytest.mark.parametrize("mtype", ["headline", "groupchat", "error"])
def test_no_copies_of_headline_groupchat_error(server, clients, mtype):
    s = clients.add(server.online("cbsnd"))
    jid, _, (r0, r1) = account(server, clients, 0, 0)
    enable(r1)
    extra = ("<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
             if mtype == "error" else "")
    body = None if mtype == "error" else "x"
    mid = s.message(r0.jid, body, type_=mtype, extra=extra)
    got(r0, mid)
    no_carbon_before(r1, mid, s.message(r1.jid, "marker"))
    # sent by r0 to the peer: no <sent/> copy either
    mid = r0.message(s.jid, body, type_=mtype, extra=extra)
    no_carbon_before(r1, mid, r0.message(r1.jid, "marker2"))


def test_normal_message_copied_with_body_or_im_payload_only(server, clients):
    s = clients.add(server.online("cbsnd"))
    jid, _, (r0, r1) = account(server, clients, 0, 0)
    enable(r1)
    plain = s.message(r0.jid, None, type_=None, extra="<x xmlns='urn:example:nothing'/>")
    got(r0, plain)
    no_carbon_before(r1, plain, s.message(r1.jid, "marker"))
    body = s.message(r0.jid, "with body", type_=None)
    carbon(r1, "received", body)
    receipt = s.message(r0.jid, None, type_=None, extra="<received xmlns='urn:xmpp:receipts' id='abc'/>")
    carbon(r1, "received", receipt)


def test_muc_private_message_copied_when_sent_not_when_received(server, clients):
    """§6 MUC rules: a private message from a room occupant reaches every joined client from
    the room already (no copy); one the user sends is copied."""
    s = clients.add(server.online("cbmuc"))
    jid, _, (r0, r1) = account(server, clients, 0, 0)
    enable(r1)
    x = "<x xmlns='http://jabber.org/protocol/muc#user'/>"
    incoming = s.message(r0.jid, "pm in", extra=x)
    got(r0, incoming)
    no_carbon_before(r1, incoming, s.message(r1.jid, "marker"))
    outgoing = r0.message(s.jid, "pm out", extra=x)
    carbon(r1, "sent", outgoing)


# ------------------------------------------------------------------ <private/> and <no-copy/> (§7)

@pytest.mark.parametrize("hint", [PRIVATE + NO_COPY, PRIVATE, NO_COPY], ids=["both", "private", "no-copy"])
def test_private_and_no_copy_are_honoured(server, clients, hint):
    s = clients.add(server.online("cbsnd"))
    jid, _, (r0, r1) = account(server, clients, 0, 0)
    enable(r1)
    # received: r1 gets no copy; the recipient gets the message without <private/>
    mid = s.message(r0.jid, "secret in", extra=hint)
    m = got(r0, mid)
    assert m.find(q(NS_CARBONS, "private")) is None, "§7: <private/> is removed: " + tostring(m)
    assert m.findtext(C("body")) == "secret in"
    no_carbon_before(r1, mid, s.message(r1.jid, "marker"))
    # sent: r1 gets no <sent/> copy
    mid = r0.message(s.jid, "secret out", extra=hint)
    m = got(s, mid)
    assert m.find(q(NS_CARBONS, "private")) is None, tostring(m)
    no_carbon_before(r1, mid, r0.message(r1.jid, "marker2"))


# ------------------------------------------------------------------ forged carbons (§11)

def forged(kind, victim_bare, victim_full):
    return (f"<{kind} xmlns='{NS_CARBONS}'><forwarded xmlns='{NS_FORWARD}'>"
            f"<message xmlns='jabber:client' from='boss@{victim_bare.split('@')[1]}/x' to='{victim_full}' "
            f"type='chat'><body>wire the money</body></message></forwarded></{kind}>")


def has_wrapper(e):
    return e.find(q(NS_CARBONS, "received")) is not None or e.find(q(NS_CARBONS, "sent")) is not None


def is_forgery(e):
    for kind in ("received", "sent"):
        inner = forwarded(e, kind)
        if inner is not None and inner.findtext(C("body")) == "wire the money":
            return True
    return False


def no_wrapper_before(c, marker):
    got(c, marker)
    bad = [e for e in c.queue if is_forgery(e)]
    assert not bad, "a forged carbon was delivered: " + tostring(bad[0])


@pytest.mark.parametrize("kind", ["received", "sent"])
def test_forged_carbon_from_another_user_is_not_delivered(server, clients, kind):
    """§11: a carbon is only trusted from the user's own bare JID; one a client made is
    refused (<not-acceptable/>) and reaches no resource, whether sent to a full or bare JID."""
    mallory = clients.add(server.online("cbmal"))
    jid, _, (r0, r1) = account(server, clients, 0, 0)
    enable(r0)
    enable(r1)
    for to in (r0.jid, jid):
        mid = mallory.message(to, None, extra=forged(kind, jid, r0.jid))
        e = mallory.recv(lambda e: e.get("id") == mid and e.get("type") == "error", what="refusal")
        assert stanza_error(e) == ("modify", "not-acceptable"), tostring(e)
        assert not has_wrapper(e), "the refusal carries no carbon: " + tostring(e)
        for c in (r0, r1):
            no_wrapper_before(c, mallory.message(c.jid, "marker"))
    server.assert_healthy(mallory, r0, r1)


def test_client_cannot_forge_carbons_to_itself(server, clients):
    jid, _, (r0, r1) = account(server, clients, 0, 0)
    enable(r1)
    for to in (jid, r1.jid):
        mid = r0.message(to, None, extra=forged("received", jid, r1.jid))
        e = r0.recv(lambda e: e.get("id") == mid and e.get("type") == "error", what="refusal")
        assert stanza_error(e) == ("modify", "not-acceptable"), tostring(e)
        assert not has_wrapper(e), "the refusal carries no carbon: " + tostring(e)
        no_wrapper_before(r1, r0.message(r1.jid, "marker"))


# ------------------------------------------------------------------ a client library

def test_slixmpp_carbons(server):
    slixmpp = pytest.importorskip("slixmpp")
    peer_jid, _, peer_pw = server.new_user("cbsp")
    jid, _, pw = server.new_user("cbsu")

    def make(j, p, res):
        c = slixmpp.ClientXMPP(f"{j}/{res}", p)
        for plugin in ("xep_0030", "xep_0297", "xep_0280"):
            c.register_plugin(plugin)
        c.ssl_context.check_hostname = False
        c.ssl_context.verify_mode = ssl.CERT_NONE
        return c

    async def online(c):
        started = asyncio.get_event_loop().create_future()
        c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        c.connect(server.host, server.c2s_port)
        await asyncio.wait_for(started, 15)
        c.send_presence()
        await c.get_roster()

    async def scenario():
        peer, phone, desk = make(peer_jid, peer_pw, "p"), make(jid, pw, "phone"), make(jid, pw, "desk")
        loop = asyncio.get_event_loop()
        rcv, snt = loop.create_future(), loop.create_future()
        desk.add_event_handler("carbon_received", lambda m: rcv.done() or rcv.set_result(m))
        desk.add_event_handler("carbon_sent", lambda m: snt.done() or snt.set_result(m))
        for c in (peer, phone, desk):
            await online(c)
        await desk["xep_0280"].enable(timeout=10)
        peer.send_message(mto=phone.boundjid.full, mbody="to the phone", mtype="chat")
        m = await asyncio.wait_for(rcv, 10)
        assert m["carbon_received"]["body"] == "to the phone"
        assert m["carbon_received"]["from"] == peer.boundjid
        phone.send_message(mto=peer.boundjid.full, mbody="from the phone", mtype="chat")
        m = await asyncio.wait_for(snt, 10)
        assert m["carbon_sent"]["body"] == "from the phone"
        assert m["carbon_sent"]["to"] == peer.boundjid
        for c in (peer, phone, desk):
            c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 40))


# ------------------------------------------------------------------ across nodes

@pytest.mark.starling_only
@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_carbons_between_nodes(cluster):
    """r1 on node 1, r2 on node 2 (carbons on), the peer on node 3: r2 gets the received
    copy of what the peer sends r1 and the sent copy of what r1 sends the peer, each made
    by the node that routed the message, from r2's flag in the registry."""
    cl = cluster
    made = []
    try:
        peer = online_on(cl[3], "cbp")
        made.append(peer)
        r1 = online_on(cl[1], "cbu", resource="r1")
        made.append(r1)
        r2 = relogin(cl[2], r1, resource="r2")
        made.append(r2)
        for c in made:
            c.drain(0.3)
        enable(r2)
        # A message from node 2 to each other node carries node 2's registry position:
        # once it is delivered there, that node knows r2 asked for carbons.
        got(peer, r2.message(peer.jid, "sync 3"))
        got(r1, r2.message(r1.jid, "sync 1"))
        mid = peer.message(r1.jid, "to r1 on node 1")
        got(r1, mid)
        el, inner = carbon(r2, "received", mid, timeout=10)
        assert inner.get("from") == peer.jid and inner.findtext(C("body")) == "to r1 on node 1"
        mid = r1.message(peer.jid, "from r1 on node 1")
        got(peer, mid)
        el, inner = carbon(r2, "sent", mid, timeout=10)
        assert inner.get("to") == peer.jid and inner.findtext(C("body")) == "from r1 on node 1"
        # Off again: no more copies from either node.
        r = set_carbons(r2, False)
        assert r.get("type") == "result", tostring(r)
        got(peer, r2.message(peer.jid, "sync 3 again"))
        got(r1, r2.message(r1.jid, "sync 1 again"))
        mid = peer.message(r1.jid, "not copied")
        got(r1, mid)
        no_carbon_before(r2, mid, peer.message(r2.jid, "marker"))
        mid = r1.message(peer.jid, "not copied either")
        got(peer, mid)
        no_carbon_before(r2, mid, r1.message(r2.jid, "marker 2"))
    finally:
        for c in made:
            c.shutdown()
