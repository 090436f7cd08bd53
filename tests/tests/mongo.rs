//! The storage conformance suite on MongoDB, and what only MongoDB shows: the application's
//! writes share the transaction, committed data is there for a new client, and indexes are
//! created idempotently.

mod mongo_support;

use std::time::Duration;

use eventflow::store::{CheckpointStore, EventStore, ExpectedVersion, InboxStore, Storage, Transaction};
use eventflow::Envelope;
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::{CollectionNames, MongoStore, MongoTransaction};
use mongo_support::{handed, next_batch, open_feed, sequences};

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
    let mut feed = open_feed(&store, "relay", 10).await;
    assert!(handed(&mut *feed).await.is_empty());

    let mut tx = store.begin().await.unwrap();
    insert_order(&mut *tx, "order-1").await;
    tx.append("order-1", ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    tx.enqueue(&[event(1)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_orders(&store).await, 1);
    assert_eq!(store.read_stream("order-1", 1).await.unwrap().len(), 1);
    assert_eq!(handed(&mut *feed).await.len(), 1);
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
    let outbox = handed(&mut *open_feed(&store, "relay", 10).await).await;
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

/// Commits events 1..=`count` in one unit of work, and returns them.
async fn commit_unit(store: &MongoStore, count: u32) -> Vec<Envelope> {
    let sent: Vec<Envelope> = (1..=count).map(event).collect();
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&sent).await.unwrap();
    tx.commit().await.unwrap();
    sent
}

fn outbox(store: &MongoStore) -> eventflow_mongo::mongodb::Collection<Document> {
    store
        .database()
        .collection::<Document>(&store.collection_names().outbox)
}

#[tokio::test]
async fn a_unit_of_work_is_one_outbox_document_claimed_as_its_entries() {
    let store = mongo_support::store().await;
    let sent = commit_unit(&store, 5).await;
    assert_eq!(outbox(&store).count_documents(doc! {}).await.unwrap(), 1);
    assert_eq!(store.outbox_backlog().await.unwrap(), 5);

    // A batch that ends inside the document, and the ones that go on from there.
    let mut feed = open_feed(&store, "relay", 2).await;
    let first = next_batch(&mut *feed).await;
    assert_eq!(first.len(), 2);
    let rest = handed(&mut *feed).await;
    let claimed: Vec<_> = first.iter().chain(&rest).collect();
    assert_eq!(
        claimed.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
        sent.iter().collect::<Vec<_>>()
    );
    assert!(claimed.windows(2).all(|w| w[0].sequence + 1 == w[1].sequence));

    // Half delivered: the watermark is inside the document, which stays.
    feed.delivered(&sequences(&first)).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 3);
    feed.close().await.unwrap();
    let taken = handed(&mut *open_feed(&store, "other", 10).await).await;
    assert_eq!(
        taken.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
        sent[2..].iter().collect::<Vec<_>>(),
        "a relay taking over must start at the watermark inside the document"
    );
}

#[tokio::test]
async fn entries_delivered_out_of_order_are_not_claimed_again() {
    let store = mongo_support::store().await;
    let sent = commit_unit(&store, 3).await;
    let mut feed = open_feed(&store, "relay", 10).await;
    let claimed = handed(&mut *feed).await;
    // The middle one, before the first: no watermark moves.
    feed.delivered(&[claimed[1].sequence]).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 2);
    feed.close().await.unwrap();
    let mut other = open_feed(&store, "other", 10).await;
    let taken = handed(&mut *other).await;
    assert_eq!(
        taken.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
        [&sent[0], &sent[2]]
    );
    other.delivered(&sequences(&taken)).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);
}

#[tokio::test]
async fn a_corrupt_entry_is_handed_over_alone_and_its_neighbours_whole() {
    let store = mongo_support::store().await;
    let sent = commit_unit(&store, 3).await;
    outbox(&store)
        .update_many(doc! {}, doc! { "$set": { "entries.1.created_at": "yesterday" } })
        .await
        .unwrap();
    let claimed = handed(&mut *open_feed(&store, "relay", 10).await).await;
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].envelope, sent[0]);
    assert_eq!(claimed[2].envelope, sent[2]);
    assert!(claimed[0].corrupt.is_none() && claimed[2].corrupt.is_none());
    let corrupt = claimed[1]
        .corrupt
        .as_deref()
        .expect("the broken entry is not marked");
    assert!(corrupt.contains("created_at"), "{corrupt}");
    assert_eq!(claimed[1].envelope.id, sent[1].id, "what could be read was kept");
}

/// The relay conformance's corrupt-entry guarantee, with MongoDB's own breakage: a field of
/// the oldest entry of the wrong type.
#[tokio::test]
async fn a_corrupt_entry_comes_flagged_through_the_feed() {
    let store = mongo_support::store().await;
    let break_oldest = |store: &MongoStore| {
        let outbox = outbox(store);
        async move {
            let oldest = outbox
                .find_one(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .unwrap()
                .expect("the outbox is empty");
            outbox
                .update_one(
                    doc! { "_id": oldest.get("_id").unwrap().clone() },
                    doc! { "$set": { "entries.0.created_at": "yesterday" } },
                )
                .await
                .unwrap();
        }
    };
    eventflow::store::conformance::a_corrupt_entry_comes_flagged(&store, break_oldest).await;
}

#[tokio::test]
async fn outbox_documents_of_one_entry_each_are_still_relayed_and_deleted() {
    let store = MongoStore::builder(mongo_support::client().await, &mongo_support::unique_database())
        .outbox_cleanup_interval(Duration::from_millis(100))
        .open()
        .await
        .unwrap();
    // What an earlier version wrote: one document per entry, `_id` its sequence.
    let old: Vec<Envelope> = (1..=2).map(event).collect();
    let documents: Vec<Document> = (1..)
        .zip(&old)
        .map(|(sequence, envelope)| eventflow_mongo::__private::outbox_document(sequence, envelope).unwrap())
        .collect();
    outbox(&store).insert_many(documents).await.unwrap();
    store
        .database()
        .collection::<Document>(&store.collection_names().counters)
        .insert_one(doc! { "_id": "sequences", "position": 0_i64, "outbox": 2_i64 })
        .await
        .unwrap();
    let new: Vec<Envelope> = (3..=4).map(event).collect();
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&new).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 4);

    let mut feed = open_feed(&store, "relay", 10).await;
    let claimed = handed(&mut *feed).await;
    assert_eq!(
        claimed
            .iter()
            .map(|e| (e.sequence, &e.envelope))
            .collect::<Vec<_>>(),
        (1..).zip(old.iter().chain(&new)).collect::<Vec<_>>()
    );
    feed.delivered(&sequences(&claimed)).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);
    tokio::time::timeout(Duration::from_secs(10), async {
        while outbox(&store).count_documents(doc! {}).await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the clean-up left delivered documents of either layout");
}

#[tokio::test]
async fn documents_a_stopped_relay_delivered_but_left_are_swept_by_the_next() {
    let database = mongo_support::unique_database();
    let open = |cleanup: Duration| {
        let database = database.clone();
        async move {
            MongoStore::builder(mongo_support::client().await, &database)
                .outbox_cleanup_interval(cleanup)
                .open()
                .await
                .unwrap()
        }
    };
    // A relay whose clean-up never runs: it stops with its delivered documents left.
    let first = open(Duration::from_secs(3600)).await;
    let mut tx = first.begin().await.unwrap();
    tx.enqueue(&[event(1), event(2)]).await.unwrap();
    tx.commit().await.unwrap();
    let mut feed = open_feed(&first, "first", 10).await;
    let claimed = handed(&mut *feed).await;
    feed.delivered(&sequences(&claimed)).await.unwrap();
    feed.close().await.unwrap();
    // One of the one-document-per-entry layout, below the watermark too.
    let old = eventflow_mongo::__private::outbox_document(0, &event(0)).unwrap();
    outbox(&first).insert_one(old).await.unwrap();
    let waiting = event(3);
    let mut tx = first.begin().await.unwrap();
    tx.enqueue(std::slice::from_ref(&waiting)).await.unwrap();
    tx.commit().await.unwrap();
    drop(first);

    let next = open(Duration::from_millis(100)).await;
    assert_eq!(outbox(&next).count_documents(doc! {}).await.unwrap(), 3);
    // Resumed from the saved position: the change stream brings the waiting entry.
    let mut feed = open_feed(&next, "next", 10).await;
    let claimed = loop {
        // Nothing was committed through `next`: it may report it caught up first.
        let claimed = next_batch(&mut *feed).await;
        if !claimed.is_empty() {
            break claimed;
        }
    };
    assert_eq!(
        claimed.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
        [&waiting]
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        while outbox(&next).count_documents(doc! {}).await.unwrap() > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the delivered documents left behind were not swept");
    assert_eq!(
        next.outbox_backlog().await.unwrap(),
        1,
        "the waiting entry was swept"
    );
}
