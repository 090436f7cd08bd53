//! The outbox relay on MongoDB: woken by a change stream for commits of any process,
//! resuming from its saved resume token, falling back to a scan when the token is gone,
//! sharing the outbox between relays; and handlers whose writes commit with their inbox
//! marker.

mod mongo_support;

use std::sync::Arc;
use std::time::Duration;

use eventflow::store::{CheckpointStore, InboxStore, Storage};
use eventflow::{subscribe, Envelope, EventBus, InProcess, Relay, State, Tx};
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::{MongoStore, MongoTransaction, OUTBOX_POSITION_CHECKPOINT};
use eventflow_tests::{eventually, within, OrderPaid, Recorder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[subscribe(group = "audit")]
async fn audit(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    rec.record("audit", &event);
    Ok(())
}

fn paid(seq: u64) -> Envelope {
    let event = OrderPaid {
        order_id: format!("order-{}", seq % 7),
        seq,
    };
    let mut envelope = Envelope::new(
        "order.paid",
        1,
        "orders",
        "application/json",
        serde_json::to_vec(&event).unwrap(),
    );
    envelope.key = Some(event.order_id);
    envelope
}

async fn commit(store: &MongoStore, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let mut tx = store.begin().await.unwrap();
        tx.enqueue(&[paid(seq)]).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// An observer without storage on `transport`, so no inbox hides a double delivery.
async fn observer(transport: &InProcess) -> (EventBus, Recorder) {
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(rec.clone())
        .handler(audit)
        .start()
        .await
        .unwrap();
    (bus, rec)
}

/// A relay that never polls: only its change stream (or its own claims) can wake it.
struct RunningRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn start_relay(store: &MongoStore, transport: &InProcess) -> RunningRelay {
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(transport.clone()))
        .poll_interval(Duration::from_secs(3600))
        .lease(Duration::from_secs(5));
    let (stop, shutdown) = watch::channel(false);
    RunningRelay {
        stop,
        task: tokio::spawn(relay.run(shutdown)),
    }
}

impl RunningRelay {
    async fn stop(self) {
        self.stop.send_replace(true);
        within(10, "the relay to stop", self.task).await.unwrap();
    }
}

/// Waits until the relay has marked everything delivered.
async fn drained(store: &MongoStore) {
    within(10, "the outbox to drain", async {
        while store.outbox_backlog().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn assert_once_in_order(rec: &Recorder, count: u64) {
    assert_eq!(
        rec.sorted_seqs("audit"),
        (0..count).collect::<Vec<_>>(),
        "an event was lost or relayed twice"
    );
    let seen = rec.seen("audit");
    for key in 0..7 {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|(k, _)| *k == format!("order-{key}"))
            .map(|(_, s)| *s)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key order-{key} out of order: {seqs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_of_another_process_reach_handlers_through_the_change_stream() {
    let database = mongo_support::unique_database();
    let relaying = mongo_support::store_in(&database).await;
    // Another client on the same database: its commits cannot bump the relay's store handle.
    let other_process = mongo_support::store_in(&database).await;
    let transport = InProcess::new();
    let (bus, rec) = observer(&transport).await;
    let relay = start_relay(&relaying, &transport);
    // Let the relay take the lease and open its stream before the commits.
    tokio::time::sleep(Duration::from_millis(300)).await;

    commit(&other_process, 0..50).await;
    eventually(10, "the other process's commits", || {
        rec.seen("audit").len() >= 50
    })
    .await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_once_in_order(&rec, 50);
    relay.stop().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_entries_are_deleted_in_the_background_and_nothing_else_is() {
    let database = mongo_support::unique_database();
    let store = MongoStore::builder(mongo_support::client().await, &database)
        .outbox_cleanup_interval(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let outbox = store
        .database()
        .collection::<Document>(&store.collection_names().outbox);
    // More than one clean-up delete's worth, committed before the relay starts.
    let count = 2_500;
    for first in (0..count).step_by(250) {
        let envelopes: Vec<Envelope> = (first..first + 250).map(paid).collect();
        let mut tx = store.begin().await.unwrap();
        tx.enqueue(&envelopes).await.unwrap();
        tx.commit().await.unwrap();
    }
    // One document per unit of work, holding its entries.
    assert_eq!(outbox.count_documents(doc! {}).await.unwrap(), count / 250);
    assert_eq!(store.outbox_backlog().await.unwrap(), count);
    let transport = InProcess::new();
    let (bus, rec) = observer(&transport).await;

    let relay = start_relay(&store, &transport);
    eventually(20, "every entry delivered", || {
        rec.seen("audit").len() >= count as usize
    })
    .await;
    within(20, "the delivered entries to be deleted", async {
        while outbox.count_documents(doc! {}).await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_once_in_order(&rec, count);
    relay.stop().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_in_a_unit_of_works_document_is_dead_lettered_alone() {
    let store = mongo_support::store().await;
    let envelopes: Vec<Envelope> = (0..3).map(paid).collect();
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&envelopes).await.unwrap();
    tx.commit().await.unwrap();
    // Broken by hand inside the unit of work's one document: the middle entry's time.
    store
        .database()
        .collection::<Document>(&store.collection_names().outbox)
        .update_many(doc! {}, doc! { "$set": { "entries.1.created_at": "yesterday" } })
        .await
        .unwrap();
    let transport = InProcess::new();
    let (bus, rec) = observer(&transport).await;
    let relay = start_relay(&store, &transport);
    eventually(10, "the readable entries", || rec.seen("audit").len() >= 2).await;
    drained(&store).await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_eq!(rec.sorted_seqs("audit"), [0, 2], "its neighbours are delivered");
    let letters = eventflow::DeadLetterStore::list(&store, Some(Relay::DEAD_LETTER_GROUP))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].envelope.id, envelopes[1].id);
    assert!(letters[0].error.contains("created_at"), "{}", letters[0].error);
    relay.stop().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_resumes_from_its_saved_token_and_delivers_everything_once() {
    let database = mongo_support::unique_database();
    let store = mongo_support::store_in(&database).await;
    let transport = InProcess::new();
    let (bus, rec) = observer(&transport).await;

    let relay = start_relay(&store, &transport);
    commit(&store, 0..10).await;
    eventually(10, "the first commits", || rec.seen("audit").len() >= 10).await;
    drained(&store).await;
    relay.stop().await;
    let saved = store
        .checkpoint(OUTBOX_POSITION_CHECKPOINT)
        .await
        .unwrap()
        .expect("the relay saved no position");
    assert!(saved.contains("token"), "not a saved resume token: {saved}");

    // Committed while no relay runs; found by the next one from the saved token.
    commit(&store, 10..25).await;
    let restarted = mongo_support::store_in(&database).await;
    let relay = start_relay(&restarted, &transport);
    eventually(10, "the commits made while no relay ran", || {
        rec.seen("audit").len() >= 25
    })
    .await;
    commit(&store, 25..30).await;
    eventually(10, "the commits after the restart", || {
        rec.seen("audit").len() >= 30
    })
    .await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_once_in_order(&rec, 30);
    assert_ne!(
        restarted
            .checkpoint(OUTBOX_POSITION_CHECKPOINT)
            .await
            .unwrap()
            .as_deref(),
        Some(saved.as_str()),
        "the restarted relay did not save its progress"
    );
    relay.stop().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_gone_from_the_oplog_falls_back_to_a_scan_and_loses_nothing() {
    let database = mongo_support::unique_database();
    let store = mongo_support::store_in(&database).await;
    let transport = InProcess::new();
    let (bus, rec) = observer(&transport).await;

    let relay = start_relay(&store, &transport);
    commit(&store, 0..5).await;
    eventually(10, "the first commits", || rec.seen("audit").len() >= 5).await;
    drained(&store).await;
    relay.stop().await;

    // What a relay finds after being stopped longer than the oplog window: a token the
    // server no longer knows.
    store
        .save_checkpoint(
            OUTBOX_POSITION_CHECKPOINT,
            r#"{"token":{"_data":"8200000001000000012B0229296E04"},"next":6}"#,
        )
        .await
        .unwrap();
    commit(&store, 5..20).await;
    let relay = start_relay(&mongo_support::store_in(&database).await, &transport);
    eventually(10, "the commits made while the token was lost", || {
        rec.seen("audit").len() >= 20
    })
    .await;
    // And it streams again after the scan.
    commit(&store, 20..30).await;
    eventually(10, "the commits after the scan", || rec.seen("audit").len() >= 30).await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_once_in_order(&rec, 30);
    relay.stop().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_two_processes_deliver_each_entry_once_in_order_per_key() {
    let database = mongo_support::unique_database();
    let (a, b) = (
        mongo_support::store_in(&database).await,
        mongo_support::store_in(&database).await,
    );
    let transport = InProcess::new();
    let (bus, rec) = observer(&transport).await;
    let relays = [start_relay(&a, &transport), start_relay(&b, &transport)];

    let writers: Vec<_> = [(a.clone(), 0..100), (b.clone(), 100..200)]
        .into_iter()
        .map(|(store, seqs)| tokio::spawn(async move { commit(&store, seqs).await }))
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    eventually(15, "every committed event", || rec.seen("audit").len() >= 200).await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_eq!(
        rec.sorted_seqs("audit"),
        (0..200).collect::<Vec<_>>(),
        "an event was lost or relayed twice"
    );
    drained(&a).await;
    for relay in relays {
        relay.stop().await;
    }
    bus.shutdown().await;
}

#[subscribe(group = "ledger", retries = 5)]
async fn book(event: OrderPaid, tx: Tx) -> Result<(), String> {
    let mut tx = tx.lock().await;
    let mongo = tx.downcast_mut::<MongoTransaction>().unwrap();
    mongo
        .collection::<Document>("ledger")
        .update_one(
            doc! { "_id": &event.order_id },
            doc! { "$inc": { "booked": 1 }, "$push": { "seqs": event.seq as i64 } },
        )
        .upsert(true)
        .session(mongo.session())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_writes_and_its_inbox_marker_commit_together_once() {
    let store = mongo_support::store().await;
    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .handler(book)
        .start()
        .await
        .unwrap();

    let mut work = bus.begin().await.unwrap();
    work.publish(&OrderPaid {
        order_id: "order-1".into(),
        seq: 1,
    })
    .await
    .unwrap();
    work.commit().await.unwrap();
    // The same event again, as a redelivery would bring it.
    let again = bus
        .envelope(&OrderPaid {
            order_id: "order-2".into(),
            seq: 2,
        })
        .unwrap();
    bus.publish_envelope(again.clone()).await.unwrap();
    bus.publish_envelope(again.clone()).await.unwrap();

    let ledger = store.database().collection::<Document>("ledger");
    within(10, "both orders booked", async {
        while ledger.count_documents(doc! {}).await.unwrap() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within(5, "the ledger to finish", transport.wait_idle()).await;
    for order in ["order-1", "order-2"] {
        let booked = ledger.find_one(doc! { "_id": order }).await.unwrap().unwrap();
        assert_eq!(booked.get_i32("booked").unwrap(), 1, "{order} booked {booked:?}");
    }
    assert!(store.is_processed("ledger", again.id).await.unwrap());
    bus.shutdown().await;
}
