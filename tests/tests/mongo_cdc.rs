//! Change data capture: the inserts, updates, replaces and deletes of a collection arrive
//! as events, in order per document, and a restarted capture resumes where it stopped.

mod mongo_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::store::Storage;
use eventflow::{subscribe, Context, Event, EventBus, InProcess, State};
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::{ChangeCapture, ChangeOperation, DocumentChange, MongoStore};
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

async fn start_capture(store: &MongoStore, transport: &InProcess) -> Running {
    let checkpoint = format!("eventflow.cdc.{}.orders", store.database().name());
    let (stop, shutdown) = watch::channel(false);
    let capture = ChangeCapture::new(store, "orders").topic("orders.changes");
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
    let ids: std::collections::HashSet<_> = changes
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, id, _)| id.clone())
        .collect();
    assert_eq!(ids.len(), 12, "two changes share an event id");
    capture.stop().await;
    bus.shutdown().await;
}
