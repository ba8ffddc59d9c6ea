"""Port of the MUC tests of guusdk/smack-sint-server-extensions: XEP-0421 OccupantIdIntegrationTest
(occupant-id on every presence and message the room sends, client-made ones replaced) and XEP-0410
MucSelfPingIntegrationTest; and Smack's MultiUserChatLowLevelIntegrationTest (XEP-0048 bookmark
autojoin, the server's part of it: the bookmark kept in private storage across a reconnect).

Raw XML through rawxmpp, one test (or parametrised case) per Java test.
"""

import pytest

from rawxmpp import C, new_id, q, stanza_error, tostring
from test_muc import NS_INFO, NS_OID, NS_OWNER, admin, codes, instant, is_pres_from, join, \
    new_room, ok, recv_gc
from test_sint_helpers import rnd

pytestmark = [pytest.mark.timeout(120)]

NS_PING = "urn:xmpp:ping"


def oid(e):
    ids = e.findall(q(NS_OID, "occupant-id"))
    assert len(ids) == 1, "expected exactly one occupant-id: " + tostring(e)
    return ids[0].get("id")


def fake(needle):
    return f"<occupant-id xmlns='{NS_OID}' id='{needle}'/>"


def occ_room(server, clients, moderated=False):
    """The Java createRoom: a third user makes the room (nick test-admin), checks the feature."""
    three = clients.add(server.online("sint421c"))
    room = new_room(server, "smack-inttest-xep0421-")
    instant(three, room, "test-admin")
    if moderated:
        ok(three.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='jabber:x:data' type='submit'>"
                    "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                    "<field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query>", to=room))
    r = ok(three.iq("get", f"<query xmlns='{NS_INFO}'/>", to=room))
    assert NS_OID in {f.get("var") for f in r.iter(q(NS_INFO, "feature"))}
    three.drain(0.1)
    one = clients.add(server.online("sint421a"))
    two = clients.add(server.online("sint421b"))
    return room, one, two, three


@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
def test_testOccupantIdInJoinPresence(server, clients, who):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}JoinPresence, XEP-0421 3.1."""
    room, one, two, _ = occ_room(server, clients)
    join(two, room, "test-recipient")
    _, own, _, _ = join(one, room, "test-joiner")
    p = own if who == "Reflected" else two.recv(is_pres_from(f"{room}/test-joiner"), timeout=10)
    assert oid(p)


@pytest.mark.parametrize("replaced", [False, True], ids=["plain", "Replaced"])
@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
def test_testOccupantIdInMessage(server, clients, who, replaced):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}Message[Replaced], XEP-0421 3.2
    and 4: a client-made occupant-id MUST be replaced."""
    room, one, two, _ = occ_room(server, clients)
    join(one, room, "test-sender")
    join(two, room, "test-recipient")
    needle = "ReplaceMe" + rnd(5)
    body = "test " + rnd()
    one.message(room, body, type_="groupchat", extra=fake(needle) if replaced else "")
    m = recv_gc(one if who == "Reflected" else two, room, body)
    assert oid(m) != needle


@pytest.mark.parametrize("replaced", [False, True], ids=["plain", "Replaced"])
@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
def test_testOccupantIdInAvailabilityStatusChange(server, clients, who, replaced):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}AvailabilityStatusChange[Replaced],
    XEP-0421 4: "MUST be attached to [...] every presence sent by a MUC", replacing a client's."""
    room, one, two, _ = occ_room(server, clients)
    join(two, room, "test-recipient")
    join(one, room, "test-joiner")
    two.drain(0.1)
    needle, status = "ReplaceMe" + rnd(5), "test status " + rnd(5)
    one.presence(to=f"{room}/test-joiner", status=status,
                 extra="<show>away</show>" + (fake(needle) if replaced else ""))
    c = one if who == "Reflected" else two
    p = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/test-joiner"
               and e.findtext(C("status")) == status, timeout=10)
    assert oid(p) != needle


@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
def test_testOccupantIdInNicknameChange(server, clients, who):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}NicknameChange, XEP-0421 4: both
    presences of a nick change carry the occupant's id."""
    room, one, two, _ = occ_room(server, clients)
    join(two, room, "test-recipient")
    _, own, _, _ = join(one, room, "test-joiner")
    new = "test nick " + rnd(5)
    one.presence(to=f"{room}/{new}")
    c = one if who == "Reflected" else two
    un = c.recv(is_pres_from(f"{room}/test-joiner", "unavailable"), timeout=10)
    av = c.recv(is_pres_from(f"{room}/{new}"), timeout=10)
    assert oid(un) == oid(av) == oid(own)


@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
def test_testOccupantIdInLeavePresence(server, clients, who):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}LeavePresence, XEP-0421 4."""
    room, one, two, _ = occ_room(server, clients)
    join(two, room, "test-recipient")
    join(one, room, "test-joiner")
    one.presence(to=f"{room}/test-joiner", type_="unavailable")
    c = one if who == "Reflected" else two
    p = c.recv(is_pres_from(f"{room}/test-joiner", "unavailable"), timeout=10)
    assert oid(p)


CHANGES = {
    "Kick": ("nick", "role='none'", "unavailable", "307"),
    "Ban": ("jid", "affiliation='outcast'", "unavailable", "301"),
    "RoleChange": ("nick", "role='moderator'", None, None),
    "AffiliationChangeToMember": ("jid", "affiliation='member'", None, None),
    "AffiliationChangeToAdmin": ("jid", "affiliation='admin'", None, None),
    "AffiliationChangeToOwner": ("jid", "affiliation='owner'", None, None),
    "RevokeVoice": ("nick", "role='visitor'", None, None),
}


@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_testOccupantIdInModerationPresence(server, clients, change, who):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}{RoleChangeToModerator,
    RevokeVoice, AffiliationChangeToOutcast / Member / Admin / Owner} and the kick, XEP-0421 4:
    "every presence sent by a MUC" (the owner acts). Kick and ban failed before: the unavailable
    presence had no occupant-id."""
    room, one, two, three = occ_room(server, clients)
    join(two, room, "test-recipient")
    _, own, _, _ = join(one, room, "test-joiner")
    two.drain(0.1)
    three.drain(0.1)
    by, attr, type_, code = CHANGES[change]
    target = "nick='test-joiner'" if by == "nick" else f"jid='{one.jid.split('/')[0]}'"
    ok(admin(three, room, f"<item {target} {attr}/>"))
    c = one if who == "Reflected" else two
    p = c.recv(is_pres_from(f"{room}/test-joiner", type_), timeout=10)
    if code:
        assert code in codes(p), tostring(p)
    assert oid(p) == oid(own)


@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
def test_testOccupantIdInAffiliationChangeToNone(server, clients, who):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}AffiliationChangeToNone."""
    room, one, two, three = occ_room(server, clients)
    join(two, room, "test-recipient")
    _, own, _, _ = join(one, room, "test-joiner")
    bare = one.jid.split("/")[0]
    c = one if who == "Reflected" else two
    for aff in ("member", "none"):
        ok(admin(three, room, f"<item jid='{bare}' affiliation='{aff}'/>"))
        p = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/test-joiner"
                   and e.find(q("http://jabber.org/protocol/muc#user", "x")) is not None
                   and e.find(q("http://jabber.org/protocol/muc#user", "x")).find(
                       q("http://jabber.org/protocol/muc#user", "item")).get("affiliation") == aff, timeout=10)
    assert oid(p) == oid(own)


@pytest.mark.parametrize("same_nick", [True, False], ids=["", "AfterNicknameChange"])
@pytest.mark.parametrize("who", ["Reflected", "Broadcast"])
def test_testOccupantIdInJoinPresenceRemainsTheSame(server, clients, who, same_nick):
    """OccupantIdIntegrationTest.testOccupantIdIn{Reflected,Broadcast}JoinPresenceRemainsTheSame[AfterNicknameChange],
    XEP-0421 4.1: the id is stable across visits and nicks (it follows the real bare JID)."""
    room, one, two, _ = occ_room(server, clients)
    join(two, room, "test-recipient")
    first, second = "test-joiner-A", ("test-joiner-A" if same_nick else "test-joiner-B")
    ids = []
    for nick in (first, second):
        _, own, _, _ = join(one, room, nick)
        p = own if who == "Reflected" else two.recv(is_pres_from(f"{room}/{nick}"), timeout=10)
        ids.append(oid(p))
        one.presence(to=f"{room}/{nick}", type_="unavailable")
        one.recv(is_pres_from(f"{room}/{nick}", "unavailable"), timeout=10)
        two.recv(is_pres_from(f"{room}/{nick}", "unavailable"), timeout=10)
    assert ids[0] == ids[1]


def test_testOccupantIdDoesntContainUsernameAndLength(server, clients):
    """OccupantIdIntegrationTest.testOccupantIdDoesntContainUsername and testOccupantIdLength,
    XEP-0421 4.1: pseudonymous (not the localpart), at most 128 characters; and a join presence
    carrying a client-made occupant-id still gets exactly one, the room's."""
    room, one, two, _ = occ_room(server, clients)
    join(two, room, "test-recipient")
    needle = "ReplaceMe" + rnd(5)
    one.presence(to=f"{room}/test-user", extra=f"<x xmlns='http://jabber.org/protocol/muc'/>{fake(needle)}")
    own = one.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/test-user"
                   and "110" in codes(e), timeout=10)
    value = oid(own)
    assert one.jid.split("@")[0] not in value and len(value) <= 128, value
    assert oid(two.recv(is_pres_from(f"{room}/test-user"), timeout=10)) == value != needle


def test_testOccupantIdInDestroyPresence(server, clients):
    """OccupantIdIntegrationTest: the unavailable presence of a destroyed room carries the id too."""
    room, one, _, three = occ_room(server, clients)
    _, own, _, _ = join(one, room, "test-joiner")
    ok(three.iq("set", f"<query xmlns='{NS_OWNER}'><destroy/></query>", to=room))
    p = one.recv(is_pres_from(f"{room}/test-joiner", "unavailable"), timeout=10)
    assert oid(p) == oid(own)


def test_testOccupantIdInPrivateMessage(server, clients):
    """OccupantIdIntegrationTest: a private message through the room carries the sender's id,
    a client-made one replaced."""
    room, one, two, _ = occ_room(server, clients)
    _, own, _, _ = join(one, room, "test-sender")
    join(two, room, "test-recipient")
    needle, body = "ReplaceMe" + rnd(5), "pm " + rnd()
    one.message(f"{room}/test-recipient", body, type_="chat", extra=fake(needle))
    m = two.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == body, timeout=10)
    assert m.get("from") == f"{room}/test-sender"
    assert oid(m) == oid(own) != needle


def test_testOccupantIdInSubjectMessage(server, clients):
    """OccupantIdIntegrationTest: the subject change message carries the changer's id (failed before:
    the subject message had none)."""
    room, _, two, three = occ_room(server, clients)
    join(two, room, "test-recipient")
    subject = "subject " + rnd()
    three.message(room, None, type_="groupchat", extra=f"<subject>{subject}</subject>")
    m = two.recv(lambda e: e.tag == C("message") and e.findtext(C("subject")) == subject, timeout=10)
    assert m.get("from") == f"{room}/test-admin"
    assert oid(m)


# ----------------------------------------------------------------------------- XEP-0410

def test_testPingHandledByService(server, clients):
    """MucSelfPingIntegrationTest.testPingHandledByService, XEP-0410 3.3: the room answers a ping to
    one's own occupant JID itself (the client's session never sees the request)."""
    room, one, _, _ = occ_room(server, clients)
    join(one, room, "nickA")
    iid = new_id("sp")
    one.send_raw(f"<iq type='get' id='{iid}' to='{room}/nickA'><ping xmlns='{NS_PING}'/></iq>")
    r = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, timeout=10)
    assert r.get("type") == "result", tostring(r)
    assert not [e for e in one.drain(0.3) if e.tag == C("iq") and e.get("type") == "get"]


def test_testPingHandledByServiceMultiSessionNick(server, clients):
    """MucSelfPingIntegrationTest.testPingHandledByServiceMultiSessionNick: two sessions of one
    account in the room (nicks A and B); a self-ping to A is answered by the room, neither session
    gets the request."""
    room, _, _, _ = occ_room(server, clients)
    jid, _, pw = server.new_user("sint410")
    one = clients.add(server.login(jid, pw))
    second = clients.add(server.login(jid, pw))
    join(one, room, "nickA")
    join(second, room, "nickB")
    iid = new_id("sp")
    one.send_raw(f"<iq type='get' id='{iid}' to='{room}/nickA'><ping xmlns='{NS_PING}'/></iq>")
    r = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, timeout=10)
    assert r.get("type") == "result", tostring(r)
    for c in (one, second):
        assert not [e for e in c.drain(0.3) if e.tag == C("iq") and e.get("type") == "get"]


def test_testPingForNonOccupant(server, clients):
    """MucSelfPingIntegrationTest.testPingForNonOccupant, XEP-0410 3.3: <not-acceptable/> when not
    joined."""
    room, one, _, _ = occ_room(server, clients)
    r = one.iq("get", f"<ping xmlns='{NS_PING}'/>", to=f"{room}/nickA")
    assert r.get("type") == "error" and r.find(C("error")) is not None
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)


# ----------------------------------------------------------------------------- MultiUserChatLowLevelIntegrationTest

def test_testMucBookmarksAutojoin(server, clients):
    """MultiUserChatLowLevelIntegrationTest.testMucBookmarksAutojoin (XEP-0048 through XEP-0049): a
    room bookmarked with autojoin, the client reconnects, reads its bookmarks and joins the room."""
    jid, _, pw = server.new_user("sintbm")
    c = clients.add(server.login(jid, pw))
    room, nick = new_room(server, "bm"), "Nick-" + rnd(6)
    instant(c, room, nick)
    c.presence(to=f"{room}/{nick}", type_="unavailable")
    c.recv(is_pres_from(f"{room}/{nick}", "unavailable"), timeout=10)
    ok(c.iq("set", "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
                   f"<conference name='Smack Inttest' autojoin='true' jid='{room}'><nick>{nick}</nick></conference>"
                   "</storage></query>"))
    c.close()
    c2 = clients.add(server.login(jid, pw))
    r = ok(c2.iq("get", "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"))
    confs = [x for x in r.iter("{storage:bookmarks}conference") if x.get("autojoin") in ("true", "1")]
    assert [(x.get("jid"), x.findtext("{storage:bookmarks}nick")) for x in confs] == [(room, nick)], tostring(r)
    _, own, _, _ = join(c2, room, nick)
    assert "110" in codes(own)
