//! P3a, sustained relay throughput, side by side with plain rusqlite draining the same
//! outbox and with the same events published straight to the transport.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::store::{rusqlite, SqliteStore};
use eventflow::{InProcess, Relay};
use rusqlite::{params, Connection};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::fixture::{billing_bus, fill_outbox, open, order, outbox_len, Handled, OrderPaid, BATCH, UNIT};
use crate::report::{rate, verdict};
use crate::support::{median, TempDb};

const RELAY_TARGET: f64 = 100_000.0;

/// Relays the `n` events waiting in `store`'s outbox to one group; the time from starting
/// the relay until the group committed every event and the outbox is empty.
pub async fn relay_backlog(store: &SqliteStore, path: &Path, n: u64) -> Duration {
    let watcher = Connection::open(path).expect("a watcher connection");
    let transport = InProcess::new();
    let handled = Handled::expecting(n);
    let bus = billing_bus(&transport, &handled).await;
    let (stop, stopped) = watch::channel(false);
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(transport.clone()));

    let started = Instant::now();
    let relay = tokio::spawn(relay.run(stopped));
    handled.wait().await;
    transport.wait_idle().await;
    while outbox_len(&watcher) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();

    stop.send_replace(true);
    relay.await.expect("the relay stops");
    assert_eq!(handled.count.load(Ordering::Relaxed), n, "events handled");
    bus.shutdown().await;
    elapsed
}

/// An outbox row read whole, as a relay must.
type RawRow = (
    i64,
    Vec<u8>,
    String,
    i64,
    String,
    Option<String>,
    i64,
    Vec<u8>,
    Option<Vec<u8>>,
    String,
    String,
    Vec<u8>,
);

/// The rusqlite baseline: selects, decodes and deletes the `n` waiting entries, `BATCH` per
/// transaction, on a connection configured as the store's writer.
fn raw_drain(path: &Path, n: u64) -> Duration {
    let connection = Connection::open(path).expect("a raw connection");
    connection.busy_timeout(Duration::from_secs(5)).unwrap();
    connection.pragma_update(None, "synchronous", "NORMAL").unwrap();
    let started = Instant::now();
    let (mut after, mut total) = (0_i64, 0_u64);
    loop {
        connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        let rows: Vec<RawRow> = {
            let mut select = connection
                .prepare_cached(
                    "SELECT sequence, event_id, name, schema_version, topic, partition_key, \
                     created_at, correlation_id, causation_id, headers, content_type, payload \
                     FROM outbox WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
                )
                .unwrap();
            let rows = select
                .query_map(params![after, BATCH as i64], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                })
                .unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        if rows.is_empty() {
            connection.execute_batch("COMMIT").unwrap();
            break;
        }
        let mut delete = connection
            .prepare_cached("DELETE FROM outbox WHERE sequence = ?1")
            .unwrap();
        for row in &rows {
            let id = Uuid::from_slice(&row.1).expect("an event id");
            let headers: BTreeMap<String, String> = serde_json::from_str(&row.9).expect("headers");
            let event: OrderPaid = serde_json::from_slice(&row.11).expect("decode");
            std::hint::black_box((id, headers, event));
            delete.execute([row.0]).unwrap();
        }
        drop(delete);
        connection.execute_batch("COMMIT").unwrap();
        after = rows.last().unwrap().0;
        total += rows.len() as u64;
    }
    let elapsed = started.elapsed();
    assert_eq!(total, n, "rows drained");
    elapsed
}

/// The events `first..first + n` published straight to the in-process transport with
/// `bus.publish` to the same group: the transport's side alone.
async fn publish_direct(first: u64, n: u64) -> Duration {
    let transport = InProcess::new();
    let handled = Handled::expecting(n);
    let bus = billing_bus(&transport, &handled).await;
    let started = Instant::now();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for seq in first..first + n {
                bus.publish(&order(seq)).await.expect("publish");
            }
        })
    };
    publisher.await.expect("the publisher finishes");
    handled.wait().await;
    transport.wait_idle().await;
    let elapsed = started.elapsed();
    bus.shutdown().await;
    elapsed
}

pub fn p3a(rt: &Runtime, n: u64, rounds: usize, bench: bool) {
    println!(
        "P3a sustained relay throughput: {n} events in the outbox ({UNIT} per unit of work), \
         relay batch {BATCH}, 1 group, {rounds} rounds"
    );
    let db = TempDb::new("relay", "p3a");
    let store = rt.block_on(open(&db));
    // Warm-up: code paths, allocator, the file's pages.
    let warm = (n / 10).max(1);
    let mut next = 0;
    rt.block_on(fill_outbox(&store, next, warm));
    rt.block_on(relay_backlog(&store, db.path(), warm));
    rt.block_on(fill_outbox(&store, next + warm, warm));
    raw_drain(db.path(), warm);
    next += 2 * warm;

    let (mut relay, mut raw, mut direct, mut fills) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (mut r, mut b) = (0.0, 0.0);
        // Alternate which side goes first: the file grows and the page cache warms.
        let sides = if round % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for relay_side in sides {
            let took = rt.block_on(fill_outbox(&store, next, n));
            fills.push(n as f64 / took.as_secs_f64());
            next += n;
            if relay_side {
                r = n as f64 / rt.block_on(relay_backlog(&store, db.path(), n)).as_secs_f64();
            } else {
                b = n as f64 / raw_drain(db.path(), n).as_secs_f64();
            }
        }
        let d = n as f64 / rt.block_on(publish_direct(0, n)).as_secs_f64();
        println!(
            "  round {round}: relay {} | rusqlite read+delete {} | in-process publish {}",
            rate(r),
            rate(b),
            rate(d)
        );
        relay.push(r);
        raw.push(b);
        direct.push(d);
    }
    let (relay, raw, direct) = (median(relay), median(raw), median(direct));
    println!(
        "  relay: {} | rusqlite read+delete: {} | ratio {:.2} | in-process publish: {} \
         (medians of {rounds}; filling the outbox ran at {})",
        rate(relay),
        rate(raw),
        relay / raw,
        rate(direct),
        rate(median(fills))
    );
    if bench {
        println!(
            "  target >= {}: {}",
            rate(RELAY_TARGET),
            verdict(relay >= RELAY_TARGET)
        );
    }
}
