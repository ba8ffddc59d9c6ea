#!/bin/bash
# What an idle node costs: one `starling serve` (a single node, no clients), sampled after
# WARMUP (6) s for SECS (10) s: voluntary context switches (wake-ups) and CPU per second, per
# thread kind, from /proc/PID/task/*/status and schedstat. On a small VM every wake-up costs
# tens of µs, which a quiet server pays all day.
#
#   bench/node-idle.sh                      # target/release/starling
#   STARLING_BIN=/path/to/old/starling bench/node-idle.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
WARMUP="${WARMUP:-6}"; SECS="${SECS:-10}"
D="$(mktemp -d /tmp/starling-idle-XXXXXX)"; mkdir -p "$D/data"
PORT=$((44000 + RANDOM % 1000))
printf 'domains = ["perf.test"]\ndata_dir = "%s"\n[s2s]\nenabled = false\n' "$D/data" > "$D/starling.toml"
"$BIN" serve --config "$D/starling.toml" --data-dir "$D/data" --domain perf.test --c2s-port "$PORT" \
  --c2s-tls-port $((PORT + 1)) --metrics-port $((PORT + 2)) > "$D/console.log" 2>&1 &
P=$!
trap 'kill "$P" 2> /dev/null; wait "$P" 2> /dev/null; rm -rf "$D"' EXIT
sleep "$WARMUP"
kill -0 "$P" 2> /dev/null || { echo "starling did not stay up: $(tail -5 "$D/console.log")" >&2; exit 1; }
snap() { for t in /proc/"$P"/task/*; do
  echo "$(tr ' ' _ < "$t/comm"):$(basename "$t") $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status") $(cut -d' ' -f1 "$t/schedstat")"
done | sort; }
snap > "$D/a"; sleep "$SECS"; snap > "$D/b"
join "$D/a" "$D/b" | awk -v s="$SECS" '{split($1, k, ":"); n = k[1]; sub(/-[0-9]+$/, "", n); w[n] += $4 - $2; c[n] += $5 - $3}
  END {for (n in c) if (w[n] > 0) {printf "%-18s wake-ups/s %6.1f   cpu us/s %8.1f\n", n, w[n] / s, c[n] / 1000 / s; tw += w[n]; tc += c[n]}
       printf "%-18s wake-ups/s %6.1f   cpu us/s %8.1f\n", "total", tw / s, tc / 1000 / s}' | sort
