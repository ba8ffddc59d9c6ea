"""Port of the server extensions' MultiUserChatAdminBanListIntegrationTest (XEP-0045 9.2),
fixtures of test_sint_muc.py / test_sint_muc_admin.py: an admin gets the ban list; it holds
bare JIDs only (a ban of a full JID is either refused, 'not possible', or listed bare); each
item has 'affiliation' and 'jid'; several bans in one set (also with a <reason/> each); a
participant may not change the list (<forbidden/>); 'none' removes bans."""

import pytest

from rawxmpp import bare, q, tostring
from test_muc import NS_ADMIN, admin, err_of, join, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy
from test_sint_muc_admin import affiliation_list, grant

pytestmark = [pytest.mark.timeout(120)]


def setup(server, clients, name, make_admin=True):
    owner = clients.add(server.online("sintmucb0"))
    adm = clients.add(server.online("sintmucb1"))
    room = new_room(server, name)
    create_muc(owner, room, "owner-" + rnd())
    if make_admin:
        ok(grant(owner, room, bare(adm.jid), "admin"))
    join(adm, room, "admin-" + rnd())
    return owner, adm, room


def outcasts(c, room):
    return affiliation_list(c, room, "outcast")


def test_admin_requests_ban_list(server, clients):
    owner, adm, room = setup(server, clients, "admin-requests-banlist")
    outcasts(adm, room)
    try_destroy(owner, room)


def test_admin_ban_list_full_jid(server, clients):
    """mucTestAdminBanListFullJid (9.2: the ban list is always based on bare JIDs)."""
    owner, adm, room = setup(server, clients, "admin-banlist-fulljid")
    r = grant(adm, room, "test@example.org/foobar", "outcast",
              "Attempt to create a ban list with a full JID (which shouldn't be possible).")
    if r.get("type") == "error":
        pytest.skip("Smack marks this 'not possible': a ban of a full JID was refused")
    items = outcasts(adm, room)
    assert all("/" not in i.get("jid") for i in items), [tostring(i) for i in items]
    try_destroy(owner, room)


def test_admin_ban_list_item_check(server, clients):
    owner, adm, room = setup(server, clients, "admin-banlist-attr")
    ok(grant(owner, room, "test@example.org", "outcast"))
    items = outcasts(adm, room)
    assert all(i.get("jid") and i.get("affiliation") for i in items), [tostring(i) for i in items]
    assert "test@example.org" in {i.get("jid") for i in items}
    try_destroy(owner, room)


@pytest.mark.parametrize("optional", [False, True], ids=["plain", "with-reasons"])
def test_admin_ban_list_multiple_items(server, clients, optional):
    """mucTestAdminBanListMultipleItems / ...WithOptionalAttributes."""
    owner, adm, room = setup(server, clients, "admin-banlist-multiple")
    r = "<reason>Banned as part of a test.</reason>" if optional else ""
    ok(admin(adm, room, f"<item affiliation='outcast' jid='test1@example.org'>{r}</item>"
                        f"<item affiliation='outcast' jid='test2@example.com'>{r}</item>"))
    assert {"test1@example.org", "test2@example.com"} <= {i.get("jid") for i in outcasts(adm, room)}
    try_destroy(owner, room)


def test_participant_not_allowed_to_modify_ban_list(server, clients):
    owner, part, room = setup(server, clients, "admin-banlist-notallowed", make_admin=False)
    r = admin(part, room, f"<item affiliation='outcast' jid='banned-user-{rnd()}@example.org'/>"
                          f"<item affiliation='outcast' jid='banned-user-{rnd()}@example.net'/>")
    assert err_of(r) == "forbidden"
    try_destroy(owner, room)


def test_admin_ban_list_multiple_items_unban(server, clients):
    owner, adm, room = setup(server, clients, "admin-banlist-unban")
    ok(admin(adm, room, "<item affiliation='outcast' jid='test1@example.org'/>"
                        "<item affiliation='outcast' jid='test2@example.com'/>"))
    ok(admin(adm, room, "<item affiliation='none' jid='test1@example.org'/>"
                        "<item affiliation='none' jid='test2@example.com'/>"))
    assert not ({"test1@example.org", "test2@example.com"} & {i.get("jid") for i in outcasts(adm, room)})
    try_destroy(owner, room)
