//! Drain and settle: a graceful shutdown hands what was published and committed to the
//! groups before it returns, within its deadline; `settled()` returns once everything
//! published or committed before it was handled or dead-lettered.

use std::time::{Duration, Instant};

use eventflow::store::{rusqlite, SqliteStore};
use eventflow::{subscribe, Backoff, Context, Error, EventBus, InProcess, MemoryStore, State};
use eventflow_tests::{remove_db, temp_db, within, CapturedLog, OrderPaid, Recorder};

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    tokio::time::sleep(Duration::from_micros(200)).await;
    rec.record("inventory", &event);
    Ok(())
}

/// Fails the first two attempts of every event, and every attempt of event 13.
#[subscribe(group = "flaky", retries = 3)]
async fn flaky(event: OrderPaid, ctx: Context, State(rec): State<Recorder>) -> Result<(), String> {
    if event.seq == 13 || ctx.attempt() <= 2 {
        return Err(format!("attempt {} of event {} failed", ctx.attempt(), event.seq));
    }
    rec.record("flaky", &event);
    Ok(())
}

/// Takes half a second per event.
#[subscribe(group = "slow")]
async fn slow(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    rec.record("slow", &event);
    Ok(())
}

fn paid(seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: format!("order-{}", seq % 5),
        seq,
    }
}

fn quick_retries() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test]
async fn publish_then_shutdown_handles_every_event() {
    for _ in 0..5 {
        let rec = Recorder::default();
        let bus = EventBus::builder()
            .state(rec.clone())
            .handler(inventory)
            .start()
            .await
            .unwrap();
        for seq in 0..100 {
            bus.publish(&paid(seq)).await.unwrap();
        }
        within(10, "the shutdown", bus.clone().shutdown()).await;
        assert_eq!(rec.sorted_seqs("inventory"), (0..100).collect::<Vec<_>>());
        assert!(
            matches!(bus.publish(&paid(100)).await, Err(Error::Closed)),
            "a bus that shut down took a new event"
        );
    }
}

#[tokio::test]
async fn commit_then_shutdown_handles_every_committed_event() {
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .storage(MemoryStore::new())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    for seq in 0..50 {
        let mut work = bus.begin().await.unwrap();
        work.publish(&paid(seq)).await.unwrap();
        work.commit().await.unwrap();
    }
    within(10, "the shutdown", bus.shutdown()).await;
    assert_eq!(rec.sorted_seqs("inventory"), (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn settled_after_publish_or_commit_means_every_handler_ran() {
    let transport = InProcess::new();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(MemoryStore::new())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    for round in 0..20 {
        let seq = round * 2;
        bus.publish(&paid(seq)).await.unwrap();
        bus.settled_within(Duration::from_secs(5)).await.unwrap();
        assert!(
            rec.sorted_seqs("inventory").contains(&seq),
            "round {round}: published, not handled"
        );

        let mut work = bus.begin().await.unwrap();
        work.publish(&paid(seq + 1)).await.unwrap();
        work.commit().await.unwrap();
        bus.settled_within(Duration::from_secs(5)).await.unwrap();
        assert!(
            rec.sorted_seqs("inventory").contains(&(seq + 1)),
            "round {round}: committed, not handled"
        );
    }
    bus.shutdown().await;
}

#[tokio::test]
async fn wait_idle_right_after_a_commit_waits_for_its_handler() {
    let transport = InProcess::new();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(MemoryStore::new())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    for seq in 0..20 {
        let mut work = bus.begin().await.unwrap();
        work.publish(&paid(seq)).await.unwrap();
        work.commit().await.unwrap();
        within(5, "wait_idle", transport.wait_idle()).await;
        assert_eq!(
            rec.sorted_seqs("inventory").len() as u64,
            seq + 1,
            "wait_idle returned before the handler of commit {seq} ran"
        );
    }
    bus.shutdown().await;
}

#[tokio::test]
async fn settled_waits_for_retries_and_dead_letters() {
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .storage(MemoryStore::new())
        .backoff(quick_retries())
        .state(rec.clone())
        .handler(flaky)
        .start()
        .await
        .unwrap();
    for seq in [11, 12, 13, 14] {
        let mut work = bus.begin().await.unwrap();
        work.publish(&paid(seq)).await.unwrap();
        work.commit().await.unwrap();
    }
    bus.settled_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        rec.sorted_seqs("flaky"),
        [11, 12, 14],
        "the events that succeed on their third attempt"
    );
    let letters = bus.dead_letters(Some("flaky")).await.unwrap();
    assert_eq!(letters.len(), 1, "event 13 fails every attempt: {letters:?}");
    assert!(letters[0].error.contains("event 13"), "{}", letters[0].error);
    bus.shutdown().await;
}

#[tokio::test]
async fn settled_within_says_what_is_still_pending() {
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .state(rec.clone())
        .handler(slow)
        .start()
        .await
        .unwrap();
    for seq in 0..3 {
        bus.publish(&paid(seq)).await.unwrap();
    }
    let started = Instant::now();
    let error = bus.settled_within(Duration::from_millis(200)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the timeout was not kept"
    );
    let message = error.to_string();
    assert!(matches!(error, Error::NotSettled { .. }), "{message}");
    assert!(
        message.contains("group `slow`") && message.contains("topic `orders`") && message.contains("200ms"),
        "the error does not say what is pending: {message}"
    );
    // Given time, it settles.
    bus.settled_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.sorted_seqs("slow"), [0, 1, 2]);
    bus.shutdown().await;
}

#[tokio::test]
async fn a_shutdown_deadline_leaves_the_rest_in_the_outbox_for_the_next_bus() {
    let (log, _logging) = CapturedLog::start();

    let db = temp_db();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .storage(SqliteStore::open(&db).await.unwrap())
        .shutdown_timeout(Duration::from_millis(300))
        .state(rec.clone())
        .handler(slow)
        .start()
        .await
        .unwrap();
    for seq in 0..6 {
        let mut work = bus.begin().await.unwrap();
        work.publish(&paid(seq)).await.unwrap();
        work.commit().await.unwrap();
    }
    let started = Instant::now();
    within(10, "the shutdown", bus.shutdown()).await;
    // The deadline, then the handler that was running finishes.
    assert!(
        started.elapsed() < Duration::from_millis(300 + 500 + 400),
        "the shutdown took {:?} with a deadline of 300 ms",
        started.elapsed()
    );
    let handled_first = rec.sorted_seqs("slow").len();
    assert!(
        handled_first < 6,
        "all six slow events were handled within 300 ms?"
    );
    let logged = log.text();
    assert!(
        logged.contains("shutdown deadline passed") && logged.contains("group `slow`"),
        "no log line says what the deadline left: {logged}"
    );
    let backlog: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))
        .unwrap();
    assert!(backlog > 0, "nothing was left in the outbox after the deadline");

    let next = EventBus::builder()
        .storage(SqliteStore::open(&db).await.unwrap())
        .state(rec.clone())
        .handler(slow)
        .start()
        .await
        .unwrap();
    within(20, "the next bus's shutdown", next.shutdown()).await;
    assert_eq!(
        rec.sorted_seqs("slow"),
        [0, 1, 2, 3, 4, 5],
        "every event, once, over the two buses ({handled_first} by the first)"
    );
    remove_db(&db);
}
