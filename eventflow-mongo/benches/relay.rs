//! Outbox relay on MongoDB: throughput from commit to in-process delivery, next to the
//! server's raw `insert_many` rate of the same events, and the commit-to-handler latency at
//! a steady rate.
//!
//! ```text
//! cargo bench -p eventflow-mongo --bench relay
//! RELAY_EVENTS=50000 RELAY_BATCH=512 RELAY_RATE=200 RELAY_SECONDS=5 cargo bench -p eventflow-mongo --bench relay
//! ```
//!
//! `RELAY_SERVER_PID` (the server's process id, on Linux) adds the CPU time per event that
//! the server and this process spent in each throughput run: where the time goes.
//!
//! `RELAY_LATENCY_CLEANUP_MS` sets the clean-up interval of the latency run (default: the
//! store's default, 1 s), to see what the clean-up's deletes do to commit latency.
//!
//! `RELAY_ONLY=latency` (or `throughput`) runs only that part.
//!
//! Needs the server at `MONGODB_URI` (default `mongodb://127.0.0.1:27017/?directConnection=true`);
//! each run uses a fresh database and drops it.
//!
//! - **Baseline**: `insert_many` of the events as one document each, what an outbox of one
//!   document per event writes (`RELAY_BATCH` per call, one call at a time), into a plain
//!   collection, before and after the relay runs (the mean time of the two is compared).
//! - **Relay**: one producer commits units of work of `RELAY_BATCH` events each into the
//!   outbox (one document per unit of work, holding its entries) while the relay (change
//!   stream, lease, delivered watermark, saved resume token) delivers them one by one to an
//!   in-process consumer group, with the store's default settings. The clock stops when the
//!   group has handled the last event **and** the relay's background clean-up has deleted
//!   every delivered document, i.e. the outbox collection is empty: all the work the events
//!   cost the server in steady state (insert in a transaction, change-stream read, delete).
//!   Events per second over that time is the figure compared with the target. The consumer
//!   has no inbox: this measures the relay, not the consumers' idempotency (an inbox adds a
//!   lookup and an insert per event per group).
//! - **Relay without clean-up** (for information, not compared with the target): the same
//!   with the clean-up interval set past the end of the run, then the deletion of the
//!   delivered documents, timed on its own, by `_id` in the store's chunks. Deferring does
//!   not remove that work, it only moves it: a relay that delivers for longer than the
//!   interval does it inside the run, as above.
//! - **Latency**: units of work of one event each, committed at `RELAY_RATE` per second for
//!   `RELAY_SECONDS`; the time to the handler starting from `commit()` returning, and from
//!   `begin()` (the whole unit of work, its commit included: the target is judged on this
//!   one, since the handler often starts before the committing task sees `commit()`
//!   return). Printed with it: how long the commits themselves took, the slowest one and the latest
//!   deliveries, with when they happened: a stall of the server shows there.
//!
//! Steady state: the relay deletes the documents it delivered every second by default, by
//! `_id`, at most 1024 entries per delete, so the outbox holds about one second's worth of
//! delivered documents whatever the load, and nothing piles up as long as the server keeps
//! up with inserts plus deletes.
//!
//! Targets: relay throughput at least 0.8x the baseline; p99 latency at most 50 ms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::store::Storage;
use eventflow::{subscribe, Envelope, Event, EventBus, InProcess, Relay, State};
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::{MongoStore, DEFAULT_URI};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const TARGET_RATIO: f64 = 0.8;
const TARGET_P99: Duration = Duration::from_millis(50);
/// The store's default clean-up interval of delivered outbox entries.
const DEFAULT_CLEANUP: Duration = Duration::from_secs(1);
/// A clean-up interval past the end of any run: no clean-up inside it.
const DEFERRED_CLEANUP: Duration = Duration::from_secs(3600);

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "order.paid", topic = "orders")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
    user_id: String,
    total_amount: u64,
    seq: u64,
}

/// What the consumer saw: a count, and for the latency run, when each sequence arrived.
#[derive(Clone, Default)]
struct Seen {
    count: Arc<AtomicU64>,
    arrivals: Arc<Mutex<HashMap<u64, Instant>>>,
    timing: Arc<std::sync::atomic::AtomicBool>,
}

#[subscribe(group = "billing")]
async fn billing(event: OrderPaid, State(seen): State<Seen>) -> Result<(), std::io::Error> {
    if seen.timing.load(Ordering::Relaxed) {
        seen.arrivals.lock().unwrap().insert(event.seq, Instant::now());
    }
    seen.count.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn envelope(seq: u64) -> Envelope {
    let event = OrderPaid {
        order_id: format!("order-{:08}", seq),
        user_id: format!("user-{:05}", seq % 10_000),
        total_amount: 1_000 + (seq * 37) % 100_000,
        seq,
    };
    let mut envelope = Envelope::new(
        OrderPaid::NAME,
        OrderPaid::VERSION,
        OrderPaid::TOPIC,
        "application/json",
        serde_json::to_vec(&event).unwrap(),
    );
    envelope.key = event.partition_key();
    envelope
}

/// CPU seconds used so far by process `pid` (`self` for this one), from `/proc`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ, 100 on Linux.
    Some(ticks / 100.0)
}

/// Measures the CPU time the server (at `RELAY_SERVER_PID`) and this process spend.
struct Cpu {
    server: Option<String>,
    start: (Option<f64>, Option<f64>),
}

impl Cpu {
    fn start() -> Self {
        let server = std::env::var("RELAY_SERVER_PID").ok();
        let start = (server.as_deref().and_then(cpu_seconds), cpu_seconds("self"));
        Cpu { server, start }
    }

    /// "server X µs/event, bench Y µs/event" since `start`, if known.
    fn per_event(&self, events: u64) -> String {
        let Some(server) = self.server.as_deref() else {
            return String::new();
        };
        let used = |start: Option<f64>, now: Option<f64>| match (start, now) {
            (Some(start), Some(now)) => format!("{:.0}", (now - start) / events as f64 * 1e6),
            _ => "?".to_owned(),
        };
        format!(
            "; CPU per event: server {} us, bench {} us",
            used(self.start.0, cpu_seconds(server)),
            used(self.start.1, cpu_seconds("self"))
        )
    }
}

fn uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned())
}

async fn fresh_store(name: &str, cleanup: Duration) -> MongoStore {
    let database = format!("eventflow_bench_{name}_{}", std::process::id());
    let store = MongoStore::connect(&uri(), &database)
        .await
        .unwrap_or_else(|e| panic!("the relay benchmark needs MongoDB at {}: {e}", uri()));
    store.database().drop().await.unwrap();
    let client = store.client().clone();
    MongoStore::builder(client, &database)
        .outbox_cleanup_interval(cleanup)
        .open()
        .await
        .unwrap()
}

/// `insert_many` of one document per event, `batch` at a time; returns the elapsed time.
async fn baseline(n: u64, batch: usize) -> Duration {
    let store = fresh_store("baseline", DEFAULT_CLEANUP).await;
    let collection = store.database().collection::<Document>("raw_outbox");
    collection.insert_one(Document::new()).await.unwrap();
    collection.delete_many(Document::new()).await.unwrap();
    let docs: Vec<Document> = (1..=n)
        .map(|seq| eventflow_mongo::__private::outbox_document(seq, &envelope(seq)).unwrap())
        .collect();
    let cpu = Cpu::start();
    let started = Instant::now();
    for chunk in docs.chunks(batch) {
        collection.insert_many(chunk.to_vec()).await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = cpu.per_event(n);
    if !cpu.is_empty() {
        println!("  raw insert_many of {n}: {:.2} s{cpu}", elapsed.as_secs_f64());
    }
    store.database().drop().await.unwrap();
    elapsed
}

struct Rig {
    store: MongoStore,
    seen: Seen,
    bus: EventBus,
    stop: watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
}

async fn rig(name: &str, batch: usize, cleanup: Duration) -> Rig {
    let store = fresh_store(name, cleanup).await;
    let transport = InProcess::new();
    let seen = Seen::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(seen.clone())
        .handler(billing)
        .start()
        .await
        .unwrap();
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(transport)).batch(batch);
    let (stop, shutdown) = watch::channel(false);
    let relay = tokio::spawn(relay.run(shutdown));
    // Let the relay take the lease and open its change stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Rig {
        store,
        seen,
        bus,
        stop,
        relay,
    }
}

impl Rig {
    async fn finish(self) {
        self.stop.send_replace(true);
        self.relay.await.unwrap();
        self.bus.shutdown().await;
        self.store.database().drop().await.unwrap();
    }
}

/// What a relay run measured.
struct Relayed {
    /// From the first commit until the group handled the last event.
    delivered: Duration,
    /// From the first commit until every delivered entry was deleted (or, with the
    /// clean-up deferred, the time the deferred deletion took on its own).
    cleaned: Duration,
}

/// Commits `n` events in units of work of `batch`, waits until all are handled and the
/// outbox is empty again.
async fn relay_throughput(n: u64, batch: usize, cleanup: Duration) -> Relayed {
    let rig = rig("relay", batch, cleanup).await;
    let envelopes: Vec<Envelope> = (1..=n).map(envelope).collect();
    let cpu = Cpu::start();
    let started = Instant::now();
    for chunk in envelopes.chunks(batch) {
        let mut tx = rig.store.begin().await.unwrap();
        tx.enqueue(chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
    let committed = started.elapsed();
    while rig.seen.count.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered = started.elapsed();
    let outbox = rig
        .store
        .database()
        .collection::<Document>(&rig.store.collection_names().outbox);
    // The units of work's documents, by `_id`: their first sequences.
    let ids: Vec<i64> = (1..=n as i64).step_by(batch).collect();
    let cleaned = if cleanup == DEFERRED_CLEANUP {
        // The store's clean-up, done here: by `_id` (each unit of work's first sequence),
        // at most its chunk of entries per delete, one delete at a time.
        let chunk = eventflow_mongo::__private::OUTBOX_CLEANUP_CHUNK as usize;
        let left = outbox.count_documents(Document::new()).await.unwrap();
        println!("  relay: {left} delivered documents in the outbox");
        let started = Instant::now();
        for ids in ids.chunks((chunk / batch).max(1)) {
            outbox.delete_many(doc! { "_id": { "$in": ids } }).await.unwrap();
        }
        started.elapsed()
    } else {
        // The clean-up deletes in commit order: the last document goes last. (Looked up by
        // `_id`: a count, or a query by range, reads every document, and on some servers
        // costs more than the clean-up it waits for. Checked by a count below.)
        let last = ids.last().copied().unwrap_or(1);
        while outbox
            .find_one(doc! { "_id": last })
            .projection(doc! { "_id": 1 })
            .await
            .unwrap()
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    };
    let cpu = cpu.per_event(n);
    let left = outbox.count_documents(Document::new()).await.unwrap();
    assert_eq!(
        left, 0,
        "documents were left in the outbox when the clock stopped"
    );
    println!(
        "  relay: committed in {:.2} s, delivered {:.2} s after the first commit; {} {:.2} \
         s{cpu}",
        committed.as_secs_f64(),
        delivered.as_secs_f64(),
        match cleanup == DEFERRED_CLEANUP {
            true => "deleting them afterwards took",
            false => "outbox empty",
        },
        cleaned.as_secs_f64()
    );
    rig.finish().await;
    Relayed { delivered, cleaned }
}

/// Latency from commit to handler at `rate` units of work per second for `seconds`.
/// Commit-to-handler latencies, sorted: from `commit()` returning, and from `begin()` (the
/// whole unit of work, its commit included).
async fn latency(rate: u64, seconds: u64, cleanup: Duration) -> (Vec<Duration>, Vec<Duration>) {
    let rig = rig("latency", 512, cleanup).await;
    rig.seen.timing.store(true, Ordering::Relaxed);
    let total = rate * seconds;
    let mut committed_at = HashMap::new();
    let mut begun_at = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut slowest_commit = (0, Duration::ZERO, Duration::ZERO);
    let mut commits = Vec::with_capacity(total as usize);
    for seq in 1..=total {
        tick.tick().await;
        let begun = Instant::now();
        let mut tx = rig.store.begin().await.unwrap();
        tx.enqueue(&[envelope(seq)]).await.unwrap();
        tx.commit().await.unwrap();
        let now = Instant::now();
        commits.push(now - begun);
        if now - begun > slowest_commit.2 {
            slowest_commit = (seq, begun - started, now - begun);
        }
        committed_at.insert(seq, now);
        begun_at.insert(seq, begun);
    }
    while rig.seen.count.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrivals = rig.seen.arrivals.lock().unwrap().clone();
    rig.finish().await;
    let mut latencies: Vec<Duration> = committed_at
        .iter()
        .map(|(seq, committed)| arrivals[seq].saturating_duration_since(*committed))
        .collect();
    // Where the worst of it was: a stall shows as one slow commit or a run of late
    // deliveries at one moment.
    let (seq, at, took) = slowest_commit;
    commits.sort();
    println!(
        "  commits took p50 {:.1} ms, p99 {:.1} ms; {total} in {:.2} s; slowest: #{seq} at \
         {:.3} s, {:.1} ms",
        percentile(&commits, 0.50).as_secs_f64() * 1e3,
        percentile(&commits, 0.99).as_secs_f64() * 1e3,
        committed_at[&total].duration_since(started).as_secs_f64(),
        at.as_secs_f64(),
        took.as_secs_f64() * 1e3
    );
    let mut late: Vec<(u64, Duration)> = committed_at
        .iter()
        .map(|(seq, committed)| (*seq, arrivals[seq].saturating_duration_since(*committed)))
        .collect();
    late.sort_by_key(|&(_, latency)| std::cmp::Reverse(latency));
    for &(seq, latency) in late.iter().take(3) {
        println!(
            "  slow delivery: #{seq} committed at {:.3} s, handled {:.1} ms later",
            committed_at[&seq].duration_since(started).as_secs_f64(),
            latency.as_secs_f64() * 1e3
        );
    }
    latencies.sort();
    let mut from_begin: Vec<Duration> = begun_at
        .iter()
        .map(|(seq, begun)| arrivals[seq].saturating_duration_since(*begun))
        .collect();
    from_begin.sort();
    (latencies, from_begin)
}

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a positive integer, got `{value}`")),
        Err(_) => default,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) this is a short
    // smoke run.
    let bench = std::env::args().any(|arg| arg == "--bench");
    let (events, seconds) = if bench { (50_000, 5) } else { (2_000, 1) };
    let n = env_or("RELAY_EVENTS", events).max(1);
    let batch = env_or("RELAY_BATCH", 512).max(1) as usize;
    let rate = env_or("RELAY_RATE", 200).max(1);
    let seconds = env_or("RELAY_SECONDS", seconds).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let only = std::env::var("RELAY_ONLY").unwrap_or_default();
        if only != "latency" {
            throughput(n, batch).await;
        }
        if only != "throughput" {
            report_latency(rate, seconds).await;
        }
    });
}

/// The throughput runs: baseline, relay, relay with the clean-up deferred, baseline.
async fn throughput(n: u64, batch: usize) {
    println!(
        "relay: {n} events, {batch} per insert_many / unit of work, server {}",
        uri()
    );
    // Warm-up: connections, collections, code paths.
    baseline(n.min(2_000), batch).await;
    relay_throughput(n.min(2_000), batch, DEFAULT_CLEANUP).await;

    let per_second = |time: Duration| n as f64 / time.as_secs_f64();
    // The baseline runs before and after the relay runs, so that a server or machine that
    // slows down over time does not favour either side.
    let before = baseline(n, batch).await;
    let steady = relay_throughput(n, batch, DEFAULT_CLEANUP).await;
    let deferred = relay_throughput(n, batch, DEFERRED_CLEANUP).await;
    let after = baseline(n, batch).await;
    println!(
        "  raw insert_many: {:.0} events/s before the relay runs, {:.0} events/s after",
        per_second(before),
        per_second(after)
    );
    let raw = per_second((before + after) / 2);
    let relayed = per_second(steady.cleaned);
    let ratio = relayed / raw;
    println!(
        "throughput: relay {relayed:.0} events/s (commit -> in-process delivery -> outbox \
         empty, default clean-up) | raw insert_many {raw:.0} events/s (one document \
         each) | ratio {ratio:.2} (target >= {TARGET_RATIO:.2}: {})",
        if ratio >= TARGET_RATIO { "met" } else { "NOT met" }
    );
    println!(
        "  for information, not the target: delivery alone {:.0} events/s ({:.2}x) with the \
         clean-up inside the run, {:.0} events/s ({:.2}x) with it deferred; the deferred \
         clean-up then deleted the documents of {:.0} events/s ({:.2}x raw insert_many)",
        per_second(steady.delivered),
        per_second(steady.delivered) / raw,
        per_second(deferred.delivered),
        per_second(deferred.delivered) / raw,
        per_second(deferred.cleaned),
        per_second(deferred.cleaned) / raw,
    );
}

/// The latency run, and its figures.
async fn report_latency(rate: u64, seconds: u64) {
    let cleanup = match std::env::var("RELAY_LATENCY_CLEANUP_MS") {
        Ok(_) => Duration::from_millis(env_or("RELAY_LATENCY_CLEANUP_MS", 0)),
        Err(_) => DEFAULT_CLEANUP,
    };
    let (latencies, from_begin) = latency(rate, seconds, cleanup).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // The handler often starts before the committing task has seen `commit()` return, so
    // the first figure has many zeros; the second, from `begin()`, counts the whole commit.
    // The target is judged on the second, the stricter.
    println!(
        "latency commit -> handler at {rate} commits/s for {seconds} s ({} events, clean-up \
         every {:.1} s): from commit() returning p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms; \
         from begin(), commit included: p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms (target p99 \
         <= {} ms: {})",
        latencies.len(),
        cleanup.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
        ms(percentile(&from_begin, 0.50)),
        ms(percentile(&from_begin, 0.99)),
        ms(*from_begin.last().unwrap()),
        TARGET_P99.as_millis(),
        if percentile(&from_begin, 0.99) <= TARGET_P99 {
            "met"
        } else {
            "NOT met"
        }
    );
}
