#!/bin/bash
# A seconds-long smoke of every scenario against one running XMPP server (CI runs it against Starling).
#
#   bench/smoke.sh PORT [starling-bench options...]     e.g.  bench/smoke.sh 35222 --server-pid 1234
#
# Needs accounts user1..user100 / perfpass1..perfpass100 on perf.test (or pass --provision TEMPLATE,
# --domain, --tls ...). Presence: users 1..20 first subscribe to their next SUBSCRIBE (3) users over
# XMPP (skipped where the roster already has them), then every update must reach every contact.
# Group chat (2 rooms of 5) runs only where the server lists conference.<domain> (see below).
# Exits non-zero if a login fails, a message is lost, or a scenario errors. Each step is bounded.
set -euo pipefail
PORT="${1:?usage: bench/smoke.sh PORT [starling-bench options]}"; shift
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$ROOT/target/release/starling-bench}"
[ -x "$BENCH" ] || (cd "$ROOT" && cargo build --release -p starling-bench)
SUBSCRIBE="${SUBSCRIBE:-3}"
OUT="$(mktemp -d /tmp/starling-smoke.XXXXXX)"
COMMON=(--port "$PORT" --quiet --timeout-secs 10 "$@")
fail=0

check() { # $1=name $2=json file $3=python condition on dict m (medians)
  if python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['median']; sys.exit(0 if ($3) else 1)" "$2"; then
    echo "ok    $1"
  else
    echo "FAIL  $1: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['median'])" "$2")"; fail=1
  fi
}
step() { # $1=name, rest: bench args
  local name="$1"; shift
  if ! timeout 120 "$BENCH" "$@" "${COMMON[@]}" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1; then
    echo "FAIL  $name: $(tail -1 "$OUT/$name.txt")"; fail=1; return 1
  fi
}

step login login --logins 50 --concurrency 5 --users 50 &&
  check login "$OUT/login.json" "m['errors'] == 0 and m['logins_ok'] == 50"
step idle idle --sessions 100 --plateau-secs 3 &&
  check idle "$OUT/idle.json" "m['sessions_held'] == 100"
step chat chat --pairs 5 --rate 100 --duration-secs 2 --drain-secs 5 &&
  check chat "$OUT/chat.json" "m['sent'] > 0 and m['lost'] == 0 and m['error_replies'] == 0"
step chat-sat chat --pairs 5 --rate 0 --duration-secs 2 --drain-secs 5 &&
  check chat-sat "$OUT/chat-sat.json" "m['sent'] > 0 and m['lost'] == 0 and m['error_replies'] == 0"
step presence presence --users 20 --subscribe "$SUBSCRIBE" --updates 2 --rate 40 --settle-secs 1 --drain-secs 5 &&
  check presence "$OUT/presence.json" "m['updates_sent'] == 40 and m['presence_expected'] > 0 and m['fanout_ratio'] >= 0.999"
step storm storm --sessions 50 --jitter-ms 500 --settle-secs 0 &&
  check storm "$OUT/storm.json" "m['reconnected'] == 50 and m['errors_unshaped'] == 0"
# Group chat only where the server lists its MUC service (conference.<domain>) in the domain's
# disco#items: the probe exits 3 when it does not, and the step is skipped (a server without MUC
# is not a failure of the bench); any other probe failure fails the smoke.
rc=0; timeout 60 "$BENCH" muc --probe "${COMMON[@]}" > "$OUT/muc-probe.txt" 2>&1 || rc=$?
case "$rc" in
  0) step muc muc --rooms 2 --occupants 5 --rate 20 --duration-secs 2 --drain-secs 5 --join-secs 10 &&
       check muc "$OUT/muc.json" "m['occupants_joined'] == 10 and m['rooms_complete'] == 2 and m['sent'] == 40 and m['lost'] == 0 and m['error_stanzas'] == 0" ;;
  3) echo "skip  muc: $(tail -1 "$OUT/muc-probe.txt")" ;;
  *) echo "FAIL  muc probe: $(tail -1 "$OUT/muc-probe.txt")"; fail=1 ;;
esac
echo "smoke: outputs in $OUT"
exit $fail
