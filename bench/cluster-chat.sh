#!/bin/bash
# Tsung chat load (bench/tsung-run.py: 1,000 users, ~1,000 msg/s, archive off) through haproxy
# (TCP, round-robin) into a 3-node Starling cluster with mutual TLS, on loopback. Two messages in
# three cross nodes. Prints, per run, the server CPU per message summed over the nodes, the share
# of messages that crossed nodes (starling_cluster_delivered_total), envelopes per stream message
# (builds with batches), context switches per message (all threads of the three nodes; the
# voluntary ones, i.e. wake-ups, split into store runtime and actix threads), latency and errors.
#
#   STARLING_BIN=… [STARLING_BASE_BIN=…] [ROUNDS=2] [USERS=1000] [PORT_BASE=52000] [PERF=1] bench/cluster-chat.sh
#
# With STARLING_BASE_BIN, base and new run alternately (base first in each round), each on a fresh
# cluster. Every run is bounded (tsung-run.py's --max-secs); what it starts it stops by PID.
# MIXED=1 (with STARLING_BASE_BIN): instead, one "mixed" run per round, node 2 running the base
# build and nodes 1 and 3 the new one (a rolling upgrade half done).
# PERF=1: `perf record -g` of each node for 8 s in the middle of the sending (perf-<n>.data).
# Needs tsung, haproxy and curl. Results: $OUT/<label>-<round>.json and a summary at the end.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
: "${STARLING_BIN:?set STARLING_BIN to a release starling}"
BASE_BIN=${STARLING_BASE_BIN:-}
ROUNDS=${ROUNDS:-2}; USERS=${USERS:-1000}; PORT_BASE=${PORT_BASE:-52000}
NODES=3; DOMAIN=perf.test
OUT=${OUT:-$(mktemp -d /tmp/cluster-chat.XXXXXX)}
NODE_EXTRA_CONF=$'[mam]\nenabled = false'
for t in tsung haproxy curl; do command -v $t > /dev/null || { echo "$t is not installed" >&2; exit 1; }; done
. "$HERE/cluster-lib.sh"
HP=""
cleanup() { stop_pid "$HP"; HP=""; stop_nodes; }
trap cleanup EXIT
trap 'exit 130' INT TERM

ctxsw() { # context switches of the nodes' threads: "all store actix other voluntary" (all: voluntary
  # and involuntary; by thread kind: voluntary only, i.e. the thread went to sleep: a wake-up each)
  local n; for n in 1 2 3; do cat /proc/"${NODE_PID[$n]}"/task/*/status 2>/dev/null; done \
    | awk '/^Name:/ { k = ($2 ~ /^starling-store/) ? "store" : ($2 ~ /^actix/) ? "actix" : "other" }
           /^(non)?voluntary_ctxt_switches/ { s += $2 }
           /^voluntary_ctxt_switches/ { by[k] += $2; v += $2 }
           END { printf "%d %d %d %d %d\n", s, by["store"], by["actix"], by["other"], v }'
}
summed() { # $1 = metric: its value summed over the nodes
  local n s=0 v; for n in 1 2 3; do v=$(metric "$n" "$1"); s=$(awk -v a="$s" -v b="$v" 'BEGIN { print a + b }'); done; echo "$s"
}
delivered() { # cross-node envelopes acknowledged as delivered, and stream messages that carried
  # envelopes (starling_cluster_delivery_batches_total, 0 for builds without batches)
  echo "$(summed starling_cluster_delivered_total),$(summed starling_cluster_delivery_batches_total)"
}

run_one() { # $1 = label, $2 = binary, $3 = round, $4 = binary of node 2 (default $2)
  local label=$1 round=$3 dir="$OUT/$1-$3"
  STARLING_BIN=$2; CA=$dir/ca; mkdir -p "$dir"
  make_certs
  start_node 1 1 "$dir" "" || return 1
  sleep 2
  STARLING_BIN=${4:-$2}
  start_node 2 2 "$dir" "127.0.0.1:$(cluster_port 1)" || return 1
  STARLING_BIN=$2
  start_node 3 3 "$dir" "127.0.0.1:$(cluster_port 1)" || return 1
  sleep 3
  add_accounts "$dir/data1/admin.sock" 1 "$USERS"
  wait_replicated 1 2 3 || return 1
  local hport=$((PORT_BASE + 100))
  cat > "$dir/haproxy.cfg" <<HC
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend xmpp
  bind 127.0.0.1:$hport
  default_backend nodes
backend nodes
  balance roundrobin
  server n1 127.0.0.1:$(c2s_port 1)
  server n2 127.0.0.1:$(c2s_port 2)
  server n3 127.0.0.1:$(c2s_port 3)
HC
  haproxy -f "$dir/haproxy.cfg" -db > "$dir/haproxy.log" 2>&1 &
  HP=$!
  wait_port "$hport" || { echo "haproxy did not listen" >&2; return 1; }
  local cs0 d0 cs1 d1
  cs0=$(ctxsw); d0=$(delivered)
  local perf=""
  if [ "${PERF:-0}" = 1 ]; then
    ( sleep 45; for n in 1 2 3; do
        timeout 20 perf record -F 999 -g -p "${NODE_PID[$n]}" -o "$dir/perf-$n.data" -- sleep 8 > /dev/null 2>&1 &
      done; wait ) &
    perf=$!
  fi
  "$HERE/tsung-run.py" --port "$hport" --server-pid "${NODE_PID[1]}" --server-pid "${NODE_PID[2]}" \
    --server-pid "${NODE_PID[3]}" --label "$label" --json "$dir.json" --users "$USERS" \
    --arrival-secs 10 --messages 45 --max-secs 180 > "$dir/tsung-run.out" 2>&1
  cs1=$(ctxsw); d1=$(delivered)
  [ -n "$perf" ] && wait "$perf"
  local n; for n in 1 2 3; do echo "node $n: $(grep -c -E 'WARN|ERROR' "$dir/node$n.log") warn/error lines"; done
  cleanup
  python3 - "$dir.json" "$label" "$round" "$cs0" "$cs1" "$d0" "$d1" <<'PY'
import json, sys
path, label, rnd, cs0, cs1, d0, d1 = sys.argv[1:]
doc = json.load(open(path)); f = doc["median"]
sent = f.get("messages_sent") or 0
cs = [int(b) - int(a) for a, b in zip(cs0.split(), cs1.split())]
(e0, b0), (e1, b1) = (map(float, d0.split(",")), map(float, d1.split(",")))
f["crossings_per_msg"] = (e1 - e0) / sent if sent else None
f["envelopes_per_batch"] = (e1 - e0) / (b1 - b0) if b1 > b0 else None
f["ctxsw_per_msg"] = cs[0] / sent if sent else None
for k, v in zip(("store", "actix", "other", "voluntary"), cs[1:]):
    f[f"ctxsw_{k}_per_msg"] = v / sent if sent else None
json.dump(doc, open(path, "w"), indent=2, sort_keys=True)
r = lambda v, n=1: "-" if v is None else round(v, n)
print(f"{label:6} round {rnd}: cpu/msg {r(f.get('server_cpu_us_per_msg'))} us (all nodes), "
      f"{r(f.get('messages_per_s'))} msg/s, crossings/msg {r(f['crossings_per_msg'], 3)} "
      f"(envelopes/batch {r(f['envelopes_per_batch'], 2)}), "
      f"ctxsw/msg {r(f['ctxsw_per_msg'], 2)} (voluntary {r(f['ctxsw_voluntary_per_msg'], 2)}: "
      f"store {r(f['ctxsw_store_per_msg'], 2)}, actix {r(f['ctxsw_actix_per_msg'], 2)}), latency mean {r(f.get('latency_mean_ms'), 2)} ms, "
      f"logged in {r(f.get('users_logged_in'), 0)}, errors {r(f.get('errors'), 0)}")
PY
}

echo "results in $OUT"
for round in $(seq 1 "$ROUNDS"); do
  if [ "${MIXED:-0}" = 1 ] && [ -n "$BASE_BIN" ]; then
    run_one mixed "$STARLING_BIN" "$round" "$BASE_BIN" || { echo "mixed round $round failed" >&2; cleanup; }
    continue
  fi
  if [ -n "$BASE_BIN" ]; then run_one base "$BASE_BIN" "$round" || { echo "base round $round failed" >&2; cleanup; }; fi
  run_one new "$STARLING_BIN" "$round" || { echo "new round $round failed" >&2; cleanup; }
done
python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
rows = {}
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    label = os.path.basename(p).rsplit("-", 1)[0]
    rows.setdefault(label, []).append(json.load(open(p))["median"])
print("summary (median of rounds):")
for label, fs in rows.items():
    def med(k):
        v = [f[k] for f in fs if f.get(k) is not None]
        return round(statistics.median(v), 2) if v else None
    print(f"  {label:6} cpu/msg {med('server_cpu_us_per_msg')} us, crossings/msg {med('crossings_per_msg')}, "
          f"ctxsw/msg {med('ctxsw_per_msg')}, latency {med('latency_mean_ms')} ms, errors {med('errors')} "
          f"({len(fs)} runs)")
PY
