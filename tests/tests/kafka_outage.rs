//! A broker outage in the middle of a stream: the broker is stopped for more than 10 s
//! and started again. Events committed through the outbox meanwhile are all delivered
//! once the broker is back, and each takes effect exactly once.
//!
//! Runs its own Apache Kafka broker (one KRaft node from the jars `scripts/servers.sh`
//! resolves, `KAFKA_LIBS`) on free ports, so that stopping it disturbs no other test; the
//! restarted broker keeps its data directory, as a restarted production broker does.

mod kafka_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, EventBus, MemoryStore, State};
use eventflow_kafka::Kafka;
use eventflow_tests::{eventually, OrderPaid};
use kafka_common::cluster::KafkaCluster;

#[derive(Clone, Default)]
struct Effects(Arc<Mutex<HashMap<u64, u32>>>);

impl Effects {
    fn applied(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[subscribe(group = "ledger")]
async fn ledger(event: OrderPaid, State(effects): State<Effects>) -> Result<(), String> {
    *effects.0.lock().unwrap().entry(event.seq).or_default() += 1;
    Ok(())
}

async fn commit_through_outbox(bus: &EventBus, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let mut work = bus.begin().await.expect("beginning a unit of work");
        work.publish(&OrderPaid {
            order_id: format!("order-{}", seq % 5),
            seq,
        })
        .await
        .unwrap();
        work.commit()
            .await
            .expect("the outbox commits locally whatever the broker does");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_during_a_broker_outage_are_delivered_once_it_is_back() {
    kafka_common::capture_logs();
    let mut broker = KafkaCluster::start(1, &[]);
    let name = kafka_common::unique("outage");
    let kafka = Kafka::builder(broker.brokers())
        .topic_prefix(format!("{name}."))
        .group_prefix(format!("{name}."))
        .partitions(3)
        .delivery_timeout(Duration::from_secs(5))
        .consumer_config("session.timeout.ms", "6000")
        .consumer_config("heartbeat.interval.ms", "500")
        .build()
        .unwrap();
    let effects = Effects::default();
    let bus = EventBus::builder()
        .transport(kafka)
        .storage(MemoryStore::new())
        .state(effects.clone())
        .handler(ledger)
        .start()
        .await
        .unwrap();

    commit_through_outbox(&bus, 0..50).await;
    eventually(60, "the events before the outage", || effects.applied() == 50).await;

    broker.stop(1);
    let stopped = Instant::now();
    commit_through_outbox(&bus, 50..100).await;
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(stopped.elapsed())).await;
    assert_eq!(
        effects.applied(),
        50,
        "nothing can be delivered while the broker is down"
    );
    broker.restart(1);
    let restarted = Instant::now();

    commit_through_outbox(&bus, 100..120).await;
    // Bounded: a consumer that backs off between polls instead of serving librdkafka's
    // queue once took minutes to rejoin its group (or never did).
    eventually(
        30,
        "every event committed before, during and after the outage, within 30 s of the restart",
        || effects.applied() == 120,
    )
    .await;
    println!("caught up {:?} after the broker restarted", restarted.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let effects = effects.0.lock().unwrap().clone();
    assert_eq!(effects.len(), 120);
    let doubled: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "effects applied more than once: {doubled:?}");
    bus.shutdown().await;
}
