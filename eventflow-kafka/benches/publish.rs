//! Kafka throughput through eventflow, side by side with raw rdkafka on the same broker.
//!
//! ```text
//! cargo bench -p eventflow-kafka --bench publish
//! KAFKA_BROKERS=host:9092 KAFKA_BENCH_EVENTS=50000 KAFKA_BENCH_ROUNDS=3 cargo bench -p eventflow-kafka --bench publish
//! ```
//!
//! Publish: N events with a 100-byte payload, all in flight at once, the clock stopping
//! at the last broker acknowledgement. eventflow publishes `bus.publish(&event)` (JSON
//! encoding, envelope, headers, idempotent producer); the baseline hands the same
//! 100-byte payloads and keys to an rdkafka `FutureProducer` with the same settings
//! (`enable.idempotence`, `acks=all`, `linger.ms=5`, murmur2 partitioner). Runs alternate
//! between the two, each on a fresh topic.
//!
//! Consume: N events already in a topic, read by one group member. eventflow runs a bus
//! whose handler decodes each event, committing after each batch as the bus always does;
//! the baseline is a `StreamConsumer` that reads each message's payload and commits
//! asynchronously every 256 messages. The clock runs from the first message handled to
//! the last, leaving out the time to join the group.
//!
//! `KAFKA_BENCH_ONLY=publish` (or `consume`) runs one half.
//!
//! `KAFKA_BENCH_RAW_HEADERS=1` gives the baseline's messages the 7 headers an eventflow
//! envelope carries, to tell the broker's share of the gap from the client's.
//!
//! Target: eventflow publishes at least 0.9x the baseline's rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, EventBus, State};
use eventflow_kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use eventflow_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventflow_kafka::rdkafka::{ClientConfig, Message};
use eventflow_kafka::Kafka;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

const TARGET_RATIO: f64 = 0.9;

#[derive(eventflow::Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "bench.happened", topic = "bench")]
struct Happened {
    #[event(key)]
    key: String,
    data: String,
}

/// An event whose JSON payload is exactly 100 bytes.
fn event(i: usize) -> Happened {
    let key = format!("key-{:04}", i % 1000);
    let overhead = serde_json::to_vec(&Happened {
        key: key.clone(),
        data: String::new(),
    })
    .unwrap()
    .len();
    Happened {
        key,
        data: "x".repeat(100 - overhead),
    }
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat` (Linux).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| eventflow_kafka::DEFAULT_BROKERS.to_owned())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_id() -> String {
    format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

fn kafka(prefix: &str) -> Kafka {
    Kafka::builder(brokers())
        .topic_prefix(format!("{prefix}."))
        .group_prefix(format!("{prefix}."))
        .build()
        .expect("building the transport")
}

/// The producer settings eventflow uses, for the baseline.
fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("client.id", "eventflow")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "30000")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("creating the raw producer")
}

async fn publish_eventflow(n: usize, prefix: &str) -> f64 {
    let bus = EventBus::builder()
        .transport(kafka(prefix))
        .start()
        .await
        .unwrap();
    let events: Vec<Happened> = (0..n).map(event).collect();
    bus.publish(&events[0]).await.unwrap(); // creates the topic, connects
    let start = Instant::now();
    let cpu = cpu_secs();
    let results = join_all(events.iter().map(|e| bus.publish(e))).await;
    let elapsed = start.elapsed();
    eprintln!(
        "  eventflow publish: {:.2}s wall, {:.2}s CPU of this process",
        elapsed.as_secs_f64(),
        cpu_secs() - cpu
    );
    for result in results {
        result.expect("publishing");
    }
    bus.shutdown().await;
    n as f64 / elapsed.as_secs_f64()
}

async fn publish_raw(n: usize, prefix: &str) -> f64 {
    let topic = kafka(prefix).kafka_topic("bench");
    let producer = raw_producer();
    let events: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let e = event(i);
            let payload = serde_json::to_vec(&e).unwrap();
            (e.key, payload)
        })
        .collect();
    let (key, payload) = &events[0];
    producer
        .send(
            FutureRecord::to(&topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .expect("publishing");
    let with_headers = std::env::var_os("KAFKA_BENCH_RAW_HEADERS").is_some();
    let headers = {
        use eventflow_kafka::rdkafka::message::{Header, OwnedHeaders};
        let mut h = OwnedHeaders::new();
        for (k, v) in [
            ("eventflow-id", "01a200b2-16cf-7747-a687-125e9efbca2f"),
            ("eventflow-name", "bench.happened"),
            ("eventflow-version", "1"),
            ("content-type", "application/json"),
            ("eventflow-correlation-id", "01a200b2-16cf-7747-a687-125e9efbca2f"),
            ("eventflow-timestamp", "1795308000914000000"),
            (
                "traceparent",
                "00-01a200b216cf7747a687125e9efbca2f-0123456789abcdef-01",
            ),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        h
    };
    let start = Instant::now();
    let sends = events.iter().map(|(key, payload)| {
        let mut record = FutureRecord::to(&topic).key(key).payload(payload);
        if with_headers {
            record = record.headers(headers.clone());
        }
        producer.send(record, Duration::from_secs(30))
    });
    let cpu = cpu_secs();
    let results = join_all(sends).await;
    let elapsed = start.elapsed();
    eprintln!(
        "  raw publish: {:.2}s wall, {:.2}s CPU of this process",
        elapsed.as_secs_f64(),
        cpu_secs() - cpu
    );
    for result in results {
        result.map_err(|(e, _)| e).expect("publishing");
    }
    n as f64 / elapsed.as_secs_f64()
}

#[derive(Clone, Default)]
struct Clock {
    handled: Arc<AtomicU64>,
    first: Arc<Mutex<Option<Instant>>>,
    last: Arc<Mutex<Option<Instant>>>,
}

impl Clock {
    fn tick(&self, n: u64) {
        let now = Instant::now();
        self.first.lock().unwrap().get_or_insert(now);
        if self.handled.fetch_add(1, Ordering::AcqRel) + 1 == n {
            *self.last.lock().unwrap() = Some(now);
        }
    }

    fn rate(&self, n: usize) -> f64 {
        let first = self.first.lock().unwrap().unwrap();
        let last = self.last.lock().unwrap().unwrap();
        n as f64 / (last - first).as_secs_f64()
    }
}

#[derive(Clone)]
struct Expect(u64, Clock);

#[subscribe(group = "reader")]
async fn reader(event: Happened, State(expect): State<Expect>) -> Result<(), std::io::Error> {
    std::hint::black_box(&event);
    expect.1.tick(expect.0);
    Ok(())
}

/// Fills a fresh topic with `n` eventflow events.
async fn fill(n: usize, prefix: &str) {
    let bus = EventBus::builder()
        .transport(kafka(prefix))
        .start()
        .await
        .unwrap();
    let events: Vec<Happened> = (0..n).map(event).collect();
    for chunk in events.chunks(10_000) {
        for result in join_all(chunk.iter().map(|e| bus.publish(e))).await {
            result.expect("filling the topic");
        }
    }
    bus.shutdown().await;
}

async fn consume_eventflow(n: usize, prefix: &str) -> f64 {
    fill(n, prefix).await;
    let clock = Clock::default();
    let kafka = Kafka::builder(brokers())
        .topic_prefix(format!("{prefix}."))
        .group_prefix(format!("{prefix}."))
        .start_from(eventflow_kafka::StartFrom::Earliest)
        .build()
        .unwrap();
    let bus = EventBus::builder()
        .transport(kafka)
        .state(Expect(n as u64, clock.clone()))
        .handler(reader)
        .start()
        .await
        .unwrap();
    while clock.last.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bus.shutdown().await;
    clock.rate(n)
}

async fn consume_raw(n: usize, prefix: &str) -> f64 {
    fill(n, prefix).await;
    let topic = kafka(prefix).kafka_topic("bench");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{prefix}.raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let clock = Clock::default();
    for i in 0..n {
        let message = consumer.recv().await.expect("consuming");
        let event: Happened = serde_json::from_slice(message.payload().unwrap()).unwrap();
        std::hint::black_box(&event);
        clock.tick(n as u64);
        if i % 256 == 255 || i == n - 1 {
            consumer.commit_message(&message, CommitMode::Async).unwrap();
        }
    }
    clock.rate(n)
}

fn report(what: &str, eventflow: &[f64], raw: &[f64], target: Option<f64>) {
    let median = |rates: &[f64]| {
        let mut sorted = rates.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        sorted[sorted.len() / 2]
    };
    let (e, r) = (median(eventflow), median(raw));
    println!(
        "{what}: eventflow {e:>10.0} events/s   raw rdkafka {r:>10.0} events/s   ratio {:.2}",
        e / r
    );
    println!(
        "  eventflow runs: {:?}",
        eventflow.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "  raw runs:       {:?}",
        raw.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    if let Some(target) = target {
        let verdict = if e / r >= target { "meets" } else { "MISSES" };
        println!("  {verdict} the target of {target}x");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; there is nothing to list
    }
    let n = env_usize("KAFKA_BENCH_EVENTS", 50_000);
    let rounds = env_usize("KAFKA_BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Kafka at {}, {n} events of 100 bytes, {rounds} alternating rounds",
        brokers()
    );
    let id = run_id();
    let (mut e_pub, mut r_pub, mut e_con, mut r_con) = (vec![], vec![], vec![], vec![]);
    let only = std::env::var("KAFKA_BENCH_ONLY").unwrap_or_default();
    let (publish, consume) = (only != "consume", only != "publish");
    runtime.block_on(async {
        publish_raw(1000, &format!("{id}-warm")).await;
        for round in 0..rounds {
            if publish {
                r_pub.push(publish_raw(n, &format!("{id}-pr{round}")).await);
                e_pub.push(publish_eventflow(n, &format!("{id}-pe{round}")).await);
            }
        }
        for round in 0..rounds {
            if consume {
                r_con.push(consume_raw(n, &format!("{id}-cr{round}")).await);
                e_con.push(consume_eventflow(n, &format!("{id}-ce{round}")).await);
            }
        }
    });
    if publish {
        report("publish", &e_pub, &r_pub, Some(TARGET_RATIO));
    }
    if consume {
        report("consume", &e_con, &r_con, None);
    }
}
