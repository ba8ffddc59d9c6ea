"""Port of RFC6121Section8_5_2_1_3_IqIntegrationTest (XMPP interop tests).

RFC 6121 8.5.2.1.3 "Local User / localpart@domainpart / Available or Connected Resources / IQ":
an IQ get/set is sent to the bare JID of a user with resources of the given priorities; the
server must answer on the user's behalf and never deliver the IQ to a resource.
"""

import pytest

from rawxmpp import C, NS_ROSTER, new_id
from test_sint_helpers import TEST_NS, desc, error_condition, iq_reply, stop_markers, take_all, user_resources
from test_sint_helpers import IDS, VALS

QUOTE_UNSUPPORTED = """RFC 6121 8.5.2.1.3: "For an IQ stanza, the server itself MUST reply on behalf of the user
with either an IQ result or an IQ error, and MUST NOT deliver the IQ stanza to any of the user's available
resources. Specifically, if the semantics of the qualifying namespace define a reply that the server can
provide on behalf of the user [...] if not, then the server MUST reply with a <service-unavailable/> stanza
error." """


def run(server, clients, iqtype, payload, prios):
    s = clients.add(server.online("sintiq"))
    bare, pw, res = user_resources(server, clients, prios)
    iid = new_id("iqb")
    s.send_raw(f"<iq type='{iqtype}' id='{iid}' to='{bare}'>{payload}</iq>")
    reply = iq_reply(s, iid, timeout=4)
    stop_markers(s, res)
    delivered = {}
    for r in res:
        got = take_all(r, lambda e: e.tag == C("iq") and e.get("id") == iid)
        if got:
            delivered[r.jid] = got[0]
    return reply, delivered


@pytest.mark.parametrize("prios", VALS, ids=IDS)
@pytest.mark.parametrize("iqtype", ["get", "set"])
def test_unsupported_iq_to_bare_jid(server, clients, iqtype, prios):
    reply, delivered = run(server, clients, iqtype, f"<test xmlns='{TEST_NS}'/>", prios)
    assert not delivered, f"IQ to the bare JID was delivered to resource(s) {list(delivered)}"
    assert reply is not None, "no reply to the IQ sent to the bare JID"
    assert reply.get("type") == "error", "expected an IQ error: " + desc(reply)
    assert error_condition(reply) == "service-unavailable", desc(reply)


@pytest.mark.parametrize("prios", VALS, ids=IDS)
@pytest.mark.parametrize("iqtype", ["get", "set"])
def test_supported_iq_to_bare_jid(server, clients, iqtype, prios):
    """RFC 6121 8.5.2.1.3: "if the semantics of the qualifying namespace define a reply that the server
    can provide on behalf of the user, then the server MUST reply to the stanza on behalf of the user by
    returning either an IQ stanza of type "result" or an IQ stanza of type "error" that is appropriate to
    the original payload" -- and "MUST NOT deliver the IQ stanza to any of the user's available
    resources". (Java: an empty jabber:iq:roster query of type get/set to another user's bare JID.)"""
    reply, delivered = run(server, clients, iqtype, f"<query xmlns='{NS_ROSTER}'/>", prios)
    assert not delivered, f"IQ to the bare JID was delivered to resource(s) {list(delivered)}"
    assert reply is not None, "no reply to the roster IQ sent to another user's bare JID"
    assert reply.get("type") in ("result", "error"), desc(reply)


test_unsupported_iq_to_bare_jid.__doc__ = QUOTE_UNSUPPORTED
