//! Poison on the real Kafka broker (`KAFKA_BROKERS`, default `127.0.0.1:9092`): an event
//! over Kafka's size limit committed through a unit of work amid small ones, refused by
//! librdkafka before sending or by the broker; sequenced dead letters of a group; and
//! mangled messages that are not eventflow events, every one listed by the bus.

mod kafka_common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, Backoff, Event, EventBus, MemoryStore, Relay, State};
use eventflow_kafka::rdkafka::message::{Header, OwnedHeaders};
use eventflow_kafka::rdkafka::producer::FutureRecord;
use eventflow_kafka::{headers, Kafka};
use eventflow_tests::{eventually, within, OrderPaid, Recorder};
use serde::{Deserialize, Serialize};

/// An `order.paid` with a large attachment; `OrderPaid` handlers read it (the extra field
/// is ignored).
#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 1, topic = "orders")]
struct PaidWithAttachment {
    #[event(key)]
    order_id: String,
    seq: u64,
    attachment: String,
}

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    rec.record("inventory", &event);
    Ok(())
}

fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

/// Commits a 3 MB event, then five small ones of other keys, in one unit of work; the five
/// are handled promptly and the big one becomes a dead letter of the relay saying why.
async fn a_big_event_is_dead_lettered_and_the_others_delivered(kafka: Kafka) {
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(kafka)
        .storage(MemoryStore::new())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let mut work = bus.begin().await.unwrap();
    work.publish(&PaidWithAttachment {
        order_id: "order-big".into(),
        seq: 0,
        attachment: "x".repeat(3 * 1024 * 1024),
    })
    .await
    .unwrap();
    for seq in 1..=5 {
        work.publish(&OrderPaid {
            order_id: format!("order-{seq}"),
            seq,
        })
        .await
        .unwrap();
    }
    work.commit().await.unwrap();
    eventually(30, "the five small events", || rec.seen("inventory").len() == 5).await;
    let handled = started.elapsed();
    println!("the five small events were handled {handled:?} after the commit");
    assert!(handled < Duration::from_secs(15), "took {handled:?}");
    assert_eq!(rec.sorted_seqs("inventory"), [1, 2, 3, 4, 5]);
    let letters = within(10, "the big event's dead letter", async {
        loop {
            let letters = bus.dead_letters(Some(Relay::DEAD_LETTER_GROUP)).await.unwrap();
            if !letters.is_empty() {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.envelope.key.as_deref(), Some("order-big"));
    assert!(
        letter.envelope.payload.len() > 3 * 1024 * 1024,
        "the event is kept whole"
    );
    for expected in [
        "MessageSizeTooLarge",
        "message.max.bytes",
        "smaller or split it",
        "replay",
    ] {
        assert!(
            letter.error.contains(expected),
            "`{expected}` in: {}",
            letter.error
        );
    }
    // The relay goes on.
    let mut work = bus.begin().await.unwrap();
    work.publish(&OrderPaid {
        order_id: "order-6".into(),
        seq: 6,
    })
    .await
    .unwrap();
    work.commit().await.unwrap();
    eventually(30, "an event committed after the big one", || {
        rec.seen("inventory").len() == 6
    })
    .await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_librdkafka_refuses_as_too_large_is_dead_lettered_and_the_others_delivered() {
    a_big_event_is_dead_lettered_and_the_others_delivered(kafka_common::kafka("too-large-local")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_broker_refuses_as_too_large_is_dead_lettered_and_the_others_delivered() {
    // The producer's own limit above the broker's (1 MB by default): the broker refuses it.
    let kafka = kafka_common::builder("too-large-broker")
        .producer_config("message.max.bytes", "10000000")
        .build()
        .unwrap();
    a_big_event_is_dead_lettered_and_the_others_delivered(kafka).await;
}

/// Keys the CRM refuses while they are in the set.
#[derive(Clone, Default)]
struct Refused(Arc<Mutex<HashSet<String>>>);

#[subscribe(group = "crm", retries = 0)]
async fn crm(
    event: OrderPaid,
    State(rec): State<Recorder>,
    State(refused): State<Refused>,
) -> Result<(), String> {
    if refused.0.lock().unwrap().contains(&event.order_id) {
        return Err(format!("CRM refuses {}", event.order_id));
    }
    rec.record("crm", &event);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequenced_group_parks_later_events_of_a_dead_lettered_key_on_kafka() {
    let (rec, refused) = (Recorder::default(), Refused::default());
    refused.0.lock().unwrap().insert("k".into());
    let bus = EventBus::builder()
        .transport(kafka_common::kafka("sequenced"))
        .backoff(quick())
        .state(rec.clone())
        .state(refused.clone())
        .handler(crm)
        .sequenced_dead_letters("crm")
        .start()
        .await
        .unwrap();
    let publish = |key: &str, seq| {
        let (bus, event) = (
            bus.clone(),
            OrderPaid {
                order_id: key.into(),
                seq,
            },
        );
        async move { bus.publish(&event).await.unwrap() }
    };
    publish("k", 1).await;
    within(30, "event 1 dead-lettered", async {
        while bus.dead_letters(Some("crm")).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    refused.0.lock().unwrap().clear();
    publish("k", 2).await;
    publish("other", 3).await;
    publish("k", 4).await;
    eventually(30, "the other key", || !rec.seen("crm").is_empty()).await;
    within(30, "events 2 and 4 parked", async {
        while bus.dead_letters(Some("crm")).await.unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        rec.seen("crm"),
        [("other".to_owned(), 3)],
        "nothing of `k` overtook event 1"
    );
    let letters = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(letters[1].parked_behind(), Some(letters[0].id));
    assert_eq!(letters[2].parked_behind(), Some(letters[0].id));

    bus.replay_dead_letter(letters[0].id).await.unwrap();
    let of_k: Vec<u64> = rec
        .seen("crm")
        .into_iter()
        .filter(|(key, _)| key == "k")
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(of_k, [1, 2, 4], "released in order");
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mangled_message_is_listed_by_the_bus_raw_with_its_reason() {
    let kafka = kafka_common::kafka("mangled");
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(kafka.clone())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    let topic = kafka.kafka_topic("orders");
    let foreign = kafka_common::foreign_producer(&kafka);
    const BARE: usize = 20;
    const BAD_HEADER: usize = 10;
    for i in 0..BARE + BAD_HEADER {
        let key = format!("key-{i}");
        let payload = format!("\u{fffd}garbage {i}").into_bytes();
        let mut record = FutureRecord::to(&topic).key(&key).payload(&payload);
        if i >= BARE {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: headers::EVENTFLOW,
                value: Some("not=the;format"),
            }));
        }
        foreign.send(record, Duration::from_secs(10)).await.unwrap();
    }
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
    let letters = within(30, "every mangled message listed", async {
        loop {
            let letters = bus.dead_letters(Some("inventory")).await.unwrap();
            if letters.len() >= BARE + BAD_HEADER {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(letters.len(), BARE + BAD_HEADER);
    let ids: HashSet<_> = letters.iter().map(|l| l.id).collect();
    assert_eq!(ids.len(), letters.len(), "one letter per message");
    for letter in &letters {
        assert!(letter.is_foreign(), "{letter:?}");
        assert_eq!(letter.envelope.content_type, "application/octet-stream");
        assert!(
            letter.error.contains("not an eventflow event"),
            "{}",
            letter.error
        );
        assert!(
            String::from_utf8_lossy(&letter.envelope.payload).contains("garbage"),
            "kept raw"
        );
        assert_eq!(
            letter.envelope.headers.get(headers::ORIGIN_TOPIC),
            Some(topic.as_str())
        );
        assert!(letter.envelope.headers.contains_key(headers::ORIGIN_OFFSET));
    }
    // The dead-letter topic holds them too, as before.
    let dlq = kafka_common::read_topic(
        &kafka.dead_letter_topic("orders", "inventory"),
        BARE + BAD_HEADER,
        30,
        true,
    )
    .await;
    assert_eq!(dlq.len(), BARE + BAD_HEADER);
    bus.shutdown().await;
}
