#!/bin/bash
# CI: a seconds-long smoke of every bench scenario against a real Starling,
# so the load generator cannot rot. Starts its own node on free ports with a
# temporary data directory, provisions user1..user100 on perf.test through
# the running node, runs bench/smoke.sh, and stops the node by its PID.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
STARLING="${STARLING_BIN:-$TARGET/debug/starling}"
export BENCH="${STARLING_BENCH_BIN:-$TARGET/debug/starling-bench}"
[ -x "$STARLING" ] && [ -x "$BENCH" ] || (cd "$ROOT" && cargo build -q -p starling -p starling-bench)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR="$(mktemp -d /tmp/starling-ci-smoke.XXXXXX)"
C2S=$(free_port); TLS=$(free_port); MET=$(free_port); CL=$(free_port)
"$STARLING" serve --data-dir "$DIR/data" --domain perf.test --c2s-port "$C2S" --c2s-tls-port "$TLS" \
  --metrics-port "$MET" --cluster-port "$CL" > "$DIR/server.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do
  (echo > "/dev/tcp/127.0.0.1/$C2S") 2>/dev/null && break
  sleep 0.1
done
# Provision through the node's admin socket (one connection, 100 accounts).
python3 - "$DIR/data/admin.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
for i in range(1, 101):
    f.write(json.dumps({"cmd": "user_add", "jid": f"user{i}@perf.test", "password": f"perfpass{i}"}) + "\n")
    f.flush()
    r = json.loads(f.readline())
    assert r["ok"], r
PY
"$HERE/smoke.sh" "$C2S" --domain perf.test --server-pid "$PID"
