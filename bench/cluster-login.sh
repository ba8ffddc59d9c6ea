#!/bin/bash
# Logins per second into a 3-node Starling cluster against one node, on loopback, and how the
# replicated store groups writes into Raft entries during the login storm.
#
#   bench/cluster-login.sh            # prints a markdown table (also in $OUT/table.md)
#
#   STARLING_BIN=/path/starling BENCH_BIN=/path/starling-bench RUNS=3 bench/cluster-login.sh
#
# Two setups, both started first (the idle one costs little: lease renewals), then measured in
# RUNS interleaved rounds (1 node, N nodes, 1 node, ...); figures are medians over the rounds:
#   1 node : one `starling serve` with the cluster certificates configured, so it is a Raft cluster
#            of one serving its gRPC port (the same write path as a member of a larger cluster);
#            one `starling-bench login` process: LOGINS logins, CONC in flight, accounts 1..USERS.
#   N nodes: NODES (3) nodes joined over mutual TLS (node 1 bootstraps, the others `--join` it);
#            NODES `starling-bench login` processes started together, one per node's c2s port,
#            each with LOGINS/NODES logins (the remainder spread), CONC/NODES in flight and its
#            own slice of the accounts (`--first-user`). The offered load (logins, concurrency,
#            accounts) is the same as for one node; on one machine all nodes and bench processes
#            share the same cores, so this measures what clustering costs, not how it scales out.
# Accounts (user<i>@perf.test / perfpass<i>) are made in each setup with `starling user add`
# through its first node's admin socket, before the rounds; the script waits until every node
# has applied them.
# Raft figures come from every node's /metrics before and after each round:
#   starling_raft_writes_per_entry (histogram: one sample per batch a node's batcher proposes or
#   forwards, value = writes in it, lease renewals included) and starling_raft_commit_index, for
#   the durable group; starling_registry_writes_per_entry, the same for the registry group
#   (routes and presence, in memory; a node without peers has none).
# They cover the whole bench process, i.e. its unmeasured warm-up login of each account as well
# as the measured logins. "idle entries/s" is the commit-index rate during IDLE_SECS before the
# round (lease renewals, one per node per second by default).
#
# Environment: STARLING_BIN (target/release/starling), BENCH_BIN (target/release/starling-bench),
# RUNS (3), LOGINS (2000), CONC (30), USERS (300), NODES (3), MAX_SECS (60, per bench run),
# IDLE_SECS (3), PORT_BASE (26000: node n uses c2s PORT_BASE+202+10n, direct TLS +203+10n,
# metrics PORT_BASE+900+10n, cluster PORT_BASE+700+10n; n=0 is the single node),
# OUT (/tmp/starling-cluster-login; a timestamped directory is made under it), KEEP_DATA (0).
# Loopback only. Every process it starts is stopped by PID on exit; each bench process is
# bounded by `timeout` (MAX_SECS + 60 s), node start by 30 s, replication wait by 30 s.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
STARLING_BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
BENCH_BIN="${BENCH_BIN:-$ROOT/target/release/starling-bench}"
RUNS="${RUNS:-3}"; LOGINS="${LOGINS:-2000}"; CONC="${CONC:-30}"; USERS="${USERS:-300}"
NODES="${NODES:-3}"; MAX_SECS="${MAX_SECS:-60}"; IDLE_SECS="${IDLE_SECS:-3}"
PORT_BASE="${PORT_BASE:-26000}"; DOMAIN=perf.test
OUT="${OUT:-/tmp/starling-cluster-login}/$(date +%Y%m%d-%H%M%S)"
BENCH_TIMEOUT=$(( MAX_SECS + 60 ))

for b in "$STARLING_BIN" "$BENCH_BIN"; do
  [ -x "$b" ] || { echo "missing $b (cargo build --release -p starling -p starling-bench, or set STARLING_BIN / BENCH_BIN)" >&2; exit 2; }
done
command -v curl >/dev/null || { echo "curl is needed to read /metrics" >&2; exit 2; }
if [ "$CONC" -lt "$NODES" ] || [ "$USERS" -lt "$NODES" ] || [ "$LOGINS" -lt "$NODES" ]; then
  echo "CONC, USERS and LOGINS must each be at least NODES ($NODES)" >&2; exit 2; fi
mkdir -p "$OUT"

. "$HERE/cluster-lib.sh"   # ports, node start/stop, metrics of a loopback cluster

declare -A IDS=()        # setup K -> its nodes' n, space-separated
BENCH_PIDS=()            # pids of the subshells running the bench processes of the current round
ROUND_DIR=""             # their directory, with the pids of the `timeout starling-bench` processes

cleanup() {
  local p
  for p in "${BENCH_PIDS[@]}"; do stop_pid "$p"; done
  if [ -n "$ROUND_DIR" ]; then for p in "$ROUND_DIR"/bench.*.pid; do [ -f "$p" ] && stop_pid "$(cat "$p")"; done; fi
  stop_nodes
  [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$OUT"/*-node/data* "$OUT"/ca/*-key.pem 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CA="$OUT/ca"

# setup K: start K nodes (K=1: node n=0; else n=1..K), make the accounts, check a login on each
setup() {
  local k=$1 dir="$OUT/$1-node" ids n i
  mkdir -p "$dir"
  if [ "$k" = 1 ]; then ids=(0); else ids=($(seq 1 "$k")); fi
  for i in "${!ids[@]}"; do
    n=${ids[$i]}
    if [ "$i" = 0 ]; then start_node "$n" $(( i + 1 )) "$dir" ""
    else start_node "$n" $(( i + 1 )) "$dir" "127.0.0.1:$(cluster_port "${ids[0]}")"; fi
  done
  echo "  $k node(s) up; adding $USERS accounts through node $(( ${ids[0]} == 0 ? 1 : ${ids[0]} ))'s admin socket..." >&2
  for i in $(seq 1 "$USERS"); do
    "$STARLING_BIN" user add "user$i@$DOMAIN" "perfpass$i" --config "$dir/node${ids[0]}.toml" >> "$dir/useradd.log" 2>&1 \
      || { echo "starling user add user$i failed; see $dir/useradd.log" >&2; return 1; }
  done
  wait_replicated "${ids[@]}"
  if [ "$k" -gt 1 ]; then
    "$STARLING_BIN" cluster status --config "$dir/node${ids[0]}.toml" > "$dir/status.txt" 2>&1 || true
    sed 's/^/  /' "$dir/status.txt" >&2
  fi
  for i in "${!ids[@]}"; do # one login on each node, with the first account of its slice
    n=${ids[$i]}
    if ! timeout 60 "$BENCH_BIN" login --port "$(c2s_port "$n")" --domain "$DOMAIN" --logins 1 --concurrency 1 \
         --users 1 --first-user $(( 1 + i * (USERS / k) )) --quiet > "$dir/probe$n.txt" 2>&1 \
       || ! grep -q "errors  *0 " "$dir/probe$n.txt"; then
      echo "a test login on node $n failed; see $dir/probe$n.txt" >&2; return 1
    fi
  done
  IDS[$k]="${ids[*]}"
}

round() { # $1 = K nodes, $2 = round number; the nodes IDS[K] are running
  local k=$1 r=$2 rd="$OUT/$1-node/r$2" n i p
  local -a SETUP_IDS; read -r -a SETUP_IDS <<< "${IDS[$k]}"
  mkdir -p "$rd"; ROUND_DIR="$rd"
  for n in "${SETUP_IDS[@]}"; do scrape "$n" "$rd/idle-start.$n.prom"; done
  sleep "$IDLE_SECS"
  for n in "${SETUP_IDS[@]}"; do scrape "$n" "$rd/before.$n.prom"; done
  local per_logins=$(( LOGINS / k )) per_conc=$(( CONC / k )) per_users=$(( USERS / k ))
  BENCH_PIDS=()
  for i in "${!SETUP_IDS[@]}"; do
    n=${SETUP_IDS[$i]}
    ( timeout "$BENCH_TIMEOUT" "$BENCH_BIN" login --port "$(c2s_port "$n")" --domain "$DOMAIN" \
        --logins $(( per_logins + (i < LOGINS % k ? 1 : 0) )) --concurrency "$per_conc" --users "$per_users" --first-user $(( 1 + i * per_users )) \
        --server-pid "${NODE_PID[$n]}" --max-secs "$MAX_SECS" --label "node$n" --quiet \
        --json "$rd/bench.$n.json" > "$rd/bench.$n.txt" 2>&1 &
      echo $! > "$rd/bench.$n.pid"
      rc=0; wait $! || rc=$?
      date +%s.%N > "$rd/bench.$n.end"; echo "$rc" > "$rd/bench.$n.rc" ) &
    BENCH_PIDS+=("$!")
  done
  for p in "${BENCH_PIDS[@]}"; do wait "$p" || true; done
  BENCH_PIDS=()
  for n in "${SETUP_IDS[@]}"; do scrape "$n" "$rd/after.$n.prom"; done
  echo "$per_users" > "$rd/warmups_per_process"
  for n in "${SETUP_IDS[@]}"; do
    [ "$(cat "$rd/bench.$n.rc")" = 0 ] || echo "  bench on node $n exited $(cat "$rd/bench.$n.rc"): $(tail -1 "$rd/bench.$n.txt")" >&2
  done
}

HEAD="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
  echo "command: STARLING_BIN=$STARLING_BIN BENCH_BIN=$BENCH_BIN RUNS=$RUNS LOGINS=$LOGINS CONC=$CONC USERS=$USERS NODES=$NODES bench/cluster-login.sh"
  echo "repo HEAD $HEAD when run; starling binary modified $(stat -c '%y' "$STARLING_BIN" | cut -d. -f1); $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/meta.txt"
echo "== cluster login: results in $OUT" >&2
make_certs
for k in 1 "$NODES"; do
  echo "-- starting $k node(s)" >&2
  setup "$k"
done
# Interleaved (1 node, N nodes, 1 node, ...) so that drifts in the machine's load touch both.
for r in $(seq 1 "$RUNS"); do
  for k in 1 "$NODES"; do
    echo "  round $r/$RUNS: $k node(s)" >&2
    round "$k" "$r"
  done
done
for k in 1 "$NODES"; do
  read -r first _ <<< "${IDS[$k]}"
  "$STARLING_BIN" cluster status --config "$OUT/$k-node/node$first.toml" > "$OUT/$k-node/status-end.txt" 2>&1 || true
done
stop_nodes
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/meta.txt"

python3 - "$OUT" "$NODES" "$IDLE_SECS" <<'PY' | tee "$OUT/table.md"
import glob, json, os, statistics, sys
out, nodes, idle_secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def prom(path):
    v = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 2 and "{" not in parts[0]:
            try:
                v[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return v

def delta(rd, a, b, n, name):
    return prom(f"{rd}/{b}.{n}.prom").get(name, 0.0) - prom(f"{rd}/{a}.{n}.prom").get(name, 0.0)

def one_round(rd):
    ns = sorted(p.split(".")[-2] for p in glob.glob(f"{rd}/before.*.prom"))
    benches = []
    for n in ns:
        try:
            benches.append(json.load(open(f"{rd}/bench.{n}.json"))["median"] | {
                "end": float(open(f"{rd}/bench.{n}.end").read())})
        except (OSError, ValueError, KeyError):
            benches.append(None)
    ok = [b for b in benches if b]
    f = {}
    if ok:
        f["logins_ok"] = sum(b["logins_ok"] for b in ok)
        f["errors"] = sum(b["errors"] for b in ok) + 0.0
        f["logins_per_s_sum"] = sum(b["logins_per_s"] for b in ok)
        # the union of the measured windows: each ends at its process's end, lasts ok/rate
        starts = [b["end"] - b["logins_ok"] / b["logins_per_s"] for b in ok if b["logins_per_s"] > 0]
        if starts:
            f["logins_per_s_union"] = f["logins_ok"] / (max(b["end"] for b in ok) - min(starts))
        f["login_p50_ms"] = statistics.median(b["login_p50_ms"] for b in ok)
        f["login_p99_ms"] = max(b["login_p99_ms"] for b in ok)
        cores = [b.get("server_cpu_cores") for b in ok]
        if all(c is not None for c in cores):
            f["server_cpu_cores"] = sum(cores)
            f["server_cpu_us_per_login"] = 1e6 * sum(cores) / f["logins_per_s_sum"]
        bcpu = [b.get("bench_cpu_us_per_login") for b in ok]
        if all(c is not None for c in bcpu):
            f["bench_cpu_us_per_login"] = sum(c * b["logins_ok"] for c, b in zip(bcpu, ok)) / f["logins_ok"]
    if len(ok) < len(ns):
        f["bench_failed"] = len(ns) - len(ok)
    W, C, I = "starling_raft_writes_per_entry_sum", "starling_raft_writes_per_entry_count", "starling_raft_commit_index"
    writes = sum(delta(rd, "before", "after", n, W) for n in ns)
    batches = sum(delta(rd, "before", "after", n, C) for n in ns)
    entries = max(delta(rd, "before", "after", n, I) for n in ns)
    f["raft_batches"] = batches
    f["raft_writes"] = writes
    f["raft_log_entries"] = entries
    if batches:
        f["writes_per_batch"] = writes / batches
    if entries:
        f["writes_per_log_entry"] = writes / entries
    warm = int(open(f"{rd}/warmups_per_process").read()) * len(ns)
    f["warmup_logins"] = warm
    if f.get("logins_ok"):
        f["raft_writes_per_measured_login"] = writes / f["logins_ok"]
    if f.get("logins_ok", 0) + warm:
        f["raft_writes_per_login"] = writes / (f.get("logins_ok", 0) + warm)
    f["idle_entries_per_s"] = max(delta(rd, "idle-start", "before", n, I) for n in ns) / idle_secs
    RW, RC = "starling_registry_writes_per_entry_sum", "starling_registry_writes_per_entry_count"
    rwrites = sum(delta(rd, "before", "after", n, RW) for n in ns)
    rbatches = sum(delta(rd, "before", "after", n, RC) for n in ns)
    f["registry_batches"] = rbatches
    f["registry_writes"] = rwrites
    if rbatches:
        f["registry_writes_per_batch"] = rwrites / rbatches
    if f.get("logins_ok", 0) + warm:
        f["registry_writes_per_login"] = rwrites / (f.get("logins_ok", 0) + warm)
    return f

def setup(k):
    rounds = [one_round(rd) for rd in sorted(glob.glob(f"{out}/{k}-node/r*"), key=lambda p: int(p.rsplit("r", 1)[1]))]
    keys = {key for r in rounds for key in r}
    return {key: statistics.median(r[key] for r in rounds if key in r) for key in keys}, len(rounds)

def fmt(x):
    if x is None:
        return "-"
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"

one, n1 = setup(1)
many, nk = setup(nodes)
rows = [
    ("logins/s (sum over bench processes)", "logins_per_s_sum"),
    ("logins/s (all logins / union of measured windows)", "logins_per_s_union"),
    ("login p50 ms (median over processes)", "login_p50_ms"),
    ("login p99 ms (worst process)", "login_p99_ms"),
    ("server CPU cores (sum over nodes)", "server_cpu_cores"),
    ("server CPU µs per login (all nodes)", "server_cpu_us_per_login"),
    ("bench CPU µs per login", "bench_cpu_us_per_login"),
    ("logins ok", "logins_ok"),
    ("errors", "errors"),
    ("warm-up logins (unmeasured, in the Raft window)", "warmup_logins"),
    ("Raft batches proposed (Σ writes_per_entry_count)", "raft_batches"),
    ("writes in them (Σ writes_per_entry_sum)", "raft_writes"),
    ("**writes per batch**", "writes_per_batch"),
    ("Raft log entries committed (Δ commit_index)", "raft_log_entries"),
    ("writes per log entry", "writes_per_log_entry"),
    ("Raft writes per measured login", "raft_writes_per_measured_login"),
    ("Raft writes per login, warm-ups included", "raft_writes_per_login"),
    ("idle Raft entries/s before the storm", "idle_entries_per_s"),
    ("registry batches proposed (Σ starling_registry_writes_per_entry_count)", "registry_batches"),
    ("registry writes in them", "registry_writes"),
    ("registry writes per batch", "registry_writes_per_batch"),
    ("registry writes per login, warm-ups included", "registry_writes_per_login"),
]
meta = open(f"{out}/meta.txt").read().strip().splitlines()
print(f"`{meta[0].split(': ', 1)[1]}`\n")
print("; ".join(meta[1:]) + "\n")
print(f"| figure | 1 node (n={n1}) | {nodes} nodes (n={nk}) | {nodes} nodes / 1 node |")
print("|---|---|---|---|")
for label, key in rows:
    a, b = one.get(key), many.get(key)
    ratio = f"{b / a:.2f}" if a and b is not None and key not in ("errors",) else "-"
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
for name, s in (("1 node", one), (f"{nodes} nodes", many)):
    if s.get("bench_failed"):
        print(f"\n**{name}: {s['bench_failed']:.0f} bench process(es) failed in some round; see {out}.**")
PY
