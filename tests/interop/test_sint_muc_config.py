"""Port of the server extensions' MultiUserChatOwnerConfigRoomIntegrationTest (XEP-0045 10.2,
10.2.1), fixtures of test_sint_muc.py:

- the configuration form is <forbidden/> to a user with no role or affiliation and to a
  participant; an owner gets it in the room and out of it;
- the form shows the current options as defaults (a non-default option picked for every
  list-single field comes back as its value);
- a cancelled form leaves the configuration as it was;
- admins / owners added or dropped through muc#roomconfig_roomadmins / _roomowners: the room
  sends updated presence of that occupant to everyone (owner, target, participant);
- a room made members-only removes non-members with 322, seen by all;
- notices 170 / 171 / 172 / 173 to every occupant when logging / anonymity change.
"""

import pytest

from rawxmpp import C, bare, q, tostring
from test_muc import NS_DATA, NS_OWNER, NS_USER, codes, configure, err_of, join, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, leave, try_destroy
from test_sint_muc_admin import grant

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmucc{i}")) for i in range(n)]


def config_get(c, room):
    return c.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room)


def form_fields(r):
    x = r.find(q(NS_OWNER, "query")).find(q(NS_DATA, "x"))
    return x.findall(q(NS_DATA, "field"))


def test_obtain_room_config_without_role_or_affiliation(server, clients):
    owner, other = users(2, server, clients)
    room = new_room(server, "config-get-norole")
    create_muc(owner, room, "owner-" + rnd())
    assert err_of(config_get(other, room)) == "forbidden"
    try_destroy(owner, room)


def test_obtain_room_config_non_affiliated_user(server, clients):
    owner, other = users(2, server, clients)
    room = new_room(server, "config-get-participant")
    create_muc(owner, room, "owner-" + rnd())
    join(other, room, "participant-" + rnd())
    assert err_of(config_get(other, room)) == "forbidden"
    try_destroy(owner, room)


@pytest.mark.parametrize("joined", [True, False], ids=["owner-joined", "owner-not-joined"])
def test_obtain_room_config_owner(server, clients, joined):
    owner, other = users(2, server, clients)
    room = new_room(server, "config-get-owner")
    nick = "owner-" + rnd()
    create_muc(owner, room, nick)
    if not joined:
        join(other, room, "participant-" + rnd())
        leave(owner, room, nick)
    ok(config_get(owner, room))
    if not joined:
        join(owner, room, nick)
    try_destroy(owner, room)


def test_obtain_room_config_has_current_options_as_defaults(server, clients):
    """A non-default option of every list-single field, submitted, is the field's value in the
    next form."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "config-defaults")
    owner.presence(to=f"{room}/owner-{rnd()}", extra="<x xmlns='http://jabber.org/protocol/muc'/>")
    owner.recv(lambda e: e.tag == C("presence") and e.get("from", "").startswith(room + "/"), 10, what="created")
    chosen = {}
    for f in form_fields(ok(config_get(owner, room))):
        if f.get("type") == "list-single":
            current = f.findtext(q(NS_DATA, "value"))
            for o in f.findall(q(NS_DATA, "option")):
                v = o.findtext(q(NS_DATA, "value"))
                if v != current:
                    chosen[f.get("var")] = v
                    break
    assert chosen, "no list-single field with another option (Smack: 'not possible')"
    sub = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in chosen.items())
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'>"
                       "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                       f"{sub}</x></query>", to=room))
    now = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in form_fields(ok(config_get(owner, room)))}
    for k, v in chosen.items():
        assert now.get(k) == v, (k, v, now.get(k))
    try_destroy(owner, room)


def test_room_config_cancel(server, clients):
    """10.2: a cancelled subsequent configuration leaves the configuration as it was."""
    (owner,) = users(1, server, clients)
    room = new_room(server, "config-cancel")
    create_muc(owner, room, "owner-" + rnd(), {"roomname": "before " + rnd()})
    before = tostring(ok(config_get(owner, room)).find(q(NS_OWNER, "query")))
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='cancel'/></query>", to=room))
    after = tostring(ok(config_get(owner, room)).find(q(NS_OWNER, "query")))
    assert before == after
    try_destroy(owner, room)


def three_in_room(server, clients, name, fields=None):
    owner, target, part = users(3, server, clients)
    room = new_room(server, name)
    nicks = {owner: "owner-" + rnd(), target: "target-" + rnd(), part: "participant-" + rnd()}
    create_muc(owner, room, nicks[owner], fields)
    join(part, room, nicks[part])
    join(target, room, nicks[target])
    for c in (owner, part):
        c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nicks[target]}", 10,
               what="target's join")
    return owner, target, part, room, nicks


def affiliation_presence(c, room, nick, affiliation):
    def pred(e):
        if e.tag != C("presence") or e.get("from") != f"{room}/{nick}" or e.get("type") is not None:
            return False
        x = e.find(q(NS_USER, "x"))
        it = x.find(q(NS_USER, "item")) if x is not None else None
        return it is not None and it.get("affiliation") == affiliation
    return c.recv(pred, 10, what=f"presence of {nick} as {affiliation}")


@pytest.mark.parametrize("case", ["drop-admin", "add-admin", "drop-owner", "add-owner"])
def test_room_config_affiliation_change_presence(server, clients, case):
    """testRoomConfigDropAdmin / AddAdmin / DropOwner / AddOwner (10.2: if as a result of a
    change in the room configuration someone in the room gains or loses admin / owner status,
    the room MUST send updated presence for that individual to all occupants)."""
    owner, target, part, room, nicks = None, None, None, None, None
    kind = "admins" if "admin" in case else "owners"
    if case == "drop-admin":
        owner, target, part, room, nicks = three_in_room(server, clients, "drop-admin")
        ok(grant(owner, room, bare(target.jid), "admin"))
    elif case == "drop-owner":
        owner, target, part, room, nicks = three_in_room(server, clients, "drop-owner")
        ok(grant(owner, room, bare(target.jid), "owner"))
    else:
        owner, target, part, room, nicks = three_in_room(server, clients, case)
    for c in (owner, target, part):
        c.drain(0.3)
    if case == "drop-admin":
        value, want = [], "none"
    elif case == "add-admin":
        value, want = [bare(target.jid)], "admin"
    elif case == "drop-owner":
        value, want = [bare(owner.jid)], "none"
    else:
        value, want = [bare(owner.jid), bare(target.jid)], "owner"
    ok(configure(owner, room, {f"room{kind}": value}))
    for c in (owner, target, part):
        affiliation_presence(c, room, nicks[target], want)
    try_destroy(owner, room)


def test_room_config_to_member_only(server, clients):
    """testRoomConfigToMemberOnly (10.2: non-members removed with 322, told to them and to the
    remaining occupants)."""
    owner, target, member = users(3, server, clients)
    room = new_room(server, "make-memberonly")
    nicks = {owner: "owner-" + rnd(), target: "target-" + rnd(), member: "member-" + rnd()}
    create_muc(owner, room, nicks[owner], {"membersonly": "0"})
    ok(grant(owner, room, bare(member.jid), "member"))
    join(member, room, nicks[member])
    join(target, room, nicks[target])
    for c in (owner, member):
        c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nicks[target]}", 10, what="join")
    ok(configure(owner, room, {"membersonly": "1"}))
    for c in (owner, target, member):
        p = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{nicks[target]}"
                   and e.get("type") == "unavailable", 10, what="322 removal")
        assert "322" in codes(p), tostring(p)
    try_destroy(owner, room)


@pytest.mark.parametrize("code,before,after", [
    ("170", {"enablelogging": "0"}, {"enablelogging": "1"}),
    ("171", {"enablelogging": "1"}, {"enablelogging": "0"}),
    ("172", {"whois": "moderators"}, {"whois": "anyone"}),
    ("173", {"whois": "anyone"}, {"whois": "moderators"}),
])
def test_room_config_notification(server, clients, code, before, after):
    """testRoomConfigNotification170 / 171 / 172 / 173 (10.2.1): a message from the room with
    only <status/> elements, the code among them, to every occupant."""
    owner, part = users(2, server, clients)
    room = new_room(server, f"notify-{code}")
    create_muc(owner, room, "owner-" + rnd(), before)
    join(part, room, "participant-" + rnd())
    owner.drain(0.2)
    ok(configure(owner, room, after))
    for c in (owner, part):
        m = c.recv(lambda e: e.tag == C("message") and e.get("from") == room and code in codes(e), 10,
                   what=f"notice {code}")
        x = m.find(q(NS_USER, "x"))
        assert all(ch.tag == q(NS_USER, "status") for ch in x), tostring(m)
        assert m.find(C("body")) is None, tostring(m)
    try_destroy(owner, room)
