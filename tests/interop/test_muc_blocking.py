"""XEP-0191 blocking of what MUC rooms send (section 3.3: the server does not deliver to
the user any stanza from a blocked JID). Rooms deliver straight to the occupants'
sessions, past the routing hooks, so these check the session-side filter: an item for an
occupant's JID (room@service/nick), for the room's bare JID (everything the room and its
occupants send), for the service domain (every room of it) and of the domain/resource
form (that nick in every room of the service) stops groupchat messages, occupant
presence and private messages; unblocking lets them through again; the user's own
stanzas to a blocked room get <not-acceptable/> with <blocked/>. Across nodes: a block
made through one node filters the user's sessions on the others, and a session bound
later on another node starts with it.

Something that must NOT arrive is checked with a marker sent later over the same path
(another occupant's groupchat message, fanned out by the same room after it), or, when
the whole room is blocked, after the room is seen to have handled everything (the other
occupants got it) with a message over another path and a wait.
"""

import uuid
from xml.sax.saxutils import escape as xml_escape

import pytest

from cluster import online_on, relogin, shared_cluster  # noqa: F401 (fixture)
from rawxmpp import C, q, stanza_error, tostring

NS_BLOCK = "urn:xmpp:blocking"
NS_BLOCK_ERR = "urn:xmpp:blocking:errors"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"
NS_DATA = "jabber:x:data"
DISCO_INFO = "http://jabber.org/protocol/disco#info"


def attr(v):
    return xml_escape(v, {"'": "&apos;", '"': "&quot;"})


def service(server):
    return f"conference.{server.domain}"


def new_room(server):
    return f"mb{uuid.uuid4().hex[:8]}@{service(server)}"


def codes(p):
    x = p.find(q(NS_USER, "x"))
    return set() if x is None else {s.get("code") for s in x.findall(q(NS_USER, "status"))}


def join(c, room, nick, timeout=15):
    """Joins without history; returns once the subject (the end of the join) arrived."""
    c.send_raw(f"<presence to='{attr(room + '/' + nick)}'><x xmlns='{NS_MUC}'>"
               "<history maxstanzas='0'/></x></presence>")
    own = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nick}"
                 and ("110" in codes(e) or e.get("type") == "error"), timeout=timeout,
                 what="own presence")
    assert own.get("type") != "error", tostring(own)
    c.recv(lambda e: e.tag == C("message") and e.get("from", "").startswith(room)
           and e.find(C("subject")) is not None, timeout=timeout, what="subject")
    return own


def instant(c, room, nick):
    own = join(c, room, nick)
    assert "201" in codes(own), tostring(own)
    r = c.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>", to=room)
    assert r.get("type") == "result", tostring(r)


def ok(r):
    assert r.get("type") == "result", tostring(r)
    return r


def block(c, *jids, forget=()):
    """Blocks; what the sessions in `forget` (and c) got until now is forgotten, so that
    anything from the blocked JIDs found later in their queues came after the block."""
    items = "".join(f"<item jid='{attr(j)}'/>" for j in jids)
    r = ok(c.iq("set", f"<block xmlns='{NS_BLOCK}'>{items}</block>"))
    for s in (c, *forget):
        s.queue.clear()
    return r


def unblock(c, *jids):
    items = "".join(f"<item jid='{attr(j)}'/>" for j in jids)
    return ok(c.iq("set", f"<unblock xmlns='{NS_BLOCK}'>{items}</unblock>"))


def groupchat(c, room, mid, body="x"):
    c.send_raw(f"<message to='{room}' type='groupchat' id='{mid}'><body>{body}</body></message>")


def private(c, to, mid):
    c.send_raw(f"<message to='{attr(to)}' type='chat' id='{mid}'><body>pm</body></message>")


def from_(jid):
    return lambda e: e.get("from") == jid


def from_room(room):
    return lambda e: (e.get("from") or "").split("/")[0] == room


def seen_before(c, mid, pred, timeout=None):
    """Reads up to the message `mid`; the elements matching pred that came first."""
    c.recv(lambda e: e.tag == C("message") and e.get("id") == mid, timeout, what=f"marker {mid}")
    return [tostring(e) for e in c.queue if pred(e)]


def loud_speaks(loud, room, nick, u_nick, tag):
    """The occupant `nick` sends a groupchat message, a private message to u and a
    presence change; returns once the room handled all three (its reflection and its
    broadcast of the presence came back to the sender)."""
    private(loud, f"{room}/{u_nick}", f"p-{tag}")
    loud.send_raw(f"<presence to='{attr(room + '/' + nick)}'><status>s-{tag}</status></presence>")
    groupchat(loud, room, f"g-{tag}")
    loud.recv(lambda e: e.tag == C("presence") and e.findtext(C("status")) == f"s-{tag}",
              what="own presence change")
    loud.recv(lambda e: e.tag == C("message") and e.get("id") == f"g-{tag}", what="reflection")


def got_all(u, room, nick, tag):
    """u received the occupant's three stanzas of `tag`."""
    occupant = f"{room}/{nick}"
    u.recv(lambda e: e.tag == C("message") and e.get("id") == f"g-{tag}"
           and e.get("from") == occupant, what="the groupchat message")
    u.recv(lambda e: e.tag == C("message") and e.get("id") == f"p-{tag}"
           and e.get("from") == occupant, what="the private message")
    u.recv(lambda e: e.tag == C("presence") and e.get("from") == occupant
           and e.findtext(C("status")) == f"s-{tag}", what="the presence change")


def room_of_three(server, clients, owner_nick="loud"):
    owner = clients.add(server.online("mbo"))
    u = clients.add(server.online("mbu"))
    other = clients.add(server.online("mbm"))
    room = new_room(server)
    instant(owner, room, owner_nick)
    join(u, room, "quiet")
    join(other, room, "other")
    return room, owner, u, other


# ------------------------------------------------------------------ one occupant

@pytest.mark.parametrize("nick,item", [
    ("loud", "{room}/{nick}"),
    ("l'o&u\"d", "{room}/{nick}"),  # escaped in the serialised stanzas
    ("loud", "{service}/{nick}"),  # domain/resource: that nick in any room of the service
])
def test_blocked_occupant_is_not_delivered_and_others_are(server, clients, nick, item):
    room, loud, u, other = room_of_three(server, clients, owner_nick=nick)
    jid = item.format(room=room, nick=nick, service=service(server))
    block(u, jid)
    loud_speaks(loud, room, nick, "quiet", "b")
    groupchat(other, room, "marker-1")
    stray = seen_before(u, "marker-1", from_(f"{room}/{nick}"))
    assert not stray, "delivered from a blocked occupant: " + stray[0]
    # the other occupant is not blocked: its groupchat, private message and presence pass
    private(other, f"{room}/quiet", "p-other")
    u.recv(lambda e: e.get("id") == "p-other" and e.get("from") == f"{room}/other",
           what="the other occupant's private message")
    other.presence(to=f"{room}/other", status="still here")
    u.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/other"
           and e.findtext(C("status")) == "still here", what="the other occupant's presence")
    # the blocked occupant got its own stanzas all the same (nothing bounced to it)
    assert not [e for e in loud.queue if e.get("type") == "error"], tostring(loud.queue[0])

    unblock(u, jid)
    loud_speaks(loud, room, nick, "quiet", "a")
    got_all(u, room, nick, "a")
    stray = [tostring(e) for e in u.queue if (e.get("id") or "").endswith("-b")]
    assert not stray, "a blocked stanza came after all: " + stray[0]
    server.assert_healthy()


def test_blocked_occupant_joining_later_is_not_announced(server, clients):
    """The item names the JID, not who holds it: an occupant who joins under a blocked
    nick is not seen either, nor is it when it leaves."""
    owner = clients.add(server.online("mbo"))
    u = clients.add(server.online("mbu"))
    late = clients.add(server.online("mbl"))
    room = new_room(server)
    instant(owner, room, "owner")
    join(u, room, "quiet")
    block(u, f"{room}/late")
    join(late, room, "late")
    groupchat(late, room, "g-late")
    late.recv(lambda e: e.get("id") == "g-late", what="reflection")
    late.send_raw(f"<presence to='{room}/late' type='unavailable'/>")
    late.recv(lambda e: e.tag == C("presence") and e.get("type") == "unavailable", what="left")
    groupchat(owner, room, "marker-late")
    stray = seen_before(u, "marker-late", from_(f"{room}/late"))
    assert not stray, "delivered from a blocked occupant JID: " + stray[0]


# ------------------------------------------------------------------ the room, the service

@pytest.mark.parametrize("which", ["room", "service"])
def test_blocked_room_or_service_delivers_nothing(server, clients, which):
    """A bare room JID blocks the room and every occupant; the service domain every room
    of it. The user's own stanzas to it are refused with <blocked/>."""
    room, loud, u, other = room_of_three(server, clients)
    jid = room if which == "room" else service(server)
    block(u, jid)
    loud_speaks(loud, room, "loud", "quiet", "b")
    groupchat(other, room, "g-other")
    other.recv(lambda e: e.get("id") == "g-other", what="reflection")
    # the room's own voice: a subject change by the owner, a kick announced to everyone
    loud.send_raw(f"<message to='{room}' type='groupchat' id='subj'><subject>new</subject></message>")
    other.recv(lambda e: e.get("id") == "subj", what="the subject change")
    # a stanza over another path, sent after the room handled everything
    friend = clients.add(server.online("mbf"))
    mid = friend.message(u.jid, "marker")
    u.recv(lambda e: e.get("id") == mid, what="the marker")
    u.expect_nothing(from_room(room), 0.5, what="a stanza from the blocked room")

    # what the user sends there is refused: a message, an IQ (a room, an occupant)
    u.send_raw(f"<message to='{room}' type='groupchat' id='out'><body>y</body></message>")
    err = u.recv(lambda e: e.get("id") == "out", what="the refusal")
    assert err.get("type") == "error" and stanza_error(err)[1] == "not-acceptable", tostring(err)
    assert err.find(C("error")).find(q(NS_BLOCK_ERR, "blocked")) is not None, tostring(err)
    for to in (room, f"{room}/loud"):
        r = u.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=to)
        assert stanza_error(r) == ("cancel", "not-acceptable"), tostring(r)
        assert r.find(C("error")).find(q(NS_BLOCK_ERR, "blocked")) is not None, tostring(r)
    other.expect_nothing(lambda e: e.get("id") == "out", 0.3, what="the refused message")

    unblock(u, jid)
    loud_speaks(loud, room, "loud", "quiet", "a")
    got_all(u, room, "loud", "a")
    r = u.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
    assert r.get("type") == "result", tostring(r)
    server.assert_healthy()


def test_other_domains_items_change_nothing_for_rooms(server, clients):
    """Items elsewhere (an account, the served domain itself: not its subdomains) leave
    room traffic alone."""
    room, loud, u, other = room_of_three(server, clients)
    block(u, f"someone@{server.domain}", server.domain, f"{room}/nobody")
    loud_speaks(loud, room, "loud", "quiet", "a")
    got_all(u, room, "loud", "a")


def test_every_session_of_the_user_is_filtered(server, clients):
    """The block is the account's: its other session, joined under another nick, is
    filtered too, and a session bound after the block starts filtered."""
    room, loud, u, other = room_of_three(server, clients)
    u2 = clients.add(server.login(u.bare, u.password, resource="second", presence=True))
    join(u2, room, "quiet2")
    block(u, f"{room}/loud", forget=[u2])
    u3 = clients.add(server.login(u.bare, u.password, resource="third", presence=True))
    join(u3, room, "quiet3")
    loud_speaks(loud, room, "loud", "quiet2", "b")
    groupchat(other, room, "marker-2")
    for c in (u, u2, u3):
        stray = seen_before(c, "marker-2", from_(f"{room}/loud"))
        assert not stray, f"delivered to {c.jid} from a blocked occupant: " + stray[0]


# ------------------------------------------------------------------ across nodes

def sync(sender, receiver):
    mid = sender.message(receiver.jid, "sync")
    receiver.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="sync")


@pytest.mark.starling_only
@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_block_through_one_node_filters_sessions_on_the_others(shared_cluster, clients):
    """The user blocks an occupant through node 1; its session on node 2 (an occupant of
    the room, which never asked for the blocklist) stops getting that occupant's stanzas, a session bound later on node 3
    starts filtered, and an unblock through node 1 lets them through on node 2 again."""
    cl = shared_cluster
    u1 = clients.add(online_on(cl[1], "mbx", resource="n1"))
    u2 = clients.add(relogin(cl[2], u1, resource="n2"))
    loud = clients.add(online_on(cl[3], "mby"))
    other = clients.add(online_on(cl[1], "mbz"))
    room = new_room(cl[1])
    instant(loud, room, "loud")
    join(u2, room, "quiet")
    join(other, room, "other")
    # u2 never asked for the list (no push). A message from node 1 sent after the block's
    # result reaches node 2 after node 1's word to reload (one delivery stream, in order).
    block(u1, f"{room}/loud")
    sync(u1, u2)
    u2.queue.clear()  # what came before the block (the room's presences at the join)
    loud_speaks(loud, room, "loud", "quiet", "b")
    groupchat(other, room, "marker-c")
    stray = seen_before(u2, "marker-c", from_(f"{room}/loud"))
    assert not stray, "delivered on node 2 from a blocked occupant: " + stray[0]

    u3 = clients.add(relogin(cl[3], u1, resource="n3"))
    join(u3, room, "quiet3")
    loud_speaks(loud, room, "loud", "quiet3", "c")
    groupchat(other, room, "marker-d")
    stray = seen_before(u3, "marker-d", from_(f"{room}/loud"))
    assert not stray, "delivered on node 3 from a blocked occupant: " + stray[0]

    unblock(u1, f"{room}/loud")
    sync(u1, u2)
    loud_speaks(loud, room, "loud", "quiet", "a")
    got_all(u2, room, "loud", "a")


# ------------------------------------------------------------------ a pubsub service

def test_blocked_pubsub_service_notifications_are_not_delivered(server, clients):
    """The same holds for the other hosted services: a pubsub service's notifications stop
    while its domain is blocked (they pass the message hooks already; the sessions'
    filter covers whatever a service delivers straight to them), and the user's IQs to it
    are refused with <blocked/>."""
    NS_PUBSUB = "http://jabber.org/protocol/pubsub"
    NS_EVENT = NS_PUBSUB + "#event"
    s = f"pubsub.{server.domain}"
    owner = clients.add(server.online("mbpo"))
    u = clients.add(server.online("mbpu"))
    friend = clients.add(server.online("mbpf"))
    node = "n-" + uuid.uuid4().hex[:8]
    ok(owner.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/></pubsub>", to=s))
    ok(u.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='{u.jid}'/></pubsub>",
            to=s))

    def publish(item_id):
        ok(owner.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'>"
                    f"<item id='{item_id}'><entry xmlns='urn:x'/></item></publish></pubsub>", to=s))

    def event(item_id):
        def pred(e):
            ev = e.find(q(NS_EVENT, "event"))
            return (e.tag == C("message") and e.get("from") == s and ev is not None
                    and any(i.get("id") == item_id for items in ev for i in items))
        return pred

    publish("before")
    u.recv(event("before"), what="the notification before the block")
    block(u, s)
    publish("blocked")
    mid = friend.message(u.jid, "marker")
    u.recv(lambda e: e.get("id") == mid, what="the marker")
    u.expect_nothing(event("blocked"), 0.5, what="a notification from the blocked service")
    r = u.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>", to=s)
    assert stanza_error(r) == ("cancel", "not-acceptable"), tostring(r)
    unblock(u, s)
    publish("after")
    u.recv(event("after"), what="the notification after the unblock")
