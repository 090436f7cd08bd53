//! Change data capture: the inserts, updates, replaces and deletes of a collection arrive
//! as events, in order per document, and a restarted capture resumes where it stopped.

mod mongo_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::store::CheckpointStore;
use eventflow::{subscribe, Context, Event, EventBus, InProcess, State};
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::{ChangeCapture, ChangeOperation, DocumentChange, MongoStore, Snapshot};
use eventflow_tests::{eventually, within};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "mongo.change", topic = "orders.changes")]
struct OrderChanged {
    #[serde(flatten)]
    change: DocumentChange,
}

/// (partition key, event id, change) in handling order.
#[derive(Clone, Default)]
struct Changes(Arc<Mutex<Vec<(String, String, DocumentChange)>>>);

impl Changes {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn of(&self, key: &str) -> Vec<DocumentChange> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|(k, ..)| k == key)
            .map(|(.., c)| c.clone())
            .collect()
    }
}

#[subscribe(group = "search-index")]
async fn index(event: OrderChanged, ctx: Context, State(changes): State<Changes>) -> Result<(), String> {
    let key = ctx.envelope().key.clone().unwrap_or_default();
    changes
        .0
        .lock()
        .unwrap()
        .push((key, ctx.event_id().to_string(), event.change));
    Ok(())
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), eventflow::Error>>,
}

fn checkpoint(store: &MongoStore) -> String {
    format!("eventflow.cdc.{}.orders", store.database().name())
}

async fn start_capture(store: &MongoStore, transport: &InProcess) -> Running {
    start_capture_with(store, transport, Snapshot::Never).await
}

async fn start_capture_with(store: &MongoStore, transport: &InProcess, snapshot: Snapshot) -> Running {
    let checkpoint = checkpoint(store);
    let (stop, shutdown) = watch::channel(false);
    let capture = ChangeCapture::new(store, "orders")
        .topic("orders.changes")
        .snapshot(snapshot);
    let task = tokio::spawn(capture.run(Arc::new(transport.clone()), shutdown));
    // The capture saves its starting token once its stream is open.
    within(10, "the change stream to open", async {
        while store.checkpoint(&checkpoint).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send_replace(true);
        within(10, "the capture to stop", self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn observer(transport: &InProcess) -> (EventBus, Changes) {
    let changes = Changes::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(changes.clone())
        .handler(index)
        .start()
        .await
        .unwrap();
    (bus, changes)
}

/// Inserts, updates, replaces and deletes `order`.
async fn lifecycle(orders: &eventflow_mongo::mongodb::Collection<Document>, order: &str) {
    orders
        .insert_one(doc! { "_id": order, "status": "placed", "total": 42 })
        .await
        .unwrap();
    orders
        .update_one(
            doc! { "_id": order },
            doc! { "$set": { "status": "paid" }, "$unset": { "total": "" } },
        )
        .await
        .unwrap();
    orders
        .replace_one(doc! { "_id": order }, doc! { "status": "shipped" })
        .await
        .unwrap();
    orders.delete_one(doc! { "_id": order }).await.unwrap();
}

fn operations(changes: &[DocumentChange]) -> Vec<ChangeOperation> {
    changes.iter().map(|c| c.operation).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_as_events_in_order_per_document() {
    let store = mongo_support::store().await;
    let transport = InProcess::new();
    let (bus, changes) = observer(&transport).await;
    let capture = start_capture(&store, &transport).await;

    let orders = store.database().collection::<Document>("orders");
    let writers: Vec<_> = (0..4)
        .map(|n| {
            let orders = orders.clone();
            tokio::spawn(async move { lifecycle(&orders, &format!("order-{n}")).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    eventually(10, "16 change events", || changes.len() >= 16).await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_eq!(changes.len(), 16, "a change arrived twice");

    for n in 0..4 {
        let key = format!("order-{n}");
        let seen = changes.of(&key);
        assert_eq!(
            operations(&seen),
            [
                ChangeOperation::Insert,
                ChangeOperation::Update,
                ChangeOperation::Replace,
                ChangeOperation::Delete
            ],
            "{key}: changes out of order or missing"
        );
        let (insert, update, replace, delete) = (&seen[0], &seen[1], &seen[2], &seen[3]);
        assert_eq!(insert.key, serde_json::json!({ "_id": key }));
        assert_eq!(insert.collection, "orders");
        assert_eq!(
            insert.document,
            Some(serde_json::json!({ "_id": key, "status": "placed", "total": 42 }))
        );
        assert_eq!(
            update.updated_fields,
            Some(serde_json::json!({ "status": "paid" }))
        );
        assert_eq!(update.removed_fields, ["total"]);
        assert_eq!(
            replace.document,
            Some(serde_json::json!({ "_id": key, "status": "shipped" }))
        );
        assert_eq!(delete.document, None);
    }
    capture.stop().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_capture_resumes_where_it_stopped() {
    let store = mongo_support::store().await;
    let transport = InProcess::new();
    let (bus, changes) = observer(&transport).await;
    let orders = store.database().collection::<Document>("orders");

    let capture = start_capture(&store, &transport).await;
    lifecycle(&orders, "order-1").await;
    eventually(10, "the first changes", || changes.len() >= 4).await;
    capture.stop().await;

    // Changed while no capture runs.
    lifecycle(&orders, "order-2").await;
    let capture = start_capture(&store, &transport).await;
    eventually(10, "the changes made while stopped", || changes.len() >= 8).await;
    lifecycle(&orders, "order-3").await;
    eventually(10, "the changes after the restart", || changes.len() >= 12).await;
    within(5, "the observer to finish", transport.wait_idle()).await;

    for key in ["order-1", "order-2", "order-3"] {
        assert_eq!(
            operations(&changes.of(key)).len(),
            4,
            "{key}: a change was lost or captured twice"
        );
    }
    assert_eq!(ids(&changes).len(), 12, "two changes share an event id");
    capture.stop().await;
    bus.shutdown().await;
}

fn ids(changes: &Changes) -> std::collections::HashSet<String> {
    changes
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, id, _)| id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_publishes_the_documents_already_there_then_their_changes() {
    let store = mongo_support::store().await;
    let transport = InProcess::new();
    let (bus, changes) = observer(&transport).await;
    let orders = store.database().collection::<Document>("orders");
    for (n, order) in ["order-a", "order-b", "order-c"].into_iter().enumerate() {
        orders
            .insert_one(doc! { "_id": order, "total": n as i32 })
            .await
            .unwrap();
    }

    let capture = start_capture_with(&store, &transport, Snapshot::Initial).await;
    eventually(10, "the three documents read", || changes.len() >= 3).await;
    orders
        .update_one(doc! { "_id": "order-b" }, doc! { "$set": { "total": 7 } })
        .await
        .unwrap();
    eventually(10, "the change after the snapshot", || changes.len() >= 4).await;

    let read = changes.of("order-a");
    assert_eq!(operations(&read), [ChangeOperation::Read]);
    assert_eq!(read[0].key, serde_json::json!({ "_id": "order-a" }));
    assert_eq!(read[0].collection, "orders");
    assert_eq!(
        read[0].document,
        Some(serde_json::json!({ "_id": "order-a", "total": 0 }))
    );
    assert_eq!(
        operations(&changes.of("order-b")),
        [ChangeOperation::Read, ChangeOperation::Update],
        "the document's read comes before its later change"
    );
    capture.stop().await;

    // A restart resumes the changes; the snapshot is not taken again.
    let capture = start_capture_with(&store, &transport, Snapshot::Initial).await;
    orders
        .insert_one(doc! { "_id": "order-d", "total": 3 })
        .await
        .unwrap();
    eventually(10, "the insert after the restart", || changes.len() >= 5).await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_eq!(
        changes.len(),
        5,
        "the snapshot was published again: {:?}",
        changes.of("order-a")
    );
    assert_eq!(operations(&changes.of("order-d")), [ChangeOperation::Insert]);
    assert_eq!(ids(&changes).len(), 5, "two events share an id");
    capture.stop().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_resume_token_is_an_error_unless_a_snapshot_may_be_taken_again() {
    let store = mongo_support::store().await;
    let transport = InProcess::new();
    let (bus, changes) = observer(&transport).await;
    let orders = store.database().collection::<Document>("orders");

    let capture = start_capture(&store, &transport).await;
    orders
        .insert_one(doc! { "_id": "order-1", "total": 1 })
        .await
        .unwrap();
    eventually(10, "the first insert", || changes.len() >= 1).await;
    capture.stop().await;

    // What a capture finds after being stopped longer than the oplog window: a token the
    // server no longer knows, and changes it never saw.
    store
        .save_checkpoint(
            &checkpoint(&store),
            r#"{"_data":"8200000001000000012B0229296E04"}"#,
        )
        .await
        .unwrap();
    orders
        .insert_one(doc! { "_id": "order-2", "total": 2 })
        .await
        .unwrap();

    let (_stop, shutdown) = watch::channel(false);
    let refused = within(
        10,
        "the capture to give up",
        ChangeCapture::new(&store, "orders").run(Arc::new(transport.clone()), shutdown),
    )
    .await
    .expect_err("a lost token was resumed from");
    assert!(
        refused.to_string().contains("Snapshot::WhenNeeded"),
        "the error should say how to recover: {refused}"
    );
    assert_eq!(changes.len(), 1, "nothing is published without the token");

    let capture = start_capture_with(&store, &transport, Snapshot::WhenNeeded).await;
    eventually(10, "both documents read", || changes.len() >= 3).await;
    assert_eq!(
        operations(&changes.of("order-2")),
        [ChangeOperation::Read],
        "the document inserted while the token was lost is read by the snapshot"
    );
    assert_eq!(
        operations(&changes.of("order-1")),
        [ChangeOperation::Insert, ChangeOperation::Read]
    );
    // And it captures changes again after the snapshot.
    orders.delete_one(doc! { "_id": "order-1" }).await.unwrap();
    eventually(10, "the delete after the snapshot", || changes.len() >= 4).await;
    within(5, "the observer to finish", transport.wait_idle()).await;
    assert_eq!(
        operations(&changes.of("order-1")),
        [
            ChangeOperation::Insert,
            ChangeOperation::Read,
            ChangeOperation::Delete
        ]
    );
    capture.stop().await;
    bus.shutdown().await;
}
