# Test servers for the backend suites, sourced by scripts/test.
#
# Kafka protocol: noida-db. MongoDB protocol: secantusdb (a single-node replica set, so
# transactions and change streams work). Both come from PyPI into a venv under
# target/test-servers. A server is started only when its address is not given
# (KAFKA_BROKERS, MONGODB_URI) and nothing answers on the default port; the ones started
# here are stopped when the calling script exits.

SERVERS_DIR="${SERVERS_DIR:-$PWD/target/test-servers}"
NOIDA_VERSION=0.2.3
SECANTUS_VERSION=0.7.0b3
STARTED_PIDS=()

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2 pid=$3 log=$4
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $name exited before listening on port $port; its log ($log):" >&2
      tail -n 40 "$log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "error: $name did not listen on port $port within 60 s; its log: $log" >&2
  return 1
}

ensure_venv() {
  local venv=$SERVERS_DIR/venv
  if [[ ! -x $venv/bin/secantusd-py || ! -x $venv/lib/python3.11/site-packages/noida_db/noida-db ]]; then
    echo "installing test servers (noida-db $NOIDA_VERSION, secantusdb $SECANTUS_VERSION) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "noida-db==$NOIDA_VERSION" "secantusdb==$SECANTUS_VERSION"
  fi
  VENV=$venv
  # The broker-outage test starts a private broker of its own, which it stops and restarts.
  export NOIDA_DB_BIN=$venv/lib/python3.11/site-packages/noida_db/noida-db
}

stop_servers() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    # noida-db needs a few seconds to exit cleanly.
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

start_kafka() {
  if [[ -n ${KAFKA_BROKERS:-} ]]; then return 0; fi
  export KAFKA_BROKERS=127.0.0.1:9092
  if port_open 9092; then echo "using the Kafka broker already on $KAFKA_BROKERS"; return 0; fi
  ensure_venv
  local data=$SERVERS_DIR/kafka-data log=$SERVERS_DIR/kafka.log
  rm -rf "$data" && mkdir -p "$data"
  # The binary inside the package, not the pip wrapper: the PID stopped is the broker's.
  "$VENV/lib/python3.11/site-packages/noida_db/noida-db" start --only kafka \
    --host 127.0.0.1 --kafka-port 9092 --data-dir "$data" >"$log" 2>&1 &
  STARTED_PIDS+=($!)
  wait_port noida-db 9092 $! "$log"
  echo "started noida-db (Kafka protocol) on $KAFKA_BROKERS"
}

start_mongo() {
  if [[ -n ${MONGODB_URI:-} ]]; then return 0; fi
  export MONGODB_URI="mongodb://127.0.0.1:27017/?directConnection=true"
  if port_open 27017; then echo "using the MongoDB server already on 127.0.0.1:27017"; return 0; fi
  ensure_venv
  local log=$SERVERS_DIR/mongo.log
  "$VENV/bin/secantusd-py" --host 127.0.0.1 --port 27017 --storage-path :memory: >"$log" 2>&1 &
  STARTED_PIDS+=($!)
  wait_port secantusdb 27017 $! "$log"
  echo "started secantusdb (MongoDB protocol) on $MONGODB_URI"
}
