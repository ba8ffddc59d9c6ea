"""Server-side IQ handlers: XEP-0030, 0199, 0092, 0054, 0049, 0012, 0202; RFC 6120 8.3 errors."""

import re
import time

import pytest

from im import make_mutual
from rawxmpp import C, q, stanza_error, tostring

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def features(iq):
    qel = iq.find(q(DISCO_INFO, "query"))
    return {f.get("var") for f in qel.findall(q(DISCO_INFO, "feature"))}


def test_disco_info_server(server, clients):
    c = clients.add(server.online("di"))
    r = c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=server.domain)
    assert r.get("type") == "result", tostring(r)
    assert r.get("from") == server.domain
    qel = r.find(q(DISCO_INFO, "query"))
    ids = [(i.get("category"), i.get("type")) for i in qel.findall(q(DISCO_INFO, "identity"))]
    assert ("server", "im") in ids, ids
    f = features(r)
    for var in (DISCO_INFO, DISCO_ITEMS, "urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time",
                "jabber:iq:last", "vcard-temp", "jabber:iq:private"):
        assert var in f, f"{var} not in {sorted(f)}"


def test_server_contact_addresses(server, clients):
    """XEP-0157: each served domain's disco#info carries the serverinfo form; by default
    the domain's abuse mailbox (RFC 2142). The server's caps node answers without it (the
    caps ver covers what is the same for every domain)."""
    c = clients.add(server.online("ca"))
    for domain in server.domains:
        r = c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=domain)
        forms = r.find(q(DISCO_INFO, "query")).findall("{jabber:x:data}x")
        info = [x for x in forms
                if any(f.get("var") == "FORM_TYPE" and f.findtext("{jabber:x:data}value") ==
                       "http://jabber.org/network/serverinfo" for f in x.findall("{jabber:x:data}field"))]
        assert len(info) == 1, tostring(r)
        fields = {f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")]
                  for f in info[0].findall("{jabber:x:data}field")}
        assert fields["abuse-addresses"] == [f"mailto:abuse@{domain}"], fields
        assert info[0].get("type") == "result"


def test_disco_info_own_account(server, clients):
    """XEP-0030 / RFC 6121: the server answers disco#info on behalf of the user's bare JID."""
    c = clients.add(server.online("da"))
    r = c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=c.bare)
    assert r.get("type") == "result", tostring(r)
    qel = r.find(q(DISCO_INFO, "query"))
    ids = [(i.get("category"), i.get("type")) for i in qel.findall(q(DISCO_INFO, "identity"))]
    assert ("account", "registered") in ids, ids


def test_disco_items_server(server, clients):
    c = clients.add(server.online("dit"))
    r = c.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=server.domain)
    assert r.get("type") == "result", tostring(r)
    assert r.find(q(DISCO_ITEMS, "query")) is not None


def test_disco_info_unknown_node(server, clients):
    """XEP-0030 3.1: an unknown node -> <item-not-found/>."""
    c = clients.add(server.online("dn"))
    r = c.iq("get", f"<query xmlns='{DISCO_INFO}' node='no-such-node'/>", to=server.domain)
    assert stanza_error(r) == ("cancel", "item-not-found"), tostring(r)


def test_ping_server(server, clients):
    c = clients.add(server.online("pg"))
    r = c.ping_server()
    assert r.get("type") == "result" and r.get("from") == server.domain, tostring(r)


def test_ping_own_bare_jid(server, clients):
    c = clients.add(server.online("pb"))
    r = c.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=c.bare)
    assert r.get("type") == "result", tostring(r)


def test_ping_without_to(server, clients):
    """RFC 6120 10.3.3: no 'to' means the user's account; handled by the server."""
    c = clients.add(server.online("pn"))
    r = c.iq("get", "<ping xmlns='urn:xmpp:ping'/>")
    assert r.get("type") == "result", tostring(r)


def test_version(server, clients):
    c = clients.add(server.online("ve"))
    r = c.iq("get", "<query xmlns='jabber:iq:version'/>", to=server.domain)
    assert r.get("type") == "result", tostring(r)
    qel = r.find("{jabber:iq:version}query")
    assert qel.findtext("{jabber:iq:version}name")
    assert qel.findtext("{jabber:iq:version}version")


def test_time(server, clients):
    c = clients.add(server.online("tm"))
    r = c.iq("get", "<time xmlns='urn:xmpp:time'/>", to=server.domain)
    assert r.get("type") == "result", tostring(r)
    t = r.find("{urn:xmpp:time}time")
    assert re.match(r"^[+-]\d\d:\d\d$|^Z$", t.findtext("{urn:xmpp:time}tzo")), tostring(t)
    utc = t.findtext("{urn:xmpp:time}utc")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", utc), utc
    st = time.strptime(utc[:19], "%Y-%m-%dT%H:%M:%S")
    import calendar
    assert abs(calendar.timegm(st) - time.time()) < 60


def test_vcard_set_get(server, clients):
    a = clients.add(server.online("vc"))
    b = clients.add(server.online("vd"))
    r = a.iq("get", "<vCard xmlns='vcard-temp'/>")
    # XEP-0054 3.1: no vCard yet -> an empty <vCard/> or <item-not-found/>
    assert r.get("type") == "result" or stanza_error(r) == ("cancel", "item-not-found"), tostring(r)
    r = a.iq("set", "<vCard xmlns='vcard-temp'><FN>Alice Example</FN><NICKNAME>ali</NICKNAME></vCard>")
    assert r.get("type") == "result", tostring(r)
    r = a.iq("get", "<vCard xmlns='vcard-temp'/>")
    assert r.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Alice Example"
    # another user reads it via the bare JID (XEP-0054 3.2)
    r = b.iq("get", "<vCard xmlns='vcard-temp'/>", to=a.bare)
    assert r.get("type") == "result", tostring(r)
    assert r.find("{vcard-temp}vCard").findtext("{vcard-temp}NICKNAME") == "ali"


def test_vcard_set_for_other_user_forbidden(server, clients):
    a = clients.add(server.online("vf"))
    b = clients.add(server.online("vg"))
    r = a.iq("set", "<vCard xmlns='vcard-temp'><FN>evil</FN></vCard>", to=b.bare)
    assert r.get("type") == "error", tostring(r)
    assert stanza_error(r)[1] in ("forbidden", "not-allowed", "service-unavailable"), tostring(r)
    r = b.iq("get", "<vCard xmlns='vcard-temp'/>")
    assert r.find("{vcard-temp}vCard") is None or r.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") != "evil"


def test_private_storage(server, clients):
    c = clients.add(server.online("pr"))
    data = "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>"
    r = c.iq("set", f"<query xmlns='jabber:iq:private'>{data}</query>")
    assert r.get("type") == "result", tostring(r)
    r = c.iq("get", "<query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query>")
    assert r.get("type") == "result", tostring(r)
    ex = r.find("{jabber:iq:private}query/{exodus:prefs}exodus")
    assert ex is not None and ex.findtext("{exodus:prefs}defaultnick") == "Hamlet", tostring(r)
    # a namespace with nothing stored: the empty element back
    r = c.iq("get", "<query xmlns='jabber:iq:private'><nothing xmlns='urn:example:none'/></query>")
    assert r.get("type") == "result", tostring(r)


def test_private_storage_of_other_user_forbidden(server, clients):
    """XEP-0049 3: only the user's own storage; to another JID -> <forbidden/>."""
    a = clients.add(server.online("pf"))
    b = clients.add(server.online("pg"))
    r = a.iq("get", "<query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query>", to=b.bare)
    assert r.get("type") == "error", tostring(r)
    assert stanza_error(r)[1] in ("forbidden", "service-unavailable"), tostring(r)


@pytest.mark.prosody_deviates("stores data under jabber:client instead of <not-acceptable/> (XEP-0049 3)")
def test_private_storage_jabber_client_ns_not_acceptable(server, clients):
    """XEP-0049 3: storing in the jabber:client (or iq:private) namespace -> <not-acceptable/>."""
    c = clients.add(server.online("pn"))
    r = c.iq("set", "<query xmlns='jabber:iq:private'><foo xmlns='jabber:client'/></query>")
    assert r.get("type") == "error", tostring(r)
    assert stanza_error(r)[1] in ("not-acceptable", "bad-request"), tostring(r)


def test_last_activity_server_uptime(server, clients):
    c = clients.add(server.online("la"))
    r = c.iq("get", "<query xmlns='jabber:iq:last'/>", to=server.domain)
    assert r.get("type") == "result", tostring(r)
    secs = int(r.find("{jabber:iq:last}query").get("seconds"))
    assert secs >= 0


def test_last_activity_of_offline_contact(server, clients):
    """XEP-0012 4: time since the contact's last logout, allowed with a subscription."""
    a = clients.add(server.online("lb"))
    b = clients.add(server.online("lc"))
    make_mutual(a, b)
    b.presence(type_="unavailable", status="gone fishing")
    b.close()
    time.sleep(1.2)
    r = a.iq("get", "<query xmlns='jabber:iq:last'/>", to=b.bare)
    assert r.get("type") == "result", tostring(r)
    qel = r.find("{jabber:iq:last}query")
    assert int(qel.get("seconds")) >= 1


def test_last_activity_without_subscription_forbidden(server, clients):
    a = clients.add(server.online("ld"))
    b = clients.add(server.online("le"))
    b.close()
    r = a.iq("get", "<query xmlns='jabber:iq:last'/>", to=b.bare)
    assert r.get("type") == "error", tostring(r)
    assert stanza_error(r) in (("auth", "forbidden"), ("auth", "subscription-required"),
                               ("cancel", "service-unavailable")), tostring(r)


def test_unknown_namespace_to_server(server, clients):
    """RFC 6120 8.4 / 10.3.3: an IQ with an unknown payload -> <service-unavailable/>."""
    c = clients.add(server.online("un"))
    r = c.iq("get", "<query xmlns='urn:example:nope'/>", to=server.domain)
    assert stanza_error(r) == ("cancel", "service-unavailable"), tostring(r)
    r = c.iq("set", "<thing xmlns='urn:example:nope2'/>", to=server.domain)
    assert stanza_error(r) == ("cancel", "service-unavailable"), tostring(r)


def test_unknown_namespace_to_bare_jid(server, clients):
    """RFC 6121 8.5.2.1.3 / 8.5.2.2.3: IQ to a bare JID the server does not handle -> service-unavailable."""
    a = clients.add(server.online("uo"))
    b = clients.add(server.online("up"))
    r = a.iq("get", "<query xmlns='urn:example:nope'/>", to=b.bare)
    assert stanza_error(r) == ("cancel", "service-unavailable"), tostring(r)
    b.expect_nothing(lambda e: e.tag == C("iq"), 0.3)


def test_iq_error_echoes_id_and_swaps_addresses(server, clients):
    """RFC 6120 8.3.1: the error reply has the same id, from = original to."""
    c = clients.add(server.online("ue"))
    r = c.iq("get", "<query xmlns='urn:example:nope'/>", to=server.domain, iid="fixed-id-1")
    assert r.get("id") == "fixed-id-1" and r.get("from") == server.domain
    assert r.get("to") in (c.jid, None)


def test_iq_get_with_two_children_is_bad_request(server, clients):
    """RFC 6120 8.2.3: an IQ get/set must contain exactly one payload element -> <bad-request/>."""
    c = clients.add(server.online("ub"))
    r = c.iq("get", "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>", to=server.domain)
    assert stanza_error(r) == ("modify", "bad-request"), tostring(r)


def test_iq_result_to_server_is_not_answered(server, clients):
    """RFC 6120 8.2.3: an unsolicited result/error IQ gets no reply."""
    c = clients.add(server.online("ur"))
    c.send_raw(f"<iq type='result' id='unsolicited-1' to='{server.domain}'/>")
    c.expect_nothing(lambda e: e.get("id") == "unsolicited-1", 0.7)
    assert c.ping_server().get("type") == "result"
