//! RabbitMQ throughput through eventflow, side by side with raw lapin on the same broker.
//!
//! ```text
//! cargo bench -p eventflow-rabbitmq
//! AMQP_URL=amqp://... RABBITMQ_BENCH_EVENTS=20000 RABBITMQ_BENCH_ROUNDS=5 cargo bench -p eventflow-rabbitmq
//! ```
//!
//! Both sides use the same topology: a direct exchange and 4 durable quorum queues with a
//! single active consumer, the routing key picked from the event's key (murmur2).
//!
//! - **Publish**: N events with a ~60-byte JSON payload, all in flight at once, the clock
//!   stopping at the last publisher confirm. eventflow publishes `bus.publish(&event)`
//!   (JSON encoding, envelope, properties and headers, confirms); the baseline encodes the
//!   same event and hands lapin the same properties and headers (message id, type,
//!   content type, correlation id, timestamp, persistent, version, timestamp, key and
//!   `traceparent` headers) on a confirm-mode channel, then awaits every confirm.
//! - **Consume**: N events already in the queues, read by one group member with prefetch
//!   64 per queue and manual acks. eventflow runs a bus whose handler decodes each event
//!   (acks sent when the bus commits each batch); the baseline consumes the four queues
//!   with lapin, decodes each payload and acks each message. The clock runs from the first
//!   message handled to the last.
//!
//! Every round runs each side once, on fresh queues deleted afterwards; the report gives
//! the medians and the ratios. Targets: publish ≥ 0.9×, consume ≥ 0.8× the baseline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventflow::transport::partition_for_key;
use eventflow::{Event, EventBus, Handler, HandlerOptions};
use eventflow_rabbitmq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use eventflow_rabbitmq::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use eventflow_rabbitmq::lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use eventflow_rabbitmq::RabbitMq;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const QUEUES: u32 = 4;
const PREFETCH: u16 = 64;
const TOPIC: &str = "bench";

#[derive(Clone, Serialize, Deserialize)]
struct Paid {
    order_id: String,
    total_cents: u64,
    currency: String,
}

impl Event for Paid {
    const NAME: &'static str = "bench.paid";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = TOPIC;
    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

fn event(n: u64) -> Paid {
    Paid {
        order_id: format!("order-{}", n % 1000),
        total_cents: 1000 + n,
        currency: "EUR".into(),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this process (every thread) in microseconds, from /proc/self/stat.
fn cpu_micros() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks * 10_000.0
}

/// Runs `side`, returning its rate and this process's CPU time per event in µs.
async fn measured(events: u64, side: impl std::future::Future<Output = f64>) -> (f64, f64) {
    let before = cpu_micros();
    let rate = side.await;
    (rate, (cpu_micros() - before) / events as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn unique(side: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("bench-{side}-{}-{nanos}.", std::process::id())
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Declares the exchange and the quorum queues of `prefix` (as eventflow lays them out).
async fn declare(channel: &Channel, prefix: &str) -> Vec<String> {
    let exchange = format!("{prefix}{TOPIC}");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut queues = Vec::new();
    for index in 0..QUEUES {
        let queue = format!("{prefix}raw.{TOPIC}.{index}");
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), text("quorum"));
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), options, arguments)
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                index.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queues.push(queue);
    }
    queues
}

async fn delete(channel: &Channel, queues: &[String]) {
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// What a raw user writes to send the metadata eventflow sends.
fn raw_properties(key: &str) -> BasicProperties {
    let id = uuid::Uuid::now_v7();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut headers = BTreeMap::new();
    headers.insert(ShortString::from("eventflow-version"), AMQPValue::LongUInt(1));
    headers.insert(
        ShortString::from("eventflow-timestamp"),
        AMQPValue::LongLongInt(now.as_nanos() as i64),
    );
    headers.insert(ShortString::from("eventflow-key"), text(key));
    let trace = format!("00-{}-{:016x}-01", id.simple(), id.as_u128() as u64);
    headers.insert(ShortString::from("traceparent"), text(&trace));
    BasicProperties::default()
        .with_message_id(id.to_string().into())
        .with_type(Paid::NAME.into())
        .with_content_type("application/json".into())
        .with_correlation_id(id.to_string().into())
        .with_timestamp(now.as_secs())
        .with_delivery_mode(2)
        .with_headers(FieldTable::from(headers))
}

/// Publishes `events` raw, all in flight, and waits for every confirm.
async fn raw_publish(channel: &Channel, prefix: &str, events: u64) {
    let exchange = ShortString::from(format!("{prefix}{TOPIC}"));
    let mut confirms = Vec::with_capacity(events as usize);
    for n in 0..events {
        let paid = event(n);
        let payload = serde_json::to_vec(&paid).unwrap();
        let routing = partition_for_key(paid.order_id.as_bytes(), QUEUES).to_string();
        let confirm = channel
            .basic_publish(
                exchange.clone(),
                routing.into(),
                BasicPublishOptions::default(),
                &payload,
                raw_properties(&paid.order_id),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack(), "the broker refused a message");
    }
}

async fn raw_channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("no RabbitMQ at `{url}` ({e}); start one (scripts/test does) or set AMQP_URL")
        });
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

async fn bench_raw_publish(url: &str, events: u64) -> f64 {
    let (connection, channel) = raw_channel(url).await;
    let prefix = unique("raw");
    let queues = declare(&channel, &prefix).await;
    let started = Instant::now();
    raw_publish(&channel, &prefix, events).await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    delete(&channel, &queues).await;
    let _ = connection.close(200, "done".into()).await;
    rate
}

async fn bench_eventflow_publish(url: &str, events: u64) -> f64 {
    let prefix = unique("eventflow");
    let rabbit = RabbitMq::builder(url)
        .prefix(&prefix)
        .queues_per_group(QUEUES)
        .build()
        .unwrap();
    // Queues like the baseline's, so the broker stores the same messages.
    let (connection, channel) = raw_channel(url).await;
    let queues = declare(&channel, &prefix).await;
    let bus = EventBus::builder().transport(rabbit).start().await.unwrap();
    bus.publish(&event(0)).await.unwrap(); // connects and declares outside the clock
    let started = Instant::now();
    let publishes: Vec<_> = (0..events).map(|n| (n, bus.clone())).collect();
    let results = futures_util::future::join_all(
        publishes
            .iter()
            .map(|(n, bus)| async move { bus.publish(&event(*n)).await }),
    )
    .await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    assert!(results.iter().all(Result::is_ok), "a publish failed");
    bus.shutdown().await;
    delete(&channel, &queues).await;
    let _ = connection.close(200, "done".into()).await;
    rate
}

/// Times from the first to the last of `events` handled.
#[derive(Clone, Default)]
struct Clock {
    handled: Arc<AtomicU64>,
    first: Arc<Mutex<Option<Instant>>>,
    last: Arc<Mutex<Option<Instant>>>,
}

impl Clock {
    fn tick(&self, events: u64) {
        let n = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == 1 {
            *self.first.lock().unwrap() = Some(Instant::now());
        }
        if n == events {
            *self.last.lock().unwrap() = Some(Instant::now());
        }
    }

    async fn rate(&self, events: u64) -> f64 {
        while self.last.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = self.first.lock().unwrap().unwrap();
        let last = self.last.lock().unwrap().unwrap();
        events as f64 / (last - first).as_secs_f64()
    }
}

async fn bench_raw_consume(url: &str, events: u64) -> f64 {
    let (connection, channel) = raw_channel(url).await;
    let prefix = unique("raw");
    let queues = declare(&channel, &prefix).await;
    raw_publish(&channel, &prefix, events).await;
    let consuming = connection.create_channel().await.unwrap();
    consuming
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut streams = Vec::new();
    for queue in &queues {
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        streams.push((channel, consumer));
    }
    let clock = Clock::default();
    let mut merged = futures_util::stream::select_all(streams.iter_mut().map(|(_, c)| c));
    while clock.handled.load(Ordering::Acquire) < events {
        let delivery = merged.next().await.unwrap().unwrap();
        let paid: Paid = serde_json::from_slice(&delivery.data).unwrap();
        std::hint::black_box(&paid);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        clock.tick(events);
    }
    drop(merged);
    let rate = clock.rate(events).await;
    delete(&channel, &queues).await;
    let _ = connection.close(200, "done".into()).await;
    rate
}

/// The strict baseline: a task per queue, each acknowledging every 32 messages at once
/// (`multiple`), as eventflow acknowledges a polled batch.
async fn bench_raw_consume_batched_acks(url: &str, events: u64) -> f64 {
    let (connection, channel) = raw_channel(url).await;
    let prefix = unique("raw");
    let queues = declare(&channel, &prefix).await;
    raw_publish(&channel, &prefix, events).await;
    let clock = Clock::default();
    let mut tasks = Vec::new();
    for queue in &queues {
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let clock = clock.clone();
        tasks.push(tokio::spawn(async move {
            let mut unacked = 0;
            while clock.handled.load(Ordering::Acquire) < events {
                let next = tokio::time::timeout(Duration::from_millis(20), consumer.next()).await;
                let Ok(Some(delivery)) = next else {
                    continue;
                };
                let delivery = delivery.unwrap();
                let paid: Paid = serde_json::from_slice(&delivery.data).unwrap();
                std::hint::black_box(&paid);
                clock.tick(events);
                unacked += 1;
                if unacked == 32 || clock.handled.load(Ordering::Acquire) >= events {
                    delivery.ack(BasicAckOptions { multiple: true }).await.unwrap();
                    unacked = 0;
                }
            }
            drop(channel);
        }));
    }
    let rate = clock.rate(events).await;
    for task in tasks {
        let _ = task.await;
    }
    delete(&channel, &queues).await;
    let _ = connection.close(200, "done".into()).await;
    rate
}

struct Counting(Clock, u64);

impl Handler for Counting {
    type Event = Paid;

    fn options(&self) -> HandlerOptions {
        HandlerOptions::new("bench::counting", "raw")
    }

    fn call(
        &self,
        event: Paid,
        _ctx: eventflow::Context,
    ) -> impl std::future::Future<Output = Result<(), eventflow::BoxError>> + Send + 'static {
        std::hint::black_box(&event);
        self.0.tick(self.1);
        std::future::ready(Ok(()))
    }
}

async fn bench_eventflow_consume(url: &str, events: u64) -> f64 {
    let prefix = unique("eventflow");
    let rabbit = RabbitMq::builder(url)
        .prefix(&prefix)
        .queues_per_group(QUEUES)
        .prefetch(PREFETCH)
        .build()
        .unwrap();
    let (connection, channel) = raw_channel(url).await;
    // The group's queues exist once a bus of the group started; stop it, fill them.
    let warmup = Clock::default();
    let bus = EventBus::builder()
        .transport(rabbit.clone())
        .handler(Counting(warmup, u64::MAX))
        .start()
        .await
        .unwrap();
    bus.shutdown().await;
    raw_publish(&channel, &prefix, events).await;
    let clock = Clock::default();
    let bus = EventBus::builder()
        .transport(rabbit.clone())
        .handler(Counting(clock.clone(), events))
        .start()
        .await
        .unwrap();
    let rate = clock.rate(events).await;
    bus.shutdown().await;
    let queues: Vec<String> = (0..QUEUES).map(|i| rabbit.queue("raw", TOPIC, i)).collect();
    delete(&channel, &queues).await;
    let _ = connection.close(200, "done".into()).await;
    rate
}

#[tokio::main]
async fn main() {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| eventflow_rabbitmq::DEFAULT_URL.to_owned());
    let events = env_number("RABBITMQ_BENCH_EVENTS", 10_000);
    let rounds = env_number("RABBITMQ_BENCH_ROUNDS", 7) as usize;
    println!("RabbitMQ at {url}: {events} events per run, {rounds} rounds, {QUEUES} quorum queues");
    println!("(CPU: this process, every thread, per event; it includes the setup of each run)");
    const SIDES: [&str; 5] = [
        "publish  raw lapin",
        "publish  eventflow",
        "consume  raw lapin, ack per message",
        "consume  raw lapin, acks batched (multiple)",
        "consume  eventflow",
    ];
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); SIDES.len()];
    for round in 0..rounds {
        // The order rotates, so neither side always runs on a warmer broker.
        for step in 0..SIDES.len() {
            let side = (step + round) % SIDES.len();
            let result = match side {
                0 => measured(events, bench_raw_publish(&url, events)).await,
                1 => measured(events, bench_eventflow_publish(&url, events)).await,
                2 => measured(events, bench_raw_consume(&url, events)).await,
                3 => measured(events, bench_raw_consume_batched_acks(&url, events)).await,
                _ => measured(events, bench_eventflow_consume(&url, events)).await,
            };
            results[side].push(result);
        }
        let line: Vec<String> = SIDES
            .iter()
            .zip(&results)
            .map(|(name, r)| {
                format!(
                    "{}: {:.0}/s",
                    name.split_whitespace().collect::<Vec<_>>().join(" "),
                    r[round].0
                )
            })
            .collect();
        println!("round {}: {}", round + 1, line.join("; "));
    }
    println!("medians over {rounds} rounds:");
    let mut medians = Vec::new();
    for (name, runs) in SIDES.iter().zip(&results) {
        let mut rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let (rate, cpu) = (median(&mut rates), median(&mut cpu));
        println!("  {name:<45} {rate:>8.0} ev/s  {cpu:>6.1} us CPU/event");
        medians.push(rate);
    }
    // Rates drift with the machine's load over a run; the ratio within each round, where
    // both sides ran back to back, drifts less.
    let mut paired: Vec<f64> = results[1]
        .iter()
        .zip(&results[0])
        .map(|(e, r)| e.0 / r.0)
        .collect();
    println!(
        "  publish with confirms: eventflow / raw = {:.2} (medians), {:.2} (median of the rounds' ratios) (target >= 0.90)",
        medians[1] / medians[0],
        median(&mut paired)
    );
    println!(
        "  consume with manual acks: eventflow / raw per-message acks = {:.2}, / raw batched acks = {:.2} (target >= 0.80)",
        medians[4] / medians[2],
        medians[4] / medians[3]
    );
}
