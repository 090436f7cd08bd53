//! The outbox relay and the inbox guard on SQLite: the figures of issue 3's "Benchmarks".
//!
//! ```text
//! cargo bench -p eventflow --bench relay
//! RELAY_EVENTS=100000 RELAY_ROUNDS=5 cargo bench -p eventflow --bench relay
//! RELAY_ONLY=p3a cargo bench -p eventflow --bench relay   # one part: p3a, p3b, p5, p6
//! RELAY_ONLY=guard cargo bench -p eventflow --bench relay # P5 (b) alone, for profiling
//! RELAY_ONLY=noguard cargo bench -p eventflow --bench relay # P5 (a) alone
//! ```
//!
//! Every part runs on a temporary SQLite file (`SqliteStore`, WAL, `synchronous = NORMAL`),
//! removed afterwards with its `-wal` and `-shm`, on a multi-thread runtime with 2 workers.
//!
//! - **P3a, sustained relay throughput** (target at least 100,000 events/s). The outbox is
//!   filled with `RELAY_EVENTS` (200,000) `OrderPaid` events, 1,000 per unit of work. The
//!   clock runs from starting a [`Relay`] on the in-process transport, with one group that
//!   decodes and counts each event, until the group has handled and committed every event
//!   and the outbox is empty. The relay runs as it ships: batches of 512, entries kept until
//!   the group handled them ([`Transport::until_handled`]), up to 16 batches
//!   in flight. The group runs on a bus without storage, so no inbox guard is in the way
//!   (P5 measures that). Side by side: the same rows selected, decoded and deleted with plain
//!   rusqlite in transactions of 512 on the same file (what any relay can do at best on
//!   SQLite), and the same events published straight to the in-process transport (what the
//!   transport and the group can take). The ratio is relay / rusqlite.
//! - **P3b, commit-to-handler latency** at 1,000 events/s (target p99 at most 5 ms). A
//!   bus with the store runs the relay; a task commits one event per unit of work every
//!   millisecond for `RELAY_LATENCY_SECS` (5) after a 0.5 s warm-up, and keeps the instant
//!   each `commit()` returned. The handler keeps the instant it ran; the latency is the
//!   difference, in the bus's usual setup (inbox guard on).
//! - **P5, the inbox guard's cost** (target at most 10%). `RELAY_P5_EVENTS` (50,000) events
//!   published with `bus.publish` to one group: (a) on a bus without storage, (b) on a bus
//!   with the store, so the inbox guards the handler (`InboxStore::processed` for each polled
//!   batch before, `mark_all_processed` after, written while the next batch is handled and
//!   before the batch's offset commit); (c0) a handler that inserts one row in a unit of
//!   work of its own, without guard, and (c) the same insert from a `Tx` handler, whose
//!   unit of work also holds the marker (the bus runs the `Tx` handlers of consecutive
//!   events in savepoints of one unit of work and commits them together). The cost is
//!   1 - guarded rate / unguarded rate, for (a, b) and for (c0, c). A breakdown follows: the
//!   guard's store calls timed alone, the same SQL with plain rusqlite, and the floor: a
//!   bare consumer loop on the transport with and without a per-poll guard in plain
//!   rusqlite, no bus around it.
//! - **P6, peak memory while relaying a backlog of `RELAY_BACKLOG` (1,000,000) events**,
//!   which must be streamed, never loaded whole. It runs in a child process of its own so
//!   the other parts' heap does not blur it. RSS is sampled every 10 ms while relaying;
//!   printed: the peak, its growth over the RSS before relaying, VmHWM before and after, and
//!   the throughput.
//!
//! Rounds alternate the sides and report medians (`RELAY_ROUNDS`, 3). Measure on a quiet
//! machine: SQLite commits, the blocking pool and the runtime share the 2 cores.
//!
//! [`Transport::until_handled`]: eventflow::transport::Transport::until_handled

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::store::{rusqlite, InboxStore, SqliteStore, SqliteTransaction, Storage};
use eventflow::transport::Transport;
use eventflow::{subscribe, BoxError, Envelope, Event, EventBus, InProcess, Relay, State, Tx};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

mod support;
use support::{env_or, median, TempDb};

const RELAY_TARGET: f64 = 100_000.0;
const LATENCY_TARGET: Duration = Duration::from_millis(5);
const GUARD_COST_TARGET: f64 = 0.10;
/// Events per unit of work when filling the outbox.
const UNIT: usize = 1_000;
/// The relay's default batch, used by the rusqlite baseline too.
const BATCH: usize = 512;

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "order.paid", topic = "orders")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
    user_id: String,
    total_amount: u64,
    seq: u64,
}

fn order(seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: format!("order-{seq:08}"),
        user_id: format!("user-{:05}", seq % 10_000),
        total_amount: 1_000 + (seq * 37) % 100_000,
        seq,
    }
}

/// The envelope `bus.publish` would build for `order(seq)`.
fn envelope(seq: u64) -> Envelope {
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
struct Handled {
    count: Arc<AtomicU64>,
    expected: u64,
    done: Arc<Notify>,
}

impl Handled {
    fn expecting(expected: u64) -> Self {
        Handled {
            count: Arc::default(),
            expected,
            done: Arc::default(),
        }
    }

    fn count(&self, event: &OrderPaid) {
        std::hint::black_box(event);
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.expected {
            self.done.notify_one();
        }
    }

    async fn wait(&self) {
        self.done.notified().await;
    }
}

#[subscribe(group = "billing")]
async fn billing(event: OrderPaid, State(handled): State<Handled>) -> Result<(), BoxError> {
    handled.count(&event);
    Ok(())
}

/// When each event was handled, by sequence number.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(u64, Instant)>>>);

#[subscribe(group = "latency")]
async fn arrival(event: OrderPaid, State(arrivals): State<Arrivals>) -> Result<(), BoxError> {
    let now = Instant::now();
    arrivals.0.lock().unwrap().push((event.seq, now));
    Ok(())
}

const CREATE_LEDGER: &str =
    "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL, amount INTEGER NOT NULL)";
const INSERT_LEDGER: &str = "INSERT INTO ledger (order_id, amount) VALUES (?1, ?2)";

fn book(connection: &Connection, event: &OrderPaid) -> rusqlite::Result<()> {
    connection
        .prepare_cached(INSERT_LEDGER)?
        .execute(params![event.order_id, event.total_amount as i64])?;
    Ok(())
}

/// P5 (c): the insert in the handler's unit of work, which also holds the inbox marker.
#[subscribe(group = "ledger")]
async fn book_in_tx(event: OrderPaid, tx: Tx, State(handled): State<Handled>) -> Result<(), BoxError> {
    {
        let mut tx = tx.lock().await;
        let sqlite = tx
            .downcast_mut::<SqliteTransaction>()
            .expect("a SqliteStore unit of work");
        book(sqlite.connection(), &event)?;
    }
    handled.count(&event);
    Ok(())
}

/// The store P5 (c0) writes its ledger rows to, without the bus knowing.
#[derive(Clone)]
struct Ledger(SqliteStore);

/// P5 (c0): the same insert in a unit of work of its own, no guard.
#[subscribe(group = "ledger")]
async fn book_alone(
    event: OrderPaid,
    State(ledger): State<Ledger>,
    State(handled): State<Handled>,
) -> Result<(), BoxError> {
    let mut tx = ledger.0.begin().await?;
    let sqlite = tx
        .downcast_mut::<SqliteTransaction>()
        .expect("a SqliteStore unit of work");
    book(sqlite.connection(), &event)?;
    tx.commit().await?;
    handled.count(&event);
    Ok(())
}

async fn open(db: &TempDb) -> SqliteStore {
    SqliteStore::open(db.path()).await.expect("the store opens")
}

/// Puts events `first..first + n` in the outbox, `UNIT` per unit of work, building the
/// envelopes a unit at a time.
async fn fill_outbox(store: &SqliteStore, first: u64, n: u64) -> Duration {
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
fn outbox_len(connection: &Connection) -> u64 {
    connection
        .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get::<_, i64>(0))
        .expect("count the outbox") as u64
}

/// Relays the `n` events waiting in `store`'s outbox to one group; the time from starting
/// the relay until the group committed every event and the outbox is empty.
async fn relay_backlog(store: &SqliteStore, path: &Path, n: u64) -> Duration {
    let watcher = Connection::open(path).expect("a watcher connection");
    let transport = InProcess::new();
    let handled = Handled::expecting(n);
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(handled.clone())
        .handler(billing)
        .start()
        .await
        .expect("the bus starts");
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
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(handled.clone())
        .handler(billing)
        .start()
        .await
        .expect("the bus starts");
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

fn p3a(rt: &Runtime, n: u64, rounds: usize, bench: bool) {
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

fn p3b(rt: &Runtime, secs: f64, bench: bool) {
    let warm_up = Duration::from_millis(500);
    let run = Duration::from_secs_f64(secs);
    println!(
        "P3b commit->handler latency: one event per unit of work every 1 ms for {secs} s (after \
         {warm_up:?} of warm-up), bus with the store (relay + inbox guard), 1 group"
    );
    let db = TempDb::new("relay", "p3b");
    let (committed, arrivals, elapsed) = rt.block_on(async {
        let store = open(&db).await;
        let arrivals = Arrivals::default();
        let bus = EventBus::builder()
            .storage(store)
            .state(arrivals.clone())
            .handler(arrival)
            .start()
            .await
            .expect("the bus starts");
        let publisher = {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut ticks = tokio::time::interval(Duration::from_millis(1));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let started = Instant::now();
                let mut measured = None;
                for seq in 0.. {
                    ticks.tick().await;
                    let now = Instant::now();
                    if now - started >= warm_up + run {
                        break;
                    }
                    let mut work = bus.begin().await.expect("begin");
                    work.publish(&order(seq)).await.expect("publish");
                    let calling = Instant::now();
                    work.commit().await.expect("commit");
                    let returned = Instant::now();
                    if now - started >= warm_up {
                        measured.get_or_insert(now);
                        committed.push((seq, calling, returned));
                    }
                }
                let elapsed = measured.map_or(Duration::ZERO, |since| since.elapsed());
                (committed, elapsed)
            })
        };
        let (committed, elapsed) = publisher.await.expect("the publisher finishes");
        let last = committed.last().map_or(0, |c| c.0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !arrivals.0.lock().unwrap().iter().any(|a| a.0 == last) {
            assert!(
                Instant::now() < deadline,
                "the last event was not handled within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bus.shutdown().await;
        let arrivals: HashMap<u64, Instant> = arrivals.0.lock().unwrap().iter().copied().collect();
        (committed, arrivals, elapsed)
    });

    let (mut from_return, mut from_call, mut early) = (Vec::new(), Vec::new(), 0);
    for (seq, calling, returned) in &committed {
        let handled = arrivals.get(seq).expect("every committed event is handled");
        if handled < returned {
            early += 1;
        }
        from_return.push(handled.saturating_duration_since(*returned));
        from_call.push(handled.saturating_duration_since(*calling));
    }
    let achieved = committed.len() as f64 / elapsed.as_secs_f64();
    let p99 = percentile(&mut from_return, 0.99);
    println!(
        "  {} events at {achieved:.0} events/s; from commit() returned: {}; from commit() \
         called: {}; handled before commit() returned: {early}",
        committed.len(),
        percentiles(&mut from_return),
        percentiles(&mut from_call)
    );
    if bench {
        println!(
            "  target p99 <= {} ms: {}",
            LATENCY_TARGET.as_millis(),
            verdict(p99 <= LATENCY_TARGET)
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Guard {
    /// (a) no storage on the bus.
    Off,
    /// (b) the store on the bus: the inbox guard around the handler.
    On,
    /// (c0) one insert in its own unit of work, no guard.
    OwnTx,
    /// (c) the insert in a `Tx` handler's unit of work, with the marker.
    InTx,
}

/// Publishes `events` with `bus.publish` to one group set up as `guard` says; the time
/// until the group committed them all.
async fn guarded(guard: Guard, events: Arc<Vec<OrderPaid>>) -> Duration {
    let db = TempDb::new("relay", "p5");
    let store = open(&db).await;
    let mut setup = store.begin().await.expect("begin");
    setup
        .downcast_mut::<SqliteTransaction>()
        .unwrap()
        .connection()
        .execute_batch(CREATE_LEDGER)
        .unwrap();
    setup.commit().await.expect("commit");

    let transport = InProcess::new();
    let handled = Handled::expecting(events.len() as u64);
    let builder = EventBus::builder()
        .transport(transport.clone())
        .state(handled.clone());
    let builder = match guard {
        Guard::Off => builder.handler(billing),
        Guard::On => builder.storage(store.clone()).handler(billing),
        Guard::OwnTx => builder.state(Ledger(store.clone())).handler(book_alone),
        Guard::InTx => builder.storage(store.clone()).handler(book_in_tx),
    };
    let bus = builder.start().await.expect("the bus starts");
    let started = Instant::now();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for event in events.iter() {
                bus.publish(event).await.expect("publish");
            }
        })
    };
    publisher.await.expect("the publisher finishes");
    handled.wait().await;
    transport.wait_idle().await;
    let elapsed = started.elapsed();
    bus.shutdown().await;
    drop(store);
    elapsed
}

/// Where the guard's time goes: its store calls timed alone, per event, as the worker makes
/// them (a polled batch of 256 at a time) and one event at a time (the guard before it
/// was batched), then the same SQL with plain rusqlite on the calling thread.
fn p5_breakdown(rt: &Runtime, n: usize) {
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

fn p5_floor(rt: &Runtime, n: u64, rounds: usize) {
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
}

fn p5(rt: &Runtime, n: usize, rounds: usize, bench: bool) {
    println!(
        "P5 inbox guard cost: {n} events with bus.publish to 1 group on the in-process \
         transport, {rounds} rounds"
    );
    let events: Arc<Vec<OrderPaid>> = Arc::new((0..n as u64).map(order).collect());
    let warm: Arc<Vec<OrderPaid>> = Arc::new(events.iter().take(n / 10 + 1).cloned().collect());
    let variants = [Guard::Off, Guard::On, Guard::OwnTx, Guard::InTx];
    for guard in variants {
        rt.block_on(guarded(guard, warm.clone()));
    }
    let mut rates: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut cpu: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for round in 1..=rounds {
        let mut order = variants.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        let mut line = HashMap::new();
        for guard in order {
            let used = cpu_seconds();
            let rate = n as f64 / rt.block_on(guarded(guard, events.clone())).as_secs_f64();
            cpu.entry(guard_name(guard))
                .or_default()
                .push((cpu_seconds() - used) / n as f64);
            line.insert(guard_name(guard), rate);
            rates.entry(guard_name(guard)).or_default().push(rate);
        }
        println!(
            "  round {round}: (a) {} | (b) {} | (c0) {} | (c) {}",
            rate_short(line["a"]),
            rate_short(line["b"]),
            rate_short(line["c0"]),
            rate_short(line["c"])
        );
    }
    let m = |k: &str| median(rates[k].clone());
    let cost = |plain: f64, guarded: f64| 1.0 - guarded / plain;
    let (a, b, c0, c) = (m("a"), m("b"), m("c0"), m("c"));
    let per_event = |k: &str| micros(Duration::from_secs_f64(median(cpu[k].clone())));
    println!(
        "  (a) no guard {} -> (b) guard {}: cost {:.1}%  (medians; CPU of the process per event: \
         (a) {} (b) {}, both cores busy, so the guard's CPU comes out of the throughput)",
        rate(a),
        rate(b),
        cost(a, b) * 100.0,
        per_event("a"),
        per_event("b")
    );
    println!(
        "  (c0) insert in its own unit of work {} -> (c) insert + marker in the Tx unit of work {}: \
         cost {:.1}%  (medians)",
        rate(c0),
        rate(c),
        cost(c0, c) * 100.0
    );
    if bench {
        println!(
            "  target cost <= {:.0}%: (a, b) {} | (c0, c) {}",
            GUARD_COST_TARGET * 100.0,
            verdict(cost(a, b) <= GUARD_COST_TARGET),
            verdict(cost(c0, c) <= GUARD_COST_TARGET)
        );
    }
    p5_breakdown(rt, n.min(20_000));
    p5_floor(rt, (n as u64).max(1) * 4, rounds);
}

fn guard_name(guard: Guard) -> &'static str {
    match guard {
        Guard::Off => "a",
        Guard::On => "b",
        Guard::OwnTx => "c0",
        Guard::InTx => "c",
    }
}

/// A process's memory figure from /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn p6(rt: &Runtime, n: u64) {
    println!("P6 memory while relaying a backlog of {n} events (streamed), 1 group");
    let db = TempDb::new("relay", "p6");
    let store = rt.block_on(open(&db));
    let fill = rt.block_on(fill_outbox(&store, 0, n));
    println!(
        "  filled the outbox in {:.1} s ({}), {UNIT} per unit of work",
        fill.as_secs_f64(),
        rate(n as f64 / fill.as_secs_f64())
    );
    let (rss_before, hwm_before) = (status_kib("VmRSS"), status_kib("VmHWM"));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(status_kib("VmRSS"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let took = rt.block_on(relay_backlog(&store, db.path(), n));
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("the sampler ends").max(status_kib("VmRSS"));
    let hwm_after = status_kib("VmHWM");
    println!(
        "  relayed in {:.1} s ({}); RSS before {} MiB, peak while relaying {} MiB (+{} MiB); \
         VmHWM before {} MiB, after {} MiB",
        took.as_secs_f64(),
        rate(n as f64 / took.as_secs_f64()),
        mib(rss_before),
        mib(peak),
        mib(peak.saturating_sub(rss_before)),
        mib(hwm_before),
        mib(hwm_after)
    );
}

/// Runs P6 in a child process of this bench, so its memory is its own.
fn p6_in_child() {
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = std::process::Command::new(exe)
        .args(std::env::args().skip(1))
        .env("RELAY_ONLY", "p6")
        .status()
        .expect("the P6 child starts");
    assert!(status.success(), "the P6 child failed: {status}");
}

fn percentile(sorted: &mut [Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted.sort();
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn percentiles(values: &mut [Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(values, 0.50)),
        ms(percentile(values, 0.90)),
        ms(percentile(values, 0.99)),
        ms(percentile(values, 1.0))
    )
}

fn rate(rate: f64) -> String {
    format!("{:.0} events/s", rate)
}

fn rate_short(rate: f64) -> String {
    format!("{:.0}/s", rate)
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) this is a smoke run
    // with small sizes that only checks every part completes.
    let bench = std::env::args().any(|arg| arg == "--bench");
    let scale = |full: u64, smoke: u64| if bench { full } else { smoke };
    let n = env_or("RELAY_EVENTS", scale(200_000, 2_000)).max(1);
    let rounds = env_or("RELAY_ROUNDS", scale(3, 1)).max(1) as usize;
    let latency_secs = env_or("RELAY_LATENCY_SECS", scale(5, 1)).max(1) as f64;
    let p5_events = env_or("RELAY_P5_EVENTS", scale(50_000, 500)).max(1) as usize;
    let backlog = env_or("RELAY_BACKLOG", scale(1_000_000, 5_000)).max(1);
    if !bench {
        println!("relay: smoke run (figures come from `cargo bench -p eventflow --bench relay`)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the runtime starts");

    let only = std::env::var("RELAY_ONLY").ok();
    match only.as_deref() {
        None => {
            let started = Instant::now();
            p3a(&rt, n, rounds, bench);
            p3b(&rt, latency_secs, bench);
            p5(&rt, p5_events, rounds, bench);
            p6_in_child();
            println!("relay bench took {:.0} s", started.elapsed().as_secs_f64());
        }
        Some("p3a") => p3a(&rt, n, rounds, bench),
        Some("p3b") => p3b(&rt, latency_secs, bench),
        Some("p5") => p5(&rt, p5_events, rounds, bench),
        Some("p6") => p6(&rt, backlog),
        Some(part @ ("guard" | "noguard")) => {
            let events: Arc<Vec<OrderPaid>> = Arc::new((0..p5_events as u64).map(order).collect());
            let (guard, name) = match part {
                "guard" => (Guard::On, "(b)"),
                _ => (Guard::Off, "(a)"),
            };
            let cpu = cpu_seconds();
            let took = rt.block_on(guarded(guard, events));
            let cpu = cpu_seconds() - cpu;
            println!(
                "P5 {name} alone: {}, {} CPU per event",
                rate(p5_events as f64 / took.as_secs_f64()),
                micros(Duration::from_secs_f64(cpu / p5_events as f64))
            );
        }
        Some(other) => panic!("RELAY_ONLY is p3a, p3b, p5, p6, guard or noguard, not `{other}`"),
    }
}

/// CPU seconds this process has used so far (user + system), from `/proc/self/stat`; 0 where
/// that file does not exist.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
