"""XEP-0045 rooms in a 3-node cluster: each room runs on one node (rendezvous hashing of the
room JID over the live members), occupants anywhere.

* occupants on all three nodes, 36 messages from senders on every node: every occupant gets
  all of them, in one order (each sender's in the order it sent them);
* kill -9 of the node that runs the room during a conversation: the room answers again on a
  survivor (time from the kill, FIGURE), occupants on the surviving nodes stay joined, and no
  message the room reflected before or after the kill is lost (FIGURE: lost count, goal 0);
  the history a newcomer gets holds the messages of before the kill.
"""

import time
import uuid

import pytest

from cluster import LEASE_TTL, Checks, cluster, online_on, shared_cluster  # noqa: F401 (fixtures)
from rawxmpp import C, XMPPTimeout, q, tostring

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(240)]

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"
NS_DATA = "jabber:x:data"
M64 = (1 << 64) - 1


def score(node: int, key: str) -> int:
    """The server's rendezvous score (services::score): FNV-1a then splitmix64's finaliser."""
    h = 0xcbf29ce484222325
    for b in node.to_bytes(8, "big") + key.encode():
        h ^= b
        h = (h * 0x100000001b3) & M64
    h ^= h >> 30
    h = (h * 0xbf58476d1ce4e5b9) & M64
    h ^= h >> 27
    h = (h * 0x94d049bb133111eb) & M64
    return h ^ (h >> 31)


def owner_of(nodes, key):
    return max(nodes, key=lambda n: (score(n, key), n))


def room_on(nodes, want, domain="localhost"):
    for _ in range(1000):
        room = f"cr{uuid.uuid4().hex[:8]}@conference.{domain}"
        if owner_of(nodes, room) == want:
            return room
    raise AssertionError("no room name for that node")


def codes(p):
    x = p.find(q(NS_USER, "x"))
    return set() if x is None else {s.get("code") for s in x.findall(q(NS_USER, "status"))}


def join(c, room, nick, timeout=15):
    c.presence(to=f"{room}/{nick}", extra=f"<x xmlns='{NS_MUC}'><history maxstanzas='0'/></x>")
    own = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nick}"
                 and ("110" in codes(e) or e.get("type") == "error"), timeout=timeout, what="own presence")
    assert own.get("type") != "error", tostring(own)
    c.recv(lambda e: e.tag == C("message") and e.find(C("subject")) is not None, timeout=timeout)
    return own


def bodies(c, n, timeout=15):
    out = []
    for _ in range(n):
        e = c.recv(lambda e: e.tag == C("message") and e.get("type") == "groupchat"
                   and e.findtext(C("body")) is not None, timeout=timeout, what="groupchat")
        out.append((e.get("from").split("/", 1)[1], e.findtext(C("body"))))
    return out


def test_room_with_occupants_on_every_node(cluster, clients):
    cl = cluster
    ids = sorted(cl.nodes)
    room = f"all{uuid.uuid4().hex[:8]}@conference.localhost"
    occupants = []
    for i in ids:
        for j in range(2):
            occupants.append((f"n{i}u{j}", clients.add(online_on(cl[i], "cm"))))
    owner_nick, owner = occupants[0]
    own = join(owner, room, owner_nick)
    assert "201" in codes(own)
    r = owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>", to=room)
    assert r.get("type") == "result", tostring(r)
    for nick, c in occupants[1:]:
        join(c, room, nick)
    for _, c in occupants:
        c.drain(0.5)
    # One sender per node, round robin, without waiting.
    senders = [occupants[0], occupants[2], occupants[4]]
    sent = []
    for k in range(36):
        nick, c = senders[k % 3]
        body = f"{nick}-{k}"
        c.message(room, body, type_="groupchat")
        sent.append((nick, body))
    orders = {}
    for nick, c in occupants:
        got = bodies(c, len(sent))
        assert sorted(got) == sorted(sent), (nick, got)
        for s_nick, _ in senders:
            mine = [b for n, b in got if n == s_nick]
            assert mine == [b for n, b in sent if n == s_nick], (nick, s_nick, mine)
        orders[nick] = got
    first = next(iter(orders.values()))
    for nick, got in orders.items():
        assert got == first, f"{nick} saw another order"
    cl.figure("muc_cluster_messages_checked", len(sent) * len(occupants))


def test_kill9_of_the_rooms_node(cluster, clients):
    cl = cluster
    chk = Checks()
    ids = sorted(cl.nodes)
    leader = cl.leader()
    k = next(i for i in ids if i != leader)
    s1, s2 = [i for i in ids if i != k]
    room = room_on(ids, k)
    a = clients.add(online_on(cl[s1], "ka"))
    b = clients.add(online_on(cl[s2], "kb"))
    v = clients.add(online_on(cl[k], "kv"))
    own = join(a, room, "a")
    assert "201" in codes(own)
    r = a.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'>"
             f"<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
             f"<field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query>", to=room)
    assert r.get("type") == "result", tostring(r)
    join(b, room, "b")
    join(v, room, "v")
    for c in (a, b, v):
        c.drain(0.5)

    reflected = []   # (sender nick, body) whose reflection reached the sender

    def say(c, nick, body, timeout):
        c.message(room, body, type_="groupchat")
        try:
            c.recv(lambda e: e.tag == C("message") and e.get("type") == "groupchat"
                   and e.findtext(C("body")) == body and e.get("from") == f"{room}/{nick}",
                   timeout=timeout, what=f"reflection of {body}")
        except XMPPTimeout:
            return False
        reflected.append((nick, body))
        return True

    for n in range(10):
        c, nick = (a, "a") if n % 2 == 0 else (b, "b")
        assert say(c, nick, f"before-{n}", 10)
    t_kill = cl.kill9(k)
    # Right after the kill: the next message waits for the room to run again.
    answered = None
    after = 0
    for n in range(60):
        c, nick = (a, "a") if n % 2 == 0 else (b, "b")
        if say(c, nick, f"after-{n}", 30):
            if answered is None:
                answered = time.monotonic() - t_kill
            after += 1
            if after >= 10:
                break
        if time.monotonic() - t_kill > 90:
            break
    chk.expect(answered is not None, "the room never answered after the kill")
    if answered is not None:
        cl.figure("muc_kill9_room_answers_again_s", answered, "s")
        chk.expect(answered < 6 * LEASE_TTL, f"room answered after {answered:.1f}s")
    # Each survivor got every message the other one had reflected, in order (its own
    # reflections were read by say()).
    time.sleep(1.0)
    lost = 0
    v_left = {}
    for nick, c, other in (("a", a, "b"), ("b", b, "a")):
        drained = c.drain(1.0)
        v_left[nick] = any(e.tag == C("presence") and e.get("from") == f"{room}/v"
                           and e.get("type") == "unavailable" for e in drained)
        got = [e.findtext(C("body")) for e in drained
               if e.tag == C("message") and e.get("type") == "groupchat" and e.findtext(C("body"))]
        expected = [body for n_, body in reflected if n_ == other]
        missing = [x for x in expected if x not in got]
        lost += len(missing)
        chk.expect(not missing, f"{nick} missed {missing}")
        order = [x for x in got if x in expected]
        chk.expect(order == expected, f"{nick} saw {order}, expected {expected}")
    # The occupant of the dead node leaves the room (its route was dropped).
    for nick, c in (("a", a), ("b", b)):
        if not v_left[nick]:
            try:
                c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/v"
                       and e.get("type") == "unavailable", timeout=max(1.0, 6 * LEASE_TTL - (time.monotonic() - t_kill)))
                v_left[nick] = True
            except XMPPTimeout:
                pass
        chk.expect(v_left[nick], f"{nick} never saw the dead node's occupant leave")
    cl.figure("muc_kill9_dead_occupant_left_s", time.monotonic() - t_kill, "s")
    cl.figure("muc_kill9_reflected_messages", len(reflected))
    cl.figure("muc_kill9_lost_messages", lost)
    # A newcomer on a survivor gets the history, the messages of before the kill included.
    n = clients.add(online_on(cl[s1], "kn"))
    n.presence(to=f"{room}/new", extra=f"<x xmlns='{NS_MUC}'><history maxstanzas='50'/></x>")
    hist = []
    for _ in range(80):
        e = n.recv(lambda e: e.tag == C("message") and e.get("from", "").startswith(room), timeout=15)
        if e.find(C("subject")) is not None and e.find(C("body")) is None:
            break
        hist.append(e.findtext(C("body")))
    missing = [body for _, body in reflected if body not in hist]
    chk.expect(not missing, f"history lacks {missing}")
    cl.figure("muc_kill9_history_missing", len(missing))
    for c in (a, b):
        r = c.ping_server()
        chk.expect(r.get("type") == "result", "survivor session unhealthy")
    chk.done()


def test_room_moves_to_a_node_that_joins(cluster, clients):
    """A 4th node joins during a conversation in a room it will own: the room moves there
    (state from the store), its occupants stay joined and no reflected message is lost."""
    cl = cluster
    chk = Checks()
    ids = sorted(cl.nodes)
    new_id = max(ids) + 1
    room = None
    for _ in range(2000):
        r = f"mv{uuid.uuid4().hex[:8]}@conference.localhost"
        if owner_of(ids + [new_id], r) == new_id:
            room = r
            break
    assert room
    before_owner = owner_of(ids, room)
    a = clients.add(online_on(cl[ids[0]], "ma"))
    b = clients.add(online_on(cl[ids[1]], "mb"))
    assert "201" in codes(join(a, room, "a"))
    r = a.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>", to=room)
    assert r.get("type") == "result", tostring(r)
    join(b, room, "b")
    for c in (a, b):
        c.drain(0.5)
    sent = []

    def talk(n0, n):
        for i in range(n0, n0 + n):
            c = a if i % 2 == 0 else b
            body = f"mv-{i}"
            c.message(room, body, type_="groupchat")
            sent.append(body)
            time.sleep(0.05)

    talk(0, 10)
    cl.add_node(via=ids[0])
    cl.wait_members(ids + [new_id], timeout=30)
    # Until every node sees the new one live, the two owners may differ for a moment.
    time.sleep(LEASE_TTL / 2)
    talk(10, 20)
    got = {}
    for nick, c in (("a", a), ("b", b)):
        seen = []
        for _ in range(len(sent)):
            try:
                e = c.recv(lambda e: e.tag == C("message") and e.get("type") == "groupchat"
                           and e.findtext(C("body")) is not None, timeout=20)
            except XMPPTimeout:
                break
            seen.append(e.findtext(C("body")))
        got[nick] = seen
        missing = [x for x in sent if x not in seen]
        chk.expect(not missing, f"{nick} missed {missing}")
    cl.figure("muc_move_on_join_lost_messages", sum(len([x for x in sent if x not in s]) for s in got.values()))
    chk.expect(got["a"] == got["b"], f"orders differ: {got}")
    cl.figure("muc_move_on_join_from_node", before_owner)
    chk.done()


def test_join_without_initial_presence_from_another_node(cluster, clients):
    """A client that joins before sending initial presence, on a node that does not run the
    room: the room (elsewhere) finds its session and answers at once."""
    cl = cluster
    ids = sorted(cl.nodes)
    room = room_on(ids, ids[0])
    owner = clients.add(online_on(cl[ids[0]], "jo"))
    join(owner, room, "o")
    r = owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>", to=room)
    assert r.get("type") == "result", tostring(r)
    quiet = clients.add(cl[ids[1]].online("jq", presence=False))
    join(quiet, room, "quiet")
    owner.message(room, "hello quiet", type_="groupchat")
    quiet.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "hello quiet", timeout=10)


def _stanzas(els):
    return sum(1 for e in els if e.tag in (C("message"), C("presence"), C("iq")))


@pytest.mark.parametrize("room_node", [1, 2, 3])
def test_occupant_resumed_on_another_node_keeps_getting_the_room(shared_cluster, clients,
                                                                room_node):
    """An occupant's session on node 1 (stream management) drops and resumes through
    node 3 (XEP-0198): the room (on node 1, where the session was, on node 2, or on node 3
    where it goes) keeps sending it the room's messages and presence, and its messages still
    reach the room."""
    from test_sm import NS_SM, drop, login_sm, resume, sm
    cl = shared_cluster
    room = room_on(sorted(cl.nodes), room_node)
    owner = clients.add(online_on(cl[2], "cro"))
    assert "201" in codes(join(owner, room, "owner"))
    r = owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>",
                 to=room)
    assert r.get("type") == "result", tostring(r)
    jid, _, pw = cl[1].new_user("crm")
    c, enabled = login_sm(cl[1], jid, pw)
    clients.add(c)
    received = 1  # its own presence
    c.presence(to=f"{room}/mobile", extra=f"<x xmlns='{NS_MUC}'><history maxstanzas='0'/></x>")
    c.recv(lambda e: e.tag == C("message") and e.find(C("subject")) is not None, timeout=15,
           what="subject")
    received += 1 + _stanzas(c.drain(0.5))
    owner.message(room, "before", type_="groupchat")
    assert bodies(c, 1) == [("owner", "before")]
    received += 1 + _stanzas(c.drain(0.3))
    c.send_raw(f"<a xmlns='{NS_SM}' h='{received}'/>")
    assert c.ping_server().get("type") == "result"
    received += 1
    time.sleep(0.6)  # the checkpoint of what it acknowledged
    drop(c)
    owner.message(room, "while away", type_="groupchat")
    # Reflected to the owner: the room sent it to every occupant at once.
    owner.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "while away",
               timeout=15, what="the reflection")
    time.sleep(0.5)
    c3, r = resume(cl[3], jid, pw, enabled.get("id"), received)
    clients.add(c3)
    assert r.tag == sm("resumed"), tostring(r)
    owner.drain(0.3)
    # Presence from the room follows it too.
    other = clients.add(online_on(cl[2], "crp"))
    join(other, room, "late")
    p = c3.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/late",
                timeout=15, what="presence of the newcomer")
    assert p.get("type") is None, tostring(p)
    # What the room sent while the session was away reaches it (held by the session and
    # handed on when it moved), then what the room sends after the move.
    for k in range(5):
        owner.message(room, f"after {k}", type_="groupchat")
    got = [b for _, b in bodies(c3, 6)]
    assert got == ["while away"] + [f"after {k}" for k in range(5)], got
    # And the resumed session is still the occupant: it may speak.
    c3.message(room, "back", type_="groupchat")
    m = owner.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "back",
                   timeout=15, what="the resumed occupant's message")
    assert m.get("from") == f"{room}/mobile", tostring(m)
    # A resumption with an unknown id through node 2: refused, and nothing else changes.
    bad, r = resume(cl[2], jid, pw, "no-such-id", 0)
    clients.add(bad)
    assert r.tag == sm("failed"), tostring(r)
    owner.message(room, "still here", type_="groupchat")
    c3.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "still here",
            timeout=15, what="the room's message after a bogus resumption")
    for n in (1, 2, 3):
        cl[n].assert_healthy()
    cl[3].assert_healthy(c3)


def _room_with_a_mobile_occupant(cl, clients, prefix):
    """A room on node 2 with its owner there, and an occupant `mobile` on node 1 whose
    session has stream management with resumption: (room, owner, jid, password, enabled,
    stanzas the mobile client received) and the mobile client."""
    from test_sm import login_sm
    room = room_on(sorted(cl.nodes), 2)
    owner = clients.add(online_on(cl[2], f"{prefix}o"))
    assert "201" in codes(join(owner, room, "owner"))
    r = owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>",
                 to=room)
    assert r.get("type") == "result", tostring(r)
    jid, _, pw = cl[1].new_user(f"{prefix}m")
    c, enabled = login_sm(cl[1], jid, pw)
    clients.add(c)
    join(c, room, "mobile")
    received = 1 + _stanzas(c.drain(1.0)) + 2  # own presence, the join's presence and subject
    owner.drain(0.5)
    return room, owner, jid, pw, enabled, received, c


def _resumed_occupant_gets_and_speaks(cl, room, owner, resumed, label, figure):
    """The room's messages reach the resumed session (how many were sent before the first
    did is recorded as `figure`), and what it says reaches the owner from its nick."""
    deadline = time.monotonic() + 30
    k = 0
    while True:
        owner.message(room, f"{label} {k}", type_="groupchat")
        try:
            resumed.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == f"{label} {k}",
                         timeout=2, what="the room's message")
            break
        except XMPPTimeout:
            k += 1
            assert time.monotonic() < deadline, "the room's messages never reached the resumed session"
    cl.figure(figure, k)
    # The route is written before `<resumed/>`: the first message after it already reaches it.
    assert k == 0, f"{k} of the room's messages sent after <resumed/> missed the resumed session"
    resumed.message(room, f"back, {label}", type_="groupchat")
    m = owner.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == f"back, {label}",
                   timeout=15, what="the resumed occupant's message")
    assert m.get("from") == f"{room}/mobile", tostring(m)


def test_occupant_resumed_after_its_node_was_killed_stays_in_the_room(cluster, clients):
    """The node holding an occupant's resumable session is killed (SIGKILL); the client
    resumes through node 3 (XEP-0198, from the record's checkpoint) before the cluster drops
    the dead node's routes: the room (on node 2) keeps it as an occupant once the routes are
    dropped, nobody sees it leave, and the room's messages reach it where it is now.
    (Node 1 leads the registry group here: the resumed session's route and the drop both
    wait for the next leader, in either order; the room holds the resumable session for its
    window, so neither order lets it go.)"""
    from test_sm import drop, resume, sm
    cl = cluster
    room, owner, jid, pw, enabled, received, c = _room_with_a_mobile_occupant(cl, clients, "ck")
    cl.kill9(1)
    drop(c)
    c3, r = resume(cl[3], jid, pw, enabled.get("id"), received)
    clients.add(c3)
    assert r.tag == sm("resumed"), tostring(r)
    # Past the dead node's lease: its routes are dropped everywhere.
    time.sleep(LEASE_TTL + 2)
    owner.expect_nothing(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/mobile"
                         and e.get("type") == "unavailable", timeout=1.0, what="mobile leaving")
    _resumed_occupant_gets_and_speaks(cl, room, owner, c3, "after kill",
                                      "muc_resume_after_kill_messages_missed")
    for n in (2, 3):
        cl[n].assert_healthy()


def test_occupant_resumed_after_its_dead_node_was_expired_stays_in_the_room(cluster, clients):
    """The node holding an occupant's resumable session is killed (SIGKILL) and expired:
    its routes are dropped, as the room's node sees (`cluster status`: no route of node 1
    left), before the client comes back, as a client that notices a dead connection only
    later does. The session may still be resumed (its window is not over), so the room (on
    node 2) keeps the occupant, as it keeps one whose connection broke: nobody sees it leave,
    what the room said meanwhile reaches it once resumed through node 3, in order, and it
    gets the room's messages and may speak."""
    from test_sm import drop, resume, sm
    cl = cluster
    room, owner, jid, pw, enabled, received, c = _room_with_a_mobile_occupant(cl, clients, "cx")
    # Node 2's replica holds node 1's routes (this session's among them)...
    cl.wait_status(lambda st: (st["members"].get(1, {}).get("sessions") or 0) >= 1, timeout=15, via=2,
                   what="node 1's routes in node 2's registry replica")
    cl.kill9(1)
    drop(c)
    # ...until the expiry drops them.
    cl.wait_status(lambda st: st["members"].get(1, {}).get("sessions") == 0, timeout=12 * LEASE_TTL, via=2,
                   what="node 1's routes dropped")
    left = lambda e: (e.tag == C("presence") and e.get("from") == f"{room}/mobile"  # noqa: E731
                      and e.get("type") == "unavailable")
    # Where the room let the session go at once, this is when the others were told.
    owner.expect_nothing(left, timeout=LEASE_TTL, what="mobile leaving after the drop")
    # What the room says while the session waits to be resumed is kept for it.
    away = [f"while away {i}" for i in range(3)]
    for text in away:
        owner.message(room, text, type_="groupchat")
        owner.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == text,
                   timeout=10, what="the room reflecting it")
    c3, r = resume(cl[3], jid, pw, enabled.get("id"), received)
    clients.add(c3)
    assert r.tag == sm("resumed"), tostring(r)
    got = [c3.recv(lambda e: e.tag == C("message") and (e.findtext(C("body")) or "").startswith("while away"),
                   timeout=10, what="a room message sent while the session was held").findtext(C("body"))
           for _ in away]
    assert got == away, got
    _resumed_occupant_gets_and_speaks(cl, room, owner, c3, "after resume",
                                      "muc_resume_after_expiry_messages_missed")
    owner.expect_nothing(left, timeout=0.5, what="mobile leaving")
    for n in (2, 3):
        cl[n].assert_healthy()


def test_status_210_and_101_across_nodes(shared_cluster, clients):
    """The nick a client asked for travels with its presence to the room's node (status 210
    when resourceprep changed it), and the 101 message of an affiliation change reaches a
    user who is not in the room on another node."""
    cl = shared_cluster
    ids = sorted(cl.nodes)
    room = room_on(ids, ids[0])
    owner = clients.add(online_on(cl[ids[0]], "c210o"))
    join(owner, room, "o")
    r = owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>", to=room)
    assert r.get("type") == "result", tostring(r)
    u = clients.add(online_on(cl[ids[1]], "c210u"))
    u.send_raw(f"<presence to='{room}/\u2168'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>")
    own = u.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/IX" and "110" in codes(e),
                 timeout=15, what="own presence under the nick resourceprep made (U+2168 -> IX)")
    assert "210" in codes(own), tostring(own)
    away = clients.add(online_on(cl[ids[2]], "c210a"))
    r = owner.iq("set", f"<query xmlns='{NS_MUC}#admin'><item affiliation='member' jid='{away.bare}'/></query>",
                 to=room)
    assert r.get("type") == "result", tostring(r)
    m = away.recv(lambda e: e.tag == C("message") and e.get("from") == room and "101" in codes(e),
                  timeout=15, what="101 message")
    it = m.find(q(NS_USER, "x")).find(q(NS_USER, "item"))
    assert it.get("affiliation") == "member" and it.get("jid") == away.bare, tostring(m)
