//! The library: event sourcing with snapshots and a projection.
//!
//! ```text
//! cargo run --example library                      # SQLite in ./eventflow-library.db
//! cargo run --example library -- --loans 5000      # more loans: a longer rebuild
//! cargo run --example library -- --db /tmp/lib.db
//! ```
//!
//! A `Book` is an event-sourced aggregate that snapshots its state every 100 events: after
//! the loans are saved, it is loaded from its newest snapshot and the few events after it.
//! The `loans_per_member` projection keeps a SQLite table of how many books each member
//! borrowed, written in the unit of work that saves its checkpoint; the example rebuilds
//! it from the first event and prints its progress as it goes, then checks it against the
//! aggregates.
//!
//! `BookEvent` is at version 2; a new database first gets a few version 1 events, as an
//! earlier release wrote them, and every read (the aggregate's load, the projection, the
//! rebuild) upcasts them with `reader_to_member`.
//!
//! Run it again on the same file: the books go on from where they were, the projection
//! catches up with only the new events, and the rebuild counts everything once more.

use std::collections::BTreeMap;

use eventflow::aggregate::Snapshots;
use eventflow::projection::{self, Phase, Projection};
use eventflow::store::{
    rusqlite, ExpectedVersion, SqliteStore, SqliteTransaction, Storage, StoredEvent, Transaction,
};
use eventflow::{Aggregate, BoxError, Envelope, Event, EventBus, Repository};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What happens to a book. Version 2: the first release called the member `reader`, so
/// the events it wrote are version 1 and are upcast on read by [`reader_to_member`].
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "book.event", version = 2, topic = "library", upcast(v1 = reader_to_member))]
enum BookEvent {
    Borrowed {
        #[event(key)]
        book: String,
        member: String,
    },
    Returned {
        #[event(key)]
        book: String,
    },
}

/// The JSON upcaster from version 1: `Borrowed { book, reader }` became
/// `Borrowed { book, member }` (a rename needs a new version; see `eventflow::versioning`).
fn reader_to_member(mut v1: Value) -> Result<Value, String> {
    if let Some(borrowed) = v1.get_mut("Borrowed").and_then(Value::as_object_mut) {
        let reader = borrowed
            .remove("reader")
            .ok_or("a v1 `Borrowed` without `reader`")?;
        borrowed.insert("member".into(), reader);
    }
    Ok(v1)
}

/// What the first release left in the store: a loan of each book, as version 1 events.
/// Written once, on a new database; every later read upcasts them.
async fn first_release(store: &SqliteStore) -> Result<usize, eventflow::Error> {
    let mut written = 0;
    for (b, id) in BOOKS.iter().enumerate() {
        let v1 = |payload: Value| {
            let mut envelope = Envelope::new(
                BookEvent::NAME,
                1,
                BookEvent::TOPIC,
                "application/json",
                payload.to_string(),
            );
            envelope.key = Some(id.to_string());
            envelope
        };
        let events = [
            v1(json!({"Borrowed": {"book": id, "reader": MEMBERS[b % MEMBERS.len()]}})),
            v1(json!({"Returned": {"book": id}})),
        ];
        let mut tx = store.begin().await?;
        match tx
            .append(
                &Repository::<Book>::stream(id),
                ExpectedVersion::NoStream,
                &events,
            )
            .await
        {
            Ok(_) => {
                tx.commit().await?;
                written += events.len();
            }
            Err(eventflow::Error::Conflict { .. }) => {} // not a new database
            Err(error) => return Err(error),
        }
    }
    Ok(written)
}

/// A book: who has it and how often each member borrowed it.
#[derive(Default, Serialize, Deserialize, Debug)]
struct Book {
    borrowed_by: Option<String>,
    loans: BTreeMap<String, u64>,
}

impl Aggregate for Book {
    type Event = BookEvent;
    const KIND: &'static str = "book";

    fn apply(&mut self, event: &BookEvent) {
        match event {
            BookEvent::Borrowed { member, .. } => {
                *self.loans.entry(member.clone()).or_default() += 1;
                self.borrowed_by = Some(member.clone());
            }
            BookEvent::Returned { .. } => self.borrowed_by = None,
        }
    }

    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(100)
    }
}

/// Loans per member, in the table `loans_per_member`.
struct LoansPerMember;

const TABLE: &str =
    "CREATE TABLE IF NOT EXISTS loans_per_member (member TEXT PRIMARY KEY, loans INTEGER NOT NULL)";

fn sqlite(tx: &mut dyn Transaction) -> Result<&SqliteTransaction, BoxError> {
    Ok(tx
        .downcast_mut::<SqliteTransaction>()
        .ok_or("the library runs on SQLite")?)
}

impl Projection for LoansPerMember {
    const NAME: &'static str = "loans_per_member";
    const BATCH: usize = 100;

    async fn apply(&self, event: &StoredEvent, tx: &mut dyn Transaction) -> Result<(), BoxError> {
        if let Some(BookEvent::Borrowed { member, .. }) = projection::decode::<BookEvent>(event)? {
            sqlite(tx)?.connection().execute(
                "INSERT INTO loans_per_member (member, loans) VALUES (?1, 1) \
                 ON CONFLICT (member) DO UPDATE SET loans = loans + 1",
                [member],
            )?;
        }
        Ok(())
    }

    async fn reset(&self, from: u64, tx: &mut dyn Transaction) -> Result<(), BoxError> {
        if from > 0 {
            return Err("loans_per_member keeps totals, so it can only be rebuilt from the start".into());
        }
        sqlite(tx)?
            .connection()
            .execute("DELETE FROM loans_per_member", [])?;
        Ok(())
    }
}

const MEMBERS: [&str; 4] = ["ada", "grace", "linus", "barbara"];
const BOOKS: [&str; 3] = ["dune", "emma", "ulysses"];

/// Lends each book `loans` times, saving every 7 loans (14 events).
async fn lend(books: &Repository<Book>, loans: u64) -> Result<(), eventflow::Error> {
    for (b, id) in BOOKS.iter().enumerate() {
        let mut book = books.load(id).await?;
        for n in 0..loans {
            let member = MEMBERS[(n as usize + b) % MEMBERS.len()];
            book.record(BookEvent::Borrowed {
                book: id.to_string(),
                member: member.into(),
            });
            book.record(BookEvent::Returned { book: id.to_string() });
            if book.pending().len() >= 14 {
                books.save(&mut book).await?;
            }
        }
        books.save(&mut book).await?;
    }
    Ok(())
}

struct Options {
    db: String,
    loans: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        db: "eventflow-library.db".into(),
        loans: 520,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--db" => options.db = value()?,
            "--loans" => {
                let loans = value()?;
                options.loans = loans
                    .parse()
                    .map_err(|_| format!("--loans takes a number of loans per book, not `{loans}`"))?;
            }
            other => return Err(format!("unknown option `{other}`; use --db PATH or --loans N")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    eventflow_examples::init_tracing();
    let options = match options() {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("{problem}\nusage: library [--db PATH] [--loans N]");
            std::process::exit(2);
        }
    };
    let store = SqliteStore::open(&options.db).await?;
    rusqlite::Connection::open(&options.db)?.execute_batch(TABLE)?;
    let bus = EventBus::builder()
        .storage(store.clone())
        .projection(LoansPerMember)
        .start()
        .await?;
    let books = bus.repository::<Book>()?;

    let old = first_release(&store).await?;
    if old > 0 {
        println!("the first release left {old} events of `book.event` v1 in the store; they are read as v2");
    }
    lend(&books, options.loans).await?;
    println!("lent each of {} books {} times", BOOKS.len(), options.loans);

    // Loaded from the newest snapshot, and only the events after it.
    let snapshots = store.snapshots().expect("SQLite keeps snapshots");
    for id in BOOKS {
        let book = books.load(id).await?;
        let snapshot = snapshots.load_snapshot(&Repository::<Book>::stream(id)).await?;
        let from = snapshot.map_or(0, |s| s.version);
        println!(
            "  {id}: version {}, loaded from its snapshot at version {from} and {} events after it; {} loans",
            book.version(),
            book.version() - from,
            book.loans.values().sum::<u64>()
        );
    }

    let loans = bus.projection(LoansPerMember::NAME)?;
    let progress = loans.caught_up().await?;
    println!("{progress}: caught up");

    // Rebuilt from the first event, its progress printed as it goes.
    let mut watch = loans.watch();
    loans.rebuild().await?;
    loop {
        let progress = watch.borrow_and_update().clone();
        println!("  {progress}");
        if progress.phase == Phase::Live {
            break;
        }
        watch.changed().await?;
    }
    bus.shutdown().await;

    // The read model agrees with the aggregates.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let check = EventBus::builder().storage(store).start().await?;
    for id in BOOKS {
        for (member, n) in &check.repository::<Book>()?.load(id).await?.loans {
            *expected.entry(member.clone()).or_default() += n;
        }
    }
    check.shutdown().await;
    let sql = rusqlite::Connection::open(&options.db)?;
    let mut select = sql.prepare("SELECT member, loans FROM loans_per_member ORDER BY member")?;
    let table: BTreeMap<String, u64> = select
        .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?
        .collect::<Result<_, _>>()?;
    println!("loans per member: {table:?}");
    if table != expected {
        return Err(
            format!("the rebuilt read model {table:?} differs from the aggregates {expected:?}").into(),
        );
    }
    println!("the rebuilt read model counts every loan once");
    Ok(())
}
