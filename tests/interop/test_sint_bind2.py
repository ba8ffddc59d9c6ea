"""Ports of the XEP-0386 Bind 2 interop tests of XMPP-Interop-Testing/smack-sint-server-extensions
(package org.jivesoftware.smack, @SpecificationReference XEP-0386 1.1.0):

- Bind2NegotiationIntegrationTest: testBindNotProcessedOnFailedAuth,
  testUserAgentIdNotExposedInGeneratedResourceIdentifier, testCsiStateAcceptedInline,
  testOfflineMessagesNotDeliveredOnBind;
- Bind2InlineFeatureIntegrationTest: testStreamManagementEnableReflectedInBound,
  testCarbonsActuallyEnabled.

Both classes are 'not possible' unless the stream features (after STARTTLS) offer XEP-0388
SASL2 with the PLAIN mechanism (Sasl2TestUtils.requireSasl2(connection, "PLAIN")); each test
here starts with that check.

The Java tests send hand-made nonzas (Sasl2Nonza.Authenticate with PLAIN, Bind2Elements.Bind,
a <user-agent/>) or, in Bind2InlineFeatureIntegrationTest, raw XML over a TLS socket; the
ports send the same XML. testOfflineMessagesNotDeliveredOnBind uses Smack's own login(): with
the SASL2 and Bind2 modules that is an <authenticate/> with Smack's <user-agent/> (software
'Smack') and an empty <bind/>, then (Smack's Roster and login()) a roster get and an initial
<presence/>. The SASL2 exchange is test_sasl2.authenticate.
"""

import base64
import time
import uuid

import pytest

from rawxmpp import C, XMPPTimeout, local, new_id, tostring
from test_sasl2 import NS_BIND2, NS_CARBONS, NS_CSI, NS_SASL2, NS_SM, authenticate, reply, s2
from test_sint_helpers import rnd

EMPTY_BIND = f"<bind xmlns='{NS_BIND2}'/>"  # Bind2Elements.Bind(null, null)


def require_sasl2(server, clients, mechanism="PLAIN"):
    """Sasl2TestUtils.requireSasl2(connection, "PLAIN"), the constructor's check of both classes."""
    c = clients.add(server.client()).start()
    feature = c.feature(NS_SASL2, "authentication")
    if feature is None:
        pytest.fail("Smack marks this 'not possible': XEP-0388: Extensible SASL Profile (SASL2) is not "
                    "supported by service: " + tostring(c.features))
    if mechanism not in [m.text for m in feature.findall(s2("mechanism"))]:
        pytest.fail(f"Smack marks this 'not possible': SASL2 is supported, but the '{mechanism}' mechanism "
                    "is not offered by service: " + tostring(feature))
    c.close()


def user_agent(ua_id, software, device=None):
    """Sasl2Nonza.UserAgent.toXML (in the <authenticate/>, after <initial-response/>)."""
    inner = f"<software>{software}</software>" + (f"<device>{device}</device>" if device else "")
    return f"<user-agent id='{ua_id}'>{inner}</user-agent>"


def fresh_account(server, clients, prefix):
    jid, user, pw = server.new_user(prefix)
    return jid, user, pw, clients.add(server.client()).start()


# ------------------------------------------------------------ Bind2NegotiationIntegrationTest

def test_bind_not_processed_on_failed_auth(server, clients):
    """Bind2NegotiationIntegrationTest.testBindNotProcessedOnFailedAuth (XEP-0386 3.2: 'the bind
    request MUST NOT be processed (i.e. it should be ignored) if the authentication is not
    successful'): PLAIN with a wrong password and an inline <bind/> gets <failure/>; then PLAIN
    with the right password and no <bind/> on the same stream: the <authorization-identifier/>
    is a bare JID (a resource would mean the failed attempt's bind was processed)."""
    require_sasl2(server, clients)
    jid, user, pw, c = fresh_account(server, clients, "sintb2f")
    invalid = "invalid-password-" + rnd(16)
    ir = base64.b64encode(f"\0{user}\0{invalid}".encode()).decode()
    c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='PLAIN'><initial-response>{ir}</initial-response>"
               f"{EMPTY_BIND}</authenticate>")
    bad = reply(c)
    # sendAndWaitForResponse(badAuthenticate, Success.class, Failure.class) throws FailedNonzaException
    assert local(bad.tag) == "failure", (
        "Expected the failed authentication attempt (with an inline bind request) to result in a "
        "'<failure/>' element: " + tostring(bad))
    ok = authenticate(c, user, pw, "PLAIN")
    ident = ok.findtext(s2("authorization-identifier"))
    assert "/" not in ident, (
        f"Expected the '<authorization-identifier/>' value ('{ident}') to be a bare JID, since this successful "
        "authentication request did not itself include a bind request - a resource here would indicate that the "
        "earlier failed attempt's bind request had incorrectly been processed.")


def test_user_agent_id_not_exposed_in_generated_resource_identifier(server, clients):
    """Bind2NegotiationIntegrationTest.testUserAgentIdNotExposedInGeneratedResourceIdentifier
    (XEP-0386 3.2.1: 'The SASL2 <user-agent> id itself MUST NOT be exposed by the server in the
    generated resource identifier'): PLAIN with <user-agent id=UUID> (software
    'smack-sint-server-extensions', device 'test-device') and a <bind/> without <tag/>; the
    resource of the <authorization-identifier/> does not contain the UUID."""
    require_sasl2(server, clients)
    jid, user, pw, c = fresh_account(server, clients, "sintb2u")
    ua_id = str(uuid.uuid4())
    ok = authenticate(c, user, pw, "PLAIN",
                      inline=user_agent(ua_id, "smack-sint-server-extensions", "test-device") + EMPTY_BIND)
    ident = ok.findtext(s2("authorization-identifier"))
    assert "/" in ident, (f"Test setup error: expected the '<authorization-identifier/>' ('{ident}') to have a "
                          "bound resource.")
    resource = ident.split("/", 1)[1]
    assert ua_id not in resource, (
        f"Expected the generated resource identifier ('{resource}') to not contain the SASL2 "
        f"'<user-agent id=\"...\"/>' value ('{ua_id}') supplied during authentication (but it did).")


def test_csi_state_accepted_inline(server, clients):
    """Bind2NegotiationIntegrationTest.testCsiStateAcceptedInline (XEP-0386 3.2: 'If the client
    included a XEP-0352 <active/> or <inactive/> element, the session must begin in that
    state'): PLAIN with <bind><inactive xmlns='urn:xmpp:csi:0'/></bind> succeeds and the
    <success/> has a <bound/> (the Java test checks no more than that)."""
    require_sasl2(server, clients)
    jid, user, pw, c = fresh_account(server, clients, "sintb2c")
    ok = authenticate(c, user, pw, "PLAIN", inline=f"<bind xmlns='{NS_BIND2}'><inactive xmlns='{NS_CSI}'/></bind>")
    assert ok.find(f"{{{NS_BIND2}}}bound") is not None, (
        "Expected a '<bound/>' element in the '<success/>' response to a bind request that included a XEP-0352 "
        "'<inactive/>' element: " + tostring(ok))


def smack_login(c, user, pw):
    """ModularXmppClientToServerConnection.login() with SASL2 + Bind2 (Sasl2Module adds Smack's
    default <user-agent/>, the Bind2 state an empty <bind/>), then what login() does after:
    the roster is requested (Roster, rosterLoadedAtLogin) and the initial presence sent."""
    ok = authenticate(c, user, pw, inline=user_agent(uuid.uuid4(), "Smack") + EMPTY_BIND)
    c.jid = ok.findtext(s2("authorization-identifier"))
    c.send_raw(f"<iq type='get' id='{new_id('roster')}'><query xmlns='jabber:iq:roster'/></iq>")
    c.send_raw(f"<presence id='{new_id('pres')}'/>")
    return ok


def test_offline_messages_not_delivered_on_bind(server, clients):
    """Bind2NegotiationIntegrationTest.testOfflineMessagesNotDeliveredOnBind (XEP-0386 3.2: upon
    processing the bind request the server MUST 'Clear the offline messages for this user, if
    any, without sending them (as they will be provided by MAM)'): a chat message to the bare
    JID of an account that has never been connected; a second later the account logs in as
    Smack does (SASL2 + Bind2, roster get, initial presence); within 5 s no message with the
    marker body reaches it (a collector set up before login)."""
    require_sasl2(server, clients)
    _, suser, spw, sender = fresh_account(server, clients, "sintb2os")
    smack_login(sender, suser, spw)
    rjid, ruser, rpw = server.new_user("sintb2or")
    marker = "smack-sint-offline-marker-" + rnd(16)
    sender.send_raw(f"<message to='{rjid}' type='chat' id='{new_id('m')}'><body>{marker}</body></message>")
    time.sleep(1)  # the Java test's pause for the server to store it
    recipient = clients.add(server.client()).start()
    smack_login(recipient, ruser, rpw)
    try:
        delivered = recipient.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == marker, 5.0,
                                   what="the offline message")
    except XMPPTimeout:  # nothing within 5 s, as the Java test expects
        return
    pytest.fail(f"Expected the previously-queued offline message (marker '{marker}') to not be delivered at all as a "
                "result of binding via Bind 2 (including the connection's initial presence, sent automatically as "
                "part of login()), since the server MUST clear queued offline messages without sending them. "
                "Received: " + tostring(delivered))


# --------------------------------------------------------- Bind2InlineFeatureIntegrationTest

def connect_and_authenticate(server, clients, user, pw, bind_inline):
    """Bind2InlineFeatureIntegrationTest.connectAndAuthenticate: STARTTLS, then PLAIN SASL2 with
    <bind xmlns='urn:xmpp:bind:0'>bind_inline</bind> (no <user-agent/>); returns the client and
    what the server sent up to '</success>' (the Java test's lastResponse)."""
    c = clients.add(server.client(timeout=10)).start()
    start = len(c.log)
    authenticate(c, user, pw, "PLAIN", inline=f"<bind xmlns='{NS_BIND2}'>{bind_inline}</bind>")
    raw = b"".join(c.log[start:]).decode("utf-8", "replace")
    assert "</success>" in raw, "Timed out waiting for '</success>'. Data received so far: " + raw
    return c, raw[:raw.index("</success>") + len("</success>")]


def test_stream_management_enable_reflected_in_bound(server, clients):
    """Bind2InlineFeatureIntegrationTest.testStreamManagementEnableReflectedInBound (XEP-0386 3.2:
    'The <bound/> response MUST contain the resulting XEP-0198 <enabled/> (or <failed/>)
    element'): <bind><enable xmlns='urn:xmpp:sm:3'/></bind>; the raw <success/> response
    declares the urn:xmpp:sm:3 namespace and has an '<enabled' or '<failed' tag (the Java
    test's text check)."""
    require_sasl2(server, clients)
    _, user, pw = server.new_user("sintb2sm")
    _, response = connect_and_authenticate(server, clients, user, pw, f"<enable xmlns='{NS_SM}'/>")
    has_enabled = f'xmlns="{NS_SM}"' in response or f"xmlns='{NS_SM}'" in response
    has_enabled_or_failed_tag = "<enabled" in response or "<failed" in response
    assert has_enabled and has_enabled_or_failed_tag, (
        "Expected the '<success/>' response to a bind request that included an inline XEP-0198 '<enable/>' element "
        "to contain a resulting '<enabled/>' (or '<failed/>') element in the 'urn:xmpp:sm:3' namespace, but it did "
        "not. Full response: " + response)


def test_carbons_actually_enabled(server, clients):
    """Bind2InlineFeatureIntegrationTest.testCarbonsActuallyEnabled (XEP-0386 3.2: 'If the client
    included a XEP-0280 <enable/> element in the requested features, Message Carbons MUST be
    enabled at this point'): two resources of one account bound with <tag>carbons-a</tag> /
    <tag>carbons-b</tag> and <enable xmlns='urn:xmpp:carbons:2'/>, a third account; all three
    send <presence/>, a second later the third sends a chat message to the account's bare JID;
    within 10 s resource B's stream carries the marker (a carbon copy, or the message itself)."""
    require_sasl2(server, clients)
    bare_jid, user, pw = server.new_user("sintb2cb")
    a, _ = connect_and_authenticate(server, clients, user, pw, f"<tag>carbons-a</tag><enable xmlns='{NS_CARBONS}'/>")
    b, _ = connect_and_authenticate(server, clients, user, pw, f"<tag>carbons-b</tag><enable xmlns='{NS_CARBONS}'/>")
    _, suser, spw = server.new_user("sintb2cs")
    sender, _ = connect_and_authenticate(server, clients, suser, spw, "")
    for c in (a, b, sender):
        c.send_raw("<presence/>")
    time.sleep(1)
    marker = "smack-sint-carbons-marker-" + rnd(16)
    start = len(b.log)
    sender.send_raw(f"<message type='chat' to='{bare_jid}'><body>{marker}</body></message>")
    deadline = time.monotonic() + 10
    received = ""
    while time.monotonic() < deadline and marker not in received:
        try:
            b._read_some(min(deadline, time.monotonic() + 2))
        except Exception:
            break
        received = b"".join(b.log[start:]).decode("utf-8", "replace")
    assert marker in received, (
        "Expected resource B (which enabled XEP-0280 Message Carbons inline during Bind 2) to receive a carbon copy "
        f"of a message a third party sent to resource A's bare JID ('{bare_jid}', the same account as resource B, "
        "also Carbons-enabled), but no such copy arrived within 10 seconds. Data received on resource B's "
        "connection: " + received)

