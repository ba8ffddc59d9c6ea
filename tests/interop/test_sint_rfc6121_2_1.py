"""Port of RFC6121Section2dot1RosterIntegrationTest (XMPP interop tests): RFC 6121 2.1.5 roster sets."""

from im import RQ, roster_get, roster_items
from rawxmpp import C, NS_ROSTER, new_id
from test_sint_helpers import desc, error_condition, iq_reply, rnd


def target(server):
    return f"test-target-{rnd(5)}@{server.domain}"


def test_roster_set_with_invalid_subscription_attribute(server, clients):
    """RFC 6121 2.1.5: "The following rules apply to roster sets: [...] The server MUST ignore any value
    of the 'subscription' attribute other than "remove"" -- a set with subscription='both' succeeds and
    the item does not get subscription 'both'."""
    c = clients.add(server.online("sint21"))
    t = target(server)
    iid = new_id("rs")
    c.send_raw(f"<iq type='set' id='{iid}'><query xmlns='{NS_ROSTER}'><item jid='{t}' subscription='both'/></query></iq>")
    r = iq_reply(c, iid)
    assert r is not None and r.get("type") == "result", "expected an IQ result: " + (desc(r) if r is not None else "none")
    items = roster_items(roster_get(c))
    assert t in items, "roster lacks the item added with subscription='both'"
    assert items[t].get("subscription", "none") != "both", desc(items[t])


def test_roster_set_with_irregular_subscription_attribute(server, clients):
    """RFC 6121 2.1.5: "The server MUST ignore any value of the 'subscription' attribute other than
    "remove"" -- here subscription='foobar': the set succeeds and the item is on the roster."""
    c = clients.add(server.online("sint21"))
    t = target(server)
    iid = new_id("rs")
    c.send_raw(f"<iq type='set' id='{iid}'><query xmlns='{NS_ROSTER}'><item jid='{t}' subscription='foobar'/></query></iq>")
    r = iq_reply(c, iid)
    assert r is not None and r.get("type") == "result", "expected an IQ result: " + (desc(r) if r is not None else "none")
    assert t in roster_items(roster_get(c)), "roster lacks the item added with subscription='foobar'"


def test_roster_set_addressed_to_different_user(server, clients):
    """RFC 6121 2.1.5: "the entity that processes a roster set MUST verify that the sender of the roster
    set is authorized to update the roster, and if not return a <forbidden/> error." """
    one = clients.add(server.online("sint21a"))
    two = clients.add(server.online("sint21b"))
    t = target(server)
    iid = new_id("rs")
    one.send_raw(f"<iq type='set' id='{iid}' to='{two.bare}'><query xmlns='{NS_ROSTER}'><item jid='{t}'/></query></iq>")
    r = iq_reply(one, iid)
    assert r is not None, "no reply to a roster set addressed to another user"
    assert r.get("type") == "error", "expected an error: " + desc(r)
    assert error_condition(r) == "forbidden", desc(r)
    assert t not in roster_items(roster_get(two)), "the other user's roster was changed"
