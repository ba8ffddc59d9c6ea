"""XEP-0045 Multi-User Chat at conference.<domain> (with XEP-0421 occupant ids, XEP-0410
self-ping, XEP-0313 on the room, mediated invitations), against a real server process.

Raw XML (rawxmpp) where the exact stanzas, status codes and error conditions matter;
slixmpp's xep_0045 plugin for a client library's view of joining and talking.
"""

import asyncio
import time
import uuid

import pytest

from conftest import metric_sum
from rawxmpp import C, NS_DELAY, XMPPTimeout, bare, new_id, q, stanza_error, tostring, xml_escape

pytestmark = [pytest.mark.timeout(120)]

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_ADMIN = NS_MUC + "#admin"
RSM = "http://jabber.org/protocol/rsm"
NS_OWNER = NS_MUC + "#owner"
NS_DATA = "jabber:x:data"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_SID = "urn:xmpp:sid:0"
NS_OID = "urn:xmpp:occupant-id:0"
NS_MAM = "urn:xmpp:mam:2"
NS_PING = "urn:xmpp:ping"
CONFIG = "http://jabber.org/protocol/muc#roomconfig"


# ----------------------------------------------------------------------------- helpers

def service(server):
    return f"conference.{server.domain}"


def new_room(server, prefix="room"):
    return f"{prefix}{uuid.uuid4().hex[:8]}@{service(server)}"


def codes(p):
    x = p.find(q(NS_USER, "x"))
    return set() if x is None else {s.get("code") for s in x.findall(q(NS_USER, "status"))}


def item(p):
    x = p.find(q(NS_USER, "x"))
    return None if x is None else x.find(q(NS_USER, "item"))


def is_pres_from(jid, type_=None):
    return lambda e: e.tag == C("presence") and e.get("from") == jid and e.get("type") == type_


def join_send(c, room, nick, password=None, history=None, muc=True):
    inner = ""
    if password is not None:
        inner += f"<password>{xml_escape(password)}</password>"
    if history is not None:
        inner += "<history " + " ".join(f"{k}='{v}'" for k, v in history.items()) + "/>"
    extra = f"<x xmlns='{NS_MUC}'>{inner}</x>" if muc else ""
    c.presence(to=f"{room}/{nick}", extra=extra)


def join(c, room, nick, **kw):
    """Joins; returns (others' presences before our own, own presence, history, subject)."""
    join_send(c, room, nick, **kw)
    me = f"{room}/{nick}"
    before = []
    while True:
        e = c.recv(lambda e: e.get("from", "").startswith(room), timeout=10, what=f"join of {me}")
        if e.tag == C("presence") and e.get("type") == "error":
            raise AssertionError("join refused: " + tostring(e))
        if e.tag == C("presence") and e.get("from") == me and "110" in codes(e):
            own = e
            break
        before.append(e)
    history = []
    while True:
        e = c.recv(lambda e: e.tag == C("message") and e.get("from", "").startswith(room), timeout=10,
                   what="history or subject")
        if e.find(C("subject")) is not None and e.find(C("body")) is None:
            return before, own, history, e
        history.append(e)


def join_error(c, room, nick, **kw):
    join_send(c, room, nick, **kw)
    e = c.recv(lambda e: e.tag == C("presence") and e.get("type") == "error"
               and e.get("from") == f"{room}/{nick}", timeout=10, what="join error")
    err = stanza_error(e)
    assert err is not None, tostring(e)
    return err[1]


def instant(c, room, nick="owner"):
    """Creates an instant room (XEP-0045 10.1.2) and returns the owner's own presence."""
    before, own, _, _ = join(c, room, nick)
    assert "201" in codes(own), tostring(own)
    r = c.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>", to=room)
    assert r.get("type") == "result", tostring(r)
    return own


def form(fields: dict) -> str:
    out = [f"<x xmlns='{NS_DATA}' type='submit'>",
           f"<field var='FORM_TYPE'><value>{CONFIG}</value></field>"]
    for var, v in fields.items():
        vals = v if isinstance(v, list) else [v]
        out.append(f"<field var='muc#roomconfig_{var}'>"
                   + "".join(f"<value>{xml_escape(str(x))}</value>" for x in vals) + "</field>")
    out.append("</x>")
    return "".join(out)


def configure(c, room, fields):
    return c.iq("set", f"<query xmlns='{NS_OWNER}'>{form(fields)}</query>", to=room)


def ok(r):
    assert r.get("type") == "result", tostring(r)
    return r


def err_of(r):
    e = stanza_error(r)
    assert e is not None, tostring(r)
    return e[1]


def admin(c, room, items):
    return c.iq("set", f"<query xmlns='{NS_ADMIN}'>{items}</query>", to=room)


def groupchat(c, room, body):
    return c.message(room, body, type_="groupchat")


def recv_gc(c, room, body, timeout=10):
    return c.recv(lambda e: e.tag == C("message") and e.get("type") == "groupchat"
                  and e.findtext(C("body")) == body and e.get("from", "").startswith(room + "/"),
                  timeout=timeout, what=f"groupchat {body!r}")


def room_with(server, clients, n=2, fields=None):
    """An instant room with an owner and n-1 more occupants (nicks o, p1, p2...)."""
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    if fields:
        ok(configure(owner, room, fields))
    others = []
    for i in range(1, n):
        c = clients.add(server.online("mp"))
        join(c, room, f"p{i}")
        owner.recv(is_pres_from(f"{room}/p{i}"), timeout=10)
        others.append(c)
    for c in [owner] + others:
        c.drain(0.2)
    return room, owner, others


# ----------------------------------------------------------------------------- discovery

def test_domain_items_list_the_conference_service(server, clients):
    c = clients.add(server.online("md"))
    r = ok(c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=server.domain))
    jids = [i.get("jid") for i in r.find(q(NS_ITEMS, "query")).findall(q(NS_ITEMS, "item"))]
    assert service(server) in jids
    info = ok(c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=service(server)))
    qel = info.find(q(NS_INFO, "query"))
    ident = qel.find(q(NS_INFO, "identity"))
    assert ident.get("category") == "conference" and ident.get("type") == "text"
    feats = {f.get("var") for f in qel.findall(q(NS_INFO, "feature"))}
    assert NS_MUC in feats


def test_a_service_of_another_served_domain(server, clients):
    c = clients.add(server.online("md2"))
    r = ok(c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to="example.org"))
    jids = [i.get("jid") for i in r.find(q(NS_ITEMS, "query")).findall(q(NS_ITEMS, "item"))]
    assert "conference.example.org" in jids
    room = f"r{uuid.uuid4().hex[:8]}@conference.example.org"
    instant(c, room, "me")
    groupchat(c, room, "in example.org")
    recv_gc(c, room, "in example.org")


def test_the_service_hands_out_unique_room_names(server, clients):
    """XEP-0045 section 10.1.4: the service advertises muc#unique and answers each request
    with a room name of its own, different every time; a room created under it works."""
    ns = "http://jabber.org/protocol/muc#unique"
    c = clients.add(server.online("mu"))
    info = ok(c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=service(server)))
    assert ns in {f.get("var") for f in info.iter(q(NS_INFO, "feature"))}
    names = []
    for _ in range(2):
        r = ok(c.iq("get", f"<unique xmlns='{ns}'/>", to=service(server)))
        u = r.find(q(ns, "unique"))
        assert u is not None and u.text, tostring(r)
        names.append(u.text)
    assert names[0] != names[1]
    room = f"{names[0]}@{service(server)}"
    instant(c, room, "me")
    groupchat(c, room, "in a unique room")
    recv_gc(c, room, "in a unique room")
    # Not a set.
    r = c.iq("set", f"<unique xmlns='{ns}'/>", to=service(server))
    assert stanza_error(r) is not None, tostring(r)


def test_public_rooms_are_listed_and_hidden_ones_are_not(server, clients):
    c = clients.add(server.online("ml"))
    pub, hid = new_room(server, "pub"), new_room(server, "hid")
    instant(c, pub, "n")
    ok(configure(c, pub, {"roomname": "The Public One", "publicroom": 1}))
    instant(c, hid, "n")
    ok(configure(c, hid, {"publicroom": 0}))
    r = ok(c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=service(server)))
    items = {i.get("jid"): i.get("name") for i in r.find(q(NS_ITEMS, "query")).findall(q(NS_ITEMS, "item"))}
    assert items.get(pub) == "The Public One"
    assert hid not in items


def test_the_room_directory_pages_with_rsm(server, clients):
    """XEP-0045 §6.3 (a service's room list may be long) with XEP-0059: the service advertises
    RSM; <max/> gives a page and a <set/> (first, last, count), <after/> the next; without a
    <set/> the whole list comes; a malformed <max/> is <bad-request/>."""
    c = clients.add(server.online("mr"))
    rooms = sorted(new_room(server, f"dir{i}") for i in range(3))
    for r in rooms:
        instant(c, r, "n")
        ok(configure(c, r, {"publicroom": 1}))
    info = ok(c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=service(server)))
    assert RSM in {f.get("var") for f in info.iter(q(NS_INFO, "feature"))}, tostring(info)

    def page(rsm):
        r = ok(c.iq("get", f"<query xmlns='{NS_ITEMS}'><set xmlns='{RSM}'>{rsm}</set></query>",
                    to=service(server)))
        query = r.find(q(NS_ITEMS, "query"))
        return [i.get("jid") for i in query.findall(q(NS_ITEMS, "item"))], query.find(q(RSM, "set"))

    everything = [i.get("jid") for i in ok(c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=service(server)))
                  .find(q(NS_ITEMS, "query")).findall(q(NS_ITEMS, "item"))]
    assert set(rooms) <= set(everything)
    first, s = page("<max>2</max>")
    assert len(first) == 2 and first == everything[:2], (first, everything)
    assert s.findtext(q(RSM, "count")) == str(len(everything))
    assert s.findtext(q(RSM, "first")) == first[0] and s.findtext(q(RSM, "last")) == first[1]
    seen = list(first)
    while len(seen) < len(everything):
        nxt, s = page(f"<max>2</max><after>{seen[-1]}</after>")
        assert nxt, (seen, everything)
        seen += nxt
    assert seen == everything
    r = c.iq("get", f"<query xmlns='{NS_ITEMS}'><set xmlns='{RSM}'><max>x</max></set></query>",
             to=service(server))
    assert err_of(r) == "bad-request", tostring(r)


def test_room_disco_info_features_follow_the_configuration(server, clients):
    room, owner, _ = room_with(server, clients, 1)

    def feats():
        r = ok(owner.iq("get", f"<query xmlns='{NS_INFO}'/>", to=room))
        qel = r.find(q(NS_INFO, "query"))
        return {f.get("var") for f in qel.findall(q(NS_INFO, "feature"))}, qel

    f, qel = feats()
    assert {NS_MUC, "muc_temporary", "muc_open", "muc_unmoderated", "muc_unsecured", "muc_public",
            "muc_semianonymous", NS_OID, NS_MAM}.issubset(f), f
    x = qel.find(q(NS_DATA, "x"))
    vals = {fl.get("var"): fl.findtext(q(NS_DATA, "value")) for fl in x.findall(q(NS_DATA, "field"))}
    assert vals["FORM_TYPE"] == "http://jabber.org/protocol/muc#roominfo"
    assert vals["muc#roominfo_occupants"] == "1"
    ok(configure(owner, room, {"persistentroom": 1, "membersonly": 1, "moderatedroom": 1,
                               "passwordprotectedroom": 1, "roomsecret": "s3", "publicroom": 0,
                               "whois": "anyone"}))
    f, _ = feats()
    assert {"muc_persistent", "muc_membersonly", "muc_moderated", "muc_passwordprotected", "muc_hidden",
            "muc_nonanonymous"}.issubset(f), f


# ----------------------------------------------------------------------------- entering and leaving

def test_instant_room_join_and_leave_with_status_codes(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    own = instant(owner, room, "owner")
    assert {"110", "201"}.issubset(codes(own))
    it = item(own)
    assert it.get("affiliation") == "owner" and it.get("role") == "moderator"
    assert own.find(q(NS_OID, "occupant-id")) is not None
    guest = clients.add(server.online("mg"))
    before, mine, history, subject = join(guest, room, "guest")
    # The occupants already there come first, then our own presence.
    assert [b.get("from") for b in before if b.tag == C("presence")] == [f"{room}/owner"]
    assert item(mine).get("role") == "participant" and item(mine).get("affiliation") == "none"
    # Semi-anonymous: a participant does not see real JIDs; the moderator does.
    assert item(before[0]).get("jid") is None
    seen = owner.recv(is_pres_from(f"{room}/guest"))
    assert item(seen).get("jid") == guest.jid
    assert "110" not in codes(seen)
    assert subject.find(C("subject")) is not None
    guest.presence(to=f"{room}/guest", type_="unavailable")
    gone = guest.recv(is_pres_from(f"{room}/guest", "unavailable"))
    assert "110" in codes(gone) and item(gone).get("role") == "none"
    gone2 = owner.recv(is_pres_from(f"{room}/guest", "unavailable"))
    assert "110" not in codes(gone2)


def test_reserved_room_is_locked_until_configured(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    _, own, _, _ = join(owner, room, "boss")
    assert "201" in codes(own)
    other = clients.add(server.online("mx"))
    assert join_error(other, room, "early") == "item-not-found"
    r = ok(owner.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room))
    x = r.find(q(NS_OWNER, "query")).find(q(NS_DATA, "x"))
    assert x.get("type") == "form"
    vars_ = {f.get("var"): f.get("type") for f in x.findall(q(NS_DATA, "field"))}
    for v, t in [("muc#roomconfig_roomname", "text-single"), ("muc#roomconfig_persistentroom", "boolean"),
                 ("muc#roomconfig_membersonly", "boolean"), ("muc#roomconfig_roomsecret", "text-private"),
                 ("muc#roomconfig_maxusers", "list-single"), ("muc#roomconfig_whois", "list-single"),
                 ("muc#roomconfig_allowpm", "list-single")]:
        assert vars_.get(v) == t, (v, vars_)
    ok(configure(owner, room, {"roomname": "Reserved", "roomdesc": "configured first"}))
    join(other, room, "late")


def test_cancelling_the_initial_configuration_destroys_the_room(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    join(owner, room, "boss")
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='cancel'/></query>", to=room))
    owner.recv(is_pres_from(f"{room}/boss", "unavailable"))
    # Gone: the next one to join creates it anew (and owns it).
    other = clients.add(server.online("mx"))
    _, own, _, _ = join(other, room, "new")
    assert "201" in codes(own)


def test_client_without_muc_support_gets_an_instant_room(server, clients):
    room = new_room(server)
    c = clients.add(server.online("mo"))
    join_send(c, room, "plain", muc=False)
    own = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/plain" and "110" in codes(e))
    assert "201" in codes(own)
    other = clients.add(server.online("mx"))
    join(other, room, "friend")


def test_join_without_nick_or_with_bad_nick_is_jid_malformed(server, clients):
    room, owner, _ = room_with(server, clients, 1)
    c = clients.add(server.online("mb"))
    c.presence(to=room, extra=f"<x xmlns='{NS_MUC}'/>")
    e = c.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "jid-malformed"
    # An empty resourcepart is not a JID at all.
    c.send_raw(f"<presence to='{room}/'><x xmlns='{NS_MUC}'/></presence>")
    e = c.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "jid-malformed"
    # A nick resourceprep refuses (a private-use character, RFC 3920 resourceprep C.3).
    c.send_raw(f"<presence to='{room}/bad\ue000nick'><x xmlns='{NS_MUC}'/></presence>")
    e = c.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "jid-malformed"
    owner.expect_nothing(lambda e: e.tag == C("presence") and e.get("from", "").startswith(room + "/bad"))
    server.assert_healthy(owner, c)


def test_nick_in_use_is_conflict(server, clients):
    room, owner, _ = room_with(server, clients, 1)
    c = clients.add(server.online("mc"))
    assert join_error(c, room, "o") == "conflict"
    join(c, room, "other")


def test_nick_change_sends_303(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    p.presence(to=f"{room}/renamed")
    old = owner.recv(is_pres_from(f"{room}/p1", "unavailable"))
    assert "303" in codes(old) and item(old).get("nick") == "renamed"
    owner.recv(is_pres_from(f"{room}/renamed"))
    mine = p.recv(is_pres_from(f"{room}/p1", "unavailable"))
    assert {"303", "110"}.issubset(codes(mine))
    p.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/renamed" and "110" in codes(e))
    # Taken nick: conflict.
    p.presence(to=f"{room}/o")
    e = p.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "conflict"


def test_ending_the_session_leaves_the_room(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    p.close()
    gone = owner.recv(is_pres_from(f"{room}/p1", "unavailable"), timeout=10)
    assert item(gone).get("role") == "none"


def test_password_protected_room(server, clients):
    room, owner, _ = room_with(server, clients, 1,
                               {"passwordprotectedroom": 1, "roomsecret": "sesame"})
    c = clients.add(server.online("mw"))
    assert join_error(c, room, "nopw") == "not-authorized"
    assert join_error(c, room, "badpw", password="nope") == "not-authorized"
    join(c, room, "withpw", password="sesame")


def test_members_only_room(server, clients):
    room, owner, _ = room_with(server, clients, 1, {"membersonly": 1})
    c = clients.add(server.online("mm"))
    assert join_error(c, room, "stranger") == "registration-required"
    ok(admin(owner, room, f"<item affiliation='member' jid='{bare(c.jid)}'/>"))
    _, own, _, _ = join(c, room, "member")
    assert item(own).get("affiliation") == "member"
    r = ok(owner.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='member'/></query>", to=room))
    members = [i.get("jid") for i in r.find(q(NS_ADMIN, "query")).findall(q(NS_ADMIN, "item"))]
    assert members == [bare(c.jid)]
    # Revoking membership in a members-only room removes the occupant (321).
    ok(admin(owner, room, f"<item affiliation='none' jid='{bare(c.jid)}'/>"))
    gone = c.recv(is_pres_from(f"{room}/member", "unavailable"))
    assert {"321", "110"}.issubset(codes(gone))


def test_max_users_is_service_unavailable(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    ok(configure(owner, room, {"maxusers": 2}))
    c = clients.add(server.online("mf"))
    assert join_error(c, room, "third") == "service-unavailable"
    # §7.2.10's example: <error type='wait'> (the room may have room later).
    c.presence(to=f"{room}/fourth", extra=f"<x xmlns='{NS_MUC}'/>")
    e = c.recv(is_pres_from(f"{room}/fourth", "error"), timeout=10)
    assert stanza_error(e) == ("wait", "service-unavailable"), tostring(e)
    server.assert_healthy(owner, p, c)


@pytest.mark.starling_only
def test_room_creation_can_be_restricted(tmp_path_factory):
    from conftest import make_server
    s = make_server(tmp_path_factory, "mucadm")
    with open(s.config_path, "a") as f:
        f.write('\n[muc]\ncreate = "admins"\nadmins = ["boss@localhost"]\n')
    s.start()
    try:
        c = s.online("mr")
        room = f"nope{uuid.uuid4().hex[:6]}@conference.localhost"
        assert join_error(c, room, "x") == "not-allowed"
        s.add_user("boss@localhost", "bosspw")
        b = s.login("boss@localhost", "bosspw", presence=True)
        instant(b, room, "boss")
        join(c, room, "x")
        s.assert_healthy(c)
    finally:
        s.stop()


# ----------------------------------------------------------------------------- messages

def test_groupchat_is_reflected_to_all_with_stanza_id_and_occupant_id(server, clients):
    room, owner, (p1, p2) = room_with(server, clients, 3)
    groupchat(p1, room, "hello room")
    got = [recv_gc(c, room, "hello room") for c in (owner, p1, p2)]
    for m in got:
        assert m.get("from") == f"{room}/p1"
        sid = m.find(q(NS_SID, "stanza-id"))
        assert sid is not None and sid.get("by") == room
        assert m.find(q(NS_OID, "occupant-id")) is not None
    assert len({m.find(q(NS_SID, "stanza-id")).get("id") for m in got}) == 1
    # The same occupant keeps its occupant id; another has another.
    groupchat(p1, room, "again")
    again = recv_gc(owner, room, "again")
    assert again.find(q(NS_OID, "occupant-id")).get("id") == got[0].find(q(NS_OID, "occupant-id")).get("id")
    groupchat(p2, room, "other")
    other = recv_gc(owner, room, "other")
    assert other.find(q(NS_OID, "occupant-id")).get("id") != got[0].find(q(NS_OID, "occupant-id")).get("id")


def test_messages_arrive_in_one_order_for_everyone(server, clients):
    room, owner, others = room_with(server, clients, 3)
    members = [owner] + others
    sent = []
    for i in range(30):
        body = f"m{i}"
        groupchat(members[i % 3], room, body)
        sent.append(body)
    for c in members:
        seen = []
        for _ in range(30):
            e = c.recv(lambda e: e.tag == C("message") and e.get("type") == "groupchat"
                       and e.findtext(C("body")) is not None, timeout=10)
            seen.append(e.findtext(C("body")))
        assert sorted(seen) == sorted(sent)
        # Each sender's messages in the order it sent them, and everyone the same order.
        if c is owner:
            order = seen
        else:
            assert seen == order


def test_groupchat_from_a_non_occupant_is_not_acceptable(server, clients):
    room, owner, _ = room_with(server, clients, 1)
    c = clients.add(server.online("mn"))
    mid = groupchat(c, room, "let me in")
    e = c.recv(lambda e: e.tag == C("message") and e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "not-acceptable"
    owner.expect_nothing(lambda e: e.tag == C("message") and e.findtext(C("body")) == "let me in")


def test_message_to_a_room_that_does_not_exist(server, clients):
    c = clients.add(server.online("mn"))
    mid = groupchat(c, new_room(server, "nothere"), "hello?")
    e = c.recv(lambda e: e.tag == C("message") and e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "item-not-found"


def test_subject_changes_and_who_may_change_it(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    owner.send_raw(f"<message to='{room}' type='groupchat'><subject>Topic one</subject></message>")
    for c in (owner, p):
        m = c.recv(lambda e: e.tag == C("message") and e.findtext(C("subject")) == "Topic one")
        assert m.get("from") == f"{room}/o"
    mid = new_id()
    p.send_raw(f"<message id='{mid}' to='{room}' type='groupchat'><subject>Mine</subject></message>")
    e = p.recv(lambda e: e.tag == C("message") and e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "forbidden"
    ok(configure(owner, room, {"changesubject": 1}))
    p.send_raw(f"<message to='{room}' type='groupchat'><subject>Mine</subject></message>")
    owner.recv(lambda e: e.tag == C("message") and e.findtext(C("subject")) == "Mine")
    late = clients.add(server.online("ms"))
    _, _, _, subject = join(late, room, "late")
    assert subject.findtext(C("subject")) == "Mine" and subject.get("from") == f"{room}/p1"


def test_history_on_join_with_limits(server, clients):
    room, owner, _ = room_with(server, clients, 1)
    for i in range(6):
        groupchat(owner, room, f"h{i}")
        recv_gc(owner, room, f"h{i}")
    c = clients.add(server.online("mh"))
    _, _, history, _ = join(c, room, "all")
    assert [m.findtext(C("body")) for m in history] == [f"h{i}" for i in range(6)]
    for m in history:
        d = m.find(q(NS_DELAY, "delay"))
        assert d is not None and d.get("from") == room and d.get("stamp")
        assert m.get("to") == c.jid
    c.presence(to=f"{room}/all", type_="unavailable")
    c.recv(is_pres_from(f"{room}/all", "unavailable"))
    _, _, history, _ = join(c, room, "two", history={"maxstanzas": 2})
    assert [m.findtext(C("body")) for m in history] == ["h4", "h5"]
    c.presence(to=f"{room}/two", type_="unavailable")
    c.recv(is_pres_from(f"{room}/two", "unavailable"))
    _, _, history, _ = join(c, room, "none", history={"maxchars": 0})
    assert history == []
    c.presence(to=f"{room}/none", type_="unavailable")
    c.recv(is_pres_from(f"{room}/none", "unavailable"))
    _, _, history, _ = join(c, room, "since", history={"since": "2999-01-01T00:00:00Z"})
    assert history == []
    c.presence(to=f"{room}/since", type_="unavailable")
    c.recv(is_pres_from(f"{room}/since", "unavailable"))
    time.sleep(2.5)
    groupchat(owner, room, "fresh")
    recv_gc(owner, room, "fresh")
    _, _, history, _ = join(c, room, "secs", history={"seconds": 2})
    assert [m.findtext(C("body")) for m in history] == ["fresh"]


def test_private_messages_through_the_room(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    owner.message(f"{room}/p1", "psst", type_="chat")
    m = p.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "psst")
    assert m.get("from") == f"{room}/o" and m.get("type") == "chat"
    assert m.find(q(NS_USER, "x")) is not None
    assert m.find(q(NS_OID, "occupant-id")) is not None
    # A client cannot pass an occupant id of its own off as the room's.
    owner.message(f"{room}/p1", "forged", type_="chat",
                  extra=f"<occupant-id xmlns='{NS_OID}' id='forged'/>")
    m = p.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "forged")
    assert [o.get("id") for o in m.findall(q(NS_OID, "occupant-id"))] != ["forged"]
    assert len(m.findall(q(NS_OID, "occupant-id"))) == 1
    mid = owner.message(f"{room}/nobody", "?", type_="chat")
    e = owner.recv(lambda e: e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "item-not-found"
    mid = owner.message(f"{room}/p1", "gc to one", type_="groupchat")
    e = owner.recv(lambda e: e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "bad-request"
    outsider = clients.add(server.online("mq"))
    mid = outsider.message(f"{room}/p1", "hi", type_="chat")
    e = outsider.recv(lambda e: e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "not-acceptable"
    ok(configure(owner, room, {"allowpm": "none"}))
    mid = p.message(f"{room}/o", "blocked", type_="chat")
    e = p.recv(lambda e: e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "forbidden"


# ----------------------------------------------------------------------------- roles and affiliations

def test_kick_and_who_may_kick(server, clients):
    room, owner, (p1, p2) = room_with(server, clients, 3)
    r = admin(p1, room, "<item nick='p2' role='none'/>")
    assert err_of(r) == "forbidden"
    r = admin(owner, room, "<item nick='p2' role='none'><reason>spam</reason></item>")
    ok(r)
    gone = p2.recv(is_pres_from(f"{room}/p2", "unavailable"))
    assert {"307", "110"}.issubset(codes(gone))
    assert item(gone).findtext(q(NS_USER, "reason")) == "spam"
    seen = p1.recv(is_pres_from(f"{room}/p2", "unavailable"))
    assert "307" in codes(seen)
    # A moderator (not admin) may not kick the owner.
    ok(admin(owner, room, "<item nick='p1' role='moderator'/>"))
    r = admin(p1, room, "<item nick='o' role='none'/>")
    assert err_of(r) in ("not-allowed", "forbidden")
    r = admin(owner, room, "<item nick='ghost' role='none'/>")
    assert err_of(r) == "item-not-found"


def test_ban_removes_and_keeps_out(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    r = admin(p, room, f"<item affiliation='outcast' jid='{bare(owner.jid)}'/>")
    assert err_of(r) == "forbidden"
    ok(admin(owner, room, f"<item affiliation='outcast' jid='{bare(p.jid)}'/>"))
    gone = p.recv(is_pres_from(f"{room}/p1", "unavailable"))
    assert {"301", "110"}.issubset(codes(gone))
    assert join_error(p, room, "back") == "forbidden"
    r = ok(owner.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='outcast'/></query>", to=room))
    assert [i.get("jid") for i in r.find(q(NS_ADMIN, "query")).findall(q(NS_ADMIN, "item"))] == [bare(p.jid)]


def test_voice_in_a_moderated_room(server, clients):
    room, owner, _ = room_with(server, clients, 1, {"moderatedroom": 1})
    p = clients.add(server.online("mv"))
    _, own, _, _ = join(p, room, "quiet")
    assert item(own).get("role") == "visitor"
    mid = groupchat(p, room, "can I speak")
    e = p.recv(lambda e: e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "forbidden"
    ok(admin(owner, room, "<item nick='quiet' role='participant'/>"))
    now = p.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/quiet" and e.get("type") is None)
    assert item(now).get("role") == "participant"
    groupchat(p, room, "thanks")
    recv_gc(owner, room, "thanks")
    r = ok(owner.iq("get", f"<query xmlns='{NS_ADMIN}'><item role='participant'/></query>", to=room))
    assert [i.get("nick") for i in r.find(q(NS_ADMIN, "query")).findall(q(NS_ADMIN, "item"))] == ["quiet"]
    r = p.iq("get", f"<query xmlns='{NS_ADMIN}'><item role='moderator'/></query>", to=room)
    assert err_of(r) == "forbidden"


def test_admin_changes_need_the_affiliation(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    stranger = clients.add(server.online("mz"))
    for who in (p, stranger):
        assert err_of(admin(who, room, f"<item affiliation='member' jid='{bare(stranger.jid)}'/>")) == "forbidden"
        assert err_of(who.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='member'/></query>",
                             to=room)) == "forbidden"
        assert err_of(who.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room)) == "forbidden"
    # An admin may not make owners or admins.
    ok(admin(owner, room, f"<item affiliation='admin' jid='{bare(p.jid)}'/>"))
    r = admin(p, room, f"<item affiliation='owner' jid='{bare(stranger.jid)}'/>")
    assert err_of(r) in ("not-allowed", "forbidden")
    ok(admin(p, room, f"<item affiliation='member' jid='{bare(stranger.jid)}'/>"))
    # Bad items.
    assert err_of(admin(owner, room, "<item affiliation='emperor' jid='x@localhost'/>")) == "bad-request"
    assert err_of(admin(owner, room, "<item role='none'/>")) == "bad-request"
    # The last owner stays.
    assert err_of(admin(owner, room, f"<item affiliation='member' jid='{bare(owner.jid)}'/>")) == "conflict"
    server.assert_healthy(owner, p)


def test_config_form_with_wrong_types_is_refused(server, clients):
    room, owner, _ = room_with(server, clients, 1)
    assert err_of(configure(owner, room, {"persistentroom": "perhaps"})) == "bad-request"
    assert err_of(configure(owner, room, {"maxusers": "lots"})) == "bad-request"
    assert err_of(configure(owner, room, {"whois": "everybody"})) == "bad-request"
    assert err_of(configure(owner, room, {"maxusers": 0})) == "not-acceptable"
    assert err_of(configure(owner, room, {"passwordprotectedroom": 1})) == "not-acceptable"
    r = owner.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'>"
                 f"<field var='FORM_TYPE'><value>urn:other</value></field></x></query>", to=room)
    assert err_of(r) == "bad-request"
    # Nothing of a refused form was applied.
    r = ok(owner.iq("get", f"<query xmlns='{NS_INFO}'/>", to=room))
    f = {x.get("var") for x in r.find(q(NS_INFO, "query")).findall(q(NS_INFO, "feature"))}
    assert "muc_temporary" in f and "muc_unsecured" in f
    server.assert_healthy(owner)


def test_configuration_change_is_announced(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    ok(configure(owner, room, {"whois": "anyone"}))
    m = p.recv(lambda e: e.tag == C("message") and e.get("from") == room and codes(e))
    assert codes(m) == {"172"}, "a privacy change only (XEP-0045 10.2.1): " + tostring(m)
    ok(configure(owner, room, {"roomname": "now named"}))
    m = p.recv(lambda e: e.tag == C("message") and e.get("from") == room and codes(e))
    assert codes(m) == {"104"}, tostring(m)


def test_destroy_with_reason_and_alternate_venue(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    alt = new_room(server, "alt")
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'><destroy jid='{alt}'><reason>moving</reason></destroy></query>",
                to=room))
    gone = p.recv(is_pres_from(f"{room}/p1", "unavailable"))
    d = gone.find(q(NS_USER, "x")).find(q(NS_USER, "destroy"))
    assert d is not None and d.get("jid") == alt and d.findtext(q(NS_USER, "reason")) == "moving"
    r = p.iq("get", f"<query xmlns='{NS_INFO}'/>", to=room)
    assert err_of(r) == "item-not-found"
    r = ok(p.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=service(server)))
    assert room not in [i.get("jid") for i in r.iter(q(NS_ITEMS, "item"))]


# ----------------------------------------------------------------------------- invitations, self-ping, archive

def test_mediated_invitation_and_decline(server, clients):
    room, owner, _ = room_with(server, clients, 1, {"passwordprotectedroom": 1, "roomsecret": "pw"})
    guest = clients.add(server.online("mi"))
    owner.send_raw(f"<message to='{room}'><x xmlns='{NS_USER}'><invite to='{bare(guest.jid)}'>"
                   f"<reason>join us</reason></invite></x></message>")
    m = guest.recv(lambda e: e.tag == C("message") and e.get("from") == room)
    inv = m.find(q(NS_USER, "x")).find(q(NS_USER, "invite"))
    assert inv.get("from") == owner.jid and inv.findtext(q(NS_USER, "reason")) == "join us"
    assert m.find(q(NS_USER, "x")).findtext(q(NS_USER, "password")) == "pw"
    guest.send_raw(f"<message to='{room}'><x xmlns='{NS_USER}'><decline to='{owner.jid}'>"
                   f"<reason>busy</reason></decline></x></message>")
    d = owner.recv(lambda e: e.tag == C("message") and e.get("from") == room
                   and e.find(q(NS_USER, "x")) is not None
                   and e.find(q(NS_USER, "x")).find(q(NS_USER, "decline")) is not None)
    dec = d.find(q(NS_USER, "x")).find(q(NS_USER, "decline"))
    assert dec.get("from") == bare(guest.jid) and dec.findtext(q(NS_USER, "reason")) == "busy"


def test_direct_invitation_passes_through(server, clients):
    room, owner, _ = room_with(server, clients, 1)
    guest = clients.add(server.online("mj"))
    owner.send_raw(f"<message to='{guest.jid}'><x xmlns='jabber:x:conference' jid='{room}' reason='come'/></message>")
    m = guest.recv(lambda e: e.tag == C("message") and e.find(q("jabber:x:conference", "x")) is not None)
    assert m.find(q("jabber:x:conference", "x")).get("jid") == room


def test_self_ping(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    r = ok(p.iq("get", f"<ping xmlns='{NS_PING}'/>", to=f"{room}/p1"))
    assert r.get("from") == f"{room}/p1"
    outsider = clients.add(server.online("mk"))
    r = outsider.iq("get", f"<ping xmlns='{NS_PING}'/>", to=f"{room}/p1")
    assert err_of(r) == "not-acceptable"
    # Pinging another occupant goes to that occupant's client, which answers.
    iid = new_id("pp")
    p.send_raw(f"<iq type='get' id='{iid}' to='{room}/o'><ping xmlns='{NS_PING}'/></iq>")
    fwd = owner.recv(lambda e: e.tag == C("iq") and e.get("id") == iid)
    assert fwd.get("from") == f"{room}/p1"
    owner.send_raw(f"<iq type='result' id='{iid}' to='{room}/p1'/>")
    back = p.recv(lambda e: e.tag == C("iq") and e.get("id") == iid)
    assert back.get("type") == "result" and back.get("from") == f"{room}/o"


def test_room_archive_query(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    for i in range(4):
        groupchat(p, room, f"a{i}")
        recv_gc(owner, room, f"a{i}")
    qid = new_id("q")
    iid = new_id("mam")
    owner.send_raw(f"<iq type='set' id='{iid}' to='{room}'><query xmlns='{NS_MAM}' queryid='{qid}'/></iq>")
    bodies = []
    for _ in range(10):
        e = owner.recv(lambda e: (e.tag == C("iq") and e.get("id") == iid) or
                       (e.tag == C("message") and e.find(q(NS_MAM, "result")) is not None))
        if e.tag == C("iq"):
            assert e.get("type") == "result", tostring(e)
            break
        assert e.get("from") == room
        fwd = e.find(q(NS_MAM, "result")).find(q("urn:xmpp:forward:0", "forwarded"))
        msg = fwd.find(C("message"))
        bodies.append(msg.findtext(C("body")))
        assert msg.get("from") == f"{room}/p1"
    assert bodies == [f"a{i}" for i in range(4)]
    # Members-only: a stranger may not read it.
    ok(configure(owner, room, {"membersonly": 1}))
    stranger = clients.add(server.online("ma"))
    r = stranger.iq("set", f"<query xmlns='{NS_MAM}'/>", to=room)
    assert err_of(r) == "forbidden"


def test_persistent_room_outlives_its_occupants(server, clients):
    room, owner, _ = room_with(server, clients, 1, {"persistentroom": 1, "roomname": "Stays"})
    groupchat(owner, room, "before")
    recv_gc(owner, room, "before")
    owner.presence(to=f"{room}/o", type_="unavailable")
    owner.recv(is_pres_from(f"{room}/o", "unavailable"))
    r = ok(owner.iq("get", f"<query xmlns='{NS_INFO}'/>", to=room))
    assert r.find(q(NS_INFO, "query")).find(q(NS_INFO, "identity")).get("name") == "Stays"
    c = clients.add(server.online("mt"))
    _, own, history, _ = join(c, room, "next")
    assert "201" not in codes(own)
    assert [m.findtext(C("body")) for m in history] == ["before"]


def test_temporary_room_goes_when_empty(server, clients):
    room, owner, _ = room_with(server, clients, 1)
    owner.presence(to=f"{room}/o", type_="unavailable")
    owner.recv(is_pres_from(f"{room}/o", "unavailable"))
    r = owner.iq("get", f"<query xmlns='{NS_INFO}'/>", to=room)
    assert err_of(r) == "item-not-found"


# ----------------------------------------------------------------------------- slixmpp

slixmpp = pytest.importorskip("slixmpp")


def _slix(server, jid, pw):
    import ssl
    c = slixmpp.ClientXMPP(jid, pw)
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0045")
    c.ssl_context.check_hostname = False
    c.ssl_context.verify_mode = ssl.CERT_NONE
    return c


def test_slixmpp_join_and_talk(server):
    ajid, _, apw = server.new_user("sma")
    bjid, _, bpw = server.new_user("smb")
    room = new_room(server, "slix")

    async def scenario():
        a, b = _slix(server, ajid, apw), _slix(server, bjid, bpw)
        for c in (a, b):
            started = asyncio.get_event_loop().create_future()
            c.add_event_handler("session_start", lambda _, f=started: f.done() or f.set_result(True))
            c.connect(server.host, server.c2s_port)
            await asyncio.wait_for(started, 15)
            c.send_presence()
        await a["xep_0045"].join_muc_wait(room, "alice", maxstanzas=0, timeout=10)
        # An instant room: submit an empty form.
        form = a["xep_0004"].make_form(ftype="submit")
        await a["xep_0045"].set_room_config(room, form, timeout=10)
        got = asyncio.get_event_loop().create_future()
        b.add_event_handler("groupchat_message",
                            lambda m: m["body"] == "from alice" and not got.done() and got.set_result(m))
        await b["xep_0045"].join_muc_wait(room, "bob", maxstanzas=0, timeout=10)
        roster = a["xep_0045"].get_roster(room)
        assert "alice" in roster
        a.send_message(mto=room, mbody="from alice", mtype="groupchat")
        m = await asyncio.wait_for(got, 10)
        assert m["from"].resource == "alice"
        info = await b["xep_0030"].get_info(jid=room, timeout=10)
        assert NS_MUC in info["disco_info"]["features"]
        for c in (a, b):
            c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_turning_members_only_removes_non_members(server, clients):
    room, owner, (p1, p2) = room_with(server, clients, 3)
    ok(admin(owner, room, f"<item affiliation='member' jid='{bare(p1.jid)}'/>"))
    ok(configure(owner, room, {"membersonly": 1}))
    gone = p2.recv(is_pres_from(f"{room}/p2", "unavailable"))
    assert {"322", "110"}.issubset(codes(gone)), tostring(gone)
    owner.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/p2"
               and e.get("type") == "unavailable" and "322" in codes(e))
    p1.expect_nothing(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/p1"
                      and e.get("type") == "unavailable", timeout=0.5)


@pytest.mark.starling_only
def test_a_burst_is_archived_in_few_writes_and_reflected_in_order(server, clients):
    """Messages that queue while the room's archive write is in flight are archived
    together (one durable write for the run), and still reflected in the order sent."""
    room, owner, (p,) = room_with(server, clients, 2)
    writes0 = metric_sum(server, "starling_muc_archive_writes_total")
    n = 60
    for i in range(n):
        groupchat(owner, room, f"b{i}")
    seen = [p.recv(lambda e: e.tag == C("message") and e.get("type") == "groupchat"
                   and e.findtext(C("body")) is not None, timeout=10).findtext(C("body")) for _ in range(n)]
    assert seen == [f"b{i}" for i in range(n)]
    writes = metric_sum(server, "starling_muc_archive_writes_total") - writes0
    print(f"FIGURE: muc_burst_archive_writes={writes:.0f} messages={n}")
    assert 1 <= writes < n, writes


def test_voice_request_goes_to_moderators_and_approval_gives_voice(server, clients):
    room, owner, _ = room_with(server, clients, 1, {"moderatedroom": 1})
    v = clients.add(server.online("mvr"))
    _, own, _, _ = join(v, room, "visitor")
    assert item(own).get("role") == "visitor"
    req = ("<x xmlns='jabber:x:data' type='submit'>"
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
           "<field var='muc#role' type='list-single'><value>participant</value></field></x>")
    v.send_raw(f"<message to='{room}'>{req}</message>")
    m = owner.recv(lambda e: e.tag == C("message") and e.get("from") == room
                   and e.find(q(NS_DATA, "x")) is not None)
    fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in m.find(q(NS_DATA, "x")).findall(q(NS_DATA, "field"))}
    assert fields["FORM_TYPE"] == "http://jabber.org/protocol/muc#request"
    assert fields["muc#roomnick"] == "visitor" and fields["muc#jid"] == v.jid
    owner.send_raw(f"<message to='{room}'><x xmlns='jabber:x:data' type='submit'>"
                   "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
                   "<field var='muc#role'><value>participant</value></field>"
                   "<field var='muc#roomnick'><value>visitor</value></field>"
                   "<field var='muc#request_allow'><value>true</value></field></x></message>")
    now = v.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/visitor" and e.get("type") is None)
    assert item(now).get("role") == "participant"
    # A participant asking again: not-acceptable.
    mid = new_id()
    v.send_raw(f"<message id='{mid}' to='{room}'>{req}</message>")
    e = v.recv(lambda e: e.get("id") == mid and e.get("type") == "error")
    assert stanza_error(e)[1] == "not-acceptable"


@pytest.mark.starling_only
def test_shutdown_tells_occupants_332(fresh_server, clients):
    s = fresh_server
    c = clients.add(s.online("msd"))
    room = f"sd{uuid.uuid4().hex[:8]}@conference.{s.domain}"
    own = instant(c, room, "me")
    c.drain(0.3)
    s.stop()
    p = c.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/me"
               and e.get("type") == "unavailable", timeout=10)
    assert {"332", "110"}.issubset(codes(p)), tostring(p)
    # XEP-0421 4: on every presence the room sends, this one too
    ids = [o.get("id") for o in p.findall(q(NS_OID, "occupant-id"))]
    assert ids == [own.find(q(NS_OID, "occupant-id")).get("id")], tostring(p)


def test_nick_registration_reserves_the_nick(server, clients):
    room, owner, _ = room_with(server, clients, 1, {"membersonly": 1})
    u = clients.add(server.online("mrg"))
    r = ok(u.iq("get", "<query xmlns='jabber:iq:register'/>", to=room))
    x = r.find(q("jabber:iq:register", "query")).find(q(NS_DATA, "x"))
    assert "muc#register_roomnick" in [f.get("var") for f in x.findall(q(NS_DATA, "field"))]
    sub = ("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>"
           "<field var='muc#register_roomnick'><value>{}</value></field></x></query>")
    ok(u.iq("set", sub.format("reserved"), to=room))
    r = ok(u.iq("get", "<query xmlns='jabber:iq:register'/>", to=room))
    qel = r.find(q("jabber:iq:register", "query"))
    assert qel.find(q("jabber:iq:register", "registered")) is not None
    assert qel.findtext(q("jabber:iq:register", "username")) == "reserved"
    r = ok(u.iq("get", f"<query xmlns='{NS_INFO}' node='x-roomuser-item'/>", to=room))
    assert r.find(q(NS_INFO, "query")).find(q(NS_INFO, "identity")).get("name") == "reserved"
    # Registered: a member of the members-only room, under its nick.
    _, own, _, _ = join(u, room, "reserved")
    assert item(own).get("affiliation") == "member"
    # Someone else may neither register nor use the nick.
    other = clients.add(server.online("mrh"))
    assert err_of(other.iq("set", sub.format("reserved"), to=room)) == "conflict"
    ok(admin(owner, room, f"<item affiliation='member' jid='{bare(other.jid)}'/>"))
    u.presence(to=f"{room}/reserved", type_="unavailable")
    u.recv(is_pres_from(f"{room}/reserved", "unavailable"))
    assert join_error(other, room, "reserved") == "conflict"
    assert err_of(other.iq("set", sub.format(""), to=room)) == "not-acceptable"
