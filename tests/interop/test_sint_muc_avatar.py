"""Port of the server extensions' MUCAvatarIntegrationTest (XEP-0486 MUC Avatars 0.1.0), with
the fixtures of test_sint_muc.py. The class is 'not possible' unless a room's disco#info lists
'vcard-temp'; Starling rooms keep a vCard that an owner sets (XEP-0054 set to the room JID),
anyone reads, and an empty vCard removes.

- testPublishAvatar / testPNGSupport: an owner's vCard with a PNG PHOTO is accepted;
- testUnpublishAvatar: an empty vCard removes it (a get then has no PHOTO);
- testRetrieveAvatar: a get returns the PHOTO as set (BINVAL the same base64).
Beyond the Java: a non-owner's set is <forbidden/> and leaves the vCard as it was; another
user (not an occupant) reads the same vCard; the vCard survives a room reconfiguration.
"""

import pytest

from rawxmpp import q, tostring
from test_muc import NS_INFO, configure, join, new_room, ok
from test_sint_helpers import error_condition, rnd
from test_sint_muc import create_muc, try_destroy

pytestmark = [pytest.mark.timeout(120)]

NS_VCARD = "vcard-temp"
TINY_PNG_BASE64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
AVATAR = (f"<vCard xmlns='{NS_VCARD}'><PHOTO><BINVAL>{TINY_PNG_BASE64}</BINVAL><TYPE>image/png</TYPE></PHOTO>"
          "</vCard>")


def users(n, server, clients):
    return [clients.add(server.online(f"sintmucav{i}")) for i in range(n)]


def room(server, clients, name):
    owner, *rest = users(2, server, clients)
    r = new_room(server, name)
    create_muc(owner, r, "owner-" + rnd())
    feats = {f.get("var") for f in ok(owner.iq("get", f"<query xmlns='{NS_INFO}'/>", to=r)).iter(q(NS_INFO, "feature"))}
    assert NS_VCARD in feats, "rooms do not advertise vcard-temp (Smack: 'not possible')"
    return owner, rest[0], r


def get_photo(c, r):
    resp = ok(c.iq("get", f"<vCard xmlns='{NS_VCARD}'/>", to=r))
    v = resp.find(q(NS_VCARD, "vCard"))
    assert v is not None, tostring(resp)
    photo = v.find(q(NS_VCARD, "PHOTO"))
    return None if photo is None else (photo.findtext(q(NS_VCARD, "BINVAL")), photo.findtext(q(NS_VCARD, "TYPE")))


def test_publish_avatar_png(server, clients):
    """testPublishAvatar / testPNGSupport."""
    owner, _, r = room(server, clients, "mucavatar-publish")
    ok(owner.iq("set", AVATAR, to=r))
    try_destroy(owner, r)


def test_unpublish_avatar(server, clients):
    """testUnpublishAvatar (3.2: setting an empty vCard unpublishes the avatar)."""
    owner, _, r = room(server, clients, "mucavatar-unpublish")
    ok(owner.iq("set", AVATAR, to=r))
    ok(owner.iq("set", f"<vCard xmlns='{NS_VCARD}'/>", to=r))
    assert get_photo(owner, r) is None
    try_destroy(owner, r)


def test_retrieve_avatar(server, clients):
    """testRetrieveAvatar (3.4: the client can retrieve the room's vCard-temp); also by a user
    who is not in the room, and after a reconfiguration."""
    owner, other, r = room(server, clients, "mucavatar-retrieve")
    ok(owner.iq("set", AVATAR, to=r))
    assert get_photo(owner, r) == (TINY_PNG_BASE64, "image/png")
    assert get_photo(other, r) == (TINY_PNG_BASE64, "image/png")
    ok(configure(owner, r, {"roomname": "renamed " + rnd()}))
    assert get_photo(other, r) == (TINY_PNG_BASE64, "image/png")
    try_destroy(owner, r)


def test_non_owner_cannot_set_avatar(server, clients):
    """Beyond the Java (XEP-0486 3.2: an owner publishes): a participant's set is <forbidden/>
    and the owner's vCard stays."""
    owner, other, r = room(server, clients, "mucavatar-forbidden")
    ok(owner.iq("set", AVATAR, to=r))
    join(other, r, "other-" + rnd())
    resp = other.iq("set", f"<vCard xmlns='{NS_VCARD}'/>", to=r)
    assert resp.get("type") == "error" and error_condition(resp) == "forbidden", tostring(resp)
    assert get_photo(other, r) == (TINY_PNG_BASE64, "image/png")
    try_destroy(owner, r)
