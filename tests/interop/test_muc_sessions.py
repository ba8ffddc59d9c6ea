"""XEP-0045 rooms: several sessions of one user under one nick, the muc#roomconfig fields
beyond the basic ones (presencebroadcast, getmemberlist, lang, pubsub, maxhistoryfetch) and
what the muc#roominfo disco form says of them, the order of what a joining user gets, and
the edge cases of <history/>. Raw XML throughout: the exact stanzas are what is judged.
"""

import datetime
import time

import pytest

from rawxmpp import C, q, stanza_error, tostring
from test_muc import (NS_ADMIN, NS_DATA, NS_INFO, NS_OWNER, NS_USER, codes, configure, err_of,
                      groupchat, instant, is_pres_from, item, join, join_error, join_send,
                      new_room, ok, recv_gc)

pytestmark = [pytest.mark.timeout(120)]


def second_session(server, clients, c, resource):
    """Another session of the user of `c`."""
    s = clients.add(server.login(c.bare, c.password, resource=resource, presence=True))
    s.bare = c.bare
    s.password = c.password
    return s


def room_info(c, room):
    r = ok(c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=room))
    x = r.find(q(NS_INFO, "query")).find(q(NS_DATA, "x"))
    assert x is not None, tostring(r)
    return {f.get("var"): [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
            for f in x.findall(q(NS_DATA, "field"))}


def config_fields(c, room):
    r = ok(c.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room))
    x = r.find(q(NS_OWNER, "query")).find(q(NS_DATA, "x"))
    return {f.get("var"): [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
            for f in x.findall(q(NS_DATA, "field"))}


def raw_config(c, room, fields_xml):
    return c.iq("set", f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'>"
                f"<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value>"
                f"</field>{fields_xml}</x></query>", to=room)


# ----------------------------------------------------------------------------- multi-session

def test_second_session_of_the_same_user_shares_the_nick(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna")
    owner.recv(is_pres_from(f"{room}/anna"), timeout=10)
    owner.drain(0.2)
    a2 = second_session(server, clients, a1, "two")
    # The second session joins like anyone: the others first, its own presence (110) last,
    # then the subject.
    before, own, _, subject = join(a2, room, "anna")
    assert f"{room}/o" in {p.get("from") for p in before}, [tostring(p) for p in before]
    assert "110" in codes(own), tostring(own)
    assert subject is not None
    # The occupant did not change: nobody else hears of it.
    owner.expect_nothing(is_pres_from(f"{room}/anna"), timeout=0.7)
    # One occupant, not two.
    r = ok(owner.iq("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>", to=room))
    names = [i.get("name") for i in r.iter("{http://jabber.org/protocol/disco#items}item")]
    assert names.count("anna") == 1, tostring(r)
    assert room_info(owner, room)["muc#roominfo_occupants"] == ["2"]
    # Groupchat reaches both sessions, whichever sent it.
    groupchat(owner, room, "to all")
    for s in (a1, a2):
        recv_gc(s, room, "to all")
    groupchat(a2, room, "from two")
    for s in (a1, a2, owner):
        m = recv_gc(s, room, "from two")
        assert m.get("from") == f"{room}/anna"
    # A private message to the nick reaches every session.
    owner.message(f"{room}/anna", "psst", type_="chat")
    for s in (a1, a2):
        m = s.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "psst", timeout=10)
        assert m.get("from") == f"{room}/o", tostring(m)
    # A presence change of one session is the occupant's: everyone sees it, both sessions
    # with 110.
    a1.presence(to=f"{room}/anna", extra="<show>away</show>")
    p = owner.recv(is_pres_from(f"{room}/anna"), timeout=10)
    assert p.findtext(C("show")) == "away", tostring(p)
    for s in (a1, a2):
        p = s.recv(is_pres_from(f"{room}/anna"), timeout=10)
        assert "110" in codes(p) and p.findtext(C("show")) == "away", tostring(p)
    server.assert_healthy(owner, a1, a2)


def test_the_occupant_leaves_with_its_last_session(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna")
    a2 = second_session(server, clients, a1, "two")
    join(a2, room, "anna")
    owner.drain(0.3)
    a1.drain(0.2)
    # One session leaves: it is told (110), nobody else sees the occupant go.
    a1.presence(to=f"{room}/anna", type_="unavailable")
    p = a1.recv(is_pres_from(f"{room}/anna", "unavailable"), timeout=10)
    assert "110" in codes(p), tostring(p)
    owner.expect_nothing(is_pres_from(f"{room}/anna", "unavailable"), timeout=0.7)
    a2.expect_nothing(is_pres_from(f"{room}/anna", "unavailable"), timeout=0.3)
    groupchat(owner, room, "still there")
    recv_gc(a2, room, "still there")
    a1.expect_nothing(lambda e: e.tag == C("message") and e.findtext(C("body")) == "still there",
                      timeout=0.5)
    # The gone session is no occupant: it may not speak.
    groupchat(a1, room, "not in")
    e = a1.recv(lambda e: e.tag == C("message") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "not-acceptable", tostring(e)
    # The last one leaves: now everyone sees the occupant go.
    a2.presence(to=f"{room}/anna", type_="unavailable")
    p = owner.recv(is_pres_from(f"{room}/anna", "unavailable"), timeout=10)
    assert "110" not in codes(p), tostring(p)
    p = a2.recv(is_pres_from(f"{room}/anna", "unavailable"), timeout=10)
    assert "110" in codes(p), tostring(p)
    server.assert_healthy(owner)


def test_a_session_that_ends_leaves_only_itself(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna")
    a2 = second_session(server, clients, a1, "two")
    join(a2, room, "anna")
    owner.drain(0.3)
    a1.close()
    owner.expect_nothing(is_pres_from(f"{room}/anna", "unavailable"), timeout=1.0)
    groupchat(owner, room, "after close")
    recv_gc(a2, room, "after close")
    a2.close()
    owner.recv(is_pres_from(f"{room}/anna", "unavailable"), timeout=10)
    server.assert_healthy(owner)


def test_an_error_from_one_session_removes_only_that_session(server, clients):
    """XEP-0045 7.2.? (status 333): a presence error from a client means it is gone; with a
    shared nick only that session goes. Bad nicks from the second session are refused on
    their own."""
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna")
    a2 = second_session(server, clients, a1, "two")
    join(a2, room, "anna")
    owner.drain(0.3)
    a2.send_raw(f"<presence to='{room}/anna' type='error'><error type='cancel'>"
                "<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                "</error></presence>")
    p = a2.recv(is_pres_from(f"{room}/anna", "unavailable"), timeout=10)
    assert {"333", "110"} <= codes(p), tostring(p)
    owner.expect_nothing(is_pres_from(f"{room}/anna", "unavailable"), timeout=0.7)
    groupchat(owner, room, "one left")
    recv_gc(a1, room, "one left")
    a2.expect_nothing(lambda e: e.tag == C("message") and e.findtext(C("body")) == "one left",
                      timeout=0.5)
    # A nick that is no resourcepart, from a session of the occupant: jid-malformed, and
    # the occupant is untouched.
    a2.send_raw(f"<presence to='{room}/'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    e = a2.recv(lambda e: e.tag == C("presence") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "jid-malformed", tostring(e)
    groupchat(owner, room, "still one")
    recv_gc(a1, room, "still one")
    server.assert_healthy(owner, a1, a2)


def test_same_nick_from_another_user_is_still_conflict(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms"))
    join(a1, room, "anna")
    other = clients.add(server.online("mx"))
    assert join_error(other, room, "anna") == "conflict"
    # Still nobody else under that nick.
    owner.drain(0.3)
    groupchat(owner, room, "x")
    recv_gc(a1, room, "x")
    other.expect_nothing(lambda e: e.tag == C("message") and e.get("type") == "groupchat",
                         timeout=0.5)
    server.assert_healthy(owner, a1, other)


def test_kick_removes_every_session(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna")
    a2 = second_session(server, clients, a1, "two")
    join(a2, room, "anna")
    owner.drain(0.3)
    ok(owner.iq("set", f"<query xmlns='{NS_ADMIN}'><item nick='anna' role='none'/></query>",
                to=room))
    for s in (a1, a2):
        p = s.recv(is_pres_from(f"{room}/anna", "unavailable"), timeout=10)
        assert {"307", "110"} <= codes(p), tostring(p)
    groupchat(a2, room, "kicked")
    e = a2.recv(lambda e: e.tag == C("message") and e.get("type") == "error", timeout=10)
    assert stanza_error(e)[1] == "not-acceptable", tostring(e)
    server.assert_healthy(owner)


def test_one_session_changing_nick_moves_alone(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna")
    a2 = second_session(server, clients, a1, "two")
    join(a2, room, "anna")
    owner.drain(0.3)
    a2.presence(to=f"{room}/annie")
    p = a2.recv(is_pres_from(f"{room}/anna", "unavailable"), timeout=10)
    assert {"303", "110"} <= codes(p) and item(p).get("nick") == "annie", tostring(p)
    p = owner.recv(is_pres_from(f"{room}/annie"), timeout=10)
    # anna stays, with the first session.
    owner.expect_nothing(is_pres_from(f"{room}/anna", "unavailable"), timeout=0.5)
    groupchat(owner, room, "two nicks")
    assert recv_gc(a1, room, "two nicks") is not None
    assert recv_gc(a2, room, "two nicks") is not None
    a1.drain(0.2)
    groupchat(a2, room, "as annie")
    assert recv_gc(a1, room, "as annie").get("from") == f"{room}/annie"
    server.assert_healthy(owner, a1, a2)


def test_second_session_passes_the_room_checks_but_is_not_counted(server, clients):
    """The second session is checked like any join (password), but is not a new occupant:
    a full room still takes it."""
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    ok(configure(owner, room, {"passwordprotectedroom": "1", "roomsecret": "s3cret",
                               "maxusers": "2"}))
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna", password="s3cret")
    a2 = second_session(server, clients, a1, "two")
    assert join_error(a2, room, "anna") == "not-authorized"
    assert join_error(a2, room, "anna", password="wrong") == "not-authorized"
    # The room is full (two occupants), yet the same occupant's session gets in.
    _, own, _, _ = join(a2, room, "anna", password="s3cret")
    assert "110" in codes(own)
    third = clients.add(server.online("mx"))
    assert join_error(third, room, "x", password="s3cret") == "service-unavailable"
    server.assert_healthy(owner, a1, a2)


def test_self_ping_from_either_session_is_answered_by_the_room(server, clients):
    """XEP-0410 with a multi-session nick: the room answers a ping to the nick from any of
    its sessions; no session gets the request."""
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    a1 = clients.add(server.online("ms", resource="one"))
    join(a1, room, "anna")
    a2 = second_session(server, clients, a1, "two")
    join(a2, room, "anna")
    for s in (a1, a2):
        r = s.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=f"{room}/anna")
        assert r.get("type") == "result", tostring(r)
    for s in (a1, a2):
        assert not [e for e in s.drain(0.3) if e.tag == C("iq") and e.get("type") == "get"]
    server.assert_healthy(owner)


# ----------------------------------------------------------------------------- roomconfig

def test_config_form_has_the_registry_fields(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    f = config_fields(owner, room)
    for var in ("muc#roomconfig_presencebroadcast", "muc#roomconfig_allowpm",
                "muc#roomconfig_allowinvites", "muc#roomconfig_getmemberlist",
                "muc#roomconfig_lang", "muc#roomconfig_pubsub", "muc#maxhistoryfetch",
                "muc#roomconfig_passwordprotectedroom", "muc#roomconfig_roomsecret",
                "muc#roomconfig_changesubject", "muc#roomconfig_whois"):
        assert var in f, (var, sorted(f))
    assert sorted(f["muc#roomconfig_presencebroadcast"]) == ["moderator", "participant", "visitor"]
    ok(raw_config(owner, room,
                  "<field var='muc#roomconfig_lang'><value>de-CH</value></field>"
                  "<field var='muc#roomconfig_pubsub'><value>xmpp:pubsub.example.org?;node=r</value>"
                  "</field><field var='muc#maxhistoryfetch'><value>7</value></field>"
                  "<field var='muc#roomconfig_presencebroadcast'><value>moderator</value>"
                  "<value>participant</value></field>"
                  "<field var='muc#roomconfig_roomdesc'><value>About things</value></field>"))
    f = config_fields(owner, room)
    assert f["muc#roomconfig_lang"] == ["de-CH"]
    assert f["muc#maxhistoryfetch"] == ["7"]
    assert sorted(f["muc#roomconfig_presencebroadcast"]) == ["moderator", "participant"]
    info = room_info(owner, room)
    assert info["FORM_TYPE"] == ["http://jabber.org/protocol/muc#roominfo"]
    assert info["muc#roominfo_lang"] == ["de-CH"]
    assert info["muc#roominfo_description"] == ["About things"]
    assert info["muc#roominfo_occupants"] == ["1"]
    assert info["muc#maxhistoryfetch"] == ["7"]
    assert info["muc#roominfo_pubsub"] == ["xmpp:pubsub.example.org?;node=r"]
    # Owners as contacts only where real JIDs are shown anyway.
    assert "muc#roominfo_contactjid" not in info
    ok(configure(owner, room, {"whois": "anyone"}))
    assert room_info(owner, room)["muc#roominfo_contactjid"] == [owner.bare]
    assert "muc#roominfo_subject" in info
    server.assert_healthy(owner)


@pytest.mark.parametrize("fields_xml", [
    "<field var='muc#roomconfig_presencebroadcast'><value>everyone</value></field>",
    "<field var='muc#roomconfig_presencebroadcast'><value>none</value></field>",
    "<field var='muc#roomconfig_getmemberlist'><value>owner</value></field>",
    "<field var='muc#roomconfig_lang'><value>not a language</value></field>",
    "<field var='muc#roomconfig_lang'><value>en</value><value>de</value></field>",
    "<field var='muc#maxhistoryfetch'><value>-3</value></field>",
    "<field var='muc#maxhistoryfetch'><value>many</value></field>",
    "<field var='muc#roomconfig_changesubject'><value>maybe</value></field>",
    "<field var='muc#roomconfig_allowinvites'><value>2</value></field>",
    "<field var='muc#roomconfig_allowpm'><value>friends</value></field>",
    "<field var='muc#roomconfig_whois'><value>everybody</value></field>",
    "<field var='muc#roomconfig_passwordprotectedroom'><value>yes</value></field>",
    "<field var='muc#roomconfig_roomadmins'><value>not a jid@@</value></field>",
    "<field var='muc#roomconfig_roomowners'><value>@example.org</value></field>",
    "<field var='muc#roomconfig_maxusers'><value>10</value><value>20</value></field>",
])
def test_config_values_of_the_wrong_type_are_bad_request(server, clients, fields_xml):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    before = config_fields(owner, room)
    r = raw_config(owner, room, fields_xml
                   + "<field var='muc#roomconfig_roomname'><value>changed</value></field>")
    assert err_of(r) == "bad-request", tostring(r)
    # Nothing of the form was applied.
    assert config_fields(owner, room) == before
    server.assert_healthy(owner)


def test_presencebroadcast_hides_visitors_presence(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    ok(configure(owner, room, {"moderatedroom": "1",
                               "presencebroadcast": ["moderator", "participant"]}))
    owner.drain(0.3)
    v = clients.add(server.online("mv"))
    before, own, _, _ = join(v, room, "vis")
    assert item(own).get("role") == "visitor", tostring(own)
    assert "110" in codes(own)
    # The visitor sees the moderator; nobody sees the visitor.
    assert f"{room}/o" in {p.get("from") for p in before}
    owner.expect_nothing(is_pres_from(f"{room}/vis"), timeout=0.7)
    # Nor is it listed among the room's items.
    r = ok(owner.iq("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>", to=room))
    names = [i.get("name") for i in r.iter("{http://jabber.org/protocol/disco#items}item")]
    assert names == ["o"], tostring(r)
    # A second visitor does not get the first one's presence on joining either.
    v2 = clients.add(server.online("mv"))
    before2, _, _, _ = join(v2, room, "vis2")
    assert f"{room}/vis" not in {p.get("from") for p in before2}, [tostring(p) for p in before2]
    # Voice makes it a participant, whose presence is broadcast.
    ok(owner.iq("set", f"<query xmlns='{NS_ADMIN}'><item nick='vis' role='participant'/></query>",
                to=room))
    p = owner.recv(is_pres_from(f"{room}/vis"), timeout=10)
    assert item(p).get("role") == "participant", tostring(p)
    # Leaving as a visitor is not broadcast either.
    v2.presence(to=f"{room}/vis2", type_="unavailable")
    p = v2.recv(is_pres_from(f"{room}/vis2", "unavailable"), timeout=10)
    assert "110" in codes(p)
    owner.expect_nothing(is_pres_from(f"{room}/vis2", "unavailable"), timeout=0.7)
    # Messages still reach visitors.
    groupchat(owner, room, "hello all")
    recv_gc(v, room, "hello all")
    server.assert_healthy(owner, v)


def test_getmemberlist_lets_those_roles_read_the_member_list(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    p = clients.add(server.online("mp"))
    join(p, room, "p")
    ok(owner.iq("set", f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='m@example.org'/>"
                "</query>", to=room))
    ask = f"<query xmlns='{NS_ADMIN}'><item affiliation='member'/></query>"
    # By default a participant may not.
    assert err_of(p.iq("get", ask, to=room)) == "forbidden"
    ok(configure(owner, room, {"getmemberlist": ["participant", "moderator"]}))
    r = ok(p.iq("get", ask, to=room))
    jids = [i.get("jid") for i in r.iter(q(NS_ADMIN, "item"))]
    assert "m@example.org" in jids, tostring(r)
    # The admin and owner lists stay with admins.
    assert err_of(p.iq("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='owner'/></query>",
                       to=room)) == "forbidden"
    server.assert_healthy(owner, p)


def test_maxhistoryfetch_limits_the_history(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    ok(configure(owner, room, {}))
    ok(raw_config(owner, room, "<field var='muc#maxhistoryfetch'><value>2</value></field>"))
    for i in range(5):
        groupchat(owner, room, f"h{i}")
        recv_gc(owner, room, f"h{i}")
    u = clients.add(server.online("mh"))
    _, _, history, _ = join(u, room, "u")
    assert [m.findtext(C("body")) for m in history] == ["h3", "h4"]
    # Asking for more does not get more.
    u2 = clients.add(server.online("mh"))
    _, _, history, _ = join(u2, room, "u2", history={"maxstanzas": "10"})
    assert [m.findtext(C("body")) for m in history] == ["h3", "h4"]
    server.assert_healthy(owner)


def test_language_of_the_room_and_pubsub_clear(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    ok(raw_config(owner, room, "<field var='muc#roomconfig_lang'><value>fr</value></field>"
                  "<field var='muc#roomconfig_pubsub'><value>xmpp:ps.example?;node=x</value></field>"))
    ok(raw_config(owner, room, "<field var='muc#roomconfig_pubsub'><value/></field>"))
    info = room_info(owner, room)
    assert info["muc#roominfo_lang"] == ["fr"]
    assert "muc#roominfo_pubsub" not in info
    server.assert_healthy(owner)


# ----------------------------------------------------------------------------- join order

def test_join_order_presences_then_own_then_history_then_subject(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    others = []
    for n in ("b", "c"):
        c = clients.add(server.online("mj"))
        join(c, room, n)
        others.append(c)
    owner.send_raw(f"<message to='{room}' type='groupchat'><subject>The topic</subject></message>")
    owner.recv(lambda e: e.tag == C("message") and e.findtext(C("subject")) == "The topic",
               timeout=10)
    for i in range(2):
        groupchat(owner, room, f"m{i}")
        recv_gc(owner, room, f"m{i}")
    u = clients.add(server.online("mj"))
    join_send(u, room, "u")
    seq = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        e = u.recv(lambda e: e.get("from", "").startswith(room), timeout=10, what="join stream")
        seq.append(e)
        if e.tag == C("message") and e.find(C("subject")) is not None:
            break
    kinds = []
    for e in seq:
        if e.tag == C("presence"):
            kinds.append("self" if "110" in codes(e) else "pres")
        elif e.find(C("subject")) is not None:
            kinds.append("subject")
        else:
            kinds.append("history")
    assert kinds == ["pres", "pres", "pres", "self", "history", "history", "subject"], kinds
    assert seq[-1].findtext(C("subject")) == "The topic"
    assert seq[-1].find(C("body")) is None
    assert [e.findtext(C("body")) for e in seq if e.tag == C("message")][:2] == ["m0", "m1"]
    server.assert_healthy(owner, u)


# ----------------------------------------------------------------------------- history

def _room_with_history(server, clients, n=3):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    for i in range(n):
        groupchat(owner, room, f"h{i}")
        recv_gc(owner, room, f"h{i}")
    return room, owner


def _bodies(history):
    return [m.findtext(C("body")) for m in history]


def test_history_since_edge_cases(server, clients):
    room, owner = _room_with_history(server, clients)
    now = datetime.datetime.now(datetime.timezone.utc)
    past = (now - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    future = (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    frac = (now - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.123456+00:00")
    offset = (now - datetime.timedelta(hours=1)).astimezone(
        datetime.timezone(datetime.timedelta(hours=2))).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    cases = [
        ({"since": past}, ["h0", "h1", "h2"]),
        ({"since": frac}, ["h0", "h1", "h2"]),
        ({"since": offset}, ["h0", "h1", "h2"]),
        ({"since": future}, []),
        ({"since": past, "maxstanzas": "2"}, ["h1", "h2"]),
        ({"since": future, "maxstanzas": "5"}, []),
        ({"seconds": "3600", "since": future}, []),
        ({"maxstanzas": "0"}, []),
        ({"maxchars": "0"}, []),
        ({"seconds": "0"}, []),
        ({"seconds": "99999999999999999999"}, ["h0", "h1", "h2"]),
        ({"seconds": "9223372036854775"}, ["h0", "h1", "h2"]),
        ({"seconds": "18446744073709551615", "maxstanzas": "1"}, ["h2"]),
        ({"maxstanzas": "18446744073709551615"}, ["h0", "h1", "h2"]),
        ({"maxchars": "18446744073709551615"}, ["h0", "h1", "h2"]),
        ({"since": "1970-01-01T00:00:00Z"}, ["h0", "h1", "h2"]),
        ({"since": "9999-12-31T23:59:59Z"}, []),
    ]
    for i, (h, want) in enumerate(cases):
        u = clients.add(server.online("mh"))
        _, _, history, subject = join(u, room, f"u{i}", history=h)
        assert _bodies(history) == want, (h, _bodies(history))
        assert subject is not None
        for m in history:
            d = m.find(q("urn:xmpp:delay", "delay"))
            assert d is not None and d.get("from") == room, tostring(m)
        u.presence(to=f"{room}/u{i}", type_="unavailable")
        u.recv(is_pres_from(f"{room}/u{i}", "unavailable"), timeout=10)
    server.assert_healthy(owner)


@pytest.mark.parametrize("h", [
    {"since": "yesterday"},
    {"since": "2026-13-45T99:99:99Z"},
    {"maxstanzas": "-1"},
    {"maxstanzas": "lots"},
    {"seconds": "x"},
    {"maxchars": "-5"},
])
def test_malformed_history_attributes_do_not_break_the_join(server, clients, h):
    """A value that is not the schema's type is ignored (the default history), the join
    succeeds with its subject, the server stays healthy."""
    room, owner = _room_with_history(server, clients, n=2)
    u = clients.add(server.online("mh"))
    _, own, history, subject = join(u, room, "u", history=h)
    assert "110" in codes(own)
    assert _bodies(history) == ["h0", "h1"], (h, _bodies(history))
    assert subject is not None
    server.assert_healthy(owner, u)


def test_history_maxchars_counts_whole_stanzas(server, clients):
    room = new_room(server)
    owner = clients.add(server.online("mo"))
    instant(owner, room, "o")
    pad = "x" * 1000
    for i in range(3):
        groupchat(owner, room, f"h{i}{pad}")
        recv_gc(owner, room, f"h{i}{pad}")
    # Each stanza is over 1000 characters: 1500 hold the newest one, not two.
    u = clients.add(server.online("mh"))
    _, _, history, _ = join(u, room, "u", history={"maxchars": "1500"})
    assert [b[:2] for b in _bodies(history)] == ["h2"], _bodies(history)
    # Fewer characters than one stanza: none.
    u2 = clients.add(server.online("mh"))
    _, _, history, _ = join(u2, room, "u2", history={"maxchars": "900"})
    assert history == []
    server.assert_healthy(owner)
