"""Ports of the server extensions' MultiUserChatOwnerOwnerListIntegrationTest (XEP-0045 10.5),
MultiUserChatOwnerAdminListIntegrationTest (10.8, at the end) and MultiUserChatOwnerIntegrationTest (10), fixtures of test_sint_muc.py:

- the owner gets the owner list; a user outside the room and a participant of a
  semi-anonymous room get <forbidden/>; each item has 'affiliation' and 'jid'; several
  owners added or removed in one set; a set is a delta; an admin trying to change the owner
  list gets <forbidden/>;
- a room keeps an owner after the creator leaves. The Java test reads the owner list as a
  participant of a default (here semi-anonymous) room, which the owner-list class itself says
  MUST be <forbidden/>; here the owner, out of the room, reads it, and the participant's
  request gets that <forbidden/>.
"""

import pytest

from rawxmpp import C, bare, q, tostring
from test_muc import NS_ADMIN, err_of, join, new_room, ok, admin
from test_sint_helpers import rnd
from test_sint_muc import create_muc, leave, try_destroy
from test_sint_muc_admin import affiliation_list, grant

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmucl{i}")) for i in range(n)]


def owners(c, room):
    return {i.get("jid") for i in affiliation_list(c, room, "owner")}


def owner_list_request(c, room):
    return c.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='owner'/></query>", to=room)


def test_owner_requests_owner_list(server, clients):
    (owner,) = users(1, server, clients)
    room = new_room(server, "owner-requests-ownerlist")
    create_muc(owner, room, "owner-" + rnd())
    ok(owner_list_request(owner, room))
    try_destroy(owner, room)


@pytest.mark.parametrize("joined", [False, True], ids=["user", "participant"])
def test_non_owner_requests_owner_list(server, clients, joined):
    """testUserRequestsOwnerList / testParticipantRequestsOwnerList (semi-anonymous room)."""
    owner, other = users(2, server, clients)
    room = new_room(server, "owner-user-requests-ownerlist")
    create_muc(owner, room, "owner-" + rnd(), {"whois": "moderators"})
    if joined:
        join(other, room, "participant-" + rnd())
    assert err_of(owner_list_request(other, room)) == "forbidden"
    try_destroy(owner, room)


def test_owner_list_item_check(server, clients):
    owner, target = users(2, server, clients)
    room = new_room(server, "owner-owner-list-itemcheck")
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(target.jid), "owner"))
    join(target, room, "target-" + rnd())
    items = ok(owner_list_request(owner, room)).iter(q(NS_ADMIN, "item"))
    items = list(items)
    assert all(i.get("affiliation") and i.get("jid") for i in items), [tostring(i) for i in items]
    assert bare(target.jid) in {i.get("jid") for i in items}
    try_destroy(owner, room)


def test_owner_list_multiple_items_and_revoke(server, clients):
    """testOwnerListMultipleItems / testAdminOwnerListMultipleItemsRevoke."""
    owner, two, three = users(3, server, clients)
    room = new_room(server, "owner-ownerlist-multiple")
    create_muc(owner, room, "owner-" + rnd())
    ok(admin(owner, room, f"<item affiliation='owner' jid='{bare(two.jid)}'/>"
                          f"<item affiliation='owner' jid='{bare(three.jid)}'/>"))
    assert {bare(two.jid), bare(three.jid)} <= owners(owner, room)
    ok(admin(owner, room, f"<item affiliation='none' jid='{bare(two.jid)}'/>"
                          f"<item affiliation='none' jid='{bare(three.jid)}'/>"))
    assert not ({bare(two.jid), bare(three.jid)} & owners(owner, room))
    try_destroy(owner, room)


def test_owner_owner_list_is_delta(server, clients):
    owner, two, three = users(3, server, clients)
    room = new_room(server, "owner-ownerlist-delta")
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(two.jid), "owner"))
    ok(admin(owner, room, f"<item affiliation='none' jid='{bare(two.jid)}'/>"
                          f"<item affiliation='owner' jid='{bare(three.jid)}'/>"))
    o = owners(owner, room)
    assert bare(owner.jid) in o and bare(three.jid) in o and bare(two.jid) not in o, o
    try_destroy(owner, room)


def test_owner_list_reject_admin(server, clients):
    """testOwnerListRejectAdmin (10.5: only owners may modify the owner list; a non-owner gets
    <forbidden/>)."""
    owner, adm, three = users(3, server, clients)
    room = new_room(server, "owner-ownerlist-reject-admin")
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(adm.jid), "admin"))
    join(adm, room, "admin-" + rnd())
    assert err_of(grant(adm, room, bare(three.jid), "owner")) == "forbidden"
    try_destroy(owner, room)


def test_room_has_owner_after_original_owner_leaves(server, clients):
    """MultiUserChatOwnerIntegrationTest.testRoomHasOwnerAfterOriginalOwnerLeaves (10: every
    room MUST have at least one owner; the owner does not lose ownership on exiting)."""
    owner, part = users(2, server, clients)
    room = new_room(server, "owner-after-leave")
    nick = "owner-" + rnd()
    create_muc(owner, room, nick)
    join(part, room, "participant-" + rnd())
    leave(owner, room, nick)
    part.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nick}" and e.get("type") == "unavailable",
              10, what="owner left")
    assert owners(owner, room) == {bare(owner.jid)}
    assert err_of(owner_list_request(part, room)) == "forbidden"
    join(owner, room, nick)
    try_destroy(owner, room)


# ----------------------------------------------------------------- 10.8 the admin list
# MultiUserChatOwnerAdminListIntegrationTest: the same cases for affiliation 'admin'.

def admins(c, room):
    return {i.get("jid") for i in affiliation_list(c, room, "admin")}


def test_owner_requests_admin_list_and_item_check(server, clients):
    owner, target = users(2, server, clients)
    room = new_room(server, "owner-requests-adminlist")
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(target.jid), "admin"))
    join(target, room, "target-" + rnd())
    items = list(ok(owner.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='admin'/></query>", to=room))
                 .iter(q(NS_ADMIN, "item")))
    assert all(i.get("affiliation") and i.get("jid") for i in items), [tostring(i) for i in items]
    assert bare(target.jid) in {i.get("jid") for i in items}
    try_destroy(owner, room)


@pytest.mark.parametrize("joined", [False, True], ids=["user", "participant"])
def test_non_owner_requests_admin_list(server, clients, joined):
    """testUserRequestsAdminList / testParticipantRequestsAdminList (semi-anonymous room:
    <forbidden/>)."""
    owner, other = users(2, server, clients)
    room = new_room(server, "owner-user-requests-adminlist")
    create_muc(owner, room, "owner-" + rnd(), {"whois": "moderators"})
    if joined:
        join(other, room, "participant-" + rnd())
    r = other.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='admin'/></query>", to=room)
    assert err_of(r) == "forbidden"
    try_destroy(owner, room)


def test_admin_list_multiple_items_revoke_and_delta(server, clients):
    """testAdminListMultipleItems / testAdminAdminListMultipleItemsRevoke / testOwnerAdminListIsDelta."""
    owner, two, three = users(3, server, clients)
    room = new_room(server, "owner-adminlist-multiple")
    create_muc(owner, room, "owner-" + rnd())
    b2, b3 = bare(two.jid), bare(three.jid)
    ok(admin(owner, room, f"<item affiliation='admin' jid='{b2}'/><item affiliation='admin' jid='{b3}'/>"))
    assert {b2, b3} <= admins(owner, room)
    ok(admin(owner, room, f"<item affiliation='none' jid='{b2}'/><item affiliation='none' jid='{b3}'/>"))
    assert not ({b2, b3} & admins(owner, room))
    ok(grant(owner, room, b2, "admin"))
    ok(admin(owner, room, f"<item affiliation='none' jid='{b2}'/><item affiliation='admin' jid='{b3}'/>"))
    a = admins(owner, room)
    assert b3 in a and b2 not in a, a
    try_destroy(owner, room)


def test_admin_list_reject_admin(server, clients):
    """Beyond the Java (the rule of testOwnerListRejectAdmin applied to 10.8): only owners
    change the admin list; an admin's change gets <forbidden/>."""
    owner, adm, three = users(3, server, clients)
    room = new_room(server, "owner-adminlist-reject-admin")
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(adm.jid), "admin"))
    join(adm, room, "admin-" + rnd())
    assert err_of(grant(adm, room, bare(three.jid), "admin")) == "forbidden"
    try_destroy(owner, room)
