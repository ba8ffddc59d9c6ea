"""Ports of more XEP-0045 classes of the server extensions (org.jivesoftware.smackx.muc),
same fixtures as test_sint_muc.py / test_sint_muc_admin.py:

- MultiUserChatAdminMemberListIntegrationTest (9.5): an admin gets the member list; each
  item has 'affiliation' and 'jid'; several items in one set; revoking with
  affiliation='none'; a set is a delta (what it does not name stays).
- MultiUserChatOwnerCreateRoomIntegrationTest (10.1.1): a new room is locked (another user's
  join -> <item-not-found/>); the creator's presence has 201, 110 and affiliation 'owner'; the
  configuration form request is answered with a muc#owner query holding a form with real
  options (or none); submitting the form unlocks the room.
- MultiUserChatOwnerDestroyRoomIntegrationTest (10.9): persistent and temporary rooms can be
  destroyed, with an alternate venue or a reason; every occupant gets exactly one
  unavailable presence carrying <destroy/>.
"""

import pytest

from rawxmpp import C, bare, q, tostring
from test_muc import NS_ADMIN, NS_DATA, NS_MUC, NS_OWNER, NS_USER, codes, configure, join, join_error, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy
from test_sint_muc_admin import affiliation_list, grant

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmuco{i}")) for i in range(n)]


def owner_and_admin(server, clients, name):
    owner, adm = users(2, server, clients)
    room = new_room(server, name)
    create_muc(owner, room, "owner-" + rnd())
    ok(grant(owner, room, bare(adm.jid), "admin"))
    join(adm, room, "admin-" + rnd())
    return owner, adm, room


def members(c, room):
    return {i.get("jid") for i in affiliation_list(c, room, "member") if i.get("affiliation") == "member"}


# ----------------------------------------------------------------- 9.5 member list

def test_admin_requests_member_list(server, clients):
    """mucTestAdminRequestsMemberList."""
    owner, adm, room = owner_and_admin(server, clients, "memberlist")
    affiliation_list(adm, room, "member")
    try_destroy(owner, room)


def test_admin_member_list_item_check(server, clients):
    """mucTestAdminMemberListItemCheck: each item MUST include 'affiliation' and 'jid'."""
    owner, adm, room = owner_and_admin(server, clients, "memberlist-attr")
    ok(grant(owner, room, "test@example.org", "member"))
    items = affiliation_list(adm, room, "member")
    assert items and all(i.get("jid") and i.get("affiliation") for i in items), [tostring(i) for i in items]
    assert "test@example.org" in {i.get("jid") for i in items}
    try_destroy(owner, room)


def test_admin_member_list_multiple_items(server, clients):
    """mucTestAdminMemberListMultipleItems: two items in one set; both are members."""
    owner, adm, room = owner_and_admin(server, clients, "memberlist-multi")
    ok(adm.iq("set", f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='test1@example.org'/>"
                     "<item affiliation='member' jid='test2@example.com'/></query>", to=room))
    assert {"test1@example.org", "test2@example.com"} <= members(adm, room)
    try_destroy(owner, room)


def test_admin_member_list_multiple_items_revoke(server, clients):
    """mucTestAdminMemberListMultipleItemsRevoke: affiliation='none' for both removes them."""
    owner, adm, room = owner_and_admin(server, clients, "memberlist-revoke")
    ok(adm.iq("set", f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='test1@example.org'/>"
                     "<item affiliation='member' jid='test2@example.com'/></query>", to=room))
    ok(adm.iq("set", f"<query xmlns='{NS_ADMIN}'><item affiliation='none' jid='test1@example.org'/>"
                     "<item affiliation='none' jid='test2@example.com'/></query>", to=room))
    assert not ({"test1@example.org", "test2@example.com"} & members(adm, room))
    try_destroy(owner, room)


def test_admin_member_list_is_delta(server, clients):
    """mucTestAdminMemberListIsDelta: removing test1 and adding test3 leaves test2."""
    owner, adm, room = owner_and_admin(server, clients, "memberlist-delta")
    ok(adm.iq("set", f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='test1@example.org'/>"
                     "<item affiliation='member' jid='test2@example.com'/></query>", to=room))
    ok(adm.iq("set", f"<query xmlns='{NS_ADMIN}'><item affiliation='none' jid='test1@example.org'/>"
                     "<item affiliation='member' jid='test3@example.net'/></query>", to=room))
    m = members(adm, room)
    assert "test1@example.org" not in m and {"test2@example.com", "test3@example.net"} <= m, m
    try_destroy(owner, room)


# ----------------------------------------------------------------- 10.1.1 creating a room

def create_presence(c, room, nick):
    c.presence(to=f"{room}/{nick}", extra=f"<x xmlns='{NS_MUC}'/>")
    return c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nick}", 10, what="creation presence")


def test_room_locked_when_created(server, clients):
    """testRoomLockedWhenCreated: until configured, another user's join gets <item-not-found/>."""
    owner, other = users(2, server, clients)
    room = new_room(server, "locked")
    create_presence(owner, room, "owner-" + rnd())
    assert join_error(other, room, "participant-" + rnd()) == "item-not-found"
    try_destroy(owner, room)


def test_room_response_indicates_acknowledgement_and_owner(server, clients):
    """testRoomResponseIndicatesAcknowledgement / testRoomResponseIndicatesCreatorIsOwner:
    the creator's presence has 201 and 110 and an item with affiliation 'owner'."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "created")
    p = create_presence(owner, room, "owner-" + rnd())
    assert {"201", "110"} <= codes(p), tostring(p)
    it = p.find(q(NS_USER, "x")).find(q(NS_USER, "item"))
    assert it is not None and it.get("affiliation") == "owner", tostring(p)
    try_destroy(owner, room)


def test_room_configuration_form_request_and_response(server, clients):
    """testRoomConfigurationFormRequest / testRoomConfigurationFormResponse: the answer holds a
    muc#owner <query/>; its form, if any, has options beyond hidden and fixed fields."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "conf-form")
    create_presence(owner, room, "owner-" + rnd())
    r = ok(owner.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room))
    qq = r.find(q(NS_OWNER, "query"))
    assert qq is not None, tostring(r)
    x = qq.find(q(NS_DATA, "x"))
    if x is not None:
        assert any(f.get("type") not in ("hidden", "fixed") for f in x.findall(q(NS_DATA, "field"))), tostring(r)
    try_destroy(owner, room)


def test_room_unlocked_when_configured(server, clients):
    """testRoomUnlockedWhenInstantRoomIsCreated / ...WhenConfigFormSubmitted (10.1.2, 10.1.3):
    after the (empty or filled) submit another user can join."""
    owner, other = users(2, server, clients)
    room = new_room(server, "unlock")
    create_presence(owner, room, "owner-" + rnd())
    ok(configure(owner, room, {"roomname": "Room " + rnd()}))
    join(other, room, "participant-" + rnd())
    try_destroy(owner, room)


# ----------------------------------------------------------------- 10.9 destroying a room

@pytest.mark.parametrize("persistent", ["1", "0"], ids=["persistent", "temporary"])
def test_destroy_persistent_or_temporary_room(server, clients, persistent):
    """testDestroyPersistentRoom / testDestroyTemporaryRoom."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "destroy")
    create_muc(owner, room, "owner-" + rnd(), {"persistentroom": persistent})
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'><destroy/></query>", to=room))


@pytest.mark.parametrize("destroy", ["<destroy jid='alternate@muc.example.org'/>",
                                     "<destroy><reason>Room destroyed as part of an integration test.</reason>"
                                     "</destroy>"], ids=["alternate-venue", "reason"])
def test_destroy_with_venue_or_reason(server, clients, destroy):
    """testAlternateVenue / testReason."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "destroy-x")
    create_muc(owner, room, "owner-" + rnd())
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'>{destroy}</query>", to=room))


def test_destroy_presence(server, clients):
    """testPresence (10.9: the service removes all occupants, sending only one unavailable
    presence to each, with <destroy/>)."""
    owner, one, two = users(3, server, clients)
    room = new_room(server, "destroy-presence")
    onick = "owner-" + rnd()
    create_muc(owner, room, onick)
    nicks = {owner: onick, one: "one-" + rnd(), two: "two-" + rnd()}
    join(one, room, nicks[one])
    join(two, room, nicks[two])
    for c in (owner, one):
        c.drain(0.2)
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'><destroy jid='alternate@muc.example.org'>"
                       "<reason>gone</reason></destroy></query>", to=room))
    for c, nick in nicks.items():
        p = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nick}", 10, what="destroy presence")
        assert p.get("type") == "unavailable", tostring(p)
        d = p.find(q(NS_USER, "x")).find(q(NS_USER, "destroy"))
        assert d is not None and d.get("jid") == "alternate@muc.example.org", tostring(p)
        assert d.findtext(q(NS_USER, "reason")) == "gone", tostring(p)
        again = c.drain(0.3)
        assert not [e for e in again if e.tag == C("presence") and e.get("from") == f"{room}/{nick}"], \
            "more than one unavailable presence"
