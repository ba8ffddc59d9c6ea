#!/bin/bash
# Reconnect storm against a Starling cluster on loopback: SESSIONS sessions logged in round-robin
# over the NODES nodes' c2s ports, all dropped at once (TCP reset), each back after a delay drawn
# from JITTER ms (and retries after a back-off), with the same account and resource.
#
#   bench/cluster-storm.sh            # prints a markdown table (also in $OUT/table.md)
#
#   STARLING_BIN=/path/starling BENCH_BIN=/path/starling-bench SESSIONS=15000 bench/cluster-storm.sh
#
# Starts NODES (3) nodes joined over mutual TLS (node 1 bootstraps, the others `--join` it; the
# node start of bench/cluster-login.sh, from cluster-lib.sh), adds accounts user1..userSESSIONS
# through node 1's admin socket (4 connections; SCRAM iterations 4096, the default) and waits until
# every node has applied them, checks one login on each node, then runs RUNS rounds of one
# `starling-bench storm --port P1,P2,P3 --server-pid PID1,PID2,PID3` (SPAWN child processes; server
# CPU and context switches are summed over the nodes). NODES=1 gives a cluster of one with the same
# configuration, for comparison. Per round the table also shows the Raft entries and writes every
# node's /metrics counted and the ERROR and WARN lines each node logged, over the whole bench process
# (warm-up logins, the drop and the storm).
#
# Environment: STARLING_BIN (target/release/starling), BENCH_BIN (target/release/starling-bench),
# SESSIONS (15000), SPAWN (0: one child per 19,000 sessions), JITTER (2000 ms), RECONNECT (same:
# the node a session had; next: the next node), STORM_SECS (60: bound on each login and on the
# storm), RUNS (1), NODES (3), PORT_BASE (27000: node n uses c2s PORT_BASE+202+10n, direct TLS
# +203+10n, metrics +900+10n, cluster +700+10n), OUT (/tmp/starling-cluster-storm; a timestamped
# directory is made under it), KEEP_DATA (0). Loopback only. Every process it starts is stopped by
# PID on exit; the bench is bounded by `timeout` (STORM_SECS + 900 s: warm-up included), node start
# by 30 s, replication waits by 30 s.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
STARLING_BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
BENCH_BIN="${BENCH_BIN:-$ROOT/target/release/starling-bench}"
SESSIONS="${SESSIONS:-15000}"; SPAWN="${SPAWN:-0}"; JITTER="${JITTER:-2000}"; RECONNECT="${RECONNECT:-same}"
STORM_SECS="${STORM_SECS:-60}"; RUNS="${RUNS:-1}"; NODES="${NODES:-3}"
PORT_BASE="${PORT_BASE:-27000}"; DOMAIN=perf.test
OUT="${OUT:-/tmp/starling-cluster-storm}/$(date +%Y%m%d-%H%M%S)"

for b in "$STARLING_BIN" "$BENCH_BIN"; do
  [ -x "$b" ] || { echo "missing $b (cargo build --release -p starling -p starling-bench, or set STARLING_BIN / BENCH_BIN)" >&2; exit 2; }
done
command -v curl >/dev/null || { echo "curl is needed to read /metrics" >&2; exit 2; }
[ "$SESSIONS" -ge "$NODES" ] || { echo "SESSIONS must be at least NODES ($NODES)" >&2; exit 2; }
mkdir -p "$OUT"
DIR="$OUT/$NODES-node"; mkdir -p "$DIR"
CA="$OUT/ca"

. "$HERE/cluster-lib.sh"

BENCH_PID=""
cleanup() {
  stop_pid "$BENCH_PID"
  stop_nodes
  [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$DIR"/data* "$CA"/*-key.pem 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

HEAD="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
CMD="STARLING_BIN=$STARLING_BIN BENCH_BIN=$BENCH_BIN SESSIONS=$SESSIONS SPAWN=$SPAWN JITTER=$JITTER RECONNECT=$RECONNECT STORM_SECS=$STORM_SECS RUNS=$RUNS NODES=$NODES bench/cluster-storm.sh"
{
  echo "command: $CMD"
  echo "repo HEAD $HEAD when run; starling binary modified $(stat -c '%y' "$STARLING_BIN" | cut -d. -f1); $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/meta.txt"
echo "== cluster storm: $NODES node(s), $SESSIONS sessions; results in $OUT" >&2

make_certs
IDS=($(seq 1 "$NODES"))
for n in "${IDS[@]}"; do
  if [ "$n" = 1 ]; then start_node 1 1 "$DIR" ""
  else start_node "$n" "$n" "$DIR" "127.0.0.1:$(cluster_port 1)"; fi
done
t0=$(date +%s)
echo "  $NODES node(s) up; adding $SESSIONS accounts through node 1's admin socket..." >&2
add_accounts "$DIR/data1/admin.sock" 1 "$SESSIONS"
echo "  accounts added in $(( $(date +%s) - t0 )) s" >&2
wait_replicated "${IDS[@]}"
if [ "$NODES" -gt 1 ]; then "$STARLING_BIN" cluster status --config "$DIR/node1.toml" 2>&1 | sed 's/^/  /' >&2 || true; fi
PORTS=""; PIDS=""
for n in "${IDS[@]}"; do
  if ! timeout 60 "$BENCH_BIN" login --port "$(c2s_port "$n")" --domain "$DOMAIN" --logins 1 --concurrency 1 \
       --users 1 --first-user "$n" --quiet > "$DIR/probe$n.txt" 2>&1 || ! grep -q "errors  *0 " "$DIR/probe$n.txt"; then
    echo "a test login on node $n failed; see $DIR/probe$n.txt" >&2; exit 1
  fi
  PORTS="$PORTS${PORTS:+,}$(c2s_port "$n")"; PIDS="$PIDS${PIDS:+,}${NODE_PID[$n]}"
done

log_lines() { # $1 = node n, $2 = level (ERROR, WARN): lines of that level in its log so far (colours stripped)
  sed 's/\x1b\[[0-9;]*m//g' "$DIR/node$1.log" 2>/dev/null | grep -c " $2 " || true
}
for r in $(seq 1 "$RUNS"); do
  echo "  round $r/$RUNS" >&2
  for n in "${IDS[@]}"; do
    scrape "$n" "$DIR/before$r.$n.prom"
    for l in ERROR WARN; do log_lines "$n" "$l" > "$DIR/$l-before$r.$n"; done
  done
  timeout $(( STORM_SECS + 900 )) "$BENCH_BIN" storm --port "$PORTS" --server-pid "$PIDS" --domain "$DOMAIN" \
    --sessions "$SESSIONS" --spawn "$SPAWN" --jitter-ms "$JITTER" --reconnect-to "$RECONNECT" \
    --timeout-secs "$STORM_SECS" --label "$NODES-node" --quiet --json "$DIR/storm$r.json" > "$DIR/storm$r.txt" 2>&1 &
  BENCH_PID=$!
  rc=0; wait "$BENCH_PID" || rc=$?; BENCH_PID=""
  [ "$rc" = 0 ] || echo "  bench exited $rc: $(tail -1 "$DIR/storm$r.txt")" >&2
  grep "^storm r" "$DIR/storm$r.txt" | sed 's/^/  /' >&2 || true
  for n in "${IDS[@]}"; do
    scrape "$n" "$DIR/after$r.$n.prom"
    for l in ERROR WARN; do log_lines "$n" "$l" > "$DIR/$l-after$r.$n"; done
  done
  if [ "$r" -lt "$RUNS" ]; then sleep 5; fi
done
"$STARLING_BIN" cluster status --config "$DIR/node1.toml" > "$DIR/status-end.txt" 2>&1 || true
stop_nodes
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/meta.txt"

python3 - "$OUT" "$DIR" "$RUNS" "${IDS[@]}" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys
out, d, runs, ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]

def prom(path):
    v = {}
    try:
        for line in open(path):
            parts = line.split()
            if len(parts) >= 2 and not line.startswith("#") and "{" not in parts[0]:
                try: v[parts[0]] = float(parts[1])
                except ValueError: pass
    except OSError:
        pass
    return v

rows, names = [], []
for r in range(1, runs + 1):
    try:
        doc = json.load(open(f"{d}/storm{r}.json"))
        f = {k: doc["runs"][0].get(k) for k in doc["figures"]}  # in the bench's order
    except (OSError, ValueError, KeyError, IndexError):
        f = {}
    W, C, I = "starling_raft_writes_per_entry_sum", "starling_raft_writes_per_entry_count", "starling_raft_commit_index"
    dl = lambda n, k: prom(f"{d}/after{r}.{n}.prom").get(k, 0.0) - prom(f"{d}/before{r}.{n}.prom").get(k, 0.0)
    f["raft_log_entries"] = max(dl(n, I) for n in ids)
    f["raft_writes"] = sum(dl(n, W) for n in ids)
    f["raft_batches"] = sum(dl(n, C) for n in ids)
    for n in ids:
        for level in ("ERROR", "WARN"):
            try:
                f[f"node{n}_{level.lower()}_log_lines"] = int(open(f"{d}/{level}-after{r}.{n}").read() or 0) - int(open(f"{d}/{level}-before{r}.{n}").read() or 0)
            except (OSError, ValueError):
                pass
    for k in f:
        if k not in names: names.append(k)
    rows.append(f)

def fmt(x):
    if x is None: return "-"
    if x == 0 or abs(x) >= 100: return f"{x:.0f}"
    return f"{x:.3g}"

meta = open(f"{out}/meta.txt").read().strip().splitlines()
print(f"`{meta[0].split(': ', 1)[1]}`\n")
print("; ".join(meta[1:]) + "\n")
print("| figure | " + " | ".join(f"round {i}" for i in range(1, runs + 1)) + (" | median |" if runs > 1 else " |"))
print("|---|" + "---|" * (runs + (1 if runs > 1 else 0)))
for k in names:
    vals = [r.get(k) for r in rows]
    line = f"| {k} | " + " | ".join(fmt(v) for v in vals)
    if runs > 1:
        ok = [v for v in vals if v is not None]
        line += " | " + (fmt(statistics.median(ok)) if ok else "-")
    print(line + " |")
print("\nRaft and log figures cover the whole bench process: warm-up logins, the drop and the storm.")
PY
