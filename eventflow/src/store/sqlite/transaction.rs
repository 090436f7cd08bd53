//! [`SqliteTransaction`]: a unit of work holding the writer connection from `BEGIN IMMEDIATE`
//! to `COMMIT`.

use std::time::SystemTime;

use async_trait::async_trait;
use rusqlite::types::ToSqlOutput;
use rusqlite::{params, params_from_iter, Connection};
use uuid::Uuid;

use super::rows::{envelope_params, nanos, sql_int};
use super::schema::{INSERT_EVENT, INSERT_OUTBOX, MARK_PROCESSED};
use super::{checkpoints, run_blocking, Inner, SqliteTransaction};
use crate::store::{ExpectedVersion, Transaction};
use crate::{Envelope, Error};

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
pub(super) enum StepError {
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
    pub(super) fn fail_any(&self, what: &str, error: StepError) -> Error {
        match error {
            StepError::Sqlite(error) => self.fail(what, error),
            StepError::Other(error) => error,
        }
    }
}

pub(super) fn stream_version(connection: &Connection, stream: &str) -> rusqlite::Result<u64> {
    let version: i64 = connection
        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?1")?
        .query_row([stream], |row| row.get(0))?;
    Ok(version as u64)
}

pub(super) fn insert_events(
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

/// Records that `group` processed `event_id`; false if it already had.
pub(super) fn insert_marker(connection: &Connection, group: &str, event_id: Uuid) -> rusqlite::Result<bool> {
    Ok(insert_markers(connection, group, &[event_id])? == 1)
}

/// Records that `group` processed each of `event_ids`, with one statement and one
/// timestamp for all of them (a statement-cache lookup and a clock read per marker cost
/// a batch of 256 more than its inserts); returns how many were new.
pub(super) fn insert_markers(
    connection: &Connection,
    group: &str,
    event_ids: &[Uuid],
) -> rusqlite::Result<usize> {
    let mut insert = connection.prepare_cached(MARK_PROCESSED)?;
    let at = nanos(SystemTime::now()).unwrap_or(i64::MAX);
    event_ids
        .iter()
        .map(|id| insert.execute(params![group, &id.as_bytes()[..], at]))
        .sum()
}
