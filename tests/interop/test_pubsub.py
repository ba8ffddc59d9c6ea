"""XEP-0060 publish-subscribe at pubsub.<domain> of every served domain: discovery (the
domain's items, the service's identity and features, nodes, a node's meta-data and
items), node creation (named, instant, with a configuration; who may create), publish /
items / retract with notifications to subscribers (bare and full JIDs; notify_retract,
deliver_payloads, persist_items, max_items), subscribe / unsubscribe with SubIDs
(several per JID), subscription options, the requester's subscriptions and affiliations,
the owner's management of both, access models (open, whitelist with members, outcasts,
presence, authorize with the owners' approval), delete and purge notifications, and the errors XEP-0060
names for each, with their pubsub#errors conditions; the last item on subscription,
notify_config and notify_sub, subscriptions ended by a closing configuration, the
[pubsub] configuration, and account deletion. Explicit subscriptions to PEP nodes
(XEP-0163 on the same code). slixmpp's xep_0060 plugin against the service, and one
cluster test: a subscriber on another node gets the notification.

Something that must NOT arrive is checked with a marker sent later over the same path
(notifications of one node are sent in order).
"""

import asyncio
import os
import ssl

import pytest

from cluster import shared_cluster  # noqa: F401 (fixture)
from im import make_mutual
from rawxmpp import C, bare, q, stanza_error, tostring
from test_pep import (DISCO_INFO, DISCO_ITEMS, NS_DATA, NS_ERRORS, NS_EVENT, NS_OWNER, NS_PUBSUB,
                      app_error, ok, tune)

NS_SHIM = "http://jabber.org/protocol/shim"
SUB_OPTIONS = NS_PUBSUB + "#subscribe_options"


def svc(server):
    return f"pubsub.{server.domain}"


def rnd():
    return os.urandom(5).hex()


def ps(c, type_, inner, to, ns=NS_PUBSUB):
    return c.iq(type_, f"<pubsub xmlns='{ns}'>{inner}</pubsub>", to=to)


def form(form_type, fields, type_="submit"):
    pairs = fields.items() if isinstance(fields, dict) else fields
    inner = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in pairs)
    return (f"<x xmlns='{NS_DATA}' type='{type_}'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{form_type}</value></field>{inner}</x>")


def create(c, to, node=None, config=None):
    n = f" node='{node}'" if node is not None else ""
    cfg = f"<configure>{form(NS_PUBSUB + '#node_config', config)}</configure>" if config else ""
    return ps(c, "set", f"<create{n}/>{cfg}", to)


def publish(c, to, node, payload=None, item_id=None, with_item=True):
    iid = f" id='{item_id}'" if item_id else ""
    item = f"<item{iid}>{payload or ''}</item>" if with_item else ""
    return ps(c, "set", f"<publish node='{node}'>{item}</publish>", to)


def subscribe(c, to, node, jid=None, options=None):
    opts = f"<options>{form(SUB_OPTIONS, options)}</options>" if options else ""
    return ps(c, "set", f"<subscribe node='{node}' jid='{jid or c.jid}'/>{opts}", to)


def sub_of(r):
    return ok(r).find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription"))


def unsubscribe(c, to, node, jid=None, subid=None):
    s = f" subid='{subid}'" if subid else ""
    return ps(c, "set", f"<unsubscribe node='{node}' jid='{jid or c.jid}'{s}/>", to)


def items_of(c, to, node):
    r = ok(ps(c, "get", f"<items node='{node}'/>", to))
    return r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items")).findall(q(NS_PUBSUB, "item"))


def is_event(e, service, node):
    if e.tag != C("message") or e.get("from") != service:
        return False
    ev = e.find(q(NS_EVENT, "event"))
    return ev is not None and any(ch.get("node") == node for ch in ev)


def recv_event(c, service, node, timeout=None):
    e = c.recv(lambda e: is_event(e, service, node), timeout, what=f"event {node} from {service}")
    assert e.get("type") == "headline", tostring(e)
    return e


def ev_child(e):
    return list(e.find(q(NS_EVENT, "event")))[0]


def delete(c, to, node):
    return ps(c, "set", f"<delete node='{node}'/>", to, ns=NS_OWNER)


# ------------------------------------------------------------------ discovery

def test_discovery_of_the_service_and_its_nodes(server):
    a = server.online("psd")
    s = svc(server)
    for domain in (server.domain, "example.org"):
        r = ok(a.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=domain))
        jids = [i.get("jid") for i in r.find(q(DISCO_ITEMS, "query"))]
        assert f"pubsub.{domain}" in jids, tostring(r)
    r = ok(a.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=s))
    qel = r.find(q(DISCO_INFO, "query"))
    ids = [(i.get("category"), i.get("type")) for i in qel.findall(q(DISCO_INFO, "identity"))]
    assert ids == [("pubsub", "service")], tostring(r)
    feats = {f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))}
    for f in ("create-nodes", "instant-nodes", "publish", "subscribe", "multi-subscribe",
              "retrieve-subscriptions", "retrieve-affiliations", "manage-subscriptions",
              "modify-affiliations", "subscription-options", "config-node", "delete-items",
              "delete-nodes", "purge-nodes", "access-open", "access-whitelist", "meta-data"):
        assert f"{NS_PUBSUB}#{f}" in feats, f
    assert NS_PUBSUB in feats and f"{NS_PUBSUB}#access-authorize" in feats
    node = "disco-" + rnd()
    ok(create(a, s, node, {"pubsub#title": "Princely Musings"}))
    ok(publish(a, s, node, tune("one"), item_id="i1"))
    r = ok(a.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=s))
    mine = [i for i in r.find(q(DISCO_ITEMS, "query")) if i.get("node") == node]
    assert len(mine) == 1 and mine[0].get("jid") == s and mine[0].get("name") == "Princely Musings"
    r = ok(a.iq("get", f"<query xmlns='{DISCO_INFO}' node='{node}'/>", to=s))
    qel = r.find(q(DISCO_INFO, "query"))
    assert qel.get("node") == node
    ident = qel.find(q(DISCO_INFO, "identity"))
    assert (ident.get("category"), ident.get("type")) == ("pubsub", "leaf")
    meta = {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))]
            for f in qel.find(q(NS_DATA, "x")).findall(q(NS_DATA, "field"))}
    assert meta["FORM_TYPE"] == [NS_PUBSUB + "#meta-data"]
    assert meta["pubsub#owner"] == [bare(a.jid)] and meta["pubsub#title"] == ["Princely Musings"]
    # 5.4: the configured options and the automatic information
    assert meta["pubsub#creator"] == [bare(a.jid)] and meta["pubsub#creation_date"][0]
    assert meta["pubsub#access_model"] == ["open"] and meta["pubsub#persist_items"] == ["1"]
    assert meta["pubsub#num_subscribers"] == ["0"]
    r = ok(a.iq("get", f"<query xmlns='{DISCO_ITEMS}' node='{node}'/>", to=s))
    assert [i.get("name") for i in r.find(q(DISCO_ITEMS, "query"))] == ["i1"]
    for ns in (DISCO_INFO, DISCO_ITEMS):
        r = a.iq("get", f"<query xmlns='{ns}' node='missing-{rnd()}'/>", to=s)
        assert stanza_error(r)[1] == "item-not-found", tostring(r)
    ok(delete(a, s, node))
    a.close()


# ------------------------------------------------------------------ nodes and items

def test_create_publish_retract_and_notifications(server):
    s = svc(server)
    owner = server.online("pso")
    sub = server.online("pss")
    node = "n-" + rnd()
    ok(create(owner, s, node))
    r = create(owner, s, node)
    assert stanza_error(r)[1] == "conflict", tostring(r)
    # instant node: the service names it
    r = ok(create(owner, s))
    instant = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "create")).get("node")
    assert instant, tostring(r)
    ok(delete(owner, s, instant))
    # subscribe with the bare JID: every available resource is notified
    sub2 = server.login(sub.bare, sub.password, presence=True)
    el = sub_of(subscribe(sub, s, node, jid=bare(sub.jid)))
    assert el.get("subscription") == "subscribed" and el.get("subid") and el.get("node") == node
    assert el.get("jid") == bare(sub.jid)
    r = ok(publish(owner, s, node, tune("hello"), item_id="first"))
    assert r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "publish")).find(q(NS_PUBSUB, "item")).get("id") == "first"
    for c in (sub, sub2):
        e = recv_event(c, s, node)
        item = ev_child(e).find(q(NS_EVENT, "item"))
        assert item.get("id") == "first" and "hello" in tostring(item), tostring(e)
    # the publisher is not subscribed: nothing for it (marker: the items reply)
    owner.expect_nothing(lambda e: is_event(e, s, node), 0.3, what="a notification to the publisher")
    # an item id made by the service, then items, retract (notified: notify_retract)
    r = ok(publish(owner, s, node, tune("second")))
    made = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "publish")).find(q(NS_PUBSUB, "item")).get("id")
    assert made and made != "first"
    recv_event(sub, s, node)
    recv_event(sub2, s, node)
    assert [i.get("id") for i in items_of(sub, s, node)] == ["first", made]
    ok(ps(owner, "set", f"<retract node='{node}' notify='true'><item id='first'/></retract>", s))
    e = recv_event(sub, s, node)
    assert ev_child(e).find(q(NS_EVENT, "retract")).get("id") == "first"
    recv_event(sub2, s, node)
    assert [i.get("id") for i in items_of(sub, s, node)] == [made]
    # a subscriber cannot publish (publish_model publishers) or retract
    r = publish(sub, s, node, tune("x"))
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    r = ps(sub, "set", f"<retract node='{node}'><item id='{made}'/></retract>", s)
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    # purge and delete, both notified
    ok(ps(owner, "set", f"<purge node='{node}'/>", s, ns=NS_OWNER))
    e = recv_event(sub, s, node)
    assert ev_child(e).tag == q(NS_EVENT, "purge")
    recv_event(sub2, s, node)
    assert items_of(owner, s, node) == []
    ok(delete(owner, s, node))
    e = recv_event(sub, s, node)
    assert ev_child(e).tag == q(NS_EVENT, "delete")
    recv_event(sub2, s, node)
    r = ps(sub, "get", f"<items node='{node}'/>", s)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    r = delete(owner, s, node)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    for c in (owner, sub, sub2):
        c.close()


def test_open_publish_model_and_item_publishers(server):
    """publish_model open: anyone (not an outcast) publishes; the service records the
    publisher (7.1.2, the 'publisher' attribute), who may retract its own items and no
    other's; subscribers (publish_model subscribers) likewise."""
    s = svc(server)
    owner = server.online("pso")
    anyone = server.online("psa")
    node = "open-" + rnd()
    ok(create(owner, s, node, {"pubsub#publish_model": "open"}))
    ok(subscribe(owner, s, node))
    ok(publish(owner, s, node, tune("owner's"), item_id="o"))
    recv_event(owner, s, node)
    ok(publish(anyone, s, node, tune("anyone's"), item_id="a"))
    e = recv_event(owner, s, node)
    assert ev_child(e).find(q(NS_EVENT, "item")).get("publisher") == bare(anyone.jid), tostring(e)
    stored = {i.get("id"): i.get("publisher") for i in items_of(owner, s, node)}
    assert stored == {"o": bare(owner.jid), "a": bare(anyone.jid)}, stored
    r = ps(anyone, "set", f"<retract node='{node}'><item id='o'/></retract>", s)
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    ok(ps(anyone, "set", f"<retract node='{node}'><item id='a'/></retract>", s))
    assert [i.get("id") for i in items_of(owner, s, node)] == ["o"]
    # subscribers model: a subscriber publishes, a stranger may not
    sub_node = "subs-" + rnd()
    ok(create(owner, s, sub_node, {"pubsub#publish_model": "subscribers"}))
    assert stanza_error(publish(anyone, s, sub_node, tune("x")))[1] == "forbidden"
    ok(subscribe(anyone, s, sub_node))
    ok(publish(anyone, s, sub_node, tune("x")))
    for n in (node, sub_node):
        ok(delete(owner, s, n))
    owner.close()
    anyone.close()


def test_node_configuration_shapes_notifications(server):
    s = svc(server)
    owner = server.online("psc")
    sub = server.online("psc")
    node = "cfg-" + rnd()
    ok(create(owner, s, node, {"pubsub#max_items": "2", "pubsub#notify_retract": "0",
                               "pubsub#deliver_payloads": "0"}))
    r = ok(ps(owner, "get", f"<configure node='{node}'/>", s, ns=NS_OWNER))
    x = r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "configure")).find(q(NS_DATA, "x"))
    cfg = {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))] for f in x.findall(q(NS_DATA, "field"))}
    assert cfg["pubsub#max_items"] == ["2"] and cfg["pubsub#access_model"] == ["open"]
    assert cfg["pubsub#deliver_payloads"] == ["0"] and cfg["pubsub#notify_retract"] == ["0"]
    ok(subscribe(sub, s, node))
    for i in range(3):
        ok(publish(owner, s, node, tune(f"t{i}"), item_id=f"i{i}"))
        e = recv_event(sub, s, node)
        item = ev_child(e).find(q(NS_EVENT, "item"))
        assert item.get("id") == f"i{i}" and len(item) == 0, "payload delivered: " + tostring(e)
    assert [i.get("id") for i in items_of(owner, s, node)] == ["i1", "i2"]
    # no retract notification; the marker is the next publish
    ok(ps(owner, "set", f"<retract node='{node}'><item id='i1'/></retract>", s))
    ok(publish(owner, s, node, tune("marker"), item_id="m"))
    e = recv_event(sub, s, node)
    assert ev_child(e).find(q(NS_EVENT, "item")).get("id") == "m", "retract notified: " + tostring(e)
    # transient, notification-only: no item allowed, a bare publish notifies
    ok(ps(owner, "set", f"<configure node='{node}'>"
                        f"{form(NS_PUBSUB + '#node_config', {'pubsub#persist_items': '0'})}</configure>",
          s, ns=NS_OWNER))
    assert app_error(publish(owner, s, node, tune("x"), item_id="x")) == ("bad-request", "item-forbidden")
    # nothing kept: items, retract and purge are not offered (6.5.9.4, 7.2.3.5, 8.5.3.3)
    for r in (ps(owner, "set", f"<retract node='{node}'><item id='m'/></retract>", s),
              ps(owner, "set", f"<purge node='{node}'/>", s, ns=NS_OWNER),
              ps(sub, "get", f"<items node='{node}'/>", s)):
        assert app_error(r) == ("feature-not-implemented", "unsupported"), tostring(r)
        assert r.find(C("error")).find(q(NS_ERRORS, "unsupported")).get("feature") == "persistent-items"
    ok(publish(owner, s, node, with_item=False))
    e = recv_event(sub, s, node)
    assert ev_child(e).tag == q(NS_EVENT, "items") and len(ev_child(e)) == 0, tostring(e)
    # payload node: payload required; persistent notification node: item required
    node2 = "cfg2-" + rnd()
    ok(create(owner, s, node2))
    assert app_error(publish(owner, s, node2, with_item=False)) == ("bad-request", "item-required")
    assert app_error(publish(owner, s, node2, item_id="e")) == ("bad-request", "payload-required")
    # bad values: not-acceptable
    for field, value in (("pubsub#max_items", "zero"), ("pubsub#access_model", "nobody"),
                         ("pubsub#deliver_payloads", "maybe"), ("pubsub#no_such_field", "1")):
        r = ps(owner, "set", f"<configure node='{node2}'>{form(NS_PUBSUB + '#node_config', {field: value})}"
                             "</configure>", s, ns=NS_OWNER)
        assert stanza_error(r)[1] == "not-acceptable", (field, tostring(r))
    # item expiry is taken (test_pubsub_conformance checks it), a negative one is not;
    # a configuration naming a node of its own is bad
    ok(create(owner, s, "exp-" + rnd(), {"pubsub#item_expire": "604800"}))
    r = create(owner, s, "exp-" + rnd(), {"pubsub#item_expire": "-5"})
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    r = ps(owner, "set", f"<create node='c-{rnd()}'/><configure node='other'>"
                         f"{form(NS_PUBSUB + '#node_config', {})}</configure>", s)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    # the XEP's own create-and-configure form (fields this service keeps or ignores)
    xep = "xep-" + rnd()
    ok(create(owner, s, xep, [("pubsub#title", "Princely Musings (Atom)"), ("pubsub#deliver_notifications", "1"),
                              ("pubsub#deliver_payloads", "1"), ("pubsub#persist_items", "1"),
                              ("pubsub#max_items", "10"), ("pubsub#access_model", "open"),
                              ("pubsub#publish_model", "publishers"), ("pubsub#purge_offline", "0"),
                              ("pubsub#send_last_published_item", "never"),
                              ("pubsub#presence_based_delivery", "false"),
                              ("pubsub#notification_type", "headline"), ("pubsub#notify_config", "0"),
                              ("pubsub#notify_delete", "0"), ("pubsub#notify_retract", "0"),
                              ("pubsub#notify_sub", "0"), ("pubsub#max_payload_size", "1028"),
                              ("pubsub#type", "http://www.w3.org/2005/Atom"),
                              ("pubsub#body_xslt", "http://jabxslt.jabberstudio.org/atom_body.xslt")]))
    # pubsub#type: the payload namespace
    assert app_error(publish(owner, s, xep, tune("x"))) == ("bad-request", "invalid-payload")
    ok(publish(owner, s, xep, "<entry xmlns='http://www.w3.org/2005/Atom'><title>t</title></entry>"))
    ok(delete(owner, s, xep))
    # default configuration (owner namespace)
    r = ok(ps(owner, "get", "<default/>", s, ns=NS_OWNER))
    assert r.find(f"{q(NS_OWNER, 'pubsub')}/{q(NS_OWNER, 'default')}/{q(NS_DATA, 'x')}") is not None
    # someone else may neither configure nor delete
    r = ps(sub, "get", f"<configure node='{node2}'/>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    assert stanza_error(delete(sub, s, node2))[1] == "forbidden"
    for n in (node, node2):
        ok(delete(owner, s, n))
    owner.close()
    sub.close()


def test_last_item_on_subscription(server):
    """send_last_published_item = on_sub: a new subscriber gets the last item at once,
    with a delay stamp (6.1.7); never (the default): nothing; on_sub_and_presence is not
    offered on this service (it does not follow subscribers' presence)."""
    s = svc(server)
    owner = server.online("psl")
    a = server.online("psl")
    node = "last-" + rnd()
    ok(create(owner, s, node, {"pubsub#send_last_published_item": "on_sub"}))
    ok(publish(owner, s, node, tune("first"), item_id="1"))
    ok(publish(owner, s, node, tune("second"), item_id="2"))
    ok(subscribe(a, s, node))
    e = recv_event(a, s, node)
    assert ev_child(e).find(q(NS_EVENT, "item")).get("id") == "2", tostring(e)
    assert e.find(q("urn:xmpp:delay", "delay")) is not None, tostring(e)
    quiet = "quiet-" + rnd()
    ok(create(owner, s, quiet))
    ok(publish(owner, s, quiet, tune("x"), item_id="x"))
    ok(subscribe(a, s, quiet))
    ok(publish(owner, s, node, tune("marker"), item_id="m"))
    e = a.recv(lambda e: is_event(e, s, node) or is_event(e, s, quiet), what="the marker")
    assert is_event(e, s, node), "last item sent though send_last is never: " + tostring(e)
    r = create(owner, s, "p-" + rnd(), {"pubsub#send_last_published_item": "on_sub_and_presence"})
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    for n in (node, quiet):
        ok(delete(owner, s, n))
    owner.close()
    a.close()


# ------------------------------------------------------------------ subscriptions

def test_subscriptions_subids_and_their_errors(server):
    s = svc(server)
    owner = server.online("psu")
    a = server.online("psu")
    other = server.online("psu")
    node = "sub-" + rnd()
    ok(create(owner, s, node))
    # another's JID: bad-request + invalid-jid; no jid; missing node; no node id
    assert app_error(subscribe(a, s, node, jid=other.jid)) == ("bad-request", "invalid-jid")
    assert app_error(subscribe(a, s, node, jid="this-jid-does-not-match@example.org")) == ("bad-request", "invalid-jid")
    r = ps(a, "set", f"<subscribe node='{node}'/>", s)
    assert app_error(r) == ("bad-request", "invalid-jid"), tostring(r)
    assert stanza_error(subscribe(a, s, "missing-" + rnd()))[1] == "item-not-found"
    r = ps(a, "set", f"<subscribe jid='{a.jid}'/>", s)
    assert app_error(r) == ("bad-request", "nodeid-required"), tostring(r)
    # not subscribed yet
    assert app_error(unsubscribe(a, s, node)) == ("unexpected-request", "not-subscribed")
    r = ok(ps(a, "get", f"<subscriptions node='{node}'/>", s))
    assert len(r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscriptions"))) == 0
    # two subscriptions of one JID: distinct SubIDs
    s1 = sub_of(subscribe(a, s, node)).get("subid")
    s2 = sub_of(subscribe(a, s, node)).get("subid")
    assert s1 and s2 and s1 != s2
    r = ok(ps(a, "get", "<subscriptions/>", s))
    subs = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscriptions"))
    assert sorted(x.get("subid") for x in subs if x.get("node") == node) == sorted([s1, s2])
    # items: with two subscriptions a SubID is named (6.5.9.1), and must be one of them
    r = ps(a, "get", f"<items node='{node}'/>", s)
    assert app_error(r) == ("bad-request", "subid-required"), tostring(r)
    r = ps(a, "get", f"<items node='{node}' subid='nope'/>", s)
    assert app_error(r) == ("not-acceptable", "invalid-subid"), tostring(r)
    ok(ps(a, "get", f"<items node='{node}' subid='{s1}'/>", s))
    # one notification for both, with the SubIDs as SHIM headers
    ok(publish(owner, s, node, tune("both")))
    e = recv_event(a, s, node)
    hdrs = e.find(q(NS_SHIM, "headers"))
    assert hdrs is not None and sorted(h.text for h in hdrs) == sorted([s1, s2]), tostring(e)
    a.expect_nothing(lambda e: is_event(e, s, node), 0.4, what="a second notification")
    # unsubscribe: the SubID is required, must exist; someone else is forbidden
    assert app_error(unsubscribe(a, s, node)) == ("bad-request", "subid-required")
    assert app_error(unsubscribe(a, s, node, subid="nope")) == ("not-acceptable", "invalid-subid")
    r = unsubscribe(other, s, node, jid=a.jid, subid=s1)
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    ok(unsubscribe(a, s, node, subid=s1))
    r = ok(ps(a, "get", f"<items node='{node}'><item id='no-such-item'/></items>", s))
    assert len(r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items"))) == 0  # 6.5.9.11
    ok(unsubscribe(a, s, node))  # one left: no SubID needed
    assert stanza_error(unsubscribe(a, s, "missing-" + rnd()))[1] == "item-not-found"
    # too many subscriptions of one JID (6.1.3.9)
    for _ in range(8):
        ok(subscribe(other, s, node))
    r = subscribe(other, s, node)
    assert app_error(r) == ("policy-violation", "too-many-subscriptions"), tostring(r)
    # affiliations: owner of the node, none for the subscriber
    r = ok(ps(owner, "get", "<affiliations/>", s))
    affs = {x.get("node"): x.get("affiliation") for x in r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "affiliations"))}
    assert affs.get(node) == "owner"
    r = ok(ps(a, "get", f"<affiliations node='{node}'/>", s))
    assert len(r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "affiliations"))) == 0
    server.assert_healthy(owner, a, other)
    ok(delete(owner, s, node))
    for c in (owner, a, other):
        c.close()


def test_subscription_options(server):
    s = svc(server)
    owner = server.online("pso")
    a = server.online("pso")
    node = "opt-" + rnd()
    ok(create(owner, s, node))
    r = ps(a, "get", f"<options node='{node}' jid='{a.jid}'/>", s)
    assert app_error(r) == ("unexpected-request", "not-subscribed"), tostring(r)
    r = subscribe(a, s, node, options={"pubsub#deliver": "1"})
    subid = sub_of(r).get("subid")
    # 6.3.7: the result carries the options in effect
    x = r.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'options')}/{q(NS_DATA, 'x')}")
    assert x is not None and x.get("type") == "result", tostring(r)
    # options naming a node or JID of their own are bad
    r = ps(a, "set", f"<subscribe node='{node}' jid='{a.jid}'/><options node='{node}'>"
                     f"{form(SUB_OPTIONS, {})}</options>", s)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    r = ok(ps(a, "get", f"<options node='{node}' jid='{a.jid}'/>", s))
    opts = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "options"))
    assert opts.get("subid") == subid
    x = opts.find(q(NS_DATA, "x"))
    assert x.get("type") == "form"
    fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))}
    assert fields["FORM_TYPE"] == SUB_OPTIONS and fields["pubsub#deliver"] == "1"
    # deliver off: no notification (the marker is a second node's)
    ok(ps(a, "set", f"<options node='{node}' jid='{a.jid}'>{form(SUB_OPTIONS, {'pubsub#deliver': '0'})}</options>", s))
    marker = "mark-" + rnd()
    ok(create(owner, s, marker))
    ok(subscribe(a, s, marker))
    ok(publish(owner, s, node, tune("silent")))
    ok(publish(owner, s, marker, tune("marker")))
    e = a.recv(lambda e: is_event(e, s, node) or is_event(e, s, marker), what="the marker")
    assert is_event(e, s, marker), "delivered though pubsub#deliver is off: " + tostring(e)
    # the XEP's example form: presence filters are taken
    xep = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'><value>{SUB_OPTIONS}</value>"
           "</field><field var='pubsub#deliver'><value>1</value></field><field var='pubsub#digest'><value>0</value>"
           "</field><field var='pubsub#include_body'><value>false</value></field><field var='pubsub#show-values'>"
           "<value>chat</value><value>online</value><value>away</value></field></x>")
    ok(ps(a, "set", f"<subscribe node='{marker}' jid='{bare(a.jid)}'/><options>{xep}</options>", s))
    # bad option forms: invalid-options
    for bad in ({"pubsub#deliver": "perhaps"}, {"pubsub#digest": "1"}, {"pubsub#whatever": "1"},
                {"pubsub#show-values": "sleepy"}, {"pubsub#subscription_type": "nodes"}):
        r = ps(a, "set", f"<options node='{node}' jid='{a.jid}'>{form(SUB_OPTIONS, bad)}</options>", s)
        assert app_error(r) == ("bad-request", "invalid-options"), (bad, tostring(r))
    r = ps(a, "set", f"<options node='{node}' jid='{a.jid}'>{form('urn:wrong', {})}</options>", s)
    assert app_error(r) == ("bad-request", "invalid-options"), tostring(r)
    assert app_error(subscribe(a, s, node, options={"pubsub#include_body": "1"})) == ("bad-request", "invalid-options")
    r = ps(a, "get", f"<options node='{node}'/>", s)
    assert app_error(r) == ("bad-request", "jid-required"), tostring(r)
    for inner in ("<default/>", f"<default node='{node}'/>"):
        r = ok(ps(a, "get", inner, s))
        x = r.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'default')}/{q(NS_DATA, 'x')}")
        assert x is not None and x.get("type") == "result", tostring(r)
    assert stanza_error(ps(a, "get", f"<default node='missing-{rnd()}'/>", s))[1] == "item-not-found"
    server.assert_healthy(owner, a)
    for n in (node, marker):
        ok(delete(owner, s, n))
    owner.close()
    a.close()


def test_temporary_subscriptions_end_with_presence(server):
    """XEP-0060 12.4: a subscription with pubsub#expire = presence lasts while its JID is
    available: it ends on unavailable presence, and when the session ends without one; a
    bare JID's when its last resource goes; others stay. The options form shows it."""
    import time
    s = svc(server)
    owner = server.online("pst")
    temp = server.online("pstt")
    keep = server.online("pstk")
    gone = server.online("pstg")
    silent = server.online("psts", presence=False)
    later = server.online("pstl")
    jid, _, pw = server.new_user("pstb")
    b1 = server.login(jid, pw, resource="one", presence=True)
    b2 = server.login(jid, pw, resource="two", presence=True)
    node = "tmp-" + rnd()
    ok(create(owner, s, node))
    expire = {"pubsub#expire": "presence"}
    r = subscribe(temp, s, node, options=expire)
    x = r.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'options')}/{q(NS_DATA, 'x')}")
    fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))}
    assert fields.get("pubsub#expire") == "presence", tostring(r)
    ok(subscribe(keep, s, node))
    ok(subscribe(gone, s, node, options=expire))
    ok(subscribe(silent, s, node, options=expire))
    # made temporary afterwards, through the options of the subscription (6.3.5)
    ok(subscribe(later, s, node))
    ok(ps(later, "set", f"<options node='{node}' jid='{later.jid}'>{form(SUB_OPTIONS, expire)}</options>", s))
    ok(subscribe(b1, s, node, jid=jid, options=expire))
    r = ok(ps(temp, "get", f"<options node='{node}' jid='{temp.jid}'/>", s))
    fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in r.iter(q(NS_DATA, "field"))}
    assert fields.get("pubsub#expire") == "presence", tostring(r)
    # a lease (a date) is not offered
    r = subscribe(keep, s, node, options={"pubsub#expire": "2030-01-01T00:00:00Z"})
    assert app_error(r) == ("bad-request", "invalid-options"), tostring(r)

    def subscribers():
        r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
        return sorted(e.get("jid") for e in r.iter(q(NS_OWNER, "subscription")))

    assert subscribers() == sorted([temp.jid, keep.jid, gone.jid, silent.jid, later.jid, jid])
    for c in (temp, later):
        c.presence(type_="unavailable")
        ok(c.ping_server())
    assert subscribers() == sorted([keep.jid, gone.jid, silent.jid, jid])
    # ended sessions: one that was available, one that never sent presence
    gone.close()
    silent.close()
    b1.close()
    deadline = time.monotonic() + 10
    while subscribers() != sorted([keep.jid, jid]):
        assert time.monotonic() < deadline, subscribers()
        time.sleep(0.2)
    # the bare JID's ends with its last resource
    b2.presence(type_="unavailable")
    ok(b2.ping_server())
    assert subscribers() == [keep.jid]
    ok(publish(owner, s, node, tune("still here")))
    recv_event(keep, s, node)
    server.assert_healthy(owner, temp, keep)
    ok(delete(owner, s, node))
    for c in (owner, temp, keep, later, b2):
        c.close()


def test_owner_manages_subscriptions_and_affiliations(server):
    s = svc(server)
    owner = server.online("psm")
    a = server.online("psm")
    b = server.online("psm")
    node = "wl-" + rnd()
    ok(create(owner, s, node, {"pubsub#access_model": "whitelist"}))
    # whitelist: not-allowed + closed-node, items and subscribe alike
    assert app_error(subscribe(a, s, node)) == ("not-allowed", "closed-node")
    assert app_error(ps(a, "get", f"<items node='{node}'/>", s)) == ("not-allowed", "closed-node")
    # a member may
    aff = f"<affiliation jid='{bare(a.jid)}' affiliation='member'/>"
    ok(ps(owner, "set", f"<affiliations node='{node}'>{aff}</affiliations>", s, ns=NS_OWNER))
    r = ok(ps(owner, "get", f"<affiliations node='{node}'/>", s, ns=NS_OWNER))
    affs = {x.get("jid"): x.get("affiliation") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "affiliations"))}
    assert affs == {bare(owner.jid): "owner", bare(a.jid): "member"}, affs
    ok(subscribe(a, s, node))
    r = ok(ps(a, "get", f"<affiliations node='{node}'/>", s))
    assert [x.get("affiliation") for x in r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "affiliations"))] == ["member"]
    # the owner subscribes b (full JID) and lists the subscriptions
    sub = f"<subscription jid='{b.jid}' subscription='subscribed'/>"
    ok(ps(owner, "set", f"<subscriptions node='{node}'>{sub}</subscriptions>", s, ns=NS_OWNER))
    e = recv_event(b, s, node)  # 8.8.4: b is told
    ch = ev_child(e)
    assert ch.tag == q(NS_EVENT, "subscription") and ch.get("subscription") == "subscribed", tostring(e)
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    subs = {x.get("jid"): x.get("subscription") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))}
    assert subs == {a.jid: "subscribed", b.jid: "subscribed"}, subs
    ok(publish(owner, s, node, tune("to both")))
    recv_event(a, s, node)
    e = recv_event(b, s, node)
    assert e.get("to") == b.jid
    # a publisher may publish; an outcast loses its subscription and access
    ok(ps(owner, "set", f"<affiliations node='{node}'><affiliation jid='{bare(b.jid)}' affiliation='publisher'/>"
                        f"<affiliation jid='{bare(a.jid)}' affiliation='outcast'/></affiliations>", s, ns=NS_OWNER))
    ok(publish(b, s, node, tune("by b")))
    recv_event(b, s, node)
    assert stanza_error(ps(a, "get", f"<items node='{node}'/>", s))[1] == "forbidden"
    assert stanza_error(subscribe(a, s, node))[1] == "forbidden"
    # the owner removes b's subscription; the last owner cannot go; bad entries change nothing
    ok(ps(owner, "set", f"<subscriptions node='{node}'><subscription jid='{b.jid}' subscription='none'/>"
                        "</subscriptions>", s, ns=NS_OWNER))
    e = recv_event(b, s, node)
    assert ev_child(e).get("subscription") == "none", tostring(e)
    # the last owner cannot go; the valid entries of the same request still apply (8.9.2.4)
    c = f"carol-{rnd()}@{server.domain}"
    r = ps(owner, "set", f"<affiliations node='{node}'><affiliation jid='{bare(owner.jid)}' affiliation='none'/>"
                         f"<affiliation jid='{c}' affiliation='member'/></affiliations>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    r = ok(ps(owner, "get", f"<affiliations node='{node}'/>", s, ns=NS_OWNER))
    affs = {x.get("jid"): x.get("affiliation") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "affiliations"))}
    assert affs[bare(owner.jid)] == "owner" and affs[c] == "member", affs
    # one entity twice: bad-request; no affiliation attribute: unchanged
    r = ps(owner, "set", f"<affiliations node='{node}'><affiliation jid='{c}' affiliation='none'/>"
                         f"<affiliation jid='{c}' affiliation='member'/></affiliations>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    ok(ps(owner, "set", f"<affiliations node='{node}'><affiliation jid='{c}'/></affiliations>", s, ns=NS_OWNER))
    for bad in (f"<affiliation jid='{bare(b.jid)}' affiliation='king'/>", "<affiliation affiliation='member'/>"):
        r = ps(owner, "set", f"<affiliations node='{node}'>{bad}</affiliations>", s, ns=NS_OWNER)
        assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    r = ps(owner, "set", f"<subscriptions node='{node}'><subscription jid='{b.jid}' subscription='pending'/>"
                         "</subscriptions>", s, ns=NS_OWNER)
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    assert len(r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))) == 0
    # deleted with a redirect: the subscribers learn where to go (8.4.1)
    ok(subscribe(b, s, node))
    ok(ps(owner, "set", f"<delete node='{node}'><redirect uri='xmpp:{s}?;node=next'/></delete>", s, ns=NS_OWNER))
    e = recv_event(b, s, node)
    assert ev_child(e).find(q(NS_EVENT, "redirect")).get("uri") == f"xmpp:{s}?;node=next", tostring(e)
    ok(create(owner, s, node))
    # not the owner: forbidden
    for inner in (f"<subscriptions node='{node}'/>", f"<affiliations node='{node}'/>"):
        assert stanza_error(ps(b, "get", inner, s, ns=NS_OWNER))[1] == "forbidden"
    ok(delete(owner, s, node))
    for c in (owner, a, b):
        c.close()


def test_access_model_change_ends_subscriptions(server):
    """An owner closing a node (whitelist) ends the subscriptions of who is no longer let
    in; they are told (a subscription event, 'none'), members keep theirs."""
    s = svc(server)
    owner = server.online("psw")
    member = server.online("psw")
    stranger = server.online("psw")
    node = "close-" + rnd()
    ok(create(owner, s, node))
    ok(ps(owner, "set", f"<affiliations node='{node}'><affiliation jid='{bare(member.jid)}' affiliation='member'/>"
                        "</affiliations>", s, ns=NS_OWNER))
    ok(subscribe(member, s, node))
    ok(subscribe(stranger, s, node))
    ok(ps(owner, "set", f"<configure node='{node}'>"
                        f"{form(NS_PUBSUB + '#node_config', {'pubsub#access_model': 'whitelist'})}</configure>",
          s, ns=NS_OWNER))
    e = recv_event(stranger, s, node)
    ch = ev_child(e)
    assert ch.tag == q(NS_EVENT, "subscription") and ch.get("subscription") == "none", tostring(e)
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    assert [x.get("jid") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))] == [member.jid]
    ok(publish(owner, s, node, tune("closed")))
    recv_event(member, s, node)
    ok(delete(owner, s, node))
    for c in (owner, member, stranger):
        c.close()


def test_presence_based_delivery(server):
    """Notifications of type normal to an unavailable subscriber wait in offline storage;
    with pubsub#presence_based_delivery they are not sent at all."""
    s = svc(server)
    owner = server.online("psd")
    jid, _, pw = server.new_user("psd")
    sub = server.login(jid, pw, presence=True)
    kept, dropped = "kept-" + rnd(), "dropped-" + rnd()
    ok(create(owner, s, kept, {"pubsub#notification_type": "normal"}))
    ok(create(owner, s, dropped, {"pubsub#notification_type": "normal",
                                   "pubsub#presence_based_delivery": "1"}))
    for n in (dropped, kept):
        ok(subscribe(sub, s, n, jid=jid))
    sub.close()
    ok(publish(owner, s, dropped, tune("not for later")))
    ok(publish(owner, s, kept, tune("for later")))
    again = server.login(jid, pw, presence=True)
    e = again.recv(lambda e: is_event(e, s, kept) or is_event(e, s, dropped), what="the offline notification")
    assert is_event(e, s, kept), "a presence-based notification was kept: " + tostring(e)
    again.expect_nothing(lambda e: is_event(e, s, dropped), 0.7, what="the presence-based notification")
    for n in (kept, dropped):
        ok(delete(owner, s, n))
    owner.close()
    again.close()


def test_notify_config_and_notify_sub(server):
    """pubsub#notify_config: subscribers get the new configuration (8.2.5.4, as a form
    when payloads are delivered); pubsub#notify_sub: owners hear of subscriptions and
    unsubscriptions."""
    s = svc(server)
    owner = server.online("psn")
    a = server.online("psn")
    node = "nc-" + rnd()
    ok(create(owner, s, node, {"pubsub#notify_config": "1", "pubsub#notify_sub": "true"}))
    ok(subscribe(a, s, node))
    e = recv_event(owner, s, node)
    ch = ev_child(e)
    assert (ch.tag, ch.get("jid"), ch.get("subscription")) == (q(NS_EVENT, "subscription"), a.jid, "subscribed")
    ok(ps(owner, "set", f"<configure node='{node}'>"
                        f"{form(NS_PUBSUB + '#node_config', {'pubsub#title': 'Renamed'})}</configure>",
          s, ns=NS_OWNER))
    e = recv_event(a, s, node)
    ch = ev_child(e)
    assert ch.tag == q(NS_EVENT, "configuration"), tostring(e)
    x = ch.find(q(NS_DATA, "x"))
    fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))}
    assert x.get("type") == "result" and fields["pubsub#title"] == "Renamed", tostring(e)
    ok(unsubscribe(a, s, node))
    e = recv_event(owner, s, node)
    assert ev_child(e).get("subscription") == "none", tostring(e)
    ok(delete(owner, s, node))
    owner.close()
    a.close()


def test_authorize_access_model(server):
    """access_model authorize: a subscription waits (6.1.4, 'pending'), the owners get an
    approval form (8.6), a second request meanwhile is refused (6.1.3.7), items are for
    approved subscribers only (6.5.9.3); an owner's submitted form approves it (the
    subscriber is told) or denies it; approving through the owner's subscription list
    works too; a non-owner's answer is refused."""
    s = svc(server)
    owner = server.online("psz")
    a = server.online("psz")
    b = server.online("psz")
    node = "auth-" + rnd()
    ok(create(owner, s, node, {"pubsub#access_model": "authorize"}))
    ok(publish(owner, s, node, tune("secret"), item_id="1"))
    el = sub_of(subscribe(a, s, node))
    assert el.get("subscription") == "pending" and el.get("subid"), tostring(el)
    ask = owner.recv(lambda e: e.tag == C("message") and e.get("from") == s
                     and e.find(q(NS_DATA, "x")) is not None, what="the approval request")
    x = ask.find(q(NS_DATA, "x"))
    fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))}
    assert fields["FORM_TYPE"] == NS_PUBSUB + "#subscribe_authorization", tostring(ask)
    assert (fields["pubsub#node"], fields["pubsub#subscriber_jid"]) == (node, a.jid), tostring(ask)
    assert app_error(subscribe(a, s, node)) == ("not-authorized", "pending-subscription")
    assert app_error(ps(a, "get", f"<items node='{node}'/>", s)) == ("not-authorized", "not-subscribed")
    # pending subscribers are not notified
    ok(publish(owner, s, node, tune("still secret"), item_id="2"))

    def answer(c, allow, who=a.jid):
        submit = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
                  f"<value>{NS_PUBSUB}#subscribe_authorization</value></field>"
                  f"<field var='pubsub#node'><value>{node}</value></field>"
                  f"<field var='pubsub#subscriber_jid'><value>{who}</value></field>"
                  f"<field var='pubsub#allow'><value>{allow}</value></field></x>")
        mid = "appr-" + rnd()
        c.send_raw(f"<message to='{s}' id='{mid}'>{submit}</message>")
        return mid

    # someone else's answer: forbidden, nothing changes
    mid = answer(b, "true")
    e = b.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="the refusal")
    assert stanza_error(e)[1] == "forbidden", tostring(e)
    answer(owner, "true")
    e = recv_event(a, s, node)
    assert ev_child(e).get("subscription") == "subscribed", tostring(e)
    assert [i.get("id") for i in items_of(a, s, node)] == ["1", "2"]
    ok(publish(owner, s, node, tune("for a"), item_id="3"))
    e = recv_event(a, s, node)
    assert ev_child(e).find(q(NS_EVENT, "item")).get("id") == "3", tostring(e)
    # b is denied; then, asking again, approved through the owner's list
    ok(subscribe(b, s, node))
    owner.recv(lambda e: e.tag == C("message") and e.find(q(NS_DATA, "x")) is not None, what="b's request")
    answer(owner, "false", who=b.jid)
    e = recv_event(b, s, node)
    assert ev_child(e).get("subscription") == "none", tostring(e)
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    assert [x.get("jid") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))] == [a.jid]
    el = sub_of(subscribe(b, s, node))
    assert el.get("subscription") == "pending"
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    states = {x.get("jid"): x.get("subscription") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))}
    assert states == {a.jid: "subscribed", b.jid: "pending"}, states
    ok(ps(owner, "set", f"<subscriptions node='{node}'><subscription jid='{b.jid}' subscription='subscribed'/>"
                        "</subscriptions>", s, ns=NS_OWNER))
    e = recv_event(b, s, node)
    assert ev_child(e).get("subscription") == "subscribed", tostring(e)
    assert [i.get("id") for i in items_of(b, s, node)] == ["1", "2", "3"]
    # a malformed answer: bad-request
    mid = "bad-" + rnd()
    owner.send_raw(f"<message to='{s}' id='{mid}'><x xmlns='{NS_DATA}' type='submit'>"
                   f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#subscribe_authorization</value></field>"
                   "</x></message>")
    e = owner.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="the error")
    assert stanza_error(e)[1] == "bad-request", tostring(e)
    server.assert_healthy(owner, a, b)
    ok(delete(owner, s, node))
    for c in (owner, a, b):
        c.close()


def test_presence_access_model(server):
    s = svc(server)
    owner = server.online("psp")
    friend = server.online("psp")
    stranger = server.online("psp")
    make_mutual(owner, friend)
    node = "pr-" + rnd()
    ok(create(owner, s, node, {"pubsub#access_model": "presence"}))
    r = subscribe(stranger, s, node)
    assert app_error(r) == ("not-authorized", "presence-subscription-required"), tostring(r)
    ok(subscribe(friend, s, node))
    ok(delete(owner, s, node))
    for c in (owner, friend, stranger):
        c.close()


# ------------------------------------------------------------------ who may create, bad input

def test_who_creates_and_bad_input(server):
    s = svc(server)
    local = server.online("psb")
    foreign = server.online("psb", domain="example.org")
    # a user of another served domain may not create here (default [pubsub] create = "domain")
    assert stanza_error(create(foreign, s, "f-" + rnd()))[1] == "forbidden"
    # ... nor auto-create by publishing: the node does not exist
    r = publish(foreign, s, "f-" + rnd(), tune("x"))
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    # but on its own domain's service
    node = "own-" + rnd()
    ok(create(foreign, "pubsub.example.org", node))
    ok(delete(foreign, "pubsub.example.org", node))
    # publishing to a missing node auto-creates it for a local user, who owns it
    auto = "auto-" + rnd()
    ok(publish(local, s, auto, tune("auto")))
    r = ok(ps(local, "get", f"<affiliations node='{auto}'/>", s))
    assert [x.get("affiliation") for x in r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "affiliations"))] == ["owner"]
    # bad node ids and shapes
    r = create(local, s, "x" * 2000)
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    assert app_error(ps(local, "get", "<items/>", s)) == ("bad-request", "nodeid-required")
    assert app_error(ps(local, "set", f"<retract node='{auto}'/>", s)) == ("bad-request", "item-required")
    assert stanza_error(ps(local, "get", f"<items node='{auto}' max_items='many'/>", s))[1] == "bad-request"
    assert stanza_error(ps(local, "set", "", s))[1] == "bad-request"
    assert stanza_error(ps(local, "get", "<frobnicate/>", s))[1] == "feature-not-implemented"
    assert stanza_error(ps(local, "get", f"<publish node='{auto}'/>", s))[1] == "bad-request"
    # a malformed configuration form: wrong FORM_TYPE, not a form, wrong type
    for cfg in (f"<configure>{form('urn:wrong', {})}</configure>",
                f"<configure>{form(NS_PUBSUB + '#node_config', {}, type_='result')}</configure>",
                "<configure><x xmlns='jabber:x:data' type='submit'><field/></x></configure>"):
        r = ps(local, "set", f"<create node='bad-{rnd()}'/>{cfg}", s)
        assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    r = ps(local, "set", f"<publish node='{auto}'><item>{tune('a')}</item></publish>"
                         f"<publish-options>{form('urn:wrong', {})}</publish-options>", s)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    r = ps(local, "set", f"<publish node='{auto}'><item>{tune('a')}</item></publish>"
                         f"<publish-options>{form(NS_PUBSUB + '#publish-options', {'pubsub#access_model': 'whitelist'})}"
                         "</publish-options>", s)
    assert app_error(r) == ("conflict", "precondition-not-met"), tostring(r)
    # two payloads in one iq, a message, an unknown namespace, an entity of the service
    r = local.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'/><query xmlns='{DISCO_INFO}'/>", to=s)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    mid = local.message(s, "hello")
    e = local.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="message error")
    assert stanza_error(e)[1] == "service-unavailable", tostring(e)
    r = local.iq("get", "<query xmlns='jabber:iq:version'/>", to=s)
    assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    r = local.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=f"someone@{s}")
    assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    server.assert_healthy(local, foreign)
    ok(delete(local, s, auto))
    local.close()
    foreign.close()


def test_deleted_account_leaves_no_affiliation_or_subscription(server):
    """A new account of a deleted one's name inherits nothing: the nodes it alone owned
    are gone, its subscriptions and its affiliations on other nodes too."""
    s = svc(server)
    keeper = server.online("psk")
    jid, _, pw = server.new_user("psgone")
    gone = server.login(jid, pw)
    own = "own-" + rnd()
    ok(create(gone, s, own))
    shared = "shared-" + rnd()
    ok(create(keeper, s, shared, {"pubsub#access_model": "whitelist"}))
    ok(ps(keeper, "set", f"<affiliations node='{shared}'><affiliation jid='{jid}' affiliation='publisher'/>"
                         "</affiliations>", s, ns=NS_OWNER))
    ok(subscribe(gone, s, shared))
    gone.close()
    server.del_user(jid)
    server.add_user(jid, pw)
    again = server.login(jid, pw)
    assert stanza_error(ps(again, "get", f"<items node='{own}'/>", s))[1] == "item-not-found"
    assert app_error(ps(again, "get", f"<items node='{shared}'/>", s)) == ("not-allowed", "closed-node")
    r = ok(ps(keeper, "get", f"<subscriptions node='{shared}'/>", s, ns=NS_OWNER))
    assert len(r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))) == 0
    r = ok(ps(keeper, "get", f"<affiliations node='{shared}'/>", s, ns=NS_OWNER))
    affs = [x.get("jid") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "affiliations"))]
    assert affs == [bare(keeper.jid)], affs
    ok(delete(keeper, s, shared))
    keeper.close()
    again.close()


@pytest.mark.starling_only
def test_configuration_subdomain_admins_and_off(tmp_path_factory):
    """[pubsub] subdomain, create = "admins" with admins, and enabled = false."""
    from conftest import make_server
    srv = make_server(tmp_path_factory, "psconf")
    with open(srv.config_path, "a") as f:
        f.write('\n[pubsub]\nsubdomain = "events"\ncreate = "admins"\nadmins = ["Boss@LocalHost"]\n')
    off = make_server(tmp_path_factory, "psoff")
    with open(off.config_path, "a") as f:
        f.write("\n[pubsub]\nenabled = false\n")
    srv.start()
    off.start()
    try:
        srv.add_user("boss@localhost", "boss-pw")
        boss = srv.login("boss@localhost", "boss-pw", presence=True)
        user = srv.online("psu")
        other = srv.online("psu")
        r = ok(user.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to="localhost"))
        jids = [i.get("jid") for i in r.find(q(DISCO_ITEMS, "query"))]
        assert "events.localhost" in jids and "pubsub.localhost" not in jids, jids
        s = "events.localhost"
        assert stanza_error(create(user, s, "n-" + rnd()))[1] == "forbidden"
        assert stanza_error(publish(user, s, "n-" + rnd(), tune("x")))[1] == "item-not-found"
        node = "n-" + rnd()
        ok(create(boss, s, node))
        ok(subscribe(user, s, node))
        ok(publish(boss, s, node, tune("from the boss")))
        recv_event(user, s, node)
        # an admin owns every node, also one an ex-owner made over to someone else
        aff = f"<affiliation jid='{bare(other.jid)}' affiliation='owner'/>"
        ok(ps(boss, "set", f"<affiliations node='{node}'>{aff}</affiliations>", s, ns=NS_OWNER))
        ok(ps(other, "set", f"<affiliations node='{node}'><affiliation jid='boss@localhost' affiliation='none'/>"
                            "</affiliations>", s, ns=NS_OWNER))
        ok(ps(boss, "get", f"<configure node='{node}'/>", s, ns=NS_OWNER))
        ok(delete(boss, s, node))
        srv.assert_healthy(boss, user, other)
        c = off.online("psoff")
        r = ok(c.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to="localhost"))
        assert not any("pubsub" in (i.get("jid") or "") for i in r.find(q(DISCO_ITEMS, "query"))), tostring(r)
        r = c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to="pubsub.localhost")
        assert r.get("type") == "error", tostring(r)
        off.assert_healthy(c)
    finally:
        srv.stop()
        off.stop()


# ------------------------------------------------------------------ PEP

def test_explicit_subscription_to_a_pep_node(server):
    """XEP-0163 nodes take XEP-0060 subscriptions too: a stranger subscribes to an open
    node (no presence subscription, no caps) and is notified at the JID it gave."""
    owner = server.online("pepx")
    other = server.online("pepx")
    node = "urn:test:explicit:" + rnd()
    ok(ps(owner, "set", f"<publish node='{node}'><item id='1'>{tune('one')}</item></publish>"
                        f"<publish-options>{form(NS_PUBSUB + '#publish-options', {'pubsub#access_model': 'open'})}"
                        "</publish-options>", None))
    o = bare(owner.jid)
    el = sub_of(subscribe(other, o, node))
    assert el.get("subid") and el.get("jid") == other.jid
    # send_last_published_item (PEP's default on_sub_and_presence): the last item at once
    e = recv_event(other, o, node)
    assert ev_child(e).find(q(NS_EVENT, "item")).get("id") == "1"
    assert e.find(q("urn:xmpp:delay", "delay")) is not None, tostring(e)
    ok(ps(owner, "set", f"<publish node='{node}'><item id='2'>{tune('two')}</item></publish>", None))
    e = recv_event(other, o, node)
    assert ev_child(e).find(q(NS_EVENT, "item")).get("id") == "2"
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", None, ns=NS_OWNER))
    subs = [x.get("jid") for x in r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))]
    assert subs == [other.jid]
    ok(unsubscribe(other, o, node))
    # a whitelist PEP node refuses
    node2 = "urn:test:closed:" + rnd()
    ok(ps(owner, "set", f"<publish node='{node2}'><item id='1'>{tune('x')}</item></publish>"
                        f"<publish-options>{form(NS_PUBSUB + '#publish-options', {'pubsub#access_model': 'whitelist'})}"
                        "</publish-options>", None))
    assert app_error(subscribe(other, o, node2)) == ("not-allowed", "closed-node")
    # XEP-0163 nodes have no authorize model (8.1.3's error)
    r = ps(owner, "set", f"<publish node='{node2}-a'><item id='1'>{tune('x')}</item></publish>"
                         f"<publish-options>{form(NS_PUBSUB + '#publish-options', {'pubsub#access_model': 'authorize'})}"
                         "</publish-options>", None)
    assert app_error(r) == ("conflict", "precondition-not-met"), tostring(r)
    r = ps(owner, "set", f"<create node='{node2}-b'/><configure>"
                         f"{form(NS_PUBSUB + '#node_config', {'pubsub#access_model': 'authorize'})}</configure>", None)
    assert app_error(r) == ("not-acceptable", "unsupported-access-model"), tostring(r)
    owner.close()
    other.close()


# ------------------------------------------------------------------ slixmpp

def test_slixmpp_xep_0060(server):
    slixmpp = pytest.importorskip("slixmpp")
    ajid, _, apw = server.new_user("slps")
    bjid, _, bpw = server.new_user("slps")
    s = svc(server)
    node = "slix-" + rnd()

    def client(jid, pw):
        c = slixmpp.ClientXMPP(jid, pw)
        for p in ("xep_0030", "xep_0004", "xep_0060"):
            c.register_plugin(p)
        c.ssl_context.check_hostname = False
        c.ssl_context.verify_mode = ssl.CERT_NONE
        return c

    async def connected(c):
        started = asyncio.get_event_loop().create_future()
        c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        c.connect(server.host, server.c2s_port)
        await asyncio.wait_for(started, 15)
        c.send_presence()

    async def scenario():
        a = client(ajid, apw)
        b = client(bjid, bpw)
        got = asyncio.get_event_loop().create_future()
        b.add_event_handler("pubsub_publish", lambda m: got.done() or got.set_result(m))
        await connected(a)
        await connected(b)
        info = await b["xep_0030"].get_info(jid=s, timeout=10)
        assert any(i[:2] == ("pubsub", "service") for i in info["disco_info"]["identities"])
        await a["xep_0060"].create_node(s, node, timeout=10)
        r = await b["xep_0060"].subscribe(s, node, timeout=10)
        assert r["pubsub"]["subscription"]["subscription"] == "subscribed"
        payload = slixmpp.xmlstream.ET.fromstring(tune("slix"))
        await a["xep_0060"].publish(s, node, id="one", payload=payload, timeout=10)
        m = await asyncio.wait_for(got, 10)
        assert m["pubsub_event"]["items"]["item"]["id"] == "one"
        items = await b["xep_0060"].get_items(s, node, timeout=10)
        assert items["pubsub"]["items"]["item"]["id"] == "one"
        subs = await b["xep_0060"].get_subscriptions(s, node, timeout=10)
        assert [x["node"] for x in subs["pubsub"]["subscriptions"]] == [node]
        nodes = await b["xep_0060"].get_nodes(s, timeout=10)
        assert node in [i[1] for i in nodes["disco_items"]["items"]]
        ids = await b["xep_0030"].get_items(jid=s, node=node, timeout=10)  # 5.5, item ids
        assert [i[2] for i in ids["disco_items"]["items"]] == ["one"]
        # the owner's side: configuration (default and the node's), affiliations,
        # subscriptions, retract and purge
        default = await a["xep_0060"].get_node_config(s, timeout=10)
        assert default["pubsub_owner"]["default"]["form"].get_fields()["pubsub#access_model"]["value"] == "open"
        r = await a["xep_0060"].get_node_config(s, node, timeout=10)
        form = r["pubsub_owner"]["configure"]["form"]
        form["type"] = "submit"
        form.field["pubsub#max_items"]["value"] = "5"
        await a["xep_0060"].set_node_config(s, node, form, timeout=10)
        r = await a["xep_0060"].get_node_config(s, node, timeout=10)
        assert r["pubsub_owner"]["configure"]["form"].get_fields()["pubsub#max_items"]["value"] == "5"
        await a["xep_0060"].modify_affiliations(s, node, [(b.boundjid.bare, "publisher")], timeout=10)
        r = await a["xep_0060"].get_node_affiliations(s, node, timeout=10)
        affs = {x["jid"].bare: x["affiliation"] for x in r["pubsub_owner"]["affiliations"]}
        assert affs == {a.boundjid.bare: "owner", b.boundjid.bare: "publisher"}
        r = await a["xep_0060"].get_node_subscriptions(s, node, timeout=10)
        assert [x["jid"].bare for x in r["pubsub_owner"]["subscriptions"]] == [b.boundjid.bare]
        await b["xep_0060"].publish(s, node, id="two", payload=slixmpp.xmlstream.ET.fromstring(tune("b")),
                                    timeout=10)
        await a["xep_0060"].retract(s, node, "one", timeout=10)
        items = await b["xep_0060"].get_items(s, node, timeout=10)
        assert [i["id"] for i in items["pubsub"]["items"]] == ["two"]
        await a["xep_0060"].purge(s, node, timeout=10)
        items = await b["xep_0060"].get_items(s, node, timeout=10)
        assert len(items["pubsub"]["items"]) == 0
        r = await b["xep_0060"].get_subscription_options(s, node, timeout=10)
        x = r["pubsub"]["default"].xml.find(f"{{{NS_DATA}}}x")
        assert x is not None and x.get("type") == "result", str(r)
        await b["xep_0060"].unsubscribe(s, node, timeout=10)
        await a["xep_0060"].delete_node(s, node, timeout=10)
        for c in (a, b):
            c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 50))


# ------------------------------------------------------------------ cluster

@pytest.mark.cluster
@pytest.mark.starling_only
@pytest.mark.timeout(120)
def test_cluster_subscriber_on_another_node(shared_cluster, clients):
    cl = shared_cluster
    owner = clients.add(cl[1].online("cpso"))
    sub2 = clients.add(cl[2].online("cpss"))
    sub3 = clients.add(cl[3].online("cpss"))
    s = f"pubsub.{owner.jid.split('@')[1].split('/')[0]}"
    node = "cl-" + rnd()
    ok(create(owner, s, node))
    ok(subscribe(sub2, s, node, jid=bare(sub2.jid)))
    ok(subscribe(sub3, s, node))  # full JID, through node 3
    ok(publish(owner, s, node, tune("across"), item_id="x"))
    for c in (sub2, sub3):
        e = recv_event(c, s, node, timeout=10)
        assert ev_child(e).find(q(NS_EVENT, "item")).get("id") == "x", tostring(e)
    # the items and the subscriptions are read through any node
    assert [i.get("id") for i in items_of(sub3, s, node)] == ["x"]
    r = ok(ps(owner, "get", f"<subscriptions node='{node}'/>", s, ns=NS_OWNER))
    assert len(r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "subscriptions"))) == 2
    ok(delete(owner, s, node))
    for c in (sub2, sub3):
        e = recv_event(c, s, node, timeout=10)
        assert ev_child(e).tag == q(NS_EVENT, "delete")
