"""Port of RFC6121Section8_5_3_2_1_MessageIntegrationTest (XMPP interop tests).

RFC 6121 8.5.3.2.1 "Local User / localpart@domainpart/resourcepart / No Resource Matches / Message":
a message to <user@domain/not-online-xxx> of an existing user with resources of the given priorities.
"""

import pytest

from rawxmpp import C, new_id
from test_sint_helpers import IDS2, VALS2, barrier, desc, is_msg_body, rnd, take_all, user_with_resources_or_none

Q = ("RFC 6121 8.5.3.2.1: \"If the domainpart of the JID contained in the 'to' attribute of an inbound stanza "
     "matches one of the configured domains of the server itself and the JID contained in the 'to' attribute is "
     "of the form <localpart@domainpart/resourcepart>, then the server MUST adhere to the following rules. [...] "
     "If no available resource or connected resource exactly matches the full JID, how the stanza is processed "
     "depends on the stanza type. [...] ")


def run(server, clients, mtype, prios):
    s = clients.add(server.online("sintnr"))
    bare, pw, res = user_with_resources_or_none(server, clients, prios)
    needle = rnd(9)
    to = f"{bare}/not-online-{rnd(7)}"
    s.send_raw(f"<message type='{mtype}' to='{to}' id='{new_id('nr')}'><body>{needle}</body></message>")
    barrier(server, clients, s, res)
    received = {r.jid: take_all(r, is_msg_body(needle, from_=s.jid, type_=mtype)) for r in res}
    received = {k: v[0] for k, v in received.items() if v}
    errs = take_all(s, lambda e: e.tag == C("message") and e.get("type") == "error" and e.findtext(C("body")) == needle)
    return res, received, (errs[0] if errs else None)


@pytest.mark.parametrize("prios", VALS2, ids=IDS2)
@pytest.mark.parametrize("mtype", ["normal", "groupchat", "headline"])
def test_message_not_delivered_to_other_resources(server, clients, mtype, prios):
    res, received, err = run(server, clients, mtype, prios)
    assert not received, f"message of type {mtype} to an offline resource was delivered to other resource(s) {list(received)}"


@pytest.mark.parametrize("prios", VALS2, ids=IDS2)
def test_message_error_silently_ignored(server, clients, prios):
    res, received, err = run(server, clients, "error", prios)
    assert not received, f"message of type error to an offline resource was delivered to {list(received)}"
    assert err is None, "the sender got an error for a type='error' message: " + desc(err)


CHAT = [("OneResourcePrioPositive", [1]), ("OneResourcePrioZero", [0]),
        ("MultipleResourcesPrioPositiveAndNegative", [1, -1]), ("MultipleResourcesPrioZeroAndNegative", [0, -1]),
        ("MultipleResourcesPrioDifferentNonNegativeAndNegative", [1, -1])]


@pytest.mark.parametrize("prios", [c[1] for c in CHAT], ids=[c[0] for c in CHAT])
def test_chat_exactly_one_non_negative_resource(server, clients, prios):
    s = clients.add(server.online("sintnr"))
    bare, pw, res = user_with_resources_or_none(server, clients, prios)
    target = [r for r, p in zip(res, prios) if p >= 0][0]
    needle = rnd(9)
    s.send_raw(f"<message type='chat' to='{bare}/not-online-{rnd(7)}' id='{new_id('nr')}'><body>{needle}</body></message>")
    target.recv(is_msg_body(needle, from_=s.jid, type_="chat"), 5, what="chat redirected to the non-negative resource")


test_message_not_delivered_to_other_resources.__doc__ = Q + (
    "For a message stanza of type \"normal\", \"groupchat\", or \"headline\", the server MUST either (a) silently "
    "ignore the stanza or (b) return an error stanza to the sender\" -- in particular it is not delivered to any "
    "other resource of the user (the Java assertion).")
test_message_error_silently_ignored.__doc__ = Q + "For a message stanza of type \"error\", the server MUST silently ignore the stanza.\""
test_chat_exactly_one_non_negative_resource.__doc__ = Q + (
    "For a message stanza of type \"chat\": [...] If there is one available resource with a non-negative presence "
    "priority then the server MUST deliver the message to that resource.\"")
