"""Ports of the server extensions' MultiUserChatAdminGrantModeratorIntegrationTest (XEP-0045
9.6) and MultiUserChatAdminRevokeModeratorIntegrationTest (9.7, below), fixtures of test_sint_muc.py / test_sint_muc_admin.py: an admin grants moderator
status by nick (with and without <reason/>); a participant may not (<forbidden/>); the target
is then on the moderator list (role='moderator' items carry its nick); every occupant gets
the target's updated presence with role 'moderator'."""

import pytest

from rawxmpp import C, bare, q, tostring
from test_muc import NS_ADMIN, NS_USER, admin, err_of, join, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy
from test_sint_muc_admin import grant

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmucr{i}")) for i in range(n)]


def setup(server, clients, name, make_admin=True):
    owner, second, target = users(3, server, clients)
    room = new_room(server, name)
    nicks = {owner: "owner-" + rnd(), second: ("admin-" if make_admin else "participant-") + rnd(),
             target: "target-" + rnd()}
    create_muc(owner, room, nicks[owner])
    if make_admin:
        ok(grant(owner, room, bare(second.jid), "admin"))
    join(second, room, nicks[second])
    join(target, room, nicks[target])
    second.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nicks[target]}", 10, what="join")
    for c in (owner, second, target):
        c.drain(0.2)
    return owner, second, target, room, nicks


@pytest.mark.parametrize("reason", [None, "Granting Moderator Status as part of an integration test."],
                         ids=["no-reason", "reason"])
def test_grant_moderator(server, clients, reason):
    """testGrantModerator / testGrantModeratorOptionalReason."""
    owner, adm, target, room, nicks = setup(server, clients, "moderator-grant")
    r = f"<reason>{reason}</reason>" if reason else ""
    ok(admin(adm, room, f"<item nick='{nicks[target]}' role='moderator'>{r}</item>"))
    try_destroy(owner, room)


def test_participant_not_allowed_to_grant_moderator_status(server, clients):
    """testParticipantNotAllowedToGrantModeratorStatus (9: <forbidden/>)."""
    owner, part, target, room, nicks = setup(server, clients, "moderator-notallowed", make_admin=False)
    assert err_of(admin(part, room, f"<item nick='{nicks[target]}' role='moderator'/>")) == "forbidden"
    try_destroy(owner, room)


def test_moderator_on_moderator_list(server, clients):
    """testModeratorOnModeratorList (9.6: the service MUST add the user to the moderator list)."""
    owner, adm, target, room, nicks = setup(server, clients, "moderator-list")
    ok(admin(adm, room, f"<item nick='{nicks[target]}' role='moderator'/>"))
    r = ok(adm.iq("get", f"<query xmlns='{NS_ADMIN}'><item role='moderator'/></query>", to=room))
    assert nicks[target] in [i.get("nick") for i in r.iter(q(NS_ADMIN, "item"))], tostring(r)
    try_destroy(owner, room)


def test_occupants_informed(server, clients):
    """mucTestOccupantsInformed (9.6: updated presence from the individual to all occupants,
    item role='moderator')."""
    owner, adm, target, room, nicks = setup(server, clients, "moderator-broadcast")
    ok(admin(adm, room, f"<item nick='{nicks[target]}' role='moderator'/>"))
    for c in (owner, adm, target):
        p = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nicks[target]}"
                   and e.find(q(NS_USER, "x")) is not None
                   and e.find(q(NS_USER, "x")).find(q(NS_USER, "item")).get("role") == "moderator", 10,
                   what="moderator presence")
        assert p.get("type") is None, tostring(p)
    try_destroy(owner, room)


# ----------------------------------------------------------------- 9.7 revoking moderator status
# MultiUserChatAdminRevokeModeratorIntegrationTest: the target is first made moderator (by the
# admin, or by the owner when the actor is a mere participant).

def moderator_first(actor_owner, room, nick):
    ok(admin(actor_owner, room, f"<item nick='{nick}' role='moderator'/>"))


@pytest.mark.parametrize("reason", [None, "Revoking moderator status as part of an integration test."],
                         ids=["no-reason", "reason"])
def test_revoke_moderator(server, clients, reason):
    """testRevokeModerator / testRevokeModeratorWithReason (9.7: role 'participant')."""
    owner, adm, target, room, nicks = setup(server, clients, "moderator-revoke")
    moderator_first(adm, room, nicks[target])
    r = f"<reason>{reason}</reason>" if reason else ""
    ok(admin(adm, room, f"<item nick='{nicks[target]}' role='participant'>{r}</item>"))
    try_destroy(owner, room)


def test_participant_not_allowed_to_revoke_moderator(server, clients):
    """testParticipantNotAllowedToRevokeModerator (9: <forbidden/>)."""
    owner, part, target, room, nicks = setup(server, clients, "moderator-revoke-notallowed", make_admin=False)
    moderator_first(owner, room, nicks[target])
    assert err_of(admin(part, room, f"<item nick='{nicks[target]}' role='participant'/>")) == "forbidden"
    try_destroy(owner, room)


def test_moderator_not_on_moderator_list(server, clients):
    """testModeratorNotOnModeratorList (9.7: the service MUST remove the user from the
    moderator list)."""
    owner, adm, target, room, nicks = setup(server, clients, "moderator-not-on-list")
    moderator_first(adm, room, nicks[target])
    ok(admin(adm, room, f"<item nick='{nicks[target]}' role='participant'/>"))
    r = ok(adm.iq("get", f"<query xmlns='{NS_ADMIN}'><item role='moderator'/></query>", to=room))
    assert nicks[target] not in [i.get("nick") for i in r.iter(q(NS_ADMIN, "item"))], tostring(r)
    try_destroy(owner, room)


def test_revoke_occupants_informed(server, clients):
    """mucTestOccupantsInformed (9.7: updated presence to all occupants with role
    'participant')."""
    owner, adm, target, room, nicks = setup(server, clients, "moderator-revoke-broadcast")
    moderator_first(adm, room, nicks[target])
    for c in (owner, adm, target):
        c.drain(0.3)
    ok(admin(adm, room, f"<item nick='{nicks[target]}' role='participant'/>"))
    for c in (owner, adm, target):
        c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nicks[target]}"
               and e.find(q(NS_USER, "x")) is not None
               and e.find(q(NS_USER, "x")).find(q(NS_USER, "item")).get("role") == "participant", 10,
               what="participant presence")
    try_destroy(owner, room)


@pytest.mark.parametrize("victim", ["owner", "admin"])
def test_admin_cannot_revoke_moderator_of_owner_or_admin(server, clients, victim):
    """9.7: an admin MUST NOT be allowed to revoke moderator status from a user whose
    affiliation is 'owner' or 'admin' (<not-allowed/>)."""
    owner, adm, target, room, nicks = setup(server, clients, "moderator-revoke-higher")
    who = owner
    if victim == "admin":
        ok(grant(owner, room, bare(target.jid), "admin"))
        who = target
    assert err_of(admin(adm, room, f"<item nick='{nicks[who]}' role='participant'/>")) == "not-allowed"
    try_destroy(owner, room)


# ----------------------------------------------------------------- 9.8 the moderator list
# MultiUserChatAdminModeratorListIntegrationTest (as in the Java, the multi-item changes are
# made by the owner: an owner can do anything an admin can, 5.2.1).

def moderator_items(c, room):
    r = ok(c.iq("get", f"<query xmlns='{NS_ADMIN}'><item role='moderator'/></query>", to=room))
    return list(r.iter(q(NS_ADMIN, "item")))


def test_admin_requests_moderator_list_and_item_check(server, clients):
    """mucTestAdminRequestsModeratorList / mucTestAdminModeratorListItemCheck (9.8: each item
    MUST include 'nick' and 'role')."""
    owner, adm, target, room, nicks = setup(server, clients, "moderatorlist")
    ok(admin(adm, room, f"<item nick='{nicks[target]}' role='moderator'/>"))
    items = moderator_items(adm, room)
    assert all(i.get("nick") and i.get("role") for i in items), [tostring(i) for i in items]
    assert nicks[target] in {i.get("nick") for i in items}
    try_destroy(owner, room)


def test_moderator_list_multiple_items_revoke_and_delta(server, clients):
    """mucTestAdminModeratorListMultipleItems / ...MultipleItemsRevoke / ...IsDelta."""
    owner, one, two, room, nicks = setup(server, clients, "moderatorlist-multi", make_admin=False)
    n1, n2 = nicks[one], nicks[two]
    ok(admin(owner, room, f"<item nick='{n1}' role='moderator'/><item nick='{n2}' role='moderator'/>"))
    assert {n1, n2} <= {i.get("nick") for i in moderator_items(owner, room)}
    ok(admin(owner, room, f"<item nick='{n1}' role='participant'/><item nick='{n2}' role='participant'/>"))
    assert not ({n1, n2} & {i.get("nick") for i in moderator_items(owner, room)})
    ok(admin(owner, room, f"<item nick='{n1}' role='moderator'/>"))
    ok(admin(owner, room, f"<item nick='{n2}' role='moderator'/>"))
    ok(admin(owner, room, f"<item nick='{n1}' role='participant'/>"))
    mods = {i.get("nick") for i in moderator_items(owner, room)}
    assert n2 in mods and n1 not in mods and nicks[owner] in mods, mods
    try_destroy(owner, room)
