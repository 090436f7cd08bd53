//! The Kafka transport against a real Kafka-protocol broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`): the transport conformance suite, dead-letter topics, foreign
//! messages, restarts and scaling of a group (transactional groups: `kafka_transactions.rs`).

mod kafka_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::{subscribe, Backoff, EventBus, MemoryStore, State};
use eventflow_kafka::rdkafka::message::Message;
use eventflow_kafka::rdkafka::producer::FutureRecord;
use eventflow_kafka::{headers, Kafka, StartFrom};
use eventflow_tests::{eventually, OrderPaid, Recorder};

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

/// The transport conformance suite, unchanged, on Kafka.
mod conformance {
    use super::kafka_common;

    eventflow::transport_conformance!(async { kafka_common::kafka("conformance") });
}
