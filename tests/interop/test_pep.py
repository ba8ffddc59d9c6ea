"""XEP-0163 PEP on XEP-0060: publish (item ids given or made), items (all, latest
max_items, by id), retract (notify), delete and purge (notified), node configuration
(get/set, type checks), publish-options preconditions (XEP-0060 7.1.5), access models
(presence, open, whitelist, roster), the errors XEP-0060 names for each; notifications
filtered by XEP-0115 caps (+notify), the caps query of an unknown ver (verified, once),
the last item on initial presence, the server's own caps; OMEMO device lists and bundles,
XEP-0084 avatars with the XEP-0398 conversions both ways (vCard PHOTO, presence hash),
XEP-0402 and XEP-0048 bookmarks (through XEP-0223 and the XEP-0049 bridge), XEP-0172.

Something that must NOT arrive is checked with a marker sent later over the same path
(a publish on another node that the client does want): notifications of one publisher are
sent in order, so anything let through would have come before the marker.
"""

import asyncio
import base64
import hashlib
import os
import ssl

import pytest

from im import make_mutual, roster_set
from rawxmpp import C, bare, new_id, q, stanza_error, tostring, xml_escape

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"
NS_CAPS = "http://jabber.org/protocol/caps"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"
NS_PRIVATE = "jabber:iq:private"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_META = "urn:xmpp:avatar:metadata"
OMEMO_DEVICES = "eu.siacs.conversations.axolotl.devicelist"
OMEMO2_DEVICES = "urn:xmpp:omemo:2:devices"
NS_NICK = "http://jabber.org/protocol/nick"
BOOKMARKS2 = "urn:xmpp:bookmarks:1"
TUNE = "http://jabber.org/protocol/tune"


# ------------------------------------------------------------------ helpers

def ok(r):
    assert r.get("type") == "result", tostring(r)
    return r


def app_error(r):
    """(condition, application condition) of an error reply."""
    assert r.get("type") == "error", tostring(r)
    err = r.find(C("error"))
    app = [ch for ch in err if ch.tag.startswith("{" + NS_ERRORS + "}")]
    return stanza_error(r)[1], (app[0].tag.split("}")[1] if app else None)


def caps_ver(identities, features, forms=()):
    """XEP-0115 section 5.1 (sha-1)."""
    s = ""
    for cat, typ, lang, name in sorted(identities):
        s += f"{cat}/{typ}/{lang}/{name}<"
    for f in sorted(features):
        s += f + "<"
    for form_type, fields in sorted(forms):
        s += form_type + "<"
        for var, values in sorted(fields):
            s += var + "<" + "".join(v + "<" for v in sorted(values))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


class Caps:
    """A client's capabilities: its disco#info, its ver, its <c/>."""

    NODE = "https://starling.test/client"

    def __init__(self, *notify, extra=(), wrong=False):
        self.features = ["http://jabber.org/protocol/caps", DISCO_INFO,
                         f"urn:test:{os.urandom(6).hex()}", *extra]
        self.features += [n + "+notify" for n in notify]
        self.identities = [("client", "pc", "", "test")]
        self.ver = caps_ver(self.identities, self.features)
        self.wrong = wrong  # answer with other features than the ver says

    def c(self):
        return f"<c xmlns='{NS_CAPS}' hash='sha-1' node='{self.NODE}' ver='{self.ver}'/>"

    def answer(self, client, iq):
        feats = self.features + (["urn:test:lie"] if self.wrong else [])
        inner = "".join(f"<identity category='{c}' type='{t}' name='{n}'/>"
                        for c, t, _, n in self.identities)
        inner += "".join(f"<feature var='{f}'/>" for f in feats)
        node = iq.find(q(DISCO_INFO, "query")).get("node")
        client.send_raw(f"<iq type='result' id='{iq.get('id')}' to='{iq.get('from')}'>"
                        f"<query xmlns='{DISCO_INFO}' node='{node}'>{inner}</query></iq>")


def is_caps_query(e):
    return (e.tag == C("iq") and e.get("type") == "get"
            and e.find(q(DISCO_INFO, "query")) is not None)


def available(client, caps=None, answer=True):
    """Initial presence (after the roster, like a real client), with caps; answers the
    server's caps query when one comes. Returns how many caps queries came."""
    client.iq("get", "<query xmlns='jabber:iq:roster'/>")
    client.presence(extra=caps.c() if caps else "")
    queries = 0
    own = None
    while own is None:
        e = client.recv(lambda e: is_caps_query(e) or (
            e.tag == C("presence") and e.get("from") == client.jid and e.get("type") is None),
            what="own presence or caps query")
        if is_caps_query(e):
            queries += 1
            node = e.find(q(DISCO_INFO, "query")).get("node")
            assert node == f"{caps.NODE}#{caps.ver}", tostring(e)
            assert "@" not in (e.get("from") or ""), "caps query not from the server: " + tostring(e)
            if answer:
                caps.answer(client, e)
        else:
            own = e
    if queries and answer:
        # the session handles its stanzas in order: once the ping is answered, so is
        # the caps answer (verified, cached)
        ok(client.ping_server())
    return queries


def login(server, caps=None, prefix="p"):
    c = server.online(prefix, presence=False)
    available(c, caps)
    return c


def publish(c, node, payload, item_id=None, options=None, to=None):
    iid = f" id='{item_id}'" if item_id is not None else ""
    opts = ""
    if options:
        fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in options.items())
        opts = (f"<publish-options><x xmlns='{NS_DATA}' type='submit'>"
                f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#publish-options</value></field>"
                f"{fields}</x></publish-options>")
    return c.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item{iid}>{payload}</item>"
                       f"</publish>{opts}</pubsub>", to=to)


def get_items(c, owner, node, max_items=None, ids=()):
    m = f" max_items='{max_items}'" if max_items is not None else ""
    inner = "".join(f"<item id='{i}'/>" for i in ids)
    return c.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'{m}>{inner}</items></pubsub>",
                to=owner)


def item_ids(r):
    items = ok(r).find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items"))
    return [i.get("id") for i in items.findall(q(NS_PUBSUB, "item"))]


def is_event(e, owner, node):
    if e.tag != C("message") or e.get("from") != owner:
        return False
    ev = e.find(q(NS_EVENT, "event"))
    if ev is None:
        return False
    return any(ch.get("node") == node for ch in ev)


def recv_event(c, owner, node, timeout=None):
    e = c.recv(lambda e: is_event(e, owner, node), timeout, what=f"event {node} from {owner}")
    assert e.get("type") == "headline", tostring(e)
    assert e.get("to") == c.jid, "notifications go to full JIDs: " + tostring(e)
    return e.find(q(NS_EVENT, "event"))


def tune(title):
    return f"<tune xmlns='{TUNE}'><title>{xml_escape(title)}</title></tune>"


def configure(c, node, fields):
    pairs = fields.items() if isinstance(fields, dict) else fields
    inner = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in pairs)
    return c.iq("set", f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'>"
                       f"<x xmlns='{NS_DATA}' type='submit'>"
                       f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>"
                       f"{inner}</x></configure></pubsub>")


def config_of(c, node):
    r = ok(c.iq("get", f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'/></pubsub>"))
    x = r.find(q(NS_OWNER, "pubsub")).find(q(NS_OWNER, "configure")).find(q(NS_DATA, "x"))
    return {f.get("var"): [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
            for f in x.findall(q(NS_DATA, "field"))}


# ------------------------------------------------------------------ discovery

def test_account_disco_and_server_caps(server):
    c = server.online("disco")
    r = ok(c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=bare(c.jid)))
    qel = r.find(q(DISCO_INFO, "query"))
    ids = {(i.get("category"), i.get("type")) for i in qel.findall(q(DISCO_INFO, "identity"))}
    assert ("pubsub", "pep") in ids and ("account", "registered") in ids, tostring(r)
    feats = {f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))}
    for f in ("publish", "publish-options", "auto-create", "access-presence", "persistent-items",
              "retract-items", "delete-items", "purge-nodes", "config-node", "last-published",
              "item-ids", "retrieve-items", "access-open", "access-whitelist", "access-roster",
              "filtered-notifications", "delete-nodes"):
        assert f"{NS_PUBSUB}#{f}" in feats, f
    for f in ("urn:xmpp:pep-vcard-conversion:0", "urn:xmpp:bookmarks:1#compat",
              "urn:xmpp:bookmarks:1#compat-pep", "urn:xmpp:bookmarks-conversion:0"):
        assert f in feats, f

    # XEP-0115: the stream features carry the server's caps, whose ver is the hash of
    # the server's disco#info, which the node#ver query answers alike.
    raw = server.client()
    raw.start()
    raw.auth(c.jid.split("@")[0], c.password)
    raw.bind()
    cel = raw.features.find(q(NS_CAPS, "c"))
    assert cel is not None and cel.get("hash") == "sha-1", tostring(raw.features)
    r = ok(raw.iq("get", f"<query xmlns='{DISCO_INFO}' node='{cel.get('node')}#{cel.get('ver')}'/>",
                  to=server.domain))
    qel = r.find(q(DISCO_INFO, "query"))
    idents = [(i.get("category"), i.get("type"), i.get("{http://www.w3.org/XML/1998/namespace}lang") or "",
               i.get("name") or "") for i in qel.findall(q(DISCO_INFO, "identity"))]
    feats = [f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))]
    assert caps_ver(idents, feats) == cel.get("ver")
    plain = ok(raw.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=server.domain))
    assert sorted(f.get("var") for f in plain.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))) == sorted(feats)
    bad = raw.iq("get", f"<query xmlns='{DISCO_INFO}' node='{cel.get('node')}#AAAA'/>", to=server.domain)
    assert stanza_error(bad)[1] == "item-not-found", tostring(bad)
    raw.close()
    c.close()


def test_disco_items_and_node_info(server):
    a = server.online("dn")
    b = server.online("dnb")
    owner = bare(a.jid)
    ok(publish(a, "urn:test:seen", tune("x"), options={"pubsub#access_model": "open"}))
    ok(publish(a, "urn:test:hidden", tune("y")))
    nodes = lambda c: sorted(i.get("node") for i in ok(c.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=owner))
                             .find(q(DISCO_ITEMS, "query")).findall(q(DISCO_ITEMS, "item"))
                             if i.get("jid") == owner)
    assert nodes(a) == ["urn:test:hidden", "urn:test:seen"]
    assert nodes(b) == ["urn:test:seen"], "a presence-access node listed to a stranger"
    r = ok(a.iq("get", f"<query xmlns='{DISCO_INFO}' node='urn:test:hidden'/>", to=owner))
    idents = [(i.get("category"), i.get("type")) for i in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "identity"))]
    assert idents == [("pubsub", "leaf")], tostring(r)
    meta = r.find(q(DISCO_INFO, "query")).find(q(NS_DATA, "x"))
    mfields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in meta.findall(q(NS_DATA, "field"))}
    assert mfields["FORM_TYPE"] == f"{NS_PUBSUB}#meta-data" and mfields["pubsub#owner"] == owner
    r = a.iq("get", f"<query xmlns='{DISCO_INFO}' node='urn:test:none'/>", to=owner)
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    # an open node's info for someone without a subscription (fetching OMEMO bundles
    # of a stranger); a node it may not see is the same error as the account's info
    r = ok(b.iq("get", f"<query xmlns='{DISCO_INFO}' node='urn:test:seen'/>", to=owner))
    assert r.find(q(DISCO_INFO, "query")).find(q(DISCO_INFO, "identity")).get("type") == "leaf"
    r = b.iq("get", f"<query xmlns='{DISCO_INFO}' node='urn:test:hidden'/>", to=owner)
    assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    for c in (a, b):
        c.close()


def test_disco_items_of_a_missing_node_is_item_not_found(server):
    """XEP-0060 5.5 / XEP-0030 7: disco#items of a node the account does not have is
    <item-not-found/> (for the owner and a contact sharing presence), while the nodes
    other modules answer at the bare JID keep working (the XEP-0050 commands node) and
    XEP-0030 8 still holds: no presence subscription, an empty result."""
    a = server.online("dnx")
    b = server.online("dnxc")
    s = server.online("dnxs")
    owner = bare(a.jid)
    make_mutual(a, b)
    ok(publish(a, "urn:test:there", tune("x")))
    items_of = lambda c, node, to=owner: c.iq("get", f"<query xmlns='{DISCO_ITEMS}' node='{node}'/>", to=to)
    for c in (a, b):
        r = items_of(c, "urn:test:absent")
        assert stanza_error(r) == ("cancel", "item-not-found"), tostring(r)
        r = ok(items_of(c, "urn:test:there"))
        assert len(r.find(q(DISCO_ITEMS, "query")).findall(q(DISCO_ITEMS, "item"))) == 1, tostring(r)
    # the commands node at one's own bare JID (answered by the ad-hoc module)
    r = ok(items_of(a, "http://jabber.org/protocol/commands"))
    assert r.find(q(DISCO_ITEMS, "query")).get("node") == "http://jabber.org/protocol/commands"
    # a command's own node is known too (a leaf: no items), as at the domain
    for to in (owner, "localhost"):
        r = ok(items_of(a, "ping", to=to))
        assert r.find(q(DISCO_ITEMS, "query")).findall(q(DISCO_ITEMS, "item")) == [], tostring(r)
    # the domain: a node no module has is item-not-found too
    r = items_of(a, "urn:test:absent", to="localhost")
    assert stanza_error(r) == ("cancel", "item-not-found"), tostring(r)
    # no presence subscription: the empty result of XEP-0030 8, as for a missing account
    r = ok(items_of(s, "urn:test:absent"))
    assert r.find(q(DISCO_ITEMS, "query")).findall(q(DISCO_ITEMS, "item")) == [], tostring(r)
    r = ok(items_of(s, "urn:test:absent", to=f"nobody-{new_id()}@localhost"))
    assert r.find(q(DISCO_ITEMS, "query")).findall(q(DISCO_ITEMS, "item")) == [], tostring(r)
    server.assert_healthy(a, b, s)
    for c in (a, b, s):
        c.close()


# ------------------------------------------------------------------ publish / items

def test_publish_items_retract_and_errors(server):
    a = server.online("pub")
    node = "urn:test:node"
    r = ok(publish(a, node, tune("one"), item_id="i1"))
    assert r.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}/{q(NS_PUBSUB, 'item')}").get("id") == "i1"
    # no id: the server makes one and says which
    r = ok(publish(a, node, tune("two")))
    made = r.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}/{q(NS_PUBSUB, 'item')}").get("id")
    assert made, tostring(r)
    # default max_items is 1 (XEP-0163 section 5): only the latest is kept
    assert item_ids(get_items(a, None, node)) == [made]
    ok(configure(a, node, {"pubsub#max_items": "10"}))
    for i in range(3):
        ok(publish(a, node, tune(f"n{i}"), item_id=f"n{i}"))
    assert item_ids(get_items(a, None, node)) == [made, "n0", "n1", "n2"]
    assert item_ids(get_items(a, None, node, max_items=2)) == ["n1", "n2"]
    got = ok(get_items(a, None, node, ids=["n0"]))
    items = got.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items"))
    assert items.find(q(NS_PUBSUB, "item")).find(q(TUNE, "tune")).findtext(q(TUNE, "title")) == "n0"
    # same id again: replaced, moved to the end
    ok(publish(a, node, tune("n0 again"), item_id="n0"))
    assert item_ids(get_items(a, None, node)) == [made, "n1", "n2", "n0"]
    ok(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{node}'><item id='n1'/></retract></pubsub>"))
    assert item_ids(get_items(a, None, node)) == [made, "n2", "n0"]

    # errors of XEP-0060
    assert app_error(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish><item>{tune('x')}</item></publish></pubsub>")) == ("bad-request", "nodeid-required")
    assert app_error(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node=''><item>{tune('x')}</item></publish></pubsub>")) == ("bad-request", "nodeid-required")
    assert app_error(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'/></pubsub>")) == ("bad-request", "item-required")
    assert app_error(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item id='e'/></publish></pubsub>")) == ("bad-request", "payload-required")
    assert app_error(publish(a, node, tune("x") + tune("y"))) == ("bad-request", "invalid-payload")
    big = "<blob xmlns='urn:test:blob'>" + "a" * 150_000 + "</blob>"
    assert app_error(publish(a, node, big)) == ("not-acceptable", "payload-too-big")
    assert stanza_error(get_items(a, None, "urn:test:missing"))[1] == "item-not-found"
    # XEP-0060 6.5.9.11: items that do not exist: a result without them
    assert item_ids(get_items(a, None, node, ids=["nope"])) == []
    assert app_error(a.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><items/></pubsub>")) == ("bad-request", "nodeid-required")
    assert stanza_error(a.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}' max_items='x'/></pubsub>"))[1] == "bad-request"
    r = a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{node}'><item id='nope'/></retract></pubsub>")
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    r = a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{node}'/></pubsub>")
    assert app_error(r) == ("bad-request", "item-required")
    # explicit subscriptions (XEP-0060 6.1) are taken on PEP nodes too
    r = ok(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='{a.jid}'/></pubsub>"))
    sub = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "subscription"))
    assert sub.get("subscription") == "subscribed" and sub.get("subid"), tostring(r)
    ok(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><unsubscribe node='{node}' jid='{a.jid}'/></pubsub>"))
    r = a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/></pubsub>")
    assert stanza_error(r)[1] == "conflict", tostring(r)
    # someone else cannot publish to, configure or delete a's nodes
    b = server.online("pubb")
    r = publish(b, node, tune("x"), to=bare(a.jid))
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    r = b.iq("set", f"<pubsub xmlns='{NS_OWNER}'><delete node='{node}'/></pubsub>", to=bare(a.jid))
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    server.assert_healthy(a, b)
    a.close()
    b.close()


def test_deleted_account_leaves_no_pep_data(server):
    jid, _, pw = server.new_user("gone")
    a = server.login(jid, pw)
    ok(publish(a, NS_NICK, f"<nick xmlns='{NS_NICK}'>Ghost</nick>", item_id="current"))
    img = os.urandom(64)
    ok(a.iq("set", f"<vCard xmlns='{NS_VCARD}'><PHOTO><TYPE>image/png</TYPE>"
                   f"<BINVAL>{base64.b64encode(img).decode()}</BINVAL></PHOTO></vCard>"))
    a.close()
    server.del_user(jid)
    server.add_user(jid, pw)
    again = server.login(jid, pw)
    assert stanza_error(get_items(again, None, NS_NICK))[1] == "item-not-found"
    assert stanza_error(get_items(again, None, AVATAR_META))[1] == "item-not-found"
    again.presence()
    p = again.recv(lambda e: e.tag == C("presence") and e.get("from") == again.jid, what="own presence")
    assert p.find(q(NS_VCARD_UPDATE, "x")) is None, "an old avatar hash: " + tostring(p)
    again.close()


def test_configure_and_publish_options(server):
    a = server.online("cfg")
    node = "urn:test:cfg"
    ok(publish(a, node, tune("x"), item_id="1"))
    cfg = config_of(a, node)
    assert cfg["FORM_TYPE"] == [f"{NS_PUBSUB}#node_config"]
    assert cfg["pubsub#access_model"] == ["presence"]
    assert cfg["pubsub#max_items"] == ["1"]
    assert cfg["pubsub#send_last_published_item"] == ["on_sub_and_presence"]
    ok(configure(a, node, {"pubsub#access_model": "open", "pubsub#max_items": "max"}))
    cfg = config_of(a, node)
    assert cfg["pubsub#access_model"] == ["open"] and cfg["pubsub#max_items"] == ["max"]
    # wrong-typed values: not-acceptable, nothing changes
    for k, v in (("pubsub#max_items", "many"), ("pubsub#persist_items", "perhaps"),
                 ("pubsub#access_model", "everybody"), ("pubsub#max_items", "-1"),
                 ("pubsub#send_last_published_item", "sometimes")):
        r = configure(a, node, [("pubsub#title", "changed"), (k, v)])
        assert stanza_error(r)[1] == "not-acceptable", (k, v, tostring(r))
    cfg = config_of(a, node)
    assert cfg["pubsub#access_model"] == ["open"] and cfg["pubsub#title"] == [""], cfg
    r = a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'><x xmlns='{NS_DATA}' type='submit'>"
                    f"<field var='FORM_TYPE'><value>urn:wrong</value></field></x></configure></pubsub>")
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    r = a.iq("get", f"<pubsub xmlns='{NS_OWNER}'><configure node='urn:test:none'/></pubsub>")
    assert stanza_error(r)[1] == "item-not-found", tostring(r)

    # the form as the server gave it, submitted back with one change (what clients do)
    form = config_of(a, "urn:test:cfg")
    form["pubsub#access_model"] = ["presence"]
    fields = "".join(f"<field var='{k}'>" + "".join(f"<value>{xml_escape(v)}</value>" for v in vs) + "</field>"
                     for k, vs in form.items())
    ok(a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'>"
                   f"<x xmlns='{NS_DATA}' type='submit'>{fields}</x></configure></pubsub>"))
    assert config_of(a, node)["pubsub#access_model"] == ["presence"]
    ok(configure(a, node, {"pubsub#access_model": "open"}))

    # informational fields, the one publish model, a node's own payload limit
    ok(configure(a, node, {"pubsub#type": "urn:test:tune", "pubsub#description": "songs",
                           "pubsub#publish_model": "publishers", "pubsub#max_payload_size": "200"}))
    cfg = config_of(a, node)
    assert cfg["pubsub#type"] == ["urn:test:tune"] and cfg["pubsub#max_payload_size"] == ["200"]
    r = configure(a, node, {"pubsub#publish_model": "open"})
    assert stanza_error(r)[1] == "not-acceptable", tostring(r)
    r = publish(a, node, tune("x" * 300))
    assert app_error(r) == ("not-acceptable", "payload-too-big"), tostring(r)
    ok(configure(a, node, {"pubsub#max_payload_size": "100000"}))

    # publish-options: met -> published; not met -> conflict + precondition-not-met
    ok(publish(a, node, tune("y"), options={"pubsub#access_model": "open"}))
    r = publish(a, node, tune("z"), options={"pubsub#access_model": "whitelist"})
    assert app_error(r) == ("conflict", "precondition-not-met"), tostring(r)
    r = publish(a, node, tune("z"), options={"pubsub#max_items": "nonsense"})
    assert app_error(r) == ("conflict", "precondition-not-met"), tostring(r)
    # a new node is made with the options
    ok(publish(a, "urn:test:cfg2", tune("z"), options={"pubsub#access_model": "whitelist",
                                                       "pubsub#max_items": "max"}))
    cfg = config_of(a, "urn:test:cfg2")
    assert cfg["pubsub#access_model"] == ["whitelist"] and cfg["pubsub#max_items"] == ["max"]

    # purge keeps the node, delete removes it
    ok(a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><purge node='{node}'/></pubsub>"))
    assert item_ids(get_items(a, None, node)) == []
    ok(a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><delete node='{node}'/></pubsub>"))
    assert stanza_error(get_items(a, None, node))[1] == "item-not-found"
    r = a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><delete node='{node}'/></pubsub>")
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    server.assert_healthy(a)
    a.close()


def test_create_with_configure_and_other_requests(server):
    a = server.online("cr")
    node = "urn:test:created"
    form = (f"<configure><x xmlns='{NS_DATA}' type='submit'>"
            f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>"
            f"<field var='pubsub#max_items'><value>3</value></field>"
            f"<field var='pubsub#access_model'><value>open</value></field></x></configure>")
    ok(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/>{form}</pubsub>"))
    cfg = config_of(a, node)
    assert cfg["pubsub#max_items"] == ["3"] and cfg["pubsub#access_model"] == ["open"]
    assert item_ids(get_items(a, None, node)) == []
    r = a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><create/></pubsub>")
    assert app_error(r) == ("not-acceptable", "nodeid-required"), tostring(r)
    # publish-options may come first
    r = a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish-options><x xmlns='{NS_DATA}' type='submit'>"
                    f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#publish-options</value></field>"
                    f"<field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options>"
                    f"<publish node='{node}'><item>{tune('x')}</item></publish></pubsub>")
    assert app_error(r) == ("conflict", "precondition-not-met"), tostring(r)
    for i in range(5):
        ok(publish(a, node, tune(str(i)), item_id=str(i)))
    assert item_ids(get_items(a, None, node)) == ["2", "3", "4"]
    # the default configuration
    r = ok(a.iq("get", f"<pubsub xmlns='{NS_OWNER}'><default/></pubsub>"))
    assert r.find(f"{q(NS_OWNER, 'pubsub')}/{q(NS_OWNER, 'default')}/{q(NS_DATA, 'x')}") is not None
    # not a pubsub service: the server, an account that does not exist
    r = a.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>", to=server.domain)
    assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    r = a.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>",
             to=f"nobody-{os.urandom(4).hex()}@{server.domain}")
    assert stanza_error(r)[1] == "service-unavailable", tostring(r)
    r = a.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><frobnicate node='{node}'/></pubsub>")
    assert stanza_error(r)[1] == "feature-not-implemented", tostring(r)
    r = a.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'/>")
    assert stanza_error(r)[1] == "bad-request", tostring(r)
    server.assert_healthy(a)
    a.close()


def test_roster_access_notifications_and_purge(server):
    a = server.online("ro")
    inside = login(server, Caps(TUNE), "roi")
    outside = login(server, Caps(TUNE), "roo")
    make_mutual(a, inside)
    make_mutual(a, outside)
    ok(roster_set(a, bare(inside.jid), groups=["Band"]))
    owner = bare(a.jid)
    ok(publish(a, TUNE, tune("first"), item_id="1"))
    ok(a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><configure node='{TUNE}'>"
                   f"<x xmlns='{NS_DATA}' type='submit'>"
                   f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>"
                   f"<field var='pubsub#access_model'><value>roster</value></field>"
                   f"<field var='pubsub#roster_groups_allowed'><value>Band</value></field>"
                   f"</x></configure></pubsub>"))
    recv_event(inside, owner, TUNE)
    recv_event(outside, owner, TUNE)
    ok(publish(a, TUNE, tune("second"), item_id="2"))
    ev = recv_event(inside, owner, TUNE)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).get("id") == "2"
    ok(a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><purge node='{TUNE}'/></pubsub>"))
    ev = recv_event(inside, owner, TUNE)
    assert ev.find(q(NS_EVENT, "purge")) is not None, tostring(ev)
    # outside the group: neither the item nor the purge (both came before this marker)
    ok(configure(a, TUNE, {"pubsub#access_model": "presence"}))
    ok(publish(a, TUNE, tune("marker"), item_id="m"))
    e = outside.recv(lambda e: is_event(e, owner, TUNE), what="the marker")
    item = e.find(q(NS_EVENT, "event")).find(q(NS_EVENT, "items"))
    assert item is not None and item.find(q(NS_EVENT, "item")).get("id") == "m", tostring(e)
    for c in (a, inside, outside):
        c.close()


def test_access_models(server):
    a = server.online("acc")
    friend = server.online("accf")
    stranger = server.online("accs")
    make_mutual(a, friend)
    owner = bare(a.jid)
    ok(publish(a, "urn:test:presence", tune("p"), item_id="p"))
    ok(publish(a, "urn:test:open", tune("o"), item_id="o", options={"pubsub#access_model": "open"}))
    ok(publish(a, "urn:test:white", tune("w"), item_id="w", options={"pubsub#access_model": "whitelist"}))
    ok(publish(a, "urn:test:roster", tune("r"), item_id="r"))
    ok(a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><configure node='urn:test:roster'>"
                   f"<x xmlns='{NS_DATA}' type='submit'>"
                   f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>"
                   f"<field var='pubsub#access_model'><value>roster</value></field>"
                   f"<field var='pubsub#roster_groups_allowed'><value>Friends</value></field>"
                   f"</x></configure></pubsub>"))

    assert item_ids(get_items(friend, owner, "urn:test:presence")) == ["p"]
    assert app_error(get_items(stranger, owner, "urn:test:presence")) == ("not-authorized", "presence-subscription-required")
    assert item_ids(get_items(stranger, owner, "urn:test:open")) == ["o"]
    assert app_error(get_items(friend, owner, "urn:test:white")) == ("not-allowed", "closed-node")
    assert item_ids(get_items(a, None, "urn:test:white")) == ["w"]
    assert app_error(get_items(friend, owner, "urn:test:roster")) == ("not-authorized", "not-in-roster-group")
    ok(roster_set(a, bare(friend.jid), groups=["Friends"]))
    assert item_ids(get_items(friend, owner, "urn:test:roster")) == ["r"]
    assert app_error(get_items(stranger, owner, "urn:test:roster")) == ("not-authorized", "not-in-roster-group")
    for c in (a, friend, stranger):
        c.close()


# ------------------------------------------------------------------ notifications

def test_replyto_names_the_publisher_only_to_those_sharing_presence(server):
    """XEP-0163 4.3.1.3: a notification to an entity with a presence subscription to the
    owner carries an XEP-0033 replyto address naming the publishing resource; one to an
    explicit subscriber without a presence subscription MUST NOT."""
    node = "urn:test:replyto"
    caps = Caps(node)
    a = login(server, caps, "rto")
    friend = login(server, caps, "rtof")
    stranger = login(server, caps, "rtos")
    make_mutual(a, friend)
    owner = bare(a.jid)
    ok(publish(a, node, tune("first"), item_id="1", options={"pubsub#access_model": "open"}))
    recv_event(friend, owner, node)
    ok(stranger.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='{bare(stranger.jid)}'/>"
                          f"</pubsub>", to=owner))
    stranger.drain(0.3)
    friend.drain(0.3)
    ok(publish(a, node, tune("second"), item_id="2"))
    ns_addr = "http://jabber.org/protocol/address"

    def replyto(c):
        e = c.recv(lambda e: is_event(e, owner, node), what="the notification")
        items = e.find(q(NS_EVENT, "event")).find(q(NS_EVENT, "items"))
        assert items.find(q(NS_EVENT, "item")).get("id") == "2", tostring(e)
        return [x.get("jid") for x in e.findall(f"{q(ns_addr, 'addresses')}/{q(ns_addr, 'address')}")
                if x.get("type") == "replyto"]

    assert replyto(friend) == [a.jid]
    assert replyto(stranger) == []
    server.assert_healthy(a, friend, stranger)
    for c in (a, friend, stranger):
        c.close()


def test_no_notification_to_an_explicit_subscriber_the_owner_blocks(server):
    """XEP-0163 4.3.2: a PEP service MUST NOT send notifications to a subscriber the user has
    blocked (XEP-0191), also one that subscribed explicitly before it was blocked."""
    node = "urn:test:blocked-sub"
    a = server.online("pbk")
    b = login(server, Caps(), "pbks")
    owner = bare(a.jid)
    ok(publish(a, node, tune("open"), item_id="0", options={"pubsub#access_model": "open"}))
    ok(b.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='{bare(b.jid)}'/></pubsub>",
            to=owner))
    b.drain(0.3)
    block = lambda verb: ok(a.iq("set", f"<{verb} xmlns='urn:xmpp:blocking'><item jid='{bare(b.jid)}'/></{verb}>"))
    block("block")
    ok(publish(a, node, tune("hidden"), item_id="hidden"))
    block("unblock")
    ok(publish(a, node, tune("marker"), item_id="marker"))
    # in order from one publisher: had "hidden" been sent, it would come first
    e = b.recv(lambda e: is_event(e, owner, node), what="the marker")
    item = e.find(q(NS_EVENT, "event")).find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item"))
    assert item.get("id") == "marker", tostring(e)
    server.assert_healthy(a, b)
    for c in (a, b):
        c.close()


def test_omemo_devicelist_notifications_follow_caps_and_subscription(server):
    """An OMEMO device list reaches a contact whose caps have +notify, not one without
    it, nor someone without a presence subscription; the owner's own +notify resource too."""
    caps_yes = Caps(OMEMO_DEVICES, TUNE)
    caps_no = Caps(TUNE)
    a = login(server, Caps(OMEMO_DEVICES, TUNE), "om")
    wants = login(server, caps_yes, "omy")
    nowant = login(server, caps_no, "omn")
    stranger = login(server, Caps(OMEMO_DEVICES, TUNE), "oms")
    make_mutual(a, wants)
    make_mutual(a, nowant)
    owner = bare(a.jid)
    devices = ("<list xmlns='eu.siacs.conversations.axolotl'><device id='12345'/>"
               "<device id='4223'/></list>")
    ok(publish(a, OMEMO_DEVICES, devices, item_id="current", options={"pubsub#access_model": "open"}))
    ev = recv_event(wants, owner, OMEMO_DEVICES)
    item = ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item"))
    assert item.get("id") == "current"
    ids = [d.get("id") for d in item.find("{eu.siacs.conversations.axolotl}list")]
    assert ids == ["12345", "4223"]
    recv_event(a, owner, OMEMO_DEVICES)
    # the marker: a tune all of them want
    ok(publish(a, TUNE, tune("marker"), item_id="m"))
    for c in (nowant,):
        e = c.recv(lambda e: e.tag == C("message") and e.find(q(NS_EVENT, "event")) is not None,
                   what="the tune marker")
        assert is_event(e, owner, TUNE), "an event for a node without +notify: " + tostring(e)
    recv_event(wants, owner, TUNE)
    # the stranger has no subscription: neither the list (open access) nor the tune
    stranger.expect_nothing(lambda e: is_event(e, owner, OMEMO_DEVICES) or is_event(e, owner, TUNE), 1.0)
    # but may fetch the open device list, and the bundle (XEP-0384)
    bundle = ("<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>"
              "AAAA</signedPreKeyPublic><signedPreKeySignature>BBBB</signedPreKeySignature>"
              "<identityKey>CCCC</identityKey><prekeys><preKeyPublic preKeyId='1'>DDDD</preKeyPublic>"
              "</prekeys></bundle>")
    bnode = "eu.siacs.conversations.axolotl.bundles:12345"
    ok(publish(a, bnode, bundle, item_id="current", options={"pubsub#access_model": "open"}))
    assert item_ids(get_items(stranger, owner, OMEMO_DEVICES)) == ["current"]
    assert item_ids(get_items(stranger, owner, bnode)) == ["current"]
    # OMEMO 2 nodes are plain PEP nodes too
    ok(publish(a, OMEMO2_DEVICES, "<devices xmlns='urn:xmpp:omemo:2'><device id='1'/></devices>",
               item_id="current", options={"pubsub#access_model": "open", "pubsub#max_items": "max"}))
    assert item_ids(get_items(stranger, owner, OMEMO2_DEVICES)) == ["current"]

    # retract with notify, delete: told to those who want the node
    ok(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{TUNE}' notify='true'><item id='m'/></retract></pubsub>"))
    ev = recv_event(wants, owner, TUNE)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "retract")).get("id") == "m"
    ok(a.iq("set", f"<pubsub xmlns='{NS_OWNER}'><delete node='{TUNE}'/></pubsub>"))
    ev = recv_event(wants, owner, TUNE)
    assert ev.find(q(NS_EVENT, "delete")) is not None, tostring(ev)
    server.assert_healthy(a, wants, nowant, stranger)
    for c in (a, wants, nowant, stranger):
        c.close()


def test_negative_priority_resource_gets_no_notifications(server):
    """XEP-0163 4.3.1 / 4.3.2: notifications, and the last item on initial presence, go
    only to resources with a non-negative priority; a sibling resource with priority 0
    still gets them."""
    node = "urn:test:priority"
    caps = Caps(node)
    a = server.online("prn")
    jid, _, pw = server.new_user("prnc")
    pos = server.login(jid, pw, resource="pos")
    available(pos, caps)
    make_mutual(a, pos)
    owner = bare(a.jid)
    ok(publish(a, node, tune("first"), item_id="1"))
    recv_event(pos, owner, node)
    neg = server.login(jid, pw, resource="neg")
    neg.iq("get", "<query xmlns='jabber:iq:roster'/>")
    neg.presence(priority=-1, extra=caps.c())
    neg.recv(lambda e: e.tag == C("presence") and e.get("from") == neg.jid, what="own presence")
    ok(neg.ping_server())
    neg.expect_nothing(lambda e: is_event(e, owner, node), 1.0, what="the last item")
    ok(publish(a, node, tune("second"), item_id="2"))
    ev = recv_event(pos, owner, node)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).get("id") == "2"
    neg.expect_nothing(lambda e: is_event(e, owner, node), 1.0, what="a notification")
    server.assert_healthy(a, pos, neg)
    for c in (a, pos, neg):
        c.close()


def test_unknown_caps_asked_once_and_verified(server):
    caps = Caps(TUNE)
    first = server.online("cq1", presence=False)
    assert available(first, caps) == 1
    # the same caps again, from another account: known, no query
    second = server.online("cq2", presence=False)
    assert available(second, caps) == 0
    second.expect_nothing(is_caps_query, 1.0, what="a second caps query")
    # caps that lie about their hash are not believed (and asked again next time)
    liar = Caps(TUNE, wrong=True)
    l1 = server.online("cq3", presence=False)
    assert available(l1, liar) == 1
    l2 = server.online("cq4", presence=False)
    assert available(l2, liar) == 1
    # and a liar gets no notifications through them
    make_mutual(first, l1)
    make_mutual(first, second)
    ok(publish(first, TUNE, tune("t"), item_id="t"))
    recv_event(second, bare(first.jid), TUNE)
    l1.expect_nothing(lambda e: is_event(e, bare(first.jid), TUNE), 1.0)
    server.assert_healthy(first, second, l1, l2)
    for c in (first, second, l1, l2):
        c.close()


def test_bad_caps_input(server):
    c = server.online("badcaps", presence=False)
    c.iq("get", "<query xmlns='jabber:iq:roster'/>")
    # no hash, an unknown hash, a huge ver: not asked, no harm
    for extra in (f"<c xmlns='{NS_CAPS}' node='x' ver='abc'/>",
                  f"<c xmlns='{NS_CAPS}' hash='md5' node='x' ver='abc'/>",
                  f"<c xmlns='{NS_CAPS}' hash='sha-1' node='x' ver='{'A' * 5000}'/>",
                  f"<c xmlns='{NS_CAPS}'/>"):
        c.presence(extra=extra)
    c.expect_nothing(is_caps_query, 0.7, what="a caps query")
    # an answer nobody asked for, and one with duplicate features for a real query
    c.send_raw(f"<iq type='result' id='caps:AAAA' to='{server.domain}'>"
               f"<query xmlns='{DISCO_INFO}'/></iq>")
    dup = Caps(TUNE)
    c.presence(extra=dup.c())
    query = c.recv(is_caps_query, what="caps query")
    c.send_raw(f"<iq type='result' id='{query.get('id')}' to='{query.get('from')}'>"
               f"<query xmlns='{DISCO_INFO}'><identity category='client' type='pc' name='test'/>"
               + "".join(f"<feature var='{f}'/><feature var='{f}'/>" for f in dup.features)
               + "</query></iq>")
    ok(c.ping_server())
    # not believed: the next session with these caps is asked again
    other = server.online("badcaps2", presence=False)
    assert available(other, dup) == 1
    server.assert_healthy(c, other)
    c.close()
    other.close()


def test_last_item_on_initial_presence(server):
    a = login(server, Caps(NS_NICK), "last")
    b = server.online("lastb")
    make_mutual(a, b)
    owner = bare(a.jid)
    ok(publish(a, NS_NICK, f"<nick xmlns='{NS_NICK}'>Romeo</nick>", item_id="current"))
    b.close()
    # b comes back with +notify for nick: it gets the last nick on its initial presence
    b2 = server.login(bare(b.jid), b.password, presence=False)
    available(b2, Caps(NS_NICK))
    ev = recv_event(b2, owner, NS_NICK)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).findtext(q(NS_NICK, "nick")) == "Romeo"
    # the same with caps already known
    b2.close()
    b3 = server.login(bare(b.jid), b.password, presence=False)
    caps = Caps(NS_NICK)
    c0 = server.online("lastc", presence=False)
    available(c0, caps)
    assert available(b3, caps) == 0
    recv_event(b3, owner, NS_NICK)
    for c in (a, b3, c0):
        c.close()


def test_sessions_waiting_on_a_caps_query_get_last_items(server):
    a = server.online("wq")
    b = server.online("wqb")
    make_mutual(a, b)
    owner = bare(a.jid)
    ok(publish(a, NS_NICK, f"<nick xmlns='{NS_NICK}'>Balthasar</nick>", item_id="current"))
    caps = Caps(NS_NICK)
    b1 = server.login(bare(b.jid), b.password, resource="one")
    b2 = server.login(bare(b.jid), b.password, resource="two")
    b1.iq("get", "<query xmlns='jabber:iq:roster'/>")
    b1.presence(extra=caps.c())
    query = b1.recv(is_caps_query, what="caps query")
    # the same caps from another session while the query is unanswered: not asked
    assert available(b2, caps) == 0
    b2.expect_nothing(lambda e: is_event(e, owner, NS_NICK) or is_caps_query(e), 0.5)
    caps.answer(b1, query)
    for c in (b1, b2):
        ev = recv_event(c, owner, NS_NICK)
        assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).findtext(q(NS_NICK, "nick")) == "Balthasar"
    for c in (a, b, b1, b2):
        c.close()


def test_last_item_when_subscription_starts(server):
    a = server.online("subs")
    b = login(server, Caps(NS_NICK), "subsb")
    owner = bare(a.jid)
    ok(publish(a, NS_NICK, f"<nick xmlns='{NS_NICK}'>Benvolio</nick>", item_id="current"))
    b.expect_nothing(lambda e: is_event(e, owner, NS_NICK), 0.5)
    b.presence(to=owner, type_="subscribe")
    a.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", what="subscribe")
    a.presence(to=bare(b.jid), type_="subscribed")
    ev = recv_event(b, owner, NS_NICK)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).findtext(q(NS_NICK, "nick")) == "Benvolio"
    for c in (a, b):
        c.close()


def test_last_item_when_notify_appears_in_new_caps(server):
    a = server.online("cap")
    b = login(server, Caps(TUNE), "capb")
    make_mutual(a, b)
    owner = bare(a.jid)
    ok(publish(a, NS_NICK, f"<nick xmlns='{NS_NICK}'>Paris</nick>", item_id="current"))
    b.expect_nothing(lambda e: is_event(e, owner, NS_NICK), 0.5)
    # new caps, already known to the server (another client has them): at once
    known = Caps(NS_NICK, TUNE)
    other = server.online("capo", presence=False)
    available(other, known)
    b.presence(extra=known.c())
    ev = recv_event(b, owner, NS_NICK)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).findtext(q(NS_NICK, "nick")) == "Paris"
    # the same caps again: nothing new
    b.presence(extra=known.c(), status="again")
    b.expect_nothing(lambda e: is_event(e, owner, NS_NICK), 0.7)
    # caps the server has to ask for: after the answer
    fresh = Caps(NS_NICK, TUNE, AVATAR_META)
    ok(publish(a, AVATAR_META, f"<metadata xmlns='{AVATAR_META}'/>", item_id="none"))
    b.presence(extra=fresh.c())
    query = b.recv(is_caps_query, what="caps query")
    fresh.answer(b, query)
    ok(b.ping_server())
    recv_event(b, owner, AVATAR_META)
    for c in (a, b, other):
        c.close()


def test_node_count_is_bounded(server):
    a = server.online("many")
    for i in range(256):
        r = publish(a, f"urn:test:many:{i}", tune("x"), item_id="1")
        assert r.get("type") == "result", (i, tostring(r))
    r = publish(a, "urn:test:many:one-too-many", tune("x"))
    assert app_error(r) == ("policy-violation", "max-nodes-exceeded"), tostring(r)
    # existing nodes still take items
    ok(publish(a, "urn:test:many:0", tune("y"), item_id="2"))
    server.assert_healthy(a)
    a.close()


# ------------------------------------------------------------------ XEP-0084 / XEP-0398

def test_avatar_to_vcard_and_back(server):
    a = server.online("av")
    watcher = login(server, Caps(AVATAR_META), "avw")
    make_mutual(a, watcher)
    img = os.urandom(300)
    sha = hashlib.sha1(img).hexdigest()
    b64 = base64.b64encode(img).decode()
    ok(publish(a, AVATAR_DATA, f"<data xmlns='{AVATAR_DATA}'>{b64}</data>", item_id=sha))
    ok(publish(a, AVATAR_META, f"<metadata xmlns='{AVATAR_META}'><info id='{sha}' bytes='300' "
                               f"type='image/png' width='10' height='10'/></metadata>", item_id=sha))
    ev = recv_event(watcher, bare(a.jid), AVATAR_META)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).get("id") == sha
    # XEP-0398: the vCard has the photo
    r = ok(watcher.iq("get", f"<vCard xmlns='{NS_VCARD}'/>", to=bare(a.jid)))
    photo = r.find(q(NS_VCARD, "vCard")).find(q(NS_VCARD, "PHOTO"))
    assert photo is not None, tostring(r)
    assert photo.findtext(q(NS_VCARD, "TYPE")) == "image/png"
    assert base64.b64decode(photo.findtext(q(NS_VCARD, "BINVAL"))) == img
    # and the presence carries its hash (XEP-0153)
    a.presence(status="with avatar")
    p = watcher.recv(lambda e: e.tag == C("presence") and e.get("from") == a.jid
                     and e.findtext(C("status")) == "with avatar", what="presence with photo hash")
    assert p.find(q(NS_VCARD_UPDATE, "x")).findtext(q(NS_VCARD_UPDATE, "photo")) == sha, tostring(p)

    # vCard set -> PEP avatar (data and metadata)
    img2 = os.urandom(200)
    sha2 = hashlib.sha1(img2).hexdigest()
    ok(a.iq("set", f"<vCard xmlns='{NS_VCARD}'><FN>A</FN><PHOTO><TYPE>image/jpeg</TYPE>"
                   f"<BINVAL>{base64.b64encode(img2).decode()}</BINVAL></PHOTO></vCard>"))
    ev = recv_event(watcher, bare(a.jid), AVATAR_META)
    info = ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).find(q(AVATAR_META, "metadata")).find(q(AVATAR_META, "info"))
    assert info.get("id") == sha2 and info.get("type") == "image/jpeg" and info.get("bytes") == "200"
    r = ok(get_items(watcher, bare(a.jid), AVATAR_DATA, ids=[sha2]))
    data = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items")).find(q(NS_PUBSUB, "item")).findtext(q(AVATAR_DATA, "data"))
    assert base64.b64decode(data) == img2
    a.presence(status="new avatar")
    p = watcher.recv(lambda e: e.tag == C("presence") and e.get("from") == a.jid
                     and e.findtext(C("status")) == "new avatar", what="presence with the new hash")
    assert p.find(q(NS_VCARD_UPDATE, "x")).findtext(q(NS_VCARD_UPDATE, "photo")) == sha2
    for c in (a, watcher):
        c.close()


# ------------------------------------------------------------------ bookmarks, nick

def test_bookmarks_both_ways(server):
    a = server.online("bm")
    owner = bare(a.jid)
    # XEP-0402: one item per room, whitelist, max_items=max
    conf = "<conference xmlns='urn:xmpp:bookmarks:1' name='Room' autojoin='true'><nick>me</nick></conference>"
    opts = {"pubsub#persist_items": "true", "pubsub#access_model": "whitelist",
            "pubsub#max_items": "max", "pubsub#send_last_published_item": "never"}
    ok(publish(a, BOOKMARKS2, conf, item_id="room1@conference.localhost", options=opts))
    ok(publish(a, BOOKMARKS2, conf, item_id="room2@conference.localhost", options=opts))
    assert sorted(item_ids(get_items(a, None, BOOKMARKS2))) == ["room1@conference.localhost", "room2@conference.localhost"]
    b = server.online("bmb")
    make_mutual(a, b)
    assert app_error(get_items(b, owner, BOOKMARKS2)) == ("not-allowed", "closed-node")
    # XEP-0402 #compat: the items are the XEP-0048 list too (private storage and PEP)
    r = ok(a.iq("get", f"<query xmlns='{NS_PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"))
    confs = r.find(q(NS_PRIVATE, "query")).findall("{storage:bookmarks}storage/{storage:bookmarks}conference")
    assert sorted(c.get("jid") for c in confs) == ["room1@conference.localhost", "room2@conference.localhost"], tostring(r)
    assert all(c.get("autojoin") == "true" and c.findtext("{storage:bookmarks}nick") == "me" for c in confs)
    ok(a.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{BOOKMARKS2}' notify='1'>"
                   f"<item id='room2@conference.localhost'/></retract></pubsub>"))
    r = ok(a.iq("get", f"<query xmlns='{NS_PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"))
    confs = r.find(q(NS_PRIVATE, "query")).findall("{storage:bookmarks}storage/{storage:bookmarks}conference")
    assert [c.get("jid") for c in confs] == ["room1@conference.localhost"], tostring(r)

    # XEP-0049 private storage -> PEP storage:bookmarks (XEP-0048 via XEP-0223)
    storage = ("<storage xmlns='storage:bookmarks'><conference jid='old@conference.localhost' "
               "autojoin='true' name='Old'><nick>me</nick></conference></storage>")
    ok(a.iq("set", f"<query xmlns='{NS_PRIVATE}'>{storage}</query>"))
    r = ok(get_items(a, None, "storage:bookmarks"))
    item = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items")).find(q(NS_PUBSUB, "item"))
    assert item.get("id") == "current"
    assert item.find("{storage:bookmarks}storage/{storage:bookmarks}conference").get("jid") == "old@conference.localhost"
    assert app_error(get_items(b, owner, "storage:bookmarks")) == ("not-allowed", "closed-node")
    # ... and the XEP-0402 items follow the list set through XEP-0049
    r = ok(get_items(a, None, BOOKMARKS2))
    items = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items")).findall(q(NS_PUBSUB, "item"))
    assert [i.get("id") for i in items] == ["old@conference.localhost"], tostring(r)
    conf2 = items[0].find(q(BOOKMARKS2, "conference"))
    assert conf2.get("name") == "Old" and conf2.get("autojoin") == "true" and conf2.findtext(q(BOOKMARKS2, "nick")) == "me"
    # PEP storage:bookmarks -> XEP-0049
    storage2 = ("<storage xmlns='storage:bookmarks'><conference jid='new@conference.localhost' "
                "autojoin='false' name='New'/></storage>")
    ok(publish(a, "storage:bookmarks", storage2, item_id="current",
               options={"pubsub#persist_items": "true", "pubsub#access_model": "whitelist"}))
    r = ok(a.iq("get", f"<query xmlns='{NS_PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"))
    conf_el = r.find(q(NS_PRIVATE, "query")).find("{storage:bookmarks}storage/{storage:bookmarks}conference")
    assert conf_el.get("jid") == "new@conference.localhost", tostring(r)
    assert item_ids(get_items(a, None, BOOKMARKS2)) == ["new@conference.localhost"]
    # other private data is untouched by the bridge
    ok(a.iq("set", f"<query xmlns='{NS_PRIVATE}'><prefs xmlns='urn:test:prefs'>x</prefs></query>"))
    r = ok(a.iq("get", f"<query xmlns='{NS_PRIVATE}'><prefs xmlns='urn:test:prefs'/></query>"))
    assert r.find(q(NS_PRIVATE, "query")).findtext("{urn:test:prefs}prefs") == "x"
    for c in (a, b):
        c.close()


def test_nickname_reaches_contact(server):
    a = server.online("nk")
    b = login(server, Caps(NS_NICK), "nkb")
    make_mutual(a, b)
    ok(publish(a, NS_NICK, f"<nick xmlns='{NS_NICK}'>Juliet</nick>"))
    ev = recv_event(b, bare(a.jid), NS_NICK)
    assert ev.find(q(NS_EVENT, "items")).find(q(NS_EVENT, "item")).findtext(q(NS_NICK, "nick")) == "Juliet"
    for c in (a, b):
        c.close()


# ------------------------------------------------------------------ slixmpp

def slix(server, jid, password, notify=()):
    slixmpp = pytest.importorskip("slixmpp")
    c = slixmpp.ClientXMPP(jid, password)
    for p in ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0084", "xep_0172"):
        c.register_plugin(p)
    c.ssl_context.check_hostname = False
    c.ssl_context.verify_mode = ssl.CERT_NONE
    for ns in notify:
        c["xep_0163"].add_interest(ns)
    return c


async def slix_connected(c, server):
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.connect(server.host, server.c2s_port)
    await asyncio.wait_for(started, 15)
    await c.get_roster()
    c.send_presence()


def test_slixmpp_avatar_and_nick(server):
    pytest.importorskip("slixmpp")
    ajid, _, apw = server.new_user("sla")
    bjid, _, bpw = server.new_user("slb")

    async def scenario():
        a = slix(server, ajid, apw)
        b = slix(server, bjid, bpw, notify=[AVATAR_META, NS_NICK])
        got_nick = asyncio.get_event_loop().create_future()
        got_avatar = asyncio.get_event_loop().create_future()
        b.add_event_handler("user_nick_publish", lambda m: got_nick.done() or got_nick.set_result(m))
        b.add_event_handler("avatar_metadata_publish", lambda m: got_avatar.done() or got_avatar.set_result(m))
        await slix_connected(a, server)
        await slix_connected(b, server)
        for x, y in ((a, b), (b, a)):
            x.send_presence_subscription(pto=y.boundjid.bare)
        await asyncio.sleep(1.0)
        for x, y in ((a, b), (b, a)):
            x.send_presence(pto=y.boundjid.bare, ptype="subscribed")
        await asyncio.sleep(1.5)
        await a["xep_0172"].publish_nick("Mercutio")
        m = await asyncio.wait_for(got_nick, 10)
        assert m["pubsub_event"]["items"]["item"]["nick"]["nick"] == "Mercutio"
        img = os.urandom(128)
        sha = hashlib.sha1(img).hexdigest()
        await a["xep_0084"].publish_avatar(img)
        await a["xep_0084"].publish_avatar_metadata([{"id": sha, "type": "image/png", "bytes": len(img)}])
        m = await asyncio.wait_for(got_avatar, 10)
        assert m["pubsub_event"]["items"]["item"]["id"] == sha
        items = await b["xep_0060"].get_items(a.boundjid.bare, AVATAR_DATA, timeout=10)
        assert items["pubsub"]["items"]["item"]["id"] == sha
        for c in (a, b):
            c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 50))


def test_slixmpp_bookmarks_both_ways(server):
    """slixmpp's XEP-0048 through XEP-0049 and through XEP-0223 see one list; XEP-0402
    conferences published with its stanza and the node's recommended options."""
    pytest.importorskip("slixmpp")
    jid, _, pw = server.new_user("slbm")

    async def scenario():
        from slixmpp.plugins.xep_0048.stanza import Bookmarks
        from slixmpp.plugins.xep_0402.stanza import Conference
        a = slix(server, jid, pw)
        for p in ("xep_0004", "xep_0048", "xep_0049", "xep_0223", "xep_0402"):
            a.register_plugin(p)
        await slix_connected(a, server)
        bm = Bookmarks()
        bm.add_conference("hall@conference.localhost", "me", name="Hall", autojoin=True)
        await a["xep_0048"].set_bookmarks(bm, method="xep_0049", timeout=10)
        r = await a["xep_0048"].get_bookmarks(method="xep_0223", timeout=10)
        got = r["pubsub"]["items"]["item"]["payload"]
        confs = got.findall("{storage:bookmarks}conference")
        assert [c.get("jid") for c in confs] == ["hall@conference.localhost"]
        bm2 = Bookmarks()
        bm2.add_conference("garden@conference.localhost", "me", name="Garden")
        await a["xep_0048"].set_bookmarks(bm2, method="xep_0223", id="current", timeout=10)
        r = await a["xep_0048"].get_bookmarks(method="xep_0049", timeout=10)
        confs = r["private"]["bookmarks"]["conferences"]
        assert [c["jid"] for c in confs] == ["garden@conference.localhost"]
        # XEP-0402
        conf = Conference()
        conf["name"] = "Hall"
        conf["autojoin"] = True
        conf["nick"] = "me"
        form = a["xep_0004"].stanza.Form()
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden",
                       value="http://jabber.org/protocol/pubsub#publish-options")
        for k, v in (("pubsub#persist_items", "true"), ("pubsub#max_items", "max"),
                     ("pubsub#send_last_published_item", "never"),
                     ("pubsub#access_model", "whitelist")):
            form.add_field(var=k, value=v)
        await a["xep_0060"].publish(None, BOOKMARKS2, id="hall@conference.localhost",
                                    payload=conf, options=form, timeout=10)
        items = await a["xep_0060"].get_items(None, BOOKMARKS2, timeout=10)
        item = items["pubsub"]["items"]["item"]
        assert item["id"] == "hall@conference.localhost"
        assert item["payload"].get("name") == "Hall"
        a.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 40))
