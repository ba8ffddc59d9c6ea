"""Ports of the XEP-0050 Ad-Hoc Commands interop tests.

Smack's AdHocCommandIntegrationTest runs commands between two clients: conOne registers a
command, conTwo discovers and executes it at conOne's full JID. The server's part is to route
the <command/> IQs (execute / next / prev / complete, sessionid, forms, errors) between the
full JIDs untouched (RFC 6120 8.5.3.1, 10.5.4); conOne's command logic is played by this test,
as Smack's AdHocCommandManager plays it: singleStage, multiStage (a=42, b=23, '+' -> 65),
multiStageWithPrev (a=42, prev, a=77 -> 100), multiStageInvalidArg (a='forty-two' ->
<bad-request/>).

The server extensions' ServiceAdministrationIntegrationTest (XEP-0133) runs the server's own
commands as the administrator the suite is configured with, addressed (like Smack's
AdHocCommandManager there) to the administrator's own bare JID: Starling answers them there as
at the domain (node/src/modules/adhoc.rs). The fixture ``admin_server`` configures
``[admin] admins = ["admin@localhost"]``. Ported: testGetCommandsForUser (the user's list has
no admin command, executing one is <forbidden/>), testGetCommandsForAdmin (non-empty list),
and the command tests Smack can run against Starling: testAddUser (then log in),
testAddUserWithMismatchedPassword / WithRemoteJid / WithInvalidJid (failed: an error note),
testDeleteUser / WithFullJid, testDisableUser / GetsSessionsTerminated / CantLogin /
DoesntAffectRoster, testReenableUser / CanLogin / NonExistingUser / RemoteUser,
testEndUserSessionFullJid / BareJid / TwoUsers, testChangePassword, testUserRoster,
testGetUserStatistics, testGetRegisteredUsersNumber, testDisabledUsersNumber,
testGetOnlineUsersNumber, testGetActiveUsersNumber, testGetIdleUsersNumber,
testGetRegisteredUsersList, testDisabledUsersList, testGetOnlineUsersListSimple,
testGetActiveUsersListSimple, testGetIdleUsersList, testSendAnnouncementToOnlineUsers.
Smack's executeCommandWithArgs is execute (status executing, a form) then complete with the
filled form (a field the form lacks is an error of the test); assertCommandCompletedSuccessfully
is a result with status completed and no error note, assertCommandFailed an IQ error or an
error note. Not possible on Starling (commands it does not offer, so checkServerSupportCommand
skips them there): last login, MOTD and welcome messages, edit-admin (administrators come from
the configuration), blacklist / whitelist, restart / shutdown.
"""

import pytest

from conftest import TARGET, StarlingServer
from rawxmpp import C, SASLFailure, q, tostring
from test_sint_helpers import error_condition, rnd

NS_CMD = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_INFO = "http://jabber.org/protocol/disco#info"


def form(kind, var, title=None, options=None):
    opts = "".join(f"<option><value>{o}</value></option>" for o in (options or []))
    t = "list-single" if options else "text-single"
    title = f"<title>{title}</title>" if title else ""
    return (f"<x xmlns='{NS_DATA}' type='{kind}'>{title}<field var='{var}' type='{t}'><required/>{opts}"
            "</field></x>")


def submit(**values):
    fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in values.items())
    return f"<x xmlns='{NS_DATA}' type='submit'>{fields}</x>"


class MultiStage:
    """conOne's side of Smack's MyMultiStageAdHocCommandServer."""

    def __init__(self, node):
        self.node, self.sid, self.stage, self.a, self.b = node, f"sess-{rnd()}", 0, None, None

    def handle(self, req):
        cmd = req.find(q(NS_CMD, "command"))
        action = cmd.get("action") or "execute"
        x = cmd.find(q(NS_DATA, "x"))
        vals = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))} if x is not None else {}
        if action == "execute" and self.stage == 0:
            self.stage = 1
            return "executing", "<actions execute='next'><next/></actions>" + form("form", "a", "Variable a")
        if action == "prev":
            self.stage -= 1
            if self.stage == 1:
                return "executing", "<actions execute='next'><prev/><next/></actions>" + form("form", "a", "Variable a")
            return "executing", "<actions execute='complete'><prev/><complete/></actions>" + form("form", "b")
        if action in ("next", "execute") and self.stage in (1, 2):
            key = "a" if self.stage == 1 else "b"
            try:
                setattr(self, key, int(vals[key]))
            except (KeyError, TypeError, ValueError):
                return None, "bad-request"
            self.stage += 1
            if self.stage == 2:
                return "executing", "<actions execute='next'><prev/><next/></actions>" + form("form", "b", "Variable b")
            return "executing", ("<actions execute='complete'><prev/><complete/></actions>"
                                 + form("form", "op", "Operation", ["+", "-"]))
        if action in ("complete", "next") and self.stage == 3:
            op = vals.get("op")
            if op not in ("+", "-"):
                return None, "bad-request"
            res = self.a + self.b if op == "+" else self.a - self.b
            return "completed", (f"<x xmlns='{NS_DATA}' type='result'><title>Result</title>"
                                 f"<field var='result' type='text-single'><value>{res}</value></field></x>")
        return None, "bad-request"


def step(one, two, handler, action, payload="", sid=None):
    """conTwo sends one command request to conOne's full JID; conOne answers through the
    handler; returns the IQ conTwo receives."""
    iid = f"cmd-{rnd()}"
    s = f" sessionid='{sid}'" if sid else ""
    a = f" action='{action}'" if action else ""
    two.send_raw(f"<iq type='set' id='{iid}' to='{one.jid}'><command xmlns='{NS_CMD}' node='{handler.node}'{s}{a}>"
                 f"{payload}</command></iq>")
    req = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what="command request at conOne")
    assert req.get("from") == two.jid and req.get("type") == "set", tostring(req)
    cmd = req.find(q(NS_CMD, "command"))
    assert cmd is not None and cmd.get("node") == handler.node and cmd.get("sessionid") == sid, tostring(req)
    status, body = handler.handle(req)
    if status is None:
        one.send_raw(f"<iq type='error' id='{iid}' to='{two.jid}'><command xmlns='{NS_CMD}' node='{handler.node}'/>"
                     f"<error type='modify'><{body} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                     f"<bad-payload xmlns='{NS_CMD}:errors'/></error></iq>")
    else:
        one.send_raw(f"<iq type='result' id='{iid}' to='{two.jid}'><command xmlns='{NS_CMD}' node='{handler.node}' "
                     f"sessionid='{handler.sid}' status='{status}'>{body}</command></iq>")
    r = two.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what="command answer at conTwo")
    assert r.get("from") == one.jid, tostring(r)
    return r


def status_of(r):
    assert r.get("type") == "result", tostring(r)
    c = r.find(q(NS_CMD, "command"))
    return c.get("status"), c


def result_field(c, var):
    x = c.find(q(NS_DATA, "x"))
    for f in x.findall(q(NS_DATA, "field")):
        if f.get("var") == var:
            return f
    return None


def pair(server, clients):
    return clients.add(server.online("sintcmd1")), clients.add(server.online("sintcmd2"))


def discover(one, two, node, name):
    """conTwo's getRemoteCommand: disco#items of conOne's full JID, node 'commands', answered
    by conOne's client."""
    iid = f"cmds-{rnd()}"
    two.send_raw(f"<iq type='get' id='{iid}' to='{one.jid}'><query xmlns='{NS_ITEMS}' node='{NS_CMD}'/></iq>")
    req = one.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what="command discovery at conOne")
    one.send_raw(f"<iq type='result' id='{iid}' to='{req.get('from')}'><query xmlns='{NS_ITEMS}' node='{NS_CMD}'>"
                 f"<item jid='{one.jid}' node='{node}' name='{name}'/></query></iq>")
    r = two.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, 5, what="command list")
    items = [i.get("node") for i in r.iter(q(NS_ITEMS, "item"))]
    assert node in items, tostring(r)


class SingleStage:
    def __init__(self, node):
        self.node, self.sid = node, f"sess-{rnd()}"

    def handle(self, req):
        return "completed", f"<x xmlns='{NS_DATA}' type='result'><field var='my-field' type='text-private'/></x>"


def test_single_stage_ad_hoc_command(server, clients):
    """AdHocCommandIntegrationTest.singleStageAdHocCommandTest: the result form of conOne's
    'test-list' command reaches conTwo with its field 'my-field'."""
    one, two = pair(server, clients)
    h = SingleStage("test-list")
    discover(one, two, h.node, "Return a list for testing purposes")
    status, c = status_of(step(one, two, h, "execute"))
    assert status == "completed" and result_field(c, "my-field") is not None, tostring(c)


def run_multi(one, two, h, values, with_prev=False):
    status, c = status_of(step(one, two, h, "execute"))
    assert status == "executing" and c.get("sessionid") == h.sid
    sid = c.get("sessionid")
    status, c = status_of(step(one, two, h, "next", submit(a=values[0]), sid))
    assert status == "executing" and result_field(c, "b") is not None, tostring(c)
    if with_prev:
        status, c = status_of(step(one, two, h, "prev", "", sid))
        assert status == "executing" and result_field(c, "a") is not None, tostring(c)
        status, c = status_of(step(one, two, h, "next", submit(a=values[1]), sid))
        assert result_field(c, "b") is not None, tostring(c)
    status, c = status_of(step(one, two, h, "next", submit(b=23), sid))
    assert status == "executing" and result_field(c, "op") is not None, tostring(c)
    status, c = status_of(step(one, two, h, "complete", submit(op="+"), sid))
    assert status == "completed", tostring(c)
    return result_field(c, "result").findtext(q(NS_DATA, "value"))


def test_multi_stage_ad_hoc_command(server, clients):
    """...multiStageAdHocCommandTest: a=42, b=23, op '+': the completed result is 65."""
    one, two = pair(server, clients)
    assert run_multi(one, two, MultiStage("my-multi-stage-command"), (42,)) == "65"


def test_multi_stage_with_prev_ad_hoc_command(server, clients):
    """...multiStageWithPrevAdHocCommandTest: a=42, then 'prev', a=77, b=23, '+': 100."""
    one, two = pair(server, clients)
    assert run_multi(one, two, MultiStage("my-multi-stage-with-prev-command"), (42, 77), with_prev=True) == "100"


def test_multi_stage_invalid_arg_ad_hoc_command(server, clients):
    """...multiStageInvalidArgAdHocCommandTest: a='forty-two' is answered with <bad-request/>,
    which reaches conTwo as conOne sent it."""
    one, two = pair(server, clients)
    h = MultiStage("my-multi-stage-invalid-arg-command")
    status, c = status_of(step(one, two, h, "execute"))
    r = step(one, two, h, "next", submit(a="forty-two"), c.get("sessionid"))
    assert r.get("type") == "error" and error_condition(r) == "bad-request", tostring(r)
    assert r.find(C("error")).find(q(NS_CMD + ":errors", "bad-payload")) is not None, tostring(r)


def test_get_commands_for_user(server, clients):
    """ServiceAdministrationIntegrationTest.testGetCommandsForUser (XEP-0133 3, XEP-0050 2.2):
    the command list of conOne's own bare JID is answered, and so is the domain's; neither
    lists an admin command to a user, and executing one is refused with <forbidden/>."""
    one = clients.add(server.online("sintcmd"))
    for to in (one.bare, server.domain):
        r = one.iq("get", f"<query xmlns='{NS_ITEMS}' node='{NS_CMD}'/>", to=to)
        assert r.get("type") == "result", tostring(r)
        assert r.find(q(NS_ITEMS, "query")).get("node") == NS_CMD, tostring(r)
        nodes = [i.get("node") for i in r.iter(q(NS_ITEMS, "item"))]
        assert not any(n.startswith(ADMIN) for n in nodes), nodes
    r = one.iq("set", f"<command xmlns='{NS_CMD}' node='{ADMIN}#add-user' action='execute'/>",
               to=server.domain)
    assert r.get("type") == "error" and error_condition(r) == "forbidden", tostring(r)


# ------------------------------------------------------------------ ServiceAdministrationIntegrationTest

ADMIN = "http://jabber.org/protocol/admin"
ADMIN_PW = "sint-admin-pw"


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    """A server whose configuration names admin@localhost an administrator (the suite's
    adminAccountUsername). Starling's configuration: not run against Prosody."""
    if TARGET == "prosody":
        pytest.skip("Starling's [admin] configuration")
    s = StarlingServer(str(tmp_path_factory.mktemp("sintadmin")))
    with open(s.config_path, "a") as f:
        f.write('\n[admin]\nadmins = ["admin@localhost"]\n')
    s.start()
    s.add_user("admin@localhost", ADMIN_PW)
    yield s
    s.stop()


@pytest.fixture
def admin(admin_server, clients):
    c = clients.add(admin_server.login("admin@localhost", ADMIN_PW, presence=True))
    c.bare = "admin@localhost"
    return c


def discover_commands(c, to):
    r = c.iq("get", f"<query xmlns='{NS_ITEMS}' node='{NS_CMD}'/>", to=to)
    assert r.get("type") == "result", tostring(r)
    return [i.get("node") for i in r.iter(q(NS_ITEMS, "item"))]


def execute_with_args(admin, node, **args):
    """executeCommandWithArgs: execute (executing, a form with the named fields), fill the
    form, complete; returns the answer IQ (result or error)."""
    iid = f"sa-{rnd()}"
    r = admin.iq("set", f"<command xmlns='{NS_CMD}' node='{node}' action='execute'/>", to=admin.bare, iid=iid)
    c = r.find(q(NS_CMD, "command"))
    assert r.get("type") == "result" and c.get("status") == "executing", tostring(r)
    form = c.find(q(NS_DATA, "x"))
    assert form is not None and form.get("type") == "form", tostring(r)
    kinds = {f.get("var"): f.get("type") for f in form.findall(q(NS_DATA, "field"))}
    out = [f"<x xmlns='{NS_DATA}' type='submit'>"]
    for f in form.findall(q(NS_DATA, "field")):
        if f.get("type") == "hidden":
            out.append(f"<field var='{f.get('var')}'><value>{f.findtext(q(NS_DATA, 'value'))}</value></field>")
    for var, val in args.items():
        assert var in kinds, f"Field {var} not found in form: {tostring(form)}"
        vals = [v.strip() for v in val.split(",")] if kinds[var] in ("jid-multi", "list-multi") else [val]
        out.append(f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in vals) + "</field>")
    out.append("</x>")
    return admin.iq("set", f"<command xmlns='{NS_CMD}' node='{node}' action='complete' "
                           f"sessionid='{c.get('sessionid')}'>{''.join(out)}</command>", to=admin.bare)


def execute_simple(admin, node):
    return admin.iq("set", f"<command xmlns='{NS_CMD}' node='{node}' action='execute'/>", to=admin.bare)


def note_types(r):
    return [n.get("type") for n in r.iter(q(NS_CMD, "note"))]


def assert_completed_successfully(r):
    assert r.get("type") == "result", tostring(r)
    assert r.find(q(NS_CMD, "command")).get("status") == "completed", tostring(r)
    assert "error" not in note_types(r), tostring(r)


def assert_failed(r):
    assert r.get("type") == "error" or "error" in note_types(r), tostring(r)


def form_value(r, var):
    for f in r.iter(q(NS_DATA, "field")):
        if f.get("var") == var:
            return [v.text for v in f.findall(q(NS_DATA, "value"))]
    raise AssertionError(f"no field {var}: {tostring(r)}")


def logs_in(srv, jid, pw):
    try:
        srv.login(jid, pw).close()
        return True
    except SASLFailure:
        return False


def test_get_commands_for_admin(admin):
    """testGetCommandsForAdmin: the administrator's command list is not empty (and has the
    commands the rest of the suite checks for with checkServerSupportCommand)."""
    nodes = discover_commands(admin, admin.bare)
    assert nodes, "empty command list for an administrator"
    for name in ("add-user", "delete-user", "change-user-password", "end-user-session",
                 "get-registered-users-num", "get-online-users-num", "get-online-users-list",
                 "get-active-users", "announce", "get-user-roster"):
        assert f"{ADMIN}#{name}" in nodes, nodes


def test_add_user(admin_server, admin):
    jid = f"addusertest-{rnd(5)}@localhost"
    r = execute_with_args(admin, f"{ADMIN}#add-user", accountjid=jid, password="password",
                          **{"password-verify": "password"})
    assert_completed_successfully(r)
    assert logs_in(admin_server, jid, "password")


def test_add_user_with_mismatched_password(admin_server, admin):
    jid = f"addusermismatchedpasswordtest-{rnd(5)}@localhost"
    assert_failed(execute_with_args(admin, f"{ADMIN}#add-user", accountjid=jid, password="password",
                                    **{"password-verify": "password2"}))
    assert not logs_in(admin_server, jid, "password")


def test_add_user_with_remote_jid(admin):
    assert_failed(execute_with_args(admin, f"{ADMIN}#add-user",
                                    accountjid=f"adduserinvalidjidtest-{rnd(5)}@somewhereelse.org",
                                    password="password", **{"password-verify": "password2"}))


def test_add_user_with_invalid_jid(admin):
    assert_failed(execute_with_args(admin, f"{ADMIN}#add-user",
                                    accountjid=f"adduserinvalidjidtest-{rnd(5)}@invalid@domain",
                                    password="password", **{"password-verify": "password2"}))


@pytest.mark.parametrize("suffix", ["", "/resource"], ids=["bare", "full"])
def test_delete_user(admin_server, admin, suffix):
    """testDeleteUser / testDeleteUserWithFullJid: a full JID is taken as its bare JID."""
    jid = f"deleteusertest-{rnd(5)}@localhost"
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#add-user", accountjid=jid,
                                                    password="password", **{"password-verify": "password"}))
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#delete-user", accountjids=jid + suffix))
    assert not logs_in(admin_server, jid, "password")


def test_change_password(admin_server, admin):
    jid = f"changepasswordtest-{rnd(5)}@localhost"
    execute_with_args(admin, f"{ADMIN}#add-user", accountjid=jid, password="password",
                      **{"password-verify": "password"})
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#change-user-password",
                                                    accountjid=jid, password="password2"))
    assert logs_in(admin_server, jid, "password2")
    assert not logs_in(admin_server, jid, "password")


def test_registered_and_online_numbers_and_list(admin_server, admin, clients):
    """testGetRegisteredUsersNumber / testGetOnlineUsersNumber (at least the three test
    accounts) / testGetOnlineUsersListSimple (they are listed)."""
    cons = [clients.add(admin_server.online("sintadm")) for _ in range(3)]
    r = execute_simple(admin, f"{ADMIN}#get-registered-users-num")
    assert_completed_successfully(r)
    assert int(form_value(r, "registeredusersnum")[0]) >= 3
    r = execute_simple(admin, f"{ADMIN}#get-online-users-num")
    assert_completed_successfully(r)
    assert int(form_value(r, "onlineusersnum")[0]) >= 3
    for name, var in (("get-online-users-list", "onlineuserjids"), ("get-active-users", "activeuserjids")):
        r = execute_with_args(admin, f"{ADMIN}#{name}")
        assert_completed_successfully(r)
        assert {c.bare for c in cons} <= set(form_value(r, var)), tostring(r)


def add_user(admin, jid, pw="password"):
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#add-user", accountjid=jid, password=pw,
                                                    **{"password-verify": pw}))


def test_disable_user(admin_server, admin, clients):
    """testDisableUser / testDisableUserGetsSessionsTerminated / testDisableUserCantLogin /
    testDisableUserDoesntAffectRoster (get-user-roster filled through 'accountjids', as the
    Java test does), then testReenableUser / testReenableUserCanLogin."""
    jid = f"disableusertest-{rnd(5)}@localhost"
    add_user(admin, jid)
    one = clients.add(admin_server.login(jid, "password", resource=f"resource-one-{rnd(5)}"))
    two = clients.add(admin_server.login(jid, "password", resource=f"resource-two-{rnd(5)}"))
    r = one.iq("set", "<query xmlns='jabber:iq:roster'><item jid='foo@bar.example.org' name='test user'/></query>")
    assert r.get("type") == "result", tostring(r)
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#disable-user", accountjids=jid))
    one.wait_closed()
    two.wait_closed()
    try:
        admin_server.login(jid, "password").close()
        raise AssertionError("a disabled account logged in")
    except SASLFailure:
        pass
    r = execute_with_args(admin, f"{ADMIN}#get-user-roster", accountjids=jid)
    assert_completed_successfully(r)
    roster = r.find(f".//{q(NS_DATA, 'x')}/{q('jabber:iq:roster', 'query')}")
    assert roster is not None, tostring(r)
    assert ("foo@bar.example.org", "test user") in {(i.get("jid"), i.get("name")) for i in roster}, tostring(r)
    r = execute_simple(admin, f"{ADMIN}#get-disabled-users-num")
    assert_completed_successfully(r)
    assert int(form_value(r, "disabledusersnum")[0]) >= 1
    r = execute_with_args(admin, f"{ADMIN}#get-disabled-users-list")
    assert_completed_successfully(r)
    assert jid in form_value(r, "disableduserjids")
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#reenable-user", accountjids=jid))
    assert logs_in(admin_server, jid, "password")


def test_reenable_non_existing_and_remote_user(admin):
    """testReenableNonExistingUser / testReenableRemoteUser: failed."""
    assert_failed(execute_with_args(admin, f"{ADMIN}#reenable-user",
                                    accountjids=f"reenablenonexistingusertest-{rnd(5)}@localhost"))
    assert_failed(execute_with_args(admin, f"{ADMIN}#reenable-user",
                                    accountjids=f"reenableremoteusertest-{rnd(5)}@elsewhere.org"))


def test_end_user_session_full_jid(admin_server, admin, clients):
    """testEndUserSessionFullJid: only that session ends; a message the admin sends the other
    resource afterwards still arrives."""
    jid = f"endsessiontest-full-{rnd(5)}@localhost"
    add_user(admin, jid)
    one = clients.add(admin_server.login(jid, "password", resource=f"resource-one-{rnd(5)}"))
    two = clients.add(admin_server.login(jid, "password", resource=f"resource-two-{rnd(5)}"))
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#end-user-session", accountjids=one.jid))
    needle = rnd(13)
    admin.message(two.jid, f"Wait for me {needle}", type_=None, mid=needle)
    two.recv(lambda e: e.tag == C("message") and e.get("id") == needle, 5, what="message after the kick")
    one.wait_closed()


def test_end_user_session_two_users(admin_server, admin, clients):
    jids = [f"endsessiontest-{n}-{rnd(5)}@localhost" for n in ("one", "two")]
    cons = []
    for jid in jids:
        add_user(admin, jid)
        cons.append(clients.add(admin_server.login(jid, "password")))
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#end-user-session",
                                                    accountjids=",".join(jids)))
    for c in cons:
        c.wait_closed()


def test_user_roster_and_statistics(admin_server, admin, clients):
    """testUserRoster (conOne and conTwo subscribed to each other: conTwo on conOne's roster)
    and testGetUserStatistics (at least one field)."""
    one = clients.add(admin_server.online("sintro"))
    two = clients.add(admin_server.online("sintro"))
    one.presence(to=two.bare, type_="subscribe")
    two.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribe", 5, what="subscribe")
    two.presence(to=one.bare, type_="subscribed")
    one.recv(lambda e: e.tag == C("presence") and e.get("type") == "subscribed", 5, what="subscribed")
    r = execute_with_args(admin, f"{ADMIN}#get-user-roster", accountjids=one.bare)
    assert_completed_successfully(r)
    roster = r.find(f".//{q(NS_DATA, 'x')}/{q('jabber:iq:roster', 'query')}")
    assert two.bare in {i.get("jid") for i in roster}, tostring(r)
    r = execute_with_args(admin, f"{ADMIN}#user-stats", accountjids=one.bare)
    assert_completed_successfully(r)
    assert len([f for f in r.iter(q(NS_DATA, "field")) if f.get("type") != "hidden"]) >= 1


def test_active_idle_numbers_and_lists(admin_server, admin, clients):
    """testGetActiveUsersNumber (>= 3), testGetIdleUsersNumber (>= 0), testGetIdleUsersList,
    testGetRegisteredUsersList (the three test accounts listed)."""
    cons = [clients.add(admin_server.online("sintact")) for _ in range(3)]
    r = execute_simple(admin, f"{ADMIN}#get-active-users-num")
    assert_completed_successfully(r)
    assert int(form_value(r, "activeusersnum")[0]) >= 3
    r = execute_simple(admin, f"{ADMIN}#get-idle-users-num")
    assert_completed_successfully(r)
    assert int(form_value(r, "idleusersnum")[0]) >= 0
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#get-idle-users"))
    r = execute_with_args(admin, f"{ADMIN}#get-registered-users-list")
    assert_completed_successfully(r)
    assert {c.bare for c in cons} <= set(form_value(r, "registereduserjids"))


def test_end_user_session_bare_jid(admin_server, admin, clients):
    jid = f"endsessiontest-bare-{rnd(5)}@localhost"
    execute_with_args(admin, f"{ADMIN}#add-user", accountjid=jid, password="password",
                      **{"password-verify": "password"})
    one = clients.add(admin_server.login(jid, "password", resource=f"resource-one-{rnd(5)}"))
    two = clients.add(admin_server.login(jid, "password", resource=f"resource-two-{rnd(5)}"))
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#end-user-session", accountjids=jid))
    one.wait_closed()  # fails unless the server closes the connection
    two.wait_closed()


def test_send_announcement_to_online_users(admin_server, admin, clients):
    con_one = clients.add(admin_server.online("sintann"))
    text = f"testAnnouncement-{rnd(5)}"
    assert_completed_successfully(execute_with_args(admin, f"{ADMIN}#announce", announcement=text))
    con_one.recv(lambda e: e.tag == C("message") and text in (e.findtext(C("body")) or ""), 5,
                 what="announcement")
