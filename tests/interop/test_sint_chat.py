"""Ports of Smack's chat tests that go through the server: ChatTest (testProperties,
chatManagerTest), chat2 IncomingMessageListenerIntegrationTest and
OutgoingMessageListenerIntegrationTest, and ChatStateIntegrationTest (XEP-0085).

Smack's chat2 ChatManager sends type='chat' messages to the contact's bare JID; the old chat
API sends to the full JID with a <thread/>. A server routes both (RFC 6121 8.5.2.1.1 / 8.5.3.1)
and carries every extension element untouched (RFC 6120 8.4), which is what the receiving
listeners depend on.
"""

import base64

from rawxmpp import C, q, tostring, xml_escape
from test_sint_helpers import rnd

NS_PROPS = "http://www.jivesoftware.com/xmlns/xmpp/properties"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def pair(server, clients):
    return clients.add(server.online("sintchat1")), clients.add(server.online("sintchat2"))


def props_xml(props):
    out = [f"<properties xmlns='{NS_PROPS}'>"]
    for name, (t, v) in props.items():
        out.append(f"<property><name>{name}</name><value type='{t}'>{xml_escape(v)}</value></property>")
    out.append("</properties>")
    return "".join(out)


def props_of(m):
    p = m.find(q(NS_PROPS, "properties"))
    assert p is not None, tostring(m)
    return {e.findtext(q(NS_PROPS, "name")): (e.find(q(NS_PROPS, "value")).get("type"),
                                              e.findtext(q(NS_PROPS, "value")) or "")
            for e in p.findall(q(NS_PROPS, "property"))}


def test_properties(server, clients):
    """ChatTest.testProperties: a chat message with a subject, a body, a thread and Jive
    properties of every type (string, integer, float, double, boolean, a serialised Java
    object) reaches conTwo's full JID with all of them as sent."""
    one, two = pair(server, clients)
    thread = f"thread-{rnd()}"
    props = {"favoriteColor": ("string", "red"), "age": ("integer", "30"), "distance": ("float", "30.0"),
             "weight": ("double", "30.0"), "male": ("boolean", "true"),
             "birthdate": ("java-object", base64.b64encode(b"\xac\xed\x00\x05sr\x00\x0ejava.util.Date"
                                                            + bytes(range(40))).decode())}
    mid = f"props-{rnd()}"
    one.send_raw(f"<message to='{two.jid}' id='{mid}' type='chat'><subject>Subject of the chat</subject>"
                 f"<body>Body of the chat</body><thread>{thread}</thread>{props_xml(props)}</message>")
    m = two.recv(lambda e: e.tag == C("message") and e.findtext(C("thread")) == thread, 2, what="the message")
    assert m.findtext(C("subject")) == "Subject of the chat", tostring(m)
    assert m.findtext(C("body")) == "Body of the chat", tostring(m)
    assert props_of(m) == props, tostring(m)
    assert m.get("from") == one.jid and m.get("id") == mid, tostring(m)


def test_chat_manager(server, clients):
    """ChatTest.chatManagerTest is client-side only (a listener called when a chat object is
    created locally, nothing sent); its server part is that a first message of a new chat
    (with a new thread) to a full JID is delivered with that thread."""
    one, two = pair(server, clients)
    thread = f"new-{rnd()}"
    one.send_raw(f"<message to='{two.jid}' type='chat'><body>hello</body><thread>{thread}</thread></message>")
    m = two.recv(lambda e: e.tag == C("message") and e.findtext(C("thread")) == thread, 5, what="first message")
    assert m.get("type") == "chat" and m.get("from") == one.jid, tostring(m)


def test_incoming_message_listener(server, clients):
    """chat2 IncomingMessageListenerIntegrationTest.test: chatWith(conTwo's bare JID).send(a
    16-character random body) reaches conTwo's listener: a type='chat' message from conOne's
    full JID with that body."""
    one, two = pair(server, clients)
    text = rnd(16)
    one.message(two.bare, text, type_="chat")
    m = two.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == text, 5, what="the chat message")
    assert m.get("type") == "chat" and m.get("from") == one.jid, tostring(m)


def test_outgoing_message_listener(server, clients):
    """chat2 OutgoingMessageListenerIntegrationTest.test: conOne's outgoing listener appends
    text to the body before it leaves; conTwo receives the changed body, so the server delivers
    the body as sent."""
    one, two = pair(server, clients)
    text = rnd(16)
    appended = text + " (this was appended by the outgoing listener)"
    one.message(two.bare, appended, type_="chat")
    m = two.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None, 5, what="the chat message")
    assert m.findtext(C("body")) == appended, tostring(m)


def test_chat_state_listeners(server, clients):
    """ChatStateIntegrationTest.testChatStateListeners (XEP-0085): a bodiless type='chat'
    message with <composing/> to conTwo's bare JID reaches conTwo (5.1: standalone
    notifications); then a chat message 'Hi!' that Smack's interceptor gave an <active/>
    reaches conTwo with it."""
    one, two = pair(server, clients)
    one.send_raw(f"<message to='{two.bare}' type='chat'><composing xmlns='{NS_CHATSTATES}'/></message>")
    m = two.recv(lambda e: e.tag == C("message") and e.find(q(NS_CHATSTATES, "composing")) is not None, 5,
                 what="composing")
    assert m.get("from") == one.jid and m.find(C("body")) is None, tostring(m)
    one.send_raw(f"<message to='{two.bare}' type='chat'><body>Hi!</body><active xmlns='{NS_CHATSTATES}'/></message>")
    m = two.recv(lambda e: e.tag == C("message") and e.find(q(NS_CHATSTATES, "active")) is not None, 5,
                 what="active")
    assert m.findtext(C("body")) == "Hi!", tostring(m)
