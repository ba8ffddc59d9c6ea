"""Bursts of stanzas between nodes, over the delivery stream between each pair of nodes.

RFC 6121 §8.5.3: a message to a full JID goes to that resource; if no such resource is
connected, a chat message is handled as if sent to the bare JID (§8.5.3.2.1: here, to the
available resource of highest priority). Across nodes the sender's node may learn that the
resource is gone only from the receiving node's answer in the ack (no session) and falls back
then, so an answer inside a batch must reach the right envelope. The stanzas of one sender to
one recipient keep their order.
"""

import contextlib
import threading

import pytest

from cluster import online_on, shared_cluster  # noqa: F401 (fixture)
from rawxmpp import StreamClosed, XMPPTimeout, tostring

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(120)]

SENDERS = 4
BURST = 100


def _burst(sender, targets, tag):
    """One TCP write of BURST chat messages to the JIDs of ``targets`` in turn, bodies
    ``tag-i``; returns, per target, the bodies sent to it in order."""
    sent = {t: [] for t in targets}
    parts = []
    for i in range(BURST):
        to = targets[i % len(targets)]
        body = f"{tag}-{i}"
        sent[to].append(body)
        parts.append(f"<message to='{to}' id='{body}' type='chat'><body>{body}</body></message>")
    sender.send_raw("".join(parts))
    return sent


def _collect(client, want, timeout=20):
    """Bodies of the chat messages the client receives until ``want`` of them came."""
    got = []
    try:
        while len(got) < want:
            m = client.recv_stanza("message", timeout=timeout)
            body = m.find("{jabber:client}body")
            assert body is not None, tostring(m)
            got.append(body.text)
    except XMPPTimeout:
        pass
    return got


def _send_all(senders, targets):
    """Every sender writes its burst at the same moment (so the stream between the nodes has
    several envelopes queued at once); returns {sender index: {target: bodies}}."""
    sent, go = {}, threading.Barrier(len(senders))

    def run(i, s):
        go.wait(timeout=10)
        sent[i] = _burst(s, targets, f"s{i}")

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(sent) == len(senders)
    return sent


def test_bursts_from_several_senders_cross_nodes_in_order(shared_cluster, clients):
    """Four senders on node 1 each write 100 messages at once to one full JID on node 2: all
    400 arrive, once each, and each sender's in the order it sent them."""
    cl = shared_cluster
    b = clients.add(online_on(cl[2], "bb"))
    senders = [clients.add(online_on(cl[1], f"bs{i}_")) for i in range(SENDERS)]
    sent = _send_all(senders, [b.jid])
    got = _collect(b, SENDERS * BURST)
    assert len(got) == SENDERS * BURST, f"{len(got)} of {SENDERS * BURST} arrived"
    assert sorted(got) == sorted(x for s in sent.values() for x in s[b.jid])
    for i in range(SENDERS):
        mine = [x for x in got if x.startswith(f"s{i}-")]
        assert mine == sent[i][b.jid], f"sender {i} out of order"
    b.expect_nothing(lambda e: e.tag.endswith("message"), timeout=0.5)
    for c in [b, *senders]:
        assert c.ping_server().get("type") == "result"


def test_message_to_a_resource_just_gone_falls_back_inside_a_burst(shared_cluster, clients):
    """A user has two resources on node 2. One sends its closing tag and at the same moment four
    senders on node 1 write bursts alternating between the two full JIDs. A message for the
    closing resource reaches it while its session lasts, and after that the remaining resource
    (RFC 6121 §8.5.3.2.1), whether node 2 answers "no session" inside a batch or node 1 already
    finds the route gone (in practice the latter: the route's removal reaches node 1 first;
    cluster/tests/delivery_batches.rs checks "no session" answers inside batches). Every message
    arrives exactly once at one of the two, and those for the remaining resource keep each
    sender's order."""
    cl = shared_cluster
    stay = clients.add(online_on(cl[2], "bg", resource="stay", priority=5))
    gone = clients.add(cl[2].login(stay.bare, stay.password, resource="gone", presence=True,
                                   priority=1))
    senders = [clients.add(online_on(cl[1], f"bgs{i}_")) for i in range(SENDERS)]
    stay.drain(timeout=0.5)
    gone.drain(timeout=0.2)
    targets = [f"{stay.bare}/stay", f"{stay.bare}/gone"]
    gone.send_raw("</stream:stream>")
    sent = _send_all(senders, targets)
    # What reached the closing resource before its session ended (the client reads on until
    # the server closes the stream, so nothing written to it is lost).
    before_close = []
    with contextlib.suppress(StreamClosed, XMPPTimeout):
        while True:
            m = gone.recv(lambda e: e.tag == "{jabber:client}message", timeout=10)
            before_close.append(m.findtext("{jabber:client}body"))
    assert gone.stream_ended, "the server did not end the closed stream"
    want = sorted(x for s in sent.values() for t in targets for x in s[t])
    got = _collect(stay, len(want) - len(before_close))
    assert sorted(got + before_close) == want, (
        f"{len(got)} + {len(before_close)} of {len(want)}; "
        f"missing {sorted(set(want) - set(got) - set(before_close))[:5]}")
    for_stay = {x for s in sent.values() for x in s[targets[0]]}
    assert not set(before_close) & for_stay, "a message for 'stay' reached 'gone'"
    for i in range(SENDERS):
        mine = set(sent[i][targets[0]])
        direct = [x for x in got if x in mine]
        assert direct == sent[i][targets[0]], f"sender {i}: direct messages out of order"
    stay.expect_nothing(lambda e: e.tag.endswith("message"), timeout=0.5)
    for c in [stay, *senders]:
        assert c.ping_server().get("type") == "result"
