"""Port of RosterIntegrationTest (XMPP interop tests, Smack): RFC 6121 3.1.2 / 3.1.3 / 3.1.5.

Smack's 'accept_all' subscription mode is played by hand: the contact answers the inbound
subscribe with <presence type='subscribed'/>.
"""

from im import RI, RQ
from rawxmpp import C, NS_ROSTER, new_id
from test_sint_helpers import bare_jid, desc, iq_reply, push_item, recv_roster_push, rnd


def pair(server, clients):
    one = clients.add(server.online("sint31a"))
    two = clients.add(server.online("sint31b"))
    one.drain(0.05)
    two.drain(0.05)
    return one, two


def pres(c, from_bare, ptype, timeout=5, full_from_ok=True):
    return c.recv(lambda e: e.tag == C("presence") and e.get("type") == ptype and
                  (e.get("from") or "").split("/")[0] == from_bare, timeout, what=f"presence {ptype} from {from_bare}")


def push_until(c, jid, cond, timeout=5):
    while True:
        it = push_item(recv_roster_push(c, jid, timeout), jid)
        if cond(it):
            return it


def approve(contact, user_bare, to=None):
    contact.send_raw(f"<presence type='subscribed' to='{to or user_bare}'/>")


def test_subscribe_request_listener(server, clients):
    """(Smack 'subscribeRequestListenerTest', no RFC quote in the Java test; RFC 6121 3.1.2 / 3.1.6.) The user
    adds the contact with a name and requests a subscription; the contact approves; the user's roster then
    has the item with that name and subscription 'to'."""
    one, two = pair(server, clients)
    name = "ConTwo " + rnd(6)
    iid = new_id("rs")
    one.send_raw(f"<iq type='set' id='{iid}'><query xmlns='{NS_ROSTER}'><item jid='{two.bare}' name='{name}'/></query></iq>")
    r = iq_reply(one, iid)
    assert r is not None and r.get("type") == "result", desc(r) if r is not None else "no reply"
    one.send_raw(f"<presence type='subscribe' to='{two.bare}'/>")
    pres(two, one.bare, "subscribe")
    approve(two, one.bare)
    it = push_until(one, two.bare, lambda i: i.get("subscription") == "to")
    assert it.get("name") == name, "roster entry lost its name: " + desc(it)


def test_roster_push_after_subscription_request(server, clients):
    """RFC 6121 3.1.2: "After locally delivering or remotely routing the presence subscription request, the
    user's server MUST then send a roster push to all of the user's interested resources, containing the
    potential contact with a subscription state of "none" and with notation that the subscription is pending
    (via an 'ask' attribute whose value is "subscribe")." """
    one, two = pair(server, clients)
    one.send_raw(f"<presence type='subscribe' to='{two.bare}'/>")
    it = push_item(recv_roster_push(one, two.bare), two.bare)
    assert it.get("subscription", "none") == "none", desc(it)
    assert it.get("ask") == "subscribe", "no ask='subscribe' on the push: " + desc(it)


def test_presence_delivered_to_recipient(server, clients):
    """RFC 6121 3.1.3: "if there is at least one available resource associated with the contact when the
    subscription request is received by the contact's server, then the contact's server MUST send that
    subscription request to all available resources in accordance with Section 8." """
    one, two = pair(server, clients)
    one.send_raw(f"<presence type='subscribe' to='{two.bare}'/>")
    p = two.recv(lambda e: e.tag == C("presence") and (e.get("from") or "").split("/")[0] == one.bare,
                 5, what="presence from the requester")
    assert p.get("type") == "subscribe", desc(p)


def test_presence_approval_stamped_and_delivered(server, clients):
    """RFC 6121 3.1.5: "When the contact's client sends the subscription approval, the contact's server MUST
    stamp the outbound stanza with the bare JID <contact@domainpart> of the contact and locally deliver or
    remotely route the stanza to the user." (As in the Java test, the approval is addressed to the user's
    full JID.)"""
    one, two = pair(server, clients)
    one.send_raw(f"<presence type='subscribe' to='{two.bare}'/>")
    pres(two, one.bare, "subscribe")
    approve(two, one.bare, to=one.jid)
    p = one.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribed", 5, what="subscribed")
    assert p.get("from") == two.bare, "'subscribed' not stamped with the contact's bare JID: " + desc(p)


def test_presence_approval_yields_roster_push(server, clients):
    """RFC 6121 3.1.5: "The contact's server then MUST send an updated roster push to all of the contact's
    interested resources, with the 'subscription' attribute set to a value of "from"." """
    one, two = pair(server, clients)
    one.send_raw(f"<presence type='subscribe' to='{two.bare}'/>")
    pres(two, one.bare, "subscribe")
    approve(two, one.bare)
    it = push_until(two, one.bare, lambda i: i.get("subscription") not in (None, "none"))
    assert it.get("subscription") == "from", desc(it)


def test_presence_approval_yields_roster_push_both(server, clients):
    """RFC 6121 3.1.5: "The contact's server then MUST send an updated roster push to all of the contact's
    interested resources, with the 'subscription' attribute set to a value of "from". (Here we assume that the
    contact does not already have a subscription to the user; if that were the case, the 'subscription'
    attribute would be set to a value of "both", as explained under Appendix A.)" """
    one, two = pair(server, clients)
    # fixture: two -> one subscription (one approves); two's item for one becomes 'to'
    two.send_raw(f"<presence type='subscribe' to='{one.bare}'/>")
    pres(one, two.bare, "subscribe")
    approve(one, two.bare)
    push_until(two, one.bare, lambda i: i.get("subscription") not in (None, "none"))
    one.drain(0.2)
    two.drain(0.2)
    # test: one -> two, two approves: two's item for one becomes 'both'
    one.send_raw(f"<presence type='subscribe' to='{two.bare}'/>")
    pres(two, one.bare, "subscribe")
    approve(two, one.bare)
    it = push_until(two, one.bare, lambda i: i.get("subscription") not in ("to", None, "none"))
    assert it.get("subscription") == "both", desc(it)


def test_current_presence_sent_after_subscription_approval(server, clients):
    """RFC 6121 3.1.5: "The contact's server MUST then also send current presence to the user from each of the
    contact's available resources." """
    one, two = pair(server, clients)
    needle = "Look for me! " + rnd(5)
    two.send_raw(f"<presence><status>{needle}</status></presence>")
    two.recv(lambda e: e.tag == C("presence") and e.get("from") == two.jid, 5, what="own presence")
    one.send_raw(f"<presence type='subscribe' to='{two.bare}'/>")
    pres(two, one.bare, "subscribe")
    approve(two, one.bare)
    one.recv(lambda e: e.tag == C("presence") and (e.get("from") or "").split("/")[0] == two.bare
             and e.findtext(C("status")) == needle, 5, what="contact's current presence with the status")
