"""Port of RFC6121Section2dot4RosterIntegrationTest (XMPP interop tests): RFC 6121 2.4, updating a roster item."""

import pytest

from im import RI, RQ, roster_get
from rawxmpp import C, NS_ROSTER, new_id
from test_sint_helpers import desc, error_condition, iq_reply, push_item, recv_roster_push, rnd

Q241 = ("RFC 6121 2.4.1: \"Updating an existing roster item is done in the same way as adding a new roster item, "
        "i.e., by sending a roster set to the server. Because a roster item is atomic, the item MUST be updated "
        "exactly as provided in the roster set.\" ")


def target(server, prefix="test-target-"):
    return f"{prefix}{rnd(5)}@{server.domain}"


def item_xml(jid, name=None, groups=()):
    n = f" name='{name}'" if name is not None else ""
    return f"<item jid='{jid}'{n}>" + "".join(f"<group>{g}</group>" for g in groups) + "</item>"


def rset(c, inner, to=None):
    iid = new_id("rs")
    t = f" to='{to}'" if to else ""
    c.send_raw(f"<iq type='set' id='{iid}'{t}><query xmlns='{NS_ROSTER}'>{inner}</query></iq>")
    return iq_reply(c, iid)


def ok(r):
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"


def stored(c, jid):
    items = {i.get("jid"): i for i in roster_get(c).find(RQ).findall(RI)}
    assert jid in items, f"{jid} not on the roster"
    it = items[jid]
    return it.get("name"), sorted(g.text for g in it.findall(f"{{{NS_ROSTER}}}group"))


UPDATES = [
    # id, start (name, groups), update (name, groups), expected (name, groups)
    ("AddGroup", ("Romeo", ["Friends"]), ("Romeo", ["Friends", "Lovers"]), ("Romeo", ["Friends", "Lovers"])),
    ("DeleteGroup", ("Romeo", ["Friends", "Lovers"]), ("Romeo", ["Friends"]), ("Romeo", ["Friends"])),
    ("DeleteAllGroups", ("Romeo", ["Friends"]), ("Romeo", []), ("Romeo", [])),
    ("ChangeHandle", ("Romeo", []), ("MyRomeo", []), ("MyRomeo", [])),
    ("DeleteHandle", ("Romeo", []), (None, []), (None, [])),
]


@pytest.mark.parametrize("start,update,expected", [u[1:] for u in UPDATES], ids=[u[0] for u in UPDATES])
def test_roster_update(server, clients, start, update, expected):
    c = clients.add(server.online("sint24"))
    t = target(server, "romeo-")
    ok(rset(c, item_xml(t, *start)))
    ok(rset(c, item_xml(t, *update)))
    name, groups = stored(c, t)
    if expected[0] is None:
        assert not name, f"handle not removed: name={name!r}"
    else:
        assert name == expected[0], f"name={name!r}, expected {expected[0]!r}"
    assert groups == sorted(expected[1]), f"groups={groups}, expected {sorted(expected[1])}"


test_roster_update.__doc__ = Q241 + "(adding a group, deleting a group, deleting all groups, changing / deleting the handle)"


def test_roster_update_result(server, clients):
    """RFC 6121 2.4.2: "if the roster item can be successfully processed then the server MUST [...] send an IQ
    result to the initiating resource" """
    c = clients.add(server.online("sint24"))
    t = target(server)
    ok(rset(c, item_xml(t, "Test User", ["Test Group"])))
    ok(rset(c, item_xml(t, "Test User Update", ["Test Group"])))


@pytest.mark.parametrize("presence", [True, False], ids=["WithInitialPresence", "WithoutInitialPresence"])
@pytest.mark.parametrize("who", ["Self", "OtherResource"])
def test_roster_update_generates_push_to_interested_resource(server, clients, who, presence):
    """RFC 6121 2.4.2: "As with adding a roster item, if the roster item can be successfully processed then the
    server MUST [...] send a roster push to all of the user's interested resources" -- the push carries the
    updated name and the single updated group."""
    jid, user, pw = server.new_user("sint24p")
    primary = clients.add(server.login(jid, pw, resource="prim-" + rnd(4)))
    roster_get(primary)
    watcher = primary if who == "Self" else clients.add(server.login(jid, pw, resource="sec-" + rnd(4)))
    roster_get(watcher)
    if presence:
        watcher.send_raw("<presence/>")
        watcher.recv(lambda e: e.tag == C("presence") and e.get("from") == watcher.jid, 5, what="own presence")
    t = target(server)
    ok(rset(primary, item_xml(t, "Test User", ["Test Group"])))
    recv_roster_push(watcher, t)
    ok(rset(primary, item_xml(t, "Test User Update", ["Test Group Update"])))
    it = push_item(recv_roster_push(watcher, t), t)
    assert it.get("name") == "Test User Update", desc(it)
    assert [g.text for g in it.findall(f"{{{NS_ROSTER}}}group")] == ["Test Group Update"], desc(it)


Q243 = "RFC 6121 2.4.3: \"The error cases described under Section 2.3.3 also apply to updating a roster item. [from 2.3.3:] "


def test_roster_update_multiple_items(server, clients):
    c = clients.add(server.online("sint24"))
    a, b = target(server), target(server)
    ok(rset(c, item_xml(a, "Test User A")))
    ok(rset(c, item_xml(b, "Test User B")))
    r = rset(c, item_xml(a, "Test User Update A") + item_xml(b, "Test User Update B"))
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "bad-request", desc(r)


def test_roster_update_not_authorized(server, clients):
    one = clients.add(server.online("sint24a"))
    two = clients.add(server.online("sint24b"))
    t = target(server)
    ok(rset(two, item_xml(t, "Test User")))
    r = rset(one, item_xml(t, "Test User Update"), to=two.bare)
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "forbidden", desc(r)


def test_roster_update_duplicate_groups(server, clients):
    c = clients.add(server.online("sint24"))
    t = target(server)
    ok(rset(c, item_xml(t, "Test User", ["Test Group"])))
    r = rset(c, item_xml(t, None, ["invalid-duplicate-group", "invalid-duplicate-group"]))
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "bad-request", desc(r)


def test_roster_update_zero_length_group(server, clients):
    c = clients.add(server.online("sint24"))
    t = target(server)
    ok(rset(c, item_xml(t, "Test User", ["Test Group"])))
    r = rset(c, f"<item jid='{t}'><group></group></item>")
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "not-acceptable", desc(r)


test_roster_update_multiple_items.__doc__ = Q243 + ("The server MUST return a <bad-request/> stanza error to the client if "
                                                    "the roster set contains any of the following violations: [...] The "
                                                    "<query/> element contains more than one <item/> child element.\"")
test_roster_update_not_authorized.__doc__ = Q243 + ("The server MUST return a <forbidden/> stanza error to the client if the "
                                                    "sender of the roster set is not authorized to update the roster.\"")
test_roster_update_duplicate_groups.__doc__ = Q243 + ("The server MUST return a <bad-request/> stanza error [...] The <item/> "
                                                      "element contains more than one <group/> element, but there are "
                                                      "duplicate groups\"")
test_roster_update_zero_length_group.__doc__ = Q243 + ("The server MUST return a <not-acceptable/> stanza error [...] The XML "
                                                       "character data of the <group/> element is of zero length\"")
