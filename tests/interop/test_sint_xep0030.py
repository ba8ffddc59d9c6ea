"""Port of ServiceDiscoveryIntegrationTest (XMPP interop tests): XEP-0030 sections 3.1, 4.1, 4.3 and 8."""

import pytest

from rawxmpp import new_id
from test_sint_helpers import NS_DISCO_INFO, desc, error_condition, iq_reply, rnd

NS_ITEMS = "http://jabber.org/protocol/disco#items"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def disco(c, ns, to, node=None):
    iid = new_id("disco")
    n = f" node='{node}'" if node else ""
    c.send_raw(f"<iq type='get' id='{iid}' to='{to}'><query xmlns='{ns}'{n}/></iq>")
    r = iq_reply(c, iid)
    assert r is not None, f"no response to {ns} to {to}"
    return r


@pytest.fixture
def info(server, clients):
    c = clients.add(server.online("sintdisco"))
    r = disco(c, NS_DISCO_INFO, server.domain)
    if r.get("type") != "result":
        pytest.skip("XEP-0030 not supported by the service (the Java tests are then 'not possible')")
    q = r.find(f"{{{NS_DISCO_INFO}}}query")
    assert q is not None, "disco#info result without <query/>: " + desc(r)
    return q


def identities(q):
    return q.findall(f"{{{NS_DISCO_INFO}}}identity")


def features(q):
    return q.findall(f"{{{NS_DISCO_INFO}}}feature")


def test_disco_info_response_contains_identity(info):
    """XEP-0030 3.1: "The target entity then MUST either return an IQ result, or return an error [...]. The result
    MUST contain a <query/> element [...], which in turn contains one or more <identity/> elements [...]" """
    assert identities(info), "no <identity/> in the server's disco#info"


def test_disco_info_response_contains_feature(info):
    """XEP-0030 3.1: "The result MUST contain a <query/> element [...], which in turn contains [...] one or more
    <feature/> elements." """
    assert features(info), "no <feature/> in the server's disco#info"


def test_disco_info_response_contains_disco_info_feature(info):
    """XEP-0030 3.1: "[...] every entity MUST support at least the 'http://jabber.org/protocol/disco#info'
    feature;" """
    assert NS_DISCO_INFO in [f.get("var") for f in features(info)]


def test_identities_possess_category(info):
    """XEP-0030 3.1: "Each <identity/> element MUST possess the 'category' [...] attribute[s] specifying the category
    [...] for the entity" """
    assert all(i.get("category") for i in identities(info)), [desc(i) for i in identities(info)]


def test_identities_possess_type(info):
    """XEP-0030 3.1: "Each <identity/> element MUST possess the [...] 'type' attribute[s] specifying the [...] type
    for the entity" """
    assert all(i.get("type") for i in identities(info)), [desc(i) for i in identities(info)]


def test_disco_info_response_no_different_name_for_cat_type_and_lang(info):
    """XEP-0030 3.1: "the <query/> element MUST NOT include multiple <identity/> elements with the same
    category+type+xml:lang but with different 'name' values" """
    names = {}
    for i in identities(info):
        names.setdefault((i.get("category"), i.get("type"), i.get(XML_LANG)), set()).add(i.get("name"))
    assert all(len(v) < 2 for v in names.values()), names


def test_features_possess_var(info):
    """XEP-0030 3.1: "Each <feature/> element MUST possess a 'var' attribute [...]" """
    assert all(f.get("var") for f in features(info)), [desc(f) for f in features(info)]


def test_disco_items_response(server, clients):
    """XEP-0030 4.1: "The target entity then MUST either return its list of publicly-available items, or return an
    error." """
    c = clients.add(server.online("sintdisco"))
    r = disco(c, NS_ITEMS, server.domain)
    assert r.get("type") in ("result", "error"), desc(r)


def crawl(c, jid, node=None, seen=None, depth=0):
    """(jid, node, info-query-or-None, items) for the service and its items, a few levels deep."""
    seen = set() if seen is None else seen
    if (jid, node) in seen or depth > 3 or len(seen) > 50:
        return []
    seen.add((jid, node))
    ri = disco(c, NS_DISCO_INFO, jid, node)
    ritems = disco(c, NS_ITEMS, jid, node)
    if ri.get("type") != "result" or ritems.get("type") != "result":
        pytest.skip(f"{jid}#{node} returns an IQ error instead of disco info/items (Java: 'not possible')")
    items = ritems.find(f"{{{NS_ITEMS}}}query").findall(f"{{{NS_ITEMS}}}item")
    out = [(jid, node, ri.find(f"{{{NS_DISCO_INFO}}}query"), items)]
    for it in items:
        if it.get("jid"):
            out += crawl(c, it.get("jid"), it.get("node"), seen, depth + 1)
    return out


def test_disco_items_have_jid(server, clients):
    """XEP-0030 4.1: "the <item/> child MUST possess a 'jid' attribute specifying the JID of the item" """
    c = clients.add(server.online("sintdisco"))
    tree = crawl(c, server.domain)
    every = [it for (_, _, _, items) in tree for it in items]
    if not every:
        pytest.skip("the service returns no disco items (Java: 'not possible')")
    assert all(it.get("jid") for it in every), [desc(it) for it in every if not it.get("jid")]


def test_disco_items_have_consistent_hierarchy(server, clients):
    """XEP-0030 4.3: "If the hierarchy category is used, every node in the hierarchy MUST be identified as either a
    branch or a leaf" """
    c = clients.add(server.online("sintdisco"))
    bad = []
    for jid, node, q, items in crawl(c, server.domain):
        for i in (q.findall(f"{{{NS_DISCO_INFO}}}identity") if q is not None else []):
            if i.get("category") == "hierarchy" and i.get("type") not in ("branch", "leaf"):
                bad.append(f"{jid}#{node}")
    assert not bad, bad


def nonexisting(server):
    return f"test-non-existing-bare-jid-{rnd(19)}@{server.domain}"


@pytest.mark.parametrize("node", [None, "a-test-node-x"], ids=["WithoutNode", "WithNode"])
def test_query_info_non_existing_bare_jid(server, clients, node):
    """XEP-0030 8: "The following rule[s] apply to the handling of service discovery requests sent to bare JIDs: In
    response to a disco#info request, the server MUST return a <service-unavailable/> error if [...] [t]he target
    entity does not exist." """
    c = clients.add(server.online("sintdisco"))
    r = disco(c, NS_DISCO_INFO, nonexisting(server), node)
    assert r.get("type") == "error", "expected an error: " + desc(r)
    assert error_condition(r) == "service-unavailable", desc(r)


@pytest.mark.parametrize("node", [None, "a-test-node-x"], ids=["WithoutNode", "WithNode"])
def test_query_info_without_presence_subscription_bare_jid(server, clients, node):
    """XEP-0030 8: "In response to a disco#info request, the server MUST return a <service-unavailable/> error if
    [...] [t]he requesting entity is not authorized to receive presence from the target entity." """
    one = clients.add(server.online("sintdisco1"))
    two = clients.add(server.online("sintdisco2"))
    r = disco(one, NS_DISCO_INFO, two.bare, node)
    assert r.get("type") == "error", "expected an error: " + desc(r)
    assert error_condition(r) == "service-unavailable", desc(r)


@pytest.mark.parametrize("node", [None, "a-test-node-x"], ids=["WithoutNode", "WithNode"])
def test_query_items_non_existing_entity_bare_jid(server, clients, node):
    """XEP-0030 8: "In response to a disco#items request, the server MUST return an empty result set if [...] [t]he
    target entity does not exist." """
    c = clients.add(server.online("sintdisco"))
    r = disco(c, NS_ITEMS, nonexisting(server), node)
    assert r.get("type") == "result", "expected an (empty) result: " + desc(r)
    q = r.find(f"{{{NS_ITEMS}}}query")
    assert q is None or not q.findall(f"{{{NS_ITEMS}}}item"), desc(r)


def test_items_query_without_presence_subscription_bare_jid(server, clients):
    """XEP-0030 8 (as quoted by the Java test): "In response to a disco#items request, the server MUST return an
    empty result set if [...]" -- here: the requester has no presence subscription to the (existing) target."""
    one = clients.add(server.online("sintdisco1"))
    two = clients.add(server.online("sintdisco2"))
    r = disco(one, NS_ITEMS, two.bare)
    assert r.get("type") == "result", "expected an (empty) result: " + desc(r)
    q = r.find(f"{{{NS_ITEMS}}}query")
    assert q is None or not q.findall(f"{{{NS_ITEMS}}}item"), desc(r)
