"""Ports of two more XEP-0045 classes of the server extensions, fixtures of test_sint_muc.py:

- MultiUserChatInvitationIntegrationTest (7.8.2): a mediated invitation sent to the room is
  delivered to the invitee; its <invite/> carries a 'from' that is the inviter's bare JID,
  full JID or occupant JID.
- MultiUserChatOwnerRevokeOwnerIntegrationTest (10.4): an owner revokes another user's owner
  status (affiliation 'none'), with and without the optional <reason/>, while that user is
  in the room or not. (The class is 'not possible' if granting then revoking owner status
  answers <not-authorized/>; Starling allows it.)
"""

import pytest

from rawxmpp import C, bare, q, tostring
from test_muc import NS_USER, join, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy
from test_sint_muc_admin import affiliation_list, grant

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmuci{i}")) for i in range(n)]


def invitation(c, room):
    return c.recv(lambda e: e.tag == C("message") and e.get("from") == room
                  and e.find(q(NS_USER, "x")) is not None and e.find(q(NS_USER, "x")).find(q(NS_USER, "invite")) is not None,
                  10, what="the mediated invitation")


@pytest.mark.parametrize("check_from", [False, True], ids=["delivered", "from"])
def test_mediated_invite(server, clients, check_from):
    """mucTestMediatedInviteGetDelivered / mucTestMediatedInviteFrom."""
    one, two = users(2, server, clients)
    room = new_room(server, "mediated-invite")
    nick = "one-" + rnd()
    create_muc(one, room, nick)
    one.send_raw(f"<message to='{room}'><x xmlns='{NS_USER}'><invite to='{bare(two.jid)}'/></x></message>")
    m = invitation(two, room)
    if check_from:
        inviter = m.find(q(NS_USER, "x")).find(q(NS_USER, "invite")).get("from")
        assert inviter in (one.jid, bare(one.jid), f"{room}/{nick}"), tostring(m)
    try_destroy(one, room)


@pytest.mark.parametrize("reason", [None, "Revoking Owner Status as part of an integration test."],
                         ids=["no-reason", "reason"])
@pytest.mark.parametrize("in_room", [False, True], ids=["not-in-room", "in-room"])
def test_revoke_owner(server, clients, in_room, reason):
    """testRevokeOwner / ...WhileInRoom / ...OptionalReason / ...OptionalReasonWhileInRoom."""
    owner, target = users(2, server, clients)
    room = new_room(server, "owner-revoke")
    create_muc(owner, room, "owner-" + rnd())
    if in_room:
        tnick = "target-" + rnd()
        join(target, room, tnick)
        owner.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{tnick}", 10, what="target's join")
    ok(grant(owner, room, bare(target.jid), "owner"))
    ok(grant(owner, room, bare(target.jid), "none", reason))
    assert bare(target.jid) not in [i.get("jid") for i in affiliation_list(owner, room, "owner")]
    try_destroy(owner, room)


def _owner_and_target(server, clients, name, in_room):
    owner, target = users(2, server, clients)
    room = new_room(server, name)
    create_muc(owner, room, "owner-" + rnd())
    if in_room:
        tnick = "target-" + rnd()
        join(target, room, tnick)
        owner.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{tnick}", 10, what="target's join")
    return owner, target, room


@pytest.mark.parametrize("reason", [None, "Granting Admin Status as part of an integration test."],
                         ids=["no-reason", "reason"])
@pytest.mark.parametrize("in_room", [False, True], ids=["not-in-room", "in-room"])
def test_grant_admin(server, clients, in_room, reason):
    """MultiUserChatOwnerGrantAdminIntegrationTest (10.6): testGrantAdmin / ...WhileInRoom /
    ...OptionalReason / ...OptionalReasonWhileInRoom; the JID is then on the admin list."""
    owner, target, room = _owner_and_target(server, clients, "owner-admin-grant", in_room)
    ok(grant(owner, room, bare(target.jid), "admin", reason))
    assert bare(target.jid) in [i.get("jid") for i in affiliation_list(owner, room, "admin")]
    try_destroy(owner, room)


@pytest.mark.parametrize("reason", [None, "Revoking Admin Status as part of an integration test."],
                         ids=["no-reason", "reason"])
@pytest.mark.parametrize("in_room", [False, True], ids=["not-in-room", "in-room"])
def test_revoke_admin(server, clients, in_room, reason):
    """MultiUserChatOwnerRevokeAdminIntegrationTest (10.7): testRevokeAdmin / ...WhileInRoom /
    ...OptionalReason / ...OptionalReasonWhileInRoom (that last one, as in the Java, changes the
    affiliation to 'owner', which also ends admin status)."""
    owner, target, room = _owner_and_target(server, clients, "owner-admin-revoke", in_room)
    ok(grant(owner, room, bare(target.jid), "admin"))
    new = "owner" if (in_room and reason) else "none"
    ok(grant(owner, room, bare(target.jid), new, reason))
    assert bare(target.jid) not in [i.get("jid") for i in affiliation_list(owner, room, "admin")]
    try_destroy(owner, room)


@pytest.mark.parametrize("reason", [None, "Granting Owner Status as part of an integration test."],
                         ids=["no-reason", "reason"])
@pytest.mark.parametrize("in_room", [False, True], ids=["not-in-room", "in-room"])
def test_grant_owner(server, clients, in_room, reason):
    """MultiUserChatOwnerGrantOwnerIntegrationTest (10.3): testGrantOwner / ...WhileInRoom /
    ...OptionalReason / ...OptionalReasonWhileInRoom; the JID is then on the owner list."""
    owner, target, room = _owner_and_target(server, clients, "owner-owner-grant", in_room)
    ok(grant(owner, room, bare(target.jid), "owner", reason))
    assert bare(target.jid) in [i.get("jid") for i in affiliation_list(owner, room, "owner")]
    try_destroy(owner, room)
