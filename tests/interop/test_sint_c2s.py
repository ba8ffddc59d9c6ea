"""Ports of Smack's connection-level integration tests:

- c2s.ModularXmppClientToServerConnectionLowLevelIntegrationTest and
  tcp.XmppNioTcpConnectionLowLevelIntegrationTest: testDisconnectAfterConnect (connected and
  secured, not authenticated, the client closes its stream: the server closes its own with
  </stream:stream>, RFC 6120 4.4, and no stream error) and testDisconnectNeverConnected (client
  side only: nothing reaches the server; here a TCP connection that is opened and closed
  without a byte leaves the server healthy);
- c2s.SimpleXmppConnectionIntegrationTest.createConnectionTest: two fresh connections, a
  message without a type from the first to the second's full JID arrives.
"""

import socket

import pytest

from rawxmpp import C, tostring
from test_sint_helpers import rnd


@pytest.mark.parametrize("tls", ["starttls", "direct-tls", "before-starttls"])
def test_disconnect_after_connect(server, clients, tls):
    if tls == "direct-tls":
        c = clients.add(server.client(direct_tls=True))
        c.start()
    elif tls == "starttls":
        c = clients.add(server.client())
        c.start()
    else:
        c = clients.add(server.client())
        c.connect()
        c.open_stream()
    c.send_raw("</stream:stream>")
    c.wait_closed(5)
    assert c.stream_ended, "no closing </stream:stream> from the server: " + repr(b"".join(c.log)[-300:])
    assert c.stream_error is None, c.stream_error
    server.assert_healthy()


def test_disconnect_never_connected(server, clients):
    s = socket.create_connection((server.host, server.c2s_port), timeout=5)
    s.close()
    server.assert_healthy()


def test_create_connection(server, clients):
    one = clients.add(server.online("sintc2s1"))
    two = clients.add(server.online("sintc2s2"))
    body = f"{rnd()}: Hello from the other side!"
    one.message(two.jid, body, type_=None)
    m = two.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == body, 5, what="the message")
    assert m.get("from") == one.jid, tostring(m)
