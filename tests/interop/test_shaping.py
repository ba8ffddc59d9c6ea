"""Connection shaping for login storms (issue 9, item 6): `c2s.connect_rate` (per node) and
`c2s.connect_rate_per_ip` (per client address), token buckets with a burst of one second's worth.

Over its address's rate a new stream is refused with <policy-violation/> (RFC 6120 4.9.3.14);
over the node's rate connections wait in the listen backlog and are served in turn. Both show in
`starling_c2s_shaped_total{reason}`.
"""

import time
import urllib.request

import pytest

from conftest import make_server
from rawxmpp import StreamClosed

pytestmark = [pytest.mark.starling_only, pytest.mark.timeout(90)]


def _server(tmp_path_factory, name, settings):
    s = make_server(tmp_path_factory, name)
    with open(s.config_path) as f:
        cfg = f.read()
    assert "[c2s]\n" in cfg
    with open(s.config_path, "w") as f:
        f.write(cfg.replace("[c2s]\n", "[c2s]\n" + settings, 1))
    s.start()
    return s


def _shaped(server, reason):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("starling_c2s_shaped_total") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def per_ip_server(tmp_path_factory):
    s = _server(tmp_path_factory, "shapeip", "connect_rate_per_ip = 3\n")
    yield s
    s.stop()


@pytest.fixture
def per_node_server(tmp_path_factory):
    s = _server(tmp_path_factory, "shapenode", "connect_rate = 5\n")
    yield s
    s.stop()


def _outcome(c):
    """'features' when the stream opens, else the stream error's condition."""
    try:
        c.open_stream()
        return "features"
    except (AssertionError, StreamClosed):
        return c.stream_error or "closed"


def test_an_address_over_its_rate_gets_policy_violation_and_others_do_not(per_ip_server, clients):
    server = per_ip_server
    time.sleep(1.1)  # the harness's readiness probes came from this address too
    burst = [clients.add(server.client().connect()) for _ in range(8)]
    outcomes = [_outcome(c) for c in burst]
    refused = [o for o in outcomes if o != "features"]
    assert refused, f"8 connections at once from one address, rate 3/s: none refused ({outcomes})"
    assert set(refused) == {"policy-violation"}, outcomes
    assert outcomes.count("features") >= 3, f"the burst of 3 is served: {outcomes}"
    # Another address has its own bucket.
    other = clients.add(server.client(source_ip="127.0.0.2").connect())
    assert _outcome(other) == "features"
    # The direct TLS port closes an over-rate connection before any handshake.
    for _ in range(6):
        clients.add(server.client().connect()).close()
    with pytest.raises(Exception):
        clients.add(server.client(direct_tls=True).connect())
    # A second later the address may connect again, and logs in as usual.
    time.sleep(1.2)
    c = clients.add(server.online("shape"))
    assert c.ping_server().get("type") == "result"
    assert _shaped(server, "address") >= len(refused)


def test_the_node_takes_connections_at_its_rate_and_serves_them_all(per_node_server, clients):
    server = per_node_server
    time.sleep(1.1)  # a full bucket after the harness's readiness probes
    t0 = time.monotonic()
    conns = [clients.add(server.client().connect()) for _ in range(15)]
    outcomes = [_outcome(c) for c in conns]
    took = time.monotonic() - t0
    assert outcomes == ["features"] * 15, f"every connection is served in turn: {outcomes}"
    # 5 at once (the burst), then 5 a second: the 15th no sooner than ~2 s after the first.
    assert took >= 1.5, f"15 connections at 5/s took only {took:.2f} s"
    assert _shaped(server, "node") >= 1
