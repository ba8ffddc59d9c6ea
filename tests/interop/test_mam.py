"""XEP-0313 Message Archive Management (urn:xmpp:mam:2, #extended), with XEP-0359 stanza ids,
XEP-0441 preferences and XEP-0059 paging (RSM), against real server processes.

Raw XML wherever the exact bytes matter (ids, ordering of results and <fin/>, error
conditions); slixmpp's xep_0313 / xep_0441 plugins for a client library's view.
"""

import asyncio
import re
import ssl
import time
import uuid

import pytest

from cluster import shared_cluster  # noqa: F401 (fixture)
from conftest import make_server, metric_sum
from im import roster_set
from rawxmpp import C, NS_DELAY, StreamClosed, XMPPTimeout, bare, new_id, q, stanza_error, tostring, xml_escape

pytestmark = [pytest.mark.starling_only, pytest.mark.timeout(180)]

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FWD = "urn:xmpp:forward:0"
NS_SID = "urn:xmpp:sid:0"
NS_DATA = "jabber:x:data"
NS_INFO = "http://jabber.org/protocol/disco#info"


# ----------------------------------------------------------------------------- helpers

def form(fields: dict, form_type: str = NS_MAM, x_type: str = "submit", types: dict = None) -> str:
    """A query form; a value may be a list (several <value/>s)."""
    types = types or {}
    out = [f"<x xmlns='{NS_DATA}' type='{x_type}'>",
           f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"]
    for var, v in fields.items():
        vals = v if isinstance(v, list) else [v]
        t = f" type='{types[var]}'" if var in types else ""
        out.append(f"<field var='{var}'{t}>" + "".join(f"<value>{xml_escape(x)}</value>" for x in vals)
                   + "</field>")
    out.append("</x>")
    return "".join(out)


def rsm(max_=None, after=None, before=None, index=None) -> str:
    parts = []
    if max_ is not None:
        parts.append(f"<max>{max_}</max>")
    if after is not None:
        parts.append(f"<after>{after}</after>")
    if before is not None:
        parts.append("<before/>" if before == "" else f"<before>{before}</before>")
    if index is not None:
        parts.append(f"<index>{index}</index>")
    return f"<set xmlns='{NS_RSM}'>{''.join(parts)}</set>"


class Result:
    def __init__(self, el):
        self.el = el
        r = el.find(q(NS_MAM, "result"))
        self.id = r.get("id")
        self.queryid = r.get("queryid")
        fwd = r.find(q(NS_FWD, "forwarded"))
        assert fwd is not None, tostring(el)
        self.stamp = fwd.find(q(NS_DELAY, "delay")).get("stamp")
        self.msg = fwd.find(C("message"))
        assert self.msg is not None, "forwarded message not in jabber:client: " + tostring(el)
        self.body = self.msg.findtext(C("body"))


class Fin:
    def __init__(self, iq):
        self.iq = iq
        assert iq.get("type") == "result", tostring(iq)
        fin = iq.find(q(NS_MAM, "fin"))
        assert fin is not None, tostring(iq)
        self.complete = fin.get("complete") in ("true", "1")
        s = fin.find(q(NS_RSM, "set"))
        first = s.find(q(NS_RSM, "first"))
        self.first = None if first is None else first.text
        self.index = None if first is None or first.get("index") is None else int(first.get("index"))
        self.last = s.findtext(q(NS_RSM, "last"))
        count = s.findtext(q(NS_RSM, "count"))
        self.count = None if count is None else int(count)


def send_query(c, payload_inner: str = "", to=None, qid=None):
    qid = qid or new_id("q")
    iid = new_id("mam")
    to_attr = f" to='{to}'" if to else ""
    c.send_raw(f"<iq type='set' id='{iid}'{to_attr}><query xmlns='{NS_MAM}' queryid='{xml_escape(qid)}'>"
               f"{payload_inner}</query></iq>")
    return iid, qid


def collect(c, iid, qid, limit=5000, timeout=15):
    """Reads the results of one query in arrival order until its IQ answer; every result
    must come before it."""
    def mine(e):
        if e.tag == C("iq") and e.get("id") == iid:
            return True
        r = e.find(q(NS_MAM, "result")) if e.tag == C("message") else None
        return r is not None and r.get("queryid") == qid
    results = []
    for _ in range(limit + 1):
        e = c.recv(mine, timeout=timeout, what=f"MAM result or answer of {iid}")
        if e.tag == C("iq"):
            return results, e
        results.append(Result(e))
    raise AssertionError(f"more than {limit} results")


def mam(c, inner="", to=None, qid=None):
    """A query expected to succeed: (results, Fin)."""
    iid, qid = send_query(c, inner, to=to, qid=qid)
    results, iq = collect(c, iid, qid)
    assert all(r.queryid == qid for r in results)
    return results, Fin(iq)


def mam_error(c, inner="", to=None):
    iid, qid = send_query(c, inner, to=to)
    results, iq = collect(c, iid, qid)
    assert not results, "results sent before an error"
    err = stanza_error(iq)
    assert err is not None, tostring(iq)
    return err[1]


def stanza_ids(msg, by=None):
    return [s.get("id") for s in msg.findall(q(NS_SID, "stanza-id")) if by is None or s.get("by") == by]


def recv_msg(c, mid, timeout=None):
    return c.recv(lambda e: e.tag == C("message") and e.get("id") == mid, timeout, what=f"message {mid}")


def fake_id() -> str:
    """A well-formed archive id (11 URL-safe base64 characters) no archive has."""
    import base64
    return base64.urlsafe_b64encode(uuid.uuid4().bytes[:8]).decode().rstrip("=")


def chat(a, b, text):
    """a sends a chat message to b's bare JID; returns b's copy."""
    mid = a.message(b.bare, text)
    return recv_msg(b, mid)


# ----------------------------------------------------------------------------- discovery

def test_account_advertises_mam_and_stanza_ids(server, clients):
    """XEP-0313 section 7: the archive is advertised on the account's bare JID."""
    a = clients.add(server.online("md"))
    r = a.iq("get", f"<query xmlns='{NS_INFO}'/>", to=a.bare)
    assert r.get("type") == "result", tostring(r)
    feats = {f.get("var") for f in r.iter(q(NS_INFO, "feature"))}
    assert {NS_MAM, NS_MAM + "#extended", NS_SID} <= feats, feats


def test_form_discovery_lists_the_fields(server, clients):
    """XEP-0313 4.1.5: a query 'get' returns the form, with every mandatory field."""
    a = clients.add(server.online("mf"))
    r = a.iq("get", f"<query xmlns='{NS_MAM}'/>")
    assert r.get("type") == "result", tostring(r)
    x = r.find(f"{q(NS_MAM, 'query')}/{q(NS_DATA, 'x')}")
    fields = {f.get("var"): f for f in x.findall(q(NS_DATA, "field"))}
    assert fields["FORM_TYPE"].findtext(q(NS_DATA, "value")) == NS_MAM
    for var in ("with", "start", "end", "before-id", "after-id", "ids"):
        assert var in fields, var
        assert fields[var].find(q(NS_DATA, "required")) is None
    assert fields["with"].get("type") == "jid-single"
    assert fields["ids"].get("type") == "list-multi"
    assert fields["ids"].find(q("http://jabber.org/protocol/xdata-validate", "validate")) is not None


# ----------------------------------------------------------------------------- archiving

def test_sent_and_received_messages_are_archived_with_the_delivered_stanza_id(server, clients):
    a = clients.add(server.online("sa"))
    b = clients.add(server.online("sb"))
    got = chat(a, b, "hello archive")
    ids = stanza_ids(got, by=b.bare)
    assert len(ids) == 1, tostring(got)
    assert not stanza_ids(got, by=a.bare), "the sender's archive id leaked to the recipient"
    # The recipient's archive: the message as delivered, under the stanza-id's id.
    results, fin = mam(b, qid="q'<&>")
    assert [r.id for r in results] == ids
    r = results[0]
    assert r.queryid == "q'<&>"
    assert r.el.get("to") == b.jid and r.el.get("from") in (None, b.bare), tostring(r.el)
    assert r.body == "hello archive"
    assert r.msg.get("from") == a.jid
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", r.stamp), r.stamp
    assert fin.complete and fin.count == 1 and fin.first == ids[0] and fin.last == ids[0] and fin.index == 0
    # The sender's archive has its own copy; never the recipient's stanza-id.
    sent, fin = mam(a)
    assert len(sent) == 1 and sent[0].body == "hello archive" and fin.complete
    assert sent[0].msg.get("to") == b.bare
    assert not stanza_ids(sent[0].msg, by=b.bare)


@pytest.mark.starling_only
def test_a_client_without_stream_management_is_not_kept_waiting_for_the_archive(server, clients):
    """Between sessions of one node, a message from a client without XEP-0198 is delivered while
    its archive write commits (nothing was acknowledged to it that a crash could break), and the
    recipient's query the moment it has the messages finds them all; a message for offline
    storage still waits for its write."""
    a = clients.add(server.online("nsma"))
    b = clients.add(server.online("nsmb"))
    waited0 = metric_sum(server, "starling_mam_write_seconds_count")
    archived0 = metric_sum(server, "starling_mam_archived_total")
    n = 20
    got = [chat(a, b, f"nosm {i}") for i in range(n)]
    ids = [stanza_ids(m, by=b.bare)[0] for m in got]
    results, fin = mam(b, form({"with": a.bare}))
    assert [r.body for r in results] == [f"nosm {i}" for i in range(n)]
    assert [r.id for r in results] == ids and fin.complete
    # Counted once each write's end reaches the node's follow-up task, a moment after the commit.
    deadline = time.time() + 10
    while metric_sum(server, "starling_mam_archived_total") - archived0 < 2 * n and time.time() < deadline:
        time.sleep(0.05)
    assert metric_sum(server, "starling_mam_archived_total") - archived0 == 2 * n
    assert metric_sum(server, "starling_mam_write_seconds_count") == waited0, \
        "a delivery between sessions of this node waited for its archive write"
    # Offline storage: the write commits before the message is stored.
    c_jid, _, _ = server.new_user("nsmc")
    a.message(c_jid, "for later")
    deadline = time.time() + 10
    while metric_sum(server, "starling_mam_write_seconds_count") == waited0 and time.time() < deadline:
        time.sleep(0.1)
    assert metric_sum(server, "starling_mam_write_seconds_count") == waited0 + 1


def test_every_result_reaches_the_client_before_the_fin(server, clients):
    a = clients.add(server.online("oa"))
    b = clients.add(server.online("ob"))
    n = 40
    mids = [a.message(b.bare, f"order {i}") for i in range(n)]
    for mid in mids:
        recv_msg(b, mid)
    iid, qid = send_query(b, rsm(max_=n))
    results, iq = collect(b, iid, qid)
    assert [r.body for r in results] == [f"order {i}" for i in range(n)]
    Fin(iq)
    b.expect_nothing(lambda e: e.find(q(NS_MAM, "result")) is not None, 0.5, what="result after <fin/>")


def test_client_spoofed_stanza_ids_are_stripped(server, clients):
    """XEP-0359 section 5: a stanza-id naming the recipient's (or sender's) archive is the
    server's to add; one a client sent is removed. Others ride along."""
    a = clients.add(server.online("spa"))
    b = clients.add(server.online("spb"))
    extra = (f"<stanza-id xmlns='{NS_SID}' by='{b.bare}' id='forged-1'/>"
             f"<stanza-id xmlns='{NS_SID}' by='{a.bare}' id='forged-2'/>"
             f"<stanza-id xmlns='{NS_SID}' by='room@conference.elsewhere.example' id='theirs'/>")
    mid = a.message(b.bare, "spoof", extra=extra)
    got = recv_msg(b, mid)
    mine = stanza_ids(got, by=b.bare)
    assert len(mine) == 1 and mine[0] != "forged-1", tostring(got)
    assert not stanza_ids(got, by=a.bare)
    assert stanza_ids(got, by="room@conference.elsewhere.example") == ["theirs"]
    results, _ = mam(b)
    assert [r.id for r in results] == mine
    assert stanza_ids(results[0].msg, by=b.bare) == mine
    # Not even a message the archive keeps out (a headline) carries a forged id.
    mid = a.message(b.bare, "headline", type_="headline", extra=extra)
    got = recv_msg(b, mid)
    assert not stanza_ids(got, by=b.bare) and not stanza_ids(got, by=a.bare)


def test_only_conversation_messages_are_archived(server, clients):
    """XEP-0313 5.1.1: chat and normal messages with a body; not headlines, chat states
    alone, errors, or what a no-store hint (XEP-0334) keeps out."""
    a = clients.add(server.online("ka"))
    b = clients.add(server.online("kb"))
    keep = [a.message(b.bare, "chat body"), a.message(b.bare, "normal body", type_=None)]
    drop = [
        a.message(b.bare, "news", type_="headline"),
        a.message(b.bare, None, extra="<active xmlns='http://jabber.org/protocol/chatstates'/>"),
        a.message(b.bare, "private", extra="<no-store xmlns='urn:xmpp:hints'/>"),
        a.message(b.bare, "private too", extra="<no-permanent-store xmlns='urn:xmpp:hints'/>"),
    ]
    for mid in keep + drop:
        got = recv_msg(b, mid)
        assert bool(stanza_ids(got, by=b.bare)) == (mid in keep), tostring(got)
    a.send_raw(f"<message to='{b.bare}' type='error' id='e1'><error type='cancel'>"
               f"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    assert a.ping_server().get("type") == "result"
    results, fin = mam(b)
    assert [r.body for r in results] == ["chat body", "normal body"]
    assert fin.complete and fin.count == 2


def test_offline_message_is_archived_once_with_the_id_it_is_delivered_with(server, clients):
    a = clients.add(server.online("ofa"))
    bjid, _, bpw = server.new_user("ofb")
    mid = a.message(bjid, "while you were out")
    assert a.ping_server().get("type") == "result"
    b = clients.add(server.login(bjid, bpw, presence=True))
    got = recv_msg(b, mid)
    assert got.find(q(NS_DELAY, "delay")) is not None, tostring(got)
    ids = stanza_ids(got, by=bjid)
    assert len(ids) == 1, tostring(got)
    results, fin = mam(b)
    assert [(r.id, r.body) for r in results] == [(ids[0], "while you were out")]
    assert fin.count == 1


# ----------------------------------------------------------------------------- a large archive

SENDERS = 4
PER_SENDER = 250
TOTAL = SENDERS * PER_SENDER


@pytest.fixture(scope="module")
def big(server):
    """Four senders send 250 chat messages each to one recipient: 1,000 in its archive."""
    senders = [server.online(f"bs{i}_") for i in range(SENDERS)]
    b = server.online("big")
    sent = {}
    try:
        for i, s in enumerate(senders):
            for n in range(PER_SENDER):
                mid = f"big-{i}-{n}"
                s.message(b.bare, f"{i}:{n}", mid=mid)
                sent[mid] = (i, n)
        delivered = {}
        deadline = time.monotonic() + 90
        while len(delivered) < TOTAL:
            assert time.monotonic() < deadline, f"{len(delivered)} of {TOTAL} delivered"
            m = b.recv(lambda e: e.tag == C("message"), timeout=30)
            ids = stanza_ids(m, by=b.bare)
            assert len(ids) == 1, tostring(m)
            delivered[m.get("id")] = ids[0]
        assert set(delivered) == set(sent)
        yield {"b": b, "senders": senders, "delivered": delivered, "sent": sent}
    finally:
        for c in senders + [b]:
            c.shutdown()


def page_forward(c, max_, extra="", limit=100):
    """Pages from the start with RSM after; returns (results, fins)."""
    out, fins, after = [], [], None
    for _ in range(limit):
        results, fin = mam(c, extra + rsm(max_=max_, after=after))
        fins.append(fin)
        out += results
        if fin.complete:
            return out, fins
        assert results, "an empty page that is not complete"
        after = fin.last
    raise AssertionError("paging did not end")


def test_paging_forward_through_a_thousand_messages(big):
    b = big["b"]
    results, fins = page_forward(b, 100)
    ids = [r.id for r in results]
    assert len(ids) == TOTAL and len(set(ids)) == TOTAL, "gap or duplicate"
    assert set(ids) == set(big["delivered"].values())
    # Each sender's messages in the order sent.
    for i in range(SENDERS):
        assert [r.body for r in results if r.body.startswith(f"{i}:")] == [f"{i}:{n}" for n in range(PER_SENDER)]
    # Stamps never go back.
    assert [r.stamp for r in results] == sorted(r.stamp for r in results)
    assert [f.complete for f in fins] == [False] * 9 + [True]
    for k, f in enumerate(fins):
        assert f.count == TOTAL and f.index == 100 * k, (k, f.count, f.index)
        assert f.first == ids[100 * k] and f.last == ids[100 * k + 99]


def test_paging_backward_from_the_last_page(big):
    """RSM: an empty <before/> is the last page; <before>first</before> the page before it.
    Results inside a page stay in chronological order."""
    b = big["b"]
    forward = [r.id for r in page_forward(b, 250)[0]]
    pages, before, end = [], "", len(forward)
    for _ in range(20):
        results, fin = mam(b, rsm(max_=150, before=before))
        assert [r.id for r in results] == forward[end - len(results):end]
        end -= len(results)
        assert fin.index == end
        pages.append(results)
        assert fin.count == TOTAL
        if fin.complete:
            break
        before = fin.first
    assert [len(p) for p in pages] == [150] * 6 + [100]
    assert fin.complete and fin.index == 0
    backward = [r.id for p in reversed(pages) for r in p]
    assert backward == forward


def test_index_max_zero_and_a_too_large_max(big):
    b = big["b"]
    forward = [r.id for r in page_forward(b, 250)[0]]
    results, fin = mam(b, rsm(max_=10, index=500))
    assert [r.id for r in results] == forward[500:510] and fin.index == 500
    results, fin = mam(b, rsm(max_=0))
    assert results == [] and fin.count == TOTAL and not fin.complete
    # A max beyond the server's page is clamped (the page is bounded), not refused.
    results, fin = mam(b, rsm(max_=100000))
    assert 0 < len(results) < TOTAL and not fin.complete
    assert [r.id for r in results] == forward[:len(results)]
    # No RSM at all: the server's page, from the start.
    results, fin = mam(b)
    assert [r.id for r in results] == forward[:len(results)] and not fin.complete


def test_flipped_page_is_the_same_page_reversed(big):
    b = big["b"]
    plain, f1 = mam(b, rsm(max_=7, before=""))
    flipped, f2 = mam(b, rsm(max_=7, before="") + "<flip-page/>")
    assert [r.id for r in flipped] == [r.id for r in reversed(plain)]
    assert (f1.first, f1.last) == (f2.first, f2.last)


def test_with_start_end_and_id_filters(big):
    b, senders = big["b"], big["senders"]
    everything = page_forward(b, 250)[0]
    ids = [r.id for r in everything]
    # with: a bare JID, then a full JID (the sender's resource).
    for s in (senders[1], senders[2]):
        for with_ in (s.bare, s.jid):
            results, fins = page_forward(b, 100, form({"with": with_}))
            assert [r.id for r in results] == [r.id for r in everything if r.msg.get("from") == s.jid]
            assert len(results) == PER_SENDER and fins[0].count == PER_SENDER
    results, fin = mam(b, form({"with": senders[0].bare + "/no-such-resource"}))
    assert results == [] and fin.complete and fin.count == 0
    # start and end are inclusive.
    lo, hi = everything[100], everything[199]
    results, fins = page_forward(b, 250, form({"start": lo.stamp, "end": hi.stamp}))
    assert [r.id for r in results] == ids[100:200] and fins[0].count == 100
    results, _ = page_forward(b, 250, form({"start": everything[-3].stamp}))
    assert [r.id for r in results] == ids[-3:]
    results, _ = mam(b, form({"end": "2001-01-01T00:00:00Z"}))
    assert results == []
    # after-id and before-id (exclusive), alone and together.
    results, _ = page_forward(b, 250, form({"after-id": ids[990]}))
    assert [r.id for r in results] == ids[991:]
    results, fin = mam(b, form({"before-id": ids[5]}))
    assert [r.id for r in results] == ids[:5] and fin.complete
    results, fin = mam(b, form({"after-id": ids[10], "before-id": ids[20]}))
    assert [r.id for r in results] == ids[11:20] and fin.complete and fin.count == 9
    # ids: exactly those, in archive order.
    results, fin = mam(b, form({"ids": [ids[700], ids[3]]}))
    assert [r.id for r in results] == [ids[3], ids[700]] and fin.complete
    # Combined with a time filter and with.
    results, _ = page_forward(b, 250, form({"with": senders[3].bare, "start": lo.stamp, "end": hi.stamp}))
    assert [r.id for r in results] == [r.id for r in everything[100:200] if r.msg.get("from") == senders[3].jid]


def test_metadata_names_the_first_and_last_message(big, server, clients):
    b = big["b"]
    forward = page_forward(b, 250)[0]
    r = b.iq("get", f"<metadata xmlns='{NS_MAM}'/>")
    assert r.get("type") == "result", tostring(r)
    md = r.find(q(NS_MAM, "metadata"))
    start, end = md.find(q(NS_MAM, "start")), md.find(q(NS_MAM, "end"))
    assert (start.get("id"), end.get("id")) == (forward[0].id, forward[-1].id)
    assert start.get("timestamp") == forward[0].stamp and end.get("timestamp") == forward[-1].stamp
    empty = clients.add(server.online("mde"))
    r = empty.iq("get", f"<metadata xmlns='{NS_MAM}'/>")
    assert r.get("type") == "result" and len(list(r.find(q(NS_MAM, "metadata")))) == 0, tostring(r)


# ----------------------------------------------------------------------------- preferences

def prefs_set(c, default, always=(), never=()):
    lst = lambda name, js: f"<{name}>" + "".join(f"<jid>{j}</jid>" for j in js) + f"</{name}>"  # noqa: E731
    return c.iq("set", f"<prefs xmlns='{NS_MAM}' default='{default}'>{lst('always', always)}"
                       f"{lst('never', never)}</prefs>")


def prefs_of(iq):
    p = iq.find(q(NS_MAM, "prefs"))
    assert p is not None, tostring(iq)
    js = lambda name: [j.text for j in p.find(q(NS_MAM, name)).findall(q(NS_MAM, "jid"))]  # noqa: E731
    return p.get("default"), js("always"), js("never")


def archived_bodies(c):
    return [r.body for r in mam(c)[0]]


def test_prefs_get_and_set(server, clients):
    """XEP-0441: the default policy and both lists, always present; a set answers with what
    now applies."""
    b = clients.add(server.online("pg"))
    assert prefs_of(b.iq("get", f"<prefs xmlns='{NS_MAM}'/>")) == ("always", [], [])
    r = prefs_set(b, "roster", always=["romeo@montague.lit"], never=["tybalt@capulet.lit/Sword"])
    assert r.get("type") == "result", tostring(r)
    assert prefs_of(r) == ("roster", ["romeo@montague.lit"], ["tybalt@capulet.lit/Sword"])
    assert prefs_of(b.iq("get", f"<prefs xmlns='{NS_MAM}'/>")) == prefs_of(r)
    bad = prefs_set(b, "sometimes")
    assert stanza_error(bad)[1] == "bad-request", tostring(bad)
    assert prefs_of(b.iq("get", f"<prefs xmlns='{NS_MAM}'/>"))[0] == "roster"


def test_prefs_decide_what_is_archived(server, clients):
    a = clients.add(server.online("pa"))
    c = clients.add(server.online("pc"))
    b = clients.add(server.online("pb"))
    # never by default, with a (bare) on the always list.
    prefs_set(b, "never", always=[a.bare])
    chat(a, b, "from a, kept")
    got = chat(c, b, "from c, not kept")
    assert not stanza_ids(got, by=b.bare)
    assert archived_bodies(b) == ["from a, kept"]
    # c's own archive keeps what c sent (c's preferences are its own).
    assert archived_bodies(c) == ["from c, not kept"]
    # always, with a never list: a's full JID there matches only that resource.
    prefs_set(b, "always", never=[a.jid])
    chat(a, b, "from a, not kept")
    chat(c, b, "from c, kept")
    assert archived_bodies(b) == ["from a, kept", "from c, kept"]
    # roster: only contacts in b's roster.
    prefs_set(b, "roster")
    chat(a, b, "a not in roster")
    assert roster_set(b, a.bare).get("type") == "result"
    b.drain(0.3)
    chat(a, b, "a in roster")
    assert archived_bodies(b)[-1] == "a in roster" and "a not in roster" not in archived_bodies(b)
    # Outgoing messages follow the sender's preferences on the recipient: never with c.
    prefs_set(b, "always", never=[c.bare])
    chat(b, c, "to c")
    chat(b, a, "to a")
    assert archived_bodies(b)[-1] == "to a" and "to c" not in archived_bodies(b)


# ----------------------------------------------------------------------------- bad input

def test_bad_queries_get_the_errors_the_xep_names(server, clients):
    a = clients.add(server.online("ba"))
    b = clients.add(server.online("bb"))
    chat(a, b, "one")
    known = mam(b)[0][0].id
    cases = [
        (form({"start": "yesterday"}), "bad-request"),
        (form({"end": "2020-13-45T99:00:00Z"}), "bad-request"),
        (form({"with": "not a jid@@"}), "bad-request"),
        (form({"start": "2020-01-01T00:00:00Z"}, types={"start": "bogus-type"}), "bad-request"),
        (form({}, form_type="urn:xmpp:mam:1"), "bad-request"),
        (form({"start": ["2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"]}), "bad-request"),
        (form({"{urn:example}unknown-field": "x"}), "feature-not-implemented"),
        (rsm(max_="ten"), "bad-request"),
        (rsm(max_="-1"), "bad-request"),
        (rsm(index="x"), "bad-request"),
        (rsm(after=fake_id()), "item-not-found"),
        (rsm(after="garbage!"), "item-not-found"),
        (rsm(before=fake_id()), "item-not-found"),
        (form({"after-id": fake_id()}), "item-not-found"),
        (form({"before-id": "nope"}), "item-not-found"),
        (form({"ids": [known, fake_id()]}), "item-not-found"),
    ]
    for inner, cond in cases:
        assert mam_error(b, inner) == cond, inner
    # Another user's archive is forbidden; a missing account's is service-unavailable.
    assert mam_error(b, to=a.bare) == "forbidden"
    ghost = f"ghost{uuid.uuid4().hex[:8]}@{server.domain}"
    assert mam_error(b, to=ghost) == "service-unavailable"
    r = b.iq("get", f"<prefs xmlns='{NS_MAM}'/>", to=a.bare)
    assert stanza_error(r)[1] == "forbidden", tostring(r)
    # The connection is unharmed and the archive answers as before.
    assert b.ping_server().get("type") == "result"
    assert mam(b, form({"ids": [known]}))[0][0].body == "one"
    server.assert_healthy(a, b)


# ----------------------------------------------------------------------------- configuration

def server_with(tmp_path_factory, name, extra: str):
    s = make_server(tmp_path_factory, name)
    with open(s.config_path, "a") as f:
        f.write("\n" + extra + "\n")
    s.start()
    return s


def test_archive_off_adds_nothing_and_advertises_nothing(tmp_path_factory, clients):
    s = server_with(tmp_path_factory, "mamoff", "[mam]\nenabled = false")
    try:
        a = clients.add(s.online("fa"))
        b = clients.add(s.online("fb"))
        got = chat(a, b, "not kept")
        assert not got.findall(q(NS_SID, "stanza-id")), tostring(got)
        r = b.iq("get", f"<query xmlns='{NS_INFO}'/>", to=b.bare)
        feats = {f.get("var") for f in r.iter(q(NS_INFO, "feature"))}
        assert NS_MAM not in feats and NS_SID not in feats, feats
        assert mam_error(b) == "service-unavailable"
    finally:
        s.stop()


def test_configured_default_policy_and_account_deletion(tmp_path_factory, clients):
    s = server_with(tmp_path_factory, "mamnever", '[mam]\ndefault_policy = "never"')
    try:
        a = clients.add(s.online("na"))
        b = clients.add(s.online("nb"))
        assert prefs_of(b.iq("get", f"<prefs xmlns='{NS_MAM}'/>")) == ("never", [], [])
        got = chat(a, b, "not kept")
        assert not stanza_ids(got, by=b.bare)
        assert archived_bodies(b) == [] and archived_bodies(a) == []
        prefs_set(b, "always")
        chat(a, b, "kept")
        assert archived_bodies(b) == ["kept"]
        # Deleting the account deletes its archive and preferences.
        b.close()
        s.del_user(b.bare)
        s.add_user(b.bare, b.password)
        b2 = clients.add(s.login(b.bare, b.password))
        assert archived_bodies(b2) == []
        assert prefs_of(b2.iq("get", f"<prefs xmlns='{NS_MAM}'/>"))[0] == "never"
    finally:
        s.stop()


# ----------------------------------------------------------------------------- re-routing

@pytest.fixture
def small_outbox_server(tmp_path_factory):
    s = make_server(tmp_path_factory, "mamout")
    with open(s.config_path) as f:
        cfg = f.read()
    cfg = cfg.replace("[c2s]\n", "[c2s]\nmailbox_size = 64\nmailbox_bytes = 262144\n", 1)
    with open(s.config_path, "w") as f:
        f.write(re.sub(r"max_messages = \d+", "max_messages = 1000", cfg))
    s.start()
    yield s
    s.stop()


def test_a_message_routed_again_after_its_session_ended_is_archived_once(small_outbox_server, clients):
    """Messages queued for a session that stalls and is closed are routed again (here to
    offline storage). Each is in the archive once, and arrives, wherever it arrives, with
    the stanza-id of that one archive entry."""
    server = small_outbox_server
    a = clients.add(server.online("ra"))
    b = clients.add(server.online("rb"))
    b.drain(0.3)
    n, body = 200, "x" * 50_000
    mids = [f"r{i}" for i in range(n)]
    for mid in mids:
        a.send_raw(f"<message to='{b.bare}' type='chat' id='{mid}'><body>{mid}:{body}</body></message>")
    assert a.ping_server(timeout=60).get("type") == "result"
    seen = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            m = b.recv(lambda e: e.tag == C("message"), timeout=max(0.1, deadline - time.monotonic()))
        except (StreamClosed, XMPPTimeout):
            break
        seen[m.get("id")] = stanza_ids(m, by=b.bare)
    assert b.stream_error == "resource-constraint", b.stream_error
    first = len(seen)
    b2 = clients.add(server.login(b.bare, b.password, presence=True))
    while True:
        try:
            m = b2.recv(lambda e: e.tag == C("message"), timeout=3)
        except XMPPTimeout:
            break
        assert m.get("id") not in seen, "delivered twice: " + m.get("id")
        seen[m.get("id")] = stanza_ids(m, by=b.bare)
    assert 0 < first < n and set(seen) == set(mids), f"{first} on the stalled stream, {len(seen)} in all"
    assert all(len(ids) == 1 for ids in seen.values()), "a message with none or several stanza-ids"
    archived = []
    after = None
    for _ in range(10):
        results, fin = mam(b2, rsm(max_=100, after=after))
        archived += results
        if fin.complete:
            break
        after = fin.last
    assert len(archived) == n, f"{len(archived)} archive entries for {n} messages"
    assert {r.id for r in archived} == {ids[0] for ids in seen.values()}
    assert [r.body.split(":")[0] for r in archived] == mids


# ----------------------------------------------------------------------------- slixmpp

slixmpp = pytest.importorskip("slixmpp")


def slix(server, jid, password):
    c = slixmpp.ClientXMPP(jid, password)
    for p in ("xep_0030", "xep_0059", "xep_0313", "xep_0441"):
        c.register_plugin(p)
    c.ssl_context.check_hostname = False
    c.ssl_context.verify_mode = ssl.CERT_NONE
    return c


async def slix_connected(c, server):
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.add_event_handler("failed_auth", lambda _: started.done() or started.set_exception(AssertionError("auth")))
    c.connect(server.host, server.c2s_port)
    await asyncio.wait_for(started, 15)
    c.send_presence()


def test_slixmpp_reads_the_archive_and_sets_preferences(server, clients):
    a = clients.add(server.online("xa"))
    bjid, _, bpw = server.new_user("xb")
    for i in range(12):
        a.message(bjid, f"slix {i}")
    assert a.ping_server().get("type") == "result"

    async def scenario():
        b = slix(server, bjid, bpw)
        await slix_connected(b, server)
        try:
            info = await b["xep_0030"].get_info(jid=bjid, timeout=10)
            assert NS_MAM in info["disco_info"]["features"]
            got = [m["mam_result"]["forwarded"]["stanza"]["body"]
                   async for m in b["xep_0313"].iterate(with_jid=slixmpp.JID(a.bare), rsm={"max": 5})]
            assert got == [f"slix {i}" for i in range(12)], got
            # (slixmpp's reverse iterator stops after its first page, whose RSM index plus
            # size is the count: it reads that as the end; backward paging is checked raw.)
            got = [m["mam_result"]["forwarded"]["stanza"]["body"]
                   async for m in b["xep_0313"].iterate(rsm={"max": 5}, total=7)]
            assert got == [f"slix {i}" for i in range(7)], got
            default, always, never = await b["xep_0441"].get_preferences(timeout=10)
            assert (default, set(always), set(never)) == ("always", set(), set())
            await b["xep_0441"].set_preferences(default="roster", always=[slixmpp.JID(a.bare)], never=[],
                                                timeout=10)
            default, always, never = await b["xep_0441"].get_preferences(timeout=10)
            assert default == "roster" and {str(j) for j in always} == {a.bare} and not never
        finally:
            b.disconnect()
            await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 60))


# ----------------------------------------------------------------------------- cluster

@pytest.mark.cluster
def test_archive_is_one_across_a_three_node_cluster(shared_cluster, clients):
    """alice on node 1 writes to bob on node 2; both archives are read through node 3 (and
    bob's also through node 1), with the ids bob's message was delivered with."""
    from cluster import online_on, relogin
    cl = shared_cluster
    alice = clients.add(online_on(cl[1], "ca"))
    bob = clients.add(online_on(cl[2], "cb"))
    # Readers logged in beforehand on the other nodes, so that the queries follow the
    # deliveries at once.
    readers = {n: clients.add(relogin(cl[n], bob, resource=f"reader{n}", presence=False)) for n in (3, 1)}
    bob.drain(0.3)
    delivered = {}
    for i in range(5):
        m = chat(alice, bob, f"across {i}")
        ids = stanza_ids(m, by=bob.bare)
        assert len(ids) == 1, tostring(m)
        delivered[ids[0]] = f"across {i}"
        # Archived through node 1, read at once through node 3.
        results, _ = mam(readers[3], rsm(max_=1, before=""))
        assert [r.id for r in results] == ids
    for node, reader in readers.items():
        results, fin = mam(reader)
        assert [(r.id, r.body) for r in results] == list(delivered.items()), node
        assert fin.complete and fin.count == 5
        page, fin = mam(reader, rsm(max_=2, before=""))
        assert [r.id for r in page] == list(delivered)[-2:] and fin.index == 3
    a3 = clients.add(relogin(cl[3], alice, resource="reader", presence=False))
    sent, fin = mam(a3, form({"with": bob.bare}))
    assert [r.body for r in sent] == list(delivered.values()) and fin.complete
    # Messages archived through several nodes interleave in one time order, ids unique.
    bob.message(alice.bare, "reply from node 2")
    recv_msg_body = alice.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == "reply from node 2")
    assert stanza_ids(recv_msg_body, by=alice.bare)
    everything, _ = mam(a3)
    assert [r.body for r in everything] == list(delivered.values()) + ["reply from node 2"]
    assert len({r.id for r in everything}) == len(everything)
