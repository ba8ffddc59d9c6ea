"""When a session's route reaches the other nodes (issue 9: one registry write per login).

A session's route is written to the cluster's registry with its initial presence (one write
instead of two), or before the first stanza it sends to someone else, or a second after bind
if it does neither. So a bound resource is reachable by its full JID from every node (RFC 6120
§8.5.3.1: an IQ to a connected resource is delivered to it, available or not) whatever its
client does, and an answer to what it sent never finds it missing.
"""

import time

import pytest

from cluster import online_on, shared_cluster  # noqa: F401
from rawxmpp import tostring

pytestmark = [pytest.mark.cluster, pytest.mark.starling_only]

PING = "urn:xmpp:ping"


def _ping(sender, to, iid):
    sender.send_raw(f"<iq type='get' id='{iid}' to='{to}'><ping xmlns='{PING}'/></iq>")


def _answer_pings(client, count, timeout=10):
    """Answers ``count`` pings the client receives; returns their senders."""
    senders = []
    for _ in range(count):
        iq = client.recv_stanza("iq", timeout=timeout, type="get")
        client.send_raw(f"<iq type='result' id='{iq.get('id')}' to='{iq.get('from')}'/>")
        senders.append(iq.get("from"))
    return senders


def test_reply_reaches_a_resource_that_sent_no_presence(shared_cluster, clients):
    """A client bound on node 1 without presence pings a user on node 2: the answer, sent to its
    full JID from node 2 right away, reaches it (its route was written before its ping left)."""
    cl = shared_cluster
    a = clients.add(online_on(cl[1], "rpa", presence=False))
    b = clients.add(online_on(cl[2], "rpb"))
    for i in range(3):
        iid = f"p{i}"
        _ping(a, b.jid, iid)
        assert _answer_pings(b, 1) == [a.jid]
        r = a.recv_stanza("iq", timeout=5, id=iid)
        assert r.get("type") == "result" and r.get("from") == b.jid, tostring(r)


def test_silent_resource_gets_pings_once_published(shared_cluster, clients):
    """A client bound on node 2 that sends nothing at all is reachable by its full JID from node 3
    once PUBLISH_AFTER (1 s) has passed since bind: every ping is delivered to it and answered."""
    cl = shared_cluster
    a = clients.add(online_on(cl[2], "rga", presence=False))
    s = clients.add(online_on(cl[3], "rgs"))
    time.sleep(1.5)  # PUBLISH_AFTER (1 s) since bind
    for i in range(3):
        iid = f"g{i}"
        _ping(s, a.jid, iid)
        assert _answer_pings(a, 1) == [s.jid]
        r = s.recv_stanza("iq", timeout=5, id=iid)
        assert r.get("type") == "result", tostring(r)
