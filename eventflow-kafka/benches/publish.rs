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
//!   baseline is what the headers cost librdkafka and the broker;
//! - **fair + 2 headers, send_result**: the same messages handed over with `send_result`
//!   and awaited as the bare `DeliveryFuture`, as eventflow does inside, instead of the
//!   `send` future (576 bytes per event in flight, with the record and a retry timer; a
//!   `bus.publish` future takes 96): printed for information, to show whether the size of
//!   the future a publisher keeps per event in flight matters on this machine.
//!
//! Every round runs each side once, on a fresh topic of 8 partitions (the raw sides create
//! theirs as eventflow does) deleted afterwards, in an order that
//! rotates from round to round; the report gives the medians, the ratios and the CPU time
//! per event: of this process (all its threads), of the thread that publishes (where
//! eventflow's own work runs; librdkafka's threads do the rest), and of the broker if
//! `KAFKA_BENCH_BROKER_PID` names it.
//!
//! Consume: N events already in a topic, read by one group member. eventflow runs a bus
//! whose handler decodes each event, committing after each batch as the bus always does;
//! the baseline is a `StreamConsumer` that reads each message's id, name and content type
//! from the `eventflow` header and its key, decodes its payload, and follows eventflow's
//! documented commit policy: it takes what is ready after the first message as a batch
//! (up to 256, eventflow's `max_batch`) and, once the batch is handled, stores and
//! commits asynchronously the next offset of every partition in it (before, it committed
//! the one partition of every 256th message, less work than eventflow's guarantee needs).
//! The clock runs from the first message handled to
//! the last, leaving out the time to join the group.
//!
//! Options, as environment variables:
//!
//! - `KAFKA_BENCH_ONLY=publish` (or `consume`) runs one half.
//! - `KAFKA_BENCH_RAW_HEADERS` picks the baselines with headers: `eventflow` (the
//!   default), `legacy` (the seven one-per-field headers eventflow wrote before),
//!   `eventflow,legacy`, or `none` (`eventflow` also runs the `send_result` side).
//! - `KAFKA_BENCH_SIDES=eventflow,headers,...` runs only the sides named (`strict`,
//!   `fair`, `headers`, `send_result`, `legacy`, `eventflow`), e.g. under a profiler; for
//!   the consume half, `eventflow` and `raw`.
//! - `KAFKA_BENCH_FUTURE_SIZE=1` prints the size of a `bus.publish` future and of a
//!   `FutureProducer::send` future.
//! - `KAFKA_BENCH_BROKER_PID=<pid>` also reports the broker process's CPU time per event
//!   (a broker on this machine), to separate its share from the client's.
//! - `KAFKA_BENCH_PRODUCER_CONFIG=key=value,...` sets librdkafka properties on the
//!   producers of every side, e.g. `compression.type=lz4`.
//!
//! CPU times come from `/proc/<pid>/task/*/schedstat` (Linux); elsewhere they read 0.
//!
//! Allocations: a counting global allocator reports the Rust heap allocations per published
//! and per handled event, of the whole process (librdkafka's C `malloc`s are not counted);
//! `KAFKA_BENCH_ALLOC_TRACE=N` prints the call stacks of the first N allocations of one
//! eventflow publish, to see where they come from.
//!
//! Targets: eventflow publishes at least 0.9x the rate of the raw producer sending the same
//! messages (fair + eventflow's 2 headers) with at most 1 us more CPU per event, and
//! consumes at least 0.8x the raw consumer's rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, EventBus, State};
use eventflow_kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use eventflow_kafka::rdkafka::message::{Header, Headers, OwnedHeaders};
use eventflow_kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use eventflow_kafka::rdkafka::{ClientConfig, Message};
use eventflow_kafka::Kafka;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

#[path = "../../eventflow/benches/support/alloc.rs"]
mod alloc;
#[path = "publish/consume.rs"]
mod consume;
#[path = "publish/cpu.rs"]
mod cpu;
#[path = "publish/topics.rs"]
mod topics;

use consume::{consume_rounds, report_consume};
use cpu::Cpu;
use topics::{create_topic, delete_stale_topics, delete_topic};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const TARGET_RATIO: f64 = 0.9;
/// Most CPU microseconds per event eventflow may spend above the raw producer sending the
/// same messages.
const TARGET_EXTRA_CPU_US: f64 = 1.0;
const TARGET_CONSUME_RATIO: f64 = 0.8;
/// Partitions of every side's topic: eventflow creates its topics with them, and the raw
/// sides create theirs the same way before the clock starts (a topic the broker creates
/// on first use gets its `num.partitions`, 1 on a default broker, and a different
/// partition count batches differently).
const PARTITIONS: u32 = 8;

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

/// One publish run: events per second, CPU microseconds and Rust heap allocations per
/// event.
struct Run {
    rate: f64,
    cpu: Cpu,
    allocations: f64,
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
                .partitions(PARTITIONS)
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
    /// `RawEventflowHeaders` through `send_result` and the bare `DeliveryFuture`, as
    /// eventflow does, instead of the `send` future: the floor of what a Rust publisher
    /// on rdkafka can spend.
    RawEventflowHeadersSendResult,
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
            Side::RawEventflowHeadersSendResult => "raw fair + 2 headers, send_result",
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
            Side::RawEventflowHeaders | Side::RawEventflowHeadersSendResult => &[
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

async fn publish_eventflow(n: usize, prefix: &str) -> Run {
    let bus = EventBus::builder()
        .transport(kafka(prefix))
        .start()
        .await
        .unwrap();
    let events: Vec<Happened> = (0..n).map(event).collect();
    bus.publish(&events[0]).await.unwrap(); // creates the topic, connects
    alloc::trace("KAFKA_BENCH_ALLOC_TRACE", bus.publish(&events[1]))
        .await
        .unwrap();
    if std::env::var_os("KAFKA_BENCH_FUTURE_SIZE").is_some() {
        eprintln!(
            "  a bus.publish future takes {} bytes",
            std::mem::size_of_val(&bus.publish(&events[0]))
        );
    }
    let (start, cpu, allocations) = (Instant::now(), Cpu::now(), alloc::count());
    let results = join_all(events.iter().map(|e| bus.publish(e))).await;
    let run = Run {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu: cpu.per_event_since(n),
        allocations: (alloc::count() - allocations) as f64 / n as f64,
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
    create_topic(&topic).await;
    let first = serde_json::to_vec(&events[0]).unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key(&events[0].key).payload(&first),
            Duration::from_secs(30),
        )
        .await
        .expect("publishing"); // connects, learns the partitions
    if std::env::var_os("KAFKA_BENCH_FUTURE_SIZE").is_some() {
        let send = producer.send(
            FutureRecord::to(&topic).key(&events[0].key).payload(&first),
            Duration::from_secs(30),
        );
        eprintln!(
            "  a FutureProducer::send future takes {} bytes",
            std::mem::size_of_val(&send)
        );
    }
    let headers = side.headers();
    let (start, cpu, allocations) = (Instant::now(), Cpu::now(), alloc::count());
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
            if side == Side::RawEventflowHeadersSendResult {
                let delivery = producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("the producer's queue has room for every event");
                return delivery
                    .await
                    .expect("the producer dropped a delivery")
                    .map(drop)
                    .map_err(|(e, _)| e);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(drop)
                .map_err(|(e, _)| e)
        }
    }))
    .await;
    let run = Run {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu: cpu.per_event_since(n),
        allocations: (alloc::count() - allocations) as f64 / n as f64,
    };
    for result in results {
        result.expect("publishing");
    }
    run
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

fn report_publish(sides: &[Side], runs: &[Vec<Run>]) {
    let of = |side: Side, what: fn(&Run) -> f64| {
        let i = sides.iter().position(|s| *s == side)?;
        Some(median(runs[i].iter().map(what)))
    };
    let brokers = runs.iter().flatten().all(|r| r.cpu.broker.is_some());
    println!("publish (medians):");
    println!(
        "  {:<34} {:>9}   {:>11}   CPU us per event: process (publishing thread){}",
        "",
        "events/s",
        "allocs/event",
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
            "  {:<34} {:>9.0}   {:>11.1}   {:.2} ({:.2}){broker}",
            side.label(),
            median(runs.iter().map(|r| r.rate)),
            median(runs.iter().map(|r| r.allocations)),
            cpu(|c| c.client),
            cpu(|c| c.caller),
        );
        println!(
            "    runs: {:?}",
            runs.iter().map(|r| r.rate.round()).collect::<Vec<_>>()
        );
    }
    let Some(eventflow) = of(Side::Eventflow, |r| r.rate) else {
        return;
    };
    for (side, note) in [
        (
            Side::RawEventflowHeaders,
            ", the same messages on the wire: the target's baseline",
        ),
        (
            Side::RawEventflowHeadersSendResult,
            ", the same messages, each future only rdkafka's DeliveryFuture",
        ),
        (Side::RawStrict, ", no headers, payloads encoded before the clock"),
        (Side::RawFair, ", no headers"),
        (Side::RawLegacyHeaders, ""),
    ] {
        if let Some(raw) = of(side, |r| r.rate) {
            println!(
                "  ratio eventflow / {:<34} {:.2}{note}",
                format!("{}:", side.label()),
                eventflow / raw
            );
        }
    }
    let same = Side::RawEventflowHeaders;
    if let (Some(raw), Some(raw_cpu), Some(own_cpu)) = (
        of(same, |r| r.rate),
        of(same, |r| r.cpu.client),
        of(Side::Eventflow, |r| r.cpu.client),
    ) {
        let ratio = eventflow / raw;
        let extra = own_cpu - raw_cpu;
        let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
        println!(
            "  {} the target of {TARGET_RATIO}x the raw producer sending the same messages ({ratio:.2}x)",
            verdict(ratio >= TARGET_RATIO)
        );
        println!(
            "  {} the target of at most {TARGET_EXTRA_CPU_US} us CPU per event above it ({extra:+.2} us)",
            verdict(extra <= TARGET_EXTRA_CPU_US)
        );
    }
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
            "eventflow" | "1" => {
                sides.extend([Side::RawEventflowHeaders, Side::RawEventflowHeadersSendResult])
            }
            "legacy" => sides.push(Side::RawLegacyHeaders),
            other => {
                panic!("KAFKA_BENCH_RAW_HEADERS: unknown {other:?}; use eventflow, legacy, both or none")
            }
        }
    }
    sides.push(Side::Eventflow);
    if let Ok(wanted) = std::env::var("KAFKA_BENCH_SIDES") {
        // For profiling one side: `eventflow`, `headers` (raw fair + eventflow's 2 headers).
        sides.retain(|side| match side {
            Side::Eventflow => wanted.contains("eventflow"),
            Side::RawEventflowHeaders => wanted.contains("headers"),
            Side::RawEventflowHeadersSendResult => wanted.contains("send_result"),
            Side::RawStrict => wanted.contains("strict"),
            Side::RawFair => wanted.contains("fair"),
            Side::RawLegacyHeaders => wanted.contains("legacy"),
        });
        assert!(
            !sides.is_empty() || !publishing,
            "KAFKA_BENCH_SIDES={wanted:?} names no publishing side; use eventflow, headers, send_result, strict, fair or legacy (legacy also needs KAFKA_BENCH_RAW_HEADERS=legacy), or KAFKA_BENCH_ONLY=consume for the consume sides eventflow and raw"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("Kafka at {}, {n} events of 100 bytes, {rounds} rounds", brokers());
    let id = run_id();
    let mut publish_runs: Vec<Vec<Run>> = sides.iter().map(|_| Vec::new()).collect();
    let mut consume_runs = (vec![], vec![]);
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
                    "  {}: {:.0} events/s, {:.1} allocs/event, CPU us per event {:.2} ({:.2}){}",
                    sides[i].label(),
                    run.rate,
                    run.allocations,
                    run.cpu.client,
                    run.cpu.caller,
                    run.cpu
                        .broker
                        .map_or(String::new(), |b| format!(", broker {b:.2}"))
                );
                publish_runs[i].push(run);
            }
        }
        if consuming {
            consume_runs = consume_rounds(n, rounds, &id).await;
        }
    });
    if publishing {
        report_publish(&sides, &publish_runs);
    }
    if consuming {
        report_consume(&consume_runs.0, &consume_runs.1);
    }
}
