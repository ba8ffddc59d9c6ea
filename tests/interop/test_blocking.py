"""XEP-0191 Blocking Command: the list (get, block, unblock, unblock all), pushes to the
resources that requested it, and what a block does to messages, IQs and presence in both
directions (section 3.3: a blocked contact's message gets <service-unavailable/>, its IQ
get/set too, its presence is dropped; what the user sends to a blocked JID gets
<not-acceptable/> with <blocked xmlns='urn:xmpp:blocking:errors'/>), JID matching by
the four forms of XEP-0016 2.1, persistence, and the same across the nodes of a cluster.

Something that must NOT arrive is checked with a marker sent later over the same path:
when the marker arrives, anything the server had let through would have arrived before it
(one session's stanzas are delivered in order), so it would be in the client's queue.
"""

import asyncio
import ssl

import pytest

from cluster import online_on, relogin, shared_cluster  # noqa: F401 (fixture)
from im import make_mutual
from rawxmpp import C, NS_DELAY, bare, q, stanza_error, tostring

NS_BLOCK = "urn:xmpp:blocking"
NS_BLOCK_ERR = "urn:xmpp:blocking:errors"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PING = "urn:xmpp:ping"
NS_VCARD = "vcard-temp"


# ------------------------------------------------------------------ helpers

def blocklist(c):
    """The user's blocklist (sorted); the session requests it, so it gets pushes from now on."""
    r = c.iq("get", f"<blocklist xmlns='{NS_BLOCK}'/>")
    assert r.get("type") == "result", tostring(r)
    bl = r.find(q(NS_BLOCK, "blocklist"))
    assert bl is not None, "result without <blocklist/>: " + tostring(r)
    return sorted(i.get("jid") for i in bl.findall(q(NS_BLOCK, "item")))


def items_xml(jids):
    return "".join(f"<item jid='{j}'/>" for j in jids)


def block(c, *jids):
    return c.iq("set", f"<block xmlns='{NS_BLOCK}'>{items_xml(jids)}</block>")


def unblock(c, *jids):
    return c.iq("set", f"<unblock xmlns='{NS_BLOCK}'>{items_xml(jids)}</unblock>")


def ok(r):
    assert r.get("type") == "result", tostring(r)
    return r


def is_push(e, kind):
    return e.tag == C("iq") and e.get("type") == "set" and e.find(q(NS_BLOCK, kind)) is not None


def recv_push(c, kind, timeout=None):
    """A <block/> or <unblock/> push (its sorted item JIDs); answered as RFC 6120 8.2.3 asks."""
    e = c.recv(lambda e: is_push(e, kind), timeout, what=f"{kind} push")
    assert e.get("from") in (None, bare(c.jid)), "push from a third party: " + tostring(e)
    c.send_raw(f"<iq type='result' id='{e.get('id')}'/>")
    return sorted(i.get("jid") for i in e.find(q(NS_BLOCK, kind)).findall(q(NS_BLOCK, "item")))


def assert_blocked_error(r, name):
    """<not-acceptable/> with the <blocked/> application condition (section 3.3)."""
    assert r.tag == C(name), tostring(r)
    assert stanza_error(r) == ("cancel", "not-acceptable"), tostring(r)
    assert r.find(C("error")).find(q(NS_BLOCK_ERR, "blocked")) is not None, tostring(r)


def queued(c, pred):
    """Elements already received (not consumed) that match pred."""
    return [tostring(e) for e in c.queue if pred(e)]


def message_from(sender, body=None):
    def pred(e):
        return (e.tag == C("message") and bare(e.get("from") or "") == bare(sender.jid)
                and e.get("type") != "error" and (body is None or e.findtext(C("body")) == body))
    return pred


def presence_from(sender, status=None):
    def pred(e):
        return (e.tag == C("presence") and bare(e.get("from") or "") == bare(sender.jid)
                and (status is None or e.findtext(C("status")) == status))
    return pred


def ping(c, to):
    return c.iq("get", f"<ping xmlns='{NS_PING}'/>", to=to)


# ------------------------------------------------------------------ the list

def test_server_advertises_blocking(server, clients):
    c = clients.add(server.online("bdisco"))
    r = ok(c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=server.domain))
    feats = {f.get("var") for f in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))}
    assert NS_BLOCK in feats, sorted(feats)


def test_empty_blocklist(server, clients):
    c = clients.add(server.online("bempty", presence=False))
    assert blocklist(c) == []


def test_block_and_unblock_push_to_resources_that_requested_the_list(server, clients):
    """3.3, 3.4: the list changes; each resource that requested it gets a push (the requester
    too), one that never requested it gets none."""
    a1 = clients.add(server.online("bpush", resource="one"))
    a2 = clients.add(server.login(a1.bare, a1.password, resource="two", presence=False))
    a3 = clients.add(server.login(a1.bare, a1.password, resource="three", presence=True))
    assert blocklist(a1) == [] and blocklist(a2) == []
    x, y = server.new_user("bpx")[0], server.new_user("bpy")[0]

    ok(block(a1, x, y))
    assert recv_push(a2, "block") == sorted([x, y])
    assert recv_push(a1, "block") == sorted([x, y])
    assert blocklist(a2) == sorted([x, y])

    ok(unblock(a2, x))
    assert recv_push(a1, "unblock") == [x]
    assert recv_push(a2, "unblock") == [x]
    assert blocklist(a1) == [y]

    # The resource that never asked for the list: a message sent after the pushes arrives
    # on the same path after them.
    mid = a1.message(a3.jid, "marker")
    a3.recv_stanza("message", id=mid)
    assert not queued(a3, lambda e: e.find(q(NS_BLOCK, "block")) is not None or
                      e.find(q(NS_BLOCK, "unblock")) is not None), "push to a resource that never requested the list"


def test_jids_are_normalised_and_kept_once(server, clients):
    a = clients.add(server.online("bnorm", presence=False))
    jid = server.new_user("bnx")[0]
    node, domain = jid.split("@")
    ok(block(a, f"{node.upper()}@{domain.upper()}", jid))
    assert blocklist(a) == [jid]
    ok(unblock(a, f"{node}@{domain.upper()}"))
    assert blocklist(a) == []


def test_unblock_all(server, clients):
    """3.5: <unblock/> without items empties the list; pushed without items."""
    a1 = clients.add(server.online("ball"))
    a2 = clients.add(server.login(a1.bare, a1.password, resource="other", presence=True))
    c = clients.add(server.online("ballc"))
    assert blocklist(a2) == []
    ok(block(a1, c.bare, "example.org"))
    assert recv_push(a2, "block") == sorted([c.bare, "example.org"])
    ok(unblock(a1))
    assert recv_push(a2, "unblock") == []
    assert blocklist(a1) == []
    mid = c.message(a1.jid, "free again")
    assert a1.recv_stanza("message", id=mid).findtext(C("body")) == "free again"


def test_bad_requests_change_nothing(server, clients):
    a = clients.add(server.online("bbad", presence=False))
    good = server.new_user("bbg")[0]
    ok(block(a, good))
    # One malformed JID: the whole request is refused, nothing of it applied.
    other = server.new_user("bbo")[0]
    r = block(a, other, "a@b@c")
    assert stanza_error(r) == ("modify", "jid-malformed"), tostring(r)
    r = unblock(a, good, "@nodomain")
    assert stanza_error(r) == ("modify", "jid-malformed"), tostring(r)
    # No item to block.
    r = a.iq("set", f"<block xmlns='{NS_BLOCK}'/>")
    assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
    assert blocklist(a) == [good]
    # Someone else's list is not the user's to read or change (the XEP names no error:
    # Starling says <forbidden/> as for a roster, Prosody <service-unavailable/>).
    b = clients.add(server.online("bbb", presence=False))
    for payload, type_ in ((f"<blocklist xmlns='{NS_BLOCK}'/>", "get"),
                           (f"<block xmlns='{NS_BLOCK}'><item jid='{good}'/></block>", "set")):
        r = b.iq(type_, payload, to=a.bare)
        assert stanza_error(r) in (("auth", "forbidden"), ("cancel", "service-unavailable")), tostring(r)
    assert blocklist(b) == []
    assert blocklist(a) == [good]
    # The errors affected nothing but their requests.
    assert a.ping_server().get("type") == "result"


# ------------------------------------------------------------------ inbound

@pytest.mark.prosody_deviates("drops a blocked JID's message without the <service-unavailable/> of 3.3")
def test_message_from_blocked_contact_is_refused_and_not_delivered(server, clients):
    b = clients.add(server.online("bmb"))
    c = clients.add(server.online("bmc"))
    ok(block(b, c.bare))
    for to in (b.bare, b.jid):
        mid = c.message(to, "while blocked")
        err = c.recv_stanza("message", id=mid, type="error")
        assert stanza_error(err)[1] == "service-unavailable", tostring(err)
    # No error for an error or a headline: they are dropped.
    c.message(b.bare, None, type_="headline", extra="<subject>news</subject>")
    ok(c.ping_server())  # routed (or dropped) before the unblock
    ok(unblock(b, c.bare))
    mid = c.message(b.jid, "after unblock")
    b.recv_stanza("message", id=mid)
    assert not queued(b, message_from(c, "while blocked")), "blocked message delivered"
    assert not queued(b, lambda e: e.tag == C("message") and e.get("type") == "headline")
    assert not queued(c, lambda e: e.tag == C("message") and e.get("type") == "error")


def test_message_from_blocked_contact_is_not_stored_offline(server, clients):
    bjid, _, bpw = server.new_user("bob")
    c = clients.add(server.online("boc"))
    d = clients.add(server.online("bod"))
    b = clients.add(server.login(bjid, bpw, presence=False))
    ok(block(b, c.bare))
    b.close()
    mid = c.message(bjid, "for the offline store")
    err = c.recv_stanza("message", id=mid, type="error")
    assert stanza_error(err)[1] == "service-unavailable", tostring(err)
    kept = d.message(bjid, "kept")
    assert d.ping_server().get("type") == "result"
    b = clients.add(server.login(bjid, bpw, presence=True))
    m = b.recv_stanza("message", id=kept)
    assert m.find(q(NS_DELAY, "delay")) is not None, tostring(m)
    assert not queued(b, message_from(c)), "blocked message stored offline"


def test_iq_from_blocked_contact_is_refused(server, clients):
    b = clients.add(server.online("bib"))
    c = clients.add(server.online("bic"))
    ok(b.iq("set", f"<vCard xmlns='{NS_VCARD}'><FN>B</FN></vCard>"))
    ok(c.iq("get", f"<vCard xmlns='{NS_VCARD}'/>", to=b.bare))
    ok(block(b, c.bare))
    # To a resource, and to the bare JID where the server answers for the account.
    r = ping(c, b.jid)
    assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    r = c.iq("get", f"<vCard xmlns='{NS_VCARD}'/>", to=b.bare)
    assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    # A result to the blocker goes nowhere either (and gets no error).
    c.send_raw(f"<iq type='result' id='stray-result' to='{b.jid}'/>")
    ok(c.ping_server())  # routed (or dropped) before the unblock
    ok(unblock(b, c.bare))
    marker = c.message(b.jid, "marker")
    b.recv_stanza("message", id=marker)
    assert not queued(b, lambda e: e.tag == C("iq") and bare(e.get("from") or "") == c.bare), \
        "IQ from a blocked contact delivered"


def test_presence_from_blocked_contact_is_dropped(server, clients):
    b = clients.add(server.online("bpb"))
    c = clients.add(server.online("bpc"))
    e = clients.add(server.online("bpe"))
    make_mutual(b, c)
    ok(block(b, c.bare, e.bare))
    c.presence(status="while blocked")
    c.presence(to=b.jid, status="directed while blocked")
    e.presence(to=b.bare, type_="subscribe", status="request while blocked")
    # A session handles its stanzas in order: once these answers are back, the stanzas
    # above were routed (or dropped) while the block held.
    ok(c.ping_server())
    ok(e.ping_server())
    ok(unblock(b, c.bare, e.bare))
    c.presence(status="after")
    b.recv(presence_from(c, "after"), what="presence after unblock")
    e.presence(to=b.bare, type_="subscribe", status="request after")
    b.recv(lambda x: presence_from(e, "request after")(x) and x.get("type") == "subscribe",
           what="subscription request after unblock")
    assert not queued(b, presence_from(c)), "presence from a blocked contact delivered"
    assert not queued(b, presence_from(e)), "subscription request from a blocked JID delivered"


def self_marker(c):
    """A message to the session itself: once it is back, everything the server queued for
    the session before (probe answers, stored requests) has arrived."""
    mid = c.message(c.jid, "marker")
    c.recv_stanza("message", id=mid)


def test_probes_are_not_answered_between_blocker_and_blocked(server, clients):
    """RFC 6121 4.3: a new available resource gets its contacts' presence through probes;
    none between a user and a contact one of them blocks, in either direction."""
    b1 = clients.add(server.online("bqb", resource="first"))
    c1 = clients.add(server.online("bqc", resource="first"))
    make_mutual(b1, c1)
    ok(block(b1, c1.bare))
    b2 = clients.add(server.login(b1.bare, b1.password, resource="second", presence=True))
    self_marker(b2)
    assert queued(b2, presence_from(b1)), "the probe of the user's own resources stopped working"
    # (Prosody bounces the server's own probe as a presence error: not the contact's presence.)
    assert not queued(b2, lambda e: presence_from(c1)(e) and e.get("type") != "error"), \
        "a blocked contact's presence answered the user's probe"
    c2 = clients.add(server.login(c1.bare, c1.password, resource="second", presence=True))
    self_marker(c2)
    assert queued(c2, presence_from(c1)), "the probe of the contact's own resources stopped working"
    assert not queued(c2, presence_from(b1)), "the blocking user's presence answered a probe"


def test_stored_subscription_request_from_blocked_jid_is_not_delivered(server, clients):
    """RFC 6121 3.1.3: a request kept while the user was offline comes with its initial
    presence, unless the user blocks its sender by then."""
    bjid, _, bpw = server.new_user("bsb")
    e = clients.add(server.online("bse"))
    f = clients.add(server.online("bsf"))
    e.presence(to=bjid, type_="subscribe", status="kept while offline")
    f.presence(to=bjid, type_="subscribe", status="kept too")
    ok(e.ping_server())
    ok(f.ping_server())
    b = clients.add(server.login(bjid, bpw, presence=False))
    ok(block(b, e.bare))
    b.presence()
    b.recv(lambda x: presence_from(f, "kept too")(x) and x.get("type") == "subscribe",
           what="the request kept from an unblocked JID")
    self_marker(b)
    assert not queued(b, presence_from(e)), "stored request from a blocked JID delivered"


def test_blocked_contact_sees_the_user_go_unavailable_and_come_back(server, clients):
    """3.3: unavailable presence to the contact that received the user's presence; 3.4: the
    current presence again after the unblock."""
    b = clients.add(server.online("bub"))
    c = clients.add(server.online("buc"))
    make_mutual(b, c)
    ok(block(b, c.bare))
    un = c.recv(presence_from(b), what="unavailable from the blocking user")
    assert un.get("from") == b.jid and un.get("type") == "unavailable", tostring(un)
    # While blocked, the user's presence changes are not sent to the contact.
    b.presence(status="busy while blocking")
    ok(unblock(b, c.bare))
    mid = b.message(c.jid, "marker")
    c.recv_stanza("message", id=mid)
    # Exactly one presence came meanwhile: the current one, sent at the unblock.
    got = [e for e in c.queue if presence_from(b)(e)]
    assert len(got) == 1, [tostring(e) for e in got]
    assert got[0].get("from") == b.jid and got[0].get("type") is None, tostring(got[0])
    assert got[0].findtext(C("status")) == "busy while blocking", tostring(got[0])


@pytest.mark.prosody_deviates("tells only roster contacts, not directed-presence recipients, of a block")
def test_directed_presence_recipient_sees_the_user_go_unavailable(server, clients):
    """3.3: a JID that got the user's directed presence (RFC 6121 4.6) sees the user go
    unavailable when blocked, and gets no more presence from it."""
    b = clients.add(server.online("bdb"))
    x = clients.add(server.online("bdx"))
    b.presence(to=x.jid, status="directed")
    x.recv(presence_from(b, "directed"), what="directed presence")
    ok(block(b, x.bare))
    un = x.recv(presence_from(b), what="unavailable from the blocking user")
    assert un.get("from") == b.jid and un.get("type") == "unavailable", tostring(un)
    ok(unblock(b, x.bare))
    b.presence(type_="unavailable")
    mid = b.message(x.jid, "marker")
    x.recv_stanza("message", id=mid)
    assert not queued(x, presence_from(b)), "presence after the block"


@pytest.mark.prosody_deviates("drops a blocked JID's message without the <service-unavailable/> of 3.3")
def test_blocking_one_resource_blocks_only_that_resource(server, clients):
    b = clients.add(server.online("brb"))
    c1 = clients.add(server.online("brc", resource="phone"))
    c2 = clients.add(server.login(c1.bare, c1.password, resource="desk", presence=True))
    ok(block(b, c1.jid))
    mid = c1.message(b.jid, "from the phone")
    assert stanza_error(c1.recv_stanza("message", id=mid, type="error"))[1] == "service-unavailable"
    mid = c2.message(b.jid, "from the desk")
    b.recv_stanza("message", id=mid)
    assert not queued(b, lambda e: e.findtext(C("body")) == "from the phone")


@pytest.mark.prosody_deviates("drops a blocked JID's message without the <service-unavailable/> of 3.3")
def test_domain_item_blocks_everyone_at_the_domain(server, clients):
    b = clients.add(server.online("bdb"))
    d = clients.add(server.online("bdd", domain="example.org"))
    e = clients.add(server.online("bde"))
    ok(block(b, "example.org"))
    mid = d.message(b.jid, "from the blocked domain")
    assert stanza_error(d.recv_stanza("message", id=mid, type="error"))[1] == "service-unavailable"
    mid = e.message(b.jid, "from elsewhere")
    b.recv_stanza("message", id=mid)
    assert not queued(b, message_from(d))
    mid = b.message(d.jid, "to the blocked domain")
    assert_blocked_error(b.recv_stanza("message", id=mid, type="error"), "message")


# ------------------------------------------------------------------ outbound

def test_user_cannot_send_to_a_blocked_jid(server, clients):
    b = clients.add(server.online("bsb"))
    c = clients.add(server.online("bsc"))
    ok(block(b, c.bare))
    mid = b.message(c.bare, "to someone I block")
    assert_blocked_error(b.recv_stanza("message", id=mid, type="error"), "message")
    mid = b.message(c.jid, "to a resource of someone I block")
    assert_blocked_error(b.recv_stanza("message", id=mid, type="error"), "message")
    assert_blocked_error(ping(b, c.jid), "iq")
    assert_blocked_error(b.iq("get", f"<vCard xmlns='{NS_VCARD}'/>", to=c.bare), "iq")
    b.presence(to=c.jid, status="directed to someone I block")
    ok(unblock(b, c.bare))
    mid = b.message(c.jid, "after unblock")
    c.recv_stanza("message", id=mid)
    assert not queued(c, lambda e: e.tag in (C("message"), C("iq")) and
                      bare(e.get("from") or "") == b.bare and e.get("id") != mid), \
        "stanza to a blocked JID delivered"
    assert not queued(c, presence_from(b, "directed to someone I block"))


# ------------------------------------------------------------------ with a client library

def test_slixmpp_block_unblock_events(server):
    slixmpp = pytest.importorskip("slixmpp")
    ajid, _, apw = server.new_user("bslix")
    xjid = server.new_user("bslx")[0]

    def make(resource):
        c = slixmpp.ClientXMPP(f"{ajid}/{resource}", apw)
        c.register_plugin("xep_0030")
        c.register_plugin("xep_0191")
        c.ssl_context.check_hostname = False
        c.ssl_context.verify_mode = ssl.CERT_NONE
        return c

    async def connected(c):
        started = asyncio.get_running_loop().create_future()
        c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        c.connect(server.host, server.c2s_port)
        await asyncio.wait_for(started, 15)
        c.send_presence()

    async def scenario():
        loop = asyncio.get_running_loop()
        a, b = make("one"), make("two")
        pushed = {"blocked": loop.create_future(), "unblocked": loop.create_future()}
        for ev, fut in pushed.items():
            b.add_event_handler(ev, lambda iq, fut=fut, ev=ev: fut.done() or fut.set_result(
                {str(j) for j in iq["block" if ev == "blocked" else "unblock"]["items"]}))
        await connected(a)
        await connected(b)
        assert (await a["xep_0191"].get_blocked(timeout=10))["blocklist"]["items"] == set()
        await b["xep_0191"].get_blocked(timeout=10)
        await a["xep_0191"].block(xjid, timeout=10)
        assert await asyncio.wait_for(pushed["blocked"], 10) == {xjid}
        got = await b["xep_0191"].get_blocked(timeout=10)
        assert {str(j) for j in got["blocklist"]["items"]} == {xjid}
        await a["xep_0191"].unblock(xjid, timeout=10)
        assert await asyncio.wait_for(pushed["unblocked"], 10) == {xjid}
        for c in (a, b):
            c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 60))


# ------------------------------------------------------------------ durability

@pytest.mark.starling_only
def test_blocklist_survives_a_restart(fresh_server, clients):
    srv = fresh_server
    b = srv.online("bdur", presence=False)
    cjid, _, cpw = srv.new_user("bdc")
    ok(block(b, cjid, "example.org"))
    b.close()
    srv.restart()
    b = clients.add(srv.login(b.bare, b.password, presence=True))
    assert blocklist(b) == sorted([cjid, "example.org"])
    c = clients.add(srv.login(cjid, cpw, presence=True))
    mid = c.message(b.jid, "after the restart")
    assert stanza_error(c.recv_stanza("message", id=mid, type="error"))[1] == "service-unavailable"


# ------------------------------------------------------------------ a cluster

@pytest.mark.starling_only
@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_blocking_holds_across_nodes(shared_cluster, clients):
    """The blocker is on node 1 (and has resources on nodes 2 and 3 that requested the
    list); the blocked contacts are on nodes 2 and 3. Each stanza is decided by the node
    its sender is on, from that node's replica."""
    cl = shared_cluster
    a1 = clients.add(online_on(cl[1], "bca", resource="n1"))
    a2 = clients.add(relogin(cl[2], a1, resource="n2"))
    a3 = clients.add(relogin(cl[3], a1, resource="n3"))
    c2 = clients.add(online_on(cl[2], "bcc"))
    c3 = clients.add(online_on(cl[3], "bcd"))
    for a in (a2, a3):
        assert blocklist(a) == []
        # A stanza from there to node 1 arrives after the route change it made (the
        # request for the list) has been applied on node 1.
        mid = a.message(a1.jid, "requested the list")
        a1.recv_stanza("message", id=mid)
    # Before the block the contacts' messages pass, and the nodes of the blocker's other
    # sessions (2 and 3) keep its list as they read it then: the block must replace it there.
    for c in (c2, c3):
        mid = c.message(a1.jid, "before the block")
        a1.recv_stanza("message", id=mid)

    ok(block(a1, c2.bare, c3.bare))
    # A push is applied on its node after the write it follows: nodes 2 and 3 know the block.
    for a in (a2, a3):
        assert recv_push(a, "block") == sorted([c2.bare, c3.bare])

    for c in (c2, c3):
        for to in (a1.bare, a1.jid, a2.jid):
            mid = c.message(to, "while blocked")
            err = c.recv_stanza("message", id=mid, type="error")
            assert stanza_error(err)[1] == "service-unavailable", tostring(err)
        r = ping(c, a1.jid)
        assert stanza_error(r)[1] == "service-unavailable", tostring(r)
        r = ping(c, a3.jid)
        assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    for a in (a1, a2, a3):
        mid = a.message(c2.jid, "to a blocked contact")
        assert_blocked_error(a.recv_stanza("message", id=mid, type="error"), "message")

    ok(unblock(a1))
    for a in (a2, a3):
        assert recv_push(a, "unblock") == []
    for c in (c2, c3):
        mid = c.message(a1.jid, "after unblock")
        a1.recv_stanza("message", id=mid)
    for a in (a1, a2, a3):
        assert not queued(a, lambda e: e.findtext(C("body")) == "while blocked"), \
            "a blocked message was delivered on node " + a.jid[-1]
        assert not queued(a, lambda e: e.tag == C("iq") and e.find(q(NS_PING, "ping")) is not None)



@pytest.mark.starling_only
@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_concurrent_changes_through_two_nodes_are_all_kept(shared_cluster, clients):
    """Changes to one list made at the same moment through two nodes are compare-and-set
    writes: none is lost, and a list left with items is enforced (an unblock racing a block
    must not leave items behind without the record that says the user blocks anyone)."""
    cl = shared_cluster
    a1 = clients.add(online_on(cl[1], "bcx", resource="n1"))
    a2 = clients.add(relogin(cl[2], a1, resource="n2"))
    ours = [cl[1].new_user(f"bcx{i}_")[0] for i in range(8)]
    theirs = [cl[2].new_user(f"bcy{i}_")[0] for i in range(8)]

    def send_all(c, requests):
        ids = []
        for payload in requests:
            iid = f"cc-{len(ids)}-{id(c)}"
            c.send_raw(f"<iq type='set' id='{iid}'>{payload}</iq>")
            ids.append(iid)
        return ids

    def results(c, ids):
        for iid in ids:
            ok(c.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what=f"reply {iid}"))

    def caught_up(sender, receiver):
        """A stanza is delivered on its receiver's node after what its sender's node had
        applied: from then on, that node has applied the sender's writes too."""
        mid = sender.message(receiver.jid, "sync")
        receiver.recv_stanza("message", id=mid)

    blocks = lambda jids: [f"<block xmlns='{NS_BLOCK}'><item jid='{j}'/></block>" for j in jids]  # noqa: E731
    ids1, ids2 = send_all(a1, blocks(ours)), send_all(a2, blocks(theirs))
    results(a1, ids1)
    results(a2, ids2)
    caught_up(a2, a1)
    assert blocklist(a1) == sorted(ours + theirs)

    # Unblocking everything through one node while blocking one more through the other.
    last = cl[3].new_user("bcz")
    ids1 = send_all(a1, [f"<unblock xmlns='{NS_BLOCK}'/>"])
    ids2 = send_all(a2, blocks([last[0]]))
    results(a1, ids1)
    results(a2, ids2)
    caught_up(a2, a1)
    caught_up(a1, a2)
    final = blocklist(a1)
    assert final in ([], [last[0]]), final
    assert blocklist(a2) == final
    # What the list says is what holds, on a third node too.
    z = clients.add(cl[3].login(last[0], last[2], presence=True))
    w = clients.add(online_on(cl[3], "bcw"))
    caught_up(a1, w)
    mid = z.message(a1.jid, "who is blocked?")
    if final:
        err = z.recv_stanza("message", id=mid, type="error")
        assert stanza_error(err)[1] == "service-unavailable", tostring(err)
    else:
        a1.recv_stanza("message", id=mid)
