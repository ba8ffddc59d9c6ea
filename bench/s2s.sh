#!/bin/bash
# Federation cost: one-to-one chat between two Starling servers on loopback (a.perf and b.perf,
# each finding the other through [s2s] hosts), every message crossing a server-to-server link
# (STARTTLS, dialback), against the same chat inside one server. Interleaved rounds:
#
#   bench/s2s.sh                         # RUNS (3) rounds of: federated chat, local chat
#
# Figures per round (starling-bench chat, --pairs PAIRS (50) at RATE (1000) msg/s for DURATION
# (10) s): server CPU per message (both servers' CPU for the federated run), latency p50/p99,
# lost. Environment: STARLING_BIN, BENCH, RUNS, PAIRS, RATE, DURATION, OUT (/tmp/starling-s2s).
# Stops the servers it started by PID.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
STARLING_BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
BENCH="${BENCH:-$ROOT/target/release/starling-bench}"
RUNS="${RUNS:-3}"; PAIRS="${PAIRS:-50}"; RATE="${RATE:-1000}"; DURATION="${DURATION:-10}"
OUT="${OUT:-/tmp/starling-s2s}/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_up() { local i; for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }

declare -A PID C2S S2S
for s in a b; do C2S[$s]=$(free_port); S2S[$s]=$(free_port); done
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start() { # $1 = a|b
  local s=$1 other; other=$([ "$1" = a ] && echo b || echo a)
  local d="$OUT/$s"; mkdir -p "$d/data"
  cat > "$d/starling.toml" <<CONF
domains = ["$s.perf"]
data_dir = "$d/data"
[auth]
scram_iterations = 4096
[mam]
enabled = false
[s2s]
bind = "127.0.0.1"
port = ${S2S[$s]}
dns = false
[s2s.hosts]
"$other.perf" = "127.0.0.1:${S2S[$other]}"
CONF
  (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
   exec "$STARLING_BIN" serve --config "$d/starling.toml" --c2s-port "${C2S[$s]}" --c2s-tls-port "$(free_port)" \
     --metrics-port "$(free_port)" --cluster-port "$(free_port)" > "$d/log" 2>&1 < /dev/null) &
  PID[$s]=$!; PIDS+=("${PID[$s]}")
  port_up "${C2S[$s]}" || { echo "server $s did not start (see $d/log)" >&2; exit 1; }
  "$HERE/add-accounts.py" "$d/data/admin.sock" 1 $((PAIRS * 2)) "$s.perf" > "$d/useradd.log" 2>&1
}
start a; start b
echo "== federated chat (a.perf -> b.perf) and local chat (a.perf), $PAIRS pairs at $RATE msg/s, $RUNS rounds; results in $OUT"
COMMON=(chat --pairs "$PAIRS" --rate "$RATE" --size 100 --duration-secs "$DURATION" --runs 1 --quiet)
for r in $(seq 1 "$RUNS"); do
  "$BENCH" "${COMMON[@]}" --port "${C2S[a]}" --domain a.perf --server-pid "${PID[a]}" \
    --peer-port "${C2S[b]}" --peer-domain b.perf --peer-pid "${PID[b]}" --label federated \
    --json "$OUT/federated-$r.json" > "$OUT/federated-$r.txt" 2>&1 || echo "   federated round $r failed: $(tail -1 "$OUT/federated-$r.txt")"
  sleep 2
  "$BENCH" "${COMMON[@]}" --port "${C2S[a]}" --domain a.perf --server-pid "${PID[a]}" --label local \
    --json "$OUT/local-$r.json" > "$OUT/local-$r.txt" 2>&1 || echo "   local round $r failed: $(tail -1 "$OUT/local-$r.txt")"
  sleep 2
done
python3 "$HERE/summarize.py" "$OUT" federated local
