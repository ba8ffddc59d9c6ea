"""Ports of the server extensions' MultiUserChatSecurityConsiderationsIntegrationTest (XEP-0045
14.3, 14.5) and MultiUserChatOccupantPMIntegrationTest (7.5), same fixtures as
test_sint_muc.py:

- 170 in the initial presence of a publicly logged room, and in the room's notice when the
  configuration turns logging on; 100 in the initial presence of a non-anonymous room, and
  172 when a semi-anonymous room becomes non-anonymous;
- private messages: delivered with the sender's occupant JID as 'from'; type 'groupchat'
  -> <bad-request/>; to an occupant JID that does not exist -> <item-not-found/>; from a
  non-occupant -> <not-acceptable/>.

Smack's configureAllowPM sets muc#roomconfig_allowpm to 'moderators' when the form says
'none'; its enablePublicLogging / disablPublicLogging set muc#roomconfig_enablelogging.
"""

import pytest

from rawxmpp import C, q, stanza_error, tostring
from test_muc import NS_OWNER, NS_USER, codes, configure, join, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, leave, try_destroy

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmucs{i}")) for i in range(n)]


def own_presence(c, room, nick):
    _, own, _, _ = join(c, room, nick)
    return own


def notice_with(c, room, code):
    return c.recv(lambda e: e.tag == C("message") and e.get("from") == room and code in codes(e), 10,
                  what=f"room notice with status {code}")


def test_public_logging_status_on_initial_presence(server, clients):
    """testPublicLoggingStatusOnInitialPresence (14.3: 170 with the initial presence)."""
    owner, part = users(2, server, clients)
    room = new_room(server, "security-initial-170")
    create_muc(owner, room, "owner-" + rnd(), {"enablelogging": "1"})
    assert "170" in codes(own_presence(part, room, "participant-" + rnd()))
    try_destroy(owner, room)


def test_public_logging_status_on_config_change(server, clients):
    """testPublicLoggingStatusOnConfigChange (14.3 / 10.2.1: the room sends 170 when logging is
    turned on)."""
    owner, part = users(2, server, clients)
    room = new_room(server, "security-reconfig-170")
    create_muc(owner, room, "owner-" + rnd(), {"enablelogging": "0"})
    own_presence(part, room, "participant-" + rnd())
    ok(configure(owner, room, {"enablelogging": "1"}))
    notice_with(part, room, "170")
    try_destroy(owner, room)


def test_anonymity_status_on_initial_presence(server, clients):
    """testAnonymityStatusOnInitialPresence (14.5: 100 with the initial presence of a
    non-anonymous room)."""
    owner, part = users(2, server, clients)
    room = new_room(server, "security-initial-100")
    create_muc(owner, room, "owner-" + rnd(), {"whois": "anyone"})
    assert "100" in codes(own_presence(part, room, "participant-" + rnd()))
    try_destroy(owner, room)


def test_anonymity_status_on_config_change(server, clients):
    """testAnonymityStatusOnConfigChange (14.5: 172 when semi-anonymous becomes
    non-anonymous)."""
    owner, part = users(2, server, clients)
    room = new_room(server, "security-reconfig-172")
    create_muc(owner, room, "owner-" + rnd(), {"whois": "moderators"})
    own_presence(part, room, "participant-" + rnd())
    ok(configure(owner, room, {"whois": "anyone"}))
    notice_with(part, room, "172")
    try_destroy(owner, room)


# ----------------------------------------------------------------- 7.5 private messages

def configure_allow_pm(owner, room):
    r = ok(owner.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room))
    for f in r.iter("{jabber:x:data}field"):
        if f.get("var") == "muc#roomconfig_allowpm" and f.findtext("{jabber:x:data}value") == "none":
            ok(configure(owner, room, {"allowpm": "moderators"}))


def pm_room(server, clients, name):
    owner, target = users(2, server, clients)
    room = new_room(server, name)
    onick, tnick = "owner-" + rnd(), "target-" + rnd()
    create_muc(owner, room, onick)
    configure_allow_pm(owner, room)
    join(target, room, tnick)
    owner.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{tnick}", 10, what="target's join")
    return owner, target, room, onick, tnick


def send_pm(c, to, type_, mid):
    c.send_raw(f"<message to='{to}' id='{mid}' type='{type_}'><body>A private message sent as part of an "
               f"integration test.</body><x xmlns='{NS_USER}'/></message>")


def pm_error(c, mid):
    e = c.recv(lambda e: e.tag == C("message") and e.get("id") == mid and e.get("type") == "error", 10,
               what="the error")
    return stanza_error(e)[1]


def test_send_pm(server, clients):
    """testSendPM: delivered to the target, from the sender's occupant JID."""
    owner, target, room, onick, tnick = pm_room(server, clients, "occupant-pm")
    mid = f"pm-{rnd()}"
    send_pm(owner, f"{room}/{tnick}", "chat", mid)
    m = target.recv(lambda e: e.tag == C("message") and e.get("id") == mid, 10, what="the private message")
    assert m.get("from") == f"{room}/{onick}", tostring(m)
    try_destroy(owner, room)


def test_send_groupchat_pm(server, clients):
    """testSendGroupchatPM: type 'groupchat' to an occupant -> <bad-request/>."""
    owner, target, room, onick, tnick = pm_room(server, clients, "occupant-pm-groupchat")
    mid = f"pm-{rnd()}"
    send_pm(owner, f"{room}/{tnick}", "groupchat", mid)
    assert pm_error(owner, mid) == "bad-request"
    try_destroy(owner, room)


def test_send_non_occupant_target_pm(server, clients):
    """testSendNonOccupantTargetPM: to an occupant JID that does not exist ->
    <item-not-found/>."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "occupant-pm-nonoccupant-target")
    create_muc(owner, room, "owner-" + rnd())
    configure_allow_pm(owner, room)
    mid = f"pm-{rnd()}"
    send_pm(owner, f"{room}/doesnotexist-{rnd()}", "chat", mid)
    assert pm_error(owner, mid) == "item-not-found"
    try_destroy(owner, room)


def test_send_non_occupant_sender_pm(server, clients):
    """testSendNonOccupantSenderPM: the owner left; its private message -> <not-acceptable/>."""
    owner, target, room, onick, tnick = pm_room(server, clients, "occupant-pm-nonoccupant-sender")
    leave(owner, room, onick)
    mid = f"pm-{rnd()}"
    send_pm(owner, f"{room}/{tnick}", "chat", mid)
    assert pm_error(owner, mid) == "not-acceptable"
    try_destroy(owner, room)
