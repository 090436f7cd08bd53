//! Checkpoints saved inside a unit of work on MongoDB, for projections, and the newest
//! event's position for their progress.

use eventflow::Error;
use mongodb::bson::doc;
use mongodb::ClientSession;

use crate::client::Inner;
use crate::document;
use crate::error::{backend, is_duplicate_key, unreadable};

/// Writes the checkpoints a unit of work saved, in its transaction, each only if it still
/// has the value the unit of work expected. The outer error is the driver's (a write
/// conflict with a concurrent unit of work is transient: the transaction runs again and
/// then finds the moved value), the inner one a checkpoint found moved.
pub(crate) async fn write(
    inner: &Inner,
    session: &mut ClientSession,
    checkpoints: &[(String, Option<String>, String)],
) -> Result<Result<(), Error>, mongodb::error::Error> {
    for (name, previous, value) in checkpoints {
        let saved = match previous {
            Some(previous) => {
                let updated = inner
                    .checkpoints
                    .update_one(
                        doc! { "_id": name, "value": previous },
                        doc! { "$set": { "value": value } },
                    )
                    .session(&mut *session)
                    .await?;
                updated.matched_count == 1
            }
            None => match inner
                .checkpoints
                .insert_one(doc! { "_id": name, "value": value })
                .session(&mut *session)
                .await
            {
                Ok(_) => true,
                Err(error) if is_duplicate_key(&error) => false,
                Err(error) => return Err(error),
            },
        };
        if !saved {
            let found = inner
                .checkpoints
                .find_one(doc! { "_id": name })
                .session(&mut *session)
                .await?;
            let actual = found.and_then(|doc| doc.get_str("value").ok().map(str::to_owned));
            return Ok(Err(Error::CheckpointMoved {
                name: name.clone(),
                expected: previous.clone(),
                actual,
            }));
        }
    }
    Ok(Ok(()))
}

/// The value of checkpoint `name`, as committed.
pub(crate) async fn read(inner: &Inner, name: &str) -> Result<Option<String>, Error> {
    let found = inner
        .checkpoints
        .find_one(doc! { "_id": name })
        .await
        .map_err(|e| backend("reading a checkpoint", e))?;
    found
        .map(|doc| {
            document::get_str(&doc, "value")
                .map(str::to_owned)
                .map_err(|reason| unreadable(&format!("checkpoint `{name}`"), reason))
        })
        .transpose()
}

/// The position of the newest event, 0 if there is none.
pub(crate) async fn head_position(inner: &Inner) -> Result<u64, Error> {
    let newest = inner
        .events
        .find_one(doc! {})
        .sort(doc! { "_id": -1 })
        .projection(doc! { "_id": 1 })
        .await
        .map_err(|e| backend("reading the newest event's position", e))?;
    match newest {
        None => Ok(0),
        Some(newest) => document::get_u64(&newest, "_id")
            .map_err(|reason| unreadable("the newest event's position", reason)),
    }
}
