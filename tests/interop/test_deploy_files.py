"""The operator's files in deploy/ name metrics the server exports.

`deploy/prometheus/alerts.yml` and the Grafana dashboard `deploy/grafana/starling.json` are
written against metric names; a metric renamed in the code would leave an alert that never
fires or a panel that stays empty, and nothing else would notice. Every `starling_*` name they
use must be a metric the code records (as the string it records it under), and the dashboard's
first rows must have data from a node that served one login and one message.
"""

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from rawxmpp import C

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "starling.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
NAME = re.compile(r"\bstarling_[a-z0-9_]+")


def used_names(text: str) -> set[str]:
    """Metric names in PromQL, histogram series (`_bucket`, `_sum`, `_count`) by the
    histogram's own name."""
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in NAME.findall(text)}


def recorded_names() -> set[str]:
    names = set()
    for src in (ROOT / "node" / "src", ROOT / "cluster" / "src"):
        for f in src.rglob("*.rs"):
            names.update(re.findall(r'"(starling_[a-z0-9_]+)"', f.read_text()))
    return names


def dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


@pytest.mark.starling_only
def test_alerts_and_dashboard_use_only_recorded_metrics():
    recorded = recorded_names()
    assert len(recorded) > 50, "the metric names were not found in the sources"
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    for what, text in (("alerts.yml", ALERTS.read_text()), ("starling.json", "\n".join(exprs))):
        used = used_names(text)
        assert used, what
        missing = sorted(used - recorded)
        assert not missing, f"{what} uses metrics the server does not record: {missing}"


@pytest.mark.starling_only
def test_dashboard_panels_select_by_the_instance_variable():
    """Every Starling series a panel reads is filtered by the dashboard's `instance`
    variable (a panel without it would mix in every other job's nodes)."""
    for e in dashboard_exprs():
        for m in re.finditer(r"\b(starling_[a-z0-9_]+|up)\{([^}]*)\}", e):
            assert 'instance=~"$instance"' in m.group(2), e
        assert not re.search(r"\bstarling_[a-z0-9_]+(\[|\)|$|\s)", e), f"unfiltered series in {e}"


@pytest.mark.starling_only
def test_first_rows_of_the_dashboard_have_data(server, clients):
    a = clients.add(server.online("dsa"))
    b = clients.add(server.online("dsb"))
    mid = a.message(b.jid, "for the dashboard")
    b.recv(lambda e: e.tag == C("message") and e.get("id") == mid, what="the message")
    exported: set[str] = set()
    # Health is judged every half second from the start: its gauge comes with the first judgement.
    deadline = time.monotonic() + 5
    while "starling_cluster_healthy" not in exported and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                    timeout=5) as r:
            exported = {re.sub(r"_(bucket|sum|count)$", "", line.split("{")[0].split(" ")[0])
                        for line in r.read().decode().splitlines() if line.startswith("starling_")}
        time.sleep(0.2)
    # Overview, logins, the replicated store: what a node that served a login shows.
    for name in ("starling_c2s_sessions", "starling_cluster_healthy", "starling_stanzas_routed_total",
                 "starling_auth_success_total", "starling_c2s_connections_total",
                 "starling_c2s_bytes_received_total", "starling_raft_commit_seconds",
                 "starling_raft_apply_seconds", "starling_raft_writes_per_entry",
                 "starling_raft_commit_index", "starling_router_delivered_total"):
        assert name in exported, f"{name} not exported after a login and a message"
        assert name in used_names("\n".join(dashboard_exprs())), f"{name} has no panel"
