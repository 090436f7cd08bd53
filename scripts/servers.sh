# Test servers for the backend suites, sourced by scripts/test.
#
# Kafka: Apache Kafka 4.1.1 itself, one combined KRaft broker+controller, its jars resolved
# from Maven Central by scripts/kafka/pom.xml into target/test-servers/kafka/libs (once;
# later runs reuse them). KAFKA_SERVER=noida runs the noida-db emulator instead, as a
# cross-check. MongoDB protocol: secantusdb (a single-node replica set, so transactions and
# change streams work), from PyPI into a venv under target/test-servers, as noida-db.
# A server is started only when its address is not given (KAFKA_BROKERS, MONGODB_URI) and
# nothing answers on its port (KAFKA_PORT, default 9092, controller on KAFKA_PORT+1); the
# ones started here are stopped when the calling script exits.

SERVERS_DIR="${SERVERS_DIR:-$PWD/target/test-servers}"
KAFKA_VERSION=4.1.1
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

# Apache Kafka's jars, from Maven Central into target/test-servers/kafka/libs unless there.
# Exports KAFKA_LIBS and KAFKA_LOG4J, with which the tests that run private brokers of their
# own (kafka_outage, kafka_failover) start them.
ensure_kafka_jars() {
  local libs=$SERVERS_DIR/kafka/libs
  if [[ ! -f $libs/kafka_2.13-$KAFKA_VERSION.jar ]]; then
    echo "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $libs"
    command -v java >/dev/null || { echo "error: java not found; Kafka $KAFKA_VERSION needs a JDK 17 or later (or set KAFKA_BROKERS, or KAFKA_SERVER=noida)" >&2; return 1; }
    command -v mvn >/dev/null || { echo "error: mvn not found; install Maven to resolve Kafka's jars (or set KAFKA_BROKERS, or KAFKA_SERVER=noida)" >&2; return 1; }
    rm -rf "$libs.partial"
    mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs.partial"
    # Renamed only when complete, so an interrupted download is not taken for the jars.
    rm -rf "$libs" && mv "$libs.partial" "$libs"
  fi
  export KAFKA_LIBS=$libs
  export KAFKA_LOG4J=$PWD/scripts/kafka/log4j2.properties
}

# Waits until the Kafka broker at 127.0.0.1:$port lists itself in a Metadata answer.
wait_kafka() {
  local port=$1 pid=$2 log=$3
  for _ in $(seq 1 120); do
    python3 scripts/kafka/ready.py "127.0.0.1:$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: Kafka exited before serving on port $port; its log ($log):" >&2
      tail -n 40 "$log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "error: Kafka did not serve metadata on port $port within 60 s; its log: $log" >&2
  return 1
}

# One combined KRaft broker+controller, with the settings a test suite needs on a single
# node (internal topics with one replica, no delay before a new group's first rebalance)
# and Kafka's defaults otherwise (automatic topic creation included).
start_apache_kafka() {
  local port=$1 controller=$2 dir=$SERVERS_DIR/kafka
  ensure_kafka_jars
  local data=$dir/data-$port log=$dir/kafka-$port.log props=$dir/server-$port.properties
  rm -rf "$data" && mkdir -p "$data"
  cat >"$props" <<EOF_PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF_PROPS
  # A cluster id may start with "-" (URL-safe base64), so it is passed as --cluster-id=<id>,
  # which the option parser cannot mistake for an option of its own.
  local cluster_id
  cluster_id=$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" kafka.tools.StorageTool \
    format --cluster-id="$cluster_id" -c "$props" >"$log" 2>&1 ||
    { echo "error: formatting Kafka's log dir $data failed:" >&2; cat "$log" >&2; return 1; }
  java -Xmx512m -Xms512m -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
    kafka.Kafka "$props" >>"$log" 2>&1 &
  STARTED_PIDS+=($!)
  wait_kafka "$port" $! "$log"
  echo "started Apache Kafka $KAFKA_VERSION on $KAFKA_BROKERS (log: $log)"
}

stop_servers() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    # noida-db needs a few seconds to exit cleanly, Kafka's controlled shutdown up to 30.
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

start_kafka() {
  if [[ -n ${KAFKA_BROKERS:-} ]]; then return 0; fi
  local port=${KAFKA_PORT:-9092}
  export KAFKA_BROKERS=127.0.0.1:$port
  if port_open "$port"; then echo "using the Kafka broker already on $KAFKA_BROKERS"; return 0; fi
  case ${KAFKA_SERVER:-apache} in
    apache) start_apache_kafka "$port" "${KAFKA_CONTROLLER_PORT:-$((port + 1))}" ;;
    noida) start_noida "$port" ;;
    *) echo "error: KAFKA_SERVER=$KAFKA_SERVER; use apache (the default) or noida" >&2; return 1 ;;
  esac
}

start_noida() {
  local port=$1
  ensure_venv
  local data=$SERVERS_DIR/kafka-data log=$SERVERS_DIR/kafka.log
  rm -rf "$data" && mkdir -p "$data"
  # The binary inside the package, not the pip wrapper: the PID stopped is the broker's.
  "$VENV/lib/python3.11/site-packages/noida_db/noida-db" start --only kafka \
    --host 127.0.0.1 --kafka-port "$port" --data-dir "$data" >"$log" 2>&1 &
  STARTED_PIDS+=($!)
  wait_port noida-db "$port" $! "$log"
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
