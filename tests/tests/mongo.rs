//! The storage conformance suite on MongoDB, and what only MongoDB shows: the application's
//! writes share the transaction, committed data is there for a new client, and indexes are
//! created idempotently.

mod mongo_support;

use std::time::Duration;

use eventflow::store::{ExpectedVersion, Storage, Transaction};
use eventflow::Envelope;
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::{CollectionNames, MongoStore, MongoTransaction};

eventflow::storage_conformance!(mongo_support::store());

fn event(n: u32) -> Envelope {
    let mut envelope = Envelope::new(
        "order.placed",
        1,
        "orders",
        "application/json",
        format!("{{\"n\":{n}}}"),
    );
    envelope.key = Some("order-1".to_owned());
    envelope
}

/// The application's own write inside a unit of work.
async fn insert_order(tx: &mut dyn Transaction, id: &str) {
    let mongo = tx.downcast_mut::<MongoTransaction>().unwrap();
    let orders = mongo.collection::<Document>("orders");
    orders
        .insert_one(doc! { "_id": id, "total": 42 })
        .session(mongo.session())
        .await
        .unwrap();
}

async fn count_orders(store: &MongoStore) -> u64 {
    store
        .database()
        .collection::<Document>("orders")
        .count_documents(doc! {})
        .await
        .unwrap()
}

#[tokio::test]
async fn the_applications_writes_commit_and_roll_back_with_the_unit_of_work() {
    let store = mongo_support::store().await;
    let mut tx = store.begin().await.unwrap();
    insert_order(&mut *tx, "order-1").await;
    tx.enqueue(&[event(1)]).await.unwrap();
    drop(tx);
    assert_eq!(
        count_orders(&store).await,
        0,
        "a dropped unit of work kept a document"
    );
    assert!(store
        .claim_outbox("relay", Duration::from_secs(5), 0, 10)
        .await
        .unwrap()
        .is_empty());

    let mut tx = store.begin().await.unwrap();
    insert_order(&mut *tx, "order-1").await;
    tx.append("order-1", ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    tx.enqueue(&[event(1)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_orders(&store).await, 1);
    assert_eq!(store.read_stream("order-1", 1).await.unwrap().len(), 1);
    assert_eq!(
        store
            .claim_outbox("relay", Duration::from_secs(5), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_conflict_rolls_back_the_applications_writes_too() {
    let store = mongo_support::store().await;
    let mut tx = store.begin().await.unwrap();
    tx.append("order-1", ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Two units of work read version 1; the second to commit loses, with its order.
    let mut first = store.begin().await.unwrap();
    let mut second = store.begin().await.unwrap();
    first
        .append("order-1", ExpectedVersion::Exact(1), &[event(2)])
        .await
        .unwrap();
    second
        .append("order-1", ExpectedVersion::Exact(1), &[event(3)])
        .await
        .unwrap();
    insert_order(&mut *second, "order-2").await;
    first.commit().await.unwrap();
    let lost = second.commit().await;
    assert!(
        matches!(lost, Err(eventflow::Error::Conflict { actual: 2, .. })),
        "expected a conflict at version 2, got {lost:?}"
    );
    assert_eq!(
        count_orders(&store).await,
        0,
        "the losing unit of work kept its order"
    );
    assert_eq!(store.read_stream("order-1", 1).await.unwrap().len(), 2);
}

#[tokio::test]
async fn committed_data_is_there_for_a_new_client_and_opening_again_is_harmless() {
    let database = mongo_support::unique_database();
    let (placed, paid) = (event(1), event(2).caused_by(&event(1)));
    {
        let store = mongo_support::store_in(&database).await;
        let mut tx = store.begin().await.unwrap();
        tx.append(
            "order-1",
            ExpectedVersion::NoStream,
            &[placed.clone(), paid.clone()],
        )
        .await
        .unwrap();
        tx.enqueue(&[placed.clone(), paid.clone()]).await.unwrap();
        assert!(tx.mark_processed("billing", placed.id).await.unwrap());
        tx.commit().await.unwrap();
        store.save_checkpoint("projection", "2").await.unwrap();
    }

    let store = mongo_support::store_in(&database).await;
    let stream = store.read_stream("order-1", 1).await.unwrap();
    assert_eq!(
        stream
            .iter()
            .map(|e| (e.version, &e.envelope))
            .collect::<Vec<_>>(),
        [(1, &placed), (2, &paid)],
        "committed events, exactly as written"
    );
    let outbox = store
        .claim_outbox("relay", Duration::from_secs(5), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        outbox.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
        [&placed, &paid]
    );
    assert!(store.is_processed("billing", placed.id).await.unwrap());
    assert_eq!(
        store.checkpoint("projection").await.unwrap().as_deref(),
        Some("2")
    );
    let indexes = store
        .database()
        .collection::<Document>(&store.collection_names().events)
        .list_index_names()
        .await
        .unwrap();
    assert!(
        indexes.iter().any(|name| name == "stream_version"),
        "the unique (stream, version) index is missing: {indexes:?}"
    );
}

#[tokio::test]
async fn collection_names_are_configurable() {
    let client = mongo_support::client().await;
    let database = mongo_support::unique_database();
    let store = MongoStore::builder(client, &database)
        .collections(CollectionNames::with_prefix("billing_"))
        .open()
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.append("invoice-1", ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let names = store.database().list_collection_names().await.unwrap();
    assert!(names.contains(&"billing_events".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("eventflow_")), "{names:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let error = MongoStore::connect(
        "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=300",
        "eventflow",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("check that the MongoDB server is running"),
        "unhelpful error: {error}"
    );
}
