//! Transactional groups on a real Kafka-protocol broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`): a group whose handlers' follow-ups go out in the broker transaction
//! that commits the handled events, exactly once, and nothing of a transaction cut short.

mod kafka_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::{subscribe, Backoff, Context, Event, EventBus, MemoryStore, State};
use eventflow_kafka::rdkafka::message::Message;
use eventflow_kafka::{KafkaBuilder, StartFrom};
use eventflow_tests::{eventually, OrderPaid};
use serde::{Deserialize, Serialize};

type Result = std::result::Result<(), String>;

fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

/// The follow-up the transactional handlers publish.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "order.shipped", topic = "shipments")]
struct OrderShipped {
    #[event(key)]
    order_id: String,
    seq: u64,
}

/// The `seq`s of the follow-ups in `messages`.
fn shipped(messages: &[eventflow_kafka::rdkafka::message::OwnedMessage]) -> Vec<u64> {
    let mut seqs: Vec<u64> = messages
        .iter()
        .map(|m| {
            serde_json::from_slice::<OrderShipped>(m.payload().unwrap())
                .unwrap()
                .seq
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

#[subscribe(group = "shipping", retries = 1)]
async fn ship(event: OrderPaid, ctx: Context) -> Result {
    ctx.publish(&OrderShipped {
        order_id: event.order_id.clone(),
        seq: event.seq,
    })
    .await
    .map_err(|e| e.to_string())?;
    if event.order_id.starts_with("bad") {
        return Err(format!("cannot ship {}", event.order_id));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transactional_handler_publishes_nothing_and_a_successful_one_exactly_once() {
    let kafka = kafka_common::builder("tx-fail")
        .transactional_group("shipping")
        .build()
        .unwrap();
    let bus = EventBus::builder()
        .transport(kafka.clone())
        .backoff(quick())
        .handler(ship)
        .start()
        .await
        .unwrap();
    for (order_id, seq) in [("bad-1", 1), ("good-2", 2)] {
        let paid = OrderPaid {
            order_id: order_id.into(),
            seq,
        };
        bus.publish(&paid).await.unwrap();
    }
    let mut letters = Vec::new();
    for _ in 0..300 {
        letters = bus.dead_letters(Some("shipping")).await.unwrap();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters.len(), 1, "the failing event is dead-lettered");
    assert_eq!(letters[0].attempts, 2);
    let shipments = kafka.kafka_topic("shipments");
    kafka_common::read_topic(&shipments, 1, 30, true).await;
    // The handler published a follow-up on each of its two failed attempts: none of them
    // may show, not even to a reader of uncommitted data.
    assert_eq!(
        shipped(&kafka_common::read_for(&shipments, 3, true).await),
        [2],
        "read_committed"
    );
    assert_eq!(
        shipped(&kafka_common::read_for(&shipments, 1, false).await),
        [2],
        "read_uncommitted"
    );
    bus.shutdown().await;
}

/// Whether `bill` hangs on `seq` 2, standing for a member that dies mid-batch.
#[derive(Clone)]
struct Hang(bool);

#[derive(Clone, Default)]
struct Billed(Arc<Mutex<Vec<u64>>>);

#[subscribe(group = "billing")]
async fn bill(
    event: OrderPaid,
    ctx: Context,
    State(hang): State<Hang>,
    State(billed): State<Billed>,
) -> Result {
    if event.seq == 0 {
        return Err("card declined".into());
    }
    billed.0.lock().unwrap().push(event.seq);
    ctx.publish(&OrderShipped {
        order_id: event.order_id.clone(),
        seq: event.seq,
    })
    .await
    .map_err(|e| e.to_string())?;
    if hang.0 && event.seq == 2 {
        std::future::pending::<()>().await;
    }
    Ok(())
}

async fn billing(builder: &KafkaBuilder, hang: bool, billed: &Billed) -> EventBus {
    EventBus::builder()
        .transport(builder.clone().build().unwrap())
        .state(Hang(hang))
        .state(billed.clone())
        .backoff(Backoff::none())
        .handler(bill)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_short_by_a_crash_is_invisible_and_its_batch_is_handled_again_exactly_once() {
    // Every instance below is the same deployment restarted: same names, same
    // transactional ids, so a restarted member fences its crashed predecessor.
    let builder = kafka_common::builder("tx-crash")
        .transactional_group("billing")
        .transactional_id_prefix(format!("{}.", kafka_common::unique("tx-crash")))
        .delivery_timeout(Duration::from_secs(10))
        .start_from(StartFrom::Earliest);
    let kafka = builder.clone().build().unwrap();
    let shipments = kafka.kafka_topic("shipments");
    let publisher = EventBus::builder()
        .transport(kafka.clone())
        .start()
        .await
        .unwrap();
    // One key, so one partition and one batch: 0 is dead-lettered, 1 is handled and its
    // follow-up written in the batch's transaction, then the member hangs on 2 and dies.
    for seq in [0, 1, 2] {
        let paid = OrderPaid {
            order_id: "order-1".into(),
            seq,
        };
        publisher.publish(&paid).await.unwrap();
    }
    let crashing = {
        let builder = builder.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let bus = runtime.block_on(billing(&builder, true, &Billed::default()));
            (runtime, bus)
        })
        .join()
        .unwrap()
    };
    let written = kafka_common::read_topic(&shipments, 1, 30, false).await;
    assert_eq!(
        shipped(&written),
        [1],
        "the follow-up of 1 is written, uncommitted"
    );
    assert_eq!(
        shipped(&kafka_common::read_for(&shipments, 3, true).await),
        Vec::<u64>::new(),
        "an open transaction's output is invisible to read_committed"
    );
    let dead_letters = kafka.dead_letter_topic("orders", "billing");
    kafka_common::read_topic(&dead_letters, 1, 30, false).await;
    assert!(
        kafka_common::read_for(&dead_letters, 3, true).await.is_empty(),
        "the dead letter is written in the transaction, invisible until it commits"
    );
    std::thread::spawn(move || {
        let (runtime, bus) = crashing;
        // A crash: no shutdown, no commit, no abort.
        std::mem::forget(bus);
        runtime.shutdown_background();
    })
    .join()
    .unwrap();

    let billed = Billed::default();
    let restarted = billing(&builder, false, &billed).await;
    eventually(60, "the batch handled again", || {
        billed.0.lock().unwrap().contains(&2)
    })
    .await;
    kafka_common::read_topic(&shipments, 2, 60, true).await;
    assert_eq!(
        shipped(&kafka_common::read_for(&shipments, 3, true).await),
        [1, 2],
        "each follow-up exactly once to read_committed"
    );
    assert_eq!(
        kafka_common::read_for(&dead_letters, 3, true).await.len(),
        1,
        "the dead letter of the aborted batch is gone, the one of the batch handled again stays"
    );
    restarted.shutdown().await;

    // The offsets were committed with the transaction: a restarted group goes on after them.
    let billed = Billed::default();
    let again = billing(&builder, false, &billed).await;
    publisher
        .publish(&OrderPaid {
            order_id: "order-1".into(),
            seq: 3,
        })
        .await
        .unwrap();
    eventually(60, "the next event handled", || {
        billed.0.lock().unwrap().contains(&3)
    })
    .await;
    assert_eq!(*billed.0.lock().unwrap(), [3], "committed events handled again");
    again.shutdown().await;
    publisher.shutdown().await;
}

#[subscribe(group = "invoicing")]
async fn invoice(event: OrderPaid, tx: eventflow::Tx) -> Result {
    drop((event, tx));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tx_handler_in_a_transactional_group_is_refused_at_start() {
    let kafka = kafka_common::builder("tx-refused")
        .transactional_group("invoicing")
        .build()
        .unwrap();
    let started = EventBus::builder()
        .transport(kafka)
        .storage(MemoryStore::new())
        .handler(invoice)
        .start()
        .await;
    let Err(eventflow::Error::Config(message)) = started else {
        panic!(
            "a Tx handler in a Kafka transactional group started: {:?}",
            started.map(drop)
        );
    };
    assert!(
        message.contains("takes `Tx`") && message.contains("invoicing"),
        "the error should name the handler's Tx and the group: {message}"
    );
}
