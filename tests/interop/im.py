"""Helpers for RFC 6121 tests (roster pushes, subscriptions, presence)."""

from rawxmpp import C, NS_ROSTER, bare, new_id, q, tostring

RI = q(NS_ROSTER, "item")
RQ = q(NS_ROSTER, "query")


def roster_get(c, ver=None):
    v = "" if ver is None else f" ver='{ver}'"
    r = c.iq("get", f"<query xmlns='{NS_ROSTER}'{v}/>")
    assert r.get("type") == "result", tostring(r)
    return r


def roster_items(iq_result) -> dict:
    qel = iq_result.find(RQ)
    if qel is None:
        return {}
    return {i.get("jid"): i for i in qel.findall(RI)}


def roster_set(c, jid, name=None, groups=(), remove=False):
    attrs = f" jid='{jid}'" + (f" name='{name}'" if name else "") + (" subscription='remove'" if remove else "")
    inner = "".join(f"<group>{g}</group>" for g in groups)
    r = c.iq("set", f"<query xmlns='{NS_ROSTER}'><item{attrs}>{inner}</item></query>")
    return r


def is_push(e, jid=None):
    if e.tag != C("iq") or e.get("type") != "set":
        return False
    qel = e.find(RQ)
    if qel is None:
        return False
    if jid is None:
        return True
    return any(i.get("jid") == jid for i in qel.findall(RI))


def recv_push(c, jid, timeout=None, ack=True):
    """Wait for a roster push about jid; returns the <item/>. Answers it (RFC 6121 2.1.6)."""
    e = c.recv(lambda e: is_push(e, jid), timeout, what=f"roster push for {jid}")
    if e.get("from") not in (None, bare(c.jid)):
        raise AssertionError("roster push from a third party: " + tostring(e))
    if ack:
        c.send_raw(f"<iq type='result' id='{e.get('id')}'/>")
    item = [i for i in e.find(RQ).findall(RI) if i.get("jid") == jid][0]
    return item


def recv_push_until(c, jid, **attrs):
    """Consume pushes for jid until one matches the attributes (servers may send intermediate ones)."""
    while True:
        item = recv_push(c, jid)
        if all(item.get(k) == v for k, v in attrs.items()):
            return item


def is_presence(e, from_=None, type_=None, to_bare=False):
    if e.tag != C("presence"):
        return False
    if type_ != "*" and e.get("type") != type_:
        return False
    if from_ is not None:
        f = e.get("from") or ""
        if to_bare:
            if bare(f) != from_:
                return False
        elif f != from_:
            return False
    return True


def recv_presence(c, from_, type_=None, timeout=None, by_bare=False):
    return c.recv(lambda e: is_presence(e, from_, type_, by_bare), timeout,
                  what=f"presence type={type_} from {from_}")


def no_presence(c, from_, type_=None, timeout=0.7, by_bare=True):
    c.expect_nothing(lambda e: is_presence(e, from_, type_, by_bare), timeout,
                     what=f"presence type={type_} from {from_}")


def make_mutual(a, b):
    """Establish subscription=both between two online clients (protocol only)."""
    for x, y in ((a, b), (b, a)):
        x.presence(to=bare(y.jid), type_="subscribe")
        recv_presence(y, bare(x.jid), "subscribe", by_bare=True)
        y.presence(to=bare(x.jid), type_="subscribed")
        recv_push_until(x, bare(y.jid), subscription="to" if x is a else "both")
    # let the resulting presence/pushes settle, then discard them
    a.drain(0.3)
    b.drain(0.3)
