"""XEP-0357 push notifications, the user's server's side, raw XML.

The app server is a session of another account on the same server (a full JID: XEP-0357
lets it be any JID; one on another domain is reached over federation: test_s2s.py). It receives the
notifications as IQ sets from the user's bare JID and answers them.

- disco: urn:xmpp:push:0 on the account;
- <enable/>: the summary notification reaches the app server when a message goes to
  offline storage, and when a session waiting for XEP-0198 resumption gets one (or
  holds one its dead connection never acknowledged); the client's publish-options form
  rides along; sender and body only when configured;
- what is not important (chat states alone) is not notified;
- <disable/> with a node, and without one (all of that app server's nodes);
- an error from the app server disables the registration; a 'wait' error does not;
- bad input: no jid (bad-request), a malformed jid (jid-malformed), no node
  (bad-request), a form of another FORM_TYPE (bad-request), a bare account
  (not-acceptable), enable on another account (forbidden): each refused, nothing
  registered, the stream goes on;
- in a cluster: registered through one node, notified for a message that went offline
  through another.
"""

import pytest

from cluster import shared_cluster  # noqa: F401 (fixture)
from rawxmpp import C, new_id, q, stanza_error, tostring

pytestmark = pytest.mark.starling_only

NS_PUSH = "urn:xmpp:push:0"
NS_SM = "urn:xmpp:sm:3"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
NS_INFO = "http://jabber.org/protocol/disco#info"
OPTIONS = (f"<x xmlns='{NS_DATA}' type='submit'>"
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
           "<field var='secret'><value>s3cr3t</value></field></x>")


def enable(c, app, node, form=OPTIONS):
    return c.iq("set", f"<enable xmlns='{NS_PUSH}' jid='{app}' node='{node}'>{form}</enable>")


def disable(c, app, node=None):
    n = f" node='{node}'" if node else ""
    return c.iq("set", f"<disable xmlns='{NS_PUSH}' jid='{app}'{n}/>")


def is_push(node=None):
    def pred(e):
        if e.tag != C("iq") or e.get("type") != "set":
            return False
        pub = e.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}")
        return pub is not None and (node is None or pub.get("node") == node)
    return pred


def summary(iq):
    """The summary form's fields: var -> value."""
    x = iq.find(f".//{q(NS_PUSH, 'notification')}/{q(NS_DATA, 'x')}")
    assert x is not None, tostring(iq)
    return {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))}


def options(iq):
    x = iq.find(f".//{q(NS_PUBSUB, 'publish-options')}/{q(NS_DATA, 'x')}")
    if x is None:
        return None
    return {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))}


def answer(app, iq, error=None):
    if error is None:
        app.send_raw(f"<iq type='result' id='{iq.get('id')}' to='{iq.get('from')}'/>")
    else:
        etype, cond = error
        app.send_raw(f"<iq type='error' id='{iq.get('id')}' to='{iq.get('from')}'>"
                     f"<error type='{etype}'><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                     "</error></iq>")


def parties(server, clients):
    """The app server (a session with a full JID), a sender, and the user's account."""
    app = clients.add(server.online("papp", resource="push"))
    a = clients.add(server.online("pa"))
    jid, _, pw = server.new_user("pu")
    return app, a, jid, pw


def login_sm(server, jid, pw, resource="phone"):
    c = server.client()
    c.start()
    c.auth(jid.split("@")[0], pw)
    c.bind(resource)
    c.send_raw(f"<enable xmlns='{NS_SM}' resume='true'/>")
    e = c.recv(lambda e: e.tag in (q(NS_SM, "enabled"), q(NS_SM, "failed")), what="enabled")
    assert e.tag == q(NS_SM, "enabled"), tostring(e)
    c.presence()
    return c


def drop(c):
    c.sock.close()
    c.closed = True


def test_the_account_advertises_push(server, clients):
    c = clients.add(server.online("pd"))
    r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=c.bare)
    assert r.get("type") == "result", tostring(r)
    assert NS_PUSH in [f.get("var") for f in r.iter(q(NS_INFO, "feature"))], tostring(r)


def test_offline_message_notifies_the_app_server(server, clients):
    app, a, jid, pw = parties(server, clients)
    u = server.login(jid, pw, resource="phone")
    node = "n-" + new_id()
    r = enable(u, app.jid, node)
    assert r.get("type") == "result", tostring(r)
    u.close()
    a.message(jid, "are you there?")
    iq = app.recv(is_push(node), what="push notification")
    assert iq.get("from") == jid, tostring(iq)
    s = summary(iq)
    assert s["FORM_TYPE"] == "urn:xmpp:push:summary", s
    assert s["message-count"] == "1", s
    # private by default: neither sender nor body
    assert "last-message-body" not in s and "last-message-sender" not in s, s
    assert options(iq) == {"FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
                           "secret": "s3cr3t"}, tostring(iq)
    answer(app, iq)
    # a second one counts both waiting messages
    a.message(jid, "hello?")
    iq = app.recv(is_push(node), what="second notification")
    assert summary(iq)["message-count"] == "2", tostring(iq)
    answer(app, iq)
    # a message without a body (a receipt, kept offline) is not worth waking a phone
    # for: the next notification is the marker's, which counts all three
    a.send_raw(f"<message to='{jid}' id='{new_id()}'><received xmlns='urn:xmpp:receipts' id='x'/></message>")
    a.message(jid, "marker")
    got = app.recv(is_push(node), what="marker notification")
    assert summary(got)["message-count"] == "4", tostring(got)
    answer(app, got)
    server.assert_healthy(app, a)


def test_a_detached_session_notifies_for_what_its_client_never_had(server, clients):
    app, a, jid, pw = parties(server, clients)
    u = login_sm(server, jid, pw)
    node = "n-" + new_id()
    assert enable(u, app.jid, node, form="").get("type") == "result"
    # written to the connection, never acknowledged: the connection then dies
    mid = a.message(jid + "/phone", "first")
    u.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="first")
    drop(u)
    iq = app.recv(is_push(node), what="notification for the unacknowledged message", timeout=10)
    assert summary(iq)["message-count"] == "1", tostring(iq)
    assert options(iq) is None, tostring(iq)
    answer(app, iq)
    # queued while detached
    a.message(jid + "/phone", "second")
    iq = app.recv(is_push(node), what="notification while detached", timeout=10)
    assert summary(iq)["message-count"] == "2", tostring(iq)
    answer(app, iq)
    server.assert_healthy(app, a)


def test_disable_stops_notifications(server, clients):
    app, a, jid, pw = parties(server, clients)
    u = clients.add(server.login(jid, pw, resource="phone"))
    n1, n2, n3 = ("n1-" + new_id(), "n2-" + new_id(), "n3-" + new_id())
    for n in (n1, n2, n3):
        assert enable(u, app.jid, n).get("type") == "result"
    assert disable(u, app.jid, n1).get("type") == "result"
    u.close()
    a.message(jid, "one")
    got = {app.recv(is_push(), what="notification").find(f".//{q(NS_PUBSUB, 'publish')}").get("node")
           for _ in range(2)}
    assert got == {n2, n3}, got
    u = clients.add(server.login(jid, pw, resource="phone"))
    # without a node: every node of that app server
    assert disable(u, app.jid).get("type") == "result"
    u.close()
    a.message(jid, "two")
    app.expect_nothing(is_push(), timeout=1.5, what="a notification after disable")
    server.assert_healthy(app, a)


def test_an_error_from_the_app_server_disables_the_registration(server, clients):
    app, a, jid, pw = parties(server, clients)
    u = server.login(jid, pw, resource="phone")
    node = "n-" + new_id()
    assert enable(u, app.jid, node).get("type") == "result"
    u.close()
    a.message(jid, "one")
    answer(app, app.recv(is_push(node), what="first"), error=("wait", "resource-constraint"))
    a.message(jid, "two")  # 'wait' kept it
    answer(app, app.recv(is_push(node), what="second"), error=("cancel", "item-not-found"))
    assert app.ping_server().get("type") == "result"
    a.message(jid, "three")
    app.expect_nothing(is_push(node), timeout=1.5, what="a notification after the error")
    server.assert_healthy(app, a)


@pytest.mark.parametrize("kind,payload,condition", [
    ("set", "<enable xmlns='urn:xmpp:push:0' node='x'/>", ("modify", "bad-request")),
    ("set", "<enable xmlns='urn:xmpp:push:0' jid='a@b@c' node='x'/>", ("modify", "jid-malformed")),
    ("set", "<enable xmlns='urn:xmpp:push:0' jid='APP'/>", ("modify", "bad-request")),
    ("set", "<enable xmlns='urn:xmpp:push:0' jid='APP' node=''/>", ("modify", "bad-request")),
    ("set", "<enable xmlns='urn:xmpp:push:0' jid='APP' node='x'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>urn:example:other</value></field></x></enable>",
     ("modify", "bad-request")),
    ("set", "<disable xmlns='urn:xmpp:push:0'/>", ("modify", "bad-request")),
    ("get", "<enable xmlns='urn:xmpp:push:0' jid='APP' node='x'/>", None),
    # the server answers for a bare account itself: nothing would reach a client
    ("set", "<enable xmlns='urn:xmpp:push:0' jid='BARE' node='x'/>", ("modify", "not-acceptable")),
])
def test_bad_requests_are_refused_and_register_nothing(server, clients, kind, payload, condition):
    app, a, jid, pw = parties(server, clients)
    u = clients.add(server.login(jid, pw, resource="phone"))
    r = u.iq(kind, payload.replace("APP", app.jid).replace("BARE", app.bare))
    assert r.get("type") == "error", tostring(r)
    if condition is not None:
        assert stanza_error(r) == condition, tostring(r)
    # the stream goes on, and nothing was registered
    assert u.ping_server().get("type") == "result"
    u.close()
    a.message(jid, "anyone?")
    app.expect_nothing(is_push(), timeout=1.0, what="a notification for a refused registration")
    server.assert_healthy(app, a)


def test_enable_for_another_account_is_forbidden(server, clients):
    other = clients.add(server.online("po"))
    u = clients.add(server.online("pu"))
    r = u.iq("set", f"<enable xmlns='{NS_PUSH}' jid='push.example' node='x'/>", to=other.bare)
    assert r.get("type") == "error", tostring(r)
    server.assert_healthy(u, other)


@pytest.fixture
def chatty_server(tmp_path_factory):
    """Sender and body in the summary (push.include_sender, push.include_body)."""
    from conftest import make_server
    s = make_server(tmp_path_factory, "pushbody")
    with open(s.config_path, "a") as f:
        f.write("\n[push]\ninclude_sender = true\ninclude_body = true\n")
    s.start()
    yield s
    s.stop()


def test_sender_and_body_when_configured(chatty_server, clients):
    server = chatty_server
    app, a, jid, pw = parties(server, clients)
    u = server.login(jid, pw, resource="phone")
    node = "n-" + new_id()
    assert enable(u, app.jid, node).get("type") == "result"
    u.close()
    a.message(jid, "wherefore art thou")
    s = summary(app.recv(is_push(node), what="notification"))
    assert s.get("last-message-body") == "wherefore art thou", s
    assert s.get("last-message-sender") == a.jid, s


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_registered_on_one_node_notified_through_another(shared_cluster, clients):
    cl = shared_cluster
    app = clients.add(cl[2].online("pcapp", resource="push"))
    sender = clients.add(cl[3].online("pcs"))
    u = cl[1].online("pcu", resource="phone")
    node = "n-" + new_id()
    assert enable(u, app.jid, node).get("type") == "result"
    u.close()
    # through node 3 into offline storage; the registration was written through node 1
    sender.message(u.bare, "via node 3")
    iq = app.recv(is_push(node), what="notification through another node", timeout=15)
    assert iq.get("from") == u.bare, tostring(iq)
    assert summary(iq)["message-count"] == "1", tostring(iq)
    answer(app, iq)
