#!/bin/bash
# What archiving a chat message (XEP-0313) costs one Starling node: the same chat load against the
# same binary with the archive on (`[mam]` defaults) and off (`[mam] enabled = false`), rounds
# alternating. Per round, around `starling-bench chat` (PAIRS pairs, RATE msg/s, SIZE-byte bodies,
# DURATION s), it reads from the server:
#   - delivered/s, latency p50/p99, server CPU per message: the bench's own figures
#   - archive copies written (starling_mam_archived_total; two per message between local users)
#     and the mean archive write time (starling_mam_write_seconds_{sum,count})
#   - Raft entries and writes of the durable group (starling_raft_writes_per_entry_{count,sum}):
#     writes per entry is how many messages' archive writes one fsynced entry carries
#   - bytes on disk: growth of the data directory over all rounds (du after the server stopped and
#     flushed, against right after the accounts were added) per archived copy; the Raft log keeps a
#     copy of each record until it is compacted (every 10,000 entries), so short runs count it too
#
#   bench/mam-cost.sh            # STARLING_BIN, BENCH from target/release
#
# Environment: STARLING_BIN, BENCH, RUNS (3), PAIRS (50), RATE (1000), SIZE (100), DURATION (10),
# OUT (/tmp/starling-mam-cost), PORT_ON/PORT_OFF (21422/21522; metrics on port+68).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
BENCH="${BENCH:-$ROOT/target/release/starling-bench}"
RUNS="${RUNS:-3}"; PAIRS="${PAIRS:-50}"; RATE="${RATE:-1000}"; SIZE="${SIZE:-100}"; DURATION="${DURATION:-10}"
OUT="${OUT:-/tmp/starling-mam-cost}/$(date +%Y%m%d-%H%M%S)"; mkdir -p "$OUT"
ACCOUNTS=$((PAIRS * 2))
declare -A PORT=([on]=${PORT_ON:-21422} [off]=${PORT_OFF:-21522}) MAMON=([on]=true [off]=false) SPID=()
declare -A MPORT=([on]=$((PORT[on] + 68)) [off]=$((PORT[off] + 68)))

port_up() { local i; for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
stop_pid() { [ -n "${1:-}" ] || return 0; kill "$1" 2>/dev/null || return 0
  local i; for i in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done; kill -9 "$1" 2>/dev/null || true; }
cleanup() { for b in on off; do stop_pid "${SPID[$b]:-}"; done; }
trap cleanup EXIT
metric() { # $1=port $2=name: value of an unlabelled sample (0 if absent)
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {v = $2} END {print v + 0}'
}

for b in on off; do
  d="/tmp/mam-cost-$b"; rm -rf "$d"; mkdir -p "$d/data"
  cat > "$d/run.toml" <<EOF
domains = ["perf.test"]
data_dir = "$d/data"
[c2s]
bind = "127.0.0.1"
port = ${PORT[$b]}
tls_port = $((PORT[$b] + 1))
[auth]
scram_iterations = 4096
[metrics]
bind = "127.0.0.1"
port = ${MPORT[$b]}
[mam]
enabled = ${MAMON[$b]}
EOF
  "$BIN" serve --config "$d/run.toml" > "$OUT/$b-server.log" 2>&1 &
  SPID[$b]=$!
  port_up "${PORT[$b]}" || { echo "$b did not start (see $OUT/$b-server.log)" >&2; exit 1; }
  "$HERE/add-accounts.py" "$d/data/admin.sock" 1 "$ACCOUNTS" perf.test > "$OUT/$b-useradd.log" 2>&1
  sleep 1; sync; du -sb "$d/data" | cut -f1 > "$OUT/$b-disk0"
done

echo "archive round delivered_per_s p50_ms p99_ms cpu_us_per_msg copies_per_msg write_ms entries_per_msg writes_per_entry" > "$OUT/rows.txt"
for r in $(seq 1 "$RUNS"); do
  for b in on off; do
    pid="${SPID[$b]}"; mp="${MPORT[$b]}"
    a0=$(metric "$mp" starling_mam_archived_total)
    w0=$(metric "$mp" starling_mam_write_seconds_sum); wc0=$(metric "$mp" starling_mam_write_seconds_count)
    e0=$(metric "$mp" starling_raft_writes_per_entry_count); ew0=$(metric "$mp" starling_raft_writes_per_entry_sum)
    "$BENCH" chat --port "${PORT[$b]}" --domain perf.test --pairs "$PAIRS" --rate "$RATE" --size "$SIZE" \
      --duration-secs "$DURATION" --server-pid "$pid" --runs 1 --quiet --json "$OUT/$b-$r.json" \
      > "$OUT/$b-$r.txt" 2>&1
    sleep 2
    # The Raft log holds a copy of every record until it is compacted (every 10,000 entries):
    # compact, so the growth is the state machine's.
    a1=$(metric "$mp" starling_mam_archived_total)
    w1=$(metric "$mp" starling_mam_write_seconds_sum); wc1=$(metric "$mp" starling_mam_write_seconds_count)
    e1=$(metric "$mp" starling_raft_writes_per_entry_count); ew1=$(metric "$mp" starling_raft_writes_per_entry_sum)
    python3 - "$OUT/$b-$r.json" "$b" "$r" "$a0" "$a1" "$w0" "$w1" "$wc0" "$wc1" "$e0" "$e1" "$ew0" "$ew1" \
      >> "$OUT/rows.txt" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
def find(d, *names):
    for n in names:
        if isinstance(d, dict) and n in d: return d[n]
    for v in (d.values() if isinstance(d, dict) else d if isinstance(d, list) else []):
        if isinstance(v, (dict, list)):
            x = find(v, *names)
            if x is not None: return x
    return None
v = [float(x) for x in sys.argv[4:]]
a, w, wc, e, ew = v[1]-v[0], v[3]-v[2], v[5]-v[4], v[7]-v[6], v[9]-v[8]
msgs = find(j, "sent") or 1
g = lambda *n: find(j, *n)
fmt = lambda x, p=2: "-" if x is None else f"{x:.{p}f}"
print(sys.argv[2], sys.argv[3], fmt(g("delivered_per_s"), 0), fmt(g("latency_p50_ms")), fmt(g("latency_p99_ms")),
      fmt(g("server_cpu_us_per_msg"), 1), fmt(a / msgs), fmt(w / wc * 1000 if wc else None),
      fmt(e / msgs, 3), fmt(ew / e if e else None, 1))
PY
  done
done
echo "archive copies disk_growth_bytes bytes_per_copy" > "$OUT/disk.txt"
for b in on off; do
  copies=$(metric "${MPORT[$b]}" starling_mam_archived_total)
  stop_pid "${SPID[$b]}"; SPID[$b]=""; sync
  grow=$(( $(du -sb "/tmp/mam-cost-$b/data" | cut -f1) - $(cat "$OUT/$b-disk0") ))
  echo "$b $copies $grow $(python3 -c "print(f'{$grow / $copies:.0f}' if $copies else '-')")" >> "$OUT/disk.txt"
done
column -t "$OUT/rows.txt"
column -t "$OUT/disk.txt"
echo "results in $OUT"
