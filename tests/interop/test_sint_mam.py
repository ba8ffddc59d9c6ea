"""Port of Smack's MamIntegrationTest (XEP-0313, Smack's reference version 0.6.3) to raw XML.

What Smack's MamManager does, step by step:
- the class is 'not possible' unless the account's disco#info lists urn:xmpp:mam:2 (or an
  older namespace); then it enables archiving of every message with a XEP-0441 <prefs
  default='always'/> set, tolerating only <feature-not-implemented/>;
- mamTest: conOne sends a message (no type, to conTwo's bare JID); once conTwo has it, conTwo
  asks for the last page of one message 'with' conOne's bare JID and finds that message with
  its original id, body, 'from' conOne's full JID and 'to' conTwo's bare JID;
- mamPageTest: the archive id of conTwo's newest message is read (last page of size 1, maybe
  empty), 30 messages from conOne follow, then pages of 10 'after' that id: the first and
  second pages are not complete, the third (the last ten) is, and the bodies come in the
  order they were sent.
"""

import pytest

from rawxmpp import C, bare, q, tostring
from test_mam import NS_MAM, NS_INFO, Fin, collect, form, recv_msg, rsm, send_query
from test_sint_helpers import rnd

pytestmark = [pytest.mark.timeout(120)]


def mam_supported(c):
    r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=c.bare)
    feats = {f.get("var") for f in r.iter(q(NS_INFO, "feature"))} if r.get("type") == "result" else set()
    return bool(feats & {NS_MAM, "urn:xmpp:mam:1", "urn:xmpp:mam:0"})


def enable_for_all(c):
    """MamManager.enableMamForAllMessages: prefs default='always' (XEP-0441), kept lists."""
    r = c.iq("get", f"<prefs xmlns='{NS_MAM}'/>")
    if r.get("type") == "error":
        from test_sint_helpers import error_condition
        assert error_condition(r) == "feature-not-implemented", tostring(r)
        return
    p = r.find(q(NS_MAM, "prefs"))
    assert p is not None, tostring(r)
    keep = p.find(q(NS_MAM, "always"))
    always = "".join(f"<jid>{j.text}</jid>" for j in keep.iter(q(NS_MAM, "jid"))) if keep is not None else ""
    r = c.iq("set", f"<prefs xmlns='{NS_MAM}' default='always'><always>{always}</always><never/></prefs>")
    assert r.get("type") == "result", tostring(r)
    got = r.find(q(NS_MAM, "prefs"))
    assert got is not None and got.get("default") == "always", tostring(r)


def query(c, with_=None, max_=None, after=None, before=None):
    fields = {"with": with_} if with_ else {}
    inner = (form(fields) if fields else "") + rsm(max_=max_, after=after, before=before)
    iid, qid = send_query(c, inner)
    results, iq = collect(c, iid, qid)
    assert all(r.queryid == qid for r in results)
    return results, Fin(iq)


def setup(server, clients):
    one = clients.add(server.online("sintmam1"))
    two = clients.add(server.online("sintmam2"))
    if not mam_supported(two):
        pytest.fail("Smack marks MamIntegrationTest 'not possible': the account does not advertise XEP-0313")
    enable_for_all(two)
    return one, two


def test_mam(server, clients):
    """MamIntegrationTest.mamTest: the message conOne sent to conTwo's bare JID is the last
    message of conTwo's archive 'with' conOne (XEP-0313 4.1, 4.3 'with', RSM last page), with
    the id, body, 'from' and 'to' it was sent with."""
    one, two = setup(server, clients)
    text = f"Test MAM message ({rnd()})"
    mid = one.message(two.bare, text, type_=None)
    m = recv_msg(two, mid)
    assert m.findtext(C("body")) == text
    results, fin = query(two, with_=one.bare, max_=1, before="")
    assert len(results) == 1, [r.body for r in results]
    got = results[0].msg
    assert got.get("id") == mid, tostring(got)
    assert results[0].body == text, tostring(got)
    assert got.get("from") == one.jid, tostring(got)
    assert got.get("to") == two.bare, tostring(got)


def latest_uid(c):
    """MamManager.getMessageUidOfLatestMessage: the result id of the last page of size 1."""
    results, _ = query(c, max_=1, before="")
    return results[0].id if results else None


@pytest.mark.parametrize("earlier", [False, True], ids=["empty-archive", "after-earlier-message"])
def test_mam_page(server, clients, earlier):
    """MamIntegrationTest.mamPageTest: 30 messages, read as 3 pages of 10 'after' the archive
    id of the newest message before them; only the last page is complete (XEP-0313 4.4 / XEP-0059
    2.2), and the bodies come in sending order."""
    one, two = setup(server, clients)
    if earlier:
        mid = one.message(two.bare, f"before the pages {rnd()}", type_=None)
        recv_msg(two, mid)
    last_uid = latest_uid(two)
    assert (last_uid is not None) == earlier
    run = rnd()
    sent = [f"MAM Page Test {run} {i + 1}" for i in range(30)]
    for text in sent:
        one.message(two.bare, text, type_=None)
    two.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == sent[-1], 10, what="the last message")

    pages = []
    after = last_uid
    for n in range(3):
        results, fin = query(two, with_=one.bare, max_=10, after=after)
        assert len(results) == 10, f"page {n + 1}: {len(results)} messages"
        if n == 2:
            assert fin.complete, f"the last page is not marked complete: {tostring(fin.iq)}"
        else:
            assert not fin.complete, f"page {n + 1} of 3 is marked complete: {tostring(fin.iq)}"
        pages.extend(results)
        last = fin.iq.find(q(NS_MAM, "fin")).find("{http://jabber.org/protocol/rsm}set")
        after = last.findtext("{http://jabber.org/protocol/rsm}last")
        assert after == results[-1].id, tostring(fin.iq)
    assert [r.body for r in pages] == sent
    assert all(r.msg.get("from") == one.jid and bare(r.msg.get("to")) == two.bare for r in pages)
