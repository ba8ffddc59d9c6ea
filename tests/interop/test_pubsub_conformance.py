"""XEP-0060 / XEP-0163 conformance, written from the XEPs' use cases and error sections
(raw XML): XEP-0059 result set management on items retrieval (6.5.4: max / after / before /
index, the <set/> in the answer, with max_items) and on disco#items of a service's nodes, of
a node's items and of an account's PEP nodes; items asked by an id that does not exist
(6.5.8: an empty <items/>); the service's features (none the service does not implement);
<subscribe-options/> in the subscription (6.1.5); and the error of each XEP section with its
pubsub#errors condition: retract (7.2.3), purge and items of a node without persistent items
(8.5.3.3, 6.5.9.9), the owner's lists and configuration for a non-owner (8.8.1.3, 8.9.1.3,
8.2.3.2), configuration values of the wrong type (8.2.5.3), unsupported options
(collections, item expiry), publish-options preconditions (7.1.5), max_payload_size
(7.1.3.4), pubsub#type (7.1.3.5), notification_type, unsubscribe / options errors (6.2.3,
6.3.4), delete with redirect (8.4.1); item expiry (pubsub#item_expire); a long items answer
cut and paged (6.5.4); the get-pending command (8.7); several owner changes with refused
entries (8.8.2.4, 8.9.2.4); affiliation changes settling pending requests; the
pubsub#show-values subscription option.
"""

import time

from rawxmpp import C, q, stanza_error, tostring
from test_pep import DISCO_INFO, DISCO_ITEMS, NS_EVENT, NS_OWNER, NS_PUBSUB, app_error, ok, tune
from test_pubsub import (create, delete, ev_child, form, items_of, ps, publish, recv_event, rnd,
                         subscribe, svc)

NS_RSM = "http://jabber.org/protocol/rsm"
NODE_CONFIG = NS_PUBSUB + "#node_config"

# XEP-0060 section 10's features that this service does not implement.
NOT_IMPLEMENTED = ("collections", "leased-subscription", "multi-collection",
                   "presence-subscribe", "auto-subscribe", "filtered-notifications",
                   "purge-offline")


def rsm(inner):
    return f"<set xmlns='{NS_RSM}'>{inner}</set>"


def page(c, to, node, set_inner, extra=""):
    """(item ids, <set/>) of an items request with an RSM <set/>."""
    r = ok(ps(c, "get", f"<items node='{node}'{extra}/>{rsm(set_inner)}", to))
    p = r.find(q(NS_PUBSUB, "pubsub"))
    ids = [i.get("id") for i in p.find(q(NS_PUBSUB, "items")).findall(q(NS_PUBSUB, "item"))]
    return ids, p.find(q(NS_RSM, "set"))


def set_info(s):
    """(first, first index, last, count) of a result <set/>."""
    assert s is not None, "no <set/> in the answer"
    first = s.find(q(NS_RSM, "first"))
    last = s.find(q(NS_RSM, "last"))
    count = s.find(q(NS_RSM, "count"))
    return (first.text if first is not None else None,
            first.get("index") if first is not None else None,
            last.text if last is not None else None,
            int(count.text) if count is not None else None)


def disco_items(c, to, node=None, set_inner=None):
    n = f" node='{node}'" if node else ""
    s = rsm(set_inner) if set_inner is not None else ""
    r = ok(c.iq("get", f"<query xmlns='{DISCO_ITEMS}'{n}>{s}</query>", to=to))
    qel = r.find(q(DISCO_ITEMS, "query"))
    return qel.findall(q(DISCO_ITEMS, "item")), qel.find(q(NS_RSM, "set"))


def configure(c, to, node, fields):
    return ps(c, "set", f"<configure node='{node}'>{form(NODE_CONFIG, fields)}</configure>", to,
              ns=NS_OWNER)


def check_rsm_pages(c, to, node, ids):
    """The RSM paging of XEP-0059 over a node holding exactly `ids` (oldest first)."""
    n = len(ids)
    got, s = page(c, to, node, "<max>2</max>")
    assert got == ids[:2] and set_info(s) == (ids[0], "0", ids[1], n), (got, tostring(s))
    got, s = page(c, to, node, f"<max>2</max><after>{ids[1]}</after>")
    assert got == ids[2:4] and set_info(s) == (ids[2], "2", ids[3], n)
    got, s = page(c, to, node, "<max>2</max><before/>")
    assert got == ids[-2:] and set_info(s) == (ids[-2], str(n - 2), ids[-1], n)
    got, s = page(c, to, node, f"<max>2</max><before>{ids[3]}</before>")
    assert got == ids[1:3] and set_info(s)[1] == "1"
    got, s = page(c, to, node, f"<max>9</max><index>{n - 1}</index>")
    assert got == ids[-1:]
    # XEP-0059 2.6: max 0 is the count alone
    got, s = page(c, to, node, "<max>0</max>")
    assert got == [] and set_info(s) == (None, None, None, n)
    # past the end: an empty page that still counts
    got, s = page(c, to, node, f"<max>2</max><after>{ids[-1]}</after>")
    assert got == [] and set_info(s)[3] == n
    # paging forward through the whole set: every item once, in order
    seen, after = [], None
    for _ in range(n + 2):
        a = f"<after>{after}</after>" if after else ""
        got, s = page(c, to, node, f"<max>2</max>{a}")
        if not got:
            break
        assert len(got) <= 2
        seen += got
        after = set_info(s)[2]
    assert seen == ids
    # max_items narrows the set first (the latest items), RSM pages it
    got, s = page(c, to, node, "<max>2</max>", extra=" max_items='3'")
    assert got == ids[-3:-1] and set_info(s) == (ids[-3], "0", ids[-2], 3)
    # errors: an unknown <after/> id, a <max/> that is no number
    r = ps(c, "get", f"<items node='{node}'/>{rsm('<after>no-such-id</after>')}", to)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    r = ps(c, "get", f"<items node='{node}'/>{rsm('<max>many</max>')}", to)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    # without a <set/>: all of them, and no <set/>
    r = ok(ps(c, "get", f"<items node='{node}'/>", to))
    assert r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_RSM, "set")) is None
    assert [i.get("id") for i in items_of(c, to, node)] == ids


def test_rsm_on_items_of_a_service_node_and_a_pep_node(server):
    s = svc(server)
    owner = server.online("rsm")
    reader = server.online("rsr")
    node = "rsm-" + rnd()
    ok(create(owner, s, node))
    ids = [f"i{k}" for k in range(6)]
    for i in ids:
        ok(publish(owner, s, node, tune(i), item_id=i))
    check_rsm_pages(reader, s, node, ids)
    # PEP: the same on the account's own node (kept items: max_items 6)
    pep_node = "urn:test:rsm:" + rnd()
    ok(ps(owner, "set", f"<create node='{pep_node}'/><configure>"
          f"{form(NODE_CONFIG, {'pubsub#max_items': '6', 'pubsub#access_model': 'open'})}"
          "</configure>", None))
    for i in ids:
        ok(publish(owner, None, pep_node, tune(i), item_id=i))
    check_rsm_pages(owner, None, pep_node, ids)
    check_rsm_pages(reader, owner.bare, pep_node, ids)
    ok(delete(owner, s, node))
    server.assert_healthy(owner, reader)
    owner.close()
    reader.close()


def test_rsm_on_disco_items(server):
    s = svc(server)
    owner = server.online("rsd")
    prefix = "rsd-" + rnd()
    mine = [f"{prefix}-{k}" for k in range(3)]
    for n in mine:
        ok(create(owner, s, n))
    # the service's nodes (shared with other tests): page through all of them
    total = None
    seen, after = [], None
    for _ in range(200):
        a = f"<after>{after}</after>" if after else ""
        items, st = disco_items(owner, s, set_inner=f"<max>2</max>{a}")
        first, _, last, count = set_info(st)
        total = count if total is None else total
        if not items:
            break
        assert len(items) <= 2
        seen += [i.get("node") for i in items]
        assert first == items[0].get("node") and last == items[-1].get("node")
        after = last
    assert len(seen) == len(set(seen)) and len(seen) >= total, (len(seen), total)
    assert set(mine) <= set(seen)
    # without <set/>: no <set/>
    items, st = disco_items(owner, s)
    assert st is None and set(mine) <= {i.get("node") for i in items}
    # a node's items, paged by their ids (the disco item's name)
    for i in ("a", "b", "c"):
        ok(publish(owner, s, mine[0], tune(i), item_id=i))
    items, st = disco_items(owner, s, node=mine[0], set_inner="<max>2</max>")
    assert [i.get("name") for i in items] == ["a", "b"] and set_info(st) == ("a", "0", "b", 3)
    items, st = disco_items(owner, s, node=mine[0], set_inner="<max>2</max><after>b</after>")
    assert [i.get("name") for i in items] == ["c"]
    # an account's PEP nodes, and a PEP node's items
    peps = [f"urn:test:{prefix}:{k}" for k in range(3)]
    for n in peps:
        ok(ps(owner, "set", f"<create node='{n}'/><configure>"
              f"{form(NODE_CONFIG, {'pubsub#max_items': '5'})}</configure>", None))
    items, st = disco_items(owner, owner.bare, set_inner="<max>2</max>")
    assert len(items) == 2 and set_info(st)[3] == 3, tostring(st)
    items2, st2 = disco_items(owner, owner.bare, set_inner=f"<max>2</max><after>{set_info(st)[2]}</after>")
    assert {i.get("node") for i in items + items2} == set(peps)
    for i in ("x", "y"):
        ok(publish(owner, None, peps[0], tune(i), item_id=i))
    items, st = disco_items(owner, owner.bare, node=peps[0])
    assert [(i.get("jid"), i.get("name")) for i in items] == [(owner.bare, "x"), (owner.bare, "y")]
    items, st = disco_items(owner, owner.bare, node=peps[0], set_inner="<max>1</max><before/>")
    assert [i.get("name") for i in items] == ["y"] and set_info(st) == ("y", "1", "y", 2)
    r = owner.iq("get", f"<query xmlns='{DISCO_ITEMS}'>{rsm('<after>nope</after>')}</query>", to=s)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    for n in mine:
        ok(delete(owner, s, n))
    owner.close()


def test_features_are_what_the_service_does(server):
    c = server.online("feat")
    r = ok(c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=svc(server)))
    feats = {f.get("var") for f in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))}
    for f in ("rsm", "retrieve-items", "publish-options", "item-ids", "last-published",
              "subscription-options", "config-node", "purge-nodes", "retract-items",
              "multi-items", "shim", "subscription-notifications", "presence-notifications",
              "get-pending"):
        assert f"{NS_PUBSUB}#{f}" in feats, f
    assert NS_RSM in feats
    for f in NOT_IMPLEMENTED:
        assert f"{NS_PUBSUB}#{f}" not in feats, f
    # PEP (the account's disco#info): it pages too
    r = ok(c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=c.bare))
    feats = {f.get("var") for f in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))}
    for f in ("rsm", "auto-create", "publish-options", "retrieve-items", "last-published",
              "pubsub-on-a-jid", "auto-subscribe", "filtered-notifications"):
        assert f"{NS_PUBSUB}#{f}" in feats, f
    for f in ("collections", "get-pending", "leased-subscription", "instant-nodes"):
        assert f"{NS_PUBSUB}#{f}" not in feats, f
    c.close()


def test_items_by_id_and_generated_ids(server):
    s = svc(server)
    owner = server.online("iid")
    node = "iid-" + rnd()
    ok(create(owner, s, node))
    r = ok(publish(owner, s, node, tune("no id")))
    made = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "publish")).find(q(NS_PUBSUB, "item")).get("id")
    assert made
    # 6.5.8: by id; an id that does not exist is left out (an empty <items/>)
    r = ok(ps(owner, "get", f"<items node='{node}'><item id='{made}'/></items>", s))
    got = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items")).findall(q(NS_PUBSUB, "item"))
    assert [i.get("id") for i in got] == [made] and "no id" in tostring(got[0])
    r = ok(ps(owner, "get", f"<items node='{node}'><item id='nonexistent'/></items>", s))
    its = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items"))
    assert its is not None and its.get("node") == node and len(its) == 0, tostring(r)
    # a max_items that is no number
    r = ps(owner, "get", f"<items node='{node}' max_items='lots'/>", s)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    ok(delete(owner, s, node))
    owner.close()


def test_subscription_says_options_are_supported(server):
    s = svc(server)
    owner = server.online("sbo")
    sub = server.online("sbs")
    node = "sbo-" + rnd()
    ok(create(owner, s, node))
    r = ok(subscribe(sub, s, node))
    el = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription"))
    assert el.get("subscription") == "subscribed", tostring(r)
    opts = el.find(q(NS_PUBSUB, "subscribe-options"))
    assert opts is not None and opts.find(q(NS_PUBSUB, "required")) is None, tostring(r)
    ok(delete(owner, s, node))
    owner.close()
    sub.close()


def test_error_conditions_of_each_use_case(server):
    s = svc(server)
    owner = server.online("err")
    other = server.online("ero")
    node = "err-" + rnd()
    ok(create(owner, s, node))
    ok(publish(owner, s, node, tune("x"), item_id="x"))

    def err(r):
        return app_error(r)

    # 7.2.3: retract
    assert err(ps(owner, "set", f"<retract node='{node}'><item id='zz'/></retract>", s)) == ("item-not-found", None)
    assert err(ps(owner, "set", f"<retract node='{node}'/>", s)) == ("bad-request", "item-required")
    assert err(ps(owner, "set", "<retract><item id='x'/></retract>", s)) == ("bad-request", "nodeid-required")
    assert err(ps(owner, "set", "<retract node='no-such'><item id='x'/></retract>", s))[0] == "item-not-found"
    assert err(ps(other, "set", f"<retract node='{node}'><item id='x'/></retract>", s))[0] == "forbidden"
    # 6.5.9: items without a node
    assert err(ps(owner, "get", "<items/>", s)) == ("bad-request", "nodeid-required")
    # the owner's lists, configuration, purge and delete: forbidden to others
    for inner, type_ in ((f"<affiliations node='{node}'/>", "get"),
                         (f"<subscriptions node='{node}'/>", "get"),
                         (f"<configure node='{node}'/>", "get"),
                         (f"<affiliations node='{node}'><affiliation jid='{other.bare}' affiliation='owner'/></affiliations>", "set"),
                         (f"<subscriptions node='{node}'><subscription jid='{other.bare}' subscription='subscribed'/></subscriptions>", "set"),
                         (f"<purge node='{node}'/>", "set"),
                         (f"<delete node='{node}'/>", "set")):
        r = ps(other, type_, inner, s, ns=NS_OWNER)
        assert stanza_error(r)[1] == "forbidden", (inner, tostring(r))
    r = ps(owner, "get", "<configure node='no-such-node'/>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    # 8.2.5.3: values of the wrong type are refused, nothing changes
    for field, value in (("pubsub#max_items", "abc"), ("pubsub#deliver_payloads", "maybe"),
                         ("pubsub#access_model", "nobody"), ("pubsub#max_payload_size", "-3"),
                         ("pubsub#notification_type", "chat")):
        r = configure(owner, s, node, {field: value})
        assert stanza_error(r)[1] == "not-acceptable", (field, tostring(r))
    # options the service does not offer: feature-not-implemented + unsupported
    for field, value in (("pubsub#node_type", "collection"), ("pubsub#collection", "parent"),
                         ("pubsub#children_max", "5")):
        r = configure(owner, s, node, {field: value})
        assert err(r) == ("feature-not-implemented", "unsupported"), tostring(r)
        assert r.find(C("error")).find(q(NS_PUBSUB + "#errors", "unsupported")).get("feature") == "collections"
    # 7.1.5: publish-options that do not hold
    opts = form(NS_PUBSUB + "#publish-options", {"pubsub#access_model": "whitelist"})
    r = ps(owner, "set", f"<publish node='{node}'><item>{tune('p')}</item></publish>"
           f"<publish-options>{opts}</publish-options>", s)
    assert err(r) == ("conflict", "precondition-not-met"), tostring(r)
    opts = form(NS_PUBSUB + "#publish-options", {"pubsub#access_model": "open"})
    ok(ps(owner, "set", f"<publish node='{node}'><item>{tune('p')}</item></publish>"
          f"<publish-options>{opts}</publish-options>", s))
    # 7.1.3.4: max_payload_size; 7.1.3.5: pubsub#type
    ok(configure(owner, s, node, {"pubsub#max_payload_size": "200"}))
    r = publish(owner, s, node, tune("y" * 400))
    assert err(r) == ("not-acceptable", "payload-too-big"), tostring(r)
    # the limit is the payload's own size: 198 bytes pass, 208 do not
    assert len(tune("y" * 130)) == 198
    ok(publish(owner, s, node, tune("y" * 130)))
    r = publish(owner, s, node, tune("y" * 140))
    assert err(r) == ("not-acceptable", "payload-too-big"), tostring(r)
    ok(configure(owner, s, node, {"pubsub#max_payload_size": "", "pubsub#type": "urn:test:other"}))
    r = publish(owner, s, node, tune("typed"))
    assert err(r) == ("bad-request", "invalid-payload"), tostring(r)
    ok(publish(owner, s, node, "<x xmlns='urn:test:other'/>"))
    ok(configure(owner, s, node, {"pubsub#type": ""}))
    # 6.2.3.2 / 6.3.4: not subscribed
    r = ps(other, "set", f"<unsubscribe node='{node}' jid='{other.jid}'/>", s)
    assert err(r) == ("unexpected-request", "not-subscribed"), tostring(r)
    r = ps(other, "get", f"<options node='{node}' jid='{other.jid}'/>", s)
    assert err(r) == ("unexpected-request", "not-subscribed"), tostring(r)
    r = ps(other, "get", f"<options node='{node}'/>", s)
    assert err(r) == ("bad-request", "jid-required"), tostring(r)
    r = ps(other, "set", f"<subscribe node='{node}' jid='{owner.bare}'/>", s)
    assert err(r) == ("bad-request", "invalid-jid"), tostring(r)
    # 8.5.3.3 and 6.5.9.9: a node that keeps no items
    ok(configure(owner, s, node, {"pubsub#persist_items": "0"}))
    for r in (ps(owner, "set", f"<purge node='{node}'/>", s, ns=NS_OWNER),
              ps(owner, "get", f"<items node='{node}'/>", s)):
        assert err(r) == ("feature-not-implemented", "unsupported"), tostring(r)
        assert r.find(C("error")).find(q(NS_PUBSUB + "#errors", "unsupported")).get("feature") == "persistent-items"
    server.assert_healthy(owner, other)
    ok(delete(owner, s, node))
    owner.close()
    other.close()


def test_notification_type_retract_notify_and_delete_redirect(server):
    s = svc(server)
    owner = server.online("ntf")
    sub = server.online("nts")
    node = "ntf-" + rnd()
    ok(create(owner, s, node, {"pubsub#notification_type": "normal", "pubsub#notify_retract": "0"}))
    ok(subscribe(sub, s, node))
    ok(publish(owner, s, node, tune("n"), item_id="n1"))
    e = sub.recv(lambda e: e.tag == C("message") and e.get("from") == s, what="notification")
    assert e.get("type") == "normal", tostring(e)
    # notify='true' on retract overrides notify_retract=0 (7.2.2.1)
    ok(ps(owner, "set", f"<retract node='{node}' notify='true'><item id='n1'/></retract>", s))
    e = sub.recv(lambda e: e.tag == C("message") and e.get("from") == s, what="retraction")
    assert ev_child(e).find(q(NS_EVENT, "retract")).get("id") == "n1", tostring(e)
    # 8.4.1: delete with a redirect
    uri = f"xmpp:{s}?;node=elsewhere"
    ok(ps(owner, "set", f"<delete node='{node}'><redirect uri='{uri}'/></delete>", s, ns=NS_OWNER))
    e = sub.recv(lambda e: e.tag == C("message") and e.get("from") == s, what="deletion")
    d = ev_child(e)
    assert d.tag == q(NS_EVENT, "delete") and d.find(q(NS_EVENT, "redirect")).get("uri") == uri, tostring(e)
    owner.close()
    sub.close()


def test_item_expire(server):
    """pubsub#item_expire: an item is gone that many seconds after its publication: not
    retrieved, not listed, not sent as the last item; the others stay."""
    s = svc(server)
    owner = server.online("exp")
    sub = server.online("exs")
    node = "exp-" + rnd()
    ok(create(owner, s, node, {"pubsub#item_expire": "2", "pubsub#send_last_published_item": "on_sub"}))
    r = ok(ps(owner, "get", f"<configure node='{node}'/>", s, ns=NS_OWNER))
    fields = {f.get("var"): [v.text for v in f.findall(q("jabber:x:data", "value"))]
              for f in r.iter(q("jabber:x:data", "field"))}
    assert fields["pubsub#item_expire"] == ["2"], fields
    t0 = time.monotonic()
    ok(publish(owner, s, node, tune("old"), item_id="old"))
    time.sleep(1.2)
    ok(publish(owner, s, node, tune("new"), item_id="new"))
    assert [i.get("id") for i in items_of(owner, s, node)] == ["old", "new"]
    # "old" expires about 2 s after its publication, "new" stays a while longer
    time.sleep(max(0.0, t0 + 2.4 - time.monotonic()))
    left = [i.get("id") for i in items_of(owner, s, node)]
    assert left == ["new"], left
    items, _ = disco_items(owner, s, node=node)
    assert [i.get("name") for i in items] == ["new"]
    r = ok(ps(owner, "get", f"<items node='{node}'><item id='old'/></items>", s))
    assert len(r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items"))) == 0
    # everything expired: nothing listed, nothing sent on subscription
    deadline = time.monotonic() + 5
    while items_of(owner, s, node) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert items_of(owner, s, node) == []
    ok(subscribe(sub, s, node))
    sub.expect_nothing(lambda e: e.tag == C("message") and e.get("from") == s, 0.5,
                       what="an expired last item")
    # a new item after that: it is there (the expired ones were dropped on publish)
    ok(publish(owner, s, node, tune("fresh"), item_id="fresh"))
    recv_event(sub, s, node)
    assert [i.get("id") for i in items_of(owner, s, node)] == ["fresh"]
    # 0 (or empty) is never; a negative or non-numeric value is refused
    ok(configure(owner, s, node, {"pubsub#item_expire": "0"}))
    for bad in ("-1", "soon"):
        r = configure(owner, s, node, {"pubsub#item_expire": bad})
        assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    # PEP nodes expire items too
    pep_node = "urn:test:exp:" + rnd()
    ok(ps(owner, "set", f"<create node='{pep_node}'/><configure>"
          f"{form(NODE_CONFIG, {'pubsub#item_expire': '1', 'pubsub#max_items': '5'})}</configure>", None))
    ok(publish(owner, None, pep_node, tune("p"), item_id="p"))
    assert [i.get("id") for i in items_of(owner, None, pep_node)] == ["p"]
    deadline = time.monotonic() + 5
    while items_of(owner, None, pep_node) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert items_of(owner, None, pep_node) == []
    ok(delete(owner, s, node))
    owner.close()
    sub.close()


def test_long_answer_is_cut_and_paged(server):
    """6.5.4: items too large for one answer come in part, with an RSM <set/> (count, first,
    last) through which the rest is paged; a small answer carries no <set/>."""
    s = svc(server)
    owner = server.online("big")
    node = "big-" + rnd()
    ok(create(owner, s, node))
    blob = "z" * (100 * 1024)
    for i in ("b0", "b1", "b2", "b3"):
        ok(publish(owner, s, node, f"<blob xmlns='urn:test:blob'>{blob}</blob>", item_id=i))
    r = ok(ps(owner, "get", f"<items node='{node}'/>", s))
    p = r.find(q(NS_PUBSUB, "pubsub"))
    got = [i.get("id") for i in p.find(q(NS_PUBSUB, "items")).findall(q(NS_PUBSUB, "item"))]
    first, index, last, count = set_info(p.find(q(NS_RSM, "set")))
    assert 1 <= len(got) < 4 and got == ["b0", "b1", "b2", "b3"][:len(got)], got
    assert (first, index, last, count) == ("b0", "0", got[-1], 4)
    seen, after = list(got), last
    for _ in range(5):
        more, st = page(owner, s, node, f"<after>{after}</after>")
        if not more:
            break
        seen += more
        after = set_info(st)[2]
    assert seen == ["b0", "b1", "b2", "b3"], seen
    ok(delete(owner, s, node))
    owner.close()


NS_COMMANDS = "http://jabber.org/protocol/commands"
GET_PENDING = NS_PUBSUB + "#get-pending"
NS_DATA = "jabber:x:data"


def command(c, to, inner="", attrs=""):
    return c.iq("set", f"<command xmlns='{NS_COMMANDS}' node='{GET_PENDING}'{attrs}>{inner}</command>", to=to)


def test_get_pending_command(server):
    """8.7: the owner's XEP-0050 command get-pending: the form lists its nodes with pending
    subscriptions; submitting one re-sends an approval request (8.6) per pending
    subscription, which the owner answers. Discovery lists the command; who owns no node is
    forbidden, a node not its own forbidden, a missing node item-not-found."""
    s = svc(server)
    owner = server.online("gpo")
    a = server.online("gpa")
    stranger = server.online("gps")
    node = "gp-" + rnd()
    plain = "gpp-" + rnd()
    ok(create(owner, s, node, {"pubsub#access_model": "authorize"}))
    ok(create(owner, s, plain))
    r = ok(subscribe(a, s, node))
    assert r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription")).get("subscription") == "pending"

    def is_ask(e):
        return e.tag == C("message") and e.get("from") == s and e.find(q(NS_DATA, "x")) is not None

    owner.recv(is_ask, what="the first approval request")
    # discovery: the service says it does commands and get-pending, and lists the command
    r = ok(owner.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=s))
    feats = {f.get("var") for f in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))}
    assert NS_COMMANDS in feats and GET_PENDING in feats
    items, _ = disco_items(owner, s, node=NS_COMMANDS)
    assert [(i.get("jid"), i.get("node")) for i in items] == [(s, GET_PENDING)]
    r = ok(owner.iq("get", f"<query xmlns='{DISCO_INFO}' node='{GET_PENDING}'/>", to=s))
    ident = r.find(q(DISCO_INFO, "query")).find(q(DISCO_INFO, "identity"))
    assert (ident.get("category"), ident.get("type")) == ("automation", "command-node")
    # execute: the form names the node with a pending subscription (not the other one)
    r = ok(command(owner, s, attrs=" action='execute'"))
    cmd = r.find(q(NS_COMMANDS, "command"))
    assert cmd.get("status") == "executing" and cmd.get("sessionid"), tostring(r)
    x = cmd.find(q(NS_DATA, "x"))
    fields = {f.get("var"): f for f in x.findall(q(NS_DATA, "field"))}
    assert fields["FORM_TYPE"].findtext(q(NS_DATA, "value")) == NS_PUBSUB + "#subscribe_authorization"
    options = [o.findtext(q(NS_DATA, "value")) for o in fields["pubsub#node"].findall(q(NS_DATA, "option"))]
    assert node in options and plain not in options, options
    # submit the node: completed, and the approval request comes again
    submit = (f"<x xmlns='{NS_DATA}' type='submit'><field var='pubsub#node'><value>{node}</value>"
              "</field></x>")
    r = ok(command(owner, s, submit, attrs=f" sessionid='{cmd.get('sessionid')}'"))
    assert r.find(q(NS_COMMANDS, "command")).get("status") == "completed", tostring(r)
    ask = owner.recv(is_ask, what="the approval request again")
    vals = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in ask.find(q(NS_DATA, "x")).findall(q(NS_DATA, "field"))}
    assert (vals["pubsub#node"], vals["pubsub#subscriber_jid"]) == (node, a.jid), tostring(ask)
    answer = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
              f"<value>{NS_PUBSUB}#subscribe_authorization</value></field>"
              f"<field var='pubsub#node'><value>{node}</value></field>"
              f"<field var='pubsub#subscriber_jid'><value>{a.jid}</value></field>"
              "<field var='pubsub#allow'><value>true</value></field></x>")
    owner.send_raw(f"<message to='{s}' id='ap-{rnd()}'>{answer}</message>")
    e = recv_event(a, s, node)
    assert ev_child(e).get("subscription") == "subscribed", tostring(e)
    # errors: no node owned, a node not one's own, a node that does not exist, cancel
    assert stanza_error(command(stranger, s, attrs=" action='execute'"))[1] == "forbidden"
    assert stanza_error(command(stranger, s, submit))[1] == "forbidden"
    missing = submit.replace(node, "no-such-node-" + rnd())
    assert stanza_error(command(owner, s, missing))[1] == "item-not-found"
    r = ok(command(owner, s, attrs=" action='cancel' sessionid='x'"))
    assert r.find(q(NS_COMMANDS, "command")).get("status") == "canceled"
    r = owner.iq("set", f"<command xmlns='{NS_COMMANDS}' node='urn:no-such-command'/>", to=s)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    server.assert_healthy(owner, a, stranger)
    for n in (node, plain):
        ok(delete(owner, s, n))
    for c in (owner, a, stranger):
        c.close()


def test_owner_changes_with_refused_entries(server):
    """8.9.2.4 / 8.8.2.4: of several changes, the valid ones take effect; the error
    (not-acceptable) returns only the refused entries, each with the affiliation or
    subscription it keeps; one entity named twice is bad-request."""
    s = svc(server)
    owner = server.online("oca")
    b = server.online("ocb")
    c = server.online("occ")
    node = "oc-" + rnd()
    ok(create(owner, s, node))
    r = ps(owner, "set", f"<affiliations node='{node}'>"
           f"<affiliation jid='{owner.bare}' affiliation='none'/>"
           f"<affiliation jid='{b.bare}' affiliation='publisher'/>"
           f"<affiliation jid='{c.bare}' affiliation='emperor'/>"
           "</affiliations>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    back = r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "affiliations"))
    got = {a.get("jid"): a.get("affiliation") for a in back.findall(q(NS_OWNER, "affiliation"))}
    assert got == {owner.bare: "owner", c.bare: "none"}, tostring(r)
    r = ok(ps(owner, "get", f"<affiliations node='{node}'/>", s, ns=NS_OWNER))
    now = {a.get("jid"): a.get("affiliation")
           for a in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "affiliations"))}
    assert now == {owner.bare: "owner", b.bare: "publisher"}, now
    r = ps(owner, "set", f"<affiliations node='{node}'>"
           f"<affiliation jid='{c.bare}' affiliation='member'/>"
           f"<affiliation jid='{c.bare}' affiliation='outcast'/></affiliations>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    r = ps(owner, "set", f"<subscriptions node='{node}'>"
           f"<subscription jid='{b.bare}' subscription='subscribed'/>"
           f"<subscription jid='{c.bare}' subscription='unconfigured-ish'/>"
           "</subscriptions>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    back = r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))
    got = {x.get("jid"): x.get("subscription") for x in back.findall(q(NS_OWNER, "subscription"))}
    assert got == {c.bare: "none"}, tostring(r)
    recv_event(b, s, node)  # b is told it is subscribed
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    subs = [x.get("jid") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))]
    assert subs == [b.bare], subs
    server.assert_healthy(owner, b, c)
    ok(delete(owner, s, node))
    for x in (owner, b, c):
        x.close()


def test_affiliation_changes_settle_pending_requests(server):
    """8.7 (note): a pending subscriber made member (or publisher, owner) is approved, an
    outcast loses its subscriptions; each is told with a subscription event (8.8.4)."""
    s = svc(server)
    owner = server.online("apo")
    a = server.online("apa")
    b = server.online("apb")
    node = "ap-" + rnd()
    ok(create(owner, s, node, {"pubsub#access_model": "authorize"}))
    for c in (a, b):
        r = ok(subscribe(c, s, node))
        assert r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription")).get("subscription") == "pending"
    ok(ps(owner, "set", f"<affiliations node='{node}'><affiliation jid='{a.bare}' affiliation='member'/>"
          f"<affiliation jid='{b.bare}' affiliation='outcast'/></affiliations>", s, ns=NS_OWNER))
    e = recv_event(a, s, node)
    assert ev_child(e).get("subscription") == "subscribed" and ev_child(e).get("jid") == a.jid, tostring(e)
    e = recv_event(b, s, node)
    assert ev_child(e).get("subscription") == "none", tostring(e)
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    states = {x.get("jid"): x.get("subscription")
              for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))}
    assert states == {a.jid: "subscribed"}, states
    ok(publish(owner, s, node, tune("for members"), item_id="m"))
    e = recv_event(a, s, node)
    assert ev_child(e).find(q(NS_EVENT, "item")).get("id") == "m"
    ok(delete(owner, s, node))
    for c in (owner, a, b):
        c.close()


def test_show_values_subscription_option(server):
    """6.3 pubsub#show-values: a bare-JID subscription with show-values 'dnd' notifies only
    the resource showing dnd; the options form returns the values; changed to
    'online', the other resource is notified instead; a state not in the list is
    invalid-options."""
    s = svc(server)
    owner = server.online("shv")
    busy = server.online("shb", resource="busy", presence=False)
    free = server.login(busy.bare, busy.password, resource="free", presence=True)
    busy.presence(extra="<show>dnd</show>")
    busy.ping_server()
    free.ping_server()
    node = "shv-" + rnd()
    ok(create(owner, s, node))
    r = ok(ps(busy, "set", f"<subscribe node='{node}' jid='{busy.bare}'/>"
              f"<options>{form(NS_PUBSUB + '#subscribe_options', {'pubsub#show-values': 'dnd'})}</options>", s))
    subid = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription")).get("subid")
    ok(publish(owner, s, node, tune("one"), item_id="1"))
    e = recv_event(busy, s, node)
    assert e.get("to") == busy.jid, tostring(e)
    free.expect_nothing(lambda e: e.tag == C("message") and e.get("from") == s, 0.6,
                        what="a notification to the resource not showing dnd")
    r = ok(ps(busy, "get", f"<options node='{node}' jid='{busy.bare}' subid='{subid}'/>", s))
    x = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "options")).find(q(NS_DATA, "x"))
    shows = [f for f in x.findall(q(NS_DATA, "field")) if f.get("var") == "pubsub#show-values"]
    assert [v.text for v in shows[0].findall(q(NS_DATA, "value"))] == ["dnd"], tostring(r)
    ok(ps(busy, "set", f"<options node='{node}' jid='{busy.bare}' subid='{subid}'>"
          f"{form(NS_PUBSUB + '#subscribe_options', {'pubsub#show-values': 'online'})}</options>", s))
    ok(publish(owner, s, node, tune("two"), item_id="2"))
    e = recv_event(free, s, node)
    assert e.get("to") == free.jid, tostring(e)
    busy.expect_nothing(lambda e: e.tag == C("message") and e.get("from") == s, 0.6,
                        what="a notification to the dnd resource")
    r = ps(busy, "set", f"<options node='{node}' jid='{busy.bare}' subid='{subid}'>"
           f"{form(NS_PUBSUB + '#subscribe_options', {'pubsub#show-values': 'sleeping'})}</options>", s)
    assert app_error(r) == ("bad-request", "invalid-options"), tostring(r)
    ok(delete(owner, s, node))
    for c in (owner, busy, free):
        c.close()
