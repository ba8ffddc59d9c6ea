"""Port of RFC6121Section2_6b_VerRequestIntegrationTest (XMPP interop tests): RFC 6121 2.6.3.

Each test: apply a 'starting point' roster set (record the 'ver' of its push), apply a change
(record the 'ver' of that push), then request the roster with the first 'ver'. Either the full
roster comes back (with the change and the latest 'ver'), or an empty result followed by a push
of the changed item carrying the latest 'ver'.
"""

import pytest

from im import RI, RQ
from rawxmpp import NS_ROSTER, new_id
from test_sint_helpers import desc, iq_reply, push_item, recv_roster_push, rnd

NS_RV = "urn:xmpp:features:rosterver"

QUOTE = """RFC 6121 2.6.3: "the server MUST either return the complete roster as described under Section 2.1.4
(including a 'ver' attribute that signals the latest version) or return an empty IQ-result (thus indicating
that any roster modifications will be sent via roster pushes, as described below). [...] When roster
versioning is enabled, the server MUST include the updated roster version with each roster push." """


def item_xml(jid, name=None, groups=(), remove=False):
    a = f" jid='{jid}'" + (f" name='{name}'" if name else "") + (" subscription='remove'" if remove else "")
    return f"<item{a}>" + "".join(f"<group>{g}</group>" for g in groups) + "</item>"


def set_and_push_ver(c, jid, xml):
    iid = new_id("rv")
    c.send_raw(f"<iq type='set' id='{iid}'><query xmlns='{NS_ROSTER}'>{xml}</query></iq>")
    r = iq_reply(c, iid)
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"
    push = recv_roster_push(c, jid)
    return push.find(RQ).get("ver")


def same_item(el, jid, name, groups, remove):
    if remove:
        return el.get("subscription") == "remove"
    return (el.get("jid") == jid and el.get("name") == name and
            el.get("subscription", "none") == "none" and
            sorted(g.text for g in el.findall(f"{{{NS_ROSTER}}}group")) == sorted(groups))


T1 = "@T1@"  # placeholder for the first target
T2 = "@T2@"
CASES = [
    # id, starting (target, name, groups), change (target, name, groups, remove)
    ("RosterItemAddition", (T1, None, ()), (T2, None, (), False)),
    ("RosterItemRemoval", (T1, None, ()), (T1, None, (), True)),
    ("RosterItemModificationHandleAddition", (T1, None, ()), (T1, "FooBar", (), False)),
    ("RosterItemModificationHandleModification", (T1, "Old Name", ()), (T1, "Updated Name", (), False)),
    ("RosterItemModificationHandleRemoval", (T1, "FooBar", ()), (T1, None, (), False)),
    ("RosterItemModificationGroupAddition", (T1, None, ()), (T1, None, ("Test Group",), False)),
    ("RosterItemModificationGroupAdditionAnother", (T1, None, ("Test Group",)),
     (T1, None, ("Test Group", "Additional Group"), False)),
    ("RosterItemModificationGroupModification", (T1, None, ("Test Group",)), (T1, None, ("Changed Group",), False)),
    ("RosterItemModificationGroupRemoval", (T1, None, ("Test Group", "Additional Group")),
     (T1, None, ("Test Group",), False)),
    ("RosterItemModificationGroupRemovalLast", (T1, "FooBar", ()), (T1, None, (), False)),
]


@pytest.mark.parametrize("start,change", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_request_updated_roster(server, clients, start, change):
    c = clients.add(server.online("sint26"))
    if c.feature(NS_RV, "ver") is None:
        pytest.skip("roster versioning not advertised (the Java test is then 'not possible')")
    names = {T1: f"test-targetone-{rnd(5)}@{server.domain}", T2: f"test-targettwo-{rnd(5)}@{server.domain}"}
    sj, sname, sgroups = start
    cj, cname, cgroups, cremove = change
    sj, cj = names[sj], names[cj]
    v_before = set_and_push_ver(c, sj, item_xml(sj, sname, sgroups))
    v_after = set_and_push_ver(c, cj, item_xml(cj, cname, cgroups, cremove))
    assert v_before is not None and v_after is not None, "roster pushes carry no 'ver' attribute"

    iid = new_id("rg")
    c.send_raw(f"<iq type='get' id='{iid}'><query xmlns='{NS_ROSTER}' ver='{v_before}'/></iq>")
    r = iq_reply(c, iid)
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"
    q = r.find(RQ)
    if q is not None:
        items = {i.get("jid"): i for i in q.findall(RI)}
        if cremove:
            assert cj not in items, "removed item still in the returned roster: " + desc(r)
        else:
            assert cj in items and same_item(items[cj], cj, cname, cgroups, False), \
                "returned roster lacks the change: " + desc(r)
        assert q.get("ver") == v_after, f"returned roster has ver={q.get('ver')!r}, latest is {v_after!r}"
    else:
        push = recv_roster_push(c, cj)
        it = push_item(push, cj)
        assert same_item(it, cj, cname, cgroups, cremove), "push does not carry the change: " + desc(push)
        assert push.find(RQ).get("ver") == v_after, f"push has ver={push.find(RQ).get('ver')!r}, latest is {v_after!r}"
    assert v_before != v_after, "the roster 'ver' did not change with the roster"


test_request_updated_roster.__doc__ = QUOTE
