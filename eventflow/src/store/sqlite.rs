//! [`SqliteStore`]: the storage traits on an embedded SQLite database in WAL mode.
//!
//! # Concurrency
//!
//! SQLite has one writer at a time per database file. The store keeps one writer
//! connection behind a [`tokio::sync::Mutex`]: a [`SqliteTransaction`] holds it (as an
//! owned guard) from `BEGIN IMMEDIATE` to `COMMIT`, and the store's own writes (relay
//! lease, inbox markers outside a unit of work, dead letters, checkpoints) take it for one
//! short transaction each. `BEGIN IMMEDIATE` takes SQLite's write lock up front, so a
//! transaction never fails half-way on upgrading a read lock to a write lock, and other
//! processes on the same file wait for it (up to the busy timeout) instead of deadlocking.
//! Reads use a small pool of reader connections; in WAL mode they see the last committed
//! state and never wait for the writer.
//!
//! rusqlite is synchronous. Calls that can wait (`BEGIN IMMEDIATE` on a lock held by another
//! process, `COMMIT` with its fsync and WAL checkpoint) and whole store operations run on
//! tokio's blocking pool with `spawn_blocking`, which works on every runtime flavour
//! (`block_in_place` panics on a current-thread runtime). Statements inside an open
//! transaction (`append`, `enqueue`, `mark_processed`, the application's own writes) run
//! directly on the calling task: the write lock is already held, so they do not wait for
//! locks, and a hop to another thread per statement would cost more than the statement.
//! No `std` mutex guard is held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
pub use rusqlite;
use rusqlite::types::{ToSqlOutput, Type, Value};
use rusqlite::{params, params_from_iter, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use tokio::sync::{watch, OwnedMutexGuard};
use uuid::Uuid;

mod checkpoints;
mod snapshots;

use super::{
    CheckpointStore, EventStore, ExpectedVersion, InboxStore, OutboxEntry, OutboxLease, OutboxStore,
    SnapshotStore, Storage, StoredEvent, Transaction,
};
use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::{Envelope, Error};

/// The schema this version of eventflow creates, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Idle reader connections kept for reuse; more are opened while reads overlap.
const IDLE_READERS: usize = 4;

/// The envelope's columns, shared by `events`, `outbox` and `dead_letters` and always last
/// in their statements, so [`envelope_params`] and [`envelope_from_row`] serve all three.
/// The three lists must stay in the same order.
macro_rules! envelope_sql {
    (definitions) => {
        "event_id BLOB NOT NULL, name TEXT NOT NULL, schema_version INTEGER NOT NULL, \
         topic TEXT NOT NULL, partition_key TEXT, created_at INTEGER NOT NULL, \
         correlation_id BLOB NOT NULL, causation_id BLOB, headers TEXT NOT NULL, \
         content_type TEXT NOT NULL, payload BLOB NOT NULL"
    };
    (columns) => {
        "event_id, name, schema_version, topic, partition_key, created_at, correlation_id, \
         causation_id, headers, content_type, payload"
    };
    (placeholders) => {
        "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
    };
}

const SCHEMA: &str = concat!(
    // Events are never deleted; `position` (AUTOINCREMENT: never reused) orders them in
    // commit order because commits are serialized.
    "CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL, ",
    envelope_sql!(definitions),
    ", UNIQUE (stream, version));
    ",
    // Delivered entries are deleted, so the table holds only the backlog and claiming the
    // oldest walks the primary key from its start: no index, no scan past delivered rows.
    // AUTOINCREMENT keeps a sequence that a relay still holds from being given to a new
    // entry after the newest one was delivered.
    "CREATE TABLE IF NOT EXISTS outbox (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT, ",
    envelope_sql!(definitions),
    ");
    CREATE TABLE IF NOT EXISTS outbox_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    ",
    // processed_at lets old markers be pruned once no redelivery can reach them.
    "CREATE TABLE IF NOT EXISTS inbox (
        group_name TEXT NOT NULL,
        event_id BLOB NOT NULL,
        processed_at INTEGER NOT NULL,
        PRIMARY KEY (group_name, event_id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS dead_letters (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id BLOB NOT NULL UNIQUE,
        group_name TEXT NOT NULL,
        error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        failed_at INTEGER NOT NULL, ",
    envelope_sql!(definitions),
    ");
    CREATE INDEX IF NOT EXISTS dead_letters_by_group ON dead_letters (group_name, seq);
    CREATE TABLE IF NOT EXISTS checkpoints (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;"
);

const INSERT_EVENT: &str = concat!(
    "INSERT INTO events (stream, version, ",
    envelope_sql!(columns),
    ") VALUES (?, ?, ",
    envelope_sql!(placeholders),
    ")"
);
const SELECT_EVENTS: &str = concat!(
    "SELECT position, stream, version, ",
    envelope_sql!(columns),
    " FROM events"
);
const INSERT_OUTBOX: &str = concat!(
    "INSERT INTO outbox (",
    envelope_sql!(columns),
    ") VALUES (",
    envelope_sql!(placeholders),
    ")"
);
const CLAIM_OUTBOX: &str = concat!(
    "SELECT sequence, ",
    envelope_sql!(columns),
    " FROM outbox WHERE sequence > ?1 ORDER BY sequence LIMIT ?2"
);
/// Inbox markers deleted per transaction when pruning.
const PRUNE_CHUNK: usize = 2_000;
const PRUNE_INBOX: &str = "DELETE FROM inbox WHERE (group_name, event_id) IN \
     (SELECT group_name, event_id FROM inbox WHERE processed_at < ?1 LIMIT ?2)";
const MARK_PROCESSED: &str =
    "INSERT OR IGNORE INTO inbox (group_name, event_id, processed_at) VALUES (?1, ?2, ?3)";
// Replacing a letter keeps its `seq`, so it keeps its place in the list.
const PUT_DEAD_LETTER: &str = concat!(
    "INSERT OR REPLACE INTO dead_letters (seq, id, group_name, error, attempts, failed_at, ",
    envelope_sql!(columns),
    ") VALUES ((SELECT seq FROM dead_letters WHERE id = ?1), ?1, ?2, ?3, ?4, ?5, ",
    envelope_sql!(placeholders),
    ")"
);
const DEAD_LETTER_COLUMNS: &str = concat!(
    "id, group_name, error, attempts, failed_at, ",
    envelope_sql!(columns)
);

/// Durable storage in one SQLite file, embedded in the process: nothing to install or run.
///
/// The file is created with its tables on first [`open`](SqliteStore::open). Several
/// processes on the same machine may open the same file (SQLite serializes their writes;
/// the relays share the outbox through its lease); a network file system will not do,
/// since WAL mode needs shared memory. Clones share the same connections.
///
/// # Durability
///
/// The database runs in WAL mode with `synchronous = NORMAL` by default: a committed unit of
/// work survives a crash of the process, but the last transactions before a power loss or
/// an operating system crash may be lost (the database itself stays consistent). Choose
/// [`synchronous_full`](SqliteStoreBuilder::synchronous_full) to make every commit wait for
/// its fsync and survive those too, at the cost of slower commits.
///
/// ```no_run
/// use eventflow::store::{EventStore, SqliteStore};
///
/// # async fn example() -> Result<(), eventflow::Error> {
/// let store = SqliteStore::open("app.db").await?;
/// let durable = SqliteStore::builder("app.db").synchronous_full().open().await?;
/// let orders = store.read_stream("order-1", 1).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    busy_timeout: Duration,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    commits: watch::Sender<u64>,
}

/// Opens a [`SqliteStore`] with non-default settings; from [`SqliteStore::builder`].
#[derive(Clone, Debug)]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    synchronous_full: bool,
    busy_timeout: Duration,
}

impl SqliteStoreBuilder {
    /// Makes every commit wait until the write-ahead log is on disk (`synchronous = FULL`),
    /// so committed units of work also survive a power loss or an operating system crash.
    /// Commits get slower by an fsync each.
    pub fn synchronous_full(mut self) -> Self {
        self.synchronous_full = true;
        self
    }

    /// How long an operation waits for the database while another unit of work (of this
    /// process or another) holds the write lock, before failing. Default 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Opens the database, creating the file and the tables if they do not exist.
    pub async fn open(self) -> Result<SqliteStore, Error> {
        run_blocking(move || self.open_blocking()).await
    }

    fn open_blocking(self) -> Result<SqliteStore, Error> {
        let path = self.path;
        let writer = Connection::open(&path).map_err(|e| {
            Error::backend(format!(
                "could not open SQLite database at {}: {e}; check the directory exists and is writable",
                path.display()
            ))
        })?;
        let setup = |e: rusqlite::Error| {
            Error::backend(format!(
                "could not set up the SQLite database at {}: {e}; check the file is an SQLite \
                 database this process can write, and that no other program holds it locked",
                path.display()
            ))
        };
        configure(&writer, self.busy_timeout).map_err(setup)?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(setup)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::backend(format!(
                "could not switch the SQLite database at {} to WAL mode (it stays in `{mode}` \
                 mode); WAL needs a file on a local disk (not `:memory:` and not a network \
                 share); use MemoryStore for storage in memory",
                path.display()
            )));
        }
        let synchronous = if self.synchronous_full { "FULL" } else { "NORMAL" };
        writer
            .pragma_update(None, "synchronous", synchronous)
            .map_err(setup)?;
        create_schema(&writer, &path)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                busy_timeout: self.busy_timeout,
                writer: Arc::new(tokio::sync::Mutex::new(writer)),
                readers: Mutex::new(Vec::new()),
                commits: watch::channel(0).0,
            }),
        })
    }
}

fn configure(connection: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    connection.busy_timeout(busy_timeout)?;
    connection.set_prepared_statement_cache_capacity(32);
    Ok(())
}

fn create_schema(connection: &Connection, path: &Path) -> Result<(), Error> {
    let create = || -> rusqlite::Result<Option<i64>> {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            connection.execute_batch("ROLLBACK")?;
            return Ok(Some(version));
        }
        connection.execute_batch(SCHEMA)?;
        // Added after schema version 1 shipped: `IF NOT EXISTS` adds it to older files.
        connection.execute_batch(snapshots::SCHEMA)?;
        connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        connection.execute_batch("COMMIT")?;
        Ok(None)
    };
    match create() {
        Ok(None) => Ok(()),
        Ok(Some(version)) => Err(Error::backend(format!(
            "the SQLite database at {} has eventflow schema version {version}, newer than the \
             {SCHEMA_VERSION} this version of eventflow knows; upgrade eventflow",
            path.display()
        ))),
        Err(e) => {
            if !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            Err(Error::backend(format!(
                "could not create the eventflow tables in the SQLite database at {}: {e}; check \
                 the file is an SQLite database this process can write",
                path.display()
            )))
        }
    }
}

impl SqliteStore {
    /// Opens the database at `path` with the default settings, creating the file and the
    /// tables if they do not exist.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        SqliteStore::builder(path).open().await
    }

    /// Settings for opening the database at `path`, for
    /// [`synchronous_full`](SqliteStoreBuilder::synchronous_full) or a
    /// [`busy_timeout`](SqliteStoreBuilder::busy_timeout).
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_owned(),
            synchronous_full: false,
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// Takes the writer connection, waiting at most the busy timeout for the unit of work
    /// that holds it.
    async fn lock_writer(&self) -> Result<Writer, Error> {
        let lock = self.inner.writer.clone().lock_owned();
        match tokio::time::timeout(self.inner.busy_timeout, lock).await {
            Ok(guard) => Ok(Writer(guard)),
            Err(_) => Err(Error::backend(format!(
                "waited {:?} for the write lock of the SQLite database at {}: a unit of work \
                 stayed open that long; commit or drop units of work promptly, and do not \
                 write through the store (claim_outbox, mark_processed, dead letters, \
                 checkpoints) from a task that holds an open unit of work, which waits for itself",
                self.inner.busy_timeout,
                self.inner.path.display()
            ))),
        }
    }

    /// Runs `f` in one write transaction on the blocking pool; an error rolls it back.
    async fn write<T, F>(&self, what: &'static str, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let writer = self.lock_writer().await?;
        let inner = self.inner.clone();
        run_blocking(move || {
            writer.begin(&inner)?;
            let value = f(&writer.0)?;
            writer
                .0
                .execute_batch("COMMIT")
                .map_err(|e| inner.fail(what, e))?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, what: &'static str, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let reader = inner.reader()?;
            let result = f(&reader).map_err(|e| inner.fail(what, e));
            let mut idle = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(reader);
            }
            result
        })
        .await
    }
}

impl Inner {
    fn reader(&self) -> Result<Connection, Error> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(reader) = idle {
            return Ok(reader);
        }
        let flags =
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = Connection::open_with_flags(&self.path, flags)
            .and_then(|reader| {
                configure(&reader, self.busy_timeout)?;
                reader.pragma_update(None, "query_only", true)?;
                Ok(reader)
            })
            .map_err(|e| self.fail("opening a reader connection", e))?;
        Ok(reader)
    }

    /// A SQLite error as an [`Error`] that says what to do about it.
    fn fail(&self, what: &str, error: rusqlite::Error) -> Error {
        let advice = match error.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
                "another process held the database locked for more than the busy timeout \
                 ({:?}); shorten its transactions or raise SqliteStoreBuilder::busy_timeout",
                self.busy_timeout
            ),
            Some(ErrorCode::DiskFull) => "the disk is full; free some space".to_owned(),
            Some(
                ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::PermissionDenied
                | ErrorCode::AuthorizationForStatementDenied,
            ) => "check that this process can write the database file and its directory".to_owned(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                "the file is damaged or is not an eventflow database; restore it from a backup".to_owned()
            }
            _ => "check that nothing but eventflow changed the eventflow tables".to_owned(),
        };
        Error::backend(format!(
            "SQLite failed {what} in {}: {error}; {advice}",
            self.path.display()
        ))
    }
}

/// The writer connection, taken from the store. Dropping it in a transaction rolls the
/// transaction back, so a unit of work dropped without commit, or a store operation whose
/// future was dropped half-way, leaves no trace and leaves the connection ready.
#[derive(Debug)]
struct Writer(OwnedMutexGuard<Connection>);

impl Writer {
    fn begin(&self, inner: &Inner) -> Result<(), Error> {
        if !self.0.is_autocommit() {
            // A rollback in `drop` failed earlier; do not build on what it left.
            let _ = self.0.execute_batch("ROLLBACK");
        }
        self.0
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| inner.fail("starting a transaction", e))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            if let Err(error) = self.0.execute_batch("ROLLBACK") {
                tracing::warn!(%error, "rolling back an abandoned SQLite transaction failed; the next one retries");
            }
        }
    }
}

/// A unit of work on a [`SqliteStore`]: an SQLite transaction begun with `BEGIN IMMEDIATE`
/// on the store's writer connection, which it holds until it is committed or dropped.
/// Dropping it without [`commit`](Transaction::commit) rolls it back.
///
/// The application writes its own tables in the same transaction through
/// [`connection`](SqliteTransaction::connection):
///
/// ```no_run
/// use eventflow::store::{rusqlite, ExpectedVersion, SqliteStore, SqliteTransaction, Storage};
/// use eventflow::Envelope;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open("shop.db").await?;
/// let placed = Envelope::new("order.placed", 1, "orders", "application/json", r#"{"total":42}"#);
///
/// let mut tx = store.begin().await?;
/// {
///     let sqlite = tx
///         .downcast_mut::<SqliteTransaction>()
///         .expect("a SqliteStore unit of work");
///     sqlite.connection().execute(
///         "INSERT INTO orders (id, total) VALUES (?1, ?2)",
///         rusqlite::params!["order-1", 42],
///     )?;
/// }
/// tx.append("order-1", ExpectedVersion::NoStream, std::slice::from_ref(&placed))
///     .await?;
/// tx.enqueue(&[placed]).await?;
/// tx.commit().await?; // the order row, the event and the outbox entry, or none of them
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SqliteTransaction {
    writer: Writer,
    inner: Arc<Inner>,
    /// Whether the commit bumps the commit signal: events were appended or enqueued.
    wrote_events: bool,
}

impl SqliteTransaction {
    /// The connection inside this transaction, for the application's own statements, which
    /// commit or roll back with the unit of work. Do not run `COMMIT`, `ROLLBACK` or `BEGIN`
    /// on it; savepoints are fine.
    ///
    /// The statements run on the calling task and should be short: the transaction holds
    /// the database's only write lock.
    pub fn connection(&self) -> &Connection {
        &self.writer.0
    }

    fn fail(&self, what: &str, error: rusqlite::Error) -> Error {
        self.inner.fail(what, error)
    }

    /// Runs one statement without parameters, prepared once per connection.
    fn statement(&self, sql: &str, what: &str) -> Result<(), Error> {
        self.writer
            .0
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map(drop)
            .map_err(|e| self.fail(what, e))
    }
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
    ) -> Result<u64, Error> {
        let current =
            stream_version(&self.writer.0, stream).map_err(|e| self.fail("reading a stream's version", e))?;
        expected.check(stream, current)?;
        if events.is_empty() {
            return Ok(current);
        }
        // The version check above holds the write lock, so the unique index can only fire
        // if something else wrote the stream; the savepoint keeps the append all or nothing.
        let connection: &mut Connection = &mut self.writer.0;
        let savepoint = connection
            .savepoint()
            .map_err(|e| self.inner.fail("appending events", e))?;
        let inserted = insert_events(&savepoint, stream, current, events);
        match inserted {
            Ok(()) => {
                savepoint
                    .commit()
                    .map_err(|e| self.inner.fail("appending events", e))?;
                self.wrote_events = true;
            }
            Err(StepError::Sqlite(error))
                if error.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) =>
            {
                drop(savepoint);
                let actual = stream_version(&self.writer.0, stream)
                    .map_err(|e| self.fail("reading a stream's version", e))?;
                return Err(Error::Conflict {
                    stream: stream.to_owned(),
                    expected,
                    actual,
                });
            }
            Err(error) => {
                drop(savepoint);
                return Err(self.inner.fail_any("appending events", error));
            }
        }
        Ok(current + events.len() as u64)
    }

    async fn enqueue(&mut self, events: &[Envelope]) -> Result<(), Error> {
        let enqueue = || -> Result<(), StepError> {
            let mut insert = self.writer.0.prepare_cached(INSERT_OUTBOX)?;
            for envelope in events {
                insert.execute(params_from_iter(envelope_params(envelope)?))?;
            }
            Ok(())
        };
        enqueue().map_err(|e| self.inner.fail_any("enqueueing outbox entries", e))?;
        self.wrote_events |= !events.is_empty();
        Ok(())
    }

    async fn mark_processed(&mut self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        insert_marker(&self.writer.0, group, event_id)
            .map_err(|e| self.fail("recording a processed event", e))
    }

    async fn save_checkpoint(
        &mut self,
        name: &str,
        previous: Option<&str>,
        value: &str,
    ) -> Result<(), Error> {
        checkpoints::save_if(&self.writer.0, name, previous, value)
            .map_err(|e| self.fail("saving a checkpoint", e))?
    }

    async fn savepoint(&mut self) -> Result<bool, Error> {
        self.statement("SAVEPOINT eventflow", "opening a savepoint")?;
        Ok(true)
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), Error> {
        self.statement("ROLLBACK TO eventflow", "rolling back to a savepoint")?;
        self.statement("RELEASE eventflow", "closing a savepoint")
    }

    async fn release_savepoint(&mut self) -> Result<(), Error> {
        self.statement("RELEASE eventflow", "closing a savepoint")
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let SqliteTransaction {
            writer,
            inner,
            wrote_events,
        } = *self;
        let store = inner.clone();
        run_blocking(move || {
            // On failure `writer` is dropped here, which rolls the transaction back.
            writer
                .0
                .execute_batch("COMMIT")
                .map_err(|e| store.fail("committing a unit of work", e))
        })
        .await?;
        if wrote_events {
            inner.commits.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}

/// An error from a step that fails either in SQLite or in converting an envelope.
enum StepError {
    Sqlite(rusqlite::Error),
    Other(Error),
}

impl From<rusqlite::Error> for StepError {
    fn from(error: rusqlite::Error) -> Self {
        StepError::Sqlite(error)
    }
}

impl From<Error> for StepError {
    fn from(error: Error) -> Self {
        StepError::Other(error)
    }
}

impl Inner {
    fn fail_any(&self, what: &str, error: StepError) -> Error {
        match error {
            StepError::Sqlite(error) => self.fail(what, error),
            StepError::Other(error) => error,
        }
    }
}

fn stream_version(connection: &Connection, stream: &str) -> rusqlite::Result<u64> {
    let version: i64 = connection
        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?1")?
        .query_row([stream], |row| row.get(0))?;
    Ok(version as u64)
}

fn insert_events(
    connection: &Connection,
    stream: &str,
    current: u64,
    events: &[Envelope],
) -> Result<(), StepError> {
    let mut insert = connection.prepare_cached(INSERT_EVENT)?;
    for (version, envelope) in (current + 1..).zip(events) {
        let leading = [ToSqlOutput::from(stream), ToSqlOutput::from(sql_int(version))];
        let envelope = envelope_params(envelope)?;
        insert.execute(params_from_iter(leading.into_iter().chain(envelope)))?;
    }
    Ok(())
}

fn insert_marker(connection: &Connection, group: &str, event_id: Uuid) -> rusqlite::Result<bool> {
    let inserted = connection.prepare_cached(MARK_PROCESSED)?.execute(params![
        group,
        &event_id.as_bytes()[..],
        nanos(SystemTime::now()).unwrap_or(i64::MAX)
    ])?;
    Ok(inserted == 1)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<StoredEvent>, Error> {
        let stream = stream.to_owned();
        self.read("reading a stream", move |connection| {
            let sql = format!("{SELECT_EVENTS} WHERE stream = ?1 AND version >= ?2 ORDER BY version");
            let mut select = connection.prepare_cached(&sql)?;
            let rows = select.query_map(params![stream, sql_int(from_version)], stored_event)?;
            rows.collect()
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, Error> {
        self.read("reading all events", move |connection| {
            let sql = format!("{SELECT_EVENTS} WHERE position > ?1 ORDER BY position LIMIT ?2");
            let mut select = connection.prepare_cached(&sql)?;
            let rows = select.query_map(params![sql_int(after), sql_int(limit as u64)], stored_event)?;
            rows.collect()
        })
        .await
    }

    async fn head_position(&self) -> Result<Option<u64>, Error> {
        self.read("reading the newest event's position", |connection| {
            let head: i64 = connection
                .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")?
                .query_row([], |row| row.get(0))?;
            Ok(Some(head as u64))
        })
        .await
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim_outbox(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let relay = relay.to_owned();
        let inner = self.inner.clone();
        self.write("claiming the outbox", move |connection| {
            let claim = || -> rusqlite::Result<Vec<OutboxEntry>> {
                // Wall-clock time, because the relays sharing the lease may be in other
                // processes.
                let now = nanos(SystemTime::now()).unwrap_or(i64::MAX);
                let holder: Option<(String, i64)> = connection
                    .prepare_cached("SELECT holder, expires_at FROM outbox_lease WHERE id = 1")?
                    .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                if let Some((holder, expires_at)) = holder.filter(|(holder, _)| *holder != relay) {
                    if expires_at > now {
                        if !super::relay_is_gone(&holder) {
                            return Ok(Vec::new());
                        }
                        tracing::info!(%relay, previous = %holder,
                            "taking the outbox lease over before it expires: the relay holding it ran on this host and its process is gone");
                    }
                }
                let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
                connection
                    .prepare_cached(
                        "INSERT OR REPLACE INTO outbox_lease (id, holder, expires_at) VALUES (1, ?1, ?2)",
                    )?
                    .execute(params![relay, now.saturating_add(lease)])?;
                let mut select = connection.prepare_cached(CLAIM_OUTBOX)?;
                let rows = select.query_map([sql_int(after), sql_int(limit as u64)], |row| {
                    let sequence = row.get::<_, i64>(0)? as u64;
                    Ok(match envelope_from_row(row, 1) {
                        Ok(envelope) => OutboxEntry::new(sequence, envelope),
                        // One unreadable row must not stop the relay: it is handed over
                        // as corrupt, for the relay to dead-letter.
                        Err(error) => OutboxEntry {
                            sequence,
                            envelope: salvage_envelope(row, 1),
                            corrupt: Some(format!("outbox entry {sequence} cannot be read: {error}")),
                        },
                    })
                })?;
                rows.collect()
            };
            claim().map_err(|e| inner.fail("claiming the outbox", e))
        })
        .await
    }

    async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error> {
        let relay = relay.to_owned();
        let sequences = sequences.to_vec();
        let inner = self.inner.clone();
        self.write("marking outbox entries delivered", move |connection| {
            let mark = || -> rusqlite::Result<Option<String>> {
                let holder: Option<String> = connection
                    .prepare_cached("SELECT holder FROM outbox_lease WHERE id = 1")?
                    .query_row([], |row| row.get(0))
                    .optional()?;
                if holder.as_ref().is_some_and(|holder| *holder != relay) {
                    return Ok(holder);
                }
                let mut delete = connection.prepare_cached("DELETE FROM outbox WHERE sequence = ?1")?;
                for &sequence in &sequences {
                    delete.execute([sql_int(sequence)])?;
                }
                Ok(None)
            };
            match mark().map_err(|e| inner.fail("marking outbox entries delivered", e))? {
                None => Ok(()),
                Some(holder) => Err(Error::backend(format!(
                    "relay `{relay}` lost the outbox lease to `{holder}` before marking entries \
                     delivered; they will be delivered again, so keep batches short enough to \
                     deliver within the lease or lengthen the lease"
                ))),
            }
        })
        .await
    }

    async fn release_outbox(&self, relay: &str) -> Result<(), Error> {
        let relay = relay.to_owned();
        let inner = self.inner.clone();
        self.write("releasing the outbox lease", move |connection| {
            connection
                .execute("DELETE FROM outbox_lease WHERE id = 1 AND holder = ?1", [relay])
                .map_err(|e| inner.fail("releasing the outbox lease", e))?;
            Ok(())
        })
        .await
    }

    async fn outbox_lease(&self) -> Result<Option<OutboxLease>, Error> {
        self.read("reading the outbox lease", move |connection| {
            connection
                .prepare_cached("SELECT holder, expires_at FROM outbox_lease WHERE id = 1")?
                .query_row([], |row| {
                    let expires_at: i64 = row.get(1)?;
                    Ok(OutboxLease {
                        holder: row.get(0)?,
                        expires_at: UNIX_EPOCH + Duration::from_nanos(expires_at.max(0) as u64),
                    })
                })
                .optional()
        })
        .await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }
}

#[async_trait]
impl InboxStore for SqliteStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        let group = group.to_owned();
        self.read("reading the inbox", move |connection| {
            connection
                .prepare_cached("SELECT 1 FROM inbox WHERE group_name = ?1 AND event_id = ?2")?
                .query_row(params![group, &event_id.as_bytes()[..]], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
        })
        .await
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        let group = group.to_owned();
        let inner = self.inner.clone();
        self.write("recording a processed event", move |connection| {
            insert_marker(connection, &group, event_id)
                .map_err(|e| inner.fail("recording a processed event", e))
        })
        .await
    }

    async fn processed(&self, group: &str, event_ids: &[Uuid]) -> Result<HashSet<Uuid>, Error> {
        let group = group.to_owned();
        let ids = event_ids.to_vec();
        self.read("reading the inbox", move |connection| {
            let mut processed = HashSet::new();
            // SQLite allows 32766 parameters; chunks of 500 keep the statements cacheable.
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT event_id FROM inbox WHERE group_name = ? AND event_id IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let mut select = connection.prepare_cached(&sql)?;
                let ids = chunk.iter().map(|id| ToSqlOutput::from(&id.as_bytes()[..]));
                let leading = std::iter::once(ToSqlOutput::from(group.as_str()));
                let mut rows = select.query(params_from_iter(leading.chain(ids)))?;
                while let Some(row) = rows.next()? {
                    if let Ok(id) = Uuid::from_slice(row.get_ref(0)?.as_blob()?) {
                        processed.insert(id);
                    }
                }
            }
            Ok(processed)
        })
        .await
    }

    async fn mark_all_processed(&self, group: &str, event_ids: &[Uuid]) -> Result<(), Error> {
        let group = group.to_owned();
        let ids = event_ids.to_vec();
        let inner = self.inner.clone();
        self.write("recording processed events", move |connection| {
            for id in ids {
                insert_marker(connection, &group, id)
                    .map_err(|e| inner.fail("recording processed events", e))?;
            }
            Ok(())
        })
        .await
    }

    /// Deletes in transactions of 2,000 markers, so writers wait at most one
    /// of them. The inbox has no index on `processed_at` (it would cost every marker a
    /// second B-tree insert); each chunk scans from the oldest keys, where old markers of
    /// time-ordered (UUID v7) ids are.
    async fn prune_inbox(&self, before: SystemTime) -> Result<u64, Error> {
        let before = nanos(before).unwrap_or(i64::MAX);
        let mut pruned = 0;
        loop {
            let inner = self.inner.clone();
            let deleted = self
                .write("pruning the inbox", move |connection| {
                    connection
                        .prepare_cached(PRUNE_INBOX)
                        .and_then(|mut delete| delete.execute(params![before, PRUNE_CHUNK as i64]))
                        .map_err(|e| inner.fail("pruning the inbox", e))
                })
                .await?;
            pruned += deleted as u64;
            if deleted < PRUNE_CHUNK {
                return Ok(pruned);
            }
        }
    }
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, Error> {
        let name = name.to_owned();
        self.read("reading a checkpoint", move |connection| {
            connection
                .prepare_cached("SELECT value FROM checkpoints WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn save_checkpoint(&self, name: &str, value: &str) -> Result<(), Error> {
        let (name, value) = (name.to_owned(), value.to_owned());
        let inner = self.inner.clone();
        self.write("saving a checkpoint", move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO checkpoints (name, value) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut upsert| upsert.execute([name, value]))
                .map_err(|e| inner.fail("saving a checkpoint", e))?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Storage for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>, Error> {
        let writer = self.lock_writer().await?;
        let inner = self.inner.clone();
        let writer = run_blocking(move || {
            writer.begin(&inner)?;
            Ok(writer)
        })
        .await?;
        Ok(Box::new(SqliteTransaction {
            writer,
            inner: self.inner.clone(),
            wrote_events: false,
        }))
    }

    fn snapshots(&self) -> Option<&dyn SnapshotStore> {
        Some(self)
    }
}

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn put(&self, letter: DeadLetter) -> Result<(), Error> {
        let inner = self.inner.clone();
        self.write("storing a dead letter", move |connection| {
            let put = || -> Result<(), StepError> {
                let leading = [
                    ToSqlOutput::from(&letter.id.as_bytes()[..]),
                    ToSqlOutput::from(letter.group.as_str()),
                    ToSqlOutput::from(letter.error.as_str()),
                    ToSqlOutput::from(letter.attempts),
                    ToSqlOutput::from(nanos(letter.failed_at)?),
                ];
                let envelope = envelope_params(&letter.envelope)?;
                connection
                    .prepare_cached(PUT_DEAD_LETTER)?
                    .execute(params_from_iter(leading.into_iter().chain(envelope)))?;
                Ok(())
            };
            put().map_err(|e| inner.fail_any("storing a dead letter", e))
        })
        .await
    }

    async fn list(&self, group: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        let group = group.map(str::to_owned);
        self.read("listing dead letters", move |connection| {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
                 WHERE ?1 IS NULL OR group_name = ?1 ORDER BY seq"
            );
            let mut select = connection.prepare_cached(&sql)?;
            let rows = select.query_map([group], dead_letter)?;
            rows.collect()
        })
        .await
    }

    async fn take(&self, id: Uuid) -> Result<Option<DeadLetter>, Error> {
        let inner = self.inner.clone();
        self.write("taking a dead letter", move |connection| {
            let sql = format!("DELETE FROM dead_letters WHERE id = ?1 RETURNING {DEAD_LETTER_COLUMNS}");
            connection
                .prepare_cached(&sql)
                .and_then(|mut delete| delete.query_row([&id.as_bytes()[..]], dead_letter).optional())
                .map_err(|e| inner.fail("taking a dead letter", e))
        })
        .await
    }

    async fn purge(&self, group: &str) -> Result<u64, Error> {
        let (inner, group) = (self.inner.clone(), group.to_owned());
        self.write("purging dead letters", move |connection| {
            connection
                .execute("DELETE FROM dead_letters WHERE group_name = ?1", [&group])
                .map(|deleted| deleted as u64)
                .map_err(|e| inner.fail("purging dead letters", e))
        })
        .await
    }

    async fn counts(&self) -> Result<std::collections::BTreeMap<String, u64>, Error> {
        self.read("counting dead letters", move |connection| {
            let mut select = connection
                .prepare_cached("SELECT group_name, COUNT(*) FROM dead_letters GROUP BY group_name")?;
            let rows = select.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
        .await
    }

    async fn blocked_keys(&self, group: &str) -> Result<HashMap<String, Uuid>, Error> {
        let group = group.to_owned();
        self.read("reading the keys of dead letters", move |connection| {
            let mut select = connection.prepare_cached(
                "SELECT partition_key, id FROM dead_letters \
                 WHERE group_name = ?1 AND partition_key IS NOT NULL ORDER BY seq",
            )?;
            let mut keys = HashMap::new();
            let rows = select.query_map([&group], |row| {
                let id = row.get_ref(1)?.as_blob()?;
                let id = Uuid::from_slice(id)
                    .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, Type::Blob, Box::new(e)))?;
                Ok((row.get::<_, String>(0)?, id))
            })?;
            for row in rows {
                let (key, id) = row?;
                keys.entry(key).or_insert(id);
            }
            Ok(keys)
        })
        .await
    }
}

/// An envelope as the parameters of `envelope_sql!(columns)`, borrowing its strings and
/// bytes.
fn envelope_params(envelope: &Envelope) -> Result<[ToSqlOutput<'_>; 11], Error> {
    let headers = serde_json::to_string(&envelope.headers).map_err(|e| {
        Error::backend(format!(
            "could not encode the headers of event {}: {e}",
            envelope.id
        ))
    })?;
    Ok([
        ToSqlOutput::from(&envelope.id.as_bytes()[..]),
        ToSqlOutput::from(&*envelope.name),
        ToSqlOutput::from(envelope.version),
        ToSqlOutput::from(&*envelope.topic),
        envelope
            .key
            .as_deref()
            .map_or(ToSqlOutput::Owned(Value::Null), ToSqlOutput::from),
        ToSqlOutput::from(nanos(envelope.timestamp)?),
        ToSqlOutput::from(&envelope.correlation_id.as_bytes()[..]),
        envelope
            .causation_id
            .as_ref()
            .map_or(ToSqlOutput::Owned(Value::Null), |id| {
                ToSqlOutput::from(&id.as_bytes()[..])
            }),
        ToSqlOutput::from(headers),
        ToSqlOutput::from(&*envelope.content_type),
        ToSqlOutput::from(&envelope.payload[..]),
    ])
}

/// Reads the envelope from the columns `envelope_sql!(columns)` starting at `first`.
fn envelope_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Envelope> {
    let uuid = |index: usize| -> rusqlite::Result<Uuid> {
        Uuid::from_slice(row.get_ref(index)?.as_blob()?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Blob, Box::new(e)))
    };
    let headers: String = row.get(first + 8)?;
    let headers = serde_json::from_str(&headers)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(first + 8, Type::Text, Box::new(e)))?;
    Ok(Envelope {
        id: uuid(first)?,
        name: row.get::<_, String>(first + 1)?.into(),
        version: row.get(first + 2)?,
        topic: row.get::<_, String>(first + 3)?.into(),
        key: row.get(first + 4)?,
        timestamp: from_nanos(row.get(first + 5)?),
        correlation_id: uuid(first + 6)?,
        causation_id: match row.get_ref(first + 7)?.as_blob_or_null()? {
            Some(_) => Some(uuid(first + 7)?),
            None => None,
        },
        headers,
        content_type: row.get::<_, String>(first + 9)?.into(),
        payload: row.get::<_, Vec<u8>>(first + 10)?.into(),
    })
}

/// What can be read of an envelope whose row [`envelope_from_row`] rejects: each column
/// that reads as its type, a default for the others, and the payload's raw bytes.
fn salvage_envelope(row: &Row<'_>, first: usize) -> Envelope {
    let text = |index: usize| row.get::<_, String>(first + index).ok();
    let uuid = |index: usize| {
        let value = row.get_ref(first + index).ok()?;
        Uuid::from_slice(value.as_blob().ok()?).ok()
    };
    let payload = match row.get_ref(first + 10) {
        Ok(value) => value.as_bytes().map(<[u8]>::to_vec).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Envelope {
        id: uuid(0).unwrap_or_else(Uuid::nil),
        name: text(1).unwrap_or_default().into(),
        version: row.get(first + 2).unwrap_or(0),
        topic: text(3).unwrap_or_default().into(),
        key: text(4),
        timestamp: row.get(first + 5).map(from_nanos).unwrap_or(UNIX_EPOCH),
        correlation_id: uuid(6).unwrap_or_else(Uuid::nil),
        causation_id: uuid(7),
        headers: text(8)
            .and_then(|headers| serde_json::from_str(&headers).ok())
            .unwrap_or_default(),
        content_type: text(9).unwrap_or_default().into(),
        payload: payload.into(),
    }
}

fn stored_event(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        position: row.get::<_, i64>(0)? as u64,
        stream: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        envelope: envelope_from_row(row, 3)?,
    })
}

fn dead_letter(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    let id = row.get_ref(0)?.as_blob()?;
    Ok(DeadLetter {
        id: Uuid::from_slice(id)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Blob, Box::new(e)))?,
        group: row.get(1)?,
        error: row.get(2)?,
        attempts: row.get(3)?,
        failed_at: from_nanos(row.get(4)?),
        envelope: envelope_from_row(row, 5)?,
    })
}

/// Nanoseconds since the Unix epoch, negative before it: exact for `SystemTime` on Linux,
/// so an envelope reads back equal to what was written.
fn nanos(time: SystemTime) -> Result<i64, Error> {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()),
        Err(before) => i64::try_from(before.duration().as_nanos()).map(|n| -n),
    };
    nanos.map_err(|_| {
        Error::backend(format!(
            "the time {time:?} is outside what SQLite stores (years 1678 to 2262); check the clock \
             or the timestamps set on envelopes"
        ))
    })
}

fn from_nanos(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// A count or position as an SQLite integer, saturating (SQLite integers are signed).
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs blocking SQLite work on tokio's blocking pool.
async fn run_blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(Error::backend(
            "the tokio runtime shut down while SQLite work was pending; keep the runtime alive \
             until the event bus has shut down",
        )),
    }
}
