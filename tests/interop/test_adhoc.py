"""XEP-0050 Ad-Hoc Commands offered by the server, and the XEP-0133 Service Administration
commands on them, raw XML (rawxmpp) so that every element and error condition is checked.

The module's server serves localhost and example.org with ``[admin] admins =
["admin@localhost", "boss@example.org"]`` and ``[admin.domains] "example.org" =
["root@localhost"]``: admin@localhost administers localhost, boss@example.org and
root@localhost administer example.org. A 3-node cluster test (marked ``cluster``) checks
that the online count, end-user-session and announce act on every node.
"""

import time
import uuid

import pytest

from cluster import Cluster
from conftest import StarlingServer
from rawxmpp import C, SASLFailure, q, tostring
from test_sint_helpers import error_condition

pytestmark = pytest.mark.starling_only

NS_CMD = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ROSTER = "jabber:iq:roster"
ADMIN = "http://jabber.org/protocol/admin"
PW = "admin-secret"
SESSION_TIMEOUT = 4

ADMIN_LINES = [
    "[admin]",
    'admins = ["admin@localhost", "boss@example.org"]',
    f"session_timeout_secs = {SESSION_TIMEOUT}",
    "max_sessions = 3",
    "",
    "[admin.domains]",
    '"example.org" = ["root@localhost"]',
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = StarlingServer(str(tmp_path_factory.mktemp("adhoc")))
    with open(s.config_path, "a") as f:
        f.write("\n" + "\n".join(ADMIN_LINES) + "\n")
    s.start()
    for jid in ("admin@localhost", "boss@example.org", "root@localhost"):
        s.add_user(jid, PW)
    yield s
    s.stop()


def login_admin(srv, clients, jid="admin@localhost", resource=None):
    c = clients.add(srv.login(jid, PW, resource=resource, presence=True))
    c.bare = jid
    return c


# ----------------------------------------------------------------------------- helpers

def value_xml(v):
    return f"<value>{v}</value>"


def submit(form_type=ADMIN, **fields):
    """A submitted data form; a list value gives several <value/>s."""
    out = [f"<x xmlns='{NS_DATA}' type='submit'>"]
    if form_type:
        out.append(f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>")
    for k, v in fields.items():
        vals = v if isinstance(v, list) else [v]
        out.append(f"<field var='{k}'>" + "".join(value_xml(x) for x in vals) + "</field>")
    out.append("</x>")
    return "".join(out)


def cmd(c, node, action=None, sid=None, payload="", to=None, lang=None):
    """One <command/> request; returns the IQ answer."""
    a = f" action='{action}'" if action else ""
    s = f" sessionid='{sid}'" if sid else ""
    lg = f" xml:lang='{lang}'" if lang else ""
    to = to or c.jid.split("@")[1].split("/")[0]
    return c.iq("set", f"<command xmlns='{NS_CMD}' node='{node}'{a}{s}{lg}>{payload}</command>", to=to)


def command_of(r):
    assert r.get("type") == "result", tostring(r)
    el = r.find(q(NS_CMD, "command"))
    assert el is not None, tostring(r)
    return el


def fields_of(el):
    x = el.find(q(NS_DATA, "x"))
    assert x is not None, tostring(el)
    return {f.get("var"): [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
            for f in x.findall(q(NS_DATA, "field"))}


def notes(el):
    return [(n.get("type"), n.text or "") for n in el.findall(q(NS_CMD, "note"))]


def actions_of(el):
    a = el.find(q(NS_CMD, "actions"))
    if a is None:
        return None, []
    return a.get("execute"), [child.tag.rsplit("}", 1)[1] for child in a]


def cmd_error(r):
    """(stanza error type, condition, XEP-0050 specific condition or None)."""
    assert r.get("type") == "error", tostring(r)
    err = r.find(C("error"))
    specific = [ch.tag.rsplit("}", 1)[1] for ch in err if ch.tag.startswith("{" + NS_CMD + "}")]
    return err.get("type"), error_condition(r), (specific[0] if specific else None)


def run(c, name, to=None, **fields):
    """execute, then complete with the given fields; returns the final <command/>."""
    node = f"{ADMIN}#{name}"
    first = command_of(cmd(c, node, "execute", to=to))
    assert first.get("status") == "executing", tostring(first)
    sid = first.get("sessionid")
    return command_of(cmd(c, node, "complete", sid, submit(**fields), to=to))


def completed_ok(el):
    assert el.get("status") == "completed", tostring(el)
    ns = notes(el)
    assert ns and all(t == "info" for t, _ in ns), tostring(el)
    return el


def completed_failed(el, text=None):
    assert el.get("status") == "completed", tostring(el)
    ns = notes(el)
    assert any(t == "error" for t, _ in ns), tostring(el)
    if text:
        assert any(text in n for _, n in ns), tostring(el)
    return el


def count(c, name, var, to=None):
    el = command_of(cmd(c, f"{ADMIN}#{name}", "execute", to=to))
    assert el.get("status") == "completed", tostring(el)
    return int(fields_of(el)[var][0])


def items(c, to):
    r = c.iq("get", f"<query xmlns='{NS_ITEMS}' node='{NS_CMD}'/>", to=to)
    assert r.get("type") == "result", tostring(r)
    return r.findall(f"{q(NS_ITEMS, 'query')}/{q(NS_ITEMS, 'item')}")


def can_login(srv, jid, pw):
    try:
        srv.login(jid, pw).close()
        return True
    except SASLFailure:
        return False


def new_name(domain="localhost"):
    return f"adh{uuid.uuid4().hex[:10]}@{domain}"


# ----------------------------------------------------------------------------- discovery

def test_commands_listed_for_admin_and_only_public_ones_for_users(srv, clients):
    """XEP-0050 2.2 / XEP-0133 3: disco#items of the commands node lists what the requester
    may run: the admin commands for an administrator (at the domain and at its own bare
    JID, each item naming the JID asked), only ping and uptime for a user."""
    admin = login_admin(srv, clients)
    user = clients.add(srv.online("adu"))
    for to in ("localhost", "admin@localhost"):
        got = items(admin, to)
        nodes = {i.get("node") for i in got}
        for name in ("add-user", "delete-user", "disable-user", "reenable-user",
                     "change-user-password", "end-user-session", "get-disabled-users-num",
                     "get-registered-users-num", "get-online-users-num", "get-online-users-list",
                     "announce", "get-user-roster"):
            assert f"{ADMIN}#{name}" in nodes, (to, nodes)
        assert {"ping", "uptime"} <= nodes
        assert all(i.get("jid") == to and i.get("name") for i in got), [i.attrib for i in got]
    for to in ("localhost", user.bare):
        nodes = {i.get("node") for i in items(user, to)}
        assert nodes == {"ping", "uptime"}, nodes
    # The domain's disco#info has the commands feature; the list node and each command
    # node describe themselves (XEP-0050 2.3, 2.4).
    r = admin.iq("get", f"<query xmlns='{NS_INFO}'/>", to="localhost")
    assert NS_CMD in {f.get("var") for f in r.iter(q(NS_INFO, "feature"))}, tostring(r)
    r = admin.iq("get", f"<query xmlns='{NS_INFO}' node='{NS_CMD}'/>", to="localhost")
    ident = r.find(f"{q(NS_INFO, 'query')}/{q(NS_INFO, 'identity')}")
    assert (ident.get("category"), ident.get("type")) == ("automation", "command-list"), tostring(r)
    r = admin.iq("get", f"<query xmlns='{NS_INFO}' node='{ADMIN}#add-user'/>", to="localhost")
    assert r.get("type") == "result", tostring(r)
    qel = r.find(q(NS_INFO, "query"))
    assert qel.get("node") == f"{ADMIN}#add-user"
    ident = qel.find(q(NS_INFO, "identity"))
    assert (ident.get("category"), ident.get("type")) == ("automation", "command-node"), tostring(r)
    feats = {f.get("var") for f in qel.findall(q(NS_INFO, "feature"))}
    assert {NS_CMD, NS_DATA} <= feats, feats
    # A user may not see an admin command's node; an unknown node is item-not-found.
    r = user.iq("get", f"<query xmlns='{NS_INFO}' node='{ADMIN}#add-user'/>", to="localhost")
    assert error_condition(r) == "forbidden", tostring(r)
    r = admin.iq("get", f"<query xmlns='{NS_INFO}' node='{ADMIN}#no-such'/>", to="localhost")
    assert error_condition(r) == "item-not-found", tostring(r)


def test_public_commands_run_for_anyone(srv, clients):
    user = clients.add(srv.online("adp"))
    el = command_of(cmd(user, "ping"))
    assert el.get("status") == "completed" and el.get("sessionid"), tostring(el)
    assert notes(el) == [("info", "Pong")], tostring(el)
    el = command_of(cmd(user, "uptime", "execute", to=user.bare))
    assert el.get("status") == "completed"
    assert int(fields_of(el)["uptime"][0]) >= 0


# ----------------------------------------------------------------------------- add / delete / passwd

def test_add_user_then_log_in(srv, clients):
    """XEP-0133 4.1: the form (FORM_TYPE, accountjid, password, password-verify), completed:
    the account exists and logs in; the same JID again is <conflict/> (XEP-0133 5)."""
    admin = login_admin(srv, clients)
    node = f"{ADMIN}#add-user"
    first = command_of(cmd(admin, node, "execute"))
    assert first.get("status") == "executing" and first.get("node") == node, tostring(first)
    assert actions_of(first) == ("complete", ["complete"]), tostring(first)
    f = fields_of(first)
    assert f["FORM_TYPE"] == [ADMIN] and {"accountjid", "password", "password-verify"} <= set(f), f
    x = first.find(q(NS_DATA, "x"))
    assert x.get("type") == "form"
    jid = new_name()
    done = command_of(cmd(admin, node, "complete", first.get("sessionid"),
                          submit(accountjid=jid, password="pw-1", **{"password-verify": "pw-1"})))
    completed_ok(done)
    assert done.get("sessionid") == first.get("sessionid")
    assert can_login(srv, jid, "pw-1")
    assert not can_login(srv, jid, "other")
    # XEP-0133 5: an existing user is a <conflict/> error; the session survives it.
    first = command_of(cmd(admin, node))
    r = cmd(admin, node, "complete", first.get("sessionid"), submit(accountjid=jid, password="x"))
    assert cmd_error(r)[:2] == ("cancel", "conflict"), tostring(r)
    again = new_name()
    completed_ok(command_of(cmd(admin, node, "complete", first.get("sessionid"),
                                submit(accountjid=again, password="pw-2"))))
    assert can_login(srv, again, "pw-2")
    # Mismatched passwords: nothing created.
    other = new_name()
    completed_failed(run(admin, "add-user", accountjid=other, password="a",
                         **{"password-verify": "b"}), "Passwords do not match")
    assert not can_login(srv, other, "a")
    # 'execute' on the session runs the default action (complete).
    first = command_of(cmd(admin, node))
    third = new_name()
    done = command_of(cmd(admin, node, "execute", first.get("sessionid"),
                          submit(accountjid=third, password="pw-3")))
    completed_ok(done)
    assert can_login(srv, third, "pw-3")


def test_change_user_password(srv, clients):
    admin = login_admin(srv, clients)
    jid, _, pw = srv.new_user("adc")
    completed_ok(run(admin, "change-user-password", accountjid=jid, password="new-pw"))
    assert not can_login(srv, jid, pw)
    assert can_login(srv, jid, "new-pw")
    completed_failed(run(admin, "change-user-password", accountjid=new_name(), password="x"),
                     "does not exist")


def test_delete_user_with_review_stage(srv, clients):
    """delete-user has an optional second stage: next shows the list to confirm (actions
    prev and complete), prev goes back with the values kept, complete deletes; the
    user's session ends and the account no longer logs in."""
    admin = login_admin(srv, clients)
    victim = clients.add(srv.online("add"))
    keep_jid, _, keep_pw = srv.new_user("adk")
    node = f"{ADMIN}#delete-user"
    first = command_of(cmd(admin, node, "execute"))
    sid = first.get("sessionid")
    assert actions_of(first) == ("complete", ["next", "complete"]), tostring(first)
    second = command_of(cmd(admin, node, "next", sid, submit(accountjids=[victim.bare])))
    assert second.get("status") == "executing" and second.get("sessionid") == sid
    assert actions_of(second) == ("complete", ["prev", "complete"]), tostring(second)
    assert fields_of(second)["accountjids"] == [victim.bare]
    back = command_of(cmd(admin, node, "prev", sid))
    assert back.get("status") == "executing" and fields_of(back)["accountjids"] == [victim.bare]
    assert actions_of(back) == ("complete", ["next", "complete"])
    command_of(cmd(admin, node, "next", sid, submit(accountjids=[victim.bare])))
    # The review stage asks nothing new: complete needs no form.
    completed_ok(command_of(cmd(admin, node, "complete", sid)))
    assert victim.expect_stream_error() == "not-authorized"
    assert not can_login(srv, victim.bare, victim.password)
    assert can_login(srv, keep_jid, keep_pw)
    # One stage: complete at once; a full JID counts as its bare JID; an unknown account
    # fails the whole command with an error note and deletes nothing.
    completed_failed(run(admin, "delete-user", accountjids=[keep_jid, new_name()]),
                     "does not exist")
    assert can_login(srv, keep_jid, keep_pw)
    completed_failed(run(admin, "delete-user", accountjids=["not@a@jid"]), "not a valid JID")
    completed_ok(run(admin, "delete-user", accountjids=[keep_jid + "/res"]))
    assert not can_login(srv, keep_jid, keep_pw)
    # At 'next', what the first stage names is checked before the review: bad-payload.
    first = command_of(cmd(admin, node))
    r = cmd(admin, node, "next", first.get("sessionid"), submit(accountjids=[new_name()]))
    assert cmd_error(r) == ("modify", "bad-request", "bad-payload"), tostring(r)


def test_disable_and_reenable_user(srv, clients):
    """XEP-0133 4.3 / 4.4: disabling ends the user's sessions and refuses logins
    (<account-disabled/>, only once the password is right) while keeping its data;
    re-enabling lets it log in again; the disabled count and list follow."""
    admin = login_admin(srv, clients)
    u = clients.add(srv.online("adv"))
    u2 = clients.add(srv.login(u.bare, u.password, resource="second"))
    contact = new_name()
    u.iq("set", f"<query xmlns='{NS_ROSTER}'><item jid='{contact}' name='Kept'/></query>")
    n0 = count(admin, "get-disabled-users-num", "disabledusersnum")
    completed_ok(run(admin, "disable-user", accountjids=[u.bare]))
    assert u.expect_stream_error() == "not-authorized"
    assert u2.expect_stream_error() == "not-authorized"
    for mech in ("SCRAM-SHA-1", "PLAIN"):
        with pytest.raises(SASLFailure) as e:
            srv.login(u.bare, u.password, mech=mech)
        assert e.value.condition == "account-disabled", mech
        with pytest.raises(SASLFailure) as e:
            srv.login(u.bare, "wrong", mech=mech)
        assert e.value.condition == "not-authorized", mech
    assert count(admin, "get-disabled-users-num", "disabledusersnum") == n0 + 1
    assert u.bare in fields_of(run(admin, "get-disabled-users-list"))["disableduserjids"]
    roster = run(admin, "get-user-roster", accountjid=u.bare).find(f"{q(NS_DATA, 'x')}/{q(NS_ROSTER, 'query')}")
    assert contact in {i.get("jid") for i in roster.findall(q(NS_ROSTER, "item"))}
    completed_ok(run(admin, "reenable-user", accountjids=[u.bare]))
    assert can_login(srv, u.bare, u.password)
    assert count(admin, "get-disabled-users-num", "disabledusersnum") == n0
    completed_failed(run(admin, "reenable-user", accountjids=[new_name()]), "does not exist")
    completed_failed(run(admin, "disable-user", accountjids=["x@elsewhere.example"]), "not served here")


# ----------------------------------------------------------------------------- counts and lists

def test_counts_and_lists(srv, clients):
    """get-registered-users-num / -list count the domain's accounts; get-online-users-num /
    -list its users with a session; active (available, not away/xa) and idle split them."""
    boss = login_admin(srv, clients, "boss@example.org")
    reg0 = count(boss, "get-registered-users-num", "registeredusersnum")
    # Sessions of earlier tests may still be closing: wait for a steady count.
    on0, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline:
        n = count(boss, "get-online-users-num", "onlineusersnum")
        if n == on0:
            break
        on0 = n
        time.sleep(0.3)
    act0 = count(boss, "get-active-users-num", "activeusersnum")
    idle0 = count(boss, "get-idle-users-num", "idleusersnum")
    a_jid, _, a_pw = srv.new_user("ada", domain="example.org")
    b_jid, _, b_pw = srv.new_user("adb", domain="example.org")
    srv.new_user("adz", domain="example.org")  # registered, never online
    srv.new_user("adl")  # another domain: not counted
    assert count(boss, "get-registered-users-num", "registeredusersnum") == reg0 + 3
    a1 = clients.add(srv.login(a_jid, a_pw, presence=True))
    a2 = clients.add(srv.login(a_jid, a_pw))  # a second session of the same user
    b = clients.add(srv.login(b_jid, b_pw))  # online, no presence: idle
    assert a1 and a2 and b
    assert count(boss, "get-online-users-num", "onlineusersnum") == on0 + 2
    assert count(boss, "get-active-users-num", "activeusersnum") == act0 + 1
    assert count(boss, "get-idle-users-num", "idleusersnum") == idle0 + 1
    lst = fields_of(completed_ok(run(boss, "get-online-users-list")))["onlineuserjids"]
    assert a_jid in lst and b_jid in lst and all(j.endswith("@example.org") for j in lst), lst
    assert fields_of(run(boss, "get-active-users"))["activeuserjids"].count(a_jid) == 1
    assert b_jid not in fields_of(run(boss, "get-active-users"))["activeuserjids"]
    assert b_jid in fields_of(run(boss, "get-idle-users"))["idleuserjids"]
    reg = fields_of(run(boss, "get-registered-users-list", max_items="none"))["registereduserjids"]
    assert a_jid in reg and b_jid in reg and "boss@example.org" in reg, reg
    assert len(fields_of(run(boss, "get-registered-users-list", max_items="25"))["registereduserjids"]) <= 25
    b.close()
    a2.close()
    deadline = time.monotonic() + 5
    while count(boss, "get-online-users-num", "onlineusersnum") != on0 + 1:
        assert time.monotonic() < deadline, "closed sessions still counted"
        time.sleep(0.1)


def test_get_user_roster_and_stats(srv, clients):
    admin = login_admin(srv, clients)
    u = clients.add(srv.online("adr"))
    contact = new_name()
    r = u.iq("set", f"<query xmlns='{NS_ROSTER}'><item jid='{contact}' name='Pal'/></query>")
    assert r.get("type") == "result", tostring(r)
    for field in ("accountjid", "accountjids"):
        el = completed_ok(run(admin, "get-user-roster", **{field: u.bare}))
        assert fields_of(el)["accountjid"] == [u.bare]
        roster = el.find(f"{q(NS_DATA, 'x')}/{q(NS_ROSTER, 'query')}")
        assert roster is not None, tostring(el)
        got = {(i.get("jid"), i.get("name")) for i in roster.findall(q(NS_ROSTER, "item"))}
        assert (contact, "Pal") in got, got
    el = completed_ok(run(admin, "user-stats", accountjid=u.bare))
    f = fields_of(el)
    assert f["rostersize"] == ["1"] and u.jid.split("/", 1)[1] in f["onlineresources"], f


# ----------------------------------------------------------------------------- sessions and announce

def test_end_user_session_full_and_bare(srv, clients):
    """XEP-0133 4.5: a full JID ends that session only, a bare JID all of the user's."""
    admin = login_admin(srv, clients)
    jid, _, pw = srv.new_user("ade")
    one = clients.add(srv.login(jid, pw, resource="one", presence=True))
    two = clients.add(srv.login(jid, pw, resource="two", presence=True))
    three = clients.add(srv.login(jid, pw, resource="three"))
    el = completed_ok(run(admin, "end-user-session", accountjids=[one.jid]))
    assert "1 session" in notes(el)[0][1], notes(el)
    assert one.expect_stream_error() == "policy-violation"
    assert two.ping_server().get("type") == "result"
    completed_ok(run(admin, "end-user-session", accountjids=[jid]))
    assert two.expect_stream_error() == "policy-violation"
    assert three.expect_stream_error() == "policy-violation"
    assert can_login(srv, jid, pw), "ending a session does not lock the account"
    srv.assert_healthy(admin)


def test_announce_reaches_the_domains_online_users(srv, clients):
    admin = login_admin(srv, clients)
    a = clients.add(srv.online("adn"))
    a2 = clients.add(srv.login(a.bare, a.password, resource="second"))
    b = clients.add(srv.online("adn"))
    other = clients.add(srv.online("adn", domain="example.org"))
    text = f"maintenance at noon {uuid.uuid4().hex[:6]}"
    el = completed_ok(run(admin, "announce", subject="Notice", announcement=[text, "line two"]))
    for c in (a, a2, b, admin):
        m = c.recv(lambda e: e.tag == C("message") and text in (e.findtext(C("body")) or ""), 5,
                   what="announcement")
        assert m.get("from") == "localhost" and m.get("to") == c.jid, tostring(m)
        assert m.findtext(C("body")) == f"{text}\nline two"
        assert m.findtext(C("subject")) == "Notice"
    other.expect_nothing(lambda e: e.tag == C("message"), 0.7)
    assert "sent to" in notes(el)[0][1]


# ----------------------------------------------------------------------------- errors

def test_request_errors(srv, clients):
    """XEP-0050 4.6: each bad request gets its error, affecting only its own session."""
    admin = login_admin(srv, clients)
    user = clients.add(srv.online("adx"))
    add = f"{ADMIN}#add-user"
    # Not an admin: forbidden (cancel), at the domain and at the own bare JID.
    for to in ("localhost", user.bare):
        assert cmd_error(cmd(user, add, "execute", to=to))[:2] == ("cancel", "forbidden")
    # An admin of localhost is no admin of example.org.
    assert cmd_error(cmd(admin, add, to="example.org"))[1] == "forbidden"
    # Unknown node.
    assert cmd_error(cmd(admin, f"{ADMIN}#no-such"))[:2] == ("cancel", "item-not-found")
    # Unknown action: malformed-action; a sessionid never issued: bad-sessionid.
    assert cmd_error(cmd(admin, add, "jump")) == ("modify", "bad-request", "malformed-action")
    assert cmd_error(cmd(admin, add, "complete", "nope", submit(accountjid=new_name(), password="x"))) \
        == ("modify", "bad-request", "bad-sessionid")
    # An action other than execute without a session.
    assert cmd_error(cmd(admin, add, "next")) == ("modify", "bad-request", "bad-sessionid")
    # A language tag that is not one.
    assert cmd_error(cmd(admin, add, lang="!!")) == ("modify", "bad-request", "bad-locale")
    first = command_of(cmd(admin, add))
    sid = first.get("sessionid")
    # Actions the stage does not offer: bad-action (the session survives).
    assert cmd_error(cmd(admin, add, "next", sid, submit())) == ("modify", "bad-request", "bad-action")
    assert cmd_error(cmd(admin, add, "prev", sid)) == ("modify", "bad-request", "bad-action")
    # Payloads: no form, a form that is not a submission, another FORM_TYPE, a required
    # field missing: bad-payload, and the session survives for a corrected submission.
    assert cmd_error(cmd(admin, add, "complete", sid)) == ("modify", "bad-request", "bad-payload")
    bad_type = submit(accountjid=new_name(), password="x").replace("type='submit'", "type='form'")
    assert cmd_error(cmd(admin, add, "complete", sid, bad_type))[2] == "bad-payload"
    assert cmd_error(cmd(admin, add, "complete", sid,
                         submit("urn:other", accountjid=new_name(), password="x")))[2] == "bad-payload"
    assert cmd_error(cmd(admin, add, "complete", sid, submit(accountjid=new_name())))[2] == "bad-payload"
    # The same session id from another resource of the same account: bad-sessionid.
    other_res = login_admin(srv, clients, resource="other")
    assert cmd_error(cmd(other_res, add, "complete", sid, submit(accountjid=new_name(), password="x")))[2] \
        == "bad-sessionid"
    # A session for another node: bad-sessionid.
    assert cmd_error(cmd(admin, f"{ADMIN}#change-user-password", "complete", sid,
                         submit(accountjid=new_name(), password="x")))[2] == "bad-sessionid"
    # Not a valid JID / a domain not served here / a user of a domain not administered.
    completed_failed(command_of(cmd(admin, add, "complete", sid,
                                    submit(accountjid="bad@jid@here", password="x"))), "not a valid JID")
    # The session is over: session-expired (not-allowed, cancel).
    assert cmd_error(cmd(admin, add, "complete", sid, submit(accountjid=new_name(), password="x"))) \
        == ("cancel", "not-allowed", "session-expired")
    completed_failed(run(admin, "add-user", accountjid="x@elsewhere.example", password="x"),
                     "not served here")
    first = command_of(cmd(admin, add))
    r = cmd(admin, add, "complete", first.get("sessionid"), submit(accountjid=new_name("example.org"), password="x"))
    assert cmd_error(r)[1] == "forbidden"
    # Cancel: status canceled, then the session is gone.
    first = command_of(cmd(admin, add))
    el = command_of(cmd(admin, add, "cancel", first.get("sessionid")))
    assert el.get("status") == "canceled", tostring(el)
    assert cmd_error(cmd(admin, add, "cancel", first.get("sessionid")))[2] == "session-expired"
    # A command IQ of type get is not allowed; to another user's bare JID it is not answered.
    r = admin.iq("get", f"<command xmlns='{NS_CMD}' node='{add}'/>", to="localhost")
    assert error_condition(r) == "not-allowed", tostring(r)
    assert error_condition(cmd(admin, add, to=user.bare)) == "service-unavailable"
    srv.assert_healthy(admin, user)


def test_admin_of_another_domain_by_configuration(srv, clients):
    """[admin.domains]: root@localhost administers example.org (not localhost);
    boss@example.org administers example.org only."""
    root = login_admin(srv, clients, "root@localhost")
    boss = login_admin(srv, clients, "boss@example.org")
    jid = new_name("example.org")
    completed_ok(run(root, "add-user", to="example.org", accountjid=jid, password="pw"))
    assert can_login(srv, jid, "pw")
    # root may use its rights on example.org from wherever it addresses the command ...
    completed_ok(run(root, "change-user-password", to="example.org", accountjid=jid, password="pw2"))
    # ... but is no admin of its own domain.
    assert cmd_error(cmd(root, f"{ADMIN}#add-user"))[1] == "forbidden"
    assert {i.get("node") for i in items(root, "localhost")} == {"ping", "uptime"}
    assert f"{ADMIN}#add-user" in {i.get("node") for i in items(root, "example.org")}
    first = command_of(cmd(boss, f"{ADMIN}#add-user"))
    r = cmd(boss, f"{ADMIN}#add-user", "complete", first.get("sessionid"),
            submit(accountjid=new_name("localhost"), password="x"))
    assert cmd_error(r)[1] == "forbidden"
    completed_ok(run(boss, "delete-user", accountjids=[jid]))
    assert not can_login(srv, jid, "pw2")


def test_sessions_are_bounded_and_expire(srv, clients):
    """max_sessions = 3 per requester: a fourth ends the oldest (session-expired); a
    session idle for session_timeout_secs expires."""
    admin = login_admin(srv, clients)
    add = f"{ADMIN}#add-user"
    sids = [command_of(cmd(admin, add)).get("sessionid") for _ in range(4)]
    assert len(set(sids)) == 4
    assert cmd_error(cmd(admin, add, "cancel", sids[0]))[2] == "session-expired"
    for s in sids[1:]:
        assert command_of(cmd(admin, add, "cancel", s)).get("status") == "canceled"
    sid = command_of(cmd(admin, add)).get("sessionid")
    time.sleep(SESSION_TIMEOUT + 0.5)
    assert cmd_error(cmd(admin, add, "complete", sid, submit(accountjid=new_name(), password="x"))) \
        == ("cancel", "not-allowed", "session-expired")


# ----------------------------------------------------------------------------- slixmpp

def test_slixmpp_xep_0050_add_user(srv):
    """slixmpp's xep_0050 client workflow: get_commands, start_command (the form),
    complete_command with the filled form; the account then logs in."""
    import asyncio
    import ssl
    slixmpp = pytest.importorskip("slixmpp")
    jid = new_name()

    async def scenario():
        c = slixmpp.ClientXMPP("admin@localhost", PW)
        for p in ("xep_0030", "xep_0004", "xep_0050"):
            c.register_plugin(p)
        c.ssl_context.check_hostname = False
        c.ssl_context.verify_mode = ssl.CERT_NONE
        started = asyncio.get_event_loop().create_future()
        c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        c.connect(srv.host, srv.c2s_port)
        await asyncio.wait_for(started, 15)
        try:
            found = await c["xep_0050"].get_commands(jid="localhost", timeout=10)
            nodes = {item[1] for item in found["disco_items"]["items"]}
            assert f"{ADMIN}#add-user" in nodes, nodes
            done = asyncio.get_event_loop().create_future()

            def on_form(iq, session):
                form = iq["command"]["form"]
                assert iq["command"]["status"] == "executing"
                assert "accountjid" in form.get_fields()
                answer = c["xep_0004"].make_form(ftype="submit")
                answer.add_field(var="FORM_TYPE", ftype="hidden", value=ADMIN)
                answer.add_field(var="accountjid", value=jid)
                answer.add_field(var="password", value="slix-pw")
                answer.add_field(var="password-verify", value="slix-pw")
                session["payload"] = answer
                session["next"] = on_done
                c["xep_0050"].complete_command(session)

            def on_done(iq, session):
                done.done() or done.set_result(iq)

            def on_error(iq, session):
                done.done() or done.set_exception(AssertionError(str(iq)))

            c["xep_0050"].start_command("localhost", f"{ADMIN}#add-user",
                                        {"next": on_form, "error": on_error})
            iq = await asyncio.wait_for(done, 10)
            assert iq["command"]["status"] == "completed", str(iq)
            assert [n[0] for n in iq["command"]["notes"]] == ["info"], str(iq)
        finally:
            c.disconnect()
            await asyncio.sleep(0.2)

    asyncio.run(asyncio.wait_for(scenario(), 40))
    assert can_login(srv, jid, "slix-pw")


# ----------------------------------------------------------------------------- cluster

@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_cluster_online_count_kick_and_announce(tmp_path_factory):
    """3 nodes: the admin on node 1 counts users online on every node, ends a session on
    node 3 and reaches users on all nodes with an announcement."""
    cl = Cluster(str(tmp_path_factory.mktemp("adhoc-cluster")), 3,
                 extra_config=lambda node: ["[admin]", 'admins = ["admin@localhost"]'])
    made = []
    try:
        cl[1].add_user("admin@localhost", PW)
        admin = cl[1].login_eventually("admin@localhost", PW, presence=True)[0]
        made.append(admin)
        users = [cl[i].online("adcl") for i in (1, 2, 3)]
        made.extend(users)
        deadline = time.monotonic() + 10
        while True:
            n = count(admin, "get-online-users-num", "onlineusersnum", to="localhost")
            if n == 4:
                break
            assert time.monotonic() < deadline, f"online users seen from node 1: {n}, expected 4"
            time.sleep(0.2)
        lst = fields_of(run(admin, "get-online-users-list", to="localhost"))["onlineuserjids"]
        assert set(lst) == {"admin@localhost", *(u.bare for u in users)}, lst
        text = f"cluster announcement {uuid.uuid4().hex[:6]}"
        completed_ok(run(admin, "announce", to="localhost", announcement=text))
        for u in users:
            m = u.recv(lambda e: e.tag == C("message") and e.findtext(C("body")) == text, 10,
                       what="announcement on another node")
            assert m.get("from") == "localhost"
        el = completed_ok(run(admin, "end-user-session", to="localhost", accountjids=[users[2].bare]))
        assert "1 session" in notes(el)[0][1], notes(el)
        assert users[2].expect_stream_error(10) == "policy-violation"
        assert users[1].ping_server().get("type") == "result"
        # delete-user through node 1 ends the user's session on node 2.
        completed_ok(run(admin, "delete-user", to="localhost", accountjids=[users[1].bare]))
        assert users[1].expect_stream_error(10) == "not-authorized"
        assert users[0].ping_server().get("type") == "result"
        # Sessions that never sent presence nor asked for the roster have no route in the
        # table: every node is still asked to close the user's sessions.
        jid, _, pw = cl[1].new_user("adq")
        quiet2 = cl[2].login_eventually(jid, pw, resource="q2")[0]
        quiet3 = cl[3].login_eventually(jid, pw, resource="q3")[0]
        made.extend([quiet2, quiet3])
        completed_ok(run(admin, "disable-user", to="localhost", accountjids=[jid]))
        assert quiet2.expect_stream_error(10) == "not-authorized"
        assert quiet3.expect_stream_error(10) == "not-authorized"
        for i in (1, 2, 3):
            with pytest.raises(SASLFailure) as e:
                cl[i].login(jid, pw)
            assert e.value.condition == "account-disabled", i
        other, _, opw = cl[1].new_user("adq")
        quiet = cl[3].login_eventually(other, opw, resource="only")[0]
        made.append(quiet)
        completed_ok(run(admin, "end-user-session", to="localhost", accountjids=[f"{other}/only"]))
        assert quiet.expect_stream_error(10) == "policy-violation"
    finally:
        for c in made:
            c.shutdown()
        cl.stop()
