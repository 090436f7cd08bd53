//! Fan-out throughput: one publisher, `OrderPaid` to 4 consumer groups with the JSON
//! envelope, side by side with a hand-written tokio-mpsc fan-out doing the same serde work.
//!
//! ```text
//! cargo bench -p eventflow --bench fanout
//! FANOUT_EVENTS=20000 FANOUT_ROUNDS=3 cargo bench -p eventflow --bench fanout
//! FANOUT_ONLY=eventflow cargo bench -p eventflow --bench fanout   # one side, for profiling
//! FANOUT_ALLOC_TRACE=40 FANOUT_ONLY=eventflow cargo bench -p eventflow --bench fanout
//! ```
//!
//! Each side's Rust heap allocations per delivery are counted in one more run after the
//! timed rounds (counting in them would add a write to one shared counter per allocation);
//! `FANOUT_ALLOC_TRACE=N` prints the call stacks of the first N allocations of one event
//! published and delivered to the 4 groups, after that run.
//!
//! Both sides run on the same multi-thread runtime with 2 workers, the publisher in a task
//! of its own. Per event, both serialize `OrderPaid` to JSON once, wrap it with a UUID v7
//! id, name, key and timestamp, hand it to 4 consumers, and each consumer deserializes it
//! back into an `OrderPaid` and counts it. The clock stops when every consumer has counted
//! every event (for eventflow: when every group has committed it).
//!
//! Target: at least 1,000,000 deliveries/s, and at least 0.8x the baseline's rate (the
//! median of the rounds; the median of the rounds' paired ratios is printed beside it).
//!
//! Measure on a quiet machine: the baseline spends much of its time handing over between
//! tasks, so a compiler running on the other core halves it and flatters the ratio.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use eventflow::{subscribe, Event, EventBus, InProcess, State};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use uuid::Uuid;

mod support;
use support::{alloc, env_or, median};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const GROUPS: u64 = 4;
const TARGET_RATE: f64 = 1_000_000.0;
const TARGET_RATIO: f64 = 0.8;

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "order.paid", topic = "orders")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
    user_id: String,
    total_amount: u64,
}

/// Deliveries counted by the handlers, shared as bus state.
#[derive(Clone, Default)]
struct Delivered(Arc<AtomicU64>);

impl Delivered {
    fn count(&self, event: &OrderPaid) {
        std::hint::black_box(event);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[subscribe(group = "billing")]
async fn billing(event: OrderPaid, State(delivered): State<Delivered>) -> Result<(), std::io::Error> {
    delivered.count(&event);
    Ok(())
}

#[subscribe(group = "shipping")]
async fn shipping(event: OrderPaid, State(delivered): State<Delivered>) -> Result<(), std::io::Error> {
    delivered.count(&event);
    Ok(())
}

#[subscribe(group = "notification")]
async fn notification(event: OrderPaid, State(delivered): State<Delivered>) -> Result<(), std::io::Error> {
    delivered.count(&event);
    Ok(())
}

#[subscribe(group = "analytics")]
async fn analytics(event: OrderPaid, State(delivered): State<Delivered>) -> Result<(), std::io::Error> {
    delivered.count(&event);
    Ok(())
}

fn events(n: usize) -> Arc<Vec<OrderPaid>> {
    Arc::new(
        (0..n)
            .map(|i| OrderPaid {
                order_id: format!("order-{i:08}"),
                user_id: format!("user-{:05}", i % 10_000),
                total_amount: 1_000 + (i as u64 * 37) % 100_000,
            })
            .collect(),
    )
}

/// One side's run: the time until every consumer counted every event, and the Rust heap
/// allocations made meanwhile.
struct Run {
    elapsed: Duration,
    allocations: u64,
}

/// Publishes every event through an eventflow bus with 4 groups; returns the time until
/// every group committed every event.
fn run_eventflow(rt: &Runtime, events: &Arc<Vec<OrderPaid>>) -> Run {
    rt.block_on(async {
        let transport = InProcess::new();
        let delivered = Delivered::default();
        let bus = EventBus::builder()
            .transport(transport.clone())
            .state(delivered.clone())
            .handler(billing)
            .handler(shipping)
            .handler(notification)
            .handler(analytics)
            .start()
            .await
            .expect("the bus starts");

        let (started, allocations) = (Instant::now(), alloc::count());
        let publisher = {
            let bus = bus.clone();
            let events = events.clone();
            tokio::spawn(async move {
                for event in events.iter() {
                    bus.publish(event).await.expect("publish");
                }
            })
        };
        publisher.await.expect("the publisher finishes");
        transport.wait_idle().await;
        let elapsed = started.elapsed();
        let allocations = alloc::count() - allocations;

        let expected = events.len() as u64 * GROUPS;
        assert_eq!(
            delivered.0.load(Ordering::Relaxed),
            expected,
            "eventflow deliveries"
        );
        // Once, in the first run that counts: where one event's allocations come from.
        static TRACED: AtomicBool = AtomicBool::new(false);
        if alloc::is_counting() && !TRACED.swap(true, Ordering::Relaxed) {
            alloc::trace("FANOUT_ALLOC_TRACE", async {
                bus.publish(&events[0]).await.expect("publish");
                transport.wait_idle().await;
            })
            .await;
        }
        bus.shutdown().await;
        Run { elapsed, allocations }
    })
}

/// The envelope metadata the baseline carries along with the payload.
struct RawEnvelope {
    id: Uuid,
    name: &'static str,
    key: Option<String>,
    timestamp: SystemTime,
    payload: Bytes,
}

/// The same work by hand: serialize once, wrap, send to 4 bounded channels, one consumer
/// task each that deserializes and counts.
fn run_baseline(rt: &Runtime, events: &Arc<Vec<OrderPaid>>) -> Run {
    rt.block_on(async {
        let delivered = Delivered::default();
        let mut senders = Vec::new();
        let mut consumers = Vec::new();
        for _ in 0..GROUPS {
            let (tx, mut rx) = mpsc::channel::<Arc<RawEnvelope>>(1024);
            senders.push(tx);
            let delivered = delivered.clone();
            consumers.push(tokio::spawn(async move {
                while let Some(envelope) = rx.recv().await {
                    std::hint::black_box((&envelope.id, envelope.name, &envelope.key, envelope.timestamp));
                    let event: OrderPaid = serde_json::from_slice(&envelope.payload).expect("decode");
                    delivered.count(&event);
                }
            }));
        }

        let (started, allocations) = (Instant::now(), alloc::count());
        let publisher = {
            let events = events.clone();
            tokio::spawn(async move {
                for event in events.iter() {
                    let payload = serde_json::to_vec(event).expect("encode");
                    let envelope = Arc::new(RawEnvelope {
                        id: Uuid::now_v7(),
                        name: OrderPaid::NAME,
                        key: event.partition_key(),
                        timestamp: SystemTime::now(),
                        payload: Bytes::from(payload),
                    });
                    for tx in &senders {
                        tx.send(envelope.clone()).await.expect("send");
                    }
                }
                // Dropping the senders ends the consumers.
            })
        };
        publisher.await.expect("the publisher finishes");
        for consumer in consumers {
            consumer.await.expect("a consumer finishes");
        }
        let elapsed = started.elapsed();
        let allocations = alloc::count() - allocations;

        let expected = events.len() as u64 * GROUPS;
        assert_eq!(
            delivered.0.load(Ordering::Relaxed),
            expected,
            "baseline deliveries"
        );
        Run { elapsed, allocations }
    })
}

/// The Rust heap allocations per delivery of one run, counted in a run of its own: the
/// timed rounds do not count, since one counter shared by both runtime workers would add
/// a contended write to every allocation.
fn allocations_per_delivery(run: impl FnOnce() -> Run, deliveries: f64) -> f64 {
    alloc::set_counting(true);
    let allocations = run().allocations;
    alloc::set_counting(false);
    allocations as f64 / deliveries
}

fn millions(rate: f64) -> String {
    format!("{:.2} M", rate / 1e6)
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) this is a smoke run
    // that only checks every delivery arrives. A filter argument may follow; nothing to filter.
    let bench = std::env::args().any(|arg| arg == "--bench");
    let (default_events, default_rounds) = if bench { (200_000, 5) } else { (2_000, 1) };
    let n = env_or("FANOUT_EVENTS", default_events).max(1);
    let rounds = env_or("FANOUT_ROUNDS", default_rounds).max(1);
    if !bench {
        println!("fanout: smoke run (figures come from `cargo bench -p eventflow --bench fanout`)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the runtime starts");
    let events = events(n);
    let deliveries = n as f64 * GROUPS as f64;

    println!(
        "fanout: {n} OrderPaid events to {GROUPS} groups ({} deliveries) per run, {rounds} rounds, \
         2 runtime workers",
        n as u64 * GROUPS
    );
    alloc::set_counting(false);
    // Warm-up: allocator, runtime threads, code paths.
    let warm = events.iter().take(n.min(20_000)).cloned().collect::<Vec<_>>();
    let warm = Arc::new(warm);

    let only = std::env::var("FANOUT_ONLY").ok();
    if let Some(side) = &only {
        let run = match side.as_str() {
            "eventflow" => run_eventflow,
            "baseline" => run_baseline,
            other => panic!("FANOUT_ONLY is `eventflow` or `baseline`, not `{other}`"),
        };
        run(&rt, &warm);
        let rates = (0..rounds)
            .map(|_| deliveries / run(&rt, &events).elapsed.as_secs_f64())
            .collect();
        println!(
            "{side} only: {} deliveries/s (median of {rounds}), {:.1} allocations per delivery",
            millions(median(rates)),
            allocations_per_delivery(|| run(&rt, &events), deliveries)
        );
        return;
    }

    run_baseline(&rt, &warm);
    run_eventflow(&rt, &warm);
    let (mut eventflow, mut baseline) = (Vec::new(), Vec::new());
    let mut paired = Vec::new();
    for round in 1..=rounds {
        // The sides take turns at running first, so that neither always runs in the
        // state (heap, caches) the other leaves behind.
        let (b, e) = match round % 2 {
            1 => {
                let b = run_baseline(&rt, &events);
                (b, run_eventflow(&rt, &events))
            }
            _ => {
                let e = run_eventflow(&rt, &events);
                (run_baseline(&rt, &events), e)
            }
        };
        let (b_rate, e_rate) = (
            deliveries / b.elapsed.as_secs_f64(),
            deliveries / e.elapsed.as_secs_f64(),
        );
        println!(
            "  round {round}: eventflow {} deliveries/s | baseline {} deliveries/s",
            millions(e_rate),
            millions(b_rate)
        );
        eventflow.push(e_rate);
        baseline.push(b_rate);
        paired.push(e_rate / b_rate);
    }

    let (eventflow, baseline) = (median(eventflow), median(baseline));
    let ratio = eventflow / baseline;
    println!(
        "eventflow: {} deliveries/s | baseline: {} deliveries/s | ratio {ratio:.2}  (medians of {rounds}; \
         median of the rounds' ratios {:.2})",
        millions(eventflow),
        millions(baseline),
        median(paired)
    );
    println!(
        "allocations per delivery (a run of each side after the timed ones): eventflow {:.1} | \
         baseline {:.1}",
        allocations_per_delivery(|| run_eventflow(&rt, &events), deliveries),
        allocations_per_delivery(|| run_baseline(&rt, &events), deliveries)
    );
    if !bench {
        return;
    }
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "target >= 1.00 M deliveries/s: {} | target ratio >= {TARGET_RATIO:.2}: {}",
        verdict(eventflow >= TARGET_RATE),
        verdict(ratio >= TARGET_RATIO)
    );
}
