"""Ports of the XEP-0050 Ad-Hoc Commands interop tests.

Smack's AdHocCommandIntegrationTest runs commands between two clients: conOne registers a
command, conTwo discovers and executes it at conOne's full JID. The server's part is to route
the <command/> IQs (execute / next / prev / complete, sessionid, forms, errors) between the
full JIDs untouched (RFC 6120 8.5.3.1, 10.5.4); conOne's command logic is played by this test,
as Smack's AdHocCommandManager plays it: singleStage, multiStage (a=42, b=23, '+' -> 65),
multiStageWithPrev (a=42, prev, a=77 -> 100), multiStageInvalidArg (a='forty-two' ->
<bad-request/>).

The server extensions' ServiceAdministrationIntegrationTest (XEP-0133) needs an administrator
account and server-side commands. Starling offers no XEP-0050 commands of its own (an
<iq><command/></iq> to the domain gets <service-unavailable/>) and has no server
administrators (accounts are managed with the CLI and the admin API), so every one of its
command tests is 'not possible' there (checkServerSupportCommand); testGetCommandsForUser has
no assertion beyond an answer: the account's command list (disco#items, node
'http://jabber.org/protocol/commands') is answered, empty. testGetCommandsForAdmin needs the
admin account the suite is configured with; Starling has none to configure.
"""

from rawxmpp import C, q, tostring
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
    the command list of conOne's own bare JID is answered (Starling has none to list); the
    domain's list is answered too, and executing an admin command there is refused with
    <service-unavailable/> (no XEP-0133 on Starling: Smack's per-command tests are 'not
    possible')."""
    one = clients.add(server.online("sintcmd"))
    for to in (one.bare, server.domain):
        r = one.iq("get", f"<query xmlns='{NS_ITEMS}' node='{NS_CMD}'/>", to=to)
        assert r.get("type") == "result", tostring(r)
        assert r.find(q(NS_ITEMS, "query")).get("node") == NS_CMD, tostring(r)
    r = one.iq("set", f"<command xmlns='{NS_CMD}' node='http://jabber.org/protocol/admin#add-user' action='execute'/>",
               to=server.domain)
    assert r.get("type") == "error" and error_condition(r) == "service-unavailable", tostring(r)
