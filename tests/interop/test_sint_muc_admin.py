"""Ports of the server extensions' XEP-0045 admin / owner / moderator classes (package
org.jivesoftware.smackx.muc of smack-sint-server-extensions), raw XML through rawxmpp, with the
fixtures of test_sint_muc.py (createMuc = instant room; tryDestroy must succeed):

- MultiUserChatAdminBanIntegrationTest (9.1): ban with / without the optional <reason/>, of an
  occupant and of a non-occupant; a participant may not ban (<forbidden/>); the banned bare
  JID is on the ban list; a ban removes the outcast's registered nickname; the banned occupant
  gets unavailable + 301, the others are told (301); an admin or owner banning himself gets
  <conflict/>, an admin banning an owner <not-allowed/>.

Smack's calls as IQs: grantAdmin = muc#admin item affiliation='admin' jid=bare; banUser =
affiliation='outcast' jid=bare (+ <reason/>); getOutcasts / getMembers = muc#admin get of the
'outcast' / 'member' list.
"""

import pytest

from rawxmpp import C, bare, q, tostring
from test_muc import NS_ADMIN, NS_DATA, NS_USER, admin, codes, err_of, join, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmuca{i}")) for i in range(n)]


def grant(c, room, jid, affiliation, reason=None):
    r = f"<reason>{reason}</reason>" if reason else ""
    return admin(c, room, f"<item affiliation='{affiliation}' jid='{jid}'>{r}</item>")


def affiliation_list(c, room, affiliation):
    r = ok(c.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='{affiliation}'/></query>", to=room))
    return r.find(q(NS_ADMIN, "query")).findall(q(NS_ADMIN, "item"))


def room_with_admin(server, clients, name, target_joins=False):
    """owner (conOne) creates the room and makes conTwo admin; conTwo joins; conThree (the
    target) joins too when asked, and the admin has seen it."""
    owner, adm, target = users(3, server, clients)
    room = new_room(server, name)
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(adm.jid), "admin"))
    join(adm, room, "admin-" + rnd())
    tnick = "target-" + rnd()
    if target_joins:
        join(target, room, tnick)
        adm.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{tnick}", 10,
                 what="the target's join")
    owner.drain(0.2)
    adm.drain(0.1)
    return owner, adm, target, room, tnick


@pytest.mark.parametrize("reason", [None, "Banned as part of a test."], ids=["without-reason", "with-reason"])
@pytest.mark.parametrize("occupant", [False, True], ids=["non-occupant", "occupant"])
def test_ban(server, clients, occupant, reason):
    """testBan{NonOccupant,Occupant}{Without,With}OptionalReason (9.1: the <reason/> element
    is OPTIONAL) and testBan{NonOccupant,Occupant}JidOnBanList (9.1: the service MUST add that
    bare JID to the ban list)."""
    owner, adm, target, room, _ = room_with_admin(server, clients, "ban", target_joins=occupant)
    who = bare(target.jid) if occupant else f"banned-user-{rnd()}@example.org"
    ok(grant(adm, room, who, "outcast", reason))
    assert who in [i.get("jid") for i in affiliation_list(adm, room, "outcast")]
    try_destroy(owner, room)


def test_participant_not_allowed_to_ban(server, clients):
    """testParticipantNotAllowedToBan (9: MUST be denied if not an admin: <forbidden/>)."""
    owner, part = users(2, server, clients)
    room = new_room(server, "ban-notallowed")
    create_muc(owner, room, "owner-" + rnd())
    join(part, room, "admin-" + rnd())
    r = grant(part, room, f"banned-user-{rnd()}@example.org", "outcast", "Banned as part of a test.")
    assert err_of(r) == "forbidden", tostring(r)
    try_destroy(owner, room)


def test_ban_occupant_removes_registered_nickname(server, clients):
    """testBanOccupantRemovesRegisteredNickname (9.1: the service MUST remove the outcast's
    nickname from the list of registered nicknames): the target registers its nick with the
    room (the form's required fields and muc#register_roomnick), joins, is banned; no member
    of the room has that nick any more."""
    owner, adm, target = users(3, server, clients)
    room = new_room(server, "ban-regnick")
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(adm.jid), "admin"))
    tnick = "target-" + rnd()
    r = ok(target.iq("get", "<query xmlns='jabber:iq:register'/>", to=room))
    x = r.find(q("jabber:iq:register", "query")).find(q(NS_DATA, "x"))
    fields = {f.get("var"): f for f in x.findall(q(NS_DATA, "field"))}
    assert "muc#register_roomnick" in fields, tostring(r)
    values = {v: "test" for v, f in fields.items() if f.find(q(NS_DATA, "required")) is not None}
    values["muc#register_roomnick"] = tnick
    values["FORM_TYPE"] = "http://jabber.org/protocol/muc#register"
    sub = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in values.items())
    ok(target.iq("set", f"<query xmlns='jabber:iq:register'><x xmlns='{NS_DATA}' type='submit'>{sub}</x></query>",
                 to=room))
    assert tnick in [i.get("nick") for i in affiliation_list(owner, room, "member")]
    join(adm, room, "admin-" + rnd())
    join(target, room, tnick)
    adm.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{tnick}", 10, what="target's join")
    ok(grant(adm, room, bare(target.jid), "outcast", "Banned as part of a test."))
    assert tnick not in [i.get("nick") for i in affiliation_list(adm, room, "member")]
    try_destroy(owner, room)


def _ban_presence(e, room, tnick):
    return (e.tag == C("presence") and e.get("from") == f"{room}/{tnick}" and e.get("type") == "unavailable"
            and "301" in codes(e))


def test_banned_occupant_receives_removal(server, clients):
    """testBannedOccupantReceivesRemoval (9.1: unavailable presence with status 301 to each
    banned occupant)."""
    owner, adm, target, room, tnick = room_with_admin(server, clients, "ban-notify", target_joins=True)
    ok(grant(adm, room, bare(target.jid), "outcast", "Banned as part of a test."))
    p = target.recv(lambda e: _ban_presence(e, room, tnick), 10, what="the 301 presence")
    it = p.find(q(NS_USER, "x")).find(q(NS_USER, "item"))
    assert it is not None and it.get("affiliation") == "outcast" and it.get("role") == "none", tostring(p)
    try_destroy(owner, room)


def test_remaining_occupants_informed_of_ban(server, clients):
    """mucTestRemainingOccupantsInformedOfBan (9.1: unavailable presence from the banned user,
    with 301, to all remaining occupants): owner and admin both see it."""
    owner, adm, target, room, tnick = room_with_admin(server, clients, "ban-broadcast", target_joins=True)
    ok(grant(adm, room, bare(target.jid), "outcast", "Banned as part of a test."))
    for c in (owner, adm):
        c.recv(lambda e: _ban_presence(e, room, tnick), 10, what=f"301 presence at {c.jid}")
    try_destroy(owner, room)


def test_admin_cannot_ban_self(server, clients):
    """mucTestAdminCannotBanSelf (9.1: an admin banning himself gets <conflict/>)."""
    owner, adm, _, room, _ = room_with_admin(server, clients, "ban-self")
    assert err_of(grant(adm, room, bare(adm.jid), "outcast", "Banned as part of a test.")) == "conflict"
    try_destroy(owner, room)


def test_admin_cannot_ban_owner(server, clients):
    """mucTestAdminCannotBanOwner (9.1: an admin banning an owner gets <not-allowed/>)."""
    owner, adm, _, room, _ = room_with_admin(server, clients, "ban-owner")
    assert err_of(grant(adm, room, bare(owner.jid), "outcast", "Banned as part of a test.")) == "not-allowed"
    try_destroy(owner, room)


def test_owner_cannot_ban_self(server, clients):
    """mucTestOwnerCannotBanSelf (9.1: an owner banning himself gets <conflict/>)."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "owner-ban-self")
    create_muc(owner, room, "owner-" + rnd())
    assert err_of(grant(owner, room, bare(owner.jid), "outcast", "Banned as part of a test.")) == "conflict"
    try_destroy(owner, room)
