"""Port of the server extensions' ExternalServiceDiscoveryIntegrationTest (XEP-0215), run
against the STUN/TURN configuration of test_extdisco.py (with no [[external_services]] every
test but requestAllServicesTest is 'not possible' in Smack's terms: nothing to look at).

The service is found as ServiceDiscoveryManager.findService does: the domain itself, if its
disco#info has urn:xmpp:extdisco:2, else the first of its disco#items that has it.
"""

import re
from datetime import datetime

import pytest

from rawxmpp import q, tostring
from test_extdisco import NS, NS_INFO, ext  # noqa: F401 (fixture)
from test_sint_helpers import rnd

pytestmark = pytest.mark.starling_only


def find_service(c, domain):
    r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=domain)
    if NS in {f.get("var") for f in r.iter(q(NS_INFO, "feature"))}:
        return domain
    items = c.iq("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>", to=domain)
    for it in items.iter("{http://jabber.org/protocol/disco#items}item"):
        r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=it.get("jid"))
        if NS in {f.get("var") for f in r.iter(q(NS_INFO, "feature"))}:
            return it.get("jid")
    pytest.fail("no XEP-0215 service found (Smack: 'not possible')")


def all_services(c, svc, type_=None):
    t = f" type='{type_}'" if type_ else ""
    r = c.iq("get", f"<services xmlns='{NS}'{t}/>", to=svc)
    assert r.get("type") == "result", tostring(r)
    el = r.find(q(NS, "services"))
    assert el is not None, tostring(r)
    return el, el.findall(q(NS, "service"))


def setup(ext, clients):  # noqa: F811
    c = clients.add(ext.online("sintext"))
    return c, find_service(c, ext.domain)


def expiries(c, svc):
    _, svcs = all_services(c, svc)
    found = {s.get("expires") for s in svcs if s.get("expires")}
    assert found, "the configuration has restricted services with 'expires'"
    return found


XEP82 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def test_request_all_expiry_timestamps_valid(ext, clients):  # noqa: F811
    """...requestAllExpiryTimestampsValidTest (2: 'expires' MUST be a XEP-0082 dateTime)."""
    c, svc = setup(ext, clients)
    for e in expiries(c, svc):
        assert XEP82.match(e), e
        datetime.fromisoformat(e.replace("Z", "+00:00"))


def test_request_all_expiry_timestamps_zulu(ext, clients):  # noqa: F811
    """...requestAllExpiryTimestampsZuluTest (2: ... MUST be expressed in UTC)."""
    c, svc = setup(ext, clients)
    for e in expiries(c, svc):
        assert any(e.endswith(z) for z in ("z", "Z", "+00:00", "-00:00")), e


def test_request_all_services(ext, clients):  # noqa: F811
    """...requestAllServicesTest (3.1: a <services/> request is answered with <services/>)."""
    c, svc = setup(ext, clients)
    _, svcs = all_services(c, svc)
    assert svcs


def _key(s):
    return tuple(sorted((k, v) for k, v in s.attrib.items() if k not in ("username", "password", "expires")))


def test_request_selected_services(ext, clients):  # noqa: F811
    """...requestSelectedServicesTest (3.2): per type, the answer echoes the 'type' and lists
    exactly the services of that type from the full list."""
    c, svc = setup(ext, clients)
    _, svcs = all_services(c, svc)
    by_type = {}
    for s in svcs:
        by_type.setdefault(s.get("type"), []).append(_key(s))
    for t, want in by_type.items():
        el, got = all_services(c, svc, t)
        assert el.get("type") == t, tostring(el)
        assert sorted(_key(s) for s in got) == sorted(want), (t, [tostring(s) for s in got])


def test_request_service_credentials(ext, clients):  # noqa: F811
    """...requestServiceCredentialsTest (3.3): <credentials><service host type port/></credentials>
    for the first listed service is answered with <credentials/>."""
    c, svc = setup(ext, clients)
    _, svcs = all_services(c, svc)
    first = svcs[0]
    port = f" port='{first.get('port')}'" if first.get("port") else ""
    r = c.iq("get", f"<credentials xmlns='{NS}'><service host='{first.get('host')}' type='{first.get('type')}'{port}/>"
                    "</credentials>", to=svc)
    assert r.get("type") == "result" and r.find(q(NS, "credentials")) is not None, tostring(r)


def test_request_service_credentials_non_existing_service(ext, clients):  # noqa: F811
    """...requestServiceCredentialsNonExistingServiceTest (3.3: if the server cannot obtain
    credentials it returns a stanza error)."""
    c, svc = setup(ext, clients)
    r = c.iq("get", f"<credentials xmlns='{NS}'><service host='doesntexist{rnd(4)}' type='test'/></credentials>",
             to=svc)
    assert r.get("type") == "error", tostring(r)
