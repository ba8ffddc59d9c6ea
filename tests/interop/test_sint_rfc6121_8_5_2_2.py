"""Ports of RFC6121Section8_5_2_2_1_MessageIntegrationTest and RFC6121Section8_5_2_2_3_IqIntegrationTest
(XMPP interop tests): RFC 6121 8.5.2.2, bare JID of an existing user with no available or connected
resources. ('normal'/'chat' are SHOULDs there and, like in the Java suite, not tested.)"""

import pytest

from rawxmpp import C, NS_ROSTER, new_id
from test_sint_helpers import TEST_NS, desc, error_condition, iq_reply, rnd

Q = ("RFC 6121 8.5.2.2: \"If the JID contained in the 'to' attribute is of the form <localpart@domainpart>, then "
     "the server MUST adhere to the following rules. [...] If there are no available resources or connected "
     "resources associated with the user, how the stanza is processed depends on the stanza type. [...] ")


def offline_user(server):
    jid, user, pw = server.new_user("tmp-test-user-")
    return jid


def error_with_body(needle):
    return lambda e: e.tag == C("message") and e.get("type") == "error" and e.findtext(C("body")) == needle


def test_groupchat(server, clients):
    s = clients.add(server.online("sint8522"))
    to = offline_user(server)
    needle = rnd(9)
    s.send_raw(f"<message type='groupchat' to='{to}' id='{new_id('gc')}'><body>{needle}</body></message>")
    s.recv(error_with_body(needle), 5, what="error (with the original body) for groupchat to an offline user")


@pytest.mark.parametrize("mtype", ["headline", "error"])
def test_silently_ignored(server, clients, mtype):
    s = clients.add(server.online("sint8522"))
    to = offline_user(server)
    needle = rnd(9)
    s.send_raw(f"<message type='{mtype}' to='{to}' id='{new_id('m')}'><body>{needle}</body></message>")
    r = s.ping_server()  # like the Java test: once answered, the message has been processed
    assert r.get("type") in ("result", "error")
    s.expect_nothing(error_with_body(needle), 0.5, what=f"error for a {mtype} message to a user without resources")


@pytest.mark.parametrize("iqtype", ["get", "set"])
def test_unsupported_iq(server, clients, iqtype):
    s = clients.add(server.online("sint8522"))
    to = offline_user(server)
    iid = new_id("iq")
    s.send_raw(f"<iq type='{iqtype}' id='{iid}' to='{to}'><test xmlns='{TEST_NS}'/></iq>")
    r = iq_reply(s, iid)
    assert r is not None, "no reply to an IQ to the bare JID of a user without resources"
    assert r.get("type") == "error", desc(r)
    assert error_condition(r) == "service-unavailable", desc(r)


@pytest.mark.parametrize("iqtype", ["get", "set"])
def test_supported_iq(server, clients, iqtype):
    s = clients.add(server.online("sint8522"))
    to = offline_user(server)
    iid = new_id("iq")
    s.send_raw(f"<iq type='{iqtype}' id='{iid}' to='{to}'><query xmlns='{NS_ROSTER}'/></iq>")
    r = iq_reply(s, iid)
    assert r is not None, "no reply to a roster IQ to the bare JID of a user without resources"
    assert r.get("type") in ("result", "error"), desc(r)


test_groupchat.__doc__ = Q + "For a message stanza of type \"groupchat\", the server MUST return an error to the sender\""
test_silently_ignored.__doc__ = Q + ("For a message stanza of type \"headline\" or \"error\", the server MUST silently "
                                     "ignore the message.\"")
test_unsupported_iq.__doc__ = Q + ("For an IQ stanza, the server itself MUST reply on behalf of the user with either an IQ "
                                   "result or an IQ error. Specifically, if the semantics of the qualifying namespace define "
                                   "a reply that the server can provide on behalf of the user [...] if not, then the server "
                                   "MUST reply with a <service-unavailable/> stanza error.\"")
test_supported_iq.__doc__ = Q + ("For an IQ stanza, the server itself MUST reply on behalf of the user with either an IQ "
                                 "result or an IQ error. Specifically, if the semantics of the qualifying namespace define a "
                                 "reply that the server can provide on behalf of the user, then the server MUST reply to the "
                                 "stanza on behalf of the user by returning either an IQ stanza of type \"result\" or an IQ "
                                 "stanza of type \"error\" that is appropriate to the original payload\"")
