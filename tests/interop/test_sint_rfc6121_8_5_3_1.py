"""Port of RFC6121Section8_5_3_1_IntegrationTest (XMPP interop tests).

RFC 6121 8.5.3.1 "Local User / localpart@domainpart/resourcepart / Resource Matches": stanzas
sent to the full JID of an available resource are delivered to it.
"""

import pytest

from rawxmpp import C, NS_ROSTER, NS_STANZAS
from test_sint_helpers import TEST_NS, rnd

Q = ("RFC 6121 8.5.3.1: \"If the domainpart of the JID contained in the 'to' attribute of an inbound stanza "
     "matches one of the configured domains of the server itself and the JID contained in the 'to' attribute is "
     "of the form <localpart@domainpart/resourcepart>, then the server MUST adhere to the following rules. [...] "
     "If an available resource or connected resource exactly matches the full JID, how the stanza is processed "
     "depends on the stanza type. [...] ")


def pair(server, clients):
    one = clients.add(server.online("sint1"))
    two = clients.add(server.online("sint2"))
    one.drain(0.05)
    two.drain(0.05)
    return one, two


def got(c, tag, needle, type_=None, timeout=5):
    return c.recv(lambda e: e.tag == C(tag) and e.get("id") == needle and
                  (type_ is None or e.get("type") == type_), timeout, what=f"{tag} {needle}")


ERR = f"<error type='cancel'><undefined-condition xmlns='{NS_STANZAS}'/></error>"


@pytest.mark.parametrize("payload", [f"<test xmlns='{TEST_NS}'/>", f"<query xmlns='{NS_ROSTER}'/>"],
                         ids=["Unsupported", "Supported"])
def test_iq_error_to_full_jid(server, clients, payload):
    one, two = pair(server, clients)
    needle = rnd(9)
    one.send_raw(f"<iq type='error' id='{needle}' to='{two.jid}'>{payload}{ERR}</iq>")
    got(two, "iq", needle, "error")


@pytest.mark.parametrize("payload", [f"<test xmlns='{TEST_NS}'/>", f"<query xmlns='{NS_ROSTER}'/>"],
                         ids=["Unsupported", "Supported"])
def test_iq_result_to_full_jid(server, clients, payload):
    one, two = pair(server, clients)
    needle = rnd(9)
    one.send_raw(f"<iq type='result' id='{needle}' to='{two.jid}'>{payload}</iq>")
    got(two, "iq", needle, "result")


@pytest.mark.parametrize("mtype", ["normal", "headline", "error", "chat", "groupchat"])
def test_message_to_full_jid(server, clients, mtype):
    """(Java: the message of type error is sent with a body and no <error/> child, like Smack does.)"""
    one, two = pair(server, clients)
    needle = rnd(9)
    one.send_raw(f"<message type='{mtype}' id='{needle}' to='{two.jid}'>"
                 f"<body xml:lang='en'>Message sent by an integration test.</body></message>")
    got(two, "message", needle)


@pytest.mark.parametrize("ptype", [None, "unavailable"], ids=["available", "unavailable"])
def test_presence_to_full_jid(server, clients, ptype):
    one, two = pair(server, clients)
    needle = rnd(9)
    t = f" type='{ptype}'" if ptype else ""
    one.send_raw(f"<presence{t} id='{needle}' to='{two.jid}'><status>Integration test</status></presence>")
    got(two, "presence", needle)


test_iq_error_to_full_jid.__doc__ = Q + "For an IQ stanza of type \"result\" or \"error\", the server MUST deliver the stanza to the resource.\""
test_iq_result_to_full_jid.__doc__ = test_iq_error_to_full_jid.__doc__
test_message_to_full_jid.__doc__ = Q + "For a message stanza, the server MUST deliver the stanza to the resource.\" " + test_message_to_full_jid.__doc__
test_presence_to_full_jid.__doc__ = Q + ("For a presence stanza with no 'type' attribute or a 'type' attribute of "
                                         "\"unavailable\", the server MUST deliver the stanza to the resource.\"")
