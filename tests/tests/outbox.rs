//! The bus with storage: units of work, the outbox relay and the inbox guard, on the
//! in-memory store and the in-process transport.

use std::time::Duration;

use eventflow::{subscribe, EventBus, InProcess, MemoryStore, State};
use eventflow_tests::{eventually, within, OrderPaid, Recorder};

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    rec.record("inventory", &event);
    Ok(())
}

#[subscribe(group = "audit")]
async fn audit(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    rec.record("audit", &event);
    Ok(())
}

fn paid(seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: format!("order-{}", seq % 7),
        seq,
    }
}

#[tokio::test]
async fn events_of_a_unit_of_work_are_delivered_after_commit_and_only_then() {
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

    let mut work = bus.begin().await.unwrap();
    work.publish(&paid(1)).await.unwrap();
    work.publish(&paid(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        rec.seen("inventory").is_empty(),
        "an uncommitted event was delivered"
    );
    work.commit().await.unwrap();
    eventually(5, "the committed events", || rec.seen("inventory").len() == 2).await;

    let mut abandoned = bus.begin().await.unwrap();
    abandoned.publish(&paid(3)).await.unwrap();
    drop(abandoned);
    let mut work = bus.begin().await.unwrap();
    work.publish(&paid(4)).await.unwrap();
    work.commit().await.unwrap();
    eventually(5, "the last committed event", || rec.seen("inventory").len() == 3).await;
    within(5, "the group to finish", transport.wait_idle()).await;
    assert_eq!(
        rec.sorted_seqs("inventory"),
        [1, 2, 4],
        "a dropped unit of work delivered its event"
    );
    bus.shutdown().await;
}

#[tokio::test]
async fn a_redelivered_event_is_handled_once_per_group() {
    let transport = InProcess::new();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(MemoryStore::new())
        .state(rec.clone())
        .handler(inventory)
        .handler(audit)
        .start()
        .await
        .unwrap();

    let envelope = bus.envelope(&paid(1)).unwrap();
    for _ in 0..3 {
        bus.publish_envelope(envelope.clone()).await.unwrap();
    }
    within(5, "the groups to finish", transport.wait_idle()).await;
    assert_eq!(
        rec.sorted_seqs("inventory"),
        [1],
        "the inbox let a duplicate through"
    );
    assert_eq!(rec.sorted_seqs("audit"), [1]);
    bus.shutdown().await;
}

#[tokio::test]
async fn dead_letters_go_to_the_storage() {
    let store = MemoryStore::new();
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    use eventflow::DeadLetterStore;
    let letter = eventflow::DeadLetter {
        id: bus.envelope(&paid(9)).unwrap().id,
        group: "crm".into(),
        envelope: bus.envelope(&paid(1)).unwrap(),
        error: "down".into(),
        attempts: 1,
        failed_at: std::time::SystemTime::now(),
    };
    store.put(letter.clone()).await.unwrap();
    assert_eq!(bus.dead_letters(Some("crm")).await.unwrap(), [letter]);
    bus.shutdown().await;
}

#[derive(Clone, Default)]
struct FailOnce(std::sync::Arc<std::sync::atomic::AtomicBool>);

#[subscribe(group = "ledger", retries = 3)]
async fn ledger(event: OrderPaid, tx: eventflow::Tx, State(fail): State<FailOnce>) -> Result<(), String> {
    let mut tx = tx.lock().await;
    let entry = eventflow::Envelope::new("ledger.booked", 1, "ledger", "application/json", "{}");
    let stream = format!("ledger-{}", event.seq);
    tx.append(&stream, eventflow::store::ExpectedVersion::Any, &[entry])
        .await
        .map_err(|e| e.to_string())?;
    if !fail.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err("crash after the write, before the commit".into());
    }
    Ok(())
}

#[tokio::test]
async fn a_transactional_handler_s_writes_and_marker_commit_together() {
    use eventflow::store::{EventStore, InboxStore};
    let transport = InProcess::new();
    let store = MemoryStore::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .state(FailOnce::default())
        .backoff(eventflow::Backoff::none())
        .handler(ledger)
        .start()
        .await
        .unwrap();

    let envelope = bus.envelope(&paid(5)).unwrap();
    bus.publish_envelope(envelope.clone()).await.unwrap();
    bus.publish_envelope(envelope.clone()).await.unwrap();
    within(5, "the ledger to finish", transport.wait_idle()).await;

    let booked = store.read_stream("ledger-5", 1).await.unwrap();
    assert_eq!(
        booked.len(),
        1,
        "the failed attempt's write was kept, or the duplicate wrote again"
    );
    assert!(store.is_processed("ledger", envelope.id).await.unwrap());
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test]
async fn a_transactional_handler_needs_storage() {
    let error = EventBus::builder()
        .state(FailOnce::default())
        .handler(ledger)
        .start()
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("takes `Tx` but the bus has no storage"),
        "{error}"
    );
}

#[tokio::test]
async fn a_corrupt_outbox_payload_is_dead_lettered_and_the_relay_goes_on() {
    use eventflow::{DeadLetterStore, Relay};
    let transport = InProcess::new();
    let store = MemoryStore::new();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();

    let mut broken = bus.envelope(&paid(2)).unwrap();
    broken.payload = "{\"order_id\": \"order-2\", \"seq\": ".into();
    let mut work = bus.begin().await.unwrap();
    work.publish(&paid(1)).await.unwrap();
    work.transaction().enqueue(&[broken.clone()]).await.unwrap();
    work.publish(&paid(3)).await.unwrap();
    work.commit().await.unwrap();

    eventually(5, "the sound events", || rec.seen("inventory").len() == 2).await;
    assert_eq!(rec.sorted_seqs("inventory"), [1, 3]);
    let letters = bus.dead_letters(Some(Relay::DEAD_LETTER_GROUP)).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.envelope.id, broken.id);
    assert!(
        letter.error.contains("not valid application/json") && letter.error.contains(&broken.id.to_string()),
        "the error does not say what is wrong with which event: {}",
        letter.error
    );

    // Replaying it as it is fails and keeps it; repaired, it reaches the handlers.
    let error = bus.replay_dead_letter(letter.id).await.unwrap_err();
    assert!(error.to_string().contains("repair it"), "{error}");
    let mut repaired = letter.clone();
    repaired.envelope.payload = "{\"order_id\": \"order-2\", \"seq\": 2}".into();
    store.put(repaired).await.unwrap();
    bus.replay_dead_letter(letter.id).await.unwrap();
    eventually(5, "the repaired event", || rec.seen("inventory").len() == 3).await;
    assert_eq!(rec.sorted_seqs("inventory"), [1, 2, 3]);
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_outbox_row_is_dead_lettered_and_the_relay_goes_on() {
    use eventflow::store::{SqliteStore, SqliteTransaction};
    use eventflow::Relay;
    let path = eventflow_tests::temp_db();
    let transport = InProcess::new();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(SqliteStore::open(&path).await.unwrap())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();

    let mut work = bus.begin().await.unwrap();
    let corrupt = work.publish(&paid(1)).await.unwrap();
    work.publish(&paid(2)).await.unwrap();
    let sqlite = work.transaction().downcast_mut::<SqliteTransaction>().unwrap();
    sqlite
        .connection()
        .execute(
            "UPDATE outbox SET headers = 'not json' WHERE sequence = (SELECT MIN(sequence) FROM outbox)",
            [],
        )
        .unwrap();
    work.commit().await.unwrap();

    eventually(5, "the readable event", || rec.seen("inventory").len() == 1).await;
    assert_eq!(rec.sorted_seqs("inventory"), [2]);
    let letters = bus.dead_letters(Some(Relay::DEAD_LETTER_GROUP)).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].envelope.id, corrupt,
        "the salvaged envelope lost the event id"
    );
    assert!(
        letters[0].error.contains("cannot be read") && letters[0].error.contains("replay"),
        "{}",
        letters[0].error
    );
    bus.shutdown().await;
    eventflow_tests::remove_db(&path);
}

#[tokio::test]
async fn the_inbox_forgets_markers_after_the_retention() {
    use eventflow::store::InboxStore;
    let transport = InProcess::new();
    let store = MemoryStore::new();
    let recorder = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .state(recorder.clone())
        .inbox_retention(Duration::from_millis(300))
        .handler(inventory)
        .start()
        .await
        .unwrap();
    let envelope = bus.envelope(&paid(1)).unwrap();
    bus.publish_envelope(envelope.clone()).await.unwrap();
    within(5, "inventory to handle the event", transport.wait_idle()).await;
    assert!(store.is_processed("inventory", envelope.id).await.unwrap());

    bus.publish_envelope(envelope.clone()).await.unwrap();
    within(5, "inventory to skip the copy", transport.wait_idle()).await;
    assert_eq!(
        recorder.sorted_seqs("inventory"),
        [1],
        "a copy within the retention was handled"
    );

    let forgotten = async {
        while store.is_processed("inventory", envelope.id).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(5, "the marker to be pruned after the 300 ms retention", forgotten).await;
    bus.publish_envelope(envelope).await.unwrap();
    within(5, "inventory to handle the late copy", transport.wait_idle()).await;
    assert_eq!(
        recorder.sorted_seqs("inventory"),
        [1, 1],
        "a copy arriving after the retention is handled again, as documented"
    );
    bus.shutdown().await;
}
