//! Where a capture stands, as saved in its checkpoint: never ran, capturing changes after a
//! resume token, or taking a snapshot that started at one.

use eventflow::Error;
use mongodb::bson::Bson;
use mongodb::change_stream::event::ResumeToken;

/// Where a capture stands, as saved in its checkpoint.
pub(super) enum Position {
    /// Never ran.
    None,
    /// Capturing changes after this token (saved as the token's extended JSON).
    Stream(ResumeToken),
    /// Taking a snapshot that started at this token (saved as `{"snapshot": token}`).
    Snapshot(ResumeToken),
}

/// Reads a saved position.
pub(super) fn parse(saved: &str) -> Result<Position, String> {
    let json: serde_json::Value = serde_json::from_str(saved).map_err(|e| e.to_string())?;
    let token = |json: serde_json::Value| -> Result<ResumeToken, String> {
        let bson = Bson::try_from(json).map_err(|e| e.to_string())?;
        mongodb::bson::from_bson(bson).map_err(|e| e.to_string())
    };
    match json {
        serde_json::Value::Object(mut fields) if fields.contains_key("snapshot") => Ok(Position::Snapshot(
            token(fields.remove("snapshot").unwrap_or_default())?,
        )),
        json => Ok(Position::Stream(token(json)?)),
    }
}

/// The checkpoint value of `position` (what [`parse`] reads); `None` for
/// [`Position::None`], which is never saved.
pub(super) fn format(position: &Position) -> Result<Option<String>, Error> {
    let encode = |token: &ResumeToken| {
        mongodb::bson::to_bson(token)
            .map(Bson::into_relaxed_extjson)
            .map_err(|e| Error::backend(format!("could not encode a resume token: {e}")))
    };
    let value = match position {
        Position::Stream(token) => encode(token)?,
        Position::Snapshot(token) => serde_json::json!({ "snapshot": encode(token)? }),
        Position::None => return Ok(None),
    };
    Ok(Some(value.to_string()))
}
