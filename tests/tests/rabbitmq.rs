//! The RabbitMQ transport against a real RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`): the transport conformance suite, the AMQP
//! message an event travels in, dead-letter queues, foreign messages, and scaling a group.

mod rabbitmq_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::{subscribe, Backoff, EventBus, MemoryStore, State};
use eventflow_rabbitmq::lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use eventflow_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use eventflow_rabbitmq::lapin::{BasicProperties, Channel};
use eventflow_rabbitmq::{properties, RabbitMq};
use eventflow_tests::{eventually, OrderPaid, Recorder};

mod conformance {
    eventflow::transport_conformance!(super::rabbitmq_common::rabbit("conformance"));
}

type Result = std::result::Result<(), String>;

fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?.clone();
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        other => format!("{other:?}"),
    })
}

/// Takes the next message of `queue`, waiting up to 30 s for one.
async fn next_message(channel: &Channel, queue: &str) -> eventflow_rabbitmq::lapin::message::BasicGetMessage {
    for _ in 0..300 {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("reading the queue");
        if let Some(message) = got {
            return message;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no message arrived on queue `{queue}` within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_travels_with_its_metadata_in_amqp_properties_and_headers() {
    let rabbit = rabbitmq_common::rabbit("properties").await;
    let (_connection, channel) = rabbitmq_common::channel().await;
    // A queue of our own on the topic's exchange, bound to every queue number.
    let publisher = EventBus::builder()
        .transport(rabbit.clone())
        .start()
        .await
        .unwrap();
    let paid = OrderPaid {
        order_id: "order-1".into(),
        seq: 1,
    };
    publisher.publish(&paid).await.unwrap(); // declares the exchange
    let tap = format!("{}.tap", rabbit.exchange("orders"));
    channel
        .queue_declare(
            tap.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for index in 0..rabbit.queues_per_group() {
        channel
            .queue_bind(
                tap.as_str().into(),
                rabbit.exchange("orders").into(),
                index.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let id = publisher.publish(&paid).await.unwrap();
    let message = next_message(&channel, &tap).await;
    let props = &message.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|m| m.to_string()),
        Some(id.to_string())
    );
    assert_eq!(
        props.kind().as_ref().map(|k| k.to_string()).as_deref(),
        Some("order.paid")
    );
    assert_eq!(
        props.content_type().as_ref().map(|c| c.to_string()).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        props.correlation_id().as_ref().map(|c| c.to_string()),
        Some(id.to_string()),
        "an event that starts a flow is its own correlation"
    );
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert!(props.timestamp().is_some_and(|t| t > 1_700_000_000));
    assert_eq!(header(props, properties::KEY).as_deref(), Some("order-1"));
    assert_eq!(header(props, properties::VERSION).as_deref(), Some("1"));
    let traceparent = header(props, "traceparent").expect("a traceparent header");
    assert!(traceparent.starts_with("00-"), "W3C trace context: {traceparent}");
    let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body["order_id"], "order-1");
    publisher.shutdown().await;
}

#[subscribe(group = "crm", retries = 1)]
async fn crm(event: OrderPaid) -> Result {
    Err(format!("CRM rejected {}", event.order_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_event_lands_on_the_groups_dead_letter_queue() {
    let rabbit = rabbitmq_common::rabbit("dlq").await;
    let bus = EventBus::builder()
        .transport(rabbit.clone())
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
    let (_connection, channel) = rabbitmq_common::channel().await;
    let letter = next_message(&channel, &rabbit.dead_letter_queue("crm")).await;
    let props = &letter.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|m| m.to_string()),
        Some(id.to_string())
    );
    assert_eq!(header(props, properties::GROUP).as_deref(), Some("crm"));
    assert_eq!(header(props, properties::ATTEMPTS).as_deref(), Some("2"));
    assert_eq!(header(props, properties::ORIGIN_TOPIC).as_deref(), Some("orders"));
    let error = header(props, properties::ERROR).unwrap();
    assert!(error.contains("CRM rejected order-7"), "{error}");
    let stored = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(stored.len(), 1, "the bus's dead-letter store has it too");
    assert_eq!(stored[0].envelope.id, id);
    bus.shutdown().await;
}

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("inventory", &event);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_eventflow_event_is_dead_lettered_with_the_reason() {
    let rabbit = rabbitmq_common::rabbit("foreign").await;
    let recorder = Recorder::default();
    let bus = EventBus::builder()
        .transport(rabbit.clone())
        .state(recorder.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    let (_connection, channel) = rabbitmq_common::channel().await;
    for index in 0..rabbit.queues_per_group() {
        channel
            .basic_publish(
                rabbit.exchange("orders").into(),
                index.to_string().into(),
                BasicPublishOptions::default(),
                b"hello from a shell script",
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    for seq in 0..6 {
        let paid = OrderPaid {
            order_id: format!("order-{seq}"),
            seq,
        };
        bus.publish(&paid).await.unwrap();
    }
    eventually(30, "the events after the foreign messages to be handled", || {
        recorder.sorted_seqs("inventory").len() == 6
    })
    .await;
    let dlq = rabbit.dead_letter_queue("inventory");
    for _ in 0..rabbit.queues_per_group() {
        let letter = next_message(&channel, &dlq).await;
        assert_eq!(&letter.delivery.data[..], b"hello from a shell script");
        let props = &letter.delivery.properties;
        let error = header(props, properties::ERROR).unwrap();
        assert!(error.contains("message-id"), "the reason: {error}");
        assert_eq!(header(props, properties::ATTEMPTS).as_deref(), Some("0"));
        let queue = header(props, properties::ORIGIN_QUEUE).unwrap();
        assert!(
            queue.starts_with(&rabbit.queue("inventory", "orders", 0)[..queue.len() - 1]),
            "{queue}"
        );
    }
    bus.shutdown().await;
}

#[derive(Clone, Default)]
struct Effects(Arc<Mutex<HashMap<u64, u32>>>);

#[subscribe(group = "ledger")]
async fn ledger(event: OrderPaid, State(effects): State<Effects>) -> Result {
    *effects.0.lock().unwrap().entry(event.seq).or_default() += 1;
    Ok(())
}

async fn ledger_instance(rabbit: &RabbitMq, store: &MemoryStore, effects: &Effects) -> EventBus {
    EventBus::builder()
        .transport(rabbit.clone())
        .storage(store.clone())
        .state(effects.clone())
        .handler(ledger)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_group_from_one_to_three_instances_and_back_loses_and_doubles_nothing() {
    let rabbit = rabbitmq_common::rabbit("scaling").await;
    // One database for every instance, as in production: its inbox absorbs redelivery.
    let store = MemoryStore::new();
    let effects = Effects::default();
    let publisher = EventBus::builder()
        .transport(rabbit.clone())
        .start()
        .await
        .unwrap();
    let mut instances = vec![ledger_instance(&rabbit, &store, &effects).await];
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
        instances.push(ledger_instance(&rabbit, &store, &effects).await);
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
