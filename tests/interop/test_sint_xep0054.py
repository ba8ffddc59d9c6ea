"""Port of VCardTempIntegrationTest (XMPP interop tests): XEP-0054 vcard-temp, sections 3.1-3.3 and 8.
Like the Java test: only when the domain advertises 'vcard-temp' (disco#info)."""

import time

import pytest

from rawxmpp import C, new_id
from test_sint_helpers import desc, iq_reply, rnd, server_features

NS_VC = "vcard-temp"


def vc_client(server, clients, prefix="sintvc"):
    c = clients.add(server.online(prefix))
    if NS_VC not in server_features(c, server.domain):
        pytest.skip("the domain does not advertise vcard-temp (the Java test is then 'not possible')")
    return c


def vc_iq(c, type_, inner="", to=None):
    iid = new_id("vc")
    t = f" to='{to}'" if to else ""
    c.send_raw(f"<iq type='{type_}' id='{iid}'{t}><vCard xmlns='{NS_VC}'>{inner}</vCard></iq>")
    r = iq_reply(c, iid)
    assert r is not None, "no response to the vCard request"
    return r


def given(name):
    return f"<N><GIVEN>{name}</GIVEN></N>"


def test_request_own_existing_vcard(server, clients):
    """XEP-0054 3.1: "If a vCard exists for the user, the server MUST return [it] in an IQ-result" """
    c = vc_client(server, clients)
    assert vc_iq(c, "set", given("John")).get("type") == "result"
    r = vc_iq(c, "get")
    assert r.get("type") == "result", desc(r)
    v = r.find(f"{{{NS_VC}}}vCard")
    assert v is not None, "no <vCard/> in the result: " + desc(r)
    assert v.findtext(f"{{{NS_VC}}}N/{{{NS_VC}}}GIVEN") == "John", desc(r)


def test_publish_vcard(server, clients):
    """XEP-0054 3.2: "A user may publish [...] his or her vCard by sending an IQ of type "set" with no 'to'
    address, following the format in the previous use case." """
    c = vc_client(server, clients)
    r = vc_iq(c, "set", given("John"))
    assert r.get("type") == "result", desc(r)


def test_update_vcard(server, clients):
    """XEP-0054 3.2: "A user may [...] update his or her vCard by sending an IQ of type "set" with no 'to'
    address, following the format in the previous use case." """
    c = vc_client(server, clients)
    vc_iq(c, "set", given("Jane"))
    r = vc_iq(c, "set", given("John"))
    assert r.get("type") == "result", desc(r)


def test_update_other_users_vcard(server, clients):
    """XEP-0054 3.2: "If a user attempts to perform an IQ set on another user's vCard (i.e., by setting a 'to'
    address to a JID other than the sending user's bare JID), the server MUST return a stanza error [...]" """
    one = vc_client(server, clients, "sintvc1")
    two = clients.add(server.online("sintvc2"))
    r = vc_iq(one, "set", given("Jake"), to=two.bare)
    assert r.get("type") == "error" and r.find(C("error")) is not None, desc(r)


def _not_forwarded(requester, target, target_bare):
    r = vc_iq(requester, "get", to=target_bare)
    time.sleep(0.2)
    got = [e for e in target.drain(0.3) if e.tag == C("iq") and e.get("type") == "get"
           and e.find(f"{{{NS_VC}}}vCard") is not None]
    assert not got, "the vCard request was forwarded to the user's resource: " + desc(got[0])
    return r


def test_request_answered_by_server_when_recipient_has_no_vcard(server, clients):
    """XEP-0054 3.3: "In accordance with XMPP Core, a compliant server MUST respond on behalf of the requestor and
    not forward the IQ to the requestee's connected resource." (target without a vCard)"""
    one = vc_client(server, clients, "sintvc1")
    three = clients.add(server.online("sintvc3"))
    _not_forwarded(one, three, three.bare)


def test_request_answered_by_server_when_recipient_has_vcard(server, clients):
    """XEP-0054 3.3: "In accordance with XMPP Core, a compliant server MUST respond on behalf of the requestor and
    not forward the IQ to the requestee's connected resource." (target with a vCard)"""
    one = vc_client(server, clients, "sintvc1")
    two = clients.add(server.online("sintvc2"))
    vc_iq(one, "set", given("Jane"))
    _not_forwarded(two, one, one.bare)


def test_for_error_when_recipient_has_no_vcard(server, clients):
    """XEP-0054 3.3: "If no vCard exists [...] the server MUST return a stanza error," """
    one = vc_client(server, clients, "sintvc1")
    three = clients.add(server.online("sintvc3"))
    r = vc_iq(one, "get", to=three.bare)
    assert r.get("type") == "error" and r.find(C("error")) is not None, desc(r)


def test_for_error_when_recipient_doesnt_exist(server, clients):
    """XEP-0054 3.3: "If [...] the user does not exist, the server MUST return a stanza error," """
    one = vc_client(server, clients)
    r = vc_iq(one, "get", to=f"non-existing-test-user-{rnd(5)}@{server.domain}")
    assert r.get("type") == "error" and r.find(C("error")) is not None, desc(r)


def test_for_error_equality(server, clients):
    """XEP-0054 3.3: "If no vCard exists or the user does not exist, the server MUST return a stanza error, which
    SHOULD be either <service-unavailable/> or <item-not-found/> (but the server MUST return the same error
    condition in both cases to help prevent directory harvesting attacks)." """
    from test_sint_helpers import error_condition
    one = vc_client(server, clients, "sintvc1")
    three = clients.add(server.online("sintvc3"))
    a = vc_iq(one, "get", to=three.bare)
    b = vc_iq(one, "get", to=f"non-existing-test-user-{rnd(5)}@{server.domain}")
    assert a.get("type") == "error" and b.get("type") == "error", (desc(a), desc(b))
    assert error_condition(a) == error_condition(b), f"different conditions: no vCard -> {desc(a)}; no user -> {desc(b)}"


FULL = ("<FN>Peter Saint-Andre</FN><N><FAMILY>Saint-Andre</FAMILY><GIVEN>Peter</GIVEN><MIDDLE/></N>"
        "<NICKNAME>stpeter</NICKNAME><URL>http://www.xmpp.org/xsf/people/stpeter.shtml</URL><BDAY>1966-08-06</BDAY>"
        "<ORG><ORGNAME>XMPP Standards Foundation</ORGNAME><ORGUNIT/></ORG><TITLE>Executive Director</TITLE>"
        "<ROLE>Patron Saint</ROLE><TEL><WORK/><VOICE/><NUMBER>303-308-3282</NUMBER></TEL>"
        "<TEL><WORK/><FAX/><NUMBER/></TEL><TEL><WORK/><MSG/><NUMBER/></TEL>"
        "<ADR><WORK/><EXTADD>Suite 600</EXTADD><STREET>1899 Wynkoop Street</STREET><LOCALITY>Denver</LOCALITY>"
        "<REGION>CO</REGION><PCODE>80202</PCODE><CTRY>USA</CTRY></ADR>"
        "<TEL><HOME/><VOICE/><NUMBER>303-555-1212</NUMBER></TEL><TEL><HOME/><FAX/><NUMBER/></TEL>"
        "<TEL><HOME/><MSG/><NUMBER/></TEL><ADR><HOME/><EXTADD/><STREET/><LOCALITY>Denver</LOCALITY><REGION>CO</REGION>"
        "<PCODE>80209</PCODE><CTRY>USA</CTRY></ADR><EMAIL><INTERNET/><PREF/><USERID>stpeter@jabber.org</USERID></EMAIL>"
        "<JABBERID>stpeter@jabber.org</JABBERID><DESC>Check out my blog at https://stpeter.im/</DESC>")


def test_all_fields_vcard_update(server, clients):
    """XEP-0054 8 (the example vCard using all fields): the server accepts it with an IQ result."""
    c = vc_client(server, clients)
    r = vc_iq(c, "set", FULL)
    assert r.get("type") == "result", desc(r)
