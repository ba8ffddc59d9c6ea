# Shared by the cluster-*.sh benches (sourced): ports, start and stop of Starling
# nodes on loopback, their metrics, and account creation through a node's admin socket.
# The caller sets STARLING_BIN, PORT_BASE, NODES, DOMAIN, CA (the cluster CA directory) and OUT;
# NODE_EXTRA_CONF (optional) is appended to every node's configuration file.
# Node n uses c2s PORT_BASE+202+10n, direct TLS +203+10n, metrics +900+10n, cluster +700+10n.

c2s_port()     { echo $(( PORT_BASE + 202 + 10 * $1 )); }
tls_port()     { echo $(( PORT_BASE + 203 + 10 * $1 )); }
metrics_port() { echo $(( PORT_BASE + 900 + 10 * $1 )); }
cluster_port() { echo $(( PORT_BASE + 700 + 10 * $1 )); }

declare -A NODE_PID=()   # n -> pid of `starling serve`
stop_pid() { # $1 = a pid this script started: TERM, up to 10 s, then KILL
  [ -n "${1:-}" ] || return 0
  kill "$1" 2>/dev/null || return 0
  local i; for i in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$1" 2>/dev/null || true
}
stop_nodes() { local n; for n in "${!NODE_PID[@]}"; do stop_pid "${NODE_PID[$n]}"; unset "NODE_PID[$n]"; done; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { local i; for i in $(seq 1 150); do port_busy "$1" && return 0; sleep 0.2; done; return 1; }
metric() { # $1 = node n, $2 = metric name: its value, or 0 when absent
  curl -s --max-time 5 "http://127.0.0.1:$(metrics_port "$1")/metrics" \
    | awk -v m="$2" '$1 == m { v = $2 } END { print (v == "" ? 0 : v) }'
}
scrape() { # $1 = node n, $2 = file
  curl -s --max-time 5 "http://127.0.0.1:$(metrics_port "$1")/metrics" > "$2" || : > "$2"
}

make_certs() {
  "$STARLING_BIN" cluster ca --out "$CA" > /dev/null
  local i; for i in $(seq 1 "$NODES"); do
    "$STARLING_BIN" cluster cert --ca-dir "$CA" --name "node$i" --san 127.0.0.1 --out "$CA" > /dev/null
  done
}

start_node() { # $1 = n (0: the single node), $2 = node id, $3 = setup dir, $4 = join address or ""
  local n=$1 id=$2 dir=$3 join=$4
  for p in "$(c2s_port "$n")" "$(tls_port "$n")" "$(metrics_port "$n")" "$(cluster_port "$n")"; do
    if port_busy "$p"; then echo "port $p is already in use (set PORT_BASE)" >&2; return 1; fi
  done
  cat > "$dir/node$n.toml" <<CONF
domains = ["$DOMAIN"]
data_dir = "$dir/data$n"
[c2s]
bind = "127.0.0.1"
port = $(c2s_port "$n")
tls_port = $(tls_port "$n")
[metrics]
bind = "127.0.0.1"
port = $(metrics_port "$n")
[cluster]
node_id = $id
bind = "127.0.0.1"
port = $(cluster_port "$n")
ca_cert = "$CA/ca.pem"
cert = "$CA/node$id.pem"
key = "$CA/node$id-key.pem"
${NODE_EXTRA_CONF:-}
CONF
  local args=(serve --config "$dir/node$n.toml")
  [ -n "$join" ] && args+=(--join "$join")
  (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
   STARLING_S2S__ENABLED=false exec "$STARLING_BIN" "${args[@]}" > "$dir/node$n.log" 2>&1 < /dev/null) &
  NODE_PID[$n]=$!
  if ! wait_port "$(c2s_port "$n")" || ! kill -0 "${NODE_PID[$n]}" 2>/dev/null; then
    echo "node $n (id $id) did not open its c2s port; see $dir/node$n.log" >&2; return 1
  fi
}

wait_replicated() { # $@ = node ns: until every node applied what the first one committed
  local i n want ok
  for i in $(seq 1 150); do
    want="$(metric "$1" starling_raft_commit_index)"; ok=1
    for n in "$@"; do
      [ "$(metric "$n" starling_raft_applied_index)" = "$want" ] || { ok=0; break; }
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.2
  done
  echo "nodes $* did not all apply index $want within 30 s" >&2; return 1
}

add_accounts() { # $1 = admin socket, $2 = first, $3 = last: user<i>@DOMAIN / perfpass<i>
  "$(dirname "${BASH_SOURCE[0]}")/add-accounts.py" "$1" "$2" "$3" "$DOMAIN" > /dev/null
}

start_three() { # $1 = dir, $2 = accounts: certificates in $1/ca, nodes 1..3 joined to node 1,
                # accounts 1..$2 added and applied everywhere
  CA=$1/ca; mkdir -p "$1"
  make_certs
  start_node 1 1 "$1" "" || return 1
  sleep 2
  start_node 2 2 "$1" "127.0.0.1:$(cluster_port 1)" || return 1
  start_node 3 3 "$1" "127.0.0.1:$(cluster_port 1)" || return 1
  sleep 3
  add_accounts "$1/data1/admin.sock" 1 "$2"
  wait_replicated 1 2 3
}
