"""XEP-0215 External Service Discovery: the server lists the STUN/TURN services of
[[external_services]] (all, or one type), restricted TURN entries carry time-limited
credentials of the TURN REST scheme (username "expiry:user", password
base64(HMAC-SHA1(secret, username)), recomputed here), <credentials/> answers for one
service (XEP-0215 section 4) and item-not-found for one not configured.
"""

import base64
import calendar
import hashlib
import hmac
import time

import pytest

from conftest import make_server
from rawxmpp import q, stanza_error, tostring

pytestmark = pytest.mark.starling_only

NS = "urn:xmpp:extdisco:2"
NS_INFO = "http://jabber.org/protocol/disco#info"
SECRET = "turn-shared-secret-for-tests"

SERVICES = f"""
[[external_services]]
host = "stun.example.org"
port = 3478
type = "stun"
transport = "udp"

[[external_services]]
host = "turn.example.org"
port = 3478
type = "turn"
transport = "udp"
restricted = true
secret = "{SECRET}"
ttl_secs = 600

[[external_services]]
host = "turn.example.org"
port = 5349
type = "turns"
transport = "tcp"
restricted = true
username = "static-user"
password = "static-pass"
"""


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    s = make_server(tmp_path_factory, "extdisco")
    with open(s.config_path, "a") as f:
        f.write(SERVICES)
    s.start()
    yield s
    s.stop()


def services(c, type_=None):
    t = f" type='{type_}'" if type_ else ""
    r = c.iq("get", f"<services xmlns='{NS}'{t}/>", to="localhost")
    assert r.get("type") == "result", tostring(r)
    return r.find(q(NS, "services")).findall(q(NS, "service"))


def check_rest_credentials(svc, user_bare):
    username, password = svc.get("username"), svc.get("password")
    expiry, _, user = username.partition(":")
    assert user == user_bare
    now = time.time()
    assert now + 500 < int(expiry) <= now + 700, username
    want = base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert password == want
    stamp = calendar.timegm(time.strptime(svc.get("expires"), "%Y-%m-%dT%H:%M:%SZ"))
    assert stamp == int(expiry)


def test_feature_and_all_services(ext):
    c = ext.online("xd", presence=False)
    try:
        r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to="localhost")
        assert NS in [f.get("var") for f in r.find(q(NS_INFO, "query")).findall(q(NS_INFO, "feature"))]
        all_ = services(c)
        assert [(s.get("host"), s.get("type"), s.get("port"), s.get("transport")) for s in all_] == [
            ("stun.example.org", "stun", "3478", "udp"),
            ("turn.example.org", "turn", "3478", "udp"),
            ("turn.example.org", "turns", "5349", "tcp")]
        stun, turn, turns = all_
        assert stun.get("restricted") is None and stun.get("username") is None
        assert turn.get("restricted") in ("1", "true")
        check_rest_credentials(turn, c.bare)
        assert (turns.get("username"), turns.get("password")) == ("static-user", "static-pass")
    finally:
        c.close()


def test_filtered_by_type(ext):
    c = ext.online("xt", presence=False)
    try:
        assert [s.get("host") for s in services(c, "stun")] == ["stun.example.org"]
        got = services(c, "turn")
        assert [(s.get("host"), s.get("type")) for s in got] == [("turn.example.org", "turn")]
        assert services(c, "nope") == []
    finally:
        c.close()


def test_credentials_request(ext):
    c = ext.online("xc", presence=False)
    try:
        r = c.iq("get", f"<credentials xmlns='{NS}'><service host='turn.example.org' type='turn'/></credentials>",
                 to="localhost")
        assert r.get("type") == "result", tostring(r)
        svc = r.find(q(NS, "credentials")).find(q(NS, "service"))
        assert svc.get("host") == "turn.example.org" and svc.get("type") == "turn"
        check_rest_credentials(svc, c.bare)
        # Unknown host / type / port: item-not-found; no service element: bad-request.
        for bad in ("<service host='other.example.org' type='turn'/>",
                    "<service host='stun.example.org' type='turn'/>",
                    "<service host='turn.example.org' type='turn' port='1'/>"):
            r = c.iq("get", f"<credentials xmlns='{NS}'>{bad}</credentials>", to="localhost")
            assert stanza_error(r) == ("cancel", "item-not-found"), tostring(r)
        r = c.iq("get", f"<credentials xmlns='{NS}'/>", to="localhost")
        assert stanza_error(r)[1] == "bad-request", tostring(r)
        # Only get: a set is not-allowed.
        r = c.iq("set", f"<services xmlns='{NS}'/>", to="localhost")
        assert stanza_error(r)[1] == "not-allowed", tostring(r)
        ext.assert_healthy(c)
    finally:
        c.close()


MULTI = f"""
[[external_services]]
host = "turn.example.org"
port = 3478
type = "turn"
transport = "udp"
restricted = true
secret = "{SECRET}"
ttl_secs = 600

[[external_services]]
host = "turn.example.org"
port = 3479
type = "turn"
transport = "tcp"
restricted = true
secret = "{SECRET}"
ttl_secs = 600

[[external_services]]
host = "turn.example.org"
port = 3478
type = "stun"
transport = "udp"
"""


def test_credentials_for_every_port_and_host_and_type_required(tmp_path_factory):
    """XEP-0215 3.3: the <service/> of a credentials request MUST carry 'host' and 'type'
    (bad-request without either); without 'port' every service of that host and type
    answers (one <service/> each, here two ports), with one only that port's."""
    s = make_server(tmp_path_factory, "extdisco-multi")
    with open(s.config_path, "a") as f:
        f.write(MULTI)
    s.start()
    try:
        c = s.online("xm", presence=False)
        r = c.iq("get", f"<credentials xmlns='{NS}'><service host='turn.example.org' type='turn'/></credentials>",
                 to="localhost")
        assert r.get("type") == "result", tostring(r)
        got = r.find(q(NS, "credentials")).findall(q(NS, "service"))
        assert [(x.get("type"), x.get("port"), x.get("transport")) for x in got] == [
            ("turn", "3478", "udp"), ("turn", "3479", "tcp")], tostring(r)
        for svc in got:
            check_rest_credentials(svc, c.bare)
        r = c.iq("get", f"<credentials xmlns='{NS}'><service host='turn.example.org' type='turn' port='3479'/>"
                        "</credentials>", to="localhost")
        got = r.find(q(NS, "credentials")).findall(q(NS, "service"))
        assert [x.get("port") for x in got] == ["3479"], tostring(r)
        for bad in ("<service host='turn.example.org'/>", "<service type='turn'/>",
                    "<service host='turn.example.org' type='turn' port='x'/>"):
            r = c.iq("get", f"<credentials xmlns='{NS}'>{bad}</credentials>", to="localhost")
            assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
        s.assert_healthy(c)
        c.close()
    finally:
        s.stop()
