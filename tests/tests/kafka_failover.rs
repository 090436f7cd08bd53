//! Broker failover: on a three-node Apache Kafka cluster (KRaft, replication 3,
//! `min.insync.replicas=2`), events are committed through a SQLite outbox and consumed by a
//! transactional handler while the leader of the topic's partitions is killed (SIGKILL)
//! and later restarted. Every committed event takes effect exactly once, none is lost, and
//! the topic holds each event once: the idempotent producer's retries to the new leader
//! wrote nothing twice.
//!
//! The cluster is the test's own (`kafka_common::cluster`, from the jars `KAFKA_LIBS`
//! names), on free ports, killed and removed when the test ends, whether it passes or not.

mod kafka_common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::store::{rusqlite, SqliteStore, SqliteTransaction, Storage};
use eventflow::{subscribe, EventBus, State, Tx};
use eventflow_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use eventflow_kafka::rdkafka::{ClientConfig, Message};
use eventflow_kafka::Kafka;
use eventflow_tests::{eventually, remove_db, temp_db, within, OrderPaid};
use kafka_common::cluster::KafkaCluster;

/// When each event was first handled, to see how long delivery paused.
#[derive(Clone, Default)]
struct HandledAt(Arc<Mutex<HashMap<u64, Instant>>>);

#[subscribe(group = "ledger")]
async fn ledger(event: OrderPaid, tx: Tx, State(at): State<HandledAt>) -> Result<(), String> {
    let mut tx = tx.lock().await;
    let sqlite = tx
        .downcast_mut::<SqliteTransaction>()
        .expect("a SqliteStore unit of work");
    sqlite
        .connection()
        .execute("INSERT INTO effects (seq) VALUES (?1)", [event.seq as i64])
        .map_err(|e| e.to_string())?;
    at.0.lock().unwrap().entry(event.seq).or_insert_with(Instant::now);
    Ok(())
}

/// How many effects each `seq` has in the database, read as the application would.
fn effects(path: &Path) -> HashMap<u64, u32> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut select = connection
        .prepare("SELECT seq, COUNT(*) FROM effects GROUP BY seq")
        .unwrap();
    let rows = select
        .query_map([], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u32))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Every event on `topic`, by `seq`, read committed from the beginning until `count` arrived.
async fn events_on_topic(brokers: &str, topic: &str, count: usize) -> HashMap<u64, u32> {
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", kafka_common::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("creating a reader");
    reader.subscribe(&[topic]).expect("subscribing the reader");
    let mut seqs: HashMap<u64, u32> = HashMap::new();
    let mut read = 0;
    // Everything committed is there already; a copy written twice would be read with it.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(message) = reader.recv().await {
                let event: OrderPaid = serde_json::from_slice(message.payload().unwrap()).unwrap();
                *seqs.entry(event.seq).or_default() += 1;
                read += 1;
                if read >= count {
                    // Wait a moment for any copy beyond `count`.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    })
    .await;
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_partition_leader_loses_and_doubles_nothing() {
    kafka_common::capture_logs();
    let mut cluster = KafkaCluster::start(
        3,
        &[
            ("default.replication.factor", "3"),
            ("min.insync.replicas", "2"),
            ("transaction.state.log.min.isr", "2"),
        ],
    );
    let name = kafka_common::unique("failover");
    let kafka = Kafka::builder(cluster.brokers())
        .topic_prefix(format!("{name}."))
        .group_prefix(format!("{name}."))
        .partitions(3)
        .replication(3)
        .consumer_config("session.timeout.ms", "6000")
        .consumer_config("heartbeat.interval.ms", "500")
        .consumer_config("max.poll.interval.ms", "15000")
        .build()
        .unwrap();
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let mut setup = store.begin().await.unwrap();
    setup
        .downcast_mut::<SqliteTransaction>()
        .unwrap()
        .connection()
        .execute_batch("CREATE TABLE effects (seq INTEGER NOT NULL)")
        .unwrap();
    setup.commit().await.unwrap();
    let handled_at = HandledAt::default();
    let bus = EventBus::builder()
        .transport(kafka.clone())
        .storage(store.clone())
        .state(handled_at.clone())
        .handler(ledger)
        .start()
        .await
        .unwrap();

    // Units of work committed one every 20 ms, until told to stop.
    let committed: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (bus, committed, stop) = (bus.clone(), committed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Acquire) {
                let mut work = bus.begin().await.expect("beginning a unit of work");
                let order_id = format!("order-{}", seq % 17);
                work.publish(&OrderPaid { order_id, seq }).await.unwrap();
                work.commit()
                    .await
                    .expect("the outbox commits locally whatever the brokers do");
                committed.lock().unwrap().push((seq, Instant::now()));
                seq += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let handled = |at: &HandledAt| at.0.lock().unwrap().len();
    eventually(90, "the first events handled", || handled(&handled_at) >= 100).await;

    let topic = kafka.kafka_topic("orders");
    let leader = cluster
        .leader_of(&topic, 0)
        .expect("partition 0 of the topic has a leader");
    cluster.kill(leader);
    let killed = Instant::now();
    println!("killed node {leader}, the leader of partition 0 of {topic}");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let new_leader = cluster.leader_of(&topic, 0);
    cluster.restart(leader);
    let restarted = Instant::now();
    println!(
        "restarted node {leader} after {:?}; partition 0 was led by {new_leader:?} meanwhile",
        restarted - killed
    );
    assert!(
        new_leader.is_some_and(|new| new != leader),
        "partition 0 got no new leader while node {leader} was down: {new_leader:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Release);
    within(30, "the publisher to stop", publishing).await.unwrap();
    let committed = committed.lock().unwrap().clone();
    let total = committed.len();
    eventually(90, "every committed event handled after the failover", || {
        handled(&handled_at) >= total
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let effects = effects(&path);
    let lost: Vec<u64> = committed
        .iter()
        .map(|(seq, _)| *seq)
        .filter(|seq| !effects.contains_key(seq))
        .collect();
    assert!(lost.is_empty(), "committed events without effect: {lost:?}");
    let doubled: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "effects applied more than once: {doubled:?}");
    assert_eq!(effects.len(), total, "effects of events never committed");
    let on_topic = events_on_topic(&cluster.brokers(), &topic, total).await;
    let written_twice: Vec<_> = on_topic.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        written_twice.is_empty(),
        "events written to the topic more than once (seq, copies): {written_twice:?}"
    );
    assert_eq!(on_topic.len(), total, "events missing from the topic");

    // How long delivery paused: the longest any event committed after the kill waited for
    // its effect, and the longest gap between two effects.
    let at = handled_at.0.lock().unwrap().clone();
    let slowest = committed
        .iter()
        .filter(|(_, when)| *when >= killed)
        .map(|(seq, when)| at[seq].saturating_duration_since(*when))
        .max()
        .unwrap_or_default();
    let mut times: Vec<Instant> = at.values().copied().collect();
    times.sort_unstable();
    let gap = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    println!(
        "{total} events, each once; delivery paused {gap:?} at most (longest gap between two \
         effects); the slowest event committed after the kill took {slowest:?} to take effect"
    );
    bus.shutdown().await;
    // The clients first, so that none is left to complain about the brokers going away.
    drop(kafka);
    drop(cluster);
    remove_db(&path);
}
