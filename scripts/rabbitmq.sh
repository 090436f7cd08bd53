# RabbitMQ for the eventflow-rabbitmq suite, sourced by scripts/test after servers.sh.
#
# start_rabbitmq: when AMQP_URL is unset and nothing answers on 5672, installs Debian's
# rabbitmq-server if it is missing (apt-get, as root; Debian 12 ships RabbitMQ 3.10, and
# quorum queues need >= 3.8; single active consumers need no plugin) and starts a node of
# its own with its data and logs under $SERVERS_DIR/rabbitmq; no systemd needed. The node
# is stopped with the other servers (stop_servers), or by stop_rabbitmq. It exports
# RABBITMQ_SERVER_BIN, with which the outage test runs a private node.

RABBITMQ_BIN_DIR="${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}"
RABBITMQ_STARTED_NODE=""

rabbitmq_env() {
  local base=$SERVERS_DIR/rabbitmq
  mkdir -p "$base"
  export RABBITMQ_NODENAME=eventflow-test@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=5672 RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log \
    RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins \
    RABBITMQ_PID_FILE=$base/rabbitmq.pid
  # No plugin: eventflow's topology uses quorum queues and single active consumers only.
  [[ -f $base/enabled_plugins ]] || echo "[]." >"$base/enabled_plugins"
}

start_rabbitmq() {
  if [[ -x $RABBITMQ_BIN_DIR/rabbitmq-server ]]; then
    export RABBITMQ_SERVER_BIN=$RABBITMQ_BIN_DIR/rabbitmq-server
  fi
  if [[ -n ${AMQP_URL:-} ]]; then return 0; fi
  export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
  if port_open 5672; then echo "using the RabbitMQ server already on 127.0.0.1:5672"; return 0; fi
  if [[ ! -x $RABBITMQ_BIN_DIR/rabbitmq-server ]]; then
    echo "installing rabbitmq-server from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    export RABBITMQ_SERVER_BIN=$RABBITMQ_BIN_DIR/rabbitmq-server
    # Debian's package may have started its own node (with systemd); ours is separate.
    if port_open 5672; then echo "using the RabbitMQ server the package started on 5672"; return 0; fi
  fi
  rabbitmq_env
  # A fresh node each run, as for the other servers: queues of earlier runs are not kept.
  rm -rf "$RABBITMQ_MNESIA_BASE"
  local log=$SERVERS_DIR/rabbitmq/server.log
  "$RABBITMQ_BIN_DIR/rabbitmq-server" >"$log" 2>&1 &
  local pid=$!
  RABBITMQ_STARTED_NODE=$RABBITMQ_NODENAME
  # stop_servers (scripts/servers.sh) stops it too: SIGTERM makes RabbitMQ shut down cleanly.
  STARTED_PIDS+=("$pid")
  # RabbitMQ opens 5672 only once it has booted; on a loaded machine that takes a while.
  for _ in $(seq 1 240); do
    if port_open 5672; then
      echo "started RabbitMQ $("$RABBITMQ_BIN_DIR/rabbitmqctl" -n "$RABBITMQ_NODENAME" version 2>/dev/null) on $AMQP_URL"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: rabbitmq-server exited before listening on 5672; its log ($log):" >&2
      tail -n 40 "$log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "error: RabbitMQ did not listen on 5672 within 120 s; its log: $log" >&2
  return 1
}

stop_rabbitmq() {
  if [[ -z $RABBITMQ_STARTED_NODE ]]; then return 0; fi
  "$RABBITMQ_BIN_DIR/rabbitmqctl" -n "$RABBITMQ_STARTED_NODE" stop >/dev/null 2>&1 || true
  RABBITMQ_STARTED_NODE=""
}
