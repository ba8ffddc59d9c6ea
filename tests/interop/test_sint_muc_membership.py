"""Ports of the server extensions' MultiUserChatAdminGrantMemberIntegrationTest (XEP-0045 9.3)
and MultiUserChatAdminRevokeMemberIntegrationTest (9.4), fixtures of test_sint_muc.py /
test_sint_muc_admin.py:

- an admin grants membership to a bare JID (plain, with a nick, with a reason); a participant
  may not (<forbidden/>); the JID is then on the member list; an occupant granted membership
  is shown to everyone with affiliation 'member';
- an admin revokes it (affiliation 'none', with / without reason); a participant may not; the
  JID is off the member list; everyone sees the occupant's affiliation 'none'; in a
  members-only room the occupant is removed with 321 (item affiliation 'none'), and the
  others are told.
"""

import pytest

from rawxmpp import C, bare, q, tostring
from test_muc import NS_USER, codes, err_of, join, new_room, ok, admin
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy
from test_sint_muc_admin import affiliation_list, grant

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmucm{i}")) for i in range(n)]


def members(c, room):
    return {i.get("jid") for i in affiliation_list(c, room, "member")}


def with_admin(server, clients, name, fields=None):
    owner, adm, target = users(3, server, clients)
    room = new_room(server, name)
    nicks = {owner: "owner-" + rnd(), adm: "admin-" + rnd(), target: "target-" + rnd()}
    create_muc(owner, room, nicks[owner], fields)
    ok(grant(owner, room, bare(adm.jid), "admin"))
    join(adm, room, nicks[adm])
    return owner, adm, target, room, nicks


def join_target(room, nicks, target, adm):
    join(target, room, nicks[target])
    adm.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nicks[target]}", 10, what="join")


def sees_affiliation(c, room, nick, aff, unavailable=False):
    def pred(e):
        if e.tag != C("presence") or e.get("from") != f"{room}/{nick}":
            return False
        if (e.get("type") == "unavailable") != unavailable:
            return False
        x = e.find(q(NS_USER, "x"))
        it = x.find(q(NS_USER, "item")) if x is not None else None
        return it is not None and it.get("affiliation") == aff
    return c.recv(pred, 10, what=f"presence of {nick} with affiliation {aff}")


@pytest.mark.parametrize("extra", ["", "nick", "reason"], ids=["plain", "with-nick", "with-reason"])
def test_grant_membership(server, clients, extra):
    """testGrantMembership / testGrantMembershipWithNick / testGrantMembershipWithReason, and
    testMemberOnMemberList."""
    owner, adm, _, room, _ = with_admin(server, clients, "member-grant")
    target = f"member-user-{rnd()}@example.org"
    n = f" nick='member-{rnd()}'" if extra == "nick" else ""
    r = "<reason>Granted membership as part of a test.</reason>" if extra == "reason" else ""
    ok(admin(adm, room, f"<item affiliation='member' jid='{target}'{n}>{r}</item>"))
    assert target in members(adm, room)
    try_destroy(owner, room)


@pytest.mark.parametrize("aff", ["member", "none"], ids=["grant", "revoke"])
def test_participant_not_allowed(server, clients, aff):
    """testParticipantNotAllowedToGrantMembership / ...ToRevokeMembership (9: <forbidden/>)."""
    owner, part = users(2, server, clients)
    room = new_room(server, "member-notallowed")
    create_muc(owner, room, "owner-" + rnd())
    target = f"member-user-{rnd()}@example.org"
    if aff == "none":
        ok(grant(owner, room, target, "member"))
    join(part, room, "participant-" + rnd())
    assert err_of(grant(part, room, target, aff)) == "forbidden"
    try_destroy(owner, room)


def test_grant_occupants_informed(server, clients):
    """mucTestOccupantsInformed (9.3: updated presence with affiliation 'member' to all)."""
    owner, adm, target, room, nicks = with_admin(server, clients, "member-broadcast")
    join_target(room, nicks, target, adm)
    ok(grant(adm, room, bare(target.jid), "member"))
    for c in (owner, adm, target):
        sees_affiliation(c, room, nicks[target], "member")
    try_destroy(owner, room)


@pytest.mark.parametrize("reason", [None, "Revoked membership as part of a test."], ids=["plain", "with-reason"])
def test_revoke_membership(server, clients, reason):
    """testRevokeMembership / ...WithReason and testMemberNotOnMemberList (9.4)."""
    owner, adm, _, room, _ = with_admin(server, clients, "member-revoke")
    target = f"member-user-{rnd()}@example.org"
    ok(grant(adm, room, target, "member"))
    ok(grant(adm, room, target, "none", reason))
    assert target not in members(adm, room)
    try_destroy(owner, room)


def test_revoke_occupants_informed(server, clients):
    """mucTestOccupantsInformedRevoke (9.4: updated presence with affiliation 'none')."""
    owner, adm, target, room, nicks = with_admin(server, clients, "memberrevoke-broadcast")
    ok(grant(adm, room, bare(target.jid), "member"))
    join_target(room, nicks, target, adm)
    for c in (owner, adm, target):
        c.drain(0.2)
    ok(grant(adm, room, bare(target.jid), "none"))
    for c in (owner, adm, target):
        sees_affiliation(c, room, nicks[target], "none")
    try_destroy(owner, room)


def test_removal_of_user_in_members_only_room(server, clients):
    """mucTestRemovalOfUserInMembersOnlyRoom / mucTestOccupantsInformedKick (9.4: in a
    members-only room the user is removed with 321, affiliation 'none', and the remaining
    occupants are told)."""
    owner, adm, target, room, nicks = with_admin(server, clients, "revoke-removal", {"membersonly": "1"})
    ok(grant(owner, room, bare(target.jid), "member"))
    join_target(room, nicks, target, adm)
    ok(grant(adm, room, bare(target.jid), "none"))
    for c in (target, owner, adm):
        p = sees_affiliation(c, room, nicks[target], "none", unavailable=True)
        assert "321" in codes(p), tostring(p)
    try_destroy(owner, room)
