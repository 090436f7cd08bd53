//! Checkpoints saved inside a unit of work on SQLite, for projections.

use rusqlite::{Connection, OptionalExtension};

use crate::Error;

/// Saves checkpoint `name` as `value` if it is `previous`, in the open transaction: the
/// transaction holds the write lock, so no other writer can move it between the read and
/// the write. The outer error is SQLite's, the inner one the moved checkpoint.
pub(super) fn save_if(
    connection: &Connection,
    name: &str,
    previous: Option<&str>,
    value: &str,
) -> rusqlite::Result<Result<(), Error>> {
    let current: Option<String> = connection
        .prepare_cached("SELECT value FROM checkpoints WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()?;
    if current.as_deref() != previous {
        return Ok(Err(Error::CheckpointMoved {
            name: name.to_owned(),
            expected: previous.map(str::to_owned),
            actual: current,
        }));
    }
    connection
        .prepare_cached(
            "INSERT INTO checkpoints (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?
        .execute([name, value])?;
    Ok(Ok(()))
}
