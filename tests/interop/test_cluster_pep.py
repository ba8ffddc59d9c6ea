"""XEP-0163 across the nodes of a 3-node cluster: a publish on one node notifies contacts
bound to the other nodes (filtered by their caps), items and configuration are read on
any node, a caps ver verified through one node is known on the others (no second query),
and the last item reaches a contact logging in on another node."""

import time

import pytest

from cluster import shared_cluster  # noqa: F401 (fixture)
from im import make_mutual
from rawxmpp import C, bare, tostring
from test_pep import (NS_EVENT, NS_NICK, OMEMO_DEVICES, TUNE, Caps, available, config_of,
                      get_items, is_caps_query, is_event, item_ids, ok, publish, recv_event,
                      tune)

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster, pytest.mark.timeout(120)]


def online_caps(node, prefix, caps):
    c = node.online(prefix, presence=False)
    available(c, caps)
    return c


def test_notifications_reach_contacts_on_other_nodes(shared_cluster, clients):
    cl = shared_cluster
    owner_c = clients.add(cl[1].online("cpo"))
    wants = clients.add(online_caps(cl[2], "cpw", Caps(OMEMO_DEVICES, TUNE)))
    nowant = clients.add(online_caps(cl[3], "cpn", Caps(TUNE)))
    make_mutual(owner_c, wants)
    make_mutual(owner_c, nowant)
    owner = bare(owner_c.jid)
    devices = "<list xmlns='eu.siacs.conversations.axolotl'><device id='777'/></list>"
    t0 = time.monotonic()
    ok(publish(owner_c, OMEMO_DEVICES, devices, item_id="current",
               options={"pubsub#access_model": "open"}))
    ev = recv_event(wants, owner, OMEMO_DEVICES, timeout=10)
    cl.figure("pep_publish_to_notification_other_node_ms", round((time.monotonic() - t0) * 1000, 1), "ms")
    assert ev.find(q_items()).find(q_item()).get("id") == "current"
    # the marker: a tune both want; the node-3 client must not have had the device list
    ok(publish(owner_c, TUNE, tune("marker"), item_id="m"))
    e = nowant.recv(lambda e: e.tag == C("message") and e.find(f"{{{NS_EVENT}}}event") is not None,
                    timeout=10, what="the tune marker")
    assert is_event(e, owner, TUNE), "device list reached a client without +notify: " + tostring(e)
    recv_event(wants, owner, TUNE, timeout=10)
    # items and configuration from any node
    assert item_ids(get_items(wants, owner, OMEMO_DEVICES)) == ["current"]
    assert item_ids(get_items(nowant, owner, OMEMO_DEVICES)) == ["current"]
    assert config_of(owner_c, OMEMO_DEVICES)["pubsub#access_model"] == ["open"]


def test_caps_verified_on_one_node_known_on_the_others(shared_cluster, clients):
    cl = shared_cluster
    caps = Caps(NS_NICK)
    first = clients.add(cl[1].online("ccf", presence=False))
    assert available(first, caps) == 1
    # a client with the same caps on each other node: not asked again (the verified ver
    # is in the replicated store); give replication a moment by retrying the login order
    for i in (2, 3):
        c = clients.add(cl[i].online(f"cc{i}", presence=False))
        assert available(c, caps) == 0, f"caps asked again on node {i}"
        c.expect_nothing(is_caps_query, 0.7, what="a caps query")


def test_last_item_for_a_contact_logging_in_on_another_node(shared_cluster, clients):
    cl = shared_cluster
    owner_c = clients.add(cl[1].online("clo"))
    contact = clients.add(cl[2].online("clc"))
    make_mutual(owner_c, contact)
    ok(publish(owner_c, NS_NICK, f"<nick xmlns='{NS_NICK}'>Tybalt</nick>", item_id="current"))
    contact.close()
    again, _ = cl[3].login_eventually(contact.bare, contact.password, presence=False)
    clients.add(again)
    available(again, Caps(NS_NICK))
    ev = recv_event(again, bare(owner_c.jid), NS_NICK, timeout=10)
    assert ev.find(q_items()).find(q_item()).findtext(f"{{{NS_NICK}}}nick") == "Tybalt"


def q_items():
    return f"{{{NS_EVENT}}}items"


def q_item():
    return f"{{{NS_EVENT}}}item"
