"""Port of SubscriptionIntegrationTest and LowLevelSubscriptionIntegrationTest (XMPP interop tests):
RFC 6121 3.1.3, inbound subscription requests (online and offline contact)."""

from rawxmpp import C, q
from test_sint_helpers import desc

EXT = "<test xmlns='org.example.test'/>"


def is_sub_from(bare):
    return lambda e: (e.tag == C("presence") and e.get("type") == "subscribe" and
                      (e.get("from") or "").split("/")[0] == bare)


def test_subscription_request(server, clients):
    """RFC 6121 3.1.3: "if there is at least one available resource associated with the contact when the
    subscription request is received by the contact's server, then the contact's server MUST send that
    subscription request to all available resources in accordance with Section 8." (Java: addressed to the
    contact's full JID.)"""
    one = clients.add(server.online("sint31a"))
    two = clients.add(server.online("sint31b"))
    two.send_raw(f"<presence type='subscribe' to='{one.jid}'/>")
    one.recv(is_sub_from(two.bare), what="subscribe")


def test_subscription_request_with_extension(server, clients):
    """RFC 6121 3.1.3 (as above): the request arrives with its extension element."""
    one = clients.add(server.online("sint31a"))
    two = clients.add(server.online("sint31b"))
    two.send_raw(f"<presence type='subscribe' to='{one.jid}'>{EXT}</presence>")
    p = one.recv(is_sub_from(two.bare), what="subscribe")
    assert p.find(q("org.example.test", "test")) is not None, "extension lost: " + desc(p)


def _offline(server, clients, ext):
    jid1, user1, pw1 = server.new_user("sint31off")
    one = clients.add(server.login(jid1, pw1, presence=True))
    two = clients.add(server.online("sint31b"))
    one.close()
    two.send_raw(f"<presence type='subscribe' to='{jid1}'>{ext}</presence>" if ext else
                 f"<presence type='subscribe' to='{jid1}'/>")
    two.ping_server()
    one = clients.add(server.login(jid1, pw1, presence=True))  # like Smack: roster get + initial presence
    return one.recv(is_sub_from(two.bare), what="stored subscribe")


def test_subscription_request_offline(server, clients):
    """RFC 6121 3.1.3: "[...] if the contact has no available resources when the subscription request is
    received by the contact's server, then the contact's server MUST keep a record of the complete presence
    stanza comprising the subscription request [...]" -- delivered when the contact comes online."""
    _offline(server, clients, None)


def test_subscription_request_offline_with_extension(server, clients):
    """RFC 6121 3.1.3: "[...] the contact's server MUST keep a record of the complete presence stanza
    comprising the subscription request, including any extended content contained therein [...]" """
    p = _offline(server, clients, EXT)
    assert p.find(q("org.example.test", "test")) is not None, "extension lost: " + desc(p)
