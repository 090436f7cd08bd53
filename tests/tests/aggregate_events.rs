//! An aggregate whose events are existing `#[derive(Event)]` types, through an
//! `#[derive(EventSet)]` enum: each saved and published under its own name, version and
//! topic, so other groups subscribe to the event type itself. And the aggregate test kit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use eventflow::store::{EventStore, SqliteStore};
use eventflow::testing::AggregateTest;
use eventflow::{subscribe, Aggregate, Event, EventBus, EventSet, InProcess, Loaded, State};
use eventflow_tests::{eventually, remove_db, temp_db};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "book.borrowed", version = 2, topic = "lending")]
struct BookBorrowed {
    #[event(key)]
    book: String,
    member: String,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "book.returned", topic = "returns")]
struct BookReturned {
    #[event(key)]
    book: String,
}

#[derive(EventSet, Debug, PartialEq, Clone)]
enum BookEvent {
    Borrowed(BookBorrowed),
    Returned(BookReturned),
}

#[derive(Default, Debug)]
struct Book {
    borrowed_by: Option<String>,
    loans: u32,
}

impl Aggregate for Book {
    type Event = BookEvent;
    const KIND: &'static str = "book";

    fn apply(&mut self, event: &BookEvent) {
        match event {
            BookEvent::Borrowed(borrowed) => {
                self.borrowed_by = Some(borrowed.member.clone());
                self.loans += 1;
            }
            BookEvent::Returned(_) => self.borrowed_by = None,
        }
    }
}

#[derive(Debug, PartialEq)]
enum LendingError {
    AlreadyBorrowed { by: String },
    NotBorrowed,
}

impl std::fmt::Display for LendingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LendingError::AlreadyBorrowed { by } => write!(f, "the book is borrowed by {by}"),
            LendingError::NotBorrowed => write!(f, "the book is not borrowed"),
        }
    }
}

fn borrow(book: &mut Loaded<Book>, member: &str) -> Result<(), LendingError> {
    if let Some(by) = &book.borrowed_by {
        return Err(LendingError::AlreadyBorrowed { by: by.clone() });
    }
    let id = book.id().to_owned();
    book.record(BookEvent::Borrowed(BookBorrowed {
        book: id,
        member: member.into(),
    }));
    Ok(())
}

fn give_back(book: &mut Loaded<Book>) -> Result<(), LendingError> {
    if book.borrowed_by.is_none() {
        return Err(LendingError::NotBorrowed);
    }
    let id = book.id().to_owned();
    book.record(BookEvent::Returned(BookReturned { book: id }));
    Ok(())
}

fn borrowed(book: &str, member: &str) -> BookEvent {
    BookEvent::Borrowed(BookBorrowed {
        book: book.into(),
        member: member.into(),
    })
}

fn returned(book: &str) -> BookEvent {
    BookEvent::Returned(BookReturned { book: book.into() })
}

#[tokio::test]
async fn each_event_is_saved_under_its_own_name_version_and_topic() {
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();
    let books = bus.repository::<Book>().unwrap();

    let mut book = books.load("b-1").await.unwrap();
    borrow(&mut book, "ann").unwrap();
    give_back(&mut book).unwrap();
    borrow(&mut book, "bob").unwrap();
    assert_eq!(books.save(&mut book).await.unwrap(), 3);

    let stored = store.read_stream("book-b-1", 1).await.unwrap();
    let headers: Vec<_> = stored
        .iter()
        .map(|s| {
            let e = &s.envelope;
            (&*e.name, e.version, &*e.topic, e.key.as_deref())
        })
        .collect();
    assert_eq!(
        headers,
        [
            ("book.borrowed", 2, "lending", Some("b-1")),
            ("book.returned", 1, "returns", Some("b-1")),
            ("book.borrowed", 2, "lending", Some("b-1")),
        ]
    );
    let payload: serde_json::Value = serde_json::from_slice(&stored[0].envelope.payload).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"book": "b-1", "member": "ann"}),
        "the payload is the event itself, not wrapped in the enum"
    );

    let reloaded = books.load("b-1").await.unwrap();
    assert_eq!(
        (
            reloaded.borrowed_by.as_deref(),
            reloaded.loans,
            reloaded.version()
        ),
        (Some("bob"), 2, 3)
    );
    bus.shutdown().await;
    remove_db(&path);
}

#[derive(Clone, Default)]
struct Reminders(Arc<Mutex<Vec<BookBorrowed>>>);

/// Another group, which knows nothing of the `Book` aggregate.
#[subscribe(group = "reminders")]
async fn remind(event: BookBorrowed, State(reminders): State<Reminders>) -> Result<(), String> {
    reminders.0.lock().unwrap().push(event);
    Ok(())
}

#[tokio::test]
async fn another_groups_handler_of_the_struct_gets_the_saved_event() {
    let transport = InProcess::new();
    let reminders = Reminders::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(eventflow::MemoryStore::new())
        .state(reminders.clone())
        .handler(remind)
        .start()
        .await
        .unwrap();
    let books = bus.repository::<Book>().unwrap();

    let mut book = books.load("b-2").await.unwrap();
    borrow(&mut book, "cy").unwrap();
    give_back(&mut book).unwrap();
    books.save(&mut book).await.unwrap();

    eventually(10, "the reminder group to get the borrowed book", || {
        !reminders.0.lock().unwrap().is_empty()
    })
    .await;
    transport.wait_idle().await;
    assert_eq!(
        *reminders.0.lock().unwrap(),
        [BookBorrowed {
            book: "b-2".into(),
            member: "cy".into()
        }],
        "the handler of `BookBorrowed` gets it, and not the `BookReturned`"
    );
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[test]
fn the_test_kit_checks_new_events_and_refusals() {
    AggregateTest::<Book>::given([])
        .when(|book| borrow(book, "ann"))
        .then([borrowed("test-1", "ann")]);

    let book = AggregateTest::<Book>::given_for("b-3", [borrowed("b-3", "ann")])
        .when(give_back)
        .then([returned("b-3")]);
    assert_eq!(
        (book.borrowed_by.as_deref(), book.loans, book.version()),
        (None, 1, 1)
    );

    AggregateTest::<Book>::given([borrowed("test-1", "ann")])
        .when(|book| borrow(book, "bob"))
        .then_error(LendingError::AlreadyBorrowed { by: "ann".into() });
    AggregateTest::<Book>::given([borrowed("test-1", "ann"), returned("test-1")])
        .when(give_back)
        .then_error_containing("not borrowed");
    AggregateTest::<Book>::given([]).when(|_book| ()).then([]);
}

/// The panic message of `check`.
fn failure(check: impl FnOnce()) -> String {
    let panic = catch_unwind(AssertUnwindSafe(check)).expect_err("the check passed");
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

#[test]
fn the_test_kit_shows_expected_and_recorded_events() {
    let message = failure(|| {
        AggregateTest::<Book>::given([])
            .when(|book| borrow(book, "ann"))
            .then([borrowed("test-1", "bob")]);
    });
    assert!(
        message
            .contains("expected 1 event:\n  1. Borrowed(BookBorrowed { book: \"test-1\", member: \"bob\" })"),
        "{message}"
    );
    assert!(
        message
            .contains("recorded 1 event:\n  1. Borrowed(BookBorrowed { book: \"test-1\", member: \"ann\" })"),
        "{message}"
    );
    assert!(message.contains("first difference at event 1"), "{message}");

    let message = failure(|| {
        AggregateTest::<Book>::given([borrowed("test-1", "ann")])
            .when(give_back)
            .then([returned("test-1"), borrowed("test-1", "bob")]);
    });
    assert!(
        message.contains("event 2 was expected and not recorded"),
        "{message}"
    );

    let message = failure(|| {
        AggregateTest::<Book>::given([borrowed("test-1", "ann")])
            .when(|book| borrow(book, "bob"))
            .then([]);
    });
    assert!(
        message.contains("expected the command to succeed, but it failed: AlreadyBorrowed"),
        "{message}"
    );

    let message = failure(|| {
        AggregateTest::<Book>::given([])
            .when(give_back)
            .then_error(LendingError::AlreadyBorrowed { by: "x".into() });
    });
    assert!(message.contains("but it failed with NotBorrowed"), "{message}");

    let message = failure(|| {
        AggregateTest::<Book>::given([])
            .when(|book| -> Result<(), LendingError> {
                borrow(book, "ann")?;
                Err(LendingError::NotBorrowed)
            })
            .then_error(LendingError::NotBorrowed);
    });
    assert!(message.contains("recorded events first"), "{message}");
}

/// An event that loses a field when saved: `#[serde(skip)]`.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "shelf.labelled")]
struct Labelled {
    text: String,
    #[serde(skip)]
    colour: String,
}

#[derive(Default, Debug)]
struct Shelf;

impl Aggregate for Shelf {
    type Event = Labelled;
    const KIND: &'static str = "shelf";

    fn apply(&mut self, _event: &Labelled) {}
}

#[test]
fn the_test_kit_catches_an_event_that_does_not_survive_saving() {
    let label = Labelled {
        text: "poetry".into(),
        colour: "red".into(),
    };
    let expected = label.clone();
    let message = failure(move || {
        AggregateTest::<Shelf>::given([])
            .when(|shelf| shelf.record(label))
            .then([expected]);
    });
    assert!(
        message.contains("recorded event 1 does not survive being saved"),
        "{message}"
    );
    assert!(message.contains("colour: \"\""), "{message}");
}
