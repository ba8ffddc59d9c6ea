"""Accounts: starling user add|del|passwd|list while running, XEP-0077, deletion ends sessions."""

import uuid

import pytest

from rawxmpp import C, SASLFailure, StreamClosed, q, stanza_error, tostring

REG = "jabber:iq:register"


def register_client(server, clients):
    c = clients.add(server.client()).start()
    return c


@pytest.mark.starling_only
def test_cli_user_add_list_passwd_del_while_running(server, clients):
    jid, user, pw = server.new_user("cli")
    assert jid in server.list_users()
    c = clients.add(server.login(jid, pw))
    server.passwd(jid, "new-pass-1")
    d = clients.add(server.client()).start()
    with pytest.raises(SASLFailure) as e:
        d.auth(user, pw)
    assert e.value.condition == "not-authorized"
    d.auth(user, "new-pass-1")
    d.bind()
    server.del_user(jid)
    assert jid not in server.list_users()
    # deleting the account ends its sessions
    for s in (c, d):
        cond = s.wait_closed(10)
        assert cond in (None, "not-authorized", "policy-violation", "reset"), cond
    e2 = clients.add(server.client()).start()
    with pytest.raises(SASLFailure):
        e2.auth(user, "new-pass-1")


def _can_log_in(server, clients, jid, password, mech="SCRAM-SHA-1"):
    user = jid.split("@")[0]
    c = clients.add(server.client()).start()
    try:
        c.auth(user, password, mech)
    except SASLFailure:
        return False
    c.bind()
    return True


@pytest.mark.starling_only
def test_cli_password_beginning_with_hyphen_after_double_dash(server, clients):
    """`starling user add JID -- -PASSWORD`: the password is not taken for an option."""
    jid = f"dash{uuid.uuid4().hex[:8]}@{server.domain}"
    pw = "-s3cret-" + uuid.uuid4().hex[:6]
    server.cli("user", "add", jid, after=["--", pw])
    assert jid in server.list_users()
    assert _can_log_in(server, clients, jid, pw)
    assert _can_log_in(server, clients, jid, pw, mech="SCRAM-SHA-256")
    assert not _can_log_in(server, clients, jid, pw.lstrip("-"))
    # and `user passwd JID -- -NEW` likewise
    new = "--n3w-" + uuid.uuid4().hex[:6]
    server.cli("user", "passwd", jid, after=["--", new])
    assert _can_log_in(server, clients, jid, new)
    assert not _can_log_in(server, clients, jid, pw)


@pytest.mark.starling_only
def test_cli_password_from_stdin(server, clients):
    """No PASSWORD argument: one line of standard input is the password, without its line end."""
    jid = f"stdin{uuid.uuid4().hex[:8]}@{server.domain}"
    pw = "-from stdin " + uuid.uuid4().hex[:6]
    server.cli("user", "add", jid, stdin=pw + "\n")
    assert jid in server.list_users()
    assert _can_log_in(server, clients, jid, pw)
    assert not _can_log_in(server, clients, jid, pw + "\n")


@pytest.mark.starling_only
def test_cli_passwd_from_stdin(server, clients):
    jid, user, pw = server.new_user("pwstdin")
    new = "-changed via stdin " + uuid.uuid4().hex[:6]
    server.cli("user", "passwd", jid, stdin=new + "\r\n")
    assert _can_log_in(server, clients, jid, new)
    assert not _can_log_in(server, clients, jid, pw)


def _cli_on_a_terminal(server, args, lines):
    """Runs `starling ARGS --data-dir D` on a pseudo-terminal, typing each of `lines` after the
    prompt that ends with the matching text; returns (exit code, everything it showed)."""
    import os
    import pty
    import time
    from conftest import STARLING_BIN, child_env
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.execve(STARLING_BIN, ["starling", *args, "--data-dir", server.data_dir], child_env())
    shown = b""
    try:
        for prompt, line in lines:
            deadline = time.monotonic() + 20
            while prompt not in shown and time.monotonic() < deadline:
                shown += os.read(fd, 1024)
            os.write(fd, line)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            done, status = os.waitpid(pid, 0)
        try:
            shown += os.read(fd, 4096)
        except OSError:
            pass
        return os.waitstatus_to_exitcode(status), shown
    finally:
        os.close(fd)


@pytest.mark.starling_only
def test_cli_password_prompt_at_a_terminal(server, clients):
    """At a terminal the password is asked twice, without echo; different answers are refused."""
    jid = f"tty{uuid.uuid4().hex[:8]}@{server.domain}"
    pw = "-typed " + uuid.uuid4().hex[:6]
    code, shown = _cli_on_a_terminal(server, ["user", "add", jid],
                                     [(b"Password for", pw.encode() + b"\n"), (b"Again", b"other\n")])
    assert code != 0 and b"differ" in shown, shown
    assert jid not in server.list_users()
    code, shown = _cli_on_a_terminal(server, ["user", "add", jid],
                                     [(b"Password for", pw.encode() + b"\n"), (b"Again", pw.encode() + b"\n")])
    assert code == 0, shown
    assert pw.encode() not in shown, f"the password was echoed: {shown!r}"
    assert _can_log_in(server, clients, jid, pw)


@pytest.mark.starling_only
def test_cli_password_missing_from_stdin_fails(server):
    """Nothing (or an empty line) on standard input is an error, and no account is made."""
    for stdin in ("", "\n"):
        jid = f"nopw{uuid.uuid4().hex[:8]}@{server.domain}"
        r = server.cli("user", "add", jid, stdin=stdin, check=False)
        assert r.returncode != 0, (r.stdout, r.stderr)
        assert "password" in r.stderr, r.stderr
        assert jid not in server.list_users()


@pytest.mark.starling_only
def test_cli_user_add_duplicate_fails(server):
    jid, user, pw = server.new_user("dup")
    r = server.cli("user", "add", jid, "other", check=False)
    assert r.returncode != 0


@pytest.mark.starling_only
def test_cli_user_del_unknown_fails(server):
    r = server.cli("user", "del", "never-existed-xyz@localhost", check=False)
    assert r.returncode != 0


def test_account_deletion_ends_sessions_and_removes_data(server, clients):
    jid, user, pw = server.new_user("del")
    c = clients.add(server.login(jid, pw, presence=True))
    r = c.iq("set", "<vCard xmlns='vcard-temp'><FN>To be deleted</FN></vCard>")
    assert r.get("type") == "result"
    r = c.iq("set", "<query xmlns='jabber:iq:roster'><item jid='friend@example.org'/></query>")
    assert r.get("type") == "result"
    r = c.iq("set", "<query xmlns='jabber:iq:private'><p xmlns='urn:example:p'>secret</p></query>")
    assert r.get("type") == "result"
    server.del_user(jid)
    c.wait_closed(10)
    # recreate with the same name: old data is gone
    server.add_user(jid, "fresh-pass")
    n = clients.add(server.login(jid, "fresh-pass"))
    r = n.iq("get", "<vCard xmlns='vcard-temp'/>")
    v = r.find("{vcard-temp}vCard")
    assert v is None or v.findtext("{vcard-temp}FN") is None, tostring(r)
    r = n.iq("get", "<query xmlns='jabber:iq:roster'/>")
    assert r.find("{jabber:iq:roster}query/{jabber:iq:roster}item") is None, tostring(r)
    r = n.iq("get", "<query xmlns='jabber:iq:private'><p xmlns='urn:example:p'/></query>")
    p = r.find("{jabber:iq:private}query/{urn:example:p}p")
    assert p is None or not (p.text or "").strip(), tostring(r)
    server.assert_healthy()


def test_inband_registration(server, clients):
    """XEP-0077: enabled by config on the shared server."""
    c = clients.add(server.client()).start()
    assert c.feature("http://jabber.org/features/iq-register", "register") is not None, tostring(c.features)
    r = c.iq("get", f"<query xmlns='{REG}'/>")
    assert r.get("type") == "result", tostring(r)
    qel = r.find(q(REG, "query"))
    assert qel.find(q(REG, "username")) is not None and qel.find(q(REG, "password")) is not None
    import uuid
    user = "ibr" + uuid.uuid4().hex[:8]
    r = c.iq("set", f"<query xmlns='{REG}'><username>{user}</username><password>ibr-pass</password></query>")
    assert r.get("type") == "result", tostring(r)
    # same username again -> <conflict/> (XEP-0077 3.1)
    d = clients.add(server.client()).start()
    r = d.iq("set", f"<query xmlns='{REG}'><username>{user}</username><password>x</password></query>")
    assert stanza_error(r) == ("cancel", "conflict"), tostring(r)
    # the new account works
    e = clients.add(server.login(f"{user}@{server.domain}", "ibr-pass"))
    # and can cancel itself (XEP-0077 3.2): the stream ends
    e.send_raw(f"<iq type='set' id='unreg1'><query xmlns='{REG}'><remove/></query></iq>")
    try:
        res = e.recv(lambda x: x.get("id") == "unreg1", timeout=5)
        assert res.get("type") == "result", tostring(res)
    except StreamClosed:
        pass
    e.wait_closed(10)
    f = clients.add(server.client()).start()
    with pytest.raises(SASLFailure):
        f.auth(user, "ibr-pass")


def test_inband_registration_missing_fields(server, clients):
    c = clients.add(server.client()).start()
    r = c.iq("set", f"<query xmlns='{REG}'><username>onlyname</username></query>")
    assert stanza_error(r) == ("modify", "not-acceptable"), tostring(r)


def test_inband_registration_off_by_default(default_server, clients):
    c = clients.add(default_server.client()).start()
    assert c.feature("http://jabber.org/features/iq-register", "register") is None, tostring(c.features)
    r = c.iq("set", f"<query xmlns='{REG}'><username>nope</username><password>x</password></query>")
    assert r.get("type") == "error", tostring(r)
    assert stanza_error(r)[1] in ("service-unavailable", "not-allowed", "feature-not-implemented"), tostring(r)
    d = clients.add(default_server.client()).start()
    with pytest.raises(SASLFailure):
        d.auth("nope", "x")


def test_inband_password_change(server, clients):
    """XEP-0077 3.3: an authenticated user changes the password."""
    jid, user, pw = server.new_user("chg")
    c = clients.add(server.login(jid, pw))
    r = c.iq("set", f"<query xmlns='{REG}'><username>{user}</username><password>changed-pw</password></query>")
    assert r.get("type") == "result", tostring(r)
    d = clients.add(server.client()).start()
    with pytest.raises(SASLFailure):
        d.auth(user, pw)
    d.auth(user, "changed-pw")


def test_inband_registration_on_second_domain(server, clients):
    import uuid
    user = "ibr2" + uuid.uuid4().hex[:8]
    c = clients.add(server.client(domain="example.org")).start()
    r = c.iq("set", f"<query xmlns='{REG}'><username>{user}</username><password>pw2</password></query>")
    assert r.get("type") == "result", tostring(r)
    e = clients.add(server.login(f"{user}@example.org", "pw2"))
    assert e.jid.startswith(f"{user}@example.org/")
    f = clients.add(server.client(domain="localhost")).start()
    with pytest.raises(SASLFailure):
        f.auth(user, "pw2")
