//! The Kafka transport against a real Kafka-protocol broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`): the transport conformance suite, dead-letter topics, foreign
//! messages, restarts and scaling of a group.

mod kafka_common;

use std::time::Duration;

use eventflow::{subscribe, EventBus, State};
use eventflow_tests::{eventually, OrderPaid, Recorder};

type Result = std::result::Result<(), String>;

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("inventory", &event);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let kafka = kafka_common::kafka("smoke");
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(kafka.clone())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    for seq in 0..100 {
        bus.publish(&OrderPaid { order_id: format!("o-{}", seq % 7), seq }).await.unwrap();
    }
    eventually(30, "all handled", || rec.seen("inventory").len() >= 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rec.sorted_seqs("inventory"), (0..100).collect::<Vec<_>>());
    bus.shutdown().await;
}

/// The transport conformance suite, unchanged, on Kafka.
mod conformance {
    use super::kafka_common;

    eventflow::transport_conformance!(async { kafka_common::kafka("conformance") });
}
