"""XEP-0045 conformance details (and XEP-0313 on rooms) the main MUC tests do not pin down,
written from the XEP text: what a client may not forge, errors in the order the XEP puts the
checks, and the room archive's MUST/SHOULD rules (§5.1.2). Raw XML throughout.
"""

import uuid

import pytest

from rawxmpp import C, q, stanza_error, tostring
from test_muc import (NS_ADMIN, NS_DATA, NS_MAM, NS_MUC, NS_OWNER, NS_USER, admin, codes, configure,
                      err_of, groupchat, instant, is_pres_from, item, join, join_error, new_room, ok,
                      recv_gc, room_with)

pytestmark = [pytest.mark.timeout(120)]

NS_FWD = "urn:xmpp:forward:0"


def room_archive(c, room, inner=""):
    """(forwarded messages, answer IQ) of a MAM query on the room."""
    qid = f"q{uuid.uuid4().hex[:6]}"
    iid = f"m{uuid.uuid4().hex[:6]}"
    c.send_raw(f"<iq type='set' id='{iid}' to='{room}'><query xmlns='{NS_MAM}' queryid='{qid}'>"
               f"{inner}</query></iq>")
    out = []
    for _ in range(200):
        e = c.recv(lambda e: (e.tag == C("iq") and e.get("id") == iid)
                   or (e.tag == C("message") and e.find(q(NS_MAM, "result")) is not None
                       and e.find(q(NS_MAM, "result")).get("queryid") == qid), timeout=10)
        if e.tag == C("iq"):
            return out, e
        out.append(e.find(q(NS_MAM, "result")).find(q(NS_FWD, "forwarded")).find(C("message")))
    raise AssertionError("too many results")


# ----------------------------------------------------------------------------- forged data

def test_a_client_cannot_forge_muc_user_data_in_a_groupchat_message(server, clients):
    """XEP-0313 §5.1.2: the archiving entity MUST strip any pre-existing muc#user <x/> from
    room messages; a reflected message is the room's word on who sent it, so a forged
    <item jid=.../> must reach neither the occupants nor the archive."""
    room, owner, (p,) = room_with(server, clients, 2)
    forged = (f"<x xmlns='{NS_USER}'><item jid='boss@{server.domain}/desk' affiliation='owner' "
              f"role='moderator'/><status code='110'/></x>")
    p.send_raw(f"<message to='{room}' type='groupchat' id='f1'><body>forged</body>{forged}</message>")
    for c in (owner, p):
        got = recv_gc(c, room, "forged")
        assert got.find(q(NS_USER, "x")) is None, tostring(got)
    msgs, fin = room_archive(owner, room)
    ok(fin)
    m = [m for m in msgs if m.findtext(C("body")) == "forged"]
    assert len(m) == 1
    x = m[0].find(q(NS_USER, "x"))
    assert x is None or all(i.get("jid") != f"boss@{server.domain}/desk" for i in x.findall(q(NS_USER, "item"))), \
        tostring(m[0])
    server.assert_healthy(owner, p)


# ----------------------------------------------------------------------------- room archive

def test_room_archive_results_have_no_to_and_the_occupant_as_sender(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    groupchat(p, room, "archived one")
    recv_gc(owner, room, "archived one")
    msgs, fin = room_archive(p, room)
    ok(fin)
    m = [m for m in msgs if m.findtext(C("body")) == "archived one"][0]
    assert m.get("to") is None and m.get("from") == f"{room}/p1", tostring(m)
    assert m.get("type") == "groupchat"


def test_room_archive_shows_real_jids_where_the_requester_may_see_them(server, clients):
    """XEP-0313 §5.1.2: in a non-anonymous room, or to a requester allowed to see real JIDs
    (a moderator), an archived message carries muc#user <item jid=.../> of its sender; in a
    semi-anonymous room a participant never sees it."""
    room, owner, (p, p2) = room_with(server, clients, 3)
    groupchat(p, room, "who am i")
    recv_gc(owner, room, "who am i")

    def sender_jid(c):
        msgs, fin = room_archive(c, room)
        ok(fin)
        m = [m for m in msgs if m.findtext(C("body")) == "who am i"][0]
        x = m.find(q(NS_USER, "x"))
        it = None if x is None else x.find(q(NS_USER, "item"))
        return None if it is None else it.get("jid")

    # Semi-anonymous: the owner (a moderator) sees it, another participant does not.
    assert sender_jid(owner) == p.jid
    assert sender_jid(p2) is None
    # 'with' a real bare JID (§4.1.1: the publisher): only for who may know it.
    by_real = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
               f"<value>{NS_MAM}</value></field><field var='with'><value>{p.bare}</value></field></x>")
    msgs, fin = room_archive(owner, room, by_real)
    assert [m.findtext(C("body")) for m in msgs] == ["who am i"]
    msgs, fin = room_archive(p2, room, by_real)
    ok(fin)
    assert msgs == []
    # A participant made moderator may see real JIDs (§5.1.2: "at the time of the query").
    ok(admin(owner, room, "<item nick='p2' role='moderator'/>"))
    p2.drain(0.3)
    assert sender_jid(p2) == p.jid
    ok(admin(owner, room, "<item nick='p2' role='participant'/>"))
    p2.drain(0.3)
    assert sender_jid(p2) is None
    # Non-anonymous: everyone does.
    ok(configure(owner, room, {"whois": "anyone"}))
    for c in (owner, p, p2):
        c.drain(0.3)
    assert sender_jid(p2) == p.jid


def test_room_archive_with_filters_by_occupant_jid(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    groupchat(p, room, "from p1")
    recv_gc(owner, room, "from p1")
    groupchat(owner, room, "from o")
    recv_gc(owner, room, "from o")
    form = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{NS_MAM}</value></field><field var='with'><value>{room}/p1</value></field></x>")
    msgs, fin = room_archive(owner, room, form)
    ok(fin)
    assert [m.findtext(C("body")) for m in msgs] == ["from p1"]


def test_room_archive_names_the_session_that_sent_under_a_shared_nick(server, clients):
    """Two sessions of one user under one nick (XEP-0045 §7.2.1 allows it): in a non-anonymous
    room the archived message names, in <item jid/>, the real full JID of the session that
    sent it, not the first session's."""
    from test_muc_sessions import second_session
    room, owner, (p,) = room_with(server, clients, 2)
    ok(configure(owner, room, {"whois": "anyone"}))
    for c in (owner, p):
        c.drain(0.3)
    p2 = second_session(server, clients, p, "second")
    join(p2, room, "p1")
    p2.drain(0.5)
    groupchat(p2, room, "from the second")
    recv_gc(owner, room, "from the second")
    groupchat(p, room, "from the first")
    recv_gc(owner, room, "from the first")
    msgs, fin = room_archive(owner, room)
    ok(fin)
    sent_by = {m.findtext(C("body")): m.find(q(NS_USER, "x")).find(q(NS_USER, "item")).get("jid")
               for m in msgs if m.findtext(C("body"))}
    assert sent_by == {"from the second": p2.jid, "from the first": p.jid}, sent_by


def test_room_archive_refuses_outcasts_and_non_members_of_members_only_rooms(server, clients):
    """XEP-0313 §5.1.2: only who may enter may read: not an outcast of an open room, only
    members (and up) of a members-only one."""
    room, owner, _ = room_with(server, clients, 1)
    groupchat(owner, room, "secret")
    recv_gc(owner, room, "secret")
    outcast = clients.add(server.online("mx"))
    ok(admin(owner, room, f"<item affiliation='outcast' jid='{outcast.bare}'/>"))
    r = outcast.iq("set", f"<query xmlns='{NS_MAM}'/>", to=room)
    assert err_of(r) == "forbidden"
    stranger = clients.add(server.online("ms"))
    msgs, fin = room_archive(stranger, room)
    ok(fin)
    assert "secret" in [m.findtext(C("body")) for m in msgs]
    ok(configure(owner, room, {"membersonly": 1}))
    r = stranger.iq("set", f"<query xmlns='{NS_MAM}'/>", to=room)
    assert err_of(r) == "forbidden"
    ok(admin(owner, room, f"<item affiliation='member' jid='{stranger.bare}'/>"))
    msgs, fin = room_archive(stranger, room)
    ok(fin)
    assert "secret" in [m.findtext(C("body")) for m in msgs]
    server.assert_healthy(owner, stranger)


# ----------------------------------------------------------------------------- errors

def test_errors_of_the_admin_use_cases(server, clients):
    """XEP-0045 §8, §9, §10: who may do what, and the condition each refusal names."""
    room, owner, (p, p2) = room_with(server, clients, 3)
    # A participant may not change roles (§8: only moderators): <forbidden/>, also for a nick
    # that is not there (no probing of who is in the room).
    assert err_of(admin(p, room, "<item nick='p2' role='visitor'/>")) == "forbidden"
    assert err_of(admin(p, room, "<item nick='nobody' role='visitor'/>")) == "forbidden"
    assert err_of(admin(p, room, "<item nick='p2' role='none'/>")) == "forbidden"
    # A moderator kicking a nick not in the room: <item-not-found/>.
    assert err_of(admin(owner, room, "<item nick='nobody' role='none'/>")) == "item-not-found"
    # Lists: a participant asks for the role lists / the ban list: <forbidden/>.
    assert err_of(p.iq("get", f"<query xmlns='{NS_ADMIN}'><item role='moderator'/></query>", to=room)) == "forbidden"
    assert err_of(p.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='outcast'/></query>", to=room)) == "forbidden"
    # A member may not grant membership (§9.3: admins): <forbidden/>.
    ok(admin(owner, room, f"<item affiliation='member' jid='{p.bare}'/>"))
    assert err_of(admin(p, room, f"<item affiliation='member' jid='{p2.bare}'/>")) == "forbidden"
    # Owner things by a member: the configuration form, destroying the room (§10.2, §10.9).
    assert err_of(p.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room)) == "forbidden"
    assert err_of(p.iq("set", f"<query xmlns='{NS_OWNER}'><destroy/></query>", to=room)) == "forbidden"
    # ... and by an admin.
    ok(admin(owner, room, f"<item affiliation='admin' jid='{p2.bare}'/>"))
    assert err_of(p2.iq("set", f"<query xmlns='{NS_OWNER}'><destroy/></query>", to=room)) == "forbidden"
    # The only owner giving up ownership (§10.6, §10.7): <conflict/>.
    assert err_of(admin(owner, room, f"<item affiliation='admin' jid='{owner.bare}'/>")) == "conflict"
    assert err_of(admin(owner, room, f"<item affiliation='none' jid='{owner.bare}'/>")) == "conflict"
    # The room is unchanged and works.
    groupchat(p, room, "still here")
    recv_gc(owner, room, "still here")
    server.assert_healthy(owner, p, p2)


def test_message_errors(server, clients):
    """§7.4: a visitor of a moderated room may not speak (<forbidden/>); a non-occupant
    (<not-acceptable/>); §7.5: a private message to a nick not in the room (<item-not-found/>),
    of type groupchat (<bad-request/>)."""
    room, owner, (p,) = room_with(server, clients, 2, {"moderatedroom": 1})
    stranger = clients.add(server.online("mz"))
    stranger.send_raw(f"<message to='{room}' type='groupchat' id='s1'><body>x</body></message>")
    e = stranger.recv(lambda e: e.tag == C("message") and e.get("id") == "s1", timeout=10)
    assert stanza_error(e)[1] == "not-acceptable", tostring(e)
    assert e.get("from") == room
    ok(admin(owner, room, "<item nick='p1' role='visitor'/>"))
    p.drain(0.3)
    p.send_raw(f"<message to='{room}' type='groupchat' id='v1'><body>x</body></message>")
    e = p.recv(lambda e: e.tag == C("message") and e.get("id") == "v1", timeout=10)
    assert stanza_error(e)[1] == "forbidden", tostring(e)
    p.send_raw(f"<message to='{room}/ghost' type='chat' id='pm1'><body>x</body></message>")
    e = p.recv(lambda e: e.tag == C("message") and e.get("id") == "pm1", timeout=10)
    assert stanza_error(e)[1] == "item-not-found", tostring(e)
    p.send_raw(f"<message to='{room}/o' type='groupchat' id='pm2'><body>x</body></message>")
    e = p.recv(lambda e: e.tag == C("message") and e.get("id") == "pm2", timeout=10)
    assert stanza_error(e)[1] == "bad-request", tostring(e)
    server.assert_healthy(owner, p, stranger)


def test_join_errors_and_their_order(server, clients):
    """§7.2: banned (<forbidden/>), members-only (<registration-required/>), password
    (<not-authorized/>), full (<service-unavailable/>); the error comes from the occupant
    JID asked for, and the client is not in the room afterwards."""
    room, owner, _ = room_with(server, clients, 1, {"passwordprotectedroom": 1, "roomsecret": "pw",
                                                     "maxusers": 2})
    c = clients.add(server.online("mj"))
    assert join_error(c, room, "c") == "not-authorized"
    assert join_error(c, room, "c", password="wrong") == "not-authorized"
    join(c, room, "c", password="pw")
    d = clients.add(server.online("mk"))
    assert join_error(d, room, "d", password="pw") == "service-unavailable"
    # A ban is checked before the password.
    ok(admin(owner, room, f"<item affiliation='outcast' jid='{d.bare}'/>"))
    assert join_error(d, room, "d") == "forbidden"
    ok(admin(owner, room, f"<item affiliation='member' jid='{c.bare}'/>"))
    ok(configure(owner, room, {"membersonly": 1, "maxusers": 20}))
    e = clients.add(server.online("ml"))
    assert join_error(e, room, "e", password="pw") == "registration-required"
    groupchat(owner, room, "members")
    recv_gc(c, room, "members")
    e.expect_nothing(lambda x: x.tag == C("message") and x.findtext(C("body")) == "members")
    server.assert_healthy(owner, c, d, e)


def test_nick_change_errors(server, clients):
    """§7.6: to a nick in use: <conflict/>; to an invalid nick: <jid-malformed/>; either way
    the occupant keeps its nick."""
    room, owner, (p,) = room_with(server, clients, 2)
    p.presence(to=f"{room}/o")
    e = p.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "conflict" and e.get("from") == f"{room}/o", tostring(e)
    p.send_raw(f"<presence to='{room}/bad\ue000nick'/>")
    e = p.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "jid-malformed", tostring(e)
    owner.expect_nothing(lambda e: e.tag == C("presence") and e.get("from", "").startswith(room + "/"))
    groupchat(p, room, "same nick")
    assert recv_gc(owner, room, "same nick").get("from") == f"{room}/p1"


# ----------------------------------------------------------------------------- status codes

def test_status_codes_on_join_in_a_logged_non_anonymous_room(server, clients):
    """§7.2.3/§7.2.12: 100 (non-anonymous) and 170 (logged) in the joining occupant's own
    presence, with 110; never in what the others get."""
    room, owner, _ = room_with(server, clients, 1, {"whois": "anyone", "enablelogging": 1})
    c = clients.add(server.online("mc"))
    _, own, _, _ = join(c, room, "c")
    assert {"100", "110", "170"}.issubset(codes(own)), tostring(own)
    assert "201" not in codes(own)
    seen = owner.recv(is_pres_from(f"{room}/c"))
    assert not {"100", "110", "170"} & codes(seen)


def test_status_codes_of_removals(server, clients):
    """§8.2 kick: 307; §9.1 ban: 301; §9.4/§10.2 removal from a members-only room: 321 and
    322; each to the removed occupant with 110 and to the others without."""
    room, owner, (p, p2, p3) = room_with(server, clients, 4)
    ok(admin(owner, room, "<item nick='p1' role='none'><reason>out</reason></item>"))
    mine = p.recv(is_pres_from(f"{room}/p1", "unavailable"))
    assert {"307", "110"}.issubset(codes(mine)), tostring(mine)
    assert item(mine).findtext(q(NS_USER, "reason")) == "out"
    theirs = owner.recv(is_pres_from(f"{room}/p1", "unavailable"))
    assert "307" in codes(theirs) and "110" not in codes(theirs)
    ok(admin(owner, room, f"<item affiliation='outcast' jid='{p2.bare}'/>"))
    mine = p2.recv(is_pres_from(f"{room}/p2", "unavailable"))
    assert {"301", "110"}.issubset(codes(mine)) and item(mine).get("affiliation") == "outcast"
    owner.recv(is_pres_from(f"{room}/p2", "unavailable"))
    ok(configure(owner, room, {"membersonly": 1}))
    mine = p3.recv(is_pres_from(f"{room}/p3", "unavailable"))
    assert {"322", "110"}.issubset(codes(mine)), tostring(mine)
    # 321: a member removed from the member list of a members-only room.
    m = clients.add(server.online("mm"))
    ok(admin(owner, room, f"<item affiliation='member' jid='{m.bare}'/>"))
    join(m, room, "m")
    owner.drain(0.3)
    ok(admin(owner, room, f"<item affiliation='none' jid='{m.bare}'/>"))
    mine = m.recv(is_pres_from(f"{room}/m", "unavailable"))
    assert {"321", "110"}.issubset(codes(mine)), tostring(mine)


def test_status_codes_of_configuration_changes(server, clients):
    """§10.2.1: a change that touches privacy is announced with its own code only (170 / 171
    logging on / off, 172 / 173 non- / semi-anonymous); 104 is for any other change (with
    those when one form makes both kinds); a form that changes nothing announces nothing.
    Each announcement is a groupchat message from the room with only status codes."""
    room, owner, (p,) = room_with(server, clients, 2)

    def announced():
        m = p.recv(lambda e: e.tag == C("message") and e.get("from") == room
                   and e.find(q(NS_USER, "x")) is not None, timeout=10)
        assert m.get("type") == "groupchat"
        assert m.find(C("body")) is None and m.find(C("subject")) is None, tostring(m)
        x = m.find(q(NS_USER, "x"))
        assert all(el.tag == q(NS_USER, "status") for el in x), tostring(m)
        return codes(m)

    ok(configure(owner, room, {"roomname": "renamed"}))
    assert announced() == {"104"}
    ok(configure(owner, room, {"whois": "anyone"}))
    assert announced() == {"172"}
    ok(configure(owner, room, {"enablelogging": 1}))
    assert announced() == {"170"}
    ok(configure(owner, room, {"whois": "moderators", "enablelogging": 0}))
    assert announced() == {"173", "171"}
    ok(configure(owner, room, {"roomdesc": "a place", "enablelogging": 1}))
    assert announced() == {"104", "170"}
    ok(configure(owner, room, {"maxusers": 30}))
    assert announced() == {"104"}
    # the same values again: no change, nothing said
    ok(configure(owner, room, {"roomdesc": "a place", "enablelogging": 1}))
    p.expect_nothing(lambda e: e.tag == C("message") and e.get("from") == room, 1.0,
                     what="an announcement of no change")
    server.assert_healthy(owner, p)


def test_role_change_presence_has_110_for_the_target(server, clients):
    room, owner, (p,) = room_with(server, clients, 2)
    ok(admin(owner, room, "<item nick='p1' role='visitor'/>"))
    mine = p.recv(is_pres_from(f"{room}/p1"))
    assert "110" in codes(mine) and item(mine).get("role") == "visitor"
    theirs = owner.recv(is_pres_from(f"{room}/p1"))
    assert "110" not in codes(theirs) and item(theirs).get("role") == "visitor"


def test_destroy_tells_every_occupant(server, clients):
    """§10.9: every occupant gets unavailable presence with <destroy/> (and the reason)."""
    room, owner, (p,) = room_with(server, clients, 2)
    ok(owner.iq("set", f"<query xmlns='{NS_OWNER}'><destroy jid='elsewhere@{server.domain}'>"
                       f"<reason>bye</reason></destroy></query>", to=room))
    for c, nick in ((owner, "o"), (p, "p1")):
        gone = c.recv(is_pres_from(f"{room}/{nick}", "unavailable"))
        d = gone.find(q(NS_USER, "x")).find(q(NS_USER, "destroy"))
        assert d is not None and d.get("jid") == f"elsewhere@{server.domain}", tostring(gone)
        assert d.findtext(q(NS_USER, "reason")) == "bye"
    # Gone: a message to it is item-not-found.
    p.send_raw(f"<message to='{room}' type='groupchat' id='after'><body>x</body></message>")
    e = p.recv(lambda e: e.tag == C("message") and e.get("id") == "after", timeout=10)
    assert stanza_error(e)[1] in ("item-not-found", "not-acceptable"), tostring(e)


def test_instant_room_is_owned_by_its_creator(server, clients):
    room = new_room(server)
    c = clients.add(server.online("mi"))
    own = instant(c, room, "creator")
    assert {"110", "201"}.issubset(codes(own))
    r = ok(c.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='owner'/></query>", to=room))
    assert [i.get("jid") for i in r.iter(q(NS_ADMIN, "item"))] == [c.bare]


def test_room_archive_is_extended_with_metadata_and_id_fields(server, clients):
    """The room advertises urn:xmpp:mam:2#extended and answers what it promises (XEP-0313
    §4.1.3 before-id / after-id / ids, §6 <metadata/>), under the same access rules."""
    room, owner, (p,) = room_with(server, clients, 2)
    r = ok(p.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=room))
    feats = {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {NS_MAM, NS_MAM + "#extended"}.issubset(feats), feats
    md = ok(p.iq("get", f"<metadata xmlns='{NS_MAM}'/>", to=room)).find(q(NS_MAM, "metadata"))
    assert md is not None and list(md) == [], "an empty archive has no start/end"
    for i in range(4):
        groupchat(p, room, f"m{i}")
        recv_gc(owner, room, f"m{i}")
    qid_ids = []
    msgs, fin = room_archive(p, room)
    ok(fin)
    assert [m.findtext(C("body")) for m in msgs] == ["m0", "m1", "m2", "m3"]
    for m in msgs:
        sid = m.find("{urn:xmpp:sid:0}stanza-id")
        assert sid is not None and sid.get("by") == room, tostring(m)
        qid_ids.append(sid.get("id"))
    md = ok(p.iq("get", f"<metadata xmlns='{NS_MAM}'/>", to=room)).find(q(NS_MAM, "metadata"))
    assert md.find(q(NS_MAM, "start")).get("id") == qid_ids[0]
    assert md.find(q(NS_MAM, "end")).get("id") == qid_ids[-1]
    assert md.find(q(NS_MAM, "end")).get("timestamp")

    def form(fields):
        out = [f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
               f"<value>{NS_MAM}</value></field>"]
        for var, vals in fields.items():
            out.append(f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in vals) + "</field>")
        return "".join(out) + "</x>"

    msgs, fin = room_archive(p, room, form({"after-id": [qid_ids[0]], "before-id": [qid_ids[3]]}))
    assert [m.findtext(C("body")) for m in msgs] == ["m1", "m2"]
    msgs, fin = room_archive(p, room, form({"ids": [qid_ids[3], qid_ids[1]]}))
    assert [m.findtext(C("body")) for m in msgs] == ["m1", "m3"]
    _, fin = room_archive(p, room, form({"after-id": ["AAAAAAAAAAA"]}))
    assert stanza_error(fin)[1] == "item-not-found", tostring(fin)
    # Members-only: a stranger gets neither the messages nor the metadata.
    ok(configure(owner, room, {"membersonly": 1}))
    stranger = clients.add(server.online("mt"))
    assert err_of(stranger.iq("get", f"<metadata xmlns='{NS_MAM}'/>", to=room)) == "forbidden"
    server.assert_healthy(owner, p, stranger)


def test_password_protected_room_archive_is_for_occupants_and_members(server, clients):
    """XEP-0313 §5.1.2: the archive is for who has the right to enter: in a password
    protected room, not for a stranger who never gave the password."""
    room, owner, _ = room_with(server, clients, 1, {"passwordprotectedroom": 1, "roomsecret": "pw"})
    p = clients.add(server.online("mv"))
    join(p, room, "p1", password="pw")
    groupchat(p, room, "behind the password")
    recv_gc(owner, room, "behind the password")
    stranger = clients.add(server.online("mw"))
    r = stranger.iq("set", f"<query xmlns='{NS_MAM}'/>", to=room)
    assert err_of(r) == "forbidden"
    msgs, fin = room_archive(p, room)
    ok(fin)
    assert "behind the password" in [m.findtext(C("body")) for m in msgs]
    ok(admin(owner, room, f"<item affiliation='member' jid='{stranger.bare}'/>"))
    msgs, fin = room_archive(stranger, room)
    ok(fin)
    assert "behind the password" in [m.findtext(C("body")) for m in msgs]


def test_an_occupant_whose_client_bounces_room_traffic_is_removed_with_333(server, clients):
    """Status 333 (removed for technical reasons): an error of delivery from an occupant's
    client for what the room sent it (as for a presence error); an error about one private
    message does not remove anyone."""
    room, owner, (p, p2) = room_with(server, clients, 3)
    # A bounced private message: nothing happens to anyone.
    p.send_raw(f"<message to='{room}/o' type='error' id='e0'><error type='cancel'>"
               "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    # A complaint that is not about delivery: nothing happens either.
    p.send_raw(f"<message to='{room}' type='error' id='e1'><error type='modify'>"
               "<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    owner.expect_nothing(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/p1")
    groupchat(p, room, "still in")
    recv_gc(owner, room, "still in")
    # A delivery error for the room's traffic: p1 is gone, with 333.
    p.send_raw(f"<message to='{room}' type='error' id='e2'><error type='cancel'>"
               "<recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    gone = owner.recv(is_pres_from(f"{room}/p1", "unavailable"))
    assert "333" in codes(gone) and item(gone).get("role") == "none", tostring(gone)
    p2.recv(is_pres_from(f"{room}/p1", "unavailable"))
    p.send_raw(f"<message to='{room}' type='groupchat' id='after'><body>x</body></message>")
    e = p.recv(lambda e: e.tag == C("message") and e.get("id") == "after", timeout=10)
    assert stanza_error(e)[1] == "not-acceptable", tostring(e)
    server.assert_healthy(owner, p, p2)


def test_subject_changes_are_archived_but_are_not_history(server, clients):
    """XEP-0313 §5.1.2: a room archive SHOULD keep subject changes; XEP-0045 §7.2.15: the
    subject comes after the discussion history, so a newcomer's history holds no subject
    message and the current subject follows it."""
    room, owner, (p,) = room_with(server, clients, 2)
    groupchat(owner, room, "h1")
    recv_gc(p, room, "h1")
    owner.send_raw(f"<message to='{room}' type='groupchat' id='s1'><subject>Topic A</subject></message>")
    got = p.recv(lambda e: e.tag == C("message") and e.findtext(C("subject")) == "Topic A", timeout=10)
    assert got.get("from") == f"{room}/o"
    assert got.find("{urn:xmpp:sid:0}stanza-id") is not None, tostring(got)
    groupchat(owner, room, "h2")
    recv_gc(p, room, "h2")
    msgs, fin = room_archive(p, room)
    ok(fin)
    assert [(m.findtext(C("body")), m.findtext(C("subject"))) for m in msgs] == \
        [("h1", None), (None, "Topic A"), ("h2", None)]
    newcomer = clients.add(server.online("mh"))
    _, _, history, subject = join(newcomer, room, "n", history={"maxstanzas": 2})
    assert [h.findtext(C("body")) for h in history] == ["h1", "h2"]
    assert subject.findtext(C("subject")) == "Topic A"


def test_chat_states_are_reflected_but_not_archived(server, clients):
    """XEP-0313 §5.1.2: the room archive keeps messages with a body (and subject changes);
    a chat state alone is reflected to the occupants and is not archived (nor history)."""
    room, owner, (p,) = room_with(server, clients, 2)
    p.send_raw(f"<message to='{room}' type='groupchat' id='cs1'>"
               "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    got = owner.recv(lambda e: e.tag == C("message") and e.get("id") == "cs1", timeout=10)
    assert got.get("from") == f"{room}/p1"
    assert got.find("{http://jabber.org/protocol/chatstates}composing") is not None
    groupchat(p, room, "with body")
    recv_gc(owner, room, "with body")
    p.send_raw(f"<message to='{room}' type='groupchat' id='st1'><store xmlns='urn:xmpp:hints'/>"
               "<reactions xmlns='urn:xmpp:reactions:0' id='x'><reaction>+1</reaction></reactions></message>")
    owner.recv(lambda e: e.tag == C("message") and e.get("id") == "st1", timeout=10)
    msgs, fin = room_archive(owner, room)
    ok(fin)
    assert [m.get("id") for m in msgs if m.get("id") in ("cs1", "st1")] == ["st1"]
    assert [m.findtext(C("body")) for m in msgs if m.findtext(C("body"))] == ["with body"]


def test_a_message_with_a_no_store_hint_is_reflected_but_not_archived(server, clients):
    """XEP-0334: a groupchat message with a body and <no-store/> (or <no-permanent-store/>)
    reaches every occupant and stays out of the room's archive and history; the messages
    around it are archived as usual."""
    room, owner, (p,) = room_with(server, clients, 2)
    groupchat(p, room, "before")
    recv_gc(owner, room, "before")
    for i, hint in enumerate(("no-store", "no-permanent-store")):
        p.send_raw(f"<message to='{room}' type='groupchat' id='ns{i}'><body>secret {i}</body>"
                   f"<{hint} xmlns='urn:xmpp:hints'/></message>")
        got = owner.recv(lambda e: e.tag == C("message") and e.get("id") == f"ns{i}", timeout=10)
        assert got.findtext(C("body")) == f"secret {i}"
    groupchat(p, room, "after")
    recv_gc(owner, room, "after")
    msgs, fin = room_archive(owner, room)
    ok(fin)
    assert [m.findtext(C("body")) for m in msgs if m.findtext(C("body"))] == ["before", "after"]


def test_a_new_moderator_of_a_semi_anonymous_room_learns_the_real_jids(server, clients):
    """In a semi-anonymous room only moderators see real JIDs (XEP-0045 §5.1, §7.2.3): an
    occupant made moderator gets the others' presence again, with their JIDs; made
    participant again, without."""
    room, owner, (p, p2) = room_with(server, clients, 3)
    ok(admin(owner, room, "<item nick='p1' role='moderator'/>"))
    p.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/p1" and "110" in codes(e))
    seen = p.recv(is_pres_from(f"{room}/p2"))
    assert item(seen).get("jid") == p2.jid, tostring(seen)
    seen = p.recv(is_pres_from(f"{room}/o"))
    assert item(seen).get("jid") == owner.jid, tostring(seen)
    # The others learn nothing new (their view did not change).
    p2.recv(is_pres_from(f"{room}/p1"))
    p2.expect_nothing(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/o")
    ok(admin(owner, room, "<item nick='p1' role='participant'/>"))
    p.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/p1" and "110" in codes(e))
    seen = p.recv(is_pres_from(f"{room}/p2"))
    assert item(seen).get("jid") is None, tostring(seen)


def test_turning_non_anonymous_shows_real_jids_to_everyone(server, clients):
    """172 (now non-anonymous): every occupant may see real JIDs from then on, so each gets
    the others' presence with them; 173 (semi-anonymous again): without."""
    room, owner, (p, p2) = room_with(server, clients, 3)
    ok(configure(owner, room, {"whois": "anyone"}))
    m = p.recv(lambda e: e.tag == C("message") and e.get("from") == room, timeout=10)
    assert "172" in codes(m)
    seen = p.recv(is_pres_from(f"{room}/p2"))
    assert item(seen).get("jid") == p2.jid, tostring(seen)
    ok(configure(owner, room, {"whois": "moderators"}))
    m = p.recv(lambda e: e.tag == C("message") and e.get("from") == room and "173" in codes(e), timeout=10)
    seen = p.recv(is_pres_from(f"{room}/p2"))
    assert item(seen).get("jid") is None, tostring(seen)


def test_joining_again_under_the_same_nick_gets_the_join_answer_again(server, clients):
    """A client that believes it left (it sends the MUC join presence again, same nick) gets
    the whole join answer again: the others' presence, its own with 110 last, history and the
    subject; the others see only a presence update, no new join."""
    room, owner, (p,) = room_with(server, clients, 2)
    groupchat(owner, room, "before rejoin")
    recv_gc(p, room, "before rejoin")
    p.drain(0.3)
    before, own, history, subject = join(p, room, "p1", history={"maxstanzas": 5})
    assert f"{room}/o" in [b.get("from") for b in before if b.tag == C("presence")]
    assert "110" in codes(own)
    assert "before rejoin" in [h.findtext(C("body")) for h in history]
    assert subject.find(C("subject")) is not None
    seen = owner.recv(is_pres_from(f"{room}/p1"))
    assert "110" not in codes(seen)
    owner.expect_nothing(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/p1")
    groupchat(p, room, "after rejoin")
    recv_gc(owner, room, "after rejoin")


# ----------------------------------------------------------------------------- status codes 210, 101

def test_a_nick_the_service_normalised_gets_status_210(server, clients):
    """XEP-0045 §7.2.3 (status 210): nicks are resourceprep'd (RFC 6122 via the session's JID
    normalisation), so a nick asked for as 'ﬁsh' (U+FB01) is 'fish' in the room. The new
    occupant's own presence comes from the nick it got, with 210 and 110; the others see no
    210; a nick used as asked gets no 210, and a client cannot ask the room for one."""
    room, owner, (p,) = room_with(server, clients, 2)
    u = clients.add(server.online("mn"))
    u.send_raw(f"<presence to='{room}/\ufb01sh'><x xmlns='{NS_MUC}'/></presence>")
    own = u.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/fish"
                 and "110" in codes(e), timeout=10, what="own presence under the normalised nick")
    assert own.get("type") is None, tostring(own)
    assert "210" in codes(own), tostring(own)
    for c in (owner, p):
        seen = c.recv(is_pres_from(f"{room}/fish"), timeout=10)
        assert "210" not in codes(seen), tostring(seen)
    # The room knows the occupant by the normalised nick: a groupchat comes from it.
    u.recv(lambda e: e.tag == C("message") and e.find(C("subject")) is not None, timeout=10)
    groupchat(u, room, "fished")
    assert recv_gc(owner, room, "fished").get("from") == f"{room}/fish"
    # A nick taken as asked: no 210, even when the client names one in the attribute the
    # session uses to tell the room (it is stripped from what clients send).
    v = clients.add(server.online("mn"))
    v.send_raw(f"<presence to='{room}/plain' starling-requested-nick='other'>"
               f"<x xmlns='{NS_MUC}'/></presence>")
    own = v.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/plain"
                 and "110" in codes(e), timeout=10, what="own presence")
    assert "210" not in codes(own), tostring(own)
    # A nick change to a nick the service normalises: 303 with the new nick as made, then the
    # new presence with 210 (§7.6).
    v.drain(0.3)
    v.send_raw(f"<presence to='{room}/\uff30lain2'/>")  # fullwidth P
    gone = v.recv(is_pres_from(f"{room}/plain", "unavailable"), timeout=10)
    assert "303" in codes(gone) and item(gone).get("nick") == "Plain2", tostring(gone)
    new = v.recv(is_pres_from(f"{room}/Plain2"), timeout=10)
    assert {"110", "210"} <= codes(new), tostring(new)
    seen = owner.recv(is_pres_from(f"{room}/Plain2"), timeout=10)
    assert "210" not in codes(seen), tostring(seen)
    server.assert_healthy(owner, p, u, v)


def is_101_for(room):
    return lambda e: (e.tag == C("message") and e.get("from") == room
                      and e.find(q(NS_USER, "x")) is not None and "101" in codes(e))


def test_an_affiliation_change_of_an_absent_user_is_told_with_status_101(server, clients):
    """XEP-0045 status code 101 (registry: "message (out of band)", affiliation change):
    a user whose affiliation changes while not in the room gets a message from the room to
    its bare JID with <item affiliation jid/> and 101; an occupant learns it from the
    room's presence instead (no 101). "Notifications of Changes" (1.34.7): the occupants who
    may see real JIDs (moderators; everyone in a non-anonymous room) get a message from the
    room with the item."""
    room, owner, (p,) = room_with(server, clients, 2)
    away = clients.add(server.online("ma"))

    def note_for(jid, aff):
        return lambda e: (e.tag == C("message") and e.get("from") == room and item(e) is not None
                          and item(e).get("jid") == jid and item(e).get("affiliation") == aff
                          and "101" not in codes(e))

    ok(admin(owner, room, f"<item affiliation='member' jid='{away.bare}'><reason>welcome</reason></item>"))
    m = away.recv(is_101_for(room), timeout=10, what="101 message")
    it = item(m)
    assert it.get("affiliation") == "member" and it.get("jid") == away.bare, tostring(m)
    assert it.findtext(q(NS_USER, "reason")) == "welcome", tostring(m)
    assert m.get("type") in (None, "normal"), tostring(m)
    note = owner.recv(note_for(away.bare, "member"), timeout=10, what="notification to the moderator")
    assert note.get("type") in (None, "normal") and note.find(C("body")) is None, tostring(note)
    p.expect_nothing(note_for(away.bare, "member"), what="notification to a participant (semi-anonymous)")
    # A ban of an absent user too.
    ok(admin(owner, room, f"<item affiliation='outcast' jid='{away.bare}'/>"))
    m = away.recv(is_101_for(room), timeout=10, what="101 message (ban)")
    assert item(m).get("affiliation") == "outcast", tostring(m)
    # An occupant gets presence with its new affiliation, and no 101 message.
    ok(admin(owner, room, f"<item affiliation='member' jid='{p.bare}'/>"))
    pr = p.recv(is_pres_from(f"{room}/p1"), timeout=10)
    assert item(pr).get("affiliation") == "member", tostring(pr)
    p.expect_nothing(is_101_for(room), timeout=0.7, what="101 message to an occupant")
    # Non-anonymous: every occupant is told.
    ok(configure(owner, room, {"whois": "anyone"}))
    ok(admin(owner, room, f"<item affiliation='admin' jid='{away.bare}'/>"))
    for c in (owner, p):
        c.recv(note_for(away.bare, "admin"), timeout=10, what="notification (non-anonymous)")
    assert item(away.recv(is_101_for(room), timeout=10)).get("affiliation") == "admin"
    # The owner list of the configuration form changes affiliations too (§10.2).
    ok(configure(owner, room, {"roomowners": [owner.bare, away.bare]}))
    assert item(away.recv(is_101_for(room), timeout=10)).get("affiliation") == "owner"
    owner.recv(note_for(away.bare, "owner"), timeout=10, what="notification (form)")
    server.assert_healthy(owner, p, away)


# ----------------------------------------------------------------------------- registration, voice

def test_room_advertises_registration_and_voice_requests(server, clients):
    """The room answers jabber:iq:register (§7.10, muc#register form) and voice requests
    (§7.13, muc#request form): its disco#info says so, as clients look there first."""
    room, owner, _ = room_with(server, clients, 1)
    r = ok(owner.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=room))
    feats = {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {"jabber:iq:register", "http://jabber.org/protocol/muc#register",
            "http://jabber.org/protocol/muc#request"} <= feats, feats
    server.assert_healthy(owner)


def test_voice_approval_naming_the_occupant_by_real_jid(server, clients):
    """§8.6: the moderator's approval form carries the request's fields back; one that names
    the occupant only by muc#jid (the real JID of the request) gives voice too, and a denial
    (request_allow false) leaves the visitor a visitor."""
    room, owner, _ = room_with(server, clients, 1, {"moderatedroom": 1})
    v = clients.add(server.online("mvj"))
    _, own, _, _ = join(v, room, "vis")
    assert item(own).get("role") == "visitor"
    owner.recv(is_pres_from(f"{room}/vis"), timeout=10)

    def approval(allow):
        return (f"<message to='{room}'><x xmlns='{NS_DATA}' type='submit'>"
                "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
                "<field var='muc#role'><value>participant</value></field>"
                f"<field var='muc#jid'><value>{v.jid}</value></field>"
                f"<field var='muc#request_allow'><value>{allow}</value></field></x></message>")

    owner.send_raw(approval("false"))
    v.expect_nothing(is_pres_from(f"{room}/vis"), what="role change after a denial")
    owner.send_raw(approval("true"))
    now = v.recv(is_pres_from(f"{room}/vis"), timeout=10)
    assert item(now).get("role") == "participant", tostring(now)
    server.assert_healthy(owner, v)
