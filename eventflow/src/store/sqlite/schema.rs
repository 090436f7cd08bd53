//! The SQLite schema: the tables, the statements on them, and creating both when a store
//! opens a file.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::Error;

/// The schema this version of eventflow creates, kept in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// The envelope's columns, shared by `events`, `outbox` and `dead_letters` and always last
/// in their statements, so [`envelope_params`](super::rows::envelope_params) and
/// [`envelope_from_row`](super::rows::envelope_from_row) serve all three.
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

pub(super) const SCHEMA: &str = concat!(
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

pub(super) const INSERT_EVENT: &str = concat!(
    "INSERT INTO events (stream, version, ",
    envelope_sql!(columns),
    ") VALUES (?, ?, ",
    envelope_sql!(placeholders),
    ")"
);
pub(super) const SELECT_EVENTS: &str = concat!(
    "SELECT position, stream, version, ",
    envelope_sql!(columns),
    " FROM events"
);
pub(super) const INSERT_OUTBOX: &str = concat!(
    "INSERT INTO outbox (",
    envelope_sql!(columns),
    ") VALUES (",
    envelope_sql!(placeholders),
    ")"
);
pub(super) const CLAIM_OUTBOX: &str = concat!(
    "SELECT sequence, ",
    envelope_sql!(columns),
    " FROM outbox WHERE sequence > ?1 ORDER BY sequence LIMIT ?2"
);
/// Inbox markers deleted per transaction when pruning.
pub(super) const PRUNE_CHUNK: usize = 2_000;
pub(super) const PRUNE_INBOX: &str = "DELETE FROM inbox WHERE (group_name, event_id) IN \
     (SELECT group_name, event_id FROM inbox WHERE processed_at < ?1 LIMIT ?2)";
pub(super) const MARK_PROCESSED: &str =
    "INSERT OR IGNORE INTO inbox (group_name, event_id, processed_at) VALUES (?1, ?2, ?3)";
// Replacing a letter keeps its `seq`, so it keeps its place in the list.
pub(super) const PUT_DEAD_LETTER: &str = concat!(
    "INSERT OR REPLACE INTO dead_letters (seq, id, group_name, error, attempts, failed_at, ",
    envelope_sql!(columns),
    ") VALUES ((SELECT seq FROM dead_letters WHERE id = ?1), ?1, ?2, ?3, ?4, ?5, ",
    envelope_sql!(placeholders),
    ")"
);
pub(super) const DEAD_LETTER_COLUMNS: &str = concat!(
    "id, group_name, error, attempts, failed_at, ",
    envelope_sql!(columns)
);

pub(super) fn configure(connection: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    connection.busy_timeout(busy_timeout)?;
    connection.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// The snapshots table. Created with `IF NOT EXISTS` at every open, so a database file made
/// before snapshots existed gains it.
const SNAPSHOTS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS snapshots (
    stream TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state BLOB NOT NULL
) WITHOUT ROWID;";

pub(super) fn create_schema(connection: &Connection, path: &Path) -> Result<(), Error> {
    let create = || -> rusqlite::Result<Option<i64>> {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            connection.execute_batch("ROLLBACK")?;
            return Ok(Some(version));
        }
        connection.execute_batch(SCHEMA)?;
        // Added after schema version 1 shipped: `IF NOT EXISTS` adds it to older files.
        connection.execute_batch(SNAPSHOTS_SCHEMA)?;
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
