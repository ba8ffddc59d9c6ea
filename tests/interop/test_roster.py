"""RFC 6121 section 2: roster get/set/remove, pushes to every interested resource, versioning."""

import pytest

from im import RI, RQ, recv_push, roster_get, roster_items, roster_set
from rawxmpp import C, NS_ROSTER, q, stanza_error, tostring


def two_resources(server, clients):
    jid, user, pw = server.new_user("ro")
    r1 = clients.add(server.login(jid, pw, resource="r1"))
    r2 = clients.add(server.login(jid, pw, resource="r2", presence=True))
    r1.roster_requested = True
    roster_get(r1)  # an interested resource: it requested the roster
    roster_get(r2)
    return jid, r1, r2


def test_roster_empty_then_set_get(server, clients):
    jid, r1, r2 = two_resources(server, clients)
    assert roster_items(roster_get(r1)) == {}
    contact = "contact1@example.org"
    r = roster_set(r1, contact, name="Con Tact", groups=["Friends", "Work"])
    assert r.get("type") == "result", tostring(r)
    for c in (r1, r2):  # 2.1.6: pushed to every interested resource, including the one that set it
        item = recv_push(c, contact)
        assert item.get("subscription") == "none"
        assert item.get("name") == "Con Tact"
        assert sorted(g.text for g in item.findall(q(NS_ROSTER, "group"))) == ["Friends", "Work"]
    items = roster_items(roster_get(r2))
    assert set(items) == {contact}
    assert items[contact].get("subscription") == "none"


def test_roster_update_and_remove(server, clients):
    jid, r1, r2 = two_resources(server, clients)
    contact = "contact2@example.org"
    assert roster_set(r1, contact, name="A").get("type") == "result"
    recv_push(r1, contact), recv_push(r2, contact)
    assert roster_set(r2, contact, name="B", groups=["G"]).get("type") == "result"
    assert recv_push(r1, contact).get("name") == "B"
    recv_push(r2, contact)
    assert roster_set(r1, contact, remove=True).get("type") == "result"
    for c in (r1, r2):
        assert recv_push(c, contact).get("subscription") == "remove"
    assert roster_items(roster_get(r1)) == {}


@pytest.mark.prosody_deviates("error type 'modify' instead of 'cancel' (RFC 6121 2.5.3, RFC 6120 8.3.3.7)")
def test_roster_remove_unknown_item_is_item_not_found(server, clients):
    """2.5.3: removing an item that is not in the roster -> <item-not-found/>."""
    c = clients.add(server.online("rr"))
    r = roster_set(c, "ghost@example.org", remove=True)
    assert stanza_error(r) == ("cancel", "item-not-found"), tostring(r)


def test_roster_set_two_items_is_bad_request(server, clients):
    """2.3.3: a roster set with more than one item -> <bad-request/>."""
    c = clients.add(server.online("rb"))
    r = c.iq("set", f"<query xmlns='{NS_ROSTER}'><item jid='x1@example.org'/><item jid='x2@example.org'/></query>")
    assert stanza_error(r) == ("modify", "bad-request"), tostring(r)


def test_roster_set_subscription_attribute_ignored(server, clients):
    """2.1.2.5: a client cannot set subscription state through a roster set."""
    c = clients.add(server.online("rs"))
    r = c.iq("set", f"<query xmlns='{NS_ROSTER}'><item jid='x3@example.org' subscription='both'/></query>")
    if r.get("type") == "result":
        items = roster_items(roster_get(c))
        assert items["x3@example.org"].get("subscription") == "none"
    else:
        assert stanza_error(r) == ("modify", "bad-request"), tostring(r)


def test_roster_get_from_other_user_forbidden(server, clients):
    """2.1.3 / 2.1.5: a roster request addressed to another user -> error (forbidden or
    service-unavailable), never that user's roster."""
    a = clients.add(server.online("rf"))
    b = clients.add(server.online("rv"))
    roster_set(b, "secret@example.org")
    r = a.iq("get", f"<query xmlns='{NS_ROSTER}'/>", to=b.bare)
    assert r.get("type") == "error", tostring(r)
    assert stanza_error(r)[1] in ("forbidden", "service-unavailable"), tostring(r)


def test_roster_set_own_jid_not_allowed(server, clients):
    """2.3.3 / 2.5.3: own bare JID in a roster set -> error (not-allowed per 2.3.3)."""
    c = clients.add(server.online("ro"))
    r = roster_set(c, c.bare)
    assert r.get("type") == "error", tostring(r)
    assert stanza_error(r)[1] in ("not-allowed", "bad-request"), tostring(r)


@pytest.mark.prosody_deviates("the empty roster and the roster after the first change share ver='1'")
def test_roster_version_changes_from_empty(server, clients):
    """2.6: the version must change with every roster change, including the first one."""
    c = clients.add(server.online("re"))
    v0 = roster_get(c, ver="").find(RQ).get("ver")
    roster_set(c, "v0@example.org")
    push = c.recv(lambda e: e.tag == C("iq") and e.get("type") == "set", what="push")
    assert push.find(RQ).get("ver") != v0
    r = roster_get(c, ver=v0)
    assert "v0@example.org" in roster_items(r) if r.find(RQ) is not None else recv_push(c, "v0@example.org")


def test_roster_versioning(server, clients):
    """2.6: ver attribute, empty result when unchanged, pushes/full roster when changed."""
    c = clients.add(server.online("rv"))
    roster_set(c, "v00@example.org")
    recv_push(c, "v00@example.org")
    r = roster_get(c, ver="")
    v0 = r.find(RQ).get("ver")
    assert v0 is not None, "no 'ver' in roster result although the client asked with ver=''"
    roster_set(c, "v1@example.org")
    item_push = c.recv(lambda e: e.tag == C("iq") and e.get("type") == "set", what="push")
    v1 = item_push.find(RQ).get("ver")
    assert v1 and v1 != v0, tostring(item_push)
    # up to date: empty IQ result (2.6.3)
    r = roster_get(c, ver=v1)
    assert r.find(RQ) is None or len(r.find(RQ).findall(RI)) == 0, tostring(r)
    # stale version: either the full roster or pushes for the differences
    r = roster_get(c, ver=v0)
    qel = r.find(RQ)
    if qel is not None:
        assert "v1@example.org" in roster_items(r)
        assert qel.get("ver") == v1
    else:
        recv_push(c, "v1@example.org")


def test_roster_versioning_feature_advertised(server, clients):
    jid, user, pw = server.new_user("rvf")
    c = clients.add(server.client()).start()
    c.auth(user, pw)
    assert c.feature("urn:xmpp:features:rosterver", "ver") is not None, tostring(c.features)
