#!/bin/bash
# What one login costs a Starling node, before/after a change, side by side in one run:
# server CPU, context switches, Raft entries and writes of each group, and fsyncs per login.
#
#   bench/login-cost.sh                       # STARLING_BIN against STARLING_BASE_BIN
#
# Each build gets its own data dir (ACCOUNTS accounts, SCRAM iterations 4096, kept between runs
# with REUSE_DATA=1) and ports; rounds alternate builds (RUNS rounds). One round is
# `starling-bench login --logins LOGINS --concurrency CONC --users USERS` (STARTTLS, SCRAM-SHA-256,
# bind, initial presence, close). Around it the script reads, from the server process:
#   - context switches: voluntary + nonvoluntary over every thread (/proc/PID/task/*/status)
#   - Raft entries and writes: deltas of starling_raft_writes_per_entry_{count,sum} (durable group)
#     and starling_registry_writes_per_entry_{count,sum} (registry group) from /metrics
#     (lease renewals and other internal writes included)
# and, in one extra round per build under `strace -f -c` (slow, so not timed), the fsync-family
# calls (fsync, fdatasync, sync_file_range) per login. CPU per login is the bench's own figure
# (utime+stime of --server-pid over the measured window).
#
# Environment: STARLING_BIN (target/release/starling), STARLING_BASE_BIN (unset: only one build),
# BENCH (target/release/starling-bench), RUNS (3), LOGINS (2000), CONC (20), USERS (300),
# ACCOUNTS (300), OUT (/tmp/starling-login-cost), STRACE (1: count fsyncs), MECH (the bench's
# default, the strongest offered: SCRAM-SHA-256; PLAIN verifies PBKDF2 on the server).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$ROOT/target/release/starling-bench}"
RUNS="${RUNS:-3}"; LOGINS="${LOGINS:-2000}"; CONC="${CONC:-20}"; USERS="${USERS:-300}"
ACCOUNTS="${ACCOUNTS:-300}"; STRACE="${STRACE:-1}"
OUT="${OUT:-/tmp/starling-login-cost}/$(date +%Y%m%d-%H%M%S)"; mkdir -p "$OUT"
declare -A BIN=([new]="${STARLING_BIN:-$ROOT/target/release/starling}")
BUILDS="new"
if [ -n "${STARLING_BASE_BIN:-}" ]; then BIN[base]="$STARLING_BASE_BIN"; BUILDS="new base"; fi
declare -A PORT=([new]=${PORT_NEW:-21222} [base]=${PORT_BASE:-21322}) MPORT=([new]=$((${PORT_NEW:-21222} + 68)) [base]=$((${PORT_BASE:-21322} + 68))) SPID=()

free_port_check() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_up() { local i; for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
stop_pid() { [ -n "${1:-}" ] || return 0; kill "$1" 2>/dev/null || return 0
  local i; for i in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done; kill -9 "$1" 2>/dev/null || true; }
cleanup() { for b in $BUILDS; do stop_pid "${SPID[$b]:-}"; done; }
trap cleanup EXIT

ctxsw() { # total context switches of every thread of $1
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/_ctxt_switches/ {s += $2} END {print s + 0}'
}
metric() { # $1=port $2=name: value of an unlabelled sample (0 if absent)
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {v = $2} END {print v + 0}'
}

for b in $BUILDS; do
  d="/tmp/login-cost-$b"
  for p in "${PORT[$b]}" "$((PORT[$b] + 1))" "${MPORT[$b]}"; do
    free_port_check "$p" || { echo "port $p is in use" >&2; exit 1; }
  done
  if [ "${REUSE_DATA:-0}" = 1 ] && [ -s "$d/accounts" ] && [ "$(cat "$d/accounts")" -ge "$ACCOUNTS" ]; then
    echo "$b: reusing $d" >&2
  else
    rm -rf "$d"; mkdir -p "$d/data"
    printf 'domains = ["perf.test"]\ndata_dir = "%s"\n[auth]\nscram_iterations = 4096\n' "$d/data" > "$d/starling.toml"
    echo "$b: adding $ACCOUNTS accounts..." >&2
    seq 1 "$ACCOUNTS" | xargs -P 1 -I{} "${BIN[$b]}" user add "user{}@perf.test" "perfpass{}" \
      --config "$d/starling.toml" --data-dir "$d/data" > "$d/useradd.log" 2>&1
    echo "$ACCOUNTS" > "$d/accounts"
  fi
  cat > "$d/run.toml" <<EOF
domains = ["perf.test"]
data_dir = "$d/data"
[c2s]
bind = "127.0.0.1"
port = ${PORT[$b]}
tls_port = $((PORT[$b] + 1))
[auth]
scram_iterations = 4096
max_failures_per_account = 1000000
max_failures_per_ip = 1000000
[metrics]
bind = "127.0.0.1"
port = ${MPORT[$b]}
EOF
  "${BIN[$b]}" serve --config "$d/run.toml" > "$OUT/$b-server.log" 2>&1 &
  SPID[$b]=$!
  port_up "${PORT[$b]}" || { echo "$b did not start (see $OUT/$b-server.log)" >&2; exit 1; }
  port_up "${MPORT[$b]}" || { echo "$b: no metrics port" >&2; exit 1; }
  # warm-up: every account once (PBKDF2 cached by the bench, sled pages warm)
  "$BENCH" login --port "${PORT[$b]}" --domain perf.test --logins "$USERS" --concurrency "$CONC" \
    --users "$USERS" --quiet > "$OUT/$b-warmup.txt" 2>&1
done

echo "build round cpu_us_per_login ctxsw_per_login durable_entries durable_writes registry_entries registry_writes logins_per_s" > "$OUT/rows.txt"
for r in $(seq 1 "$RUNS"); do
  for b in $BUILDS; do
    pid="${SPID[$b]}"; mp="${MPORT[$b]}"
    c0=$(ctxsw "$pid")
    de0=$(metric "$mp" starling_raft_writes_per_entry_count); dw0=$(metric "$mp" starling_raft_writes_per_entry_sum)
    re0=$(metric "$mp" starling_registry_writes_per_entry_count); rw0=$(metric "$mp" starling_registry_writes_per_entry_sum)
    "$BENCH" login --port "${PORT[$b]}" --domain perf.test --logins "$LOGINS" --concurrency "$CONC" \
      --users "$USERS" --server-pid "$pid" --runs 1 --quiet --json "$OUT/$b-$r.json" ${MECH:+--mech "$MECH"} \
      > "$OUT/$b-$r.txt" 2>&1
    sleep 1 # the last logouts' writes
    c1=$(ctxsw "$pid")
    de1=$(metric "$mp" starling_raft_writes_per_entry_count); dw1=$(metric "$mp" starling_raft_writes_per_entry_sum)
    re1=$(metric "$mp" starling_registry_writes_per_entry_count); rw1=$(metric "$mp" starling_registry_writes_per_entry_sum)
    python3 - "$OUT/$b-$r.json" "$b" "$r" "$LOGINS" "$c0" "$c1" "$de0" "$de1" "$dw0" "$dw1" "$re0" "$re1" "$rw0" "$rw1" >> "$OUT/rows.txt" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
run = j["runs"][0] if "runs" in j else j
def find(d, *names):
    for n in names:
        if n in d: return d[n]
    for v in d.values():
        if isinstance(v, dict):
            x = find(v, *names)
            if x is not None: return x
    return None
n = float(sys.argv[4])
v = [float(x) for x in sys.argv[5:]]
cpu = find(run, "server_cpu_us_per_login")
lps = find(run, "logins_per_sec", "logins_per_s")
print(sys.argv[2], sys.argv[3], f"{cpu:.0f}" if cpu is not None else "?",
      f"{(v[1]-v[0])/n:.1f}", f"{(v[3]-v[2])/n:.3f}", f"{(v[5]-v[4])/n:.3f}",
      f"{(v[7]-v[6])/n:.3f}", f"{(v[9]-v[8])/n:.3f}", f"{lps:.0f}" if lps is not None else "?")
PY
    sleep 1
  done
done

if [ "$STRACE" = 1 ] && command -v strace > /dev/null; then
  echo "build fsyncs_per_login (strace -f -c, $USERS logins)" > "$OUT/fsync.txt"
  for b in $BUILDS; do
    strace -f -c -e trace=fsync,fdatasync,sync_file_range -p "${SPID[$b]}" -o "$OUT/$b-strace.txt" &
    st=$!; sleep 1
    "$BENCH" login --port "${PORT[$b]}" --domain perf.test --logins "$USERS" --concurrency "$CONC" \
      --users "$USERS" --quiet > "$OUT/$b-strace-run.txt" 2>&1
    sleep 1; kill -INT "$st"; wait "$st" 2>/dev/null || true
    calls=$(awk '$NF ~ /^(fsync|fdatasync|sync_file_range)$/ {s += $4} END {print s + 0}' "$OUT/$b-strace.txt")
    echo "$b $(python3 -c "print(f'{$calls / $USERS:.2f}')")" >> "$OUT/fsync.txt"
  done
fi
column -t "$OUT/rows.txt"
[ -f "$OUT/fsync.txt" ] && cat "$OUT/fsync.txt"
echo "results in $OUT"
