//! Kafka throughput through eventflow, side by side with raw rdkafka on the same broker.
//!
//! ```text
//! cargo bench -p eventflow-kafka --bench publish
//! KAFKA_BROKERS=host:9092 KAFKA_BENCH_EVENTS=50000 KAFKA_BENCH_ROUNDS=3 cargo bench -p eventflow-kafka --bench publish
//! ```
//!
//! Publish: N events with a 100-byte JSON payload, all in flight at once, the clock
//! stopping at the last broker acknowledgement. eventflow publishes `bus.publish(&event)`
//! (JSON encoding, envelope with id, timestamp and trace context, the `eventflow` and
//! `traceparent` headers, idempotent producer). The baselines hand the same keys and
//! payloads to an rdkafka `FutureProducer` with the same settings (`enable.idempotence`,
//! `acks=all`, `linger.ms=5`, murmur2 partitioner):
//!
//! - **strict**: no headers, the payloads JSON-encoded before the clock starts (the
//!   issue's target is set against this one);
//! - **fair**: no headers, each event JSON-encoded inside the timed section, as a raw
//!   user has to;
//! - **fair + eventflow's 2 headers**: the fair baseline with two headers of the size
//!   eventflow writes (fixed values), so the same messages go over the wire: what is left
//!   between it and eventflow is eventflow's own cost, what is between it and the fair
//!   baseline is what the headers cost librdkafka and the broker.
//!
//! Every round runs each side once, on a fresh topic deleted afterwards, in an order that
//! rotates from round to round; the report gives the medians, the ratios and the CPU time
//! per event: of this process (all its threads), of the thread that publishes (where
//! eventflow's own work runs; librdkafka's threads do the rest), and of the broker if
//! `KAFKA_BENCH_BROKER_PID` names it.
//!
//! Consume: N events already in a topic, read by one group member. eventflow runs a bus
//! whose handler decodes each event, committing after each batch as the bus always does;
//! the baseline is a `StreamConsumer` that decodes each message's payload and commits
//! asynchronously every 256 messages. The clock runs from the first message handled to
//! the last, leaving out the time to join the group.
//!
//! Options, as environment variables:
//!
//! - `KAFKA_BENCH_ONLY=publish` (or `consume`) runs one half.
//! - `KAFKA_BENCH_RAW_HEADERS` picks the baselines with headers: `eventflow` (the
//!   default), `legacy` (the seven one-per-field headers eventflow wrote before),
//!   `eventflow,legacy`, or `none`.
//! - `KAFKA_BENCH_BROKER_PID=<pid>` also reports the broker process's CPU time per event
//!   (a broker on this machine), to separate its share from the client's.
//! - `KAFKA_BENCH_PRODUCER_CONFIG=key=value,...` sets librdkafka properties on the
//!   producers of every side, e.g. `compression.type=lz4`.
//!
//! CPU times come from `/proc/<pid>/task/*/schedstat` (Linux); elsewhere they read 0.
//!
//! Target: eventflow publishes at least 0.9x the strict baseline's rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, EventBus, State};
use eventflow_kafka::rdkafka::admin::{AdminClient, AdminOptions};
use eventflow_kafka::rdkafka::client::DefaultClientContext;
use eventflow_kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use eventflow_kafka::rdkafka::message::{Header, OwnedHeaders};
use eventflow_kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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

/// CPU seconds the live threads of process `pid` (or `self`) have run, from each
/// thread's `/proc/<pid>/task/<tid>/schedstat` (Linux; nanoseconds, where `/proc/<pid>/stat`
/// counts 10 ms ticks); 0 if it cannot be read.
fn cpu_secs_of(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

/// CPU seconds the calling thread has run (Linux); 0 if it cannot be read.
fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |nanos| nanos as f64 / 1e9)
}

/// CPU time of this process and of the broker named by `KAFKA_BENCH_BROKER_PID`, if any.
#[derive(Clone, Copy)]
struct Cpu {
    /// This process, all threads.
    client: f64,
    /// The thread that publishes: eventflow's own work, and the raw sides' encoding and
    /// `send`; librdkafka's threads do the rest.
    caller: f64,
    broker: Option<f64>,
}

impl Cpu {
    fn now() -> Cpu {
        Cpu {
            client: cpu_secs_of("self"),
            caller: thread_cpu_secs(),
            broker: std::env::var("KAFKA_BENCH_BROKER_PID")
                .ok()
                .map(|pid| cpu_secs_of(&pid)),
        }
    }

    /// Microseconds of CPU per event since `self`, for `n` events.
    fn per_event_since(self, n: usize) -> Cpu {
        let now = Cpu::now();
        let per = |used: f64| used / n as f64 * 1e6;
        Cpu {
            client: per(now.client - self.client),
            caller: per(now.caller - self.caller),
            broker: now.broker.zip(self.broker).map(|(b, a)| per(b - a)),
        }
    }
}

/// One publish run: events per second and CPU microseconds per event.
struct Run {
    rate: f64,
    cpu: Cpu,
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
    extra_producer_config()
        .into_iter()
        .fold(
            Kafka::builder(brokers())
                .topic_prefix(format!("{prefix}."))
                .group_prefix(format!("{prefix}.")),
            |builder, (key, value)| builder.producer_config(key, value),
        )
        .build()
        .expect("building the transport")
}

/// `KAFKA_BENCH_PRODUCER_CONFIG`: `key=value` pairs, comma-separated, set on every
/// producer of both sides.
fn extra_producer_config() -> Vec<(String, String)> {
    std::env::var("KAFKA_BENCH_PRODUCER_CONFIG")
        .unwrap_or_default()
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("KAFKA_BENCH_PRODUCER_CONFIG: {pair:?} is not key=value"));
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// The producer settings eventflow uses, for the baselines.
fn raw_producer() -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers())
        .set("client.id", "eventflow")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "30000")
        .set("partitioner", "murmur2_random");
    for (key, value) in extra_producer_config() {
        config.set(key, value);
    }
    config.create().expect("creating the raw producer")
}

/// A side of the publish comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Eventflow,
    /// Payloads encoded before the clock starts, no headers.
    RawStrict,
    /// Each event encoded inside the timed section, no headers.
    RawFair,
    /// `RawFair` with headers of the size and count eventflow writes.
    RawEventflowHeaders,
    /// `RawFair` with the seven one-per-field headers of eventflow's older format.
    RawLegacyHeaders,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Eventflow => "eventflow",
            Side::RawStrict => "raw strict",
            Side::RawFair => "raw fair (JSON in the loop)",
            Side::RawEventflowHeaders => "raw fair + eventflow's 2 headers",
            Side::RawLegacyHeaders => "raw fair + 7 legacy headers",
        }
    }

    /// The headers a raw side attaches, as eventflow would write them for a first event.
    fn headers(self) -> &'static [(&'static str, &'static str)] {
        const TRACEPARENT: (&str, &str) = (
            "traceparent",
            "00-01a200b216cf7747a687125e9efbca2f-0123456789abcdef-01",
        );
        match self {
            Side::RawEventflowHeaders => &[
                (
                    "eventflow",
                    "1;01a200b216cf7747a687125e9efbca2f;bench.happened;1;1795308000914000000;;;application/json",
                ),
                TRACEPARENT,
            ],
            Side::RawLegacyHeaders => &[
                ("eventflow-id", "01a200b2-16cf-7747-a687-125e9efbca2f"),
                ("eventflow-name", "bench.happened"),
                ("eventflow-version", "1"),
                ("content-type", "application/json"),
                ("eventflow-correlation-id", "01a200b2-16cf-7747-a687-125e9efbca2f"),
                ("eventflow-timestamp", "1795308000914000000"),
                TRACEPARENT,
            ],
            _ => &[],
        }
    }
}

async fn publish(side: Side, n: usize, prefix: &str) -> Run {
    let run = match side {
        Side::Eventflow => publish_eventflow(n, prefix).await,
        raw => publish_raw(raw, n, prefix).await,
    };
    delete_topic(prefix).await;
    run
}

/// Deletes the topic of a run, so that the runs do not pile data up on the broker.
async fn delete_topic(prefix: &str) {
    delete_topics(&[kafka(prefix).kafka_topic("bench")]).await;
}

async fn delete_topics(topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("creating the admin client");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let deleted = admin.delete_topics(&names, &AdminOptions::new()).await;
    if let Err(error) = deleted.map_err(|e| e.to_string()).and_then(|results| {
        results
            .into_iter()
            .try_for_each(|r| r.map(drop).map_err(|(topic, code)| format!("{topic}: {code}")))
    }) {
        eprintln!("  could not delete the bench's topics: {error}");
    }
}

/// Deletes the topics earlier runs of this bench left behind (interrupted, or from before
/// it deleted them): `bench-<pid>-<ms>-...` created over ten minutes ago, long enough that
/// no run still uses them.
async fn delete_stale_topics() {
    let producer = raw_producer();
    let Ok(metadata) = producer.client().fetch_metadata(None, Duration::from_secs(10)) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let stale: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|name| {
            let mut parts = name.strip_prefix("bench-").unwrap_or_default().split(['-', '.']);
            let created = parts.nth(1).and_then(|ms| ms.parse::<u128>().ok());
            created.is_some_and(|ms| now.saturating_sub(ms) > 10 * 60 * 1000)
        })
        .map(str::to_owned)
        .collect();
    if !stale.is_empty() {
        eprintln!("deleting {} topics left by earlier runs", stale.len());
        for chunk in stale.chunks(100) {
            delete_topics(chunk).await;
        }
    }
}

async fn publish_eventflow(n: usize, prefix: &str) -> Run {
    let bus = EventBus::builder()
        .transport(kafka(prefix))
        .start()
        .await
        .unwrap();
    let events: Vec<Happened> = (0..n).map(event).collect();
    bus.publish(&events[0]).await.unwrap(); // creates the topic, connects
    let (start, cpu) = (Instant::now(), Cpu::now());
    let results = join_all(events.iter().map(|e| bus.publish(e))).await;
    let run = Run {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu: cpu.per_event_since(n),
    };
    for result in results {
        result.expect("publishing");
    }
    bus.shutdown().await;
    run
}

async fn publish_raw(side: Side, n: usize, prefix: &str) -> Run {
    let topic = kafka(prefix).kafka_topic("bench");
    let producer = raw_producer();
    let events: Vec<Happened> = (0..n).map(event).collect();
    let encoded: Vec<Vec<u8>> = match side {
        Side::RawStrict => events.iter().map(|e| serde_json::to_vec(e).unwrap()).collect(),
        _ => Vec::new(),
    };
    let first = serde_json::to_vec(&events[0]).unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key(&events[0].key).payload(&first),
            Duration::from_secs(30),
        )
        .await
        .expect("publishing"); // creates the topic, connects
    let headers = side.headers();
    let (start, cpu) = (Instant::now(), Cpu::now());
    let results = join_all(events.iter().enumerate().map(|(i, e)| {
        let encoded = &encoded;
        let producer = &producer;
        let topic = &topic;
        async move {
            let fresh;
            let payload = match side {
                Side::RawStrict => &encoded[i],
                _ => {
                    fresh = serde_json::to_vec(e).unwrap();
                    &fresh
                }
            };
            let mut record = FutureRecord::to(topic).key(&e.key).payload(payload);
            if !headers.is_empty() {
                record = record.headers(headers.iter().fold(
                    OwnedHeaders::new_with_capacity(headers.len()),
                    |h, &(key, value)| {
                        h.insert(Header {
                            key,
                            value: Some(value),
                        })
                    },
                ));
            }
            producer.send(record, Duration::from_secs(30)).await
        }
    }))
    .await;
    let run = Run {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu: cpu.per_event_since(n),
    };
    for result in results {
        result.map_err(|(e, _)| e).expect("publishing");
    }
    run
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

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

fn report_publish(sides: &[Side], runs: &[Vec<Run>]) {
    let rate = |side: Side| {
        let i = sides.iter().position(|s| *s == side)?;
        Some(median(runs[i].iter().map(|r| r.rate)))
    };
    let brokers = runs.iter().flatten().all(|r| r.cpu.broker.is_some());
    println!("publish (medians):");
    println!(
        "  {:<34} {:>9}   CPU us per event: process (publishing thread){}",
        "",
        "events/s",
        if brokers { ", broker" } else { "" }
    );
    for (side, runs) in sides.iter().zip(runs) {
        let cpu = |of: fn(&Cpu) -> f64| median(runs.iter().map(|r| of(&r.cpu)));
        let broker = if brokers {
            format!(", {:.2}", cpu(|c| c.broker.unwrap_or_default()))
        } else {
            String::new()
        };
        println!(
            "  {:<34} {:>9.0}   {:.2} ({:.2}){broker}",
            side.label(),
            median(runs.iter().map(|r| r.rate)),
            cpu(|c| c.client),
            cpu(|c| c.caller),
        );
        println!(
            "    runs: {:?}",
            runs.iter().map(|r| r.rate.round()).collect::<Vec<_>>()
        );
    }
    let Some(eventflow) = rate(Side::Eventflow) else {
        return;
    };
    for (side, note) in [
        (Side::RawStrict, ", the target's baseline"),
        (Side::RawFair, ""),
        (Side::RawEventflowHeaders, ", the same messages on the wire"),
        (Side::RawLegacyHeaders, ""),
    ] {
        if let Some(raw) = rate(side) {
            println!(
                "  ratio eventflow / {:<34} {:.2}{note}",
                format!("{}:", side.label()),
                eventflow / raw
            );
        }
    }
    if let Some(strict) = rate(Side::RawStrict).map(|raw| eventflow / raw) {
        let verdict = if strict >= TARGET_RATIO { "meets" } else { "MISSES" };
        println!("  {verdict} the target of {TARGET_RATIO}x the strict baseline");
    }
}

fn report_consume(eventflow: &[f64], raw: &[f64]) {
    let (e, r) = (median(eventflow.iter().copied()), median(raw.iter().copied()));
    println!(
        "consume (medians): eventflow {e:>9.0} events/s   raw StreamConsumer {r:>9.0} events/s   ratio {:.2}",
        e / r
    );
    println!(
        "    eventflow runs: {:?}",
        eventflow.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "    raw runs:       {:?}",
        raw.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; there is nothing to list
    }
    let n = env_usize("KAFKA_BENCH_EVENTS", 50_000);
    let rounds = env_usize("KAFKA_BENCH_ROUNDS", 3);
    let only = std::env::var("KAFKA_BENCH_ONLY").unwrap_or_default();
    let (publishing, consuming) = (only != "consume", only != "publish");
    let mut sides = vec![Side::RawStrict, Side::RawFair];
    let with_headers = std::env::var("KAFKA_BENCH_RAW_HEADERS").unwrap_or_else(|_| "eventflow".into());
    for extra in with_headers.split(',') {
        match extra.trim() {
            "" | "none" => {}
            "eventflow" | "1" => sides.push(Side::RawEventflowHeaders),
            "legacy" => sides.push(Side::RawLegacyHeaders),
            other => {
                panic!("KAFKA_BENCH_RAW_HEADERS: unknown {other:?}; use eventflow, legacy, both or none")
            }
        }
    }
    sides.push(Side::Eventflow);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("Kafka at {}, {n} events of 100 bytes, {rounds} rounds", brokers());
    let id = run_id();
    let mut publish_runs: Vec<Vec<Run>> = sides.iter().map(|_| Vec::new()).collect();
    let (mut e_con, mut r_con) = (vec![], vec![]);
    runtime.block_on(async {
        delete_stale_topics().await;
        publish(Side::RawStrict, 1000, &format!("{id}-warm")).await;
        for round in 0..rounds {
            if !publishing {
                break;
            }
            for k in 0..sides.len() {
                // Rotated, so that no side always runs first or right after another.
                let i = (k + round) % sides.len();
                let run = publish(sides[i], n, &format!("{id}-p{round}-{i}")).await;
                eprintln!(
                    "  {}: {:.0} events/s, CPU us per event {:.2} ({:.2}){}",
                    sides[i].label(),
                    run.rate,
                    run.cpu.client,
                    run.cpu.caller,
                    run.cpu
                        .broker
                        .map_or(String::new(), |b| format!(", broker {b:.2}"))
                );
                publish_runs[i].push(run);
            }
        }
        for round in 0..rounds {
            if consuming {
                let prefix = format!("{id}-cr{round}");
                r_con.push(consume_raw(n, &prefix).await);
                delete_topic(&prefix).await;
                let prefix = format!("{id}-ce{round}");
                e_con.push(consume_eventflow(n, &prefix).await);
                delete_topic(&prefix).await;
            }
        }
    });
    if publishing {
        report_publish(&sides, &publish_runs);
    }
    if consuming {
        report_consume(&e_con, &r_con);
    }
}
