"""Port of the server extensions' CsiIntegrationTest (XEP-0352 Client State Indication):
markActiveTest / markInactiveTest (the nonzas are taken without complaint), and the four
detectDisco*ChangeTest* (section 6: servers MUST NOT reveal the client's active/inactive
state): conTwo's disco#info and disco#items to conOne's full JID give the same answer before
and after conOne says <inactive/>, with and without a mutual subscription.

Smack answers those queries itself (its ServiceDiscoveryManager), so here conOne's client
answers them, the same way each time; what the test sees is what the server passes on. The
class is 'not possible' unless the stream features after authentication offer
<csi xmlns='urn:xmpp:csi:0'/>.
"""

import pytest

from im import make_mutual
from rawxmpp import C, q, tostring
from test_sint_helpers import rnd

NS_CSI = "urn:xmpp:csi:0"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
FEATURES = ("http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
            "urn:xmpp:ping", "http://jabber.org/protocol/chatstates")


def one_client(server, clients, prefix):
    c = clients.add(server.online(prefix))
    if c.features is None or c.features.find(q(NS_CSI, "csi")) is None:
        pytest.fail("Smack marks CsiIntegrationTest 'not possible': no <csi/> stream feature: "
                    + (tostring(c.features) if c.features is not None else "none"))
    return c


def answer_query(one, two, ns):
    """conTwo asks conOne's full JID; conOne answers as Smack would; returns what conTwo got."""
    iid = f"csi-disco-{rnd()}"
    two.send_raw(f"<iq type='get' id='{iid}' to='{one.jid}'><query xmlns='{ns}'/></iq>")
    req = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what=f"{ns} query at conOne")
    assert req.get("from") == two.jid, tostring(req)
    if ns == NS_INFO:
        body = "<identity category='client' type='pc' name='Smack'/>" + "".join(
            f"<feature var='{f}'/>" for f in FEATURES)
    else:
        body = ""
    one.send_raw(f"<iq type='result' id='{iid}' to='{two.jid}'><query xmlns='{ns}'>{body}</query></iq>")
    r = two.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what=f"{ns} answer at conTwo")
    assert r.get("type") == "result" and r.get("from") == one.jid, tostring(r)
    return r


def semantic_info(r):
    qq = r.find(q(NS_INFO, "query"))
    return ({f.get("var") for f in qq.findall(q(NS_INFO, "feature"))},
            {tuple(sorted(i.attrib.items())) for i in qq.findall(q(NS_INFO, "identity"))})


def semantic_items(r):
    qq = r.find(q(NS_ITEMS, "query"))
    return ({tuple(sorted(i.attrib.items())) for i in qq.findall(q(NS_ITEMS, "item"))}, qq.get("node"))


def test_mark_inactive(server, clients):
    """CsiIntegrationTest.markActiveTest (4.2: a client that becomes inactive sends
    <inactive/>): the nonza is taken, the stream goes on."""
    one = one_client(server, clients, "sintcsi")
    one.send_raw(f"<inactive xmlns='{NS_CSI}'/>")
    assert one.ping_server().get("type") == "result"


def test_mark_inactive_then_active(server, clients):
    """CsiIntegrationTest.markInactiveTest (4.2: when the client is active again it sends
    <active/>)."""
    one = one_client(server, clients, "sintcsi")
    one.send_raw(f"<inactive xmlns='{NS_CSI}'/><active xmlns='{NS_CSI}'/>")
    assert one.ping_server().get("type") == "result"


@pytest.mark.parametrize("subscribed", [False, True], ids=["unsubscribed", "subscribed"])
@pytest.mark.parametrize("ns", [NS_INFO, NS_ITEMS], ids=["info", "items"])
def test_detect_disco_change(server, clients, ns, subscribed):
    """CsiIntegrationTest.detectDiscoInfoChangeTest{Unsubscribed,Subscribed} /
    detectDiscoItemsChangeTest{...} (6: servers MUST NOT reveal the client's state): two
    answers before, one after <inactive/>, all semantically equal (features and identities /
    items and node); the query to an inactive client is passed on and answered at once."""
    one = one_client(server, clients, "sintcsi1")
    two = clients.add(server.online("sintcsi2"))
    if subscribed:
        make_mutual(one, two)
        one.drain(0.2)
        two.drain(0.2)
    sem = semantic_info if ns == NS_INFO else semantic_items
    first, second = sem(answer_query(one, two, ns)), sem(answer_query(one, two, ns))
    assert first == second, "Smack marks this 'not possible': no consistent answer"
    one.send_raw(f"<inactive xmlns='{NS_CSI}'/>")
    after = sem(answer_query(one, two, ns))
    assert after == first
