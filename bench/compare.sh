#!/bin/bash
# Side-by-side run of one scenario against ejabberd, Prosody, Starling and a TCP echo server.
#
#   bench/compare.sh SCENARIO [extra starling-bench options...]
#   SCENARIO: login | idle | chat | chat-sat | presence | storm | muc | tsung | tsung-muc
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
# Before/after a change in one run: SERVERS="starling starling-base ..." with STARLING_BASE_BIN
# pointing at the binary built from the commit before it (its own data dir and ports), or at the
# same binary with ST_BASE_TOML (TOML appended to the starling-base column's configuration only).
# REUSE_DATA=1 keeps a Starling data dir that already holds enough accounts; otherwise a new one is
# made and the accounts are added through the running node's admin socket (15,000 in under a minute).
# Message archive (XEP-0313): by default the peers run without MAM (FEATURES=core), and so does the
# `starling` column (`[mam] enabled = false`). MAM=1 runs the peers with FEATURES=full (they archive
# every message) and Starling with its archive on, next to a `starling-nomam` column (the same binary,
# archive off, its own data dir and ports): `MAM=1 bench/compare.sh chat` is the archive's cost.
# Group chat (`muc`): ROOMS (10) rooms of OCCUPANTS (50), RATE (20) groupchat messages/s into them in
# total. The peers run with FEATURES=full (ejabberd's mod_muc, Prosody's muc component, both on
# conference.perf.test; they also archive room messages), and no echo columns. The starling column
# runs only if its binary lists conference.perf.test in the domain's disco#items (`starling-bench
# muc --probe`); ST_EXTRA_TOML (e.g. a `[muc]` section) is appended to its configuration.
# Outside load tool (`tsung`): the same chat load made by Tsung 1.7 instead of starling-bench
# (bench/tsung-run.py: USERS (1000) log in with STARTTLS and SASL PLAIN over ARRIVAL (10) s, then
# each sends one 100-byte message a second to a random online user); Tsung must be installed
# (Debian: apt-get install tsung); no echo columns. `tsung-muc`: the group chat load made by Tsung
# (tsung-run.py --rooms): ROOMS (10) rooms of OCCUPANTS (50) users who log in over ARRIVAL (5) s and
# join, then RATE (20) groupchat messages/s in total, MESSAGES (3) per user; the peers as for `muc`.
set -euo pipefail
SCEN="${1:?usage: bench/compare.sh login|idle|chat|chat-sat|presence|storm|muc|tsung|tsung-muc [bench options]}"; shift
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
RUNS="${RUNS:-3}"
OUT="${OUT:-/tmp/starling-bench-compare}/$SCEN-$(date +%Y%m%d-%H%M%S)"
MAM="${MAM:-0}"
if [ "$SCEN" = muc ] || [ "$SCEN" = tsung-muc ]; then
  export FEATURES=full   # the peers' MUC services come with FEATURES=full only
  SERVERS="${SERVERS:-ejabberd prosody starling}"
fi
if [ "$SCEN" = tsung ] || [ "$SCEN" = tsung-muc ]; then
  SERVERS="${SERVERS:-ejabberd prosody starling}"
  command -v tsung > /dev/null || { echo "tsung is not installed (Debian: apt-get install tsung)" >&2; exit 2; }
fi
if [ "$MAM" = 1 ]; then
  export FEATURES=full
  SERVERS="${SERVERS:-ejabberd prosody starling starling-nomam}"
else
  SERVERS="${SERVERS:-ejabberd prosody starling echo echo-tls}"
fi
if [ -z "${PEERS:-}" ]; then
  for d in /work/shared/peers "$ROOT/../shared/peers"; do [ -x "$d/prosody-start.sh" ] && PEERS="$d" && break; done
fi
PEERS="${PEERS:?set PEERS to the peers scripts directory}"
BENCH="${BENCH:-$ROOT/target/release/starling-bench}"
STARLING_BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
ST_DIR="${ST_DIR:-/tmp/perf-starling}"; ST_PORT="${ST_PORT:-45222}"; ST_TLS_PORT="${ST_TLS_PORT:-45223}"; ST_METRICS="${ST_METRICS:-45290}"
STARLING_BASE_BIN="${STARLING_BASE_BIN:-}"
# per Starling column: binary, data dir, c2s, direct TLS and metrics ports
declare -A ST_BIN=([starling]="$STARLING_BIN" [starling-base]="$STARLING_BASE_BIN" [starling-nomam]="$STARLING_BIN")
declare -A ST_D=([starling]="$ST_DIR" [starling-base]="$ST_DIR-base" [starling-nomam]="$ST_DIR-nomam")
declare -A ST_P=([starling]="$ST_PORT" [starling-base]="$((ST_PORT + 100))" [starling-nomam]="$((ST_PORT + 200))")
declare -A ST_TP=([starling]="$ST_TLS_PORT" [starling-base]="$((ST_TLS_PORT + 100))" [starling-nomam]="$((ST_TLS_PORT + 200))")
declare -A ST_MP=([starling]="$ST_METRICS" [starling-base]="$((ST_METRICS + 100))" [starling-nomam]="$((ST_METRICS + 200))")
# [mam] enabled per Starling column: the archive is on only where the peers archive too (MAM=1),
# and never in the starling-nomam column.
declare -A ST_MAM=([starling]="$([ "$MAM" = 1 ] && echo true || echo false)" [starling-base]="$([ "$MAM" = 1 ] && echo true || echo false)" [starling-nomam]=false)
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
  storm)    # reconnect storm: SESSIONS log in, all dropped at once, back within JITTER ms (+ retries);
            # STORM_SECS bounds each login and the storm from the drop
            S="${SESSIONS:-2000}"; ACCOUNTS=$(( S > ACCOUNTS ? S : ACCOUNTS ))
            ARGS=(storm --sessions "$S" --spawn "${SPAWN:-$(( (S + 18999) / 19000 ))}" --jitter-ms "${JITTER:-2000}"
                  --timeout-secs "${STORM_SECS:-60}") ;;
  muc)      # group chat: every occupant of ROOMS rooms of OCCUPANTS joins; RATE messages/s into the rooms
            ROOMS="${ROOMS:-10}"; OCC="${OCCUPANTS:-50}"; ACCOUNTS=$(( ROOMS * OCC > ACCOUNTS ? ROOMS * OCC : ACCOUNTS ))
            ARGS=(muc --rooms "$ROOMS" --occupants "$OCC" --rate "${RATE:-20}" --size "${SIZE:-100}" --duration-secs "${DURATION:-10}") ;;
  tsung)    # the outside load tool: Tsung's chat run (bench/tsung-run.py), one message a second per user
            U="${USERS:-1000}"; ACCOUNTS=$(( U > ACCOUNTS ? U : ACCOUNTS ))
            ARGS=(--users "$U" --arrival-secs "${ARRIVAL:-10}" --messages "${MESSAGES:-45}" --size "${SIZE:-100}") ;;
  tsung-muc) # the outside load tool in group chat (bench/tsung-run.py --rooms)
            ROOMS="${ROOMS:-10}"; U=$(( ROOMS * ${OCCUPANTS:-50} )); ACCOUNTS=$(( U > ACCOUNTS ? U : ACCOUNTS ))
            ARGS=(--users "$U" --rooms "$ROOMS" --rate "${RATE:-20}" --arrival-secs "${ARRIVAL:-5}"
                  --messages "${MESSAGES:-3}" --size "${SIZE:-100}") ;;
  presence) # rosters made over XMPP by the bench itself (--subscribe), the same way on every server
            ARGS=(presence --users "${USERS:-500}" --subscribe "${ROSTER_SIZE:-10}" --updates "${UPDATES:-5}" --rate "${RATE:-200}") ;;
  *) echo "unknown scenario $SCEN" >&2; exit 2 ;;
esac
FRESH="${FRESH:-0}"   # 1: restart each server before each round after the first (default for idle)

[ -x "$BENCH" ] || (cd "$ROOT" && cargo build --release -p starling-bench)

STARTED_ECHO=""; STARTED_ECHO_TLS=""; declare -A STARTED_ST=()
cleanup() {
  for s in echo echo-tls starling starling-base starling-nomam; do halt "$s"; done
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
    starling|starling-base|starling-nomam)
      local d="${ST_D[$1]}"
      sed -i '/^\[mam\]$/,$d' "$d/starling.toml"
      # A build from before the archive (issue 10) refuses the section, and archives nothing anyway.
      if grep -qa cleanup_interval_secs "${ST_BIN[$1]}"; then
        printf '[mam]\nenabled = %s\n' "${ST_MAM[$1]}" >> "$d/starling.toml"
      fi
      # No federation listener (port 5269) for a benchmark; builds from before it refuse the section.
      if grep -qa '_xmpp-server._tcp' "${ST_BIN[$1]}"; then
        printf '[s2s]\nenabled = false\n' >> "$d/starling.toml"
      fi
      # ST_BASE_TOML: settings for the starling-base column only (the same binary with one setting
      # changed, against the default: STARLING_BASE_BIN=$STARLING_BIN).
      if [ "$1" = starling-base ] && [ -n "${ST_BASE_TOML:-}" ]; then
        printf '%s\n' "$ST_BASE_TOML" >> "$d/starling.toml"
      fi
      (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
       exec "${ST_BIN[$1]}" serve --config "$d/starling.toml" --data-dir "$d/data" --domain perf.test \
         --c2s-port "${ST_P[$1]}" --c2s-tls-port "${ST_TP[$1]}" --metrics-port "${ST_MP[$1]}" >> "$d/console.log" 2>&1 < /dev/null) &
      STARTED_ST[$1]=$!
      if ! port_up "${ST_P[$1]}" || ! kill -0 "${STARTED_ST[$1]}" 2>/dev/null; then
        echo "$1: did not open port ${ST_P[$1]} (see $d/console.log)" >&2; halt "$1"; return 1; fi
      PORT[$1]="${ST_P[$1]}"; PID[$1]="${STARTED_ST[$1]}"; EXTRA[$1]="" ;;
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
    starling|starling-base|starling-nomam) stop_pid "${STARTED_ST[$1]:-}"; STARTED_ST[$1]="" ;;
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
    starling|starling-base|starling-nomam)
      bin="${ST_BIN[$s]}"; d="${ST_D[$s]}"
      if [ ! -x "$bin" ]; then
        echo "$s: '$bin' not built (cargo build --release -p starling): column skipped" >&2; continue; fi
      if [ "${REUSE_DATA:-0}" = 1 ] && [ -s "$d/accounts" ] && [ "$(cat "$d/accounts")" -ge "$ACCOUNTS" ]; then
        echo "$s: reusing $(cat "$d/accounts") accounts in $d (REUSE_DATA=1)" >&2
        launch "$s" || { echo "$s: column skipped" >&2; continue; }
      else
        rm -rf "$d"; mkdir -p "$d/data"
        printf 'domains = ["perf.test"]\ndata_dir = "%s"\n[auth]\nscram_iterations = 4096\n' "$d/data" > "$d/starling.toml"
        [ -z "${ST_EXTRA_TOML:-}" ] || printf '%s\n' "$ST_EXTRA_TOML" >> "$d/starling.toml"
        launch "$s" || { echo "$s: column skipped" >&2; continue; }
        echo "$s: adding $ACCOUNTS accounts through its admin socket..." >&2
        if ! "$HERE/add-accounts.py" "$d/data/admin.sock" 1 "$ACCOUNTS" perf.test > "$d/useradd.log" 2>&1; then
          echo "$s: adding accounts failed (see $d/useradd.log): column skipped" >&2; halt "$s"; continue; fi
        echo "$ACCOUNTS" > "$d/accounts"
      fi
      if ! "$BENCH" login --port "${ST_P[$s]}" --logins 1 --concurrency 1 --users 1 --quiet > "$d/probe.log" 2>&1 \
           || ! grep -q "errors  *0 " "$d/probe.log"; then
        echo "$s: listening, but a test login failed (see $d/probe.log): column skipped" >&2
        halt "$s"; continue; fi
      if [ "$SCEN" = muc ] || [ "$SCEN" = tsung-muc ]; then
        rc=0; "$BENCH" muc --probe --port "${ST_P[$s]}" --quiet >> "$d/probe.log" 2>&1 || rc=$?
        if [ "$rc" != 0 ]; then
          if [ "$rc" = 3 ]; then echo "$s: no MUC service (conference.perf.test not in disco#items): column skipped" >&2
          else echo "$s: the MUC probe failed (see $d/probe.log): column skipped" >&2; fi
          halt "$s"; continue; fi
      fi ;;
    echo|echo-tls)
      case "$SCEN" in presence|muc|tsung|tsung-muc) continue ;; esac
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
    if [ "$SCEN" = tsung ] || [ "$SCEN" = tsung-muc ]; then
      "$HERE/tsung-run.py" "${ARGS[@]}" --port "${PORT[$s]}" --server-pid "${PID[$s]}" --label "$s" \
        --json "$OUT/$s-$r.json" "$@" > "$OUT/$s-$r.txt" 2>&1 \
        || { echo "   $s failed: $(tail -1 "$OUT/$s-$r.txt")"; }
    else
      # shellcheck disable=SC2086
      "$BENCH" "${ARGS[@]}" --port "${PORT[$s]}" --server-pid "${PID[$s]}" ${EXTRA[$s]} --label "$s" \
        --runs 1 --quiet --json "$OUT/$s-$r.json" "$@" > "$OUT/$s-$r.txt" 2>&1 \
        || { echo "   $s failed: $(tail -1 "$OUT/$s-$r.txt")"; }
    fi
    sleep 2
  done
done

python3 "$HERE/summarize.py" "$OUT" $ACTIVE
