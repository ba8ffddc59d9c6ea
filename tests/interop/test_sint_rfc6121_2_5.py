"""Port of RFC6121Section2_5_DeleteIntegrationTest (XMPP interop tests): RFC 6121 2.5 deleting a roster item."""

import pytest

from im import roster_get, roster_items
from rawxmpp import NS_ROSTER, new_id
from test_sint_helpers import (bare_jid, desc, error_condition, iq_reply, recv_roster_push, push_item, rnd,
                               subscribe_to)


def target(server):
    return f"test-target-{rnd(5)}@{server.domain}"


def create_item(c, jid):
    """Like Smack's Roster#createItem(jid, "Test User", {"Test Group"})."""
    iid = new_id("add")
    c.send_raw(f"<iq type='set' id='{iid}'><query xmlns='{NS_ROSTER}'><item jid='{jid}' name='Test User'>"
               f"<group>Test Group</group></item></query></iq>")
    r = iq_reply(c, iid)
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply to roster set"


def remove_item(c, jid):
    iid = new_id("rm")
    c.send_raw(f"<iq type='set' id='{iid}'><query xmlns='{NS_ROSTER}'><item jid='{jid}' subscription='remove'/></query></iq>")
    return iid


def test_roster_delete_result(server, clients):
    """RFC 6121 2.5.2: "As with adding a roster item, if the server can successfully process the roster set
    then it MUST [...] send an IQ result to the initiating resource" """
    c = clients.add(server.online("sint25"))
    t = target(server)
    create_item(c, t)
    r = iq_reply(c, remove_item(c, t))
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"


@pytest.mark.parametrize("presence", [True, False], ids=["WithInitialPresence", "WithoutInitialPresence"])
@pytest.mark.parametrize("who", ["Self", "OtherResource"])
def test_roster_delete_generates_push_to_interested_resource(server, clients, who, presence):
    """RFC 6121 2.5.2: "As with adding a roster item, if the server can successfully process the roster set
    then it MUST [...] send a roster push to all of the user's interested resources (with the 'subscription'
    attribute set to a value of "remove")" -- an interested resource is one that requested the roster
    (with or without having sent initial presence); afterwards the roster no longer has the item."""
    jid, user, pw = server.new_user("sint25p")
    primary = clients.add(server.login(jid, pw, resource="prim-" + rnd(4)))
    roster_get(primary)
    if who == "Self":
        watcher = primary
    else:
        watcher = clients.add(server.login(jid, pw, resource="sec-" + rnd(4)))
    roster_get(watcher)
    if presence:
        watcher.send_raw("<presence/>")
        watcher.recv(lambda e: e.get("from") == watcher.jid and e.tag.endswith("presence"), what="own presence")
    t = target(server)
    create_item(primary, t)
    recv_roster_push(watcher, t)
    r = iq_reply(primary, remove_item(primary, t))
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"
    item = push_item(recv_roster_push(watcher, t), t)
    assert item.get("subscription") == "remove", desc(item)
    assert t not in roster_items(roster_get(watcher)), "item still on the roster after removal"


def mutual_pair(server, clients):
    one = clients.add(server.online("sint25a"))
    two = clients.add(server.online("sint25b"))
    return one, two


def got_presence(c, from_bare, ptype, timeout=5):
    return c.recv(lambda e: e.tag.endswith("}presence") and e.get("type") == ptype and
                  (e.get("from") or "").split("/")[0] == from_bare, timeout,
                  what=f"presence {ptype} from {from_bare}")


def test_roster_delete_causes_unsubscribe(server, clients):
    """RFC 6121 2.5.2: "If the user has a presence subscription to the contact, then the user's server MUST
    send a presence stanza of type "unsubscribe" to the contact" """
    one, two = mutual_pair(server, clients)
    create_item(one, bare_jid(two))
    subscribe_to(one, two)
    iid = remove_item(one, bare_jid(two))
    iq_reply(one, iid)
    got_presence(two, bare_jid(one), "unsubscribe")


def test_roster_delete_causes_unsubscribed(server, clients):
    """RFC 6121 2.5.2: "If the contact has a presence subscription to the user, then the user's server MUST
    send a presence stanza of type "unsubscribed" to the contact (in order to cancel the contact's
    subscription to the user)." """
    one, two = mutual_pair(server, clients)
    create_item(one, bare_jid(two))
    subscribe_to(two, one)
    iid = remove_item(one, bare_jid(two))
    iq_reply(one, iid)
    got_presence(two, bare_jid(one), "unsubscribed")


def test_roster_delete_causes_unsubscribe_and_unsubscribed(server, clients):
    """RFC 6121 2.5.2: "If the presence subscription is mutual, then the user's server MUST send both a
    presence stanza of type "unsubscribe" and a presence stanza of type "unsubscribed" to the contact." """
    one, two = mutual_pair(server, clients)
    create_item(one, bare_jid(two))
    subscribe_to(one, two)
    subscribe_to(two, one)
    iid = remove_item(one, bare_jid(two))
    iq_reply(one, iid)
    got_presence(two, bare_jid(one), "unsubscribe")
    got_presence(two, bare_jid(one), "unsubscribed")


def test_roster_delete_non_existing_item(server, clients):
    """RFC 6121 2.5.3: "If the value of the 'jid' attribute specifies an item that is not in the roster, then
    the server MUST return an <item-not-found/> stanza error." """
    c = clients.add(server.online("sint25"))
    r = iq_reply(c, remove_item(c, target(server)))
    assert r is not None and r.get("type") == "error", desc(r) if r is not None else "no reply"
    assert error_condition(r) == "item-not-found", desc(r)
