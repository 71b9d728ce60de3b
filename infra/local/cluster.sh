#!/usr/bin/env bash
# A multi-node Ray cluster on this machine, for manual use: one head node standing for a "CPU node"
# (custom resource cpu_node) and WORKERS worker nodes standing for "GPU nodes" (gpu_node), each a
# separate `ray start --block` process tree. Isolated from every other Ray on the machine: its own
# temp dir (short path: Ray's unix sockets live under it), its own ports, loopback only, and `stop`
# ends only the processes this script started (their pids; never `ray stop`, which ends every Ray
# on the machine). A plain `ray.init()` elsewhere does not attach to it: the address file Ray reads
# by default is /tmp/ray/ray_current_cluster, and this cluster writes its own under CLUSTER_DIR.
#
#   bash infra/local/cluster.sh start            # head + 1 worker; prints the address to use
#   bash infra/local/cluster.sh status           # nodes and their resources
#   bash infra/local/cluster.sh kill-worker 1    # SIGKILL worker 1's raylet and workers (a lost node)
#   bash infra/local/cluster.sh start-worker 1   # bring it back
#   bash infra/local/cluster.sh stop
#
# Then, e.g. (the encoder pool on the head, the sampler pool on the worker, engines joining):
#   export AUDIO_OMNI_ENCODER_RESOURCES='{"cpu_node": 0.01}' AUDIO_OMNI_SAMPLER_RESOURCES='{"gpu_node": 0.01}'
#   audio-omni serve --ray-address "$(bash infra/local/cluster.sh address)" --preset tiny --keep-pools ...
#   audio-omni serve --ray-address ... --no-deploy     # more engines on the same pools
#
# Settings (environment): CLUSTER_DIR (default /tmp/aoc-$USER), HEAD_PORT (default: a free port),
# WORKERS (1), HEAD_CPUS (2), WORKER_CPUS (2), HEAD_RESOURCES ('{"cpu_node": 1}'),
# WORKER_RESOURCES ('{"gpu_node": 1}'), OBJECT_STORE_BYTES (per node, 256 MB), RAY (.venv/bin/ray).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/aoc-${USER:-$(id -u)}}
WORKERS=${WORKERS:-1}
HEAD_CPUS=${HEAD_CPUS:-2}
WORKER_CPUS=${WORKER_CPUS:-2}
HEAD_RESOURCES=${HEAD_RESOURCES:-'{"cpu_node": 1}'}
WORKER_RESOURCES=${WORKER_RESOURCES:-'{"gpu_node": 1}'}
OBJECT_STORE_BYTES=${OBJECT_STORE_BYTES:-268435456}
RAY=${RAY:-.venv/bin/ray}
PY=${PY:-.venv/bin/python}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}

die() { echo "cluster: $*" >&2; exit 1; }

# A free TCP port on loopback (the kernel's choice; released before Ray binds it).
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Ports a node would otherwise share with every other node on the machine (fixed defaults).
node_ports() {
  echo "--object-store-memory $OBJECT_STORE_BYTES --node-manager-port $(free_port) --object-manager-port $(free_port)" \
    "--dashboard-agent-listen-port $(free_port) --dashboard-agent-grpc-port $(free_port)" \
    "--runtime-env-agent-port $(free_port) --metrics-export-port $(free_port)"
}

address() { [ -f "$CLUSTER_DIR/address" ] || die "not running (no $CLUSTER_DIR/address)"; cat "$CLUSTER_DIR/address"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Every descendant of a pid (children first listed last), for killing a node's whole tree.
tree() {
  local pid=$1 child
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do tree "$child"; done
  echo "$pid"
}

wait_nodes() {  # until the cluster has $1 alive nodes (or 90 s)
  local want=$1 addr
  addr=$(address)
  for _ in $(seq 180); do
    n=$("$PY" - "$addr" <<'EOF' 2>/dev/null || echo 0
import sys
from ray._raylet import GcsClient
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5)
print(sum(1 for n in nodes.values() if n.state == 0))
EOF
)
    [ "$n" -ge "$want" ] && return 0
    sleep 0.5
  done
  die "only $n of $want nodes came up; logs under $CLUSTER_DIR"
}

start_head() {
  alive "$CLUSTER_DIR/head.pid" && die "already running (head pid $(cat "$CLUSTER_DIR/head.pid"))"
  mkdir -p "$CLUSTER_DIR"
  local port=${HEAD_PORT:-$(free_port)}
  # shellcheck disable=SC2046  # node_ports is a list of flags
  setsid "$RAY" start --head --block --node-ip-address 127.0.0.1 --port "$port" --num-cpus "$HEAD_CPUS" \
    --num-gpus 0 --resources "$HEAD_RESOURCES" --temp-dir "$CLUSTER_DIR/head" --include-dashboard false \
    --ray-client-server-port "$(free_port)" --disable-usage-stats $(node_ports) \
    >"$CLUSTER_DIR/head.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/head.pid"
  echo "127.0.0.1:$port" >"$CLUSTER_DIR/address"
  wait_nodes 1
  echo "head: 127.0.0.1:$port (pid $(cat "$CLUSTER_DIR/head.pid"), resources $HEAD_RESOURCES)"
}

start_worker() {
  local i=$1
  alive "$CLUSTER_DIR/worker$i.pid" && die "worker $i already running"
  # shellcheck disable=SC2046
  setsid "$RAY" start --block --address "$(address)" --node-ip-address 127.0.0.1 --num-cpus "$WORKER_CPUS" \
    --num-gpus 0 --resources "$WORKER_RESOURCES" --temp-dir "$CLUSTER_DIR/w$i" $(node_ports) \
    >"$CLUSTER_DIR/worker$i.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/worker$i.pid"
  echo "worker $i: pid $!, resources $WORKER_RESOURCES"
}

kill_node() {  # SIGKILL a node's whole process tree (raylet, its workers, agents): a lost machine
  local f=$1
  alive "$f" || { echo "cluster: $(basename "$f" .pid) is not running"; rm -f "$f"; return 0; }
  # shellcheck disable=SC2046
  kill -9 $(tree "$(cat "$f")") 2>/dev/null || true
  rm -f "$f"
}

stop_node() {  # SIGTERM to `ray start --block`: it stops its node's processes, then SIGKILL leftovers
  local f=$1 pids
  alive "$f" || { rm -f "$f"; return 0; }
  pids=$(tree "$(cat "$f")")
  kill "$(cat "$f")" 2>/dev/null || true
  for _ in $(seq 100); do alive "$f" || break; sleep 0.1; done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
  rm -f "$f"
}

case "${1:-}" in
  start)
    start_head
    for i in $(seq "$WORKERS"); do start_worker "$i"; done
    wait_nodes $((WORKERS + 1))
    echo "cluster: $((WORKERS + 1)) nodes up; join with --ray-address $(address)"
    ;;
  start-worker) start_worker "${2:?worker number}"; wait_nodes "${3:-2}" ;;
  kill-worker) kill_node "$CLUSTER_DIR/worker${2:?worker number}.pid"; echo "worker $2 killed" ;;
  address) address ;;
  status)
    addr=$(address)
    "$PY" - "$addr" <<'EOF'
import sys
from ray._raylet import GcsClient
for node_id, n in GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5).items():
    state = "ALIVE" if n.state == 0 else "DEAD"
    res = {k: v for k, v in n.resources_total.items() if not k.startswith("node:")}
    print(f"{node_id.hex()[:12]} {state:5} head={n.is_head_node} {res}")
EOF
    ;;
  stop)
    for f in "$CLUSTER_DIR"/worker*.pid; do [ -e "$f" ] && stop_node "$f"; done
    stop_node "$CLUSTER_DIR/head.pid"
    rm -f "$CLUSTER_DIR/address"
    echo "cluster: stopped"
    ;;
  *) die "usage: $0 start|stop|status|address|kill-worker N|start-worker N" ;;
esac
