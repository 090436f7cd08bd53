//! The Kafka transport against a real Kafka-protocol broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`): the transport conformance suite, dead-letter topics, foreign
//! messages, restarts and scaling of a group, transactional groups.

mod kafka_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::{subscribe, Backoff, Context, Event, EventBus, MemoryStore, State};
use eventflow_kafka::rdkafka::message::Message;
use eventflow_kafka::rdkafka::producer::FutureRecord;
use eventflow_kafka::{headers, Kafka, KafkaBuilder, StartFrom};
use eventflow_tests::{eventually, OrderPaid, Recorder};
use serde::{Deserialize, Serialize};

type Result = std::result::Result<(), String>;

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("inventory", &event);
    Ok(())
}

/// A bus on `kafka` whose `inventory` group records what it handles in `rec`.
async fn inventory_bus(kafka: &Kafka, rec: &Recorder) -> EventBus {
    EventBus::builder()
        .transport(kafka.clone())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap()
}

fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

#[subscribe(group = "crm", retries = 1)]
async fn crm(event: OrderPaid) -> Result {
    Err(format!("CRM rejected {}", event.order_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_event_lands_on_the_groups_dead_letter_topic() {
    let kafka = kafka_common::kafka("dlq");
    let bus = EventBus::builder()
        .transport(kafka.clone())
        .backoff(quick())
        .handler(crm)
        .start()
        .await
        .unwrap();
    let paid = OrderPaid {
        order_id: "order-7".into(),
        seq: 7,
    };
    let id = bus.publish(&paid).await.unwrap();

    let dlq = kafka.dead_letter_topic("orders", "crm");
    assert_eq!(dlq, format!("{}.crm.dlq", kafka.kafka_topic("orders")));
    let messages = kafka_common::read_topic(&dlq, 1, 30, true).await;
    let letter = &messages[0];
    let header = |name| kafka_common::header(letter, name);
    assert_eq!(header(headers::ID), Some(id.to_string()));
    assert_eq!(header(headers::NAME).as_deref(), Some("order.paid"));
    assert_eq!(header(headers::GROUP).as_deref(), Some("crm"));
    assert_eq!(header(headers::ATTEMPTS).as_deref(), Some("2"));
    assert_eq!(header(headers::ORIGIN_TOPIC), Some(kafka.kafka_topic("orders")));
    assert!(
        header(headers::ERROR).unwrap().contains("CRM rejected order-7"),
        "{:?}",
        header(headers::ERROR)
    );
    assert_eq!(letter.key(), Some(&b"order-7"[..]), "the key is kept");
    let payload: OrderPaid = serde_json::from_slice(letter.payload().unwrap()).unwrap();
    assert_eq!(payload, paid, "the payload is kept");
    assert_eq!(bus.dead_letters(Some("crm")).await.unwrap().len(), 1);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_eventflow_event_is_dead_lettered_with_the_reason() {
    let kafka = kafka_common::kafka("foreign");
    let rec = Recorder::default();
    let bus = inventory_bus(&kafka, &rec).await;
    // A producer that knows nothing of eventflow writes to the topic.
    let topic = kafka.kafka_topic("orders");
    let foreign = kafka_common::foreign_producer(&kafka);
    foreign
        .send(
            FutureRecord::to(&topic)
                .key("order-1")
                .payload(&b"\xff\x00garbage"[..]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    bus.publish(&OrderPaid {
        order_id: "order-1".into(),
        seq: 1,
    })
    .await
    .unwrap();
    eventually(30, "the real event after the garbage", || {
        rec.seen("inventory").len() == 1
    })
    .await;

    let messages =
        kafka_common::read_topic(&kafka.dead_letter_topic("orders", "inventory"), 1, 30, true).await;
    let letter = &messages[0];
    let header = |name| kafka_common::header(letter, name);
    let error = header(headers::ERROR).unwrap();
    assert!(error.contains("not an eventflow event"), "{error}");
    assert!(error.contains("no headers"), "{error}");
    assert_eq!(header(headers::ATTEMPTS).as_deref(), Some("0"));
    assert_eq!(header(headers::ORIGIN_TOPIC), Some(topic));
    assert!(header(headers::ORIGIN_OFFSET).is_some());
    assert_eq!(
        letter.payload(),
        Some(&b"\xff\x00garbage"[..]),
        "the bytes are kept as they were"
    );
    assert_eq!(rec.seen("inventory"), [("order-1".to_owned(), 1)]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_eventflow_header_is_dead_lettered_with_what_is_wrong_in_it() {
    use eventflow_kafka::rdkafka::message::{Header, OwnedHeaders};
    let kafka = kafka_common::kafka("garbled");
    let rec = Recorder::default();
    let bus = inventory_bus(&kafka, &rec).await;
    // A hand-written producer gets the header wrong: bytes that are no id, then a name
    // that is not UTF-8; the key is the real event's, so all land on one partition in order.
    let topic = kafka.kafka_topic("orders");
    let producer = kafka_common::foreign_producer(&kafka);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let garbled: [&[u8]; 2] = [
        b"1;\xff\xfe\x00;order.paid;1;;;;application/json",
        &[
            format!("1;{id};").as_bytes(),
            b"order.\xc3(;1;;;;application/json",
        ]
        .concat(),
    ];
    for value in garbled {
        let headers = OwnedHeaders::new().insert(Header {
            key: headers::EVENTFLOW,
            value: Some(value),
        });
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("order-1")
                    .headers(headers)
                    .payload(r#"{"order_id":"order-1","seq":0}"#),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    bus.publish(&OrderPaid {
        order_id: "order-1".into(),
        seq: 1,
    })
    .await
    .unwrap();
    eventually(30, "the real event after the garbled ones", || {
        rec.seen("inventory").len() == 1
    })
    .await;
    let letters =
        kafka_common::read_topic(&kafka.dead_letter_topic("orders", "inventory"), 2, 30, true).await;
    let errors: Vec<String> = letters
        .iter()
        .map(|letter| kafka_common::header(letter, headers::ERROR).unwrap())
        .collect();
    assert!(
        errors[0].contains("the id in header `eventflow` is not a UUID"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("the name in header `eventflow` is not UTF-8"),
        "{errors:?}"
    );
    assert_eq!(rec.seen("inventory"), [("order-1".to_owned(), 1)]);
    bus.shutdown().await;
}

#[derive(Clone, Default)]
struct Effects(Arc<Mutex<HashMap<u64, u32>>>);

#[subscribe(group = "ledger")]
async fn ledger(event: OrderPaid, State(effects): State<Effects>) -> Result {
    *effects.0.lock().unwrap().entry(event.seq).or_default() += 1;
    Ok(())
}

async fn ledger_instance(kafka: &Kafka, store: &MemoryStore, effects: &Effects) -> EventBus {
    EventBus::builder()
        .transport(kafka.clone())
        .storage(store.clone())
        .state(effects.clone())
        .handler(ledger)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_group_from_one_to_three_instances_and_back_loses_and_doubles_nothing() {
    let kafka = kafka_common::kafka("scaling");
    // One database for every instance, as in production: its inbox absorbs redelivery.
    let store = MemoryStore::new();
    let effects = Effects::default();
    let publisher = EventBus::builder()
        .transport(kafka.clone())
        .start()
        .await
        .unwrap();
    let mut instances = vec![ledger_instance(&kafka, &store, &effects).await];
    let total = 900u64;
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for seq in 0..total {
                let paid = OrderPaid {
                    order_id: format!("order-{}", seq % 31),
                    seq,
                };
                publisher.publish(&paid).await.unwrap();
                if seq % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    let handled = |effects: &Effects| effects.0.lock().unwrap().len() as u64;
    eventually(60, "a first share handled by one instance", || {
        handled(&effects) >= 100
    })
    .await;
    for _ in 0..2 {
        instances.push(ledger_instance(&kafka, &store, &effects).await);
    }
    eventually(60, "more handled by three instances", || handled(&effects) >= 400).await;
    for instance in instances.drain(1..) {
        instance.shutdown().await;
    }
    publishing.await.unwrap();
    eventually(60, "every event handled", || handled(&effects) >= total).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let effects = effects.0.lock().unwrap().clone();
    assert_eq!(effects.len() as u64, total, "events lost");
    let doubled: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "effects applied more than once: {doubled:?}");
    for instance in instances {
        instance.shutdown().await;
    }
    publisher.shutdown().await;
}

/// The lag of `group` on `orders`, once it settles at `expected` (commits are asynchronous).
async fn settled_lag(kafka: &Kafka, expected: u64) -> u64 {
    let mut lag = u64::MAX;
    for _ in 0..100 {
        lag = kafka.lag("orders", "ledger").await.unwrap();
        if lag == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_the_events_a_group_has_not_committed() {
    let kafka = kafka_common::builder("lag")
        .start_from(StartFrom::Earliest)
        .build()
        .unwrap();
    let publisher = EventBus::builder()
        .transport(kafka.clone())
        .start()
        .await
        .unwrap();
    let publish = |seqs: std::ops::Range<u64>| {
        let publisher = publisher.clone();
        async move {
            for seq in seqs {
                let order_id = format!("order-{seq}");
                publisher.publish(&OrderPaid { order_id, seq }).await.unwrap();
            }
        }
    };
    publish(0..7).await;
    assert_eq!(
        kafka.lag("orders", "ledger").await.unwrap(),
        7,
        "a group that never ran, starting from the earliest, is behind by every event"
    );

    let (store, effects) = (MemoryStore::new(), Effects::default());
    let instance = ledger_instance(&kafka, &store, &effects).await;
    eventually(30, "the group to handle the backlog", || {
        effects.0.lock().unwrap().len() == 7
    })
    .await;
    assert_eq!(settled_lag(&kafka, 0).await, 0, "a group that handled everything");
    instance.shutdown().await;

    publish(7..10).await;
    assert_eq!(
        settled_lag(&kafka, 3).await,
        3,
        "published while the group was down"
    );
    assert_eq!(kafka.lag("no-such-topic", "ledger").await.unwrap(), 0);
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_failed_for_good_is_replaced_and_publishing_goes_on() {
    use eventflow_kafka::rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
    use eventflow_kafka::rdkafka::producer::Producer;

    let kafka = kafka_common::kafka("fatal");
    let (store, effects) = (MemoryStore::new(), Effects::default());
    let bus = ledger_instance(&kafka, &store, &effects).await;
    let paid = |seq: u64| OrderPaid {
        order_id: format!("order-{seq}"),
        seq,
    };
    bus.publish(&paid(0)).await.unwrap();

    // librdkafka's hook for the fatal error its idempotent producer raises when it can no
    // longer keep its guarantees; the producer produces nothing after it.
    let producer = kafka.producer();
    // SAFETY: a live client handle and a NUL-terminated reason.
    unsafe {
        rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            c"injected by the test".as_ptr(),
        );
    }
    assert!(producer.client().fatal_error().is_some());
    drop(producer);

    let failed = bus.publish(&paid(1)).await;
    assert!(
        failed.is_err(),
        "the publish that met the failed producer reports it"
    );
    for seq in 1..4 {
        bus.publish(&paid(seq)).await.unwrap();
    }
    assert!(kafka.producer().client().fatal_error().is_none());
    eventually(30, "every event handled", || effects.0.lock().unwrap().len() == 4).await;
    bus.shutdown().await;
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

/// The transport conformance suite, unchanged, on Kafka.
mod conformance {
    use super::kafka_common;

    eventflow::transport_conformance!(async { kafka_common::kafka("conformance") });
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
