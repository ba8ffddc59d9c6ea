"""Port of the server extensions' MultiUserChatModeratorKickIntegrationTest (XEP-0045 8.2 and
8), fixtures of test_sint_muc.py: the kicked occupant gets unavailable + 307; the moderator
gets a result; the remaining occupants get unavailable + 307 from the kicked occupant's room
JID; a moderator who is a member cannot kick an admin or an owner, nor can a moderator who is
an admin kick an owner (<not-allowed/>); a participant cannot kick (<forbidden/>). As Smack's
grantMembership / grantAdmin do here, the JID in those items is the full JID of the user."""

import pytest

from rawxmpp import C, q, tostring
from test_muc import codes, err_of, join, new_room, ok, admin
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy

pytestmark = [pytest.mark.timeout(120)]

REASON = "<reason>Integration test asserting occupant kick from MUC room.</reason>"


def users(n, server, clients):
    return [clients.add(server.online(f"sintmuck{i}")) for i in range(n)]


def room_of(server, clients, n, name):
    cs = users(n, server, clients)
    room = new_room(server, name)
    nicks = [f"n{i}-{rnd()}" for i in range(n)]
    create_muc(cs[0], room, nicks[0])
    for c, nick in zip(cs[1:], nicks[1:]):
        join(c, room, nick)
    cs[0].drain(0.3)
    return cs, room, nicks


def kicked(e, room, nick):
    return (e.tag == C("presence") and e.get("from") == f"{room}/{nick}" and e.get("type") == "unavailable"
            and "307" in codes(e))


def kick(c, room, nick):
    return admin(c, room, f"<item nick='{nick}' role='none'>{REASON}</item>")


def test_kicked_occupant_informed_and_moderator_gets_success(server, clients):
    """mucTestModeratorKickedOccupantInformed / mucTestModeratorInformedOfKickSuccess."""
    (one, two), room, (n1, n2) = room_of(server, clients, 2, "kick")
    ok(kick(one, room, n2))
    two.recv(lambda e: kicked(e, room, n2), 10, what="307 to the kicked occupant")
    try_destroy(one, room)


def test_remaining_occupants_informed_of_kick(server, clients):
    """mucTestRemainingOccupantsInformedOfKick: from the kicked occupant's room JID, with 307."""
    (one, two, three), room, (n1, n2, n3) = room_of(server, clients, 3, "kick-remaining")
    three.drain(0.3)
    ok(kick(one, room, n2))
    three.recv(lambda e: kicked(e, room, n2), 10, what="307 to the remaining occupant")
    try_destroy(one, room)


@pytest.mark.parametrize("case", ["member-kicks-admin", "member-kicks-owner", "admin-kicks-owner"])
def test_moderator_cannot_kick_higher_affiliation(server, clients, case):
    """mucTestModeratorMemberCannotKickAdmin / ...MemberCannotKickOwner /
    ...AdminCannotKickOwner (8.2: <not-allowed/>)."""
    (one, two, three), room, (n1, n2, n3) = room_of(server, clients, 3, "kick-higher")
    ok(admin(one, room, f"<item affiliation='{'admin' if case.startswith('admin') else 'member'}' jid='{two.jid}'/>"))
    ok(admin(one, room, f"<item nick='{n2}' role='moderator'/>"))
    if case == "member-kicks-admin":
        ok(admin(one, room, f"<item affiliation='admin' jid='{three.jid}'/>"))
        victim = n3
    else:
        victim = n1
    assert err_of(kick(two, room, victim)) == "not-allowed"
    try_destroy(one, room)


def test_participant_not_allowed_to_kick(server, clients):
    """mucTestParticipantNotAllowedToKick (8: <forbidden/>)."""
    (one, two, three), room, (n1, n2, n3) = room_of(server, clients, 3, "participant-kick")
    assert err_of(kick(two, room, n3)) == "forbidden"
    try_destroy(one, room)
