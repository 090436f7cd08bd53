//! `EventBus::settled` and a graceful shutdown on Kafka: they wait for the bus's groups to
//! commit what was published (directly or through the outbox) before the call, read from
//! the broker's committed offsets.

mod kafka_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::{subscribe, EventBus, MemoryStore, State};
use eventflow_tests::OrderPaid;

#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<u64>>>);

#[subscribe(group = "ledger")]
async fn slow_ledger(event: OrderPaid, State(handled): State<Handled>) -> Result<(), std::io::Error> {
    // Slow enough that the events are still on their way when `settled` is called.
    tokio::time::sleep(Duration::from_millis(5)).await;
    handled.0.lock().unwrap().push(event.seq);
    Ok(())
}

async fn bus(kafka: &eventflow_kafka::Kafka, handled: &Handled) -> EventBus {
    EventBus::builder()
        .transport(kafka.clone())
        .storage(MemoryStore::new())
        .state(handled.clone())
        .handler(slow_ledger)
        .start()
        .await
        .unwrap()
}

fn order(seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: format!("order-{}", seq % 7),
        seq,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_waits_until_the_group_committed_what_was_published_and_committed() {
    kafka_common::capture_logs();
    let kafka = kafka_common::kafka("settled");
    let handled = Handled::default();
    let bus = bus(&kafka, &handled).await;
    for seq in 0..30 {
        bus.publish(&order(seq)).await.unwrap();
    }
    let mut work = bus.begin().await.unwrap();
    for seq in 30..60 {
        work.publish(&order(seq)).await.unwrap();
    }
    work.commit().await.unwrap();

    bus.settled_within(Duration::from_secs(60)).await.unwrap();
    let mut seen = handled.0.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        (0..60).collect::<Vec<_>>(),
        "settled returned before every event was handled"
    );
    assert_eq!(
        kafka.lag("orders", "ledger").await.unwrap(),
        0,
        "settled returned before the commit"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_what_was_published_to_the_group_before_it_returns() {
    kafka_common::capture_logs();
    let kafka = kafka_common::kafka("drain");
    let handled = Handled::default();
    let bus = bus(&kafka, &handled).await;
    let mut work = bus.begin().await.unwrap();
    for seq in 0..40 {
        work.publish(&order(seq)).await.unwrap();
    }
    work.commit().await.unwrap();
    let started = std::time::Instant::now();
    bus.shutdown().await;
    assert_eq!(
        handled.0.lock().unwrap().len(),
        40,
        "shutdown returned before the group handled what was committed"
    );
    // The drain ends when the group has committed everything, not at the deadline (30 s
    // by default), which it once waited out every time on Kafka.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "shutdown took {took:?}: it waited for its deadline although every event was handled"
    );
    assert_eq!(
        kafka.lag("orders", "ledger").await.unwrap(),
        0,
        "what was handled is committed"
    );
}
