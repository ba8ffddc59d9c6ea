#!/bin/bash
# Side-by-side run of one scenario against ejabberd, Prosody, Starling and a TCP echo server.
#
#   bench/compare.sh SCENARIO [extra starling-bench options...]
#   SCENARIO: login | idle | chat | chat-sat | presence
#
# Starts ejabberd and Prosody through the peers scripts with REQUIRE_TLS=1 (STARTTLS required, as
# Starling does), Starling from target/release/starling if it exists (skipped with a message if it is
# missing or does not come up), and `starling-bench echo` (plain, and `--tls` with the same RSA-2048
# certificate) as the physical limit. Runs the scenario
# interleaved (A,B,C,D, A,B,C,D, ...) RUNS times, one bench run per server per round, and prints the
# median of each figure per server and its ratio to ejabberd and Prosody. For `idle` every server is
# restarted before each round (FRESH=1), as a heap keeps what earlier sessions freed. Stops, by PID,
# every server it started (KEEP=1 leaves the peers running).
#
# Environment: RUNS (3), OUT (/tmp/starling-bench-compare), PEERS (/work/shared/peers or
# ../shared/peers), SERVERS ("ejabberd prosody starling echo"), sizes per scenario below.
set -euo pipefail
SCEN="${1:?usage: bench/compare.sh login|idle|chat|chat-sat|presence [bench options]}"; shift
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
RUNS="${RUNS:-3}"
OUT="${OUT:-/tmp/starling-bench-compare}/$SCEN-$(date +%Y%m%d-%H%M%S)"
SERVERS="${SERVERS:-ejabberd prosody starling echo echo-tls}"
if [ -z "${PEERS:-}" ]; then
  for d in /work/shared/peers "$ROOT/../shared/peers"; do [ -x "$d/prosody-start.sh" ] && PEERS="$d" && break; done
fi
PEERS="${PEERS:?set PEERS to the peers scripts directory}"
BENCH="$ROOT/target/release/starling-bench"
STARLING_BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
ST_DIR="${ST_DIR:-/tmp/perf-starling}"; ST_PORT="${ST_PORT:-45222}"; ST_TLS_PORT="${ST_TLS_PORT:-45223}"; ST_METRICS="${ST_METRICS:-45290}"
ECHO_PORT="${ECHO_PORT:-47777}"; ECHO_TLS_PORT="${ECHO_TLS_PORT:-47778}"
export REQUIRE_TLS=1
mkdir -p "$OUT"

# scenario sizes (override through the environment)
ACCOUNTS="${ACCOUNTS:-2000}"; ROSTER=0
case "$SCEN" in
  login)    ARGS=(login --logins "${LOGINS:-2000}" --concurrency "${CONC:-20}" --users "${USERS:-500}") ;;
  idle)     S="${SESSIONS:-5000}"; ACCOUNTS=$(( S > ACCOUNTS ? S : ACCOUNTS ))
            ARGS=(idle --sessions "$S" --spawn "${SPAWN:-$(( (S + 18999) / 19000 ))}"); FRESH="${FRESH:-1}" ;;
  chat)     ARGS=(chat --pairs "${PAIRS:-50}" --rate "${RATE:-1000}" --size "${SIZE:-100}" --duration-secs "${DURATION:-10}") ;;
  chat-sat) ARGS=(chat --pairs "${PAIRS:-50}" --rate 0 --window "${WINDOW:-16}" --size "${SIZE:-100}" --duration-secs "${DURATION:-10}") ;;
  presence) # rosters made over XMPP by the bench itself (--subscribe), the same way on every server
            ARGS=(presence --users "${USERS:-500}" --subscribe "${ROSTER_SIZE:-10}" --updates "${UPDATES:-5}" --rate "${RATE:-200}") ;;
  *) echo "unknown scenario $SCEN" >&2; exit 2 ;;
esac
FRESH="${FRESH:-0}"   # 1: restart each server before each round after the first (default for idle)

[ -x "$BENCH" ] || (cd "$ROOT" && cargo build --release -p starling-bench)

STARTED_ECHO=""; STARTED_ECHO_TLS=""; STARTED_ST=""
cleanup() {
  for s in echo echo-tls starling; do halt "$s"; done
  if [ "${KEEP:-0}" != 1 ]; then
    case " $SERVERS " in *" ejabberd "*) "$PEERS/ejabberd-stop.sh" || true ;; esac
    case " $SERVERS " in *" prosody "*) "$PEERS/prosody-stop.sh" || true ;; esac
  fi
}
trap cleanup EXIT

declare -A PORT PID EXTRA

port_up() { local i; for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }

launch() { # start server $1 (accounts already set up); sets PORT, PID, EXTRA; non-zero if it did not come up
  case "$1" in
    ejabberd)
      "$PEERS/ejabberd-start.sh" >&2 || return 1
      . "$PEERS/common.sh"; PORT[$1]="$EJ_PORT"; PID[$1]="$(cat "$EJ_DIR/beam.pid")"; EXTRA[$1]="" ;;
    prosody)
      "$PEERS/prosody-start.sh" >&2 || return 1
      . "$PEERS/common.sh"; PORT[$1]="$PR_PORT"; PID[$1]="$(cat "$PR_DIR/server.pid")"; EXTRA[$1]="" ;;
    starling)
      (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
       exec "$STARLING_BIN" serve --config "$ST_DIR/starling.toml" --data-dir "$ST_DIR/data" --domain perf.test \
         --c2s-port "$ST_PORT" --c2s-tls-port "$ST_TLS_PORT" --metrics-port "$ST_METRICS" >> "$ST_DIR/console.log" 2>&1 < /dev/null) &
      STARTED_ST=$!
      if ! port_up "$ST_PORT" || ! kill -0 "$STARTED_ST" 2>/dev/null; then
        echo "starling: did not open port $ST_PORT (see $ST_DIR/console.log)" >&2; halt starling; return 1; fi
      PORT[$1]="$ST_PORT"; PID[$1]="$STARTED_ST"; EXTRA[$1]="" ;;
    echo)
      "$BENCH" echo --listen "127.0.0.1:$ECHO_PORT" --max-secs 7200 2>> "$OUT/echo.log" &
      STARTED_ECHO=$!; port_up "$ECHO_PORT" || return 1
      PORT[$1]="$ECHO_PORT"; PID[$1]="$STARTED_ECHO"; EXTRA[$1]="--echo" ;;
    echo-tls)
      # TLS-terminating echo, with the same RSA-2048 certificate as Prosody when there is one
      . "$PEERS/common.sh"; CERT=()
      [ -s "$PR_DIR/certs/cert.pem" ] && CERT=(--tls-cert "$PR_DIR/certs/cert.pem")
      "$BENCH" echo --tls "${CERT[@]}" --listen "127.0.0.1:$ECHO_TLS_PORT" --max-secs 7200 2>> "$OUT/echo-tls.log" &
      STARTED_ECHO_TLS=$!; port_up "$ECHO_TLS_PORT" || return 1
      PORT[$1]="$ECHO_TLS_PORT"; PID[$1]="$STARTED_ECHO_TLS"; EXTRA[$1]="--echo --tls direct" ;;
  esac
}

stop_pid() { # $1=pid we started: TERM, wait up to 10 s, then KILL
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || return 0
  local i; for i in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$1" 2>/dev/null || true
}

halt() { # stop server $1
  case "$1" in
    ejabberd) "$PEERS/ejabberd-stop.sh" >&2 || true ;;
    prosody)  "$PEERS/prosody-stop.sh" >&2 || true ;;
    starling) stop_pid "$STARTED_ST"; STARTED_ST="" ;;
    echo)     stop_pid "$STARTED_ECHO"; STARTED_ECHO="" ;;
    echo-tls) stop_pid "$STARTED_ECHO_TLS"; STARTED_ECHO_TLS="" ;;
  esac
}

ACTIVE=""
for s in $SERVERS; do
  case "$s" in
    ejabberd)
      launch "$s" || { echo "ejabberd did not start: column skipped" >&2; continue; }
      ROSTER="$ROSTER" "$PEERS/ejabberd-provision.sh" "$ACCOUNTS" ;;
    prosody)
      launch "$s" || { echo "prosody did not start: column skipped" >&2; continue; }
      ROSTER="$ROSTER" "$PEERS/prosody-provision.sh" "$ACCOUNTS" ;;
    starling)
      if [ ! -x "$STARLING_BIN" ]; then
        echo "starling: $STARLING_BIN not built (cargo build --release -p starling-node): column skipped" >&2; continue; fi
      rm -rf "$ST_DIR"; mkdir -p "$ST_DIR/data"
      printf 'domains = ["perf.test"]\ndata_dir = "%s"\n[auth]\nscram_iterations = 4096\n' "$ST_DIR/data" > "$ST_DIR/starling.toml"
      echo "starling: adding $ACCOUNTS accounts..." >&2
      # one at a time: the store is opened by one process at a time
      if ! seq 1 "$ACCOUNTS" | xargs -P 1 -I{} "$STARLING_BIN" user add "user{}@perf.test" "perfpass{}" \
           --config "$ST_DIR/starling.toml" --data-dir "$ST_DIR/data" > "$ST_DIR/useradd.log" 2>&1; then
        echo "starling: 'starling user add' failed (see $ST_DIR/useradd.log): column skipped" >&2; continue; fi
      launch "$s" || { echo "starling: column skipped" >&2; continue; }
      if ! "$BENCH" login --port "$ST_PORT" --logins 1 --concurrency 1 --users 1 --quiet > "$ST_DIR/probe.log" 2>&1 \
           || ! grep -q "errors  *0 " "$ST_DIR/probe.log"; then
        echo "starling: listening, but a test login failed (see $ST_DIR/probe.log): column skipped" >&2
        halt starling; continue; fi ;;
    echo|echo-tls)
      if [ "$SCEN" = presence ]; then continue; fi
      launch "$s" || { echo "$s did not start" >&2; exit 1; } ;;
    *) echo "unknown server $s" >&2; exit 2 ;;
  esac
  ACTIVE="$ACTIVE $s"
done

echo "== $SCEN: ${ARGS[*]} $* | servers:$ACTIVE | $RUNS interleaved rounds | $(nproc) cores | results in $OUT"
for r in $(seq 1 "$RUNS"); do
  for s in $ACTIVE; do
    echo "-- round $r/$RUNS: $s"
    if [ "$FRESH" = 1 ] && [ "$r" -gt 1 ]; then
      # memory figures need a server that has never held sessions: freed memory stays in its heap
      halt "$s"; sleep 1; launch "$s" || { echo "   $s did not restart"; continue; }
    fi
    # shellcheck disable=SC2086
    "$BENCH" "${ARGS[@]}" --port "${PORT[$s]}" --server-pid "${PID[$s]}" ${EXTRA[$s]} --label "$s" \
      --runs 1 --quiet --json "$OUT/$s-$r.json" "$@" > "$OUT/$s-$r.txt" 2>&1 \
      || { echo "   $s failed: $(tail -1 "$OUT/$s-$r.txt")"; }
    sleep 2
  done
done

python3 "$HERE/summarize.py" "$OUT" $ACTIVE
