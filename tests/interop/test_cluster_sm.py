"""XEP-0198 resumption anywhere in a 3-node cluster (issue 10, items 2 and 3): a session
resumes through another node than the one that held it, and after that node was killed
with SIGKILL; what the client had not acknowledged comes from the message archive."""

import time

import pytest

from cluster import cluster, shared_cluster  # noqa: F401 (fixtures)
from rawxmpp import C, tostring
from test_sm import NS_SM, bodies, drop, login_sm, resume, sm

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(180)]


def settle_acks(c, n_received):
    """Acks everything received, then pings (one more stanza received) and lets the node
    record it (checkpoints are written at most every 250 ms)."""
    c.send_raw(f"<a xmlns='{NS_SM}' h='{n_received}'/>")
    assert c.ping_server().get("type") == "result"
    time.sleep(0.6)


def test_resume_through_another_node(shared_cluster, clients):
    cl = shared_cluster
    sender = clients.add(cl[2].online("csa"))
    jid, _, pw = cl[1].new_user("csr")
    c, enabled = login_sm(cl[1], jid, pw)
    clients.add(c)
    for i in range(10):
        sender.message(jid, f"m{i}")
    got = bodies(c, 10)
    received = 1 + 10  # own presence and ten messages
    c.send_raw(f"<a xmlns='{NS_SM}' h='4'/>")  # acknowledges only part of them
    drop(c)
    for i in range(10, 20):
        sender.message(jid, f"m{i}")
    assert sender.ping_server().get("type") == "result"
    t0 = time.monotonic()
    c3, r = resume(cl[3], jid, pw, enabled.get("id"), received)
    clients.add(c3)
    took = time.monotonic() - t0
    assert r.tag == sm("resumed"), tostring(r)
    assert r.get("previd") == enabled.get("id")
    assert int(r.get("h")) == 1, "the node that held it handled one stanza of ours"
    replayed = []
    for _ in range(10):
        m = c3.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None,
                    what="a replayed message")
        replayed.append(m)
        got.append(m.findtext(C("body")))
    assert got == [f"m{i}" for i in range(20)], got
    # sent late, so stamped with when they came (XEP-0203)
    assert all(m.find("{urn:xmpp:delay}delay") is not None for m in replayed), tostring(replayed[0])
    c3.expect_nothing(lambda e: e.tag == C("message"), 0.7, what="a duplicate")
    # the session lives on node 3 now: same full JID, reachable from node 2
    mid = sender.message(c.jid, "after the move")
    assert c3.recv_stanza("message", id=mid).get("to") == c.jid
    cl.figure("sm_resume_other_node_s", round(took, 3), "s")


def test_resume_after_the_hosting_node_was_killed(cluster, clients):
    """200 messages around a kill -9 of the node that holds the session: after resuming on
    a survivor the client has every one that the server accepted; duplicates are counted
    (only messages received after the last acknowledgement the dead node recorded can
    come twice) and reported."""
    cl = cluster
    sender = clients.add(cl[2].online("cka"))
    jid, _, pw = cl[1].new_user("ckv")
    c, enabled = login_sm(cl[1], jid, pw)
    clients.add(c)
    # 100 messages, received and acknowledged
    for i in range(100):
        sender.message(jid, f"k{i}")
    got = bodies(c, 100, timeout=30)
    received = 1 + 100
    settle_acks(c, received)
    received += 1  # the ping's result
    # 50 more, received (most of them) but not acknowledged, then the node dies
    for i in range(100, 150):
        sender.message(jid, f"k{i}")
    assert sender.ping_server().get("type") == "result"
    while True:
        try:
            m = c.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None, 0.5)
        except AssertionError:
            break
        got.append(m.findtext(C("body")))
        received += 1
    t_kill = cl.kill9(1)
    drop(c)
    # 50 more while the user's node is dead; those the cluster cannot take while it elects
    # a new leader come back as errors: not accepted, so not owed
    for i in range(150, 200):
        sender.message(jid, f"k{i}")
    # Answered after the 50 messages: the first may wait for the election (a write waits up
    # to 5 s for a leader), longer than the client's default timeout on a loaded machine.
    assert sender.ping_server(timeout=20).get("type") == "result"
    refused = {e.findtext(C("body")) for e in sender.drain(1.0)
               if e.tag == C("message") and e.get("type") == "error"}
    t_resume = time.monotonic()
    c3, r = resume(cl[3], jid, pw, enabled.get("id"), received)
    clients.add(c3)
    resumed_after = time.monotonic() - t_kill
    resume_took = time.monotonic() - t_resume
    assert r.tag == sm("resumed"), tostring(r)
    deadline = time.monotonic() + 30
    accepted = {f"k{i}" for i in range(200)} - refused
    while not accepted <= set(got) and time.monotonic() < deadline:
        try:
            m = c3.recv(lambda e: e.tag == C("message") and e.find(C("body")) is not None, 1.0)
        except AssertionError:
            continue
        got.append(m.findtext(C("body")))
    missing = sorted(accepted - set(got), key=lambda b: int(b[1:]))
    duplicated = len(got) - len(set(got))
    cl.figure("sm_crash_resume_sent", 200)
    cl.figure("sm_crash_resume_refused", len(refused))
    cl.figure("sm_crash_resume_received_distinct", len(set(got)))
    cl.figure("sm_crash_resume_duplicated", duplicated)
    cl.figure("sm_crash_resume_kill_to_resumed_s", round(resumed_after, 3), "s")
    cl.figure("sm_crash_resume_connect_to_resumed_s", round(resume_took, 3), "s")
    assert not missing, f"lost: {missing}"
    # the client's h says which of the unacknowledged ones it has (the dead node listed
    # them in its record); none comes twice
    twice = sorted({b for b in got if got.count(b) > 1})
    assert duplicated == 0, f"{duplicated} duplicated: {twice}; refused: {sorted(refused)}"


def test_resumable_after_the_registry_was_founded_again(cluster, clients):
    """A majority of nodes is killed and restarted: the registry group (memory only) is
    founded again, empty. The survivor's sessions write their stream management records
    into the new one, so a client of the survivor can still resume through a restarted node."""
    from test_cluster_restart import wait_serving

    cl = cluster
    s = cl.leader()
    k1, k2 = [i for i in (1, 2, 3) if i != s]
    jid, _, pw = cl[s].new_user("crf")
    probe_jid, _, probe_pw = cl[s].new_user("crp")
    c, enabled = login_sm(cl[s], jid, pw)
    clients.add(c)
    cl.kill9(k1)
    cl.kill9(k2)
    for i in (k1, k2):
        cl[i].start(wait=False)
    for i in (k1, k2):
        cl[i].wait_ready()
    for i in (s, k1, k2):
        wait_serving(cl[i], probe_jid, probe_pw)
    assert c.ping_server().get("type") == "result"
    drop(c)
    # the record reaches the new epoch within moments of its founding
    deadline, r = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        c2, r = resume(cl[k1], jid, pw, enabled.get("id"), 2)  # own presence, the ping's result
        clients.add(c2)
        if r.tag == sm("resumed"):
            break
        c2.close()
        time.sleep(0.5)
    assert r is not None and r.tag == sm("resumed"), tostring(r)


def test_messages_delivered_ahead_of_their_archive_write_are_replayed_elsewhere(
        tmp_path_factory, clients):
    """Sender and recipient on one node, both with stream management: the messages are
    delivered before their archive writes commit (here they would wait 2 s for company).
    The recipient drops without acknowledging them and resumes through another node at once:
    the node that held it lets go only once its writes are in the archive, so the new node
    replays every one, once."""
    from cluster import Cluster
    cl = Cluster(str(tmp_path_factory.mktemp("cluster")), 3,
                 cluster_options={"behind_linger_us": 2_000_000})
    try:
        a_jid, _, a_pw = cl[1].new_user("cba")
        b_jid, _, b_pw = cl[1].new_user("cbb")
        a, _ = login_sm(cl[1], a_jid, a_pw)
        clients.add(a)
        b, enabled = login_sm(cl[1], b_jid, b_pw)
        clients.add(b)
        t0 = time.monotonic()
        for i in range(10):
            a.message(b_jid, f"ahead {i}")
        assert bodies(b, 10) == [f"ahead {i}" for i in range(10)]
        assert time.monotonic() - t0 < 1.5, "delivery waited for the archive"
        drop(b)
        b3, r = resume(cl[3], b_jid, b_pw, enabled.get("id"), 1)  # only its own presence
        clients.add(b3)
        assert r.tag == sm("resumed"), tostring(r)
        assert bodies(b3, 10) == [f"ahead {i}" for i in range(10)]
        b3.expect_nothing(lambda e: e.tag == C("message"), 0.7, what="a duplicate")
    finally:
        cl.stop()


def test_a_received_carbon_on_another_node_is_in_that_nodes_archive_at_once(
        tmp_path_factory, clients):
    """Sender and recipient on one node, both with stream management, so the message would be
    delivered before its archive write (which here waits 2 s for company). The recipient has
    a second resource with carbons on another node: its received copy goes out with the
    message, and a query through that node the moment the copy arrives finds the message
    (the write is not left behind when a copy leaves the node)."""
    from cluster import Cluster
    from test_carbons import carbon, enable
    from test_mam import mam
    cl = Cluster(str(tmp_path_factory.mktemp("cluster")), 2,
                 cluster_options={"behind_linger_us": 2_000_000})
    try:
        a_jid, _, a_pw = cl[1].new_user("cca")
        b_jid, _, b_pw = cl[1].new_user("ccb")
        a, _ = login_sm(cl[1], a_jid, a_pw)
        clients.add(a)
        b, _ = login_sm(cl[1], b_jid, b_pw)
        clients.add(b)
        b2 = clients.add(cl[2].login_eventually(b_jid, b_pw, resource="desk")[0])
        enable(b2)
        b2.presence()
        b2.recv(lambda e: e.tag == C("presence") and e.get("from") == b2.jid, what="own presence")
        # Node 1 knows the second resource once its presence reached the first one there.
        b.recv(lambda e: e.tag == C("presence") and e.get("from") == b2.jid, what="the desk's presence")
        time.sleep(0.3)
        a.message(b.jid, "copied", mid="cc1")  # to the phone: the desk gets a copy
        assert bodies(b, 1) == ["copied"]
        carbon(b2, "received", "cc1")
        results, _ = mam(b2)
        assert [r.body for r in results] == ["copied"], "the copy came before the archive had it"
    finally:
        cl.stop()
