//! Transactional (`Tx`) handlers on SQLite, where the bus runs the handlers of consecutive
//! events in one unit of work (a savepoint each) and commits them together: every effect
//! still happens exactly once, a failing handler's writes roll back alone, and handlers
//! that open units of work of their own never wait on the shared one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use eventflow::store::{rusqlite, InboxStore, SqliteStore, SqliteTransaction, Storage, Transaction};
use eventflow::{subscribe, Event, EventBus, InProcess, State, Tx};
use eventflow_tests::{remove_db, temp_db, within, OrderPaid};
use serde::{Deserialize, Serialize};

const EFFECTS: &str = "CREATE TABLE effects (grp TEXT NOT NULL, seq INTEGER NOT NULL)";

fn write_effect(tx: &mut dyn Transaction, group: &str, seq: u64) -> rusqlite::Result<()> {
    let sqlite = tx
        .downcast_mut::<SqliteTransaction>()
        .expect("a SqliteStore unit of work");
    sqlite.connection().execute(
        "INSERT INTO effects (grp, seq) VALUES (?1, ?2)",
        rusqlite::params![group, seq as i64],
    )?;
    Ok(())
}

/// Which sequence numbers fail on their first attempt, after writing their effect.
#[derive(Clone, Default)]
struct FailFirst(Arc<Mutex<HashSet<u64>>>);

#[subscribe(group = "ledger", retries = 2)]
async fn ledger(event: OrderPaid, tx: Tx, State(fail): State<FailFirst>) -> Result<(), String> {
    let fails = event.seq % 10 == 3 || event.seq == 77;
    let fails = fails && fail.0.lock().unwrap().insert(event.seq);
    let mut tx = tx.lock().await;
    // A failing attempt writes its effect under another group name: it must not survive.
    let group = if fails { "failed attempt" } else { "ledger" };
    write_effect(&mut *tx, group, event.seq).map_err(|e| e.to_string())?;
    match (fails, event.seq) {
        (true, 77) => panic!("the handler of order 77 panics once after writing"),
        (true, _) => Err(format!("order {} fails once after writing", event.seq)),
        (false, _) => Ok(()),
    }
}

/// The effects `group` wrote, by sequence number, read as the application would.
fn effects(path: &std::path::Path, group: &str) -> Vec<u64> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut select = connection
        .prepare("SELECT seq FROM effects WHERE grp = ?1 ORDER BY seq")
        .unwrap();
    let seqs = select
        .query_map([group], |row| row.get::<_, i64>(0))
        .unwrap()
        .map(|seq| seq.unwrap() as u64)
        .collect();
    seqs
}

async fn open_with_effects(path: &std::path::Path) -> SqliteStore {
    let store = SqliteStore::open(path).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.downcast_mut::<SqliteTransaction>()
        .unwrap()
        .connection()
        .execute_batch(EFFECTS)
        .unwrap();
    tx.commit().await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_effect_commits_once_and_a_failed_handler_rolls_back_alone() {
    let path = temp_db();
    let store = open_with_effects(&path).await;
    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .state(FailFirst::default())
        .backoff(eventflow::Backoff::none())
        .handler(ledger)
        .start()
        .await
        .unwrap();

    let events: Vec<OrderPaid> = (0..500)
        .map(|seq| OrderPaid {
            order_id: format!("order-{}", seq % 3),
            seq,
        })
        .collect();
    let mut ids = Vec::new();
    for event in &events {
        ids.push(bus.publish(event).await.unwrap());
    }
    // A redelivered copy of some events: their effects must not happen twice.
    for event in events.iter().step_by(50) {
        let mut copy = bus.envelope(event).unwrap();
        copy.id = ids[event.seq as usize];
        bus.publish_envelope(copy).await.unwrap();
    }
    within(30, "the ledger to handle every event", transport.wait_idle()).await;

    let seqs = effects(&path, "ledger");
    let expected: Vec<u64> = (0..500).collect();
    assert_eq!(
        seqs, expected,
        "each order's effect must be written exactly once (failed attempts rolled back, duplicates skipped)"
    );
    assert_eq!(
        effects(&path, "failed attempt"),
        Vec::<u64>::new(),
        "the writes of failed attempts must roll back"
    );
    assert_eq!(store.processed("ledger", &ids).await.unwrap().len(), 500);
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
    drop(store);
    remove_db(&path);
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "order.shipped", topic = "orders")]
struct OrderShipped {
    #[event(key)]
    order_id: String,
    seq: u64,
}

#[subscribe(group = "ledger")]
async fn book_paid(event: OrderPaid, tx: Tx) -> Result<(), String> {
    let mut tx = tx.lock().await;
    write_effect(&mut *tx, "paid", event.seq).map_err(|e| e.to_string())
}

/// A handler without `Tx` that opens a unit of work of its own on the same store.
#[subscribe(group = "ledger")]
async fn book_shipped(event: OrderShipped, State(store): State<SqliteStore>) -> Result<(), String> {
    let mut tx = store.begin().await.map_err(|e| e.to_string())?;
    let sqlite = tx.downcast_mut::<SqliteTransaction>().unwrap();
    sqlite
        .connection()
        .execute(
            "INSERT INTO effects (grp, seq) VALUES ('shipped', ?1)",
            [event.seq as i64],
        )
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_with_a_unit_of_work_of_its_own_does_not_wait_on_the_shared_one() {
    let path = temp_db();
    let store = open_with_effects(&path).await;
    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .state(store.clone())
        .handler(book_paid)
        .handler(book_shipped)
        .start()
        .await
        .unwrap();
    // One key, so both kinds alternate in one partition, in order.
    for seq in 0..200 {
        let order_id = "order-1".to_owned();
        if seq % 3 == 2 {
            bus.publish(&OrderShipped { order_id, seq }).await.unwrap();
        } else {
            bus.publish(&OrderPaid { order_id, seq }).await.unwrap();
        }
    }
    within(
        30,
        "both handlers to finish (a deadlock hangs here)",
        transport.wait_idle(),
    )
    .await;

    let paid: Vec<u64> = (0..200).filter(|seq| seq % 3 != 2).collect();
    let shipped: Vec<u64> = (0..200).filter(|seq| seq % 3 == 2).collect();
    assert_eq!(effects(&path, "paid"), paid);
    assert_eq!(effects(&path, "shipped"), shipped);
    bus.shutdown().await;
    drop(store);
    remove_db(&path);
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "order.booked", topic = "ledger")]
struct OrderBooked {
    #[event(key)]
    order_id: String,
    seq: u64,
}

/// Writes the order's booking effect; returns the follow-up to publish and whether this
/// attempt is to fail after publishing it (the first attempt of every fourth order).
async fn book(event: &OrderPaid, tx: &Tx, fail: &FailFirst) -> Result<(OrderBooked, bool), String> {
    let fails = event.seq.is_multiple_of(4) && fail.0.lock().unwrap().insert(event.seq);
    write_effect(&mut *tx.lock().await, "booking", event.seq).map_err(|e| e.to_string())?;
    let booked = OrderBooked {
        order_id: event.order_id.clone(),
        seq: event.seq,
    };
    Ok((booked, fails))
}

fn fail_once(fails: bool, seq: u64) -> Result<(), String> {
    match fails {
        true => Err(format!("order {seq} fails once after publishing")),
        false => Ok(()),
    }
}

/// Publishes its follow-up with `ctx.publish`.
#[subscribe(group = "booking", retries = 2)]
async fn book_and_announce(
    event: OrderPaid,
    tx: Tx,
    ctx: eventflow::Context,
    State(fail): State<FailFirst>,
) -> Result<(), String> {
    let (booked, fails) = book(&event, &tx, &fail).await?;
    ctx.publish(&booked).await.map_err(|e| e.to_string())?;
    fail_once(fails, event.seq)
}

/// The bus, for handlers that publish through it; set once it is started.
#[derive(Clone, Default)]
struct BusCell(Arc<std::sync::OnceLock<EventBus>>);

/// Publishes its follow-up with `EventBus::publish`, as a handler holding the bus might.
#[subscribe(group = "booking", retries = 2)]
async fn book_through_the_bus(
    event: OrderPaid,
    tx: Tx,
    State(bus): State<BusCell>,
    State(fail): State<FailFirst>,
) -> Result<(), String> {
    let (booked, fails) = book(&event, &tx, &fail).await?;
    let bus = bus.0.get().expect("the bus is started");
    bus.publish(&booked).await.map_err(|e| e.to_string())?;
    fail_once(fails, event.seq)
}

/// A follow-up seen downstream: its order's seq and its causation id.
type Seen = (u64, Option<uuid::Uuid>);

/// The follow-ups seen downstream.
#[derive(Clone, Default)]
struct Announced(Arc<Mutex<Vec<Seen>>>);

#[subscribe(group = "mailer")]
async fn mail(
    event: OrderBooked,
    ctx: eventflow::Context,
    State(seen): State<Announced>,
) -> Result<(), String> {
    seen.0.lock().unwrap().push((event.seq, ctx.causation_id()));
    Ok(())
}

/// What happened when `booking` handled 100 orders on SQLite, failing the first attempt
/// of every fourth after publishing: the orders' ids, the follow-ups the mailer saw
/// (sorted) and the booking effects.
async fn book_100_orders(booking: impl eventflow::Handler) -> (Vec<uuid::Uuid>, Vec<Seen>, Vec<u64>) {
    let path = temp_db();
    let store = open_with_effects(&path).await;
    let transport = InProcess::new();
    let announced = Announced::default();
    let cell = BusCell::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .state(FailFirst::default())
        .state(announced.clone())
        .state(cell.clone())
        .backoff(eventflow::Backoff::none())
        .handler(booking)
        .handler(mail)
        .start()
        .await
        .unwrap();
    cell.0.set(bus.clone()).ok().unwrap();
    let mut ids = Vec::new();
    for seq in 0..100 {
        let order_id = format!("order-{}", seq % 5);
        ids.push(bus.publish(&OrderPaid { order_id, seq }).await.unwrap());
    }
    eventflow_tests::eventually(30, "100 follow-ups to reach the mailer", || {
        announced.0.lock().unwrap().len() >= 100
    })
    .await;
    within(10, "the groups to go idle", transport.wait_idle()).await;
    bus.shutdown().await;

    let mut seen = announced.0.lock().unwrap().clone();
    seen.sort();
    let booked = effects(&path, "booking");
    drop(store);
    remove_db(&path);
    (ids, seen, booked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_handler_s_follow_ups_go_out_once_through_its_outbox() {
    let (ids, seen, booked) = book_100_orders(book_and_announce).await;
    let expected: Vec<Seen> = (0..100).map(|seq| (seq, Some(ids[seq as usize]))).collect();
    assert_eq!(
        seen, expected,
        "each order's follow-up must go out exactly once, caused by the order (failed attempts publish nothing)"
    );
    assert_eq!(booked, (0..100).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_bus_publish_inside_a_transactional_handler_goes_through_its_outbox() {
    let (_, seen, booked) = book_100_orders(book_through_the_bus).await;
    let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (0..100).collect::<Vec<u64>>(),
        "each order's follow-up must go out exactly once: failed attempts publish nothing"
    );
    assert_eq!(booked, (0..100).collect::<Vec<u64>>());
}
