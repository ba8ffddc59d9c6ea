"""Ports of three plain Smack integration tests of the same suite (no RFC quote in the Java):
WaitForClosingStreamElementTest, LowLevelRosterIntegrationTest, XmppConnectionIntegrationTest."""

import random

from rawxmpp import C, new_id, xml_escape
from test_sint_helpers import desc, rnd, subscribe_to


def test_wait_for_closing_stream_element(server, clients):
    """Smack WaitForClosingStreamElementTest (RFC 6120 4.4, closing a stream; paraphrased): on a client's
    disconnect (unavailable presence, then </stream:stream>) the server answers with its own closing
    </stream:stream> tag before closing the connection."""
    c = clients.add(server.online("sintclose"))
    c.send_raw("<presence type='unavailable'/></stream:stream>")
    try:
        c.wait_closed(5)
    except AssertionError:
        pass
    assert c.stream_ended, "server did not send </stream:stream> after the client closed its stream: " + \
        repr(b"".join(c.log)[-400:])


def test_presence_event_listeners_offline(server, clients):
    """RFC 6121 4.5.2 (Smack LowLevelRosterIntegrationTest.testPresenceEventListenersOffline): with a mutual
    subscription, when the contact disconnects (Smack: unavailable presence, then closing the stream) the user
    receives presence of type 'unavailable' from the contact's full JID (RFC 6121 4.5.2, paraphrased: the
    server broadcasts the unavailable presence to the entities subscribed to the user's presence)."""
    one = clients.add(server.online("sintll1"))
    two = clients.add(server.online("sintll2"))
    two_full = two.jid
    for c, other, name in ((one, two, "Con Two"), (two, one, "Con One")):
        iid = new_id("rs")
        c.send_raw(f"<iq type='set' id='{iid}'><query xmlns='jabber:iq:roster'><item jid='{other.bare}' name='{name}'/>"
                   f"</query></iq>")
    subscribe_to(one, two)
    subscribe_to(two, one)
    one.drain(0.2)
    two.send_raw("<presence type='unavailable'/></stream:stream>")
    one.recv(lambda e: e.tag == C("presence") and e.get("type") == "unavailable" and e.get("from") == two_full,
             5, what=f"unavailable presence from {two_full}")


def test_all_to_all_message_send(server, clients):
    """Smack XmppConnectionIntegrationTest.allToAllMessageSendTest (4 connections, 3 messages per connection to
    every other connection, payloads of up to 4 random chunks of up to 16 characters, not intermixed): every
    message arrives, intact, at its addressee."""
    rng = random.Random(42)
    conns = [clients.add(server.online(f"sinta2a{i}")) for i in range(4)]
    for c in conns:
        c.drain(0.05)
    expected = {c.jid: [] for c in conns}
    for s in conns:
        for r in conns:
            if r is s:
                continue
            for n in range(3):
                chunks = [rnd(rng.randint(1, 16)) for _ in range(rng.randint(1, 4))]
                mid = new_id("a2a")
                payload = "".join(f"<chunk n='{i}'>{xml_escape(ch)}</chunk>" for i, ch in enumerate(chunks))
                s.send_raw(f"<message to='{r.jid}' id='{mid}'><body>{n}</body>"
                           f"<payload xmlns='urn:xmpp-interop:stress:0'>{payload}</payload></message>")
                expected[r.jid].append((mid, s.jid, chunks))
    for r in conns:
        for mid, frm, chunks in expected[r.jid]:
            m = r.recv(lambda e, mid=mid: e.tag == C("message") and e.get("id") == mid, 10, what=f"message {mid}")
            assert m.get("from") == frm, desc(m)
            p = m.find("{urn:xmpp-interop:stress:0}payload")
            got = [ch.text for ch in p.findall("{urn:xmpp-interop:stress:0}chunk")] if p is not None else None
            assert got == chunks, f"payload altered: {desc(m)}"
