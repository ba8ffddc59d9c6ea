"""Ports of the XEP-0280 Message Carbons interop tests (XMPP-Interop-Testing
smack-sint-server-extensions, xep0280): MessageCarbonsIntegrationTest (enableTest,
disableTest, enableDisableMultipleTimesTest). MessageCarbonsMandatoryIntegrationTest has
no test methods (only its class check, 'not possible' unless the domain advertises
urn:xmpp:carbons:rules:0, which XEP-0280 1.0.1 does not define and Starling does not
advertise), so there is nothing of it to port.

Smack's CarbonManager remembers 'enabled' once the server answered the IQ with a result, so
the Java tests check that the server answers with a result. The port checks the same answer
and, since a result that changes nothing would pass that, also that a copy is (or is not)
made afterwards: a message from a third account to the other resource of conOne's account.
"""

import pytest

from rawxmpp import q, tostring
from test_carbons import NS_CARBONS, NS_DISCO_INFO, account, carbon, got, no_carbon_before, set_carbons
from test_sint_helpers import rnd


def supported(c, domain):
    r = c.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=domain)
    return {f.get("var") for f in r.iter(q(NS_DISCO_INFO, "feature"))}


def setup(server, clients):
    """conOne (with a second resource of the same account) and a sender; the class check:
    carbons advertised by the domain, enabling and disabling not forbidden."""
    jid, _, (one, other) = account(server, clients, 0, 0, prefix="sintcb")
    sender = clients.add(server.online("sintcbs"))
    if NS_CARBONS not in supported(one, server.domain):
        pytest.fail("Smack marks this 'not possible': the domain does not advertise XEP-0280")
    for on in (True, False):
        r = set_carbons(one, on)
        assert r.get("type") == "result", tostring(r)
    return one, other, sender


def copied(one, other, sender):
    mid = sender.message(other.jid, f"carbon check {rnd()}")
    got(other, mid)
    carbon(one, "received", mid)


def not_copied(one, other, sender):
    mid = sender.message(other.jid, f"carbon check {rnd()}")
    got(other, mid)
    marker = sender.message(one.jid, "marker")
    no_carbon_before(one, mid, marker)


def test_enable(server, clients):
    """MessageCarbonsIntegrationTest.enableTest (XEP-0280 4: an IQ-set with <enable/>; 'the
    server will respond with an IQ-result when Carbons are enabled')."""
    one, other, sender = setup(server, clients)
    r = set_carbons(one, True)
    assert r.get("type") == "result", tostring(r)
    copied(one, other, sender)
    r = set_carbons(one, False)
    assert r.get("type") == "result", tostring(r)


def test_disable(server, clients):
    """MessageCarbonsIntegrationTest.disableTest (XEP-0280 5: an IQ-set with <disable/> is
    answered with an IQ-result)."""
    one, other, sender = setup(server, clients)
    assert set_carbons(one, True).get("type") == "result"
    r = set_carbons(one, False)
    assert r.get("type") == "result", tostring(r)
    not_copied(one, other, sender)


def test_enable_disable_multiple_times(server, clients):
    """MessageCarbonsIntegrationTest.enableDisableMultipleTimesTest (XEP-0280 10.1: the server
    MUST allow the client to enable and disable the protocol multiple times within a
    session): enable, disable, enable, disable, each answered with a result."""
    one, other, sender = setup(server, clients)
    state = False
    for _ in range(4):
        state = not state
        r = set_carbons(one, state)
        assert r.get("type") == "result", tostring(r)
    assert state is False
    not_copied(one, other, sender)
    assert set_carbons(one, True).get("type") == "result"
    copied(one, other, sender)
