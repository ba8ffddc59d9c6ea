"""Virtual hosting (two domains on one node) and the Prometheus /metrics endpoint."""

import re
import urllib.request

import pytest

from im import make_mutual, recv_presence
from rawxmpp import C, SASLFailure, tostring


def test_two_domains_login_and_cross_domain_message(server, clients):
    a = clients.add(server.online("va", domain="localhost"))
    b = clients.add(server.online("vb", domain="example.org"))
    assert a.jid.split("@")[1].startswith("localhost/")
    assert b.jid.split("@")[1].startswith("example.org/")
    assert b.header.get("from") == "example.org"
    mid = a.message(b.jid, "across domains")
    m = b.recv_stanza("message", id=mid)
    assert m.get("from") == a.jid
    make_mutual(a, b)
    b.presence(status="x")
    recv_presence(a, b.jid, None)


def test_same_username_in_two_domains_is_two_accounts(server, clients):
    import uuid
    user = "same" + uuid.uuid4().hex[:8]
    server.add_user(f"{user}@localhost", "pw-local")
    server.add_user(f"{user}@example.org", "pw-example")
    c = clients.add(server.client(domain="example.org")).start()
    with pytest.raises(SASLFailure):
        c.auth(user, "pw-local")
    c.auth(user, "pw-example")
    assert c.bind().startswith(f"{user}@example.org/")
    d = clients.add(server.client(domain="localhost")).start()
    d.auth(user, "pw-local")
    assert d.bind().startswith(f"{user}@localhost/")


def test_disco_on_second_domain(server, clients):
    b = clients.add(server.online("vd", domain="example.org"))
    r = b.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="example.org")
    assert r.get("type") == "result" and r.get("from") == "example.org", tostring(r)


def scrape(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        assert r.status == 200
        ctype = r.headers.get("Content-Type", "")
        assert ctype.startswith("text/plain") or "openmetrics" in ctype, ctype
        return r.read().decode()


def metric_values(text, name):
    vals = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            vals.append((m.group(2) or "", float(m.group(3))))
    return vals


@pytest.mark.starling_only
def test_metrics_endpoint(server, clients, source_ip):
    a = clients.add(server.online("mx"))
    b = clients.add(server.online("my"))
    for i in range(3):
        mid = a.message(b.jid, f"m{i}")
        b.recv_stanza("message", id=mid)
    jid, user, pw = server.new_user("mf")
    c = clients.add(server.client(source_ip=source_ip)).start()
    with pytest.raises(SASLFailure):
        c.auth(user, "wrong")
    text = scrape(server)
    # well-formed exposition: every sample line parses
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?\s+[-+0-9.eEINFinfa]+(\s+\d+)?$", line), line
    sessions = metric_values(text, "starling_c2s_sessions")
    assert sessions and sum(v for _, v in sessions) >= 2, "starling_c2s_sessions missing or too low"
    routed = metric_values(text, "starling_stanzas_routed_total")
    assert routed and sum(v for _, v in routed) >= 3, "starling_stanzas_routed_total missing"
    assert any('kind="message"' in lbl for lbl, _ in routed), routed
    fails = [n for n in re.findall(r"^(starling_\w*auth\w*fail\w*)", text, re.M)]
    assert fails, "no auth-failure metric (starling_*auth*fail*)"
    assert sum(v for n in set(fails) for _, v in metric_values(text, n)) >= 1
    assert re.search(r"^starling_raft_apply_seconds(_bucket|_count|_sum)?[{ ]", text, re.M), \
        "starling_raft_apply_seconds missing"


@pytest.mark.starling_only
def test_metrics_sessions_gauge_goes_down(server, clients):
    before = sum(v for _, v in metric_values(scrape(server), "starling_c2s_sessions"))
    cs = [clients.add(server.online("mg")) for _ in range(3)]
    import time
    time.sleep(0.5)
    during = sum(v for _, v in metric_values(scrape(server), "starling_c2s_sessions"))
    assert during >= before + 3 - 0.5 or during >= 3
    for c in cs:
        c.close()
    time.sleep(1.0)
    after = sum(v for _, v in metric_values(scrape(server), "starling_c2s_sessions"))
    assert after <= during - 3 + 0.5
