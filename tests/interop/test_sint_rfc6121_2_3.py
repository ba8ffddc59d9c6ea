"""Port of RFC6121Section2_3_AddIntegrationTest (XMPP interop tests): RFC 6121 2.3, adding a roster item."""

import pytest

from im import roster_get
from rawxmpp import C, NS_ROSTER, new_id
from test_sint_helpers import desc, error_condition, iq_reply, push_item, recv_roster_push, rnd


def target(server):
    return f"test-target-{rnd(5)}@{server.domain}"


def roster_set_raw(c, inner, to=None):
    iid = new_id("rs")
    t = f" to='{to}'" if to else ""
    c.send_raw(f"<iq type='set' id='{iid}'{t}><query xmlns='{NS_ROSTER}'>{inner}</query></iq>")
    return iq_reply(c, iid)


def test_roster_set_result(server, clients):
    """RFC 6121 2.3.2: "If the server can successfully process the roster set for the new item [...] The server
    MUST return an IQ stanza of type "result" to the connected resource that sent the roster set." """
    c = clients.add(server.online("sint23"))
    r = roster_set_raw(c, f"<item jid='{target(server)}' name='Test User'><group>Test Group</group></item>")
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"


@pytest.mark.parametrize("presence", [True, False], ids=["WithInitialPresence", "WithoutInitialPresence"])
@pytest.mark.parametrize("who", ["Self", "OtherResource"])
def test_roster_set_generates_push_to_interested_resource(server, clients, who, presence):
    """RFC 6121 2.3.2: "After a connected resource sends initial presence [...] it is referred to as an "available
    resource". If a connected resource or available resource requests the roster, it is referred to as an
    "interested resource". [...] The server MUST also send a roster push containing the new roster item to all of
    the user's interested resources, including the resource that generated the roster set." -- the push carries
    the name and the single group of the roster set."""
    jid, user, pw = server.new_user("sint23p")
    primary = clients.add(server.login(jid, pw, resource="prim-" + rnd(4)))
    roster_get(primary)
    watcher = primary if who == "Self" else clients.add(server.login(jid, pw, resource="sec-" + rnd(4)))
    roster_get(watcher)
    if presence:
        watcher.send_raw("<presence/>")
        watcher.recv(lambda e: e.tag == C("presence") and e.get("from") == watcher.jid, 5, what="own presence")
    t = target(server)
    r = roster_set_raw(primary, f"<item jid='{t}' name='Test User'><group>Test Group</group></item>")
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"
    it = push_item(recv_roster_push(watcher, t), t)
    assert it.get("name") == "Test User", desc(it)
    assert [g.text for g in it.findall(f"{{{NS_ROSTER}}}group")] == ["Test Group"], desc(it)


def test_roster_set_multiple_items(server, clients):
    """RFC 6121 2.3.3: "The server MUST return a <bad-request/> stanza error to the client if the roster set
    contains any of the following violations: [...] The <query/> element contains more than one <item/> child
    element." """
    c = clients.add(server.online("sint23"))
    r = roster_set_raw(c, f"<item jid='{target(server)}'/><item jid='{target(server)}'/>")
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "bad-request", desc(r)


def test_roster_set_not_authorized(server, clients):
    """RFC 6121 2.3.3: "The server MUST return a <forbidden/> stanza error to the client if the sender of the
    roster set is not authorized to update the roster." (A roster set addressed to another user's bare JID.)"""
    one = clients.add(server.online("sint23a"))
    two = clients.add(server.online("sint23b"))
    r = roster_set_raw(one, f"<item jid='{target(server)}'/>", to=two.bare)
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "forbidden", desc(r)


def test_roster_set_duplicate_groups(server, clients):
    """RFC 6121 2.3.3: "The server MUST return a <bad-request/> stanza error to the client if the roster set
    contains any of the following violations: [...] The <item/> element contains more than one <group/> element,
    but there are duplicate groups" """
    c = clients.add(server.online("sint23"))
    r = roster_set_raw(c, f"<item jid='{target(server)}'><group>invalid-duplicate-group</group>"
                          f"<group>invalid-duplicate-group</group></item>")
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "bad-request", desc(r)


def test_roster_set_zero_length_group(server, clients):
    """RFC 6121 2.3.3: "The server MUST return a <not-acceptable/> stanza error to the client if the roster set
    contains any of the following violations: [...] The XML character data of the <group/> element is of zero
    length" """
    c = clients.add(server.online("sint23"))
    r = roster_set_raw(c, f"<item jid='{target(server)}'><group></group></item>")
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "not-acceptable", desc(r)
