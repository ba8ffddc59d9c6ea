"""Ports of the XMPP interop tests (Smack SINT) for XEP-0060 publish-subscribe against the
pubsub.<domain> service, reimplemented in raw XML (the Java is not copied):

- PubSubIntegrationTest (Florian Schmaus, Guus der Kinderen, Paul Schaub): publish, the
  subscription use cases of section 6.1 / 6.2 with their errors (the pending subscription
  of an 'authorize' node among them), multiple subscriptions
  (SubIDs), the empty subscription list (5.6), notifications of a publish and of a node
  deletion, transient notification-only nodes (7.1.3.6), item deletion (7.2), deleting a
  missing node (8.4.3.2), an item published again under its id (7.1.2).
- xep0060.section5 (Guus der Kinderen): 5.1 disco#info of the service (identity, the
  'pubsub', 'publish' and 'subscribe' features), 5.3 disco#info of a leaf node, 5.5
  disco#items of a leaf node (item ids as names, no 'node' attribute).

Each client does what Smack's PubSubManager does: it finds the service among the domain's
disco#items by the 'http://jabber.org/protocol/pubsub' feature, checks that it may create
nodes (an instant node, deleted again), takes the owner's default configuration form and
submits only the fields it sets, and looks a node up (disco#info, identity pubsub/leaf)
before it subscribes. Where the Java test is 'not possible' on this server (collection
nodes, a service without multi-subscribe) the test asserts what makes it so.
"""

import pytest

from im import make_mutual
from rawxmpp import C, bare, q, stanza_error, tostring
from test_pep import DISCO_INFO, DISCO_ITEMS, NS_DATA, NS_ERRORS, NS_EVENT, NS_OWNER, NS_PUBSUB, ok
from test_sint_helpers import rnd

GEOLOC = "http://jabber.org/protocol/geoloc"
NODE_CONFIG = NS_PUBSUB + "#node_config"


def geoloc(description):
    return f"<geoloc xmlns='{GEOLOC}'><description>{description}</description></geoloc>"


class Manager:
    """What Smack's PubSubManager does for one connection."""

    def __init__(self, c, service):
        self.c = c
        self.s = service

    def ps(self, type_, inner, ns=NS_PUBSUB):
        return self.c.iq(type_, f"<pubsub xmlns='{ns}'>{inner}</pubsub>", to=self.s)

    def default_form(self):
        r = ok(self.ps("get", "<default/>", ns=NS_OWNER))
        x = r.find(f"{q(NS_OWNER, 'pubsub')}/{q(NS_OWNER, 'default')}/{q(NS_DATA, 'x')}")
        assert x is not None and x.get("type") == "form", tostring(r)
        return {f.get("var"): f for f in x.findall(q(NS_DATA, "field"))}

    def create(self, node, **fields):
        """createNode(name[, config]): the config is the default form with these answers
        (Smack's FillableForm refuses a field the form does not have)."""
        cfg = ""
        if fields:
            form = self.default_form()
            answers = ""
            for k, v in fields.items():
                var = "pubsub#" + k
                assert var in form, f"the default configuration has no {var}"
                answers += f"<field var='{var}'><value>{v}</value></field>"
            cfg = (f"<configure><x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
                   f"<value>{NODE_CONFIG}</value></field>{answers}</x></configure>")
        return self.ps("set", f"<create node='{node}'/>{cfg}")

    def delete(self, node):
        """deleteNode: true when deleted, false on item-not-found."""
        r = self.ps("set", f"<delete node='{node}'/>", ns=NS_OWNER)
        if r.get("type") == "result":
            return True
        assert stanza_error(r)[1] == "item-not-found", tostring(r)
        return False

    def get_node(self, node):
        """getNode: disco#info of the node; a leaf is a LeafNode."""
        r = self.c.iq("get", f"<query xmlns='{DISCO_INFO}' node='{node}'/>", to=self.s)
        if r.get("type") == "error":
            return r
        ids = [(i.get("category"), i.get("type")) for i in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "identity"))]
        assert ("pubsub", "leaf") in ids, tostring(r)
        return None

    def subscribe(self, node, jid):
        err = self.get_node(node)
        if err is not None:
            return err
        return self.ps("set", f"<subscribe node='{node}' jid='{jid}'/>")

    def unsubscribe(self, node, jid, subid=None):
        s = f" subid='{subid}'" if subid else ""
        return self.ps("set", f"<unsubscribe node='{node}' jid='{jid}'{s}/>")

    def subscriptions(self, node):
        r = ok(self.ps("get", f"<subscriptions node='{node}'/>"))
        subs = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscriptions"))
        assert subs is not None, tostring(r)
        return list(subs)

    def publish(self, node, payload=None, item_id=None):
        if payload is None and item_id is None:
            return self.ps("set", f"<publish node='{node}'/>")
        iid = f" id='{item_id}'" if item_id else ""
        return self.ps("set", f"<publish node='{node}'><item{iid}>{payload or ''}</item></publish>")

    def items(self, node):
        r = ok(self.ps("get", f"<items node='{node}'/>"))
        return r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items")).findall(q(NS_PUBSUB, "item"))

    def features(self):
        r = ok(self.c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=self.s))
        return {f.get("var") for f in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))}


def find_service(c, domain):
    """PubSubManager.getPubSubService: the first of the domain's items with the pubsub
    feature."""
    r = ok(c.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=domain))
    for item in r.find(q(DISCO_ITEMS, "query")).findall(q(DISCO_ITEMS, "item")):
        info = c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=item.get("jid"))
        if info.get("type") != "result":
            continue
        feats = {f.get("var") for f in info.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))}
        if NS_PUBSUB in feats:
            return item.get("jid")
    return None


@pytest.fixture
def sint(server, clients):
    """conOne, conTwo, conThree (available) and their managers, as the Java constructor
    makes them: a service is found and conOne may create nodes (canCreateNodesAndPublishItems)."""
    cons = [clients.add(server.online(f"sps{i}")) for i in (1, 2, 3)]
    service = find_service(cons[0], server.domain)
    assert service == f"pubsub.{server.domain}"
    one = Manager(cons[0], service)
    r = ok(one.ps("set", "<create/>"))
    instant = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "create")).get("node")
    assert instant and one.delete(instant)
    return [Manager(c, service) for c in cons]


def notification(c, pred, what, timeout=None):
    return c.recv(lambda e: e.tag == C("message") and e.find(q(NS_EVENT, "event")) is not None and pred(e),
                  timeout, what=what)


# ------------------------------------------------------------------ PubSubIntegrationTest

def test_publish_item(sint):
    """publishItemTest: an item published to a node of default configuration is among
    its items."""
    one = sint[0]
    node, needle = f"sinttest-publish-item-nodename-{rnd()}", f"test content {rnd()}"
    ok(one.create(node))
    ok(one.publish(node, geoloc(needle)))
    assert any(needle in tostring(i) for i in one.items(node))
    assert one.delete(node)


def test_subscribe(sint):
    """subscribeTest: another user subscribes; its subscriptions to the node list it."""
    one, two = sint[0], sint[1]
    node = f"sinttest-subscribe-nodename-{rnd()}"
    ok(one.create(node))
    me = bare(two.c.jid)
    sub = ok(two.subscribe(node, me)).find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription"))
    assert sub is not None and sub.get("jid") == me
    assert any(s.get("jid") == me for s in two.subscriptions(node))
    assert one.delete(node)


def test_subscribe_jids_do_not_match(sint):
    """subscribeJIDsDoNotMatchTest (6.1.3.1): "If the bare JID portions of the JIDs do not
    match ... the service MUST return a <bad-request/> error"."""
    one, two = sint[0], sint[1]
    node = f"sinttest-subscribe-nodename-{rnd()}"
    ok(one.create(node))
    r = two.subscribe(node, "this-jid-does-not-match@example.org")
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "invalid-jid")) is not None, tostring(r)
    assert one.delete(node)


@pytest.mark.parametrize("model,condition", [("presence", "not-authorized"), ("roster", "not-authorized"),
                                             ("whitelist", "not-allowed")])
def test_subscribe_access_model_refuses(sint, model, condition):
    """subscribePresenceSubscriptionRequiredTest (6.1.3.2), subscribeNotInRosterGroupTest
    (6.1.3.3), subscribeNotOnWhitelistTest (6.1.3.4, with <closed-node/>): the node is
    created with the access model (supported here, so the test is possible) and conTwo,
    neither a contact nor on the whitelist, is refused."""
    one, two = sint[0], sint[1]
    node = f"sinttest-subscribe-nodename-{rnd()}"
    ok(one.create(node, access_model=model))
    r = two.subscribe(node, bare(two.c.jid))
    assert stanza_error(r)[1] == condition, tostring(r)
    if model == "whitelist":
        assert r.find(C("error")).find(q(NS_ERRORS, "closed-node")) is not None, tostring(r)
    assert one.delete(node)


def test_subscribe_presence_model_lets_a_contact_in(sint):
    """The control of the test above: with a presence subscription the same request
    succeeds."""
    one, two = sint[0], sint[1]
    make_mutual(one.c, two.c)
    node = f"sinttest-subscribe-nodename-{rnd()}"
    ok(one.create(node, access_model="presence"))
    ok(two.subscribe(node, bare(two.c.jid)))
    assert one.delete(node)


def test_subscribe_pending_subscription(sint):
    """subscribePendingSubscriptionTest (6.1.3.7): "If the requesting entity has a
    pending subscription, the service MUST return a <not-authorized/> error to the
    subscriber, specifying a pubsub-specific error condition of <pending-subscription/>"."""
    one, two = sint[0], sint[1]
    node = f"sinttest-subscribe-nodename-{rnd()}"
    ok(one.create(node, access_model="authorize"))
    me = bare(two.c.jid)
    ok(two.subscribe(node, me))
    r = two.subscribe(node, me)
    assert stanza_error(r)[1] == "not-authorized", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "pending-subscription")) is not None, tostring(r)
    assert one.delete(node)


def test_subscribe_approval_required_generates_notification(sint):
    """subscribeApprovalRequiredGeneratesNotificationTest (6.1.4): "Because the
    subscription request may or may not be approved, the service MUST return a pending
    notification to the subscriber"."""
    one, two = sint[0], sint[1]
    node = f"sinttest-subscribe-nodename-{rnd()}"
    ok(one.create(node, access_model="authorize"))
    sub = ok(two.subscribe(node, bare(two.c.jid))).find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'subscription')}")
    assert sub.get("subscription") == "pending", tostring(sub)
    assert one.delete(node)


def test_subscribe_multiple_subscriptions(sint):
    """subscribeMultipleSubscriptionsTest (6.1.6): the service announces multi-subscribe,
    so two subscriptions of one JID get distinct SubIDs (and
    subscribeMultipleSubscriptionNotSupportedTest is 'not possible')."""
    one, two = sint[0], sint[1]
    assert NS_PUBSUB + "#multi-subscribe" in one.features()
    node = f"sinttest-multisubscribe-nodename-{rnd()}"
    ok(one.create(node))
    me = bare(two.c.jid)
    a = ok(two.subscribe(node, me)).find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription"))
    b = ok(two.subscribe(node, me)).find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription"))
    assert a.get("subid") and b.get("subid") and a.get("subid") != b.get("subid")
    assert one.delete(node)


def test_unsubscribe(sint):
    """unsubscribeTest (6.2.2): "the service MUST return an IQ result"."""
    one, two = sint[0], sint[1]
    node = f"sinttest-unsubscribe-nodename-{rnd()}"
    ok(one.create(node))
    me = bare(two.c.jid)
    sub = ok(two.subscribe(node, me)).find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription"))
    assert sub.get("subscription") == "subscribed"
    ok(two.unsubscribe(node, me, sub.get("subid")))
    assert two.subscriptions(node) == []
    assert one.delete(node)


def test_unsubscribe_no_subscription_id(sint):
    """unsubscribeNoSubscriptionIDTest (6.2.3.1): with several subscriptions and no SubID,
    <bad-request/>."""
    one, two = sint[0], sint[1]
    node = f"sinttest-unsubscribeNoSub-nodename-{rnd()}"
    ok(one.create(node))
    me = bare(two.c.jid)
    s1 = ok(two.subscribe(node, me)).find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'subscription')}").get("subid")
    s2 = ok(two.subscribe(node, me)).find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'subscription')}").get("subid")
    assert s1 and s2 and s1 != s2
    r = two.unsubscribe(node, me)
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "subid-required")) is not None
    assert one.delete(node)


def test_unsubscribe_no_such_subscriber(sint):
    """unsubscribeNoSuchSubscriberTest (6.2.3.2): an error (SHOULD be
    <unexpected-request/> with <not-subscribed/>)."""
    one, two = sint[0], sint[1]
    node = f"sinttest-unsubscribeNSS-nodename-{rnd()}"
    ok(one.create(node))
    r = two.unsubscribe(node, bare(two.c.jid))
    assert stanza_error(r)[1] == "unexpected-request", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "not-subscribed")) is not None
    assert one.delete(node)


def test_unsubscribe_insufficient_privileges(sint):
    """unsubscribeInsufficientPrivilegesTest (6.2.3.3): conThree unsubscribing conTwo gets
    <forbidden/>."""
    one, two, three = sint
    node = f"sinttest-unsubscribeInsufficient-nodename-{rnd()}"
    ok(one.create(node))
    me = bare(two.c.jid)
    sub = ok(two.subscribe(node, me)).find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'subscription')}")
    assert three.get_node(node) is None
    r = three.unsubscribe(node, me, sub.get("subid"))
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    assert [s.get("jid") for s in two.subscriptions(node)] == [me]
    assert one.delete(node)


def test_unsubscribe_node_does_not_exist(sint):
    """unsubscribeNodeDoesNotExistTest (6.2.3.3): <item-not-found/>."""
    one = sint[0]
    r = one.unsubscribe("I-dont-exist-" + rnd(), bare(one.c.jid))
    assert stanza_error(r)[1] == "item-not-found", tostring(r)


def test_unsubscribe_bad_subscription_id(sint):
    """unsubscribeBadSubscriptionIDTest (6.2.3.5): a SubID that is not the subscriber's,
    <not-acceptable/> (with <invalid-subid/>)."""
    one, two = sint[0], sint[1]
    node = f"sinttest-unsubscribeBad-nodename-{rnd()}"
    ok(one.create(node))
    me = bare(two.c.jid)
    ok(two.subscribe(node, me))
    ok(two.subscribe(node, me))
    r = two.unsubscribe(node, me, "this-is-not-an-existing-subscription-id")
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "invalid-subid")) is not None
    assert one.delete(node)


def test_get_empty_subscriptions(sint):
    """getEmptySubscriptionsTest (5.6): "If the requesting entity has no subscriptions, the
    pubsub service MUST return an empty <subscriptions/> element"."""
    one, two = sint[0], sint[1]
    node = f"sinttest-get-empty-subscriptions-test-nodename-{rnd()}"
    ok(one.create(node))
    assert two.get_node(node) is None
    assert two.subscriptions(node) == []
    assert one.delete(node)


def test_receive_published_item(sint):
    """receivePublishedItemTest: after subscribing (bare JID), conTwo receives what conOne
    publishes."""
    one, two = sint[0], sint[1]
    node, needle = f"sinttest-receive-published-item-nodename-{rnd()}", f"test content {rnd()}"
    ok(one.create(node))
    ok(two.subscribe(node, bare(two.c.jid)))
    ok(one.publish(node, geoloc(needle)))
    e = notification(two.c, lambda e: needle in tostring(e), "the published item")
    # to the subscribed JID, the bare one (RFC 6121 8.5.2: delivered to the resources)
    assert e.get("from") == one.s and e.get("to") == bare(two.c.jid), tostring(e)
    assert one.delete(node)


def test_transient_notification_only_node_without_item(sint):
    """transientNotificationOnlyNodeWithoutItemTest: a publish without item to a node that
    delivers no payloads and keeps no items succeeds."""
    one = sint[0]
    node = f"sinttest-transient-notificationonly-withoutitem-nodename-{rnd()}"
    ok(one.create(node, deliver_payloads="false", persist_items="false"))
    ok(one.publish(node))
    assert one.delete(node)


def test_transient_notification_only_node_with_item(sint):
    """transientNotificationOnlyNodeWithItemTest (7.1.3.6): "If the event type is
    notification + transient and the publisher provides an item, the service MUST bounce
    the publication request with a <bad-request/> error and a pubsub-specific error
    condition of <item-forbidden/>"."""
    one = sint[0]
    node = f"sinttest-transient-notificationonly-withitem-nodename-{rnd()}"
    ok(one.create(node, deliver_payloads="false", persist_items="false"))
    r = one.publish(node, f"<dummy-payload xmlns='https://igniterealtime.org/projects/smack'>{rnd()}</dummy-payload>",
                    item_id=f"sinttest-transient-notificationonly-withitem-itemid-{rnd()}")
    assert r.get("type") == "error", tostring(r)
    assert r.find(C("error")).get("type") == "modify", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "item-forbidden")) is not None, tostring(r)
    assert one.delete(node)


def test_delete_item(sint):
    """deleteItemTest (7.2): the service announces delete-items; a retracted item is no
    longer among the node's items."""
    one = sint[0]
    assert NS_PUBSUB + "#delete-items" in one.features()
    node, needle = f"sinttest-delete-item-nodename-{rnd()}", f"test-item-{rnd()}"
    ok(one.create(node))
    ok(one.publish(node, geoloc("This item was created during an automated test."), item_id=needle))
    ok(one.ps("set", f"<retract node='{node}'><item id='{needle}'/></retract>"))
    assert not any(i.get("id") == needle for i in one.items(node))
    assert one.delete(node)


def test_delete_non_existent_node(sint):
    """deleteNonExistentNodeTest (8.4.3.2): <item-not-found/>."""
    assert sint[0].delete(f"sinttest-delete-node-that-does-not-exist-{rnd()}") is False


def test_delete_node_and_notify_subscribers(sint):
    """deleteNodeAndNotifySubscribersTest (8.4.1): a subscriber hears of the deletion."""
    one, two = sint[0], sint[1]
    node = f"sinttest-delete-node-that-exist-{rnd()}"
    ok(one.create(node))
    ok(two.subscribe(node, bare(two.c.jid)))
    assert one.delete(node)
    e = notification(two.c, lambda e: e.find(q(NS_EVENT, "event")).find(q(NS_EVENT, "delete")) is not None,
                     "the delete notification")
    assert e.find(q(NS_EVENT, "event")).find(q(NS_EVENT, "delete")).get("node") == node


def test_publish_override_item(sint):
    """publishOverrideItemTest (7.1.2): "If the publisher previously published an item
    with the same ItemID, ... the service MUST overwrite the old item with the new item"."""
    one = sint[0]
    node, item_id = f"sinttest-publish-item-nodename-{rnd()}", f"reused-id-for-testrun-{rnd()}"
    a, b = f"test content A{rnd()}", f"test content B{rnd()}"
    ok(one.create(node, persist_items="true", max_items="2"))
    ok(one.publish(node, geoloc(a), item_id=item_id))
    ok(one.publish(node, geoloc(b), item_id=item_id))
    items = one.items(node)
    assert len(items) == 1 and items[0].get("id") == item_id
    assert a not in tostring(items[0]) and b in tostring(items[0])
    assert one.delete(node)


# ------------------------------------------------------------------ xep0060.section5

def test_section5_1_disco_info(sint):
    """PubSubSection5_1_IntegrationTest (5.1): the service answers disco#info with the
    pubsub/service identity and the 'pubsub', 'publish' and 'subscribe' features."""
    one = sint[0]
    r = ok(one.c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=one.s))
    qel = r.find(q(DISCO_INFO, "query"))
    assert any((i.get("category"), i.get("type")) == ("pubsub", "service")
               for i in qel.findall(q(DISCO_INFO, "identity"))), tostring(r)
    feats = one.features()
    for f in ("", "#publish", "#subscribe"):
        assert NS_PUBSUB + f in feats, f


def test_section5_3_disco_info_leaf_node(sint):
    """PubSubSection5_3_IntegrationTest.testDiscoInfoLeafNode (5.3): a node created with
    node_type leaf answers disco#info with the pubsub/leaf identity."""
    one = sint[0]
    node = f"testleaf-{rnd()}"
    ok(one.create(node, node_type="leaf"))
    assert one.get_node(node) is None
    assert one.delete(node)


def test_section5_5_disco_items_leaf_node(sint):
    """PubSubSection5_5_IntegrationTest.testDiscoItemsLeafNode (5.5): "The 'name' attribute
    of each Service Discovery item MUST contain its ItemID and the item MUST NOT possess a
    'node' attribute"."""
    one = sint[0]
    node, item_id = f"testleaf-{rnd()}", f"testitem-{rnd()}"
    ok(one.create(node, node_type="leaf"))
    ok(one.publish(node, geoloc(rnd()), item_id=item_id))
    r = ok(one.c.iq("get", f"<query xmlns='{DISCO_ITEMS}' node='{node}'/>", to=one.s))
    items = r.find(q(DISCO_ITEMS, "query")).findall(q(DISCO_ITEMS, "item"))
    assert any(i.get("name") == item_id for i in items), tostring(r)
    assert all(i.get("node") is None for i in items), tostring(r)
    assert one.delete(node)


def test_section5_5_nested_leaf_node_not_possible(sint):
    """testDiscoItemsNestedLeafNode needs a collection node (XEP-0248); this service has
    leaves only and refuses one, so the Java test is 'not possible'."""
    one = sint[0]
    r = one.create(f"testparent-{rnd()}", node_type="collection")
    assert stanza_error(r)[1] == "feature-not-implemented", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "unsupported")).get("feature") == "collections"
