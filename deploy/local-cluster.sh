#!/bin/bash
# Three Starling nodes on loopback, joined into one cluster over mutual TLS,
# with HAProxy in front when it is installed (apt-get install haproxy).
#
#   deploy/local-cluster.sh start [DIR]    # default DIR: /tmp/starling-cluster
#   deploy/local-cluster.sh status [DIR]
#   deploy/local-cluster.sh stop [DIR]     # stops exactly what start started (by PID)
#
# Node N (1..3): c2s 152N2, direct TLS 152N3, metrics 192N0, cluster 172N0;
# HAProxy (if installed): c2s on 127.0.0.1:15202.
set -euo pipefail
CMD="${1:-start}"; DIR="${2:-/tmp/starling-cluster}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${STARLING_BIN:-$ROOT/target/release/starling}"
DOMAIN="${DOMAIN:-localhost}"

node_conf() { # N
  local n=$1
  cat > "$DIR/node$n.toml" <<CONF
domains = ["$DOMAIN"]
data_dir = "$DIR/node$n"
[c2s]
bind = "127.0.0.1"
port = 152${n}2
tls_port = 152${n}3
[metrics]
port = 192${n}0
[cluster]
node_id = $n
bind = "127.0.0.1"
port = 172${n}0
ca_cert = "$DIR/ca/ca.pem"
cert = "$DIR/ca/node$n.pem"
key = "$DIR/ca/node$n-key.pem"
CONF
}

wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

case "$CMD" in
start)
  [ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p starling)
  mkdir -p "$DIR"
  [ -f "$DIR/ca/ca.pem" ] || "$BIN" cluster ca --out "$DIR/ca" >/dev/null
  for n in 1 2 3; do
    [ -f "$DIR/ca/node$n.pem" ] || "$BIN" cluster cert --ca-dir "$DIR/ca" --name "node$n" --san 127.0.0.1 --out "$DIR/ca" >/dev/null
    node_conf "$n"
  done
  for n in 1 2 3; do
    join=()
    [ "$n" -gt 1 ] && join=(--join 127.0.0.1:17210)
    "$BIN" serve --config "$DIR/node$n.toml" "${join[@]}" > "$DIR/node$n.log" 2>&1 &
    echo $! > "$DIR/node$n.pid"
    wait_port "152${n}2" || { echo "node $n did not start; see $DIR/node$n.log" >&2; exit 1; }
  done
  if command -v haproxy >/dev/null; then
    cat > "$DIR/haproxy.cfg" <<HA
global
    maxconn 20000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend c2s
    bind 127.0.0.1:15202
    default_backend nodes
backend nodes
    balance leastconn
    server node1 127.0.0.1:15212 check
    server node2 127.0.0.1:15222 check
    server node3 127.0.0.1:15232 check
HA
    haproxy -f "$DIR/haproxy.cfg" -D -p "$DIR/haproxy.pid"
    echo "HAProxy: c2s 127.0.0.1:15202"
  fi
  echo "nodes: c2s 127.0.0.1:15212, :15222, :15232; status: $0 status $DIR"
  ;;
status)
  "$BIN" cluster status --config "$DIR/node1.toml" --addr 127.0.0.1:17210
  ;;
stop)
  for f in "$DIR"/node*.pid "$DIR"/haproxy.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  ;;
*) echo "usage: $0 start|status|stop [DIR]" >&2; exit 2 ;;
esac
