//! Where P5's guard time goes: the guard's store calls timed alone, the same SQL in plain
//! rusqlite, and the floor, a bare consumer loop with and without a per-poll guard.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::store::{rusqlite, InboxStore};
use eventflow::transport::Transport;
use eventflow::{Event, InProcess};
use rusqlite::{params, Connection};
use tokio::runtime::Runtime;
use uuid::Uuid;

use crate::fixture::{envelope, open, order, OrderPaid};
use crate::ledger::{book, CREATE_LEDGER};
use crate::report::{micros, rate};
use crate::support::{median, TempDb};

/// Where the guard's time goes: its store calls timed alone, per event, as the worker makes
/// them (a polled batch of 256 at a time) and one event at a time (the guard before it
/// was batched), then the same SQL with plain rusqlite on the calling thread.
pub fn p5_breakdown(rt: &Runtime, n: usize) {
    const POLL: usize = 256;
    let db = TempDb::new("relay", "p5-breakdown");
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let per_event = |took: Duration| took / n as u32;
    let (check, mark, check_one, mark_one) = rt.block_on(async {
        let store = open(&db).await;
        let started = Instant::now();
        for chunk in ids.chunks(POLL) {
            store.processed("billing", chunk).await.unwrap();
        }
        let check = per_event(started.elapsed());
        let started = Instant::now();
        for chunk in ids.chunks(POLL) {
            store.mark_all_processed("billing", chunk).await.unwrap();
        }
        let mark = per_event(started.elapsed());
        let started = Instant::now();
        for &id in &ids {
            store.is_processed("shipping", id).await.unwrap();
        }
        let check_one = per_event(started.elapsed());
        let started = Instant::now();
        for &id in &ids {
            store.mark_processed("shipping", id).await.unwrap();
        }
        (check, mark, check_one, per_event(started.elapsed()))
    });
    println!(
        "  SqliteStore guard calls, per event: processed {} + mark_all_processed {} in batches \
         of {POLL}; is_processed {} + mark_processed {} one event at a time",
        micros(check),
        micros(mark),
        micros(check_one),
        micros(mark_one)
    );

    let connection = Connection::open(db.path()).unwrap();
    connection.pragma_update(None, "synchronous", "NORMAL").unwrap();
    let time = |f: &mut dyn FnMut(&[Uuid])| {
        let started = Instant::now();
        for chunk in ids.chunks(POLL) {
            f(chunk);
        }
        per_event(started.elapsed())
    };
    let check = time(&mut |chunk| assert!(check_markers(&connection, "notification", chunk).is_empty()));
    let mark = time(&mut |chunk| write_markers(&connection, "notification", chunk));
    let mark_rows = time(&mut |chunk| write_markers_multirow(&connection, "analytics", chunk));
    let started = Instant::now();
    for chunk in ids.chunks(POLL) {
        for id in chunk {
            write_markers(&connection, "audit", std::slice::from_ref(id));
        }
    }
    let mark_single = per_event(started.elapsed());

    // The (c0, c) pair in plain rusqlite: one write transaction per event with the ledger
    // row, without and with the marker.
    connection.execute_batch(CREATE_LEDGER).unwrap();
    let event = order(0);
    let unit = |marker: Option<&Uuid>| {
        connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        if let Some(id) = marker {
            let now = 0_i64;
            connection
                .prepare_cached(INSERT_MARKER)
                .unwrap()
                .execute(params!["ledger", &id.as_bytes()[..], now])
                .unwrap();
        }
        book(&connection, &event).unwrap();
        connection.execute_batch("COMMIT").unwrap();
    };
    let (mut alone, mut with_marker) = (Duration::ZERO, Duration::ZERO);
    for chunk in ids.chunks(POLL) {
        let started = Instant::now();
        chunk.iter().for_each(|_| unit(None));
        alone += started.elapsed();
        let started = Instant::now();
        chunk.iter().for_each(|id| unit(Some(id)));
        with_marker += started.elapsed();
    }
    let (alone, with_marker) = (per_event(alone), per_event(with_marker));
    println!(
        "  plain rusqlite on the calling thread, per event, batches of {POLL}: check {} + mark {} \
         (one INSERT per row), mark {} (multi-row INSERTs of 64); one write transaction per \
         event: {}",
        micros(check),
        micros(mark),
        micros(mark_rows),
        micros(mark_single)
    );
    println!(
        "  (c0, c) in plain rusqlite, one write transaction per event: ledger row {}, ledger \
         row + marker {}: cost {:.1}%",
        micros(alone),
        micros(with_marker),
        (1.0 - alone.as_secs_f64() / with_marker.as_secs_f64()) * 100.0
    );
}

/// Records `ids` as processed by `group` in one write transaction, 64 rows per INSERT.
fn write_markers_multirow(connection: &Connection, group: &str, ids: &[Uuid]) {
    const ROWS: usize = 64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    connection.execute_batch("BEGIN IMMEDIATE").unwrap();
    for chunk in ids.chunks(ROWS) {
        let sql = format!(
            "INSERT OR IGNORE INTO inbox (group_name, event_id, processed_at) VALUES {}",
            vec!["(?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut insert = connection.prepare_cached(&sql).unwrap();
        let values: Vec<rusqlite::types::Value> = chunk
            .iter()
            .flat_map(|id| {
                [
                    rusqlite::types::Value::Text(group.to_owned()),
                    rusqlite::types::Value::Blob(id.as_bytes().to_vec()),
                    rusqlite::types::Value::Integer(now),
                ]
            })
            .collect();
        insert.execute(rusqlite::params_from_iter(values)).unwrap();
    }
    connection.execute_batch("COMMIT").unwrap();
}

const CHECK_MARKER: &str = "SELECT 1 FROM inbox WHERE group_name = ?1 AND event_id = ?2";
const INSERT_MARKER: &str =
    "INSERT OR IGNORE INTO inbox (group_name, event_id, processed_at) VALUES (?1, ?2, ?3)";

/// The ids of `ids` that `group` has processed, in one read transaction.
fn check_markers(connection: &Connection, group: &str, ids: &[Uuid]) -> Vec<Uuid> {
    connection.execute_batch("BEGIN").unwrap();
    let seen = {
        let mut select = connection.prepare_cached(CHECK_MARKER).unwrap();
        ids.iter()
            .filter(|id| select.exists(params![group, &id.as_bytes()[..]]).unwrap())
            .copied()
            .collect()
    };
    connection.execute_batch("COMMIT").unwrap();
    seen
}

/// Records `ids` as processed by `group`, in one write transaction.
fn write_markers(connection: &Connection, group: &str, ids: &[Uuid]) {
    connection.execute_batch("BEGIN IMMEDIATE").unwrap();
    {
        let mut insert = connection.prepare_cached(INSERT_MARKER).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        for id in ids {
            insert.execute(params![group, &id.as_bytes()[..], now]).unwrap();
        }
    }
    connection.execute_batch("COMMIT").unwrap();
}

/// How the bare consumer loop of [`consumer_loop`] guards its handler.
#[derive(Clone, Copy, PartialEq)]
enum Floor {
    /// No guard.
    Off,
    /// Check the poll's ids in one read transaction, handle, mark them in one write
    /// transaction, commit the offsets: the bus's guard.
    PerPoll,
    /// The same, but the markers of one poll are written while the next poll is checked and
    /// handled; its offsets are committed once they are written.
    Pipelined,
}

/// The floor of the inbox guard, outside the bus: a consumer loop on the in-process
/// transport that decodes and counts each polled record, guarded as `floor` says with plain
/// rusqlite on the blocking pool. Returns the time until `n` events were handled.
async fn consumer_loop(n: u64, floor: Floor) -> (Duration, u64) {
    let db = TempDb::new("relay", "p5-floor");
    drop(open(&db).await);
    let connect = || {
        let connection = Connection::open(db.path()).unwrap();
        connection.pragma_update(None, "synchronous", "NORMAL").unwrap();
        Arc::new(Mutex::new(connection))
    };
    let (reader, writer) = (connect(), connect());
    let transport = InProcess::new();
    let mut consumer = transport
        .subscribe("billing", &[OrderPaid::TOPIC])
        .await
        .expect("subscribe");
    let started = Instant::now();
    let publisher = {
        let transport = transport.clone();
        tokio::spawn(async move {
            for seq in 0..n {
                transport.publish(envelope(seq)).await.expect("publish");
            }
        })
    };
    // On a worker like the bus's own consumer loop, not on the thread that blocks on it.
    let handler = tokio::spawn(async move {
        let (mut handled, mut polls) = (0, 0);
        let mut writing: Option<(tokio::task::JoinHandle<()>, Vec<eventflow::transport::Record>)> = None;
        while handled < n {
            let records = consumer.poll().await.expect("poll");
            polls += 1;
            let ids: Arc<Vec<Uuid>> = Arc::new(records.iter().map(|r| r.envelope.id).collect());
            let seen = match floor {
                Floor::Off => Vec::new(),
                Floor::PerPoll | Floor::Pipelined => {
                    let (reader, ids) = (reader.clone(), ids.clone());
                    tokio::task::spawn_blocking(move || {
                        check_markers(&reader.lock().unwrap(), "billing", &ids)
                    })
                    .await
                    .unwrap()
                }
            };
            for record in &records {
                if seen.contains(&record.envelope.id) {
                    continue;
                }
                let event: OrderPaid = serde_json::from_slice(&record.envelope.payload).expect("decode");
                std::hint::black_box(event);
                handled += 1;
            }
            if floor == Floor::Off {
                consumer.commit(&records).await.expect("commit");
                continue;
            }
            let writer = writer.clone();
            let write =
                tokio::task::spawn_blocking(move || write_markers(&writer.lock().unwrap(), "billing", &ids));
            if floor == Floor::PerPoll {
                write.await.unwrap();
                consumer.commit(&records).await.expect("commit");
                continue;
            }
            if let Some((written, records)) = writing.replace((write, records)) {
                written.await.unwrap();
                consumer.commit(&records).await.expect("commit");
            }
        }
        if let Some((written, records)) = writing {
            written.await.unwrap();
            consumer.commit(&records).await.expect("commit");
        }
        polls
    });
    let polls = handler.await.expect("the consumer loop finishes");
    let elapsed = started.elapsed();
    publisher.await.expect("the publisher finishes");
    (elapsed, polls)
}

/// The floor (b) is held to, alone, for profiling: the guard's marker write overlapping the
/// next poll, as the bus's own loop does. Returns the time until `n` events were handled.
pub async fn pipelined_floor(n: u64) -> Duration {
    consumer_loop(n, Floor::Pipelined).await.0
}

/// The floor's rates, events/s, medians: no guard, per-poll guard, and the per-poll guard
/// with its marker write overlapping the next poll.
pub struct FloorRates {
    pub off: f64,
    pub per_poll: f64,
    pub pipelined: f64,
}

pub fn p5_floor(rt: &Runtime, n: u64, rounds: usize) -> FloorRates {
    rt.block_on(consumer_loop(n / 10 + 1, Floor::Pipelined));
    let floors = [Floor::Off, Floor::PerPoll, Floor::Pipelined];
    let (mut rates, mut sizes) = (vec![Vec::new(); floors.len()], vec![Vec::new(); floors.len()]);
    for _ in 0..rounds {
        for (i, &floor) in floors.iter().enumerate() {
            let (took, polls) = rt.block_on(consumer_loop(n, floor));
            rates[i].push(n as f64 / took.as_secs_f64());
            sizes[i].push(n as f64 / polls as f64);
        }
    }
    let [off, per_poll, pipelined] = [0, 1, 2].map(|i| median(rates[i].clone()));
    let [off_size, per_poll_size, pipelined_size] = [0, 1, 2].map(|i| median(sizes[i].clone()));
    println!(
        "  floor, a bare consumer loop without the bus ({n} events; mean records per poll in \
         brackets): no guard {} [{off_size:.0}] | per-poll guard {} [{per_poll_size:.0}] (cost \
         {:.1}%) | per-poll guard with the marker write overlapping the next poll {} \
         [{pipelined_size:.0}] (cost {:.1}%)  (medians of {rounds})",
        rate(off),
        rate(per_poll),
        (1.0 - per_poll / off) * 100.0,
        rate(pipelined),
        (1.0 - pipelined / off) * 100.0
    );
    FloorRates {
        off,
        per_poll,
        pipelined,
    }
}
