//! The relay's saved position: a change-stream resume token and the outbox sequence
//! expected after it, in the checkpoint [`OUTBOX_POSITION_CHECKPOINT`].
//!
//! The saved position is a resume token with the sequence expected after it, saved after
//! the entries before it were marked delivered, and meaning: "every entry committed before
//! this token, and every entry below this sequence, is delivered". It is taken at the end
//! of a document, so a relay resuming from it streams the next document whole. It only
//! moves forward. A relay that takes the outbox over resumes the stream from it, and skips
//! what lies below the delivered watermark (see `delivered`). Both are written together, at
//! most once a second while a relay delivers (and when it stops or goes idle), not with
//! every batch; an older one only makes a relay taking over after a crash read a little
//! more of the oplog again and deliver again what was delivered since.

use mongodb::bson::{doc, Bson};
use mongodb::change_stream::event::ResumeToken;

use crate::client::Inner;
use crate::document::{self, int};
use crate::error::is_duplicate_key;

/// The checkpoint holding the outbox relay's saved position: a change-stream resume token
/// and the outbox sequence expected after it, as extended JSON. Saved at most once a
/// second while the relay delivers, and when it stops.
pub const OUTBOX_POSITION_CHECKPOINT: &str = "eventflow.outbox.position";

/// Where a relay stands: the resume token of the last document it reached, and the
/// sequence it expects next.
pub(crate) type Position = (ResumeToken, u64);

/// Saves the relay's position unless a later one is saved already (by a relay that took
/// the lease over).
pub(super) async fn save(inner: &Inner, position: Position) -> Result<(), mongodb::error::Error> {
    let next = int(position.1);
    let saved = inner
        .checkpoints
        .update_one(
            doc! {
                "_id": OUTBOX_POSITION_CHECKPOINT,
                "$or": [ { "next": { "$lt": next.clone() } }, { "next": { "$exists": false } } ],
            },
            doc! { "$set": { "value": format(&position), "next": next } },
        )
        .upsert(true)
        .await;
    match saved {
        Err(error) if is_duplicate_key(&error) => Ok(()),
        other => other.map(drop),
    }
}

/// A resume token and a sequence as extended JSON, for a checkpoint.
fn format((token, next): &Position) -> String {
    let token = mongodb::bson::to_bson(token).unwrap_or(Bson::Null);
    Bson::Document(doc! { "token": token, "next": int(*next) })
        .into_relaxed_extjson()
        .to_string()
}

/// Reads what [`format`] wrote.
pub(super) fn parse(saved: &str) -> Result<Position, String> {
    let json: serde_json::Value = serde_json::from_str(saved).map_err(|e| e.to_string())?;
    let Bson::Document(doc) = Bson::try_from(json).map_err(|e| e.to_string())? else {
        return Err("not a document".into());
    };
    let token = doc.get("token").cloned().ok_or("`token` is missing")?;
    let token: ResumeToken = mongodb::bson::from_bson(token).map_err(|e| e.to_string())?;
    Ok((token, document::get_u64(&doc, "next")?))
}
