"""Nothing acknowledged is lost when the server is killed with SIGKILL.

A session handles its stanzas in order and a stored stanza is committed to
the Raft log (and fsynced) before the next one is read, so the reply to an
IQ sent after a batch of messages acknowledges the whole batch. With stream
management, a message to a session of the same node may be delivered before
its archive write commits; the server's h then counts it only once it is.
"""

import os
import signal
import time

import pytest

from conftest import OFFLINE_MAX
from im import make_mutual
from rawxmpp import C, tostring

# The test server keeps OFFLINE_MAX offline messages per user.
N = OFFLINE_MAX


def kill9_and_restart(srv):
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)
    srv.start()


@pytest.mark.starling_only
def test_offline_messages_accounts_and_rosters_survive_kill9(fresh_server, clients):
    srv = fresh_server
    a = clients.add(srv.online("dura"))
    b = clients.add(srv.online("durb"))
    make_mutual(a, b)
    b_jid, b_pw = b.bare, b.password
    b.close()
    a.drain(0.3)
    ids = [a.message(b_jid, f"kept {i}") for i in range(N)]
    # The ping reply comes after every message above was stored.
    assert a.ping_server().get("type") == "result"
    kill9_and_restart(srv)

    b2 = clients.add(srv.login(b_jid, b_pw, resource="again"))
    roster = b2.iq("get", "<query xmlns='jabber:iq:roster'/>")
    items = {i.get("jid"): i.get("subscription") for i in roster.iter("{jabber:iq:roster}item")}
    assert items.get(a.bare) == "both", tostring(roster)
    b2.presence()
    got = []
    while len(got) < N:
        m = b2.recv_stanza("message", timeout=10)
        got.append(m.get("id"))
        assert m.find("{urn:xmpp:delay}delay") is not None, tostring(m)
    assert got == ids, "offline messages lost or reordered across SIGKILL"
    # Delivered messages are gone from storage: a new session gets none.
    b2.close()
    b3 = clients.add(srv.login(b_jid, b_pw, resource="third"))
    b3.presence()
    b3.expect_nothing(lambda e: e.tag == C("message"), timeout=1.0, what="redelivered message")


@pytest.mark.starling_only
def test_account_created_just_before_kill9_survives(fresh_server, clients):
    srv = fresh_server
    jid, user, pw = srv.new_user("late")
    kill9_and_restart(srv)
    c = clients.add(srv.login(jid, pw))
    assert c.ping_server().get("type") == "result"


def _last_status(srv, clients, viewer_jid, viewer_pw, target):
    v = clients.add(srv.login(viewer_jid, viewer_pw, resource="lastq"))
    r = v.iq("get", "<query xmlns='jabber:iq:last'/>", to=target)
    assert r.get("type") == "result", tostring(r)
    q = r.find("{jabber:iq:last}query")
    return int(q.get("seconds")), (q.text or "")


@pytest.mark.starling_only
def test_last_activity_survives_kill9_after_a_second(fresh_server, clients):
    """XEP-0012 records are written behind, at most a second after the logout
    (storage.rs, record_last_activity): one that old survives SIGKILL."""
    srv = fresh_server
    a = clients.add(srv.online("lastka"))
    b = clients.add(srv.online("lastkb"))
    make_mutual(a, b)
    a_jid, a_pw = a.bare, a.password
    b.presence(type_="unavailable", status="gone before the crash")
    b.close()
    a.close()
    time.sleep(2.5)
    kill9_and_restart(srv)
    secs, status = _last_status(srv, clients, a_jid, a_pw, b.bare)
    assert status == "gone before the crash"
    assert secs >= 2


@pytest.mark.starling_only
def test_last_activity_written_at_graceful_stop(fresh_server, clients):
    """A logout right before a clean stop (SIGTERM) is not lost: the records kept
    behind are written before the store closes."""
    srv = fresh_server
    a = clients.add(srv.online("lastga"))
    b = clients.add(srv.online("lastgb"))
    make_mutual(a, b)
    a_jid, a_pw = a.bare, a.password
    a.close()
    b.presence(type_="unavailable", status="gone right before the stop")
    b.close()
    os.kill(srv.proc.pid, signal.SIGTERM)
    srv.proc.wait(20)
    srv.start()
    _, status = _last_status(srv, clients, a_jid, a_pw, b.bare)
    assert status == "gone right before the stop"


@pytest.mark.starling_only
def test_messages_the_server_acked_are_archived_across_kill9(fresh_server, clients):
    """XEP-0198: the h the server reports counts a message only once it is in the archive,
    although a recipient on the same node gets it before the archive write commits."""
    from test_mam import NS_MAM, mam
    from test_sm import ack_h, login_sm
    srv = fresh_server
    a_jid, _, a_pw = srv.new_user("durackeda")
    b = clients.add(srv.online("durackedb"))
    b_jid, b_pw = b.bare, b.password
    a, _ = login_sm(srv, a_jid, a_pw)
    n = 30
    for i in range(n):
        a.message(b_jid, f"acked {i}")
    # The ack is asked for at once and the server killed the moment it answers.
    assert ack_h(a) == n + 1
    kill9_and_restart(srv)
    b2 = clients.add(srv.login(b_jid, b_pw, resource="after"))
    results, _ = mam(b2, f"<x xmlns='jabber:x:data' type='submit'>"
                         f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
                         f"<field var='with'><value>{a_jid}</value></field></x>")
    assert [r.body for r in results] == [f"acked {i}" for i in range(n)]
