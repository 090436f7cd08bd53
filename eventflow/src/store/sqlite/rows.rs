//! Envelopes, events and dead letters to and from SQLite rows and parameters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{ToSqlOutput, Type, Value};
use rusqlite::Row;
use uuid::Uuid;

use crate::dead_letter::DeadLetter;
use crate::store::StoredEvent;
use crate::{Envelope, Error};

/// An envelope as the parameters of `envelope_sql!(columns)`, borrowing its strings and
/// bytes.
pub(super) fn envelope_params(envelope: &Envelope) -> Result<[ToSqlOutput<'_>; 11], Error> {
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
pub(super) fn envelope_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Envelope> {
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
pub(super) fn salvage_envelope(row: &Row<'_>, first: usize) -> Envelope {
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

pub(super) fn stored_event(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        position: row.get::<_, i64>(0)? as u64,
        stream: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        envelope: envelope_from_row(row, 3)?,
    })
}

pub(super) fn dead_letter(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
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
pub(super) fn nanos(time: SystemTime) -> Result<i64, Error> {
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

pub(super) fn from_nanos(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// A count or position as an SQLite integer, saturating (SQLite integers are signed).
pub(super) fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
