#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside (and without
# touching) the machine's own RabbitMQ: for trying out and testing failover.
#
#   deploy/rabbitmq-cluster.sh start DIRECTORY   # nodes txp-a, txp-b, txp-c
#   deploy/rabbitmq-cluster.sh stop DIRECTORY    # each by the pid it wrote
#   deploy/rabbitmq-cluster.sh restart DIRECTORY txp-b   # one that stopped
#
# Each node has its own name (txp-a@localhost ..., or TXP_CLUSTER_PREFIX-a),
# AMQP port (5681-5683, or TXP_CLUSTER_PORT_BASE + 1..3), distribution port
# (20000 more), configuration file, data, log and pid file under
# DIRECTORY/<node>.  The
# nodes run as the rabbitmq user (rabbitmq-server switches to it), so they
# share its Erlang cookie and DIRECTORY is given to that user: run as root.
# The broker URLs, in one line separated by commas (as --bus takes them),
# go to DIRECTORY/urls.
set -euo pipefail

PREFIX=${TXP_CLUSTER_PREFIX:-txp}
NODES=("$PREFIX-a" "$PREFIX-b" "$PREFIX-c")
BASE_PORT=${TXP_CLUSTER_PORT_BASE:-5680}
HOST=localhost

usage() {
    echo "usage: $0 start|stop DIRECTORY, or $0 restart DIRECTORY NODE" >&2
    exit 2
}

[ $# -ge 2 ] || usage
command=$1
directory=$(realpath -m "$2")

port_of() { echo $((BASE_PORT + $1 + 1)); }

ctl() {  # ctl NODE ARGS...: rabbitmqctl on one of our nodes
    local node=$1
    shift
    rabbitmqctl -q -n "$node@$HOST" "$@"
}

launch() {  # launch INDEX: start that node, detached, as the rabbitmq user
    local node=${NODES[$1]} port
    port=$(port_of "$1")
    RABBITMQ_NODENAME="$node@$HOST" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT=$((port + 20000)) \
        RABBITMQ_CONFIG_FILE="$directory/$node/rabbitmq.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$directory/$node/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$directory/$node/data" \
        RABBITMQ_LOG_BASE="$directory/$node/log" \
        RABBITMQ_PID_FILE="$directory/$node/pid" \
        rabbitmq-server -detached
}

await() {  # await NODE: until it runs
    # A detached node answers only once it has registered with epmd, some
    # seconds after it was started: until then rabbitmqctl fails at once.
    local node=$1 deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
        if ctl "$node" await_startup --timeout 120 >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "$0: $node did not start in 120 s (see $directory/$node/log)" >&2
    exit 1
}

restart() {  # restart NODE: start again a node of the cluster that stopped
    local i
    for i in "${!NODES[@]}"; do
        if [ "${NODES[$i]}" = "$1" ]; then
            launch "$i"
            await "$1"
            return 0
        fi
    done
    echo "$0: no node $1 (${NODES[*]})" >&2
    exit 2
}

start() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: run as root (the nodes run as the rabbitmq user)" >&2
        exit 1
    fi
    mkdir -p "$directory"
    local i node port urls=()
    for i in "${!NODES[@]}"; do
        node=${NODES[$i]}
        port=$(port_of "$i")
        if [ -f "$directory/$node/pid" ] && kill -0 "$(cat "$directory/$node/pid")" 2>/dev/null; then
            echo "$0: $node is running already (pid $(cat "$directory/$node/pid"))" >&2
            exit 1
        fi
        mkdir -p "$directory/$node/data" "$directory/$node/log"
        # The machine's /etc/rabbitmq/rabbitmq.conf pins its listener to
        # 5672: each node reads its own file instead.
        cat >"$directory/$node/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users = none
cluster_partition_handling = pause_minority
EOF
        echo "[]." >"$directory/$node/enabled_plugins"
        urls+=("amqp://guest:guest@127.0.0.1:$port/")
    done
    # One line, the nodes' URLs separated by commas: a --bus value.
    (IFS=,; echo "${urls[*]}") >"$directory/urls"
    chown -R rabbitmq:rabbitmq "$directory"
    if ! su rabbitmq -s /bin/sh -c "test -w '$directory'"; then
        echo "$0: the rabbitmq user cannot write to $directory (is a parent closed to it?)" >&2
        exit 1
    fi
    for i in "${!NODES[@]}"; do
        launch "$i"
    done
    for node in "${NODES[@]}"; do
        await "$node"
    done
    for node in "${NODES[@]:1}"; do
        ctl "$node" stop_app
        ctl "$node" join_cluster "${NODES[0]}@$HOST"
        ctl "$node" start_app
    done
    ctl "${NODES[0]}" await_online_nodes ${#NODES[@]} --timeout 120
    echo "cluster of ${#NODES[@]} nodes running; broker URLs in $directory/urls"
}

stop() {  # SIGTERM to each node (by the pid it wrote), SIGKILL after 30 s
    local node pid pids=()
    for node in "${NODES[@]}"; do
        [ -f "$directory/$node/pid" ] || continue
        pid=$(cat "$directory/$node/pid")
        if kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
    done
    for _ in $(seq 60); do
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then sleep 0.5 && continue 2; fi
        done
        break
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "$0: pid $pid still runs after 30 s: killing it" >&2
            kill -KILL "$pid"
        fi
    done
    for node in "${NODES[@]}"; do
        rm -f "$directory/$node/pid"
    done
}

case $command in
start) start ;;
stop) stop ;;
restart) [ $# -eq 3 ] || usage; restart "$3" ;;
*) usage ;;
esac
