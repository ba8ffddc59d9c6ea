"""Shared helpers for the test_sint_* files (no tests in here).

The test_sint_* files port the public "XMPP interop tests" (Smack-based, by Guus der
Kinderen) to raw XML: one file per RFC section / Java class, each test carrying the
quoted RFC sentence the Java test asserts. Where the Java suite synchronises with
"stop" marker stanzas instead of timeouts, so do these helpers.
"""

import os
import time

from rawxmpp import C, NS_STANZAS, XMPPTimeout, new_id, tostring, xml_escape

TEST_NS = "urn:xmpp-interop:test:0"  # the made-up IQ namespace of the Java suite
PING = "<ping xmlns='urn:xmpp:ping'/>"

# the priority sets of the Java 8.5.2.x / 8.5.3.x tests, by Java method-name suffix
PRIOS = [
    ("OneResourcePrioPositive", [1]),
    ("OneResourcePrioZero", [0]),
    ("OneResourcePrioNegative", [-1]),
    ("MultipleResourcesPrioPositive", [1, 1, 1]),
    ("MultipleResourcesPrioPositiveAndNegative", [1, 1, -1, 1]),
    ("MultipleResourcesPrioDifferentPositive", [3, 1, 2]),
    ("MultipleResourcesPrioDifferentPositiveAndNegative", [1, 2, -1, 3]),
    ("MultipleResourcesPrioZero", [0, 0, 0]),
    ("MultipleResourcesPrioZeroAndNegative", [0, 0, -1, 0]),
    ("MultipleResourcesPrioDifferentNonNegative", [3, 1, 0]),
    ("MultipleResourcesPrioDifferentNonNegativeAndNegative", [1, 0, -1, 3]),
    ("MultipleResourcesPrioNegative", [-1, -1, -1]),
]
IDS = [p[0] for p in PRIOS]
VALS = [p[1] for p in PRIOS]


def rnd(n=9):
    return os.urandom(n).hex()[:n]


def user_resources(server, clients, priorities, prefix="sint"):
    """One account with one available resource per priority (like the Java doTest fixture:
    every resource is logged in, has requested the roster, and has sent presence with the
    given priority; the server's reflection of that presence has been received)."""
    jid, user, pw = server.new_user(prefix)
    res = []
    for i, p in enumerate(priorities):
        c = clients.add(server.login(jid, pw, resource=f"r{i}-{rnd(5)}", priority=p))
        c.password = pw
        c.bare = jid
        res.append(c)
    time.sleep(0.1)
    for c in res:
        c.drain(0.05)
    return jid, pw, res


def is_msg_body(body, from_=None, type_="*"):
    def pred(e):
        if e.tag != C("message") or e.findtext(C("body")) != body:
            return False
        if from_ is not None and e.get("from") != from_:
            return False
        if type_ != "*" and e.get("type") != type_:
            return False
        return True
    return pred


def take_all(c, pred):
    """Remove and return every already-queued element matching pred."""
    got = [e for e in c.queue if pred(e)]
    for e in got:
        c.queue.remove(e)
    return got


def stop_markers(sender, resources, timeout=5.0, grace=0.2):
    """Java-suite barrier: the sender sends a 'stop' message to each resource's full JID
    and waits until each has it (so anything sent before has been routed); then the first
    resource sends a 'stop' back, so any error for the sender has arrived too."""
    needle = "STOP LISTENING, STANZAS HAVE BEEN PROCESSED " + rnd(7)
    for r in resources:
        sender.send_raw(f"<message to='{r.jid}' id='{new_id('stop')}'><body>{needle}</body></message>")
    for r in resources:
        r.recv(is_msg_body(needle, from_=sender.jid), timeout, what="stop marker")
    back = "STOP LISTENING, ALL RECIPIENTS ARE DONE " + rnd(7)
    resources[0].send_raw(f"<message to='{sender.jid}' id='{new_id('stop')}'><body>{back}</body></message>")
    sender.recv(is_msg_body(back), timeout, what="stop marker back to sender")
    # a short grace period for servers that do not preserve order across routes
    for c in [sender, *resources]:
        try:
            c._read_some(time.monotonic() + grace / (len(resources) + 1))
        except Exception:
            pass


def self_ping_barrier(c, timeout=5.0):
    """Java-suite barrier of 8.5.1: ping one's own full JID and answer it; when the result
    arrives, everything sent before has been processed."""
    iid = new_id("selfping")
    c.send_raw(f"<iq type='get' id='{iid}' to='{c.jid}'>{PING}</iq>")
    req = c.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") == "get",
                 timeout, what="own ping request")
    c.send_raw(f"<iq type='result' id='{iid}' to='{req.get('from') or c.jid}'/>")
    c.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") in ("result", "error"),
           timeout, what="own ping result")
    time.sleep(0.1)
    c._read_some(time.monotonic() + 0.2)


def error_condition(el):
    err = el.find(C("error"))
    if err is None:
        return None
    for child in err:
        if child.tag.startswith("{" + NS_STANZAS + "}") and not child.tag.endswith("}text"):
            return child.tag.rsplit("}", 1)[1]
    return None


def iq_reply(c, iid, timeout=5.0):
    try:
        return c.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") in ("result", "error"),
                      timeout, what=f"iq reply {iid}")
    except XMPPTimeout:
        return None


def desc(el):
    return tostring(el)[:600]


def body(text):
    return f"<body>{xml_escape(text)}</body>"


# ------------------------------------------------------------------ roster helpers
def roster_push_pred(jid=None):
    from im import is_push
    return lambda e: is_push(e, jid)


def recv_roster_push(c, jid, timeout=5.0):
    """Wait for a roster push about jid, acknowledge it, return the whole <iq/>."""
    from im import recv_push  # noqa: F401  (same semantics; we want the iq, too)
    e = c.recv(roster_push_pred(jid), timeout, what=f"roster push for {jid}")
    c.send_raw(f"<iq type='result' id='{e.get('id')}'/>")
    return e


def push_item(iq, jid):
    from im import RI, RQ
    return [i for i in iq.find(RQ).findall(RI) if i.get("jid") == jid][0]


def subscribe_to(a, b):
    """a gets a subscription to b's presence (b approves); both sides settle."""
    from im import recv_presence, recv_push_until
    a.send_raw(f"<presence to='{bare_jid(b)}' type='subscribe'/>")
    recv_presence(b, bare_jid(a), "subscribe", by_bare=True)
    b.send_raw(f"<presence to='{bare_jid(a)}' type='subscribed'/>")
    while True:
        item = recv_push_until_any(a, bare_jid(b))
        if item.get("subscription") in ("to", "both"):
            break
    time.sleep(0.2)
    a.drain(0.2)
    b.drain(0.2)


def recv_push_until_any(c, jid):
    from im import recv_push
    return recv_push(c, jid)


def bare_jid(c):
    return c.jid.split("/", 1)[0]


# priority sets of the Java 8.5.3.2.x tests (including "no resource at all")
PRIOS2 = [
    ("NoResource", []),
    ("OneResourcePrioPositive", [1]),
    ("OneResourcePrioZero", [0]),
    ("OneResourcePrioNegative", [-1]),
    ("MultipleResourcesPrioPositive", [1, 1]),
    ("MultipleResourcesPrioPositiveAndNegative", [1, -1]),
    ("MultipleResourcesPrioDifferentPositive", [3, 1]),
    ("MultipleResourcesPrioZero", [0, 0]),
    ("MultipleResourcesPrioZeroAndNegative", [0, -1]),
    ("MultipleResourcesPrioDifferentNonNegative", [3, 0]),
    ("MultipleResourcesPrioDifferentNonNegativeAndNegative", [1, -1]),
    ("MultipleResourcesPrioNegative", [-1, -1]),
]
IDS2 = [p[0] for p in PRIOS2]
VALS2 = [p[1] for p in PRIOS2]


def user_with_resources_or_none(server, clients, prios):
    """Like user_resources, but an empty list gives an existing account with no session."""
    if not prios:
        jid, user, pw = server.new_user("sint")
        return jid, pw, []
    return user_resources(server, clients, prios)


def barrier(server, clients, sender, resources, timeout=5.0):
    """Java 8.5.3.2.x barrier: 'stop' to every resource (if any), then a 'stop' from a third
    user (conThree) back to the sender."""
    needle = "STOP LISTENING, STANZAS HAVE BEEN PROCESSED " + rnd(7)
    for r in resources:
        sender.send_raw(f"<message to='{r.jid}' id='{new_id('stop')}'><body>{needle}</body></message>")
    for r in resources:
        r.recv(is_msg_body(needle, from_=sender.jid), timeout, what="stop marker")
    three = clients.add(server.online("sint3"))
    back = "STOP LISTENING, ALL RECIPIENTS ARE DONE " + rnd(7)
    three.send_raw(f"<message to='{sender.jid}' id='{new_id('stop')}'><body>{back}</body></message>")
    sender.recv(is_msg_body(back), timeout, what="stop marker back to sender")
    for c in [sender, *resources]:
        try:
            c._read_some(time.monotonic() + 0.05)
        except Exception:
            pass


NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


def disco_info(c, to):
    iid = new_id("disco")
    t = f" to='{to}'" if to else ""
    c.send_raw(f"<iq type='get' id='{iid}'{t}><query xmlns='{NS_DISCO_INFO}'/></iq>")
    return iq_reply(c, iid)


def server_features(c, domain):
    r = disco_info(c, domain)
    if r is None or r.get("type") != "result":
        return set()
    q = r.find(f"{{{NS_DISCO_INFO}}}query")
    return {f.get("var") for f in q.findall(f"{{{NS_DISCO_INFO}}}feature")} if q is not None else set()
