//! A projection's catch-up throughput next to a plain `read_all` loop over the same store:
//! issue 12's "Projections" benchmark (target: at least 0.8x the loop).
//!
//! ```text
//! cargo bench -p eventflow --bench projection
//! PROJECTION_EVENTS=500000 PROJECTION_ROUNDS=7 cargo bench -p eventflow --bench projection
//! ```
//!
//! The store holds `PROJECTION_EVENTS` (100,000) events over 100 streams, committed 1,000 per
//! unit of work, on a temporary SQLite file (WAL, `synchronous = NORMAL`) and in memory.
//! Side by side, `PROJECTION_ROUNDS` (5) rounds alternating the sides, medians printed:
//!
//! - **read_all loop**: `EventStore::read_all` from 0 in pages of 500 until the end, counting
//!   the events: what any reader of the store does at best;
//! - **projection**: a projection with batches of 500 that counts each event, rebuilt from
//!   position 0 (`ProjectionHandle::rebuild`, the checkpoint moved back in one unit of work)
//!   until `caught_up`: the same reads, plus one unit of work per batch that saves the
//!   checkpoint (and would hold the read model's writes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::store::{ExpectedVersion, SqliteStore, Storage, StoredEvent, Transaction};
use eventflow::{BoxError, Envelope, EventBus, MemoryStore, Projection};

mod support;
use support::{env_or, median, TempDb};

const TARGET: f64 = 0.8;
const PAGE: usize = 500;

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

impl Projection for Count {
    const NAME: &'static str = "bench.count";
    const BATCH: usize = PAGE;

    async fn apply(&self, _event: &StoredEvent, _tx: &mut dyn Transaction) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn reset(&self, _from: u64, _tx: &mut dyn Transaction) -> Result<(), BoxError> {
        self.0.store(0, Ordering::Relaxed);
        Ok(())
    }
}

async fn fill(store: &impl Storage, events: usize) {
    for unit in 0..events.div_ceil(1_000) {
        let mut tx = store.begin().await.unwrap();
        let n = (events - unit * 1_000).min(1_000);
        for stream in 0..100 {
            let batch: Vec<Envelope> = (0..n / 100 + usize::from(stream < n % 100))
                .map(|i| {
                    Envelope::new(
                        "order.placed",
                        1,
                        "orders",
                        "application/json",
                        format!("{{\"order\":\"o-{stream}\",\"n\":{i}}}"),
                    )
                })
                .collect();
            if !batch.is_empty() {
                tx.append(&format!("order-{stream}"), ExpectedVersion::Any, &batch)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
}

async fn read_all_loop(store: &impl Storage) -> u64 {
    let (mut after, mut counted) = (0, 0u64);
    loop {
        let page = store.read_all(after, PAGE).await.unwrap();
        let Some(last) = page.last() else { return counted };
        after = last.position;
        counted += page.len() as u64;
    }
}

async fn bench(label: &str, store: impl Storage + Clone, events: usize, rounds: usize) -> f64 {
    fill(&store, events).await;
    let count = Count::default();
    let bus = EventBus::builder()
        .storage(store.clone())
        .projection(count.clone())
        .start()
        .await
        .unwrap();
    let projection = bus.projection(Count::NAME).unwrap();
    projection.caught_up().await.unwrap();

    let (mut plain, mut projected) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in [round % 2, (round + 1) % 2] {
            let started = Instant::now();
            if side == 0 {
                assert_eq!(read_all_loop(&store).await, events as u64);
                plain.push(events as f64 / started.elapsed().as_secs_f64());
            } else {
                projection.rebuild().await.unwrap();
                let progress = projection.caught_up().await.unwrap();
                projected.push(events as f64 / started.elapsed().as_secs_f64());
                assert_eq!(
                    (progress.position, count.0.load(Ordering::Relaxed)),
                    (events as u64, events as u64)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.shutdown().await;
    let (plain, projected) = (median(plain), median(projected));
    let ratio = projected / plain;
    println!("{label}: catching up with {events} events, medians of {rounds} rounds");
    println!("  read_all loop  {plain:>12.0} events/s");
    println!(
        "  projection     {projected:>12.0} events/s   {ratio:.2}x the loop (target at least {TARGET}x): {}",
        if ratio >= TARGET { "met" } else { "NOT met" }
    );
    ratio
}

fn main() {
    let events = env_or("PROJECTION_EVENTS", 100_000usize);
    let rounds = env_or("PROJECTION_ROUNDS", 5usize).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = TempDb::new("projection", "sqlite");
        bench(
            "SQLite",
            SqliteStore::open(db.path()).await.unwrap(),
            events,
            rounds,
        )
        .await;
        drop(db);
        bench("memory", MemoryStore::new(), events, rounds).await;
    });
}
