"""Port of RFC6121Section8_5_1_IntegrationTest (XMPP interop tests).

RFC 6121 8.5.1 "Local User / No Such User". Sync as in the Java test: after the stanza under
test, the sender pings its own full JID; once that round trip completes, the original stanza
has been processed.
"""

import pytest

from rawxmpp import C, bare as bare_of, new_id
from test_sint_helpers import PING, desc, error_condition, iq_reply, rnd, self_ping_barrier, take_all

Q = ("RFC 6121 8.5.1: \"If the 'to' address specifies a bare JID <localpart@domainpart> or full JID "
     "<localpart@domainpart/resourcepart> where the domainpart of the JID matches a configured domain that is "
     "serviced by the server itself, the server MUST proceed as follows. [...] If the user account identified by "
     "the 'to' attribute does not exist, how the stanza is processed depends on the stanza type. ")


def target(server, full):
    j = f"nonexistingusername-{rnd(5)}@{server.domain}"
    return j + "/" + rnd(5) if full else j


def from_target(to):
    b = bare_of(to)
    return lambda e: bare_of(e.get("from") or "") == b


@pytest.mark.parametrize("full", [False, True], ids=["BareJid", "FullJid"])
def test_no_such_user_iq(server, clients, full):
    s = clients.add(server.online("sintnsu"))
    to = target(server, full)
    iid = new_id("ping")
    s.send_raw(f"<iq type='get' id='{iid}' to='{to}'>{PING}</iq>")
    r = iq_reply(s, iid)
    assert r is not None, "no response at all to an IQ to a non-existing local user"
    assert r.get("type") == "error", "expected an error, got: " + desc(r)
    assert error_condition(r) == "service-unavailable", desc(r)


@pytest.mark.parametrize("full", [False, True], ids=["BareJid", "FullJid"])
def test_no_such_user_message(server, clients, full):
    s = clients.add(server.online("sintnsu"))
    to = target(server, full)
    mid = rnd(9)
    s.send_raw(f"<message to='{to}' id='{mid}'><body>Test message {rnd(3)}</body></message>")
    self_ping_barrier(s)
    got = take_all(s, lambda e: e.get("id") == mid or from_target(to)(e))
    assert len(got) <= 1, [desc(e) for e in got]
    if got:
        assert error_condition(got[0]) == "service-unavailable", "expected no reply or <service-unavailable/>: " + desc(got[0])


@pytest.mark.parametrize("full", [False, True], ids=["BareJid", "FullJid"])
@pytest.mark.parametrize("ptype", [None, "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed"],
                         ids=["NoType", "Unavailable", "Subscribe", "Subscribed", "Unsubscribe", "Unsubscribed"])
def test_no_such_user_presence_ignored(server, clients, ptype, full):
    s = clients.add(server.online("sintnsu"))
    s.drain(0.05)
    to = target(server, full)
    pid = rnd(9)
    t = f" type='{ptype}'" if ptype else ""
    s.send_raw(f"<presence{t} id='{pid}' to='{to}'/>")
    self_ping_barrier(s)
    got = take_all(s, lambda e: e.get("id") == pid or from_target(to)(e))
    assert not got, "expected the presence to be silently ignored, got: " + str([desc(e) for e in got])


@pytest.mark.parametrize("full", [False, True], ids=["BareJid", "FullJid"])
def test_no_such_user_presence_probe(server, clients, full):
    s = clients.add(server.online("sintnsu"))
    s.drain(0.05)
    to = target(server, full)
    pid = rnd(9)
    s.send_raw(f"<presence type='probe' id='{pid}' to='{to}'/>")
    self_ping_barrier(s)
    got = take_all(s, lambda e: e.get("id") == pid or from_target(to)(e))
    assert len(got) <= 1, [desc(e) for e in got]
    if got:
        assert got[0].tag == C("presence") and got[0].get("type") == "unsubscribed", \
            "expected no reply or presence type='unsubscribed': " + desc(got[0])


test_no_such_user_iq.__doc__ = Q + "[...] For an IQ stanza, the server MUST return a <service-unavailable/> stanza error to the sender.\""
test_no_such_user_message.__doc__ = Q + ("[...] For a message stanza, the server MUST either (a) silently ignore the "
                                         "message or (b) return a <service-unavailable/> stanza error to the sender.\"")
test_no_such_user_presence_ignored.__doc__ = Q + ("[...] For a presence stanza with no 'type' attribute or a 'type' "
                                                  "attribute of \"unavailable\", the server MUST silently ignore the stanza. "
                                                  "[...] For a presence stanza of type \"subscribe\", \"subscribed\", "
                                                  "\"unsubscribe\", or \"unsubscribed\", the server MUST silently ignore the stanza.\"")
test_no_such_user_presence_probe.__doc__ = Q + ("[...] For a presence stanza of type \"probe\", the server MUST either (a) "
                                                "silently ignore the stanza or (b) return a presence stanza of type \"unsubscribed\".\"")
