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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
pub use rusqlite;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{watch, OwnedMutexGuard};

mod checkpoints;
mod dead_letters;
mod event_store;
mod inbox;
mod outbox;
mod rows;
mod schema;
mod snapshots;
mod transaction;

use super::{SnapshotStore, Storage, Transaction};
use crate::Error;
use schema::{configure, create_schema};

/// Idle reader connections kept for reuse; more are opened while reads overlap.
const IDLE_READERS: usize = 4;

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
            let hint = match path.is_dir() {
                true => "it is a directory; give the path of a database file (created if missing)",
                false => "check the directory exists and is writable",
            };
            Error::backend(format!(
                "could not open SQLite database at {}: {e}; {hint}",
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

// Defined here, not in `transaction.rs`, so its type name (in the messages that say a
// handler's `Tx<T>` does not match the storage) stays `eventflow::store::sqlite::SqliteTransaction`.
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
