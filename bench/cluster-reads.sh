#!/bin/bash
# What a linearizable read costs in a 3-node Starling cluster with mutual TLS, on loopback: one
# client on the Raft leader and one on a follower each send QUERIES archive queries (XEP-0313,
# an empty archive), one at a time. Every such query takes a read barrier: on the leader, a
# heartbeat round to both followers that confirms it still leads; on a follower, the leader's
# read index (`ReadIndex`, which takes that round) and then its own apply. Prints, per round and
# per side, the wall time per query and the CPU of the three nodes per query.
#
#   STARLING_BIN=… [ROUNDS=3] [QUERIES=300] [PORT_BASE=54000] bench/cluster-reads.sh
#
# Every round runs on a fresh cluster; what it starts it stops by PID. The client is
# tests/interop/rawxmpp.py (the Python standard library only); each query waits at most 10 s.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
: "${STARLING_BIN:?set STARLING_BIN to a release starling}"
ROUNDS=${ROUNDS:-3}; QUERIES=${QUERIES:-300}; PORT_BASE=${PORT_BASE:-54000}
NODES=3; DOMAIN=perf.test
OUT=${OUT:-$(mktemp -d /tmp/cluster-reads.XXXXXX)}
NODE_EXTRA_CONF=""
command -v curl > /dev/null || { echo "curl is not installed" >&2; exit 1; }
. "$HERE/cluster-lib.sh"
trap stop_nodes EXIT
trap 'exit 130' INT TERM

leader_n() { # the n (1..3) of the node that leads, from its cluster status
  "$STARLING_BIN" cluster status --addr "127.0.0.1:$(cluster_port 1)" --config "$1/node1.toml" 2>/dev/null \
    | sed -n 's/.*; leader \([0-9]*\);.*/\1/p' | head -1
}

run_one() { # $1 = round
  local round=$1 dir="$OUT/round-$1"
  start_three "$dir" 2 || return 1
  local lead; lead=$(leader_n "$dir")
  [ -n "$lead" ] || { echo "round $round: no leader known" >&2; return 1; }
  local fol=1; [ "$lead" = 1 ] && fol=2
  python3 - "$HERE/../tests/interop" "$round" "$QUERIES" "$(getconf CLK_TCK)" \
    "leader:$(c2s_port "$lead"):1" "follower:$(c2s_port "$fol"):2" \
    "${NODE_PID[1]},${NODE_PID[2]},${NODE_PID[3]}" "$DOMAIN" <<'PY'
import sys, time
sys.path.insert(0, sys.argv[1])
import rawxmpp
rnd, n, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sides, pids, domain = sys.argv[5:7], [int(p) for p in sys.argv[7].split(",")], sys.argv[8]

def ticks():
    t = 0
    for p in pids:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    return t

for side in sides:
    name, port, user = side.split(":")
    c = rawxmpp.Client("127.0.0.1", int(port), domain, timeout=10)
    c.login(f"user{user}", f"perfpass{user}", resource="r")
    q = "<query xmlns='urn:xmpp:mam:2' queryid='q{}'/>"
    for i in range(5):
        c.iq("set", q.format(f"w{i}"))
    t0, c0 = time.monotonic(), ticks()
    for i in range(n):
        r = c.iq("set", q.format(i))
        if r.get("type") != "result":
            sys.exit(f"round {rnd}: query {i} on the {name} failed")
    wall, cpu = time.monotonic() - t0, (ticks() - c0) * 1e6 / hz
    print(f"round {rnd}: {name}: {1000 * wall / n:.2f} ms per query, "
          f"{cpu / n:.0f} us of CPU (3 nodes) per query, {n} queries")
    c.close()
PY
  local rc=$?
  stop_nodes
  return $rc
}

echo "results in $OUT"
for r in $(seq 1 "$ROUNDS"); do run_one "$r" || echo "round $r failed"; done
