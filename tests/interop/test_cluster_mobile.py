"""Issue 10 across nodes: client state indication holds presence that comes from another
node, and a session resumed on another node keeps what it asked for (carbons, roster
pushes) and its presence."""

import time

import pytest

from cluster import shared_cluster  # noqa: F401 (fixture)
from im import make_mutual
from rawxmpp import C, tostring
from test_carbons import carbon, enable
from test_csi import ACTIVE, go_inactive, marker, presence_from, seen_before
from test_sm import NS_SM, drop, login_sm, resume, sm

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(120)]


def test_inactive_client_holds_presence_from_another_node(shared_cluster, clients):
    cl = shared_cluster
    u = clients.add(cl[1].online("cmu"))
    contact = clients.add(cl[2].online("cmc"))
    make_mutual(u, contact)
    go_inactive(u)
    for i in range(4):
        contact.presence(status=f"n{i}")
    held = seen_before(u, marker(contact, u.jid), lambda e: e.tag == C("presence"))
    assert not held, "presence from node 2 reached an inactive client: " + tostring(held[0])
    u.send_raw(ACTIVE)
    p = u.recv(presence_from(u, contact.jid), what="the held presence")
    assert p.findtext(C("status")) == "n3", tostring(p)
    extra = seen_before(u, marker(contact, u.jid), presence_from(u, contact.jid))
    assert not extra, "more than the latest presence: " + tostring(extra[0])


def test_session_resumed_on_another_node_keeps_carbons_roster_pushes_and_presence(
        shared_cluster, clients):
    cl = shared_cluster
    jid, _, pw = cl[1].new_user("cmr")
    phone, enabled = login_sm(cl[1], jid, pw, resource="phone", presence=False)
    clients.add(phone)
    phone.iq("get", "<query xmlns='jabber:iq:roster'/>")  # an interested resource
    enable(phone)
    phone.presence(status="on the train")
    phone.recv(presence_from(phone, phone.jid), what="own presence")
    laptop, _ = cl[3].login_eventually(jid, pw, resource="laptop", presence=True)
    clients.add(laptop)
    seen = laptop.recv(presence_from(laptop, phone.jid), what="the phone's presence")
    assert seen.findtext(C("status")) == "on the train"
    phone.recv(presence_from(phone, laptop.jid), what="the laptop's presence")
    received = 1 + 1 + 1 + 1  # roster result, carbons result, own presence, laptop's presence
    phone.send_raw(f"<a xmlns='{NS_SM}' h='{received}'/>")
    drop(phone)
    p2, r = resume(cl[2], jid, pw, enabled.get("id"), received)
    clients.add(p2)
    assert r.tag == sm("resumed"), tostring(r)
    # the resumed session's presence is broadcast again from node 2, with the same status
    again = laptop.recv(presence_from(laptop, phone.jid), what="the phone's presence again")
    assert again.findtext(C("status")) == "on the train", tostring(again)
    # carbons: a message the laptop sends reaches the resumed phone as a sent carbon
    mid = laptop.message("someone-else@localhost", "from the laptop")
    carbon(p2, "sent", mid)
    # roster pushes still reach it
    laptop.iq("set", "<query xmlns='jabber:iq:roster'><item jid='friend@localhost'/></query>")
    push = p2.recv(lambda e: e.tag == C("iq") and e.get("type") == "set"
                   and e.find("{jabber:iq:roster}query") is not None, what="roster push")
    assert push.find("{jabber:iq:roster}query/{jabber:iq:roster}item").get("jid") == "friend@localhost"


def test_resume_on_another_node_of_a_timed_out_session_fails_with_its_h(shared_cluster, clients):
    """XEP-0198 section 5 across nodes: the session timed out on node 1; a <resume/> on node 2
    fails with item-not-found and the h of the client's stanzas node 1 handled (its
    presence and two IQs); node 2 lets the client bind a new session."""
    cl = shared_cluster
    jid, _, pw = cl[1].new_user("cmt")
    c, enabled = login_sm(cl[1], jid, pw, max_=1)
    for _ in range(2):
        assert c.ping_server().get("type") == "result"
    drop(c)
    time.sleep(3)  # the resumption time (1 s) is over
    c2, r = resume(cl[2], jid, pw, enabled.get("id"), 0)
    clients.add(c2)
    assert r.tag == sm("failed"), tostring(r)
    assert r.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None, tostring(r)
    assert r.get("h") == "3", tostring(r)
    assert c2.bind("again")
    assert c2.ping_server().get("type") == "result"
    # node 3 answers the same, and someone else gets no h
    c3, r = resume(cl[3], jid, pw, enabled.get("id"), 0)
    clients.add(c3)
    assert r.get("h") == "3", tostring(r)
    ojid, _, opw = cl[3].new_user("cmo")
    c4, r = resume(cl[3], ojid, opw, enabled.get("id"), 0)
    clients.add(c4)
    assert r.tag == sm("failed") and r.get("h") is None, tostring(r)


def test_session_replaced_from_another_node_answers_a_late_resume_with_its_h(
        shared_cluster, clients):
    """The resource is bound again through node 2 (RFC 6120 conflict): the session on node 1
    ends, and its SM-ID answers a <resume/> through node 3 with item-not-found and its h
    (its presence and one IQ)."""
    cl = shared_cluster
    jid, _, pw = cl[1].new_user("cmx")
    c, enabled = login_sm(cl[1], jid, pw, resource="tab")
    assert c.ping_server().get("type") == "result"
    n, _ = cl[2].login_eventually(jid, pw, resource="tab")
    clients.add(n)
    assert c.expect_stream_error(timeout=10) == "conflict"
    deadline = time.monotonic() + 5
    while True:  # the tombstone is written as the old session ends, before its stream closes
        c3, r = resume(cl[3], jid, pw, enabled.get("id"), 0)
        clients.add(c3)
        if r.get("h") is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.tag == sm("failed"), tostring(r)
    assert r.get("h") == "2", tostring(r)
    assert n.ping_server().get("type") == "result"


def test_resume_on_another_node_with_h_beyond_what_was_sent_fails_and_ends_the_session(
        shared_cluster, clients):
    """XEP-0198 sections 5 and 6 across nodes: a <resume/> through node 2 claiming more than
    node 1 sent (its own presence only) fails with <undefined-condition/> and
    <handled-count-too-high/>; node 1 does not let the session go but ends it (its stream
    gets an error), and the <failed/> carries the h it handled (the presence and one IQ);
    a later, sane <resume/> gets item-not-found with that h."""
    cl = shared_cluster
    jid, _, pw = cl[1].new_user("cmh")
    c, enabled = login_sm(cl[1], jid, pw)
    clients.add(c)
    assert c.ping_server().get("type") == "result"
    c2, r = resume(cl[2], jid, pw, enabled.get("id"), 50)
    clients.add(c2)
    assert r.tag == sm("failed"), tostring(r)
    assert r.find("{urn:ietf:params:xml:ns:xmpp-stanzas}undefined-condition") is not None, tostring(r)
    too_high = r.find(sm("handled-count-too-high"))
    assert too_high is not None, tostring(r)
    assert too_high.get("h") == "50" and too_high.get("send-count") == "2", tostring(r)
    assert r.get("h") == "2", tostring(r)
    assert c.expect_stream_error(timeout=10) == "undefined-condition"
    assert c2.bind("fresh")
    assert c2.ping_server().get("type") == "result"
    c3, r = resume(cl[3], jid, pw, enabled.get("id"), 2)
    clients.add(c3)
    assert r.tag == sm("failed") and r.get("h") == "2", tostring(r)
    assert r.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None, tostring(r)


def test_archive_preferences_set_through_another_node_apply_there_too(shared_cluster, clients):
    """XEP-0441 across nodes: the sender's node decides what goes in the recipient's archive,
    from the preferences it keeps for the recipient's session there. A change made through
    another node of the cluster (the recipient's other resource) applies on the sender's
    node as soon as its replica has it, and back again."""
    from test_mam import archived_bodies, chat, prefs_set, stanza_ids
    cl = shared_cluster
    a = clients.add(cl[1].online("cpa"))
    b = clients.add(cl[1].online("cpb"))
    b2, _ = cl[2].login_eventually(b.bare, b.password, resource="other", presence=False)
    clients.add(b2)
    assert stanza_ids(chat(a, b, "kept"), by=b.bare), "archived by default"

    def until(kept, label):
        # Node 1's replica applies the change a moment after node 2 answered.
        deadline = time.monotonic() + 10
        for k in range(100):
            got = chat(a, b, f"{label} {k}")
            if bool(stanza_ids(got, by=b.bare)) == kept:
                return k
            assert time.monotonic() < deadline, f"node 1 still archives as before ({label})"
        raise AssertionError(label)

    assert prefs_set(b2, "always", never=[a.bare]).get("type") == "result"
    skipped = until(False, "not kept")
    assert prefs_set(b2, "always").get("type") == "result"
    k = until(True, "kept again")
    bodies = archived_bodies(b)
    assert bodies[0] == "kept" and bodies[-1] == f"kept again {k}", bodies
    assert f"not kept {skipped}" not in bodies, bodies
