//! Aggregate snapshots on memory, SQLite and MongoDB: loading starts from the newest
//! snapshot, a snapshot of another state schema or one that does not decode is ignored,
//! and snapshots never get in the way of optimistic concurrency.

mod mongo_support;

use std::time::Duration;

use eventflow::aggregate::Snapshots;
use eventflow::store::{Storage, StoredSnapshot};
use eventflow::{Aggregate, Error, Event, EventBus, Repository};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "book.event", topic = "library")]
enum BookEvent {
    Borrowed {
        #[event(key)]
        book: String,
    },
    Returned {
        #[event(key)]
        book: String,
    },
}

/// A book's loans; snapshotted every 100 events.
#[derive(Default, Debug, Serialize, Deserialize, PartialEq)]
struct Book {
    loans: u64,
    out: bool,
}

impl Aggregate for Book {
    type Event = BookEvent;
    const KIND: &'static str = "book";

    fn apply(&mut self, event: &BookEvent) {
        match event {
            BookEvent::Borrowed { .. } => (self.loans, self.out) = (self.loans + 1, true),
            BookEvent::Returned { .. } => self.out = false,
        }
    }

    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(100)
    }
}

/// The same stream with a state of another shape: schema version 2.
#[derive(Default, Debug, Serialize, Deserialize, PartialEq)]
struct BookV2 {
    loans: u64,
    returns: u64,
}

impl Aggregate for BookV2 {
    type Event = BookEvent;
    const KIND: &'static str = "book";

    fn apply(&mut self, event: &BookEvent) {
        match event {
            BookEvent::Borrowed { .. } => self.loans += 1,
            BookEvent::Returned { .. } => self.returns += 1,
        }
    }

    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(100).schema_version(2)
    }
}

/// Saves `loans` loans and returns of book `id`, `per_save` events per save.
async fn lend(books: &Repository<Book>, id: &str, loans: u64, per_save: u64) {
    let mut book = books.load(id).await.unwrap();
    for n in 0..loans * 2 {
        book.record(match n % 2 {
            0 => BookEvent::Borrowed { book: id.into() },
            _ => BookEvent::Returned { book: id.into() },
        });
        if book.pending().len() as u64 == per_save {
            books.save(&mut book).await.unwrap();
        }
    }
    books.save(&mut book).await.unwrap();
}

async fn snapshot_of(store: &dyn Storage, stream: &str) -> Option<StoredSnapshot> {
    store
        .snapshots()
        .expect("the store keeps snapshots")
        .load_snapshot(stream)
        .await
        .unwrap()
}

async fn bus(store: impl Storage + Clone) -> EventBus {
    EventBus::builder().storage(store).start().await.unwrap()
}

async fn loading_starts_from_the_newest_snapshot(store: impl Storage + Clone) {
    let bus = bus(store.clone()).await;
    let books = bus.repository::<Book>().unwrap();
    lend(&books, "b-1", 125, 10).await;

    let snapshot = snapshot_of(&store, "book-b-1")
        .await
        .expect("no snapshot was taken");
    assert_eq!(
        (snapshot.version, snapshot.schema),
        (200, 1),
        "250 events saved 10 at a time, every 100: the newest snapshot is at 200"
    );

    // A snapshot that says something the events do not: a load that reads it shows it.
    let tampered = Book {
        loans: 1_000_000,
        out: false,
    };
    store
        .snapshots()
        .unwrap()
        .save_snapshot(StoredSnapshot {
            state: serde_json::to_vec(&tampered).unwrap(),
            ..snapshot
        })
        .await
        .unwrap();
    let book = books.load("b-1").await.unwrap();
    assert_eq!(
        (book.loans, book.version()),
        (1_000_025, 250),
        "the load did not start from the snapshot at 200 and apply the 50 events after it"
    );
    bus.shutdown().await;
}

async fn a_snapshot_of_another_schema_is_ignored_and_replaced(store: impl Storage + Clone) {
    let bus = bus(store.clone()).await;
    lend(&bus.repository::<Book>().unwrap(), "b-2", 125, 250).await;
    assert_eq!(
        snapshot_of(&store, "book-b-2")
            .await
            .map(|s| (s.version, s.schema)),
        Some((250, 1))
    );

    let book = bus.repository::<BookV2>().unwrap().load("b-2").await.unwrap();
    assert_eq!(
        (book.loans, book.returns, book.version()),
        (125, 125, 250),
        "a snapshot of schema 1 was read as schema 2"
    );
    // The load replayed 250 events: a snapshot of the new schema replaces the old one.
    let mut replaced = None;
    for _ in 0..200 {
        replaced = snapshot_of(&store, "book-b-2").await.filter(|s| s.schema == 2);
        if replaced.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let replaced = replaced.expect("no snapshot of schema 2 replaced the old one after the load");
    assert_eq!(replaced.version, 250);
    assert_eq!(
        serde_json::from_slice::<BookV2>(&replaced.state).unwrap(),
        BookV2 {
            loans: 125,
            returns: 125
        }
    );
    bus.shutdown().await;
}

async fn a_snapshot_that_does_not_decode_is_ignored(store: impl Storage + Clone) {
    let bus = bus(store.clone()).await;
    let books = bus.repository::<Book>().unwrap();
    lend(&books, "b-3", 60, 120).await;
    store
        .snapshots()
        .unwrap()
        .save_snapshot(StoredSnapshot {
            stream: "book-b-3".into(),
            version: 120,
            schema: 1,
            state: b"{\"loans\": \"not a number\"".to_vec(),
        })
        .await
        .unwrap();
    let book = books.load("b-3").await.unwrap();
    assert_eq!(
        (book.loans, book.out, book.version()),
        (60, false, 120),
        "a snapshot that does not decode was not ignored"
    );
    // The load replayed all 120 events and wrote a good snapshot over the bad one.
    let store_ = store.clone();
    let good = move || {
        let store = store_.clone();
        async move {
            snapshot_of(&store, "book-b-3")
                .await
                .is_some_and(|s| serde_json::from_slice::<Book>(&s.state).is_ok())
        }
    };
    let mut replaced = false;
    for _ in 0..200 {
        if good().await {
            replaced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(replaced, "the undecodable snapshot was never replaced");
    bus.shutdown().await;
}

async fn snapshots_leave_optimistic_concurrency_alone(store: impl Storage + Clone) {
    let bus = bus(store.clone()).await;
    let books = bus.repository::<Book>().unwrap();
    lend(&books, "b-4", 49, 98).await;

    let (mut first, mut second) = (books.load("b-4").await.unwrap(), books.load("b-4").await.unwrap());
    for book in [&mut first, &mut second] {
        book.record(BookEvent::Borrowed { book: "b-4".into() });
        book.record(BookEvent::Returned { book: "b-4".into() });
    }
    assert_eq!(books.save(&mut first).await.unwrap(), 100);
    assert_eq!(
        snapshot_of(&store, "book-b-4").await.map(|s| s.version),
        Some(100),
        "crossing 100 took no snapshot"
    );
    let stale = books.save(&mut second).await;
    assert!(
        matches!(stale, Err(Error::Conflict { actual: 100, .. })),
        "a stale save went through once a snapshot was taken: {stale:?}"
    );
    let book = books.load("b-4").await.unwrap();
    assert_eq!((book.loans, book.version()), (50, 100));
    assert_eq!(store.read_stream("book-b-4", 1).await.unwrap().len(), 100);
    bus.shutdown().await;
}

macro_rules! on_backend {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn loading_starts_from_the_newest_snapshot() {
                super::loading_starts_from_the_newest_snapshot($make.await).await;
            }

            #[tokio::test]
            async fn a_snapshot_of_another_schema_is_ignored_and_replaced() {
                super::a_snapshot_of_another_schema_is_ignored_and_replaced($make.await).await;
            }

            #[tokio::test]
            async fn a_snapshot_that_does_not_decode_is_ignored() {
                super::a_snapshot_that_does_not_decode_is_ignored($make.await).await;
            }

            #[tokio::test]
            async fn snapshots_leave_optimistic_concurrency_alone() {
                super::snapshots_leave_optimistic_concurrency_alone($make.await).await;
            }
        }
    };
}

on_backend!(memory, async { eventflow::MemoryStore::new() });
on_backend!(sqlite, async {
    eventflow::store::SqliteStore::open(eventflow_tests::temp_db())
        .await
        .unwrap()
});
on_backend!(mongo, mongo_support::store());

/// A database file made before snapshots existed gains their table when it is opened.
#[tokio::test]
async fn an_older_sqlite_file_gains_the_snapshots_table() {
    use eventflow::store::{rusqlite, SqliteStore};
    let path = eventflow_tests::temp_db();
    drop(SqliteStore::open(&path).await.unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE snapshots")
        .unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    let bus = bus(store.clone()).await;
    lend(&bus.repository::<Book>().unwrap(), "b-5", 50, 100).await;
    assert_eq!(
        snapshot_of(&store, "book-b-5").await.map(|s| s.version),
        Some(100)
    );
    bus.shutdown().await;
    eventflow_tests::remove_db(&path);
}
