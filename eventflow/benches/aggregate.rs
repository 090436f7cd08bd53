//! Loading an aggregate with 10,000 events, with and without snapshots: issue 12's
//! "Snapshots" benchmark.
//!
//! ```text
//! cargo bench -p eventflow --bench aggregate
//! AGGREGATE_EVENTS=100000 AGGREGATE_ROUNDS=21 cargo bench -p eventflow --bench aggregate
//! ```
//!
//! One aggregate's stream holds `AGGREGATE_EVENTS` (10,000) events, on a temporary SQLite
//! file (WAL, `synchronous = NORMAL`) and in memory. Side by side, each load timed
//! `AGGREGATE_ROUNDS` (11) times, the sides alternating, medians printed:
//!
//! - **whole stream**: `Repository::load` of an aggregate without snapshots, which reads,
//!   decodes and applies every event;
//! - **snapshot**: the same stream loaded by an aggregate with `Snapshots::every(1000)`,
//!   whose snapshot is at the stream's last version, so the load reads the snapshot and
//!   finds no event after it;
//! - **snapshot + 999**: its snapshot 999 events back, so the load applies 999 events after it;
//! - **read_stream only**: the raw floor of the first, `EventStore::read_stream` of the whole
//!   stream without decoding.

use std::time::Instant;

use eventflow::aggregate::Snapshots;
use eventflow::store::{ExpectedVersion, SqliteStore, Storage, StoredSnapshot};
use eventflow::{Aggregate, Event, EventBus, MemoryStore};
use serde::{Deserialize, Serialize};

mod support;
use support::{env_or, median_duration, TempDb};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "account.event", topic = "accounts")]
enum AccountEvent {
    Deposited {
        #[event(key)]
        account: String,
        cents: u64,
    },
    Withdrawn {
        #[event(key)]
        account: String,
        cents: u64,
    },
}

#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
    movements: u64,
}

fn apply(account: &mut Account, event: &AccountEvent) {
    match event {
        AccountEvent::Deposited { cents, .. } => account.balance += *cents as i64,
        AccountEvent::Withdrawn { cents, .. } => account.balance -= *cents as i64,
    }
    account.movements += 1;
}

impl Aggregate for Account {
    type Event = AccountEvent;
    const KIND: &'static str = "account";

    fn apply(&mut self, event: &AccountEvent) {
        apply(self, event)
    }
}

/// The same aggregate, snapshotted.
#[derive(Default, Serialize, Deserialize)]
struct SnapshottedAccount(Account);

impl Aggregate for SnapshottedAccount {
    type Event = AccountEvent;
    const KIND: &'static str = "account";

    fn apply(&mut self, event: &AccountEvent) {
        apply(&mut self.0, event)
    }

    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(1_000)
    }
}

async fn fill(bus: &EventBus, events: usize) {
    let mut work = bus.begin().await.unwrap();
    let batch: Vec<AccountEvent> = (0..events)
        .map(|n| match n % 3 {
            2 => AccountEvent::Withdrawn {
                account: "a-1".into(),
                cents: 50,
            },
            _ => AccountEvent::Deposited {
                account: "a-1".into(),
                cents: 100,
            },
        })
        .collect();
    work.append("account-a-1", ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    work.commit().await.unwrap();
}

/// The snapshot at `version`, made by replaying the stream up to it.
async fn snapshot_at(store: &dyn Storage, version: u64) -> StoredSnapshot {
    let mut state = SnapshottedAccount::default();
    for stored in store.read_stream("account-a-1", 1).await.unwrap() {
        if stored.version > version {
            break;
        }
        let event: AccountEvent = serde_json::from_slice(&stored.envelope.payload).unwrap();
        state.apply(&event);
    }
    StoredSnapshot {
        stream: "account-a-1".into(),
        version,
        schema: 1,
        state: serde_json::to_vec(&state).unwrap(),
    }
}

async fn bench(label: &str, store: impl Storage + Clone, events: usize, rounds: usize) {
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();
    fill(&bus, events).await;
    let plain = bus.repository::<Account>().unwrap();
    let snapshotted = bus.repository::<SnapshottedAccount>().unwrap();
    let head = events as u64;
    let at_head = snapshot_at(&store, head).await;
    let behind = snapshot_at(&store, head - 999).await;
    let snapshots = store.snapshots().expect("the store keeps snapshots");

    let (mut whole, mut fresh, mut stale, mut raw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut sides: [u8; 4] = [0, 1, 2, 3];
        sides.rotate_left(round % 4);
        for side in sides {
            match side {
                0 => {
                    let started = Instant::now();
                    let account = plain.load("a-1").await.unwrap();
                    whole.push(started.elapsed());
                    assert_eq!(account.version(), head);
                }
                1 | 2 => {
                    let snapshot = if side == 1 {
                        at_head.clone()
                    } else {
                        behind.clone()
                    };
                    // Replace whatever the previous load left: the snapshot this side measures.
                    snapshots
                        .save_snapshot(StoredSnapshot {
                            schema: 0,
                            ..snapshot.clone()
                        })
                        .await
                        .unwrap();
                    snapshots.save_snapshot(snapshot).await.unwrap();
                    let started = Instant::now();
                    let account = snapshotted.load("a-1").await.unwrap();
                    let took = started.elapsed();
                    assert_eq!((account.version(), account.0.movements), (head, head));
                    if side == 1 {
                        fresh.push(took)
                    } else {
                        stale.push(took)
                    }
                }
                _ => {
                    let started = Instant::now();
                    let read = store.read_stream("account-a-1", 1).await.unwrap();
                    raw.push(started.elapsed());
                    assert_eq!(read.len(), events);
                }
            }
        }
    }
    let (whole, fresh, stale, raw) = (
        median_duration(whole),
        median_duration(fresh),
        median_duration(stale),
        median_duration(raw),
    );
    println!("{label}: loading an aggregate of {events} events, medians of {rounds} loads");
    println!("  whole stream          {:>10.3} ms", whole.as_secs_f64() * 1e3);
    println!(
        "  snapshot              {:>10.3} ms   {:.0}x faster",
        fresh.as_secs_f64() * 1e3,
        whole.as_secs_f64() / fresh.as_secs_f64()
    );
    println!(
        "  snapshot + 999 events {:>10.3} ms   {:.0}x faster",
        stale.as_secs_f64() * 1e3,
        whole.as_secs_f64() / stale.as_secs_f64()
    );
    println!(
        "  read_stream only      {:>10.3} ms   (raw floor of the whole-stream load)",
        raw.as_secs_f64() * 1e3
    );
    bus.shutdown().await;
}

fn main() {
    let events = env_or("AGGREGATE_EVENTS", 10_000usize);
    let rounds = env_or("AGGREGATE_ROUNDS", 11usize).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = TempDb::new("aggregate", "sqlite");
        let store = SqliteStore::open(db.path()).await.unwrap();
        bench("SQLite", store, events, rounds).await;
        drop(db);
        bench("memory", MemoryStore::new(), events, rounds).await;
    });
}
