//! The storage conformance suite on SQLite, and what only a durable store can show: data
//! survives reopening the file, and the application's own writes share the unit of work.

use std::time::Duration;

use eventflow::store::{
    CheckpointStore, EventStore, ExpectedVersion, InboxStore, LeasedOutbox, SqliteStore, SqliteTransaction,
    Storage, Transaction,
};
use eventflow::Envelope;
use eventflow_tests::{remove_db, temp_db};

eventflow::storage_conformance!(async { SqliteStore::open(temp_db()).await.unwrap() });
eventflow::storage_conformance!(leased_outbox: async { SqliteStore::open(temp_db()).await.unwrap() });

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

#[tokio::test]
async fn committed_data_survives_reopening_the_file() {
    let path = temp_db();
    let (placed, paid) = (event(1), event(2).caused_by(&event(1)));
    let handled = placed.id;
    {
        let store = SqliteStore::open(&path).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.append(
            "order-1",
            ExpectedVersion::NoStream,
            &[placed.clone(), paid.clone()],
        )
        .await
        .unwrap();
        tx.enqueue(&[placed.clone(), paid.clone()]).await.unwrap();
        assert!(tx.mark_processed("billing", handled).await.unwrap());
        tx.commit().await.unwrap();
        store.save_checkpoint("projection", "2").await.unwrap();

        let mut abandoned = store.begin().await.unwrap();
        abandoned
            .append("order-1", ExpectedVersion::Exact(2), &[event(3)])
            .await
            .unwrap();
        drop(abandoned);
    }

    let store = SqliteStore::open(&path).await.unwrap();
    let stream = store.read_stream("order-1", 1).await.unwrap();
    assert_eq!(
        stream
            .iter()
            .map(|e| (e.version, &e.envelope))
            .collect::<Vec<_>>(),
        [(1, &placed), (2, &paid)],
        "committed events, exactly as written, and nothing of the dropped unit of work"
    );
    let outbox = store
        .claim_outbox("relay", Duration::from_secs(5), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        outbox.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
        [&placed, &paid],
        "undelivered outbox entries are still there"
    );
    assert!(store.is_processed("billing", handled).await.unwrap());
    assert_eq!(
        store.checkpoint("projection").await.unwrap().as_deref(),
        Some("2")
    );

    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.append("order-1", ExpectedVersion::Exact(2), &[event(3)])
            .await
            .unwrap(),
        3,
        "the stream continues where it was"
    );
    tx.commit().await.unwrap();
    drop(store);
    remove_db(&path);
}

#[tokio::test]
async fn the_applications_writes_commit_and_roll_back_with_the_unit_of_work() {
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let orders = |store: SqliteStore| async move {
        let mut tx = store.begin().await.unwrap();
        let sqlite = tx.downcast_mut::<SqliteTransaction>().unwrap();
        let count: i64 = sqlite
            .connection()
            .query_row("SELECT COUNT(*) FROM orders", [], |row| row.get(0))
            .unwrap();
        count
    };

    let mut tx = store.begin().await.unwrap();
    let sqlite = tx.downcast_mut::<SqliteTransaction>().unwrap();
    sqlite
        .connection()
        .execute_batch("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)")
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    insert_order(&mut *tx);
    tx.enqueue(&[event(1)]).await.unwrap();
    drop(tx);
    assert_eq!(
        orders(store.clone()).await,
        0,
        "a dropped unit of work kept a row"
    );
    assert!(store
        .claim_outbox("relay", Duration::from_secs(5), 0, 10)
        .await
        .unwrap()
        .is_empty());

    let mut tx = store.begin().await.unwrap();
    insert_order(&mut *tx);
    tx.enqueue(&[event(1)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(orders(store.clone()).await, 1);
    assert_eq!(
        store
            .claim_outbox("relay", Duration::from_secs(5), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    drop(store);
    remove_db(&path);
}

#[tokio::test]
async fn writing_through_the_store_while_holding_a_unit_of_work_fails_instead_of_hanging() {
    let path = temp_db();
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let tx = store.begin().await.unwrap();
    let error = store
        .save_checkpoint("projection", "1")
        .await
        .expect_err("the write waited for the open unit of work");
    assert!(
        error.to_string().contains("write lock"),
        "the error says what happened: {error}"
    );
    drop(tx);
    store.save_checkpoint("projection", "1").await.unwrap();
    drop(store);
    remove_db(&path);
}

#[tokio::test]
async fn opening_in_a_missing_directory_says_what_to_check() {
    let path = temp_db().join("missing").join("app.db");
    let error = SqliteStore::open(&path).await.unwrap_err().to_string();
    assert!(
        error.contains("check the directory exists"),
        "unhelpful error: {error}"
    );
}

#[tokio::test]
async fn opening_a_directory_says_to_give_a_file() {
    let dir = std::env::temp_dir();
    let error = SqliteStore::open(&dir).await.unwrap_err().to_string();
    assert!(
        error.contains("is a directory") && error.contains("path of a database file"),
        "unhelpful error: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_serialize_writes_and_share_the_outbox_lease() {
    // Two stores on one file stand for two processes: separate connections, separate locks.
    let path = temp_db();
    let (a, b) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    let tasks: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|store| {
            tokio::spawn(async move {
                for n in 0..20 {
                    let mut tx = store.begin().await.unwrap();
                    tx.append("shared", ExpectedVersion::Any, &[event(n)])
                        .await
                        .unwrap();
                    tx.enqueue(&[event(n)]).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let versions: Vec<u64> = b
        .read_stream("shared", 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=40).collect::<Vec<_>>());

    let lease = Duration::from_secs(30);
    assert_eq!(a.claim_outbox("relay-a", lease, 0, 100).await.unwrap().len(), 40);
    assert!(
        b.claim_outbox("relay-b", lease, 0, 100).await.unwrap().is_empty(),
        "a relay in another process took a held lease"
    );
    a.release_outbox("relay-a").await.unwrap();
    assert_eq!(b.claim_outbox("relay-b", lease, 0, 100).await.unwrap().len(), 40);
    drop((a, b));
    remove_db(&path);
}

/// The application's own write inside a unit of work.
fn insert_order(tx: &mut dyn Transaction) {
    tx.downcast_mut::<SqliteTransaction>()
        .unwrap()
        .connection()
        .execute(
            "INSERT INTO orders (id, total) VALUES (?1, ?2)",
            eventflow::store::rusqlite::params!["order-1", 42],
        )
        .unwrap();
}

#[tokio::test]
async fn an_outbox_row_that_cannot_be_read_comes_flagged_and_its_neighbours_as_they_are() {
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let break_oldest = |store: &SqliteStore| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            tx.downcast_mut::<SqliteTransaction>()
                .unwrap()
                .connection()
                .execute(
                    "UPDATE outbox SET headers = 'not json' WHERE sequence = (SELECT MIN(sequence) FROM outbox)",
                    [],
                )
                .unwrap();
            tx.commit().await.unwrap();
        }
    };
    eventflow::store::conformance::a_corrupt_entry_comes_flagged(&store, break_oldest).await;
    remove_db(&path);
}
