//! What every part shares: the `OrderPaid` event, the group that counts it, and the
//! SQLite store its outbox is filled in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::store::{rusqlite, SqliteStore, Storage};
use eventflow::{subscribe, BoxError, Envelope, Event, EventBus, InProcess, State};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::support::TempDb;

/// Events per unit of work when filling the outbox.
pub const UNIT: usize = 1_000;
/// The relay's default batch, used by the rusqlite baseline too.
pub const BATCH: usize = 512;

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "order.paid", topic = "orders")]
pub struct OrderPaid {
    #[event(key)]
    pub order_id: String,
    pub user_id: String,
    pub total_amount: u64,
    pub seq: u64,
}

pub fn order(seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: format!("order-{seq:08}"),
        user_id: format!("user-{:05}", seq % 10_000),
        total_amount: 1_000 + (seq * 37) % 100_000,
        seq,
    }
}

/// The envelope `bus.publish` would build for `order(seq)`.
pub fn envelope(seq: u64) -> Envelope {
    let event = order(seq);
    let payload = serde_json::to_vec(&event).expect("encode");
    let mut envelope = Envelope::new(
        OrderPaid::NAME,
        OrderPaid::VERSION,
        OrderPaid::TOPIC,
        "application/json",
        payload,
    );
    envelope.key = event.partition_key();
    envelope
}

/// Events handled, and a wake-up when the expected number is reached.
#[derive(Clone)]
pub struct Handled {
    pub count: Arc<AtomicU64>,
    expected: u64,
    done: Arc<Notify>,
}

impl Handled {
    pub fn expecting(expected: u64) -> Self {
        Handled {
            count: Arc::default(),
            expected,
            done: Arc::default(),
        }
    }

    pub fn count(&self, event: &OrderPaid) {
        std::hint::black_box(event);
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.expected {
            self.done.notify_one();
        }
    }

    pub async fn wait(&self) {
        self.done.notified().await;
    }
}

#[subscribe(group = "billing")]
pub async fn billing(event: OrderPaid, State(handled): State<Handled>) -> Result<(), BoxError> {
    handled.count(&event);
    Ok(())
}

/// A bus on `transport` whose `billing` group counts into `handled`.
pub async fn billing_bus(transport: &InProcess, handled: &Handled) -> EventBus {
    EventBus::builder()
        .transport(transport.clone())
        .state(handled.clone())
        .handler(billing)
        .start()
        .await
        .expect("the bus starts")
}

pub async fn open(db: &TempDb) -> SqliteStore {
    SqliteStore::open(db.path()).await.expect("the store opens")
}

/// Puts events `first..first + n` in the outbox, `UNIT` per unit of work, building the
/// envelopes a unit at a time.
pub async fn fill_outbox(store: &SqliteStore, first: u64, n: u64) -> Duration {
    let started = Instant::now();
    let mut seq = first;
    while seq < first + n {
        let end = (seq + UNIT as u64).min(first + n);
        let envelopes: Vec<Envelope> = (seq..end).map(envelope).collect();
        let mut tx = store.begin().await.expect("begin");
        tx.enqueue(&envelopes).await.expect("enqueue");
        tx.commit().await.expect("commit");
        seq = end;
    }
    started.elapsed()
}

/// Entries left in the outbox, read on a connection of its own.
pub fn outbox_len(connection: &Connection) -> u64 {
    connection
        .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get::<_, i64>(0))
        .expect("count the outbox") as u64
}
