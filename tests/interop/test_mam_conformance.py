"""XEP-0313 (v1.1, urn:xmpp:mam:2 and #extended) with XEP-0059 paging: the edges of a user
archive query, written from the XEP text — the <fin/> of an empty page, paging off either end,
counts under filters, XEP-0082 dates, the fields a form may carry, notes to self (§4.1.1),
and XEP-0441 preferences. Raw XML throughout.
"""

import pytest

from rawxmpp import q, stanza_error, tostring
from test_mam import NS_MAM, NS_RSM, chat, fake_id, form, mam, mam_error, rsm

pytestmark = [pytest.mark.starling_only, pytest.mark.timeout(120)]

N = 12


@pytest.fixture(scope="module")
def filled(server):
    """b's archive: N messages, from a (even) and c (odd), in order."""
    a, b, c = server.online("ca"), server.online("cb"), server.online("cc")
    for i in range(N):
        chat(a if i % 2 == 0 else c, b, f"n{i}")
    ids = [r.id for r in mam(b, rsm(max_=100))[0]]
    assert len(ids) == N
    yield {"a": a, "b": b, "c": c, "ids": ids}
    for x in (a, b, c):
        x.shutdown()


def bodies(results):
    return [r.body for r in results]


def test_max_zero_gives_the_count_only(filled):
    """XEP-0059 §2.6: <max>0</max> asks for the count: no items, no <first/>/<last/>."""
    results, fin = mam(filled["b"], rsm(max_=0))
    assert results == [] and fin.count == N and fin.first is None and fin.last is None
    results, fin = mam(filled["b"], form({"with": filled["a"].bare}) + rsm(max_=0))
    assert results == [] and fin.count == N // 2


def test_paging_off_either_end(filled):
    b, ids = filled["b"], filled["ids"]
    # After the last: an empty, complete page with the whole count.
    results, fin = mam(b, rsm(max_=5, after=ids[-1]))
    assert results == [] and fin.complete and fin.count == N and fin.first is None
    # Before the first: the same.
    results, fin = mam(b, rsm(max_=5, before=ids[0]))
    assert results == [] and fin.complete and fin.count == N
    # An index past the end.
    results, fin = mam(b, rsm(max_=5, index=N + 3))
    assert results == [] and fin.count == N
    # A page that ends exactly at the end is complete.
    results, fin = mam(b, rsm(max_=4, after=ids[N - 5]))
    assert [r.id for r in results] == ids[N - 4:] and fin.complete
    # The last page (empty <before/>) under a filter: index counts within the filter.
    results, fin = mam(b, form({"with": filled["c"].bare}) + rsm(max_=2, before=""))
    assert bodies(results) == [f"n{N - 3}", f"n{N - 1}"]
    assert fin.count == N // 2 and fin.index == N // 2 - 2 and not fin.complete
    assert (fin.first, fin.last) == (results[0].id, results[-1].id)


def test_flip_page_keeps_the_page_and_its_set(filled):
    """§4.3.3: flipping changes only the order of transmission."""
    b, ids = filled["b"], filled["ids"]
    plain, f1 = mam(b, rsm(max_=4, after=ids[2]))
    flipped, f2 = mam(b, rsm(max_=4, after=ids[2]) + f"<flip-page xmlns='{NS_MAM}'/>")
    assert [r.id for r in plain] == ids[3:7]
    assert [r.id for r in flipped] == ids[6:2:-1]
    assert (f1.first, f1.last, f1.count, f1.index, f1.complete) == \
        (f2.first, f2.last, f2.count, f2.index, f2.complete)


def test_time_window_edges(filled):
    b = filled["b"]
    # start after end: nothing, complete.
    results, fin = mam(b, form({"start": "2030-01-01T00:00:00Z", "end": "2020-01-01T00:00:00Z"}))
    assert results == [] and fin.complete and fin.count == 0
    # XEP-0082 DateTime with an offset and fractional seconds is accepted.
    results, fin = mam(b, form({"start": "2000-01-01T01:00:00.123+01:00"}) + rsm(max_=100))
    assert len(results) == N and fin.complete


@pytest.mark.parametrize("value", ["2020-01-01", "2020-01-01T00:00:00", "20200101T000000Z",
                                   "2020-01-01T25:00:00Z", ""])
def test_malformed_dates_are_bad_request(filled, value):
    """§4.1.2: start/end MUST be XEP-0082 DateTimes (a date alone, no zone: not one). An empty
    value is no constraint."""
    b = filled["b"]
    if value.strip():
        assert mam_error(b, form({"start": value})) == "bad-request"
        assert mam_error(b, form({"end": value})) == "bad-request"
    else:
        results, fin = mam(b, form({"start": value}) + rsm(max_=100))
        assert len(results) == N


def test_fields_the_server_does_not_know(filled):
    """§4.1.5: a form field the server does not recognise is 'feature-not-implemented'
    (include-groupchat is not advertised, so it is one); a wrong FORM_TYPE is bad-request."""
    b = filled["b"]
    assert mam_error(b, form({"unknown": "x"})) == "feature-not-implemented"
    assert mam_error(b, form({"include-groupchat": "true"})) == "feature-not-implemented"
    assert mam_error(b, form({}, form_type="urn:xmpp:mam:tmp")) == "bad-request"
    assert b.ping_server().get("type") == "result"


def test_ids_field(filled):
    b, ids = filled["b"], filled["ids"]
    results, fin = mam(b, form({"ids": [ids[5], ids[1], ids[5]]}))
    assert [r.id for r in results] == [ids[1], ids[5]] and fin.complete and fin.count == 2
    # With RSM: the listed messages are paged like any result set.
    results, fin = mam(b, form({"ids": [ids[1], ids[2], ids[3]]}) + rsm(max_=2))
    assert [r.id for r in results] == ids[1:3] and not fin.complete and fin.count == 3
    results, fin = mam(b, form({"ids": [ids[1], ids[2], ids[3]]}) + rsm(max_=2, after=ids[2]))
    assert [r.id for r in results] == [ids[3]] and fin.complete
    # An id of another archive is not in this one.
    other = mam(filled["a"], rsm(max_=1))[0][0].id
    if other not in ids:
        assert mam_error(b, form({"ids": [other]})) == "item-not-found"
    assert mam_error(b, form({"ids": [fake_id()]})) == "item-not-found"


def test_fin_attributes(filled):
    """§4.3: <fin/> carries complete='true' on the last page, 'false' (or nothing) before; the
    result IQ answers the query's id; results carry the queryid."""
    b, ids = filled["b"], filled["ids"]
    results, fin = mam(b, rsm(max_=3), qid="my-query")
    el = fin.iq.find(q(NS_MAM, "fin"))
    assert el.get("complete") in (None, "false") and el.get("stable") in (None, "true")
    assert all(r.queryid == "my-query" for r in results)
    results, fin = mam(b, rsm(max_=3, after=ids[-4]))
    assert fin.iq.find(q(NS_MAM, "fin")).get("complete") == "true"
    s = fin.iq.find(q(NS_MAM, "fin")).find(q(NS_RSM, "set"))
    assert s.find(q(NS_RSM, "first")).get("index") == str(N - 3)


def test_with_own_jid_is_notes_to_self(server, clients):
    """§4.1.1: 'with' the account's own JID matches only messages it sent to itself."""
    a = clients.add(server.online("ns"))
    b = clients.add(server.online("nt"))
    chat(b, a, "from b")
    mid = a.message(a.bare, "note to self")
    a.recv(lambda e: e.get("id") == mid and e.findtext("{jabber:client}body") == "note to self", timeout=10)
    chat(a, b, "to b")
    results, fin = mam(a, form({"with": a.bare}))
    assert bodies(results) == ["note to self"] and fin.count == 1
    results, _ = mam(a)
    assert bodies(results) == ["from b", "note to self", "to b"]


def test_prefs_errors(server, clients):
    """XEP-0441: 'default' is one of always/never/roster; a set without it, or with a bad JID
    in a list, is bad-request and changes nothing."""
    b = clients.add(server.online("pe"))
    r = b.iq("set", f"<prefs xmlns='{NS_MAM}' default='never'><always/><never/></prefs>")
    assert r.get("type") == "result", tostring(r)
    for bad in (f"<prefs xmlns='{NS_MAM}'><always/><never/></prefs>",
                f"<prefs xmlns='{NS_MAM}' default='always'><always><jid>not a jid@@</jid></always></prefs>"):
        r = b.iq("set", bad)
        assert stanza_error(r)[1] == "bad-request", tostring(r)
    r = b.iq("get", f"<prefs xmlns='{NS_MAM}'/>")
    assert r.find(q(NS_MAM, "prefs")).get("default") == "never"
    server.assert_healthy(b)
