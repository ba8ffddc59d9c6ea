"""Port of the server extensions' MultiUserChatModeratorSubjectModIntegrationTest (XEP-0045
8.1), fixtures of test_sint_muc.py. Smack's changeSubject sends a groupchat message with only
a <subject/> (empty to remove the subject) and waits for the room's reflection, from the room
or from the sender's occupant JID, or an error with the same id."""

import pytest

from rawxmpp import C, bare, q, stanza_error, tostring, xml_escape
from test_muc import NS_ADMIN, NS_OWNER, admin, join, new_room, ok
from test_sint_helpers import rnd
from test_sint_muc import create_muc, try_destroy

pytestmark = [pytest.mark.timeout(120)]


def users(n, server, clients):
    return [clients.add(server.online(f"sintmucsub{i}")) for i in range(n)]


def change_subject(c, room, subject):
    """Returns ('ok', reflection seen by c) or ('error', condition)."""
    mid = f"subj-{rnd()}"
    c.send_raw(f"<message to='{room}' id='{mid}' type='groupchat'><subject>{xml_escape(subject)}</subject></message>")
    e = c.recv(lambda e: e.tag == C("message") and (
        (e.get("id") == mid and e.get("type") == "error") or
        (e.find(C("subject")) is not None and (e.findtext(C("subject")) or "") == subject
         and e.get("from", "").split("/")[0] == room and e.get("type") == "groupchat")), 10, what="subject change")
    if e.get("type") == "error":
        return "error", stanza_error(e)[1]
    return "ok", e


def subject_changes_allowed_for_participants(owner, room):
    r = ok(owner.iq("get", f"<query xmlns='{NS_OWNER}'/>", to=room))
    for f in r.iter("{jabber:x:data}field"):
        if f.get("var") == "muc#roomconfig_changesubject":
            return f.findtext("{jabber:x:data}value") in ("1", "true")
    return False


def two_in_room(server, clients, name):
    one, two = users(2, server, clients)
    room = new_room(server, name)
    n1, n2 = "one-" + rnd(), "two-" + rnd()
    create_muc(one, room, n1)
    join(two, room, n2)
    one.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{n2}", 10, what="two's join")
    return one, two, room, n1, n2


def test_moderator_allowed_to_change_subject(server, clients):
    """mucTestModeratorAllowedToChangeSubject: conTwo, made moderator, changes the subject."""
    one, two, room, n1, n2 = two_in_room(server, clients, "moderator-change-subject")
    ok(admin(one, room, f"<item nick='{n2}' role='moderator'/>"))
    two.recv(lambda e: e.tag == C("presence") and e.get("from") == f"{room}/{n2}", 10, what="moderator granted")
    status, _ = change_subject(two, room, "Test Subject Change " + rnd(6))
    assert status == "ok"
    try_destroy(one, room)


@pytest.mark.parametrize("subject", ["Test Subject Change {}", ""], ids=["change", "remove"])
def test_participant_not_allowed(server, clients, subject):
    """mucTestParticipantNotAllowedToChangeSubject / ...ToRemoveSubject: <forbidden/> (8.1),
    unless the room lets participants change it ('not possible' then)."""
    one, two, room, n1, n2 = two_in_room(server, clients, "participant-change-subject")
    if subject_changes_allowed_for_participants(one, room):
        pytest.skip("Smack marks this 'not possible': the room lets participants change the subject")
    if subject == "":
        assert change_subject(one, room, "Initial subject to be removed " + rnd())[0] == "ok"
    assert change_subject(two, room, subject.format(rnd(6))) == ("error", "forbidden")
    try_destroy(one, room)


@pytest.mark.parametrize("subject", ["Test Subject Change {}", ""], ids=["change", "remove"])
def test_subject_change_is_reflected(server, clients, subject):
    """mucTestChangeSubjectIsReflected / mucTestRemoveSubjectIsReflected (8.1: reflected to all
    other occupants from the room JID or the sender's occupant JID)."""
    one, two, room, n1, n2 = two_in_room(server, clients, "subject-reflection")
    if subject == "":
        assert change_subject(one, room, "Initial subject " + rnd())[0] == "ok"
        two.recv(lambda e: e.tag == C("message") and e.find(C("subject")) is not None, 10, what="initial subject")
    needle = subject.format(rnd(6))
    assert change_subject(one, room, needle)[0] == "ok"
    m = two.recv(lambda e: e.tag == C("message") and e.find(C("subject")) is not None
                 and (e.findtext(C("subject")) or "") == needle, 10, what="the reflected subject")
    assert m.get("from") in (room, f"{room}/{n1}"), tostring(m)
    try_destroy(one, room)
