"""Ports of the XMPP interop tests (Smack SINT) that exercise PEP (XEP-0163) and entity
capabilities (XEP-0115) through the server:

- GeolocationIntegrationTest (XEP-0080), MoodIntegrationTest (XEP-0107),
  UserTuneIntegrationTest (XEP-0118): testNotification, testNotificationAfterFilterChange.
- EntityCapsTest (XEP-0115, client side through the server): testLocalEntityCaps,
  testPreventDiscoInfo, testCapsChanged, testEntityCaps.
- EntityCapabilitiesIntegrationTest (XEP-0115, server side, smack-sint-server-extensions):
  hash/node/ver attributes of the stream feature, verification string, mirrored node,
  SHA-1.
- EntityCapabilitiesOptimizationIntegrationTest: testFirstPresence, testUpdated.
- SoftwareInfoIntegrationTest (XEP-0232), EntityCaps2IntegrationTest (XEP-0390),
  VersionIntegrationTest (XEP-0092 between clients).
- Beyond the Java: caps changed again while the server's query about the previous ones
  is in flight; the empty payloads of Smack's stopPublishing*.

PubSubIntegrationTest (XEP-0060 at pubsub.<domain>) is ported in test_sint_pubsub.py.

Like Smack's managers, publishing sends a plain <publish/> without item id and without a
'to' (the account's own PEP service), and a client shows interest by a new presence whose
caps carry '<node>+notify', answering the server's disco#info query for an unknown ver.
Smack does not wait for the server to have taken the new caps in before the contact
publishes, so neither do these tests.
"""

import base64
import hashlib
import time

import pytest

from im import make_mutual, recv_presence
from rawxmpp import C, bare, q, tostring
from test_pep import (DISCO_INFO, NS_CAPS, NS_EVENT, NS_PUBSUB, Caps, caps_ver, is_caps_query,
                      login, ok)
from test_sint_helpers import desc, rnd

GEOLOC = "http://jabber.org/protocol/geoloc"
MOOD = "http://jabber.org/protocol/mood"
TUNE = "http://jabber.org/protocol/tune"


def geoloc(area):
    return (f"<geoloc xmlns='{GEOLOC}'><accuracy>23</accuracy><alt>1000</alt><altaccuracy>10</altaccuracy>"
            f"<area>{area}</area><bearing>10</bearing><building>Small Building</building>"
            "<country>India</country><countrycode>IN</countrycode><description>My Description</description>"
            "<floor>top</floor><lat>25.098345</lat><locality>awesome</locality><lon>77.992034</lon>"
            "<postalcode>110085</postalcode><region>North</region><room>small</room><speed>250.0</speed>"
            "<street>Wall Street</street><text>Unit Testing GeoLocation</text>"
            "<timestamp>2004-02-19T00:00:00.000+00:00</timestamp><tzo>+5:30</tzo>"
            "<uri>http://xmpp.org</uri></geoloc>")


def mood(value):
    return f"<mood xmlns='{MOOD}'><{value}/><text>{value} today</text></mood>"


def tune(title):
    return (f"<tune xmlns='{TUNE}'><artist>Yes</artist><length>686</length><rating>8</rating>"
            f"<source>Yessongs</source><title>{title}</title><track>3</track>"
            "<uri>http://www.yesworld.com/lyrics/Fragile.html#9</uri></tune>")


PAYLOADS = {GEOLOC: geoloc, MOOD: mood, TUNE: tune}


def smack_publish(c, node, payload):
    """What PepManager.publish sends: no item id, no 'to'."""
    return c.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item>{payload}</item>"
                       "</publish></pubsub>")


def event_payload(e, owner, node):
    if e.tag != C("message") or e.get("from") != owner:
        return None
    ev = e.find(q(NS_EVENT, "event"))
    items = ev.find(q(NS_EVENT, "items")) if ev is not None else None
    if items is None or items.get("node") != node:
        return None
    item = items.find(q(NS_EVENT, "item"))
    return None if item is None or len(item) == 0 else item[0]


def wait_payload(c, owner, node, expect, caps=None, timeout=8.0):
    """Receives until the event from `owner` on `node` carries `expect` (one of the
    child elements' text), answering the caps queries that come meanwhile."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        e = c.recv(lambda e: is_caps_query(e) or event_payload(e, owner, node) is not None,
                   max(0.1, end - time.monotonic()), what=f"{node} notification from {owner}")
        if is_caps_query(e):
            assert caps is not None, "unexpected caps query: " + tostring(e)
            caps.answer(c, e)
            continue
        p = event_payload(e, owner, node)
        assert e.get("to") == c.jid, tostring(e)
        if expect in tostring(p):
            return p
    pytest.fail(f"{c.jid} got no {node} notification from {owner} carrying {expect!r}")


def pair(server):
    one = login(server, Caps(), "sintpep1")
    two = login(server, Caps(), "sintpep2")
    make_mutual(one, two)
    return one, two


def show_interest(c, node):
    """Smack's addXListener: new caps with node+notify, announced in a new presence."""
    caps = Caps(node)
    c.presence(extra=caps.c())
    return caps


def notification(server, node, after_filter_change):
    one, two = pair(server)
    owner = bare(one.jid)
    marker = f"sint-{rnd()}"
    payload = PAYLOADS[node](marker)
    if after_filter_change:
        # the data is published before the contact shows interest
        ok(smack_publish(one, node, payload))
        caps = show_interest(two, node)
    else:
        caps = show_interest(two, node)
        # published without waiting for the server to take the new caps in
        ok(smack_publish(one, node, payload))
    p = wait_payload(two, owner, node, marker, caps)
    assert p.tag == q(node, p.tag.split("}")[1]), tostring(p)
    one.close()
    two.close()


@pytest.mark.parametrize("node", [GEOLOC, MOOD, TUNE], ids=["geoloc", "mood", "tune"])
def test_notification(server, node):
    """GeolocationIntegrationTest / MoodIntegrationTest / UserTuneIntegrationTest
    .testNotification: XEP-0163 4.3: a contact whose caps say '+notify' receives the
    publication."""
    notification(server, node, after_filter_change=False)


@pytest.mark.parametrize("node", [GEOLOC, MOOD, TUNE], ids=["geoloc", "mood", "tune"])
def test_notification_after_filter_change(server, node):
    """... .testNotificationAfterFilterChange: XEP-0163 4.3.2 (and XEP-0060 9.1.2): the
    last item is sent when the contact's caps start to say '+notify'."""
    notification(server, node, after_filter_change=True)


# ------------------------------------------------------------------ EntityCapsTest

def caps_presence(c, full):
    return c.recv(lambda e: e.tag == C("presence") and e.get("from") == full and e.get("type") is None
                  and e.find(q(NS_CAPS, "c")) is not None, what=f"available presence with caps from {full}")


def answer_queries(c, caps, rounds=3):
    for e in c.drain(0.3)[:rounds]:
        if is_caps_query(e):
            caps.answer(c, e)


def test_local_entity_caps(server):
    """EntityCapsTest.testLocalEntityCaps: a feature added by conTwo reaches conOne as a new
    'ver' in conTwo's available presence (XEP-0115 4, broadcast by RFC 6121 4.4.2)."""
    one, two = pair(server)
    caps = Caps(extra=(f"entityCapsTest{rnd()}",))
    two.presence(extra=caps.c())
    p = caps_presence(one, two.jid)
    c = p.find(q(NS_CAPS, "c"))
    assert (c.get("ver"), c.get("node"), c.get("hash")) == (caps.ver, caps.NODE, "sha-1"), tostring(p)
    one.close()
    two.close()


def test_caps_changed(server):
    """EntityCapsTest.testCapsChanged: the 'ver' conOne sees differs after conTwo adds a
    feature."""
    one, two = pair(server)
    first, second = Caps(), Caps(extra=(f"entityCapsTest{rnd()}",))
    two.presence(extra=first.c())
    v1 = caps_presence(one, two.jid).find(q(NS_CAPS, "c")).get("ver")
    answer_queries(two, first)
    two.presence(extra=second.c())
    v2 = caps_presence(one, two.jid).find(q(NS_CAPS, "c")).get("ver")
    assert v1 != v2 and v2 == second.ver
    one.close()
    two.close()


def _disco_full(one, two, caps):
    """conOne's disco#info to conTwo's full JID: routed to conTwo, answered by it."""
    iid = f"sint-disco-{rnd()}"
    node = f"{caps.NODE}#{caps.ver}"
    one.send_raw(f"<iq type='get' id='{iid}' to='{two.jid}'><query xmlns='{DISCO_INFO}' node='{node}'/></iq>")
    got = two.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="the forwarded disco#info")
    assert got.get("from") == one.jid, tostring(got)
    caps.answer(two, got)
    r = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="disco#info result")
    assert r.get("type") == "result" and r.get("from") == two.jid, tostring(r)
    return r.find(q(DISCO_INFO, "query"))


def test_prevent_disco_info(server):
    """EntityCapsTest.testPreventDiscoInfo: after the presence with the new ver, the
    disco#info sent to conTwo reaches it and the answer lists the added feature (the caching
    itself is the client's)."""
    one, two = pair(server)
    feature = f"entityCapsTest{rnd()}"
    caps = Caps(extra=(feature,))
    two.presence(extra=caps.c())
    caps_presence(one, two.jid)
    answer_queries(two, caps)
    qel = _disco_full(one, two, caps)
    assert feature in [f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))], tostring(qel)
    one.close()
    two.close()


def test_entity_caps(server):
    """EntityCapsTest.testEntityCaps: the disco#info answer conOne gets from conTwo hashes to
    the ver conOne received in conTwo's presence (XEP-0115 5.1)."""
    one, two = pair(server)
    feature = f"entityCapsTest{rnd()}"
    caps = Caps(extra=(feature,))
    two.presence(extra=caps.c())
    ver = caps_presence(one, two.jid).find(q(NS_CAPS, "c")).get("ver")
    answer_queries(two, caps)
    qel = _disco_full(one, two, caps)
    feats = [f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))]
    idents = [(i.get("category"), i.get("type"), "", i.get("name") or "")
              for i in qel.findall(q(DISCO_INFO, "identity"))]
    assert feature in feats and caps_ver(idents, feats) == ver
    one.close()
    two.close()


# ------------------------------------------------------ EntityCapabilitiesIntegrationTest

def test_server_advertises_caps_feature(server, clients):
    """The precondition of EntityCapabilitiesIntegrationTest (Smack's
    areEntityCapsSupportedByServer): XEP-0115 6.3, an entity that supports caps MUST
    return the 'http://jabber.org/protocol/caps' feature in its disco#info. Without it
    every server-side caps test of the Java suite is 'not possible'."""
    c = clients.add(server.online("sintcaps"))
    info = ok(c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=server.domain))
    feats = [f.get("var") for f in info.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))]
    assert NS_CAPS in feats, desc(info)


@pytest.fixture
def stream_caps(server, clients):
    c = clients.add(server.online("sintcaps"))
    info = ok(c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=server.domain))
    assert NS_CAPS in [f.get("var") for f in info.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))]
    raw = server.client()
    raw.start()
    raw.auth(c.jid.split("@")[0], c.password)
    raw.bind()
    clients.add(raw)
    cel = raw.features.find(q(NS_CAPS, "c"))
    assert cel is not None, "no caps in the stream features: " + tostring(raw.features)
    return raw, cel


def test_server_feature_has_hash_attribute(stream_caps):
    """XEP-0115 9.3: with a verification string as 'ver', the 'hash' attribute is REQUIRED."""
    assert stream_caps[1].get("hash"), tostring(stream_caps[1])


def test_server_feature_has_node_attribute(stream_caps):
    """XEP-0115 13: the 'node' attribute is REQUIRED (backwards compatibility)."""
    assert stream_caps[1].get("node"), tostring(stream_caps[1])


def test_server_feature_has_ver_attribute(stream_caps):
    """XEP-0115 4: 'ver' is REQUIRED."""
    assert stream_caps[1].get("ver"), tostring(stream_caps[1])


def _node_info(server, raw, cel):
    node = f"{cel.get('node')}#{cel.get('ver')}"
    r = ok(raw.iq("get", f"<query xmlns='{DISCO_INFO}' node='{node}'/>", to=server.domain))
    return node, r.find(q(DISCO_INFO, "query"))


def test_server_verification_string_calculation(server, stream_caps):
    """XEP-0115 5.1: the ver MUST be generated by the method given there (identities,
    features and extended forms of the node#ver disco#info)."""
    raw, cel = stream_caps
    _, qel = _node_info(server, raw, cel)
    idents = [(i.get("category"), i.get("type"), i.get("{http://www.w3.org/XML/1998/namespace}lang") or "",
               i.get("name") or "") for i in qel.findall(q(DISCO_INFO, "identity"))]
    feats = [f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))]
    forms = []
    for x in qel.findall("{jabber:x:data}x"):
        fields = {f.get("var"): [v.text or "" for v in f.findall("{jabber:x:data}value")]
                  for f in x.findall("{jabber:x:data}field")}
        form_type = fields.pop("FORM_TYPE", [""])[0]
        forms.append((form_type, sorted(fields.items())))
    assert caps_ver(idents, feats, forms) == cel.get("ver"), tostring(qel)
    assert cel.get("hash") == "sha-1"


def test_disco_info_response_mirrors_requested_node(server, stream_caps):
    """XEP-0115 6.2 / XEP-0030 3.2: the answer to a node query carries that node."""
    raw, cel = stream_caps
    node, qel = _node_info(server, raw, cel)
    assert qel.get("node") == node, tostring(qel)


def test_server_supports_mandatory_algorithm(stream_caps):
    """XEP-0115 9.1: SHA-1 is mandatory to implement; the server's own caps use it."""
    assert (stream_caps[1].get("hash") or "").lower() == "sha-1", tostring(stream_caps[1])


# ------------------------------------------ EntityCapabilitiesOptimizationIntegrationTest
# The Java class runs only when the domain advertises caps#optimize (XEP-0115 8.4 is a MAY;
# Starling does not optimize: it passes each presence's <c/> on unchanged). What the two
# tests assert holds for any server, so they are ported as they are.

def _subscribe_one_to_two(one, two):
    """conOne subscribes to conTwo's presence, conTwo approves (RFC 6121 3.1)."""
    one.presence(to=bare(two.jid), type_="subscribe")
    recv_presence(two, bare(one.jid), "subscribe", by_bare=True)
    two.presence(to=bare(one.jid), type_="subscribed")


def test_caps_optimization_first_presence(server):
    """EntityCapabilitiesOptimizationIntegrationTest.testFirstPresence (XEP-0115 8.4): the
    first presence a new subscriber gets (the contact's current presence, sent on
    approval: RFC 6121 3.1.5) carries the caps annotation."""
    caps = Caps(extra=(f"urn:example:xmppinteroptesting:{rnd()}",))
    one = login(server, Caps(), "sintopt1")
    two = login(server, caps, "sintopt2")
    _subscribe_one_to_two(one, two)
    p = one.recv(lambda e: e.tag == C("presence") and e.get("from") == two.jid and e.get("type") is None,
                 what="conTwo's presence after the approval")
    c = p.find(q(NS_CAPS, "c"))
    assert c is not None and c.get("ver") == caps.ver, tostring(p)
    one.close()
    two.close()


def test_caps_optimization_updated(server):
    """... .testUpdated (XEP-0115 8.4): a changed ver reaches the subscriber."""
    first = Caps()
    one = login(server, Caps(), "sintopt1")
    two = login(server, first, "sintopt2")
    _subscribe_one_to_two(one, two)
    v1 = caps_presence(one, two.jid).find(q(NS_CAPS, "c")).get("ver")
    second = Caps(extra=(f"urn:example:xmppinteroptesting:{rnd()}",))
    two.presence(extra=second.c())
    v2 = caps_presence(one, two.jid).find(q(NS_CAPS, "c")).get("ver")
    assert v1 == first.ver and v2 == second.ver and v1 != v2
    one.close()
    two.close()


# ------------------------------------------------------------ SoftwareInfoIntegrationTest

NS_SWINFO = "urn:xmpp:dataforms:softwareinfo"


class FormCaps(Caps):
    """Caps whose disco#info carries identities with xml:lang and an XEP-0232 software
    information form (XEP-0128), as Smack's SoftwareInfoManager publishes."""

    def __init__(self, *notify, software="Gajim"):
        super().__init__(*notify)
        self.identities = [("client", "pc", "en", "Smack"), ("client", "pc", "nl", "Smack NL")]
        self.fields = [("os", ["Linux"]), ("os_version", ["Debian"]), ("software", [software]),
                       ("software_version", ["1.4.0"]), ("icon", [])]
        self.ver = caps_ver(self.identities, self.features, [(NS_SWINFO, sorted(self.fields))])

    def form(self):
        inner = "".join(
            f"<field var='{v}'>" + "".join(f"<value>{x}</value>" for x in vals)
            + ("<media xmlns='urn:xmpp:media-element' height='16' width='16'>"
               "<uri type='test-type'>http://example.org</uri></media>" if v == "icon" else "")
            + "</field>" for v, vals in self.fields)
        return (f"<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
                f"<value>{NS_SWINFO}</value></field>{inner}</x>")

    def answer(self, client, iq):
        inner = "".join(f"<identity category='{c}' type='{t}' xml:lang='{lang}' name='{n}'/>"
                        for c, t, lang, n in self.identities)
        inner += "".join(f"<feature var='{f}'/>" for f in self.features)
        node = iq.find(q(DISCO_INFO, "query")).get("node")
        client.send_raw(f"<iq type='result' id='{iq.get('id')}' to='{iq.get('from')}'>"
                        f"<query xmlns='{DISCO_INFO}' node='{node}'>{inner}{self.form()}</query></iq>")


def test_software_info(server):
    """SoftwareInfoIntegrationTest.test (XEP-0232): conOne's software information form, in
    the disco#info its new caps name, reaches conTwo: the presence with the new ver is
    broadcast and conTwo's disco#info to conOne is routed and answered with the form.
    Server side, the ver of such an answer (identities with xml:lang, an XEP-0128 form
    with a value-less field carrying a media element) must verify (XEP-0115 5.1), or the
    server would never learn that the client wants the '+notify' nodes it lists: checked
    by a geoloc publication of conTwo that conOne must get."""
    one, two = pair(server)
    caps = FormCaps(GEOLOC)
    one.presence(extra=caps.c())
    ver = caps_presence(two, one.jid).find(q(NS_CAPS, "c")).get("ver")
    assert ver == caps.ver
    qel = _disco_full(two, one, caps)
    x = qel.find("{jabber:x:data}x")
    assert x is not None, tostring(qel)
    got = {f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")]
           for f in x.findall("{jabber:x:data}field")}
    assert got["software"] == ["Gajim"] and got["os"] == ["Linux"], tostring(x)
    marker = f"sint-{rnd()}"
    ok(smack_publish(two, GEOLOC, geoloc(marker)))
    wait_payload(one, bare(two.jid), GEOLOC, marker, caps)
    one.close()
    two.close()


# ------------------------------------------------------------ EntityCaps2IntegrationTest

NS_CAPS2 = "urn:xmpp:caps"


def caps2_element(caps):
    s = "".join(f + "\x1f" for f in sorted(caps.features)) + "\x1c"
    s += "".join("\x1f".join((c, t, lang, n)) + "\x1f\x1e" for c, t, lang, n in sorted(caps.identities)) + "\x1c"
    s += "\x1c"
    h = base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
    return h, f"<c xmlns='{NS_CAPS2}'><hash xmlns='urn:xmpp:hashes:2' algo='sha-256'>{h}</hash></c>"


def test_get_entity_capability(server):
    """EntityCaps2IntegrationTest.getEntityCapability (XEP-0390): the <c xmlns='urn:xmpp:caps'/>
    of conOne's presence reaches conTwo (a presence extension the server passes on)."""
    one, two = pair(server)
    h, el = caps2_element(Caps())
    one.presence(extra=el)
    p = two.recv(lambda e: e.tag == C("presence") and e.get("from") == one.jid
                 and e.find(q(NS_CAPS2, "c")) is not None, what="presence with caps2")
    assert p.find(q(NS_CAPS2, "c")).findtext("{urn:xmpp:hashes:2}hash") == h, tostring(p)
    one.close()
    two.close()


def test_trade_disco_info_between_distinct_ecaps2_managers(server):
    """EntityCaps2IntegrationTest.tradeDiscoInfoBetweenDistinctECaps2ManagerTest: conOne asks
    its own full JID for disco#info (RFC 6120 10.5.4: delivered to that resource), then
    conTwo asks conOne for the node its caps2 hash names; both are answered by conOne."""
    one, two = pair(server)
    caps = Caps()
    h, el = caps2_element(caps)
    one.presence(extra=el)
    two.recv(lambda e: e.tag == C("presence") and e.get("from") == one.jid
             and e.find(q(NS_CAPS2, "c")) is not None, what="presence with caps2")
    for asker in (one, two):
        iid = f"sint-c2-{rnd()}"
        node = f"{NS_CAPS2}#sha-256.{h}"
        asker.send_raw(f"<iq type='get' id='{iid}' to='{one.jid}'><query xmlns='{DISCO_INFO}' node='{node}'/></iq>")
        got = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") == "get",
                       what="the disco#info query, delivered to conOne")
        assert got.get("from") == asker.jid, tostring(got)
        caps.answer(one, got)
        r = asker.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") != "get",
                       what="disco#info result")
        assert r.get("type") == "result", tostring(r)
        feats = [f.get("var") for f in r.find(q(DISCO_INFO, "query")).findall(q(DISCO_INFO, "feature"))]
        assert sorted(feats) == sorted(caps.features), tostring(r)
    one.close()
    two.close()


def test_smack_publish_to_own_bare_jid(server):
    """PepManager through a PubSubManager addressed at the account's bare JID (XEP-0163 3:
    the account is the PEP service): the same publication, 'to' set, reaches the
    interested contact and the publisher's own interested resource."""
    one, two = pair(server)
    caps_two = show_interest(two, MOOD)
    caps_one = show_interest(one, MOOD)
    marker = "happy"
    ok(one.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{MOOD}'><item>{mood(marker)}</item>"
                     "</publish></pubsub>", to=bare(one.jid)))
    wait_payload(two, bare(one.jid), MOOD, marker, caps_two)
    wait_payload(one, bare(one.jid), MOOD, marker, caps_one)
    one.close()
    two.close()


# ------------------------------------------------------------ VersionIntegrationTest

def test_version(server):
    """VersionIntegrationTest.testVersion (XEP-0092 between clients, no subscription
    between them): conOne's disco#info and jabber:iq:version get to conTwo's full JID are
    delivered to conTwo (RFC 6121 8.5.3.1) and its answers come back."""
    one = login(server, Caps(), "sintver1")
    caps = Caps(extra=("jabber:iq:version",))
    two = login(server, caps, "sintver2")
    qel = _disco_full(one, two, caps)
    assert "jabber:iq:version" in [f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))]
    iid = f"sint-ver-{rnd()}"
    name = f"Smack Integration Test {rnd()}"
    one.send_raw(f"<iq type='get' id='{iid}' to='{two.jid}'><query xmlns='jabber:iq:version'/></iq>")
    got = two.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="the forwarded version query")
    assert got.get("from") == one.jid and got.get("type") == "get", tostring(got)
    two.send_raw(f"<iq type='result' id='{iid}' to='{one.jid}'><query xmlns='jabber:iq:version'>"
                 f"<name>{name}</name><version>1.0</version></query></iq>")
    r = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="version result")
    assert r.get("type") == "result" and r.get("from") == two.jid, tostring(r)
    assert r.find("{jabber:iq:version}query").findtext("{jabber:iq:version}name") == name, tostring(r)
    one.close()
    two.close()


# ------------------------------------------------- a filter change while a query is in flight

NICK = "http://jabber.org/protocol/nick"


def test_filter_change_back_while_caps_query_in_flight(server):
    """Smack adds and removes PEP listeners (each a new presence with new caps) without
    waiting for the server: a client that shows '+notify' for tune in caps X, then moves
    on to caps Y without it before answering the server's query about X, must not get
    the tune (XEP-0163 4.3: notifications, the last item included, go only to resources
    whose current caps ask for them)."""
    one, two = pair(server)
    owner = bare(one.jid)
    ok(smack_publish(one, TUNE, tune("not for two")))
    x = Caps(TUNE)
    two.presence(extra=x.c())
    query_x = two.recv(is_caps_query, what="caps query about X")
    y = Caps(NICK)
    two.presence(extra=y.c())
    y.answer(two, two.recv(is_caps_query, what="caps query about Y"))
    x.answer(two, query_x)
    ok(two.ping_server())
    ok(smack_publish(one, NICK, f"<nick xmlns='{NICK}'>marker</nick>"))
    got = []
    for _ in range(20):
        e = two.recv(lambda e: event_payload(e, owner, TUNE) is not None
                     or event_payload(e, owner, NICK) is not None, what="the nick marker")
        got.append(e)
        if event_payload(e, owner, NICK) is not None:
            break
    assert not [e for e in got if event_payload(e, owner, TUNE) is not None], \
        "tune sent for caps the client had left: " + tostring(got[0])
    one.close()
    two.close()


@pytest.mark.parametrize("node", [GEOLOC, MOOD, TUNE], ids=["geoloc", "mood", "tune"])
def test_stop_publishing(server, node):
    """What Smack's stopPublishing* send (XEP-0080 4, XEP-0107 2, XEP-0118 4: an empty
    payload element means 'no longer'): accepted and delivered to the interested contact
    as the new item."""
    one, two = pair(server)
    caps = show_interest(two, node)
    local = node.rsplit("/", 1)[1]
    ok(smack_publish(one, node, f"<{local} xmlns='{node}'/>"))
    end = time.monotonic() + 8
    while time.monotonic() < end:
        e = two.recv(lambda e: is_caps_query(e) or event_payload(e, bare(one.jid), node) is not None,
                     max(0.1, end - time.monotonic()), what=f"empty {local} notification")
        if is_caps_query(e):
            caps.answer(two, e)
            continue
        p = event_payload(e, bare(one.jid), node)
        assert p.tag == q(node, local) and len(p) == 0 and not (p.text or "").strip(), tostring(p)
        break
    one.close()
    two.close()
