#!/bin/bash
# Group chat over a 3-node Starling cluster with mutual TLS, on loopback: `starling-bench muc`
# with ROOMS (10) rooms of OCCUPANTS (50), each room's occupants round-robin over the three
# nodes' c2s ports (so two in three deliveries leave the room's node), RATE (20) groupchat
# messages/s into the rooms for DURATION (20) s; room archives on (every message is a durable
# Raft write before it is reflected). Prints, per round, the bench's figures (server CPU per
# delivery summed over the nodes from the first send to the end of the drain, latency, lost) and
# steady-state figures over WINDOW (10) s that start 3 s after the rooms reflected their first
# message (so nothing of the logins and joins is counted): CPU per delivery of the three nodes,
# cross-node envelopes per message (starling_cluster_delivered_total) and voluntary context
# switches per message (wake-ups of the nodes' store runtime and actix threads).
#
#   STARLING_BIN=… [BENCH=…] [ROUNDS=3] [RATE=20] [ROOMS=10] [OCCUPANTS=50] [PORT_BASE=53000] bench/cluster-muc.sh
#
# PERF=1: `perf record -g` of each node over the window ($OUT/round-<r>/perf-<n>.data) and each
# thread's CPU and wake-ups at both ends of it (tasks0, tasks1).
# Every round runs on a fresh cluster; what it starts it stops by PID. The bench is bounded
# (--duration-secs, its own drain and join limits). Results: $OUT/round-<r>.json and a summary.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
: "${STARLING_BIN:?set STARLING_BIN to a release starling}"
BENCH=${BENCH:-$HERE/../target/release/starling-bench}
ROUNDS=${ROUNDS:-3}; RATE=${RATE:-20}; ROOMS=${ROOMS:-10}; OCCUPANTS=${OCCUPANTS:-50}
DURATION=${DURATION:-20}; WINDOW=${WINDOW:-10}; PORT_BASE=${PORT_BASE:-53000}
NODES=3; DOMAIN=perf.test
OUT=${OUT:-$(mktemp -d /tmp/cluster-muc.XXXXXX)}
NODE_EXTRA_CONF=""
command -v curl > /dev/null || { echo "curl is not installed" >&2; exit 1; }
[ -x "$BENCH" ] || { echo "no starling-bench at $BENCH (cargo build --release -p starling-bench)" >&2; exit 1; }
. "$HERE/cluster-lib.sh"
trap stop_nodes EXIT
trap 'exit 130' INT TERM

wakeups() { # voluntary context switches of the nodes' threads: "store actix other"
  local n; for n in 1 2 3; do cat /proc/"${NODE_PID[$n]}"/task/*/status 2>/dev/null; done \
    | awk '/^Name:/ { k = ($2 ~ /^starling-store/) ? "store" : ($2 ~ /^actix/) ? "actix" : "other" }
           /^voluntary_ctxt_switches/ { by[k] += $2 }
           END { printf "%d %d %d\n", by["store"], by["actix"], by["other"] }'
}
summed() { # $1 = metric: its value summed over the nodes (integer)
  local n s=0; for n in 1 2 3; do s=$((s + $(metric "$n" "$1" | cut -d. -f1))); done; echo "$s"; }
reflected() { summed starling_muc_messages_total; }
cpu_ticks() { local n s=0; for n in 1 2 3; do s=$((s + $(awk '{ print $14 + $15 }' /proc/"${NODE_PID[$n]}"/stat))); done; echo "$s"; }
snapshot() { # "messages cpu_ticks envelopes store actix other" at this moment
  echo "$(reflected) $(cpu_ticks) $(summed starling_cluster_delivered_total) $(wakeups)"; }

tasks() { # per thread of every node: "node:comm:tid cpu_ns voluntary_switches"
  local n t; for n in 1 2 3; do for t in /proc/"${NODE_PID[$n]}"/task/*; do
    echo "$n:$(tr ' ' _ < "$t/comm"):${t##*/} $(cut -d' ' -f1 "$t/schedstat") $(awk '/^voluntary_ctxt/ { print $2 }' "$t/status")"
  done; done 2>/dev/null | sort; }

run_one() { # $1 = round
  local round=$1 dir="$OUT/round-$1"
  start_three "$dir" $((ROOMS * OCCUPANTS)) || return 1
  "$BENCH" muc --port "$(c2s_port 1),$(c2s_port 2),$(c2s_port 3)" \
    --server-pid "${NODE_PID[1]},${NODE_PID[2]},${NODE_PID[3]}" --rooms "$ROOMS" --occupants "$OCCUPANTS" \
    --rate "$RATE" --size 100 --duration-secs "$DURATION" --json "$dir.json" > "$dir/bench.out" 2>&1 &
  local bench=$! i n s0="" s1=""
  for i in $(seq 1 600); do  # until a room reflected its first message (at most 120 s)
    kill -0 "$bench" 2>/dev/null || break
    if [ "$(reflected)" -gt 0 ]; then
      sleep 3; s0=$(snapshot)
      if [ "${PERF:-0}" = 1 ]; then
        for n in 1 2 3; do
          perf record -F "${PERF_FREQ:-2000}" ${PERF_G:--g} -p "${NODE_PID[$n]}" -o "$dir/perf-$n.data" -- sleep "$WINDOW" > /dev/null 2>&1 &
        done
        tasks > "$dir/tasks0"
      fi
      sleep "$WINDOW"; s1=$(snapshot)
      [ "${PERF:-0}" = 1 ] && tasks > "$dir/tasks1"
      break
    fi
    sleep 0.2
  done
  wait "$bench"; local rc=$?
  local n; for n in 1 2 3; do echo "node $n: $(grep -c -E 'WARN|ERROR' "$dir/node$n.log") warn/error lines"; done
  stop_nodes
  [ "$rc" = 0 ] || { echo "round $round: the bench failed (see $dir/bench.out)" >&2; return 1; }
  python3 - "$dir.json" "$round" "$OCCUPANTS" "$(getconf CLK_TCK)" "$s0" "$s1" <<'PY'
import json, sys
path, rnd, occ, hz, s0, s1 = sys.argv[1:]
doc = json.load(open(path)); f = doc["median"]
if s0 and s1:
    d = [int(b) - int(a) for a, b in zip(s0.split(), s1.split())]
    msgs = d[0]
    if msgs > 0:
        f["steady_messages"] = msgs
        f["steady_cpu_us_per_delivery"] = d[1] * 1e6 / int(hz) / (msgs * int(occ))
        f["steady_envelopes_per_msg"] = d[2] / msgs
        for k, v in zip(("store", "actix", "other"), d[3:]):
            f[f"steady_wakeups_{k}_per_msg"] = v / msgs
json.dump(doc, open(path, "w"), indent=2, sort_keys=True)
r = lambda k, n=1: "-" if f.get(k) is None else round(f[k], n)
print(f"round {rnd}: bench: cpu/delivery {r('server_cpu_us_per_delivery')} us (all nodes), "
      f"delivered {r('delivered', 0)} of {r('deliveries_expected', 0)}, lost {r('lost', 0)}, "
      f"p50/p99 {r('latency_p50_ms', 2)}/{r('latency_p99_ms', 2)} ms; steady ({r('steady_messages', 0)} msgs): "
      f"cpu/delivery {r('steady_cpu_us_per_delivery')} us, envelopes/msg {r('steady_envelopes_per_msg', 2)}, "
      f"wake-ups/msg store {r('steady_wakeups_store_per_msg')}, actix {r('steady_wakeups_actix_per_msg')}")
PY
}

echo "results in $OUT"
for round in $(seq 1 "$ROUNDS"); do
  run_one "$round" || { echo "round $round failed" >&2; stop_nodes; }
done
python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
fs = [json.load(open(p))["median"] for p in sorted(glob.glob(os.path.join(sys.argv[1], "round-*.json")))]
def med(k):
    v = [f[k] for f in fs if f.get(k) is not None]
    return round(statistics.median(v), 2) if v else None
print(f"summary (median of {len(fs)} rounds): bench cpu/delivery {med('server_cpu_us_per_delivery')} us, "
      f"p50/p99 {med('latency_p50_ms')}/{med('latency_p99_ms')} ms, lost {med('lost')}; steady cpu/delivery "
      f"{med('steady_cpu_us_per_delivery')} us, envelopes/msg {med('steady_envelopes_per_msg')}, wake-ups/msg "
      f"store {med('steady_wakeups_store_per_msg')} actix {med('steady_wakeups_actix_per_msg')}")
PY
