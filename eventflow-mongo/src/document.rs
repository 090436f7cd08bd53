//! Envelopes as BSON documents, and back.
//!
//! Every collection that holds an event (events, outbox, dead letters) stores the envelope's
//! fields at the top level of its document, beside its own fields, so the documents read
//! well in `mongosh` and can be indexed. The mapping is lossless, since the conformance
//! suite compares envelopes with `==`: ids are BSON UUIDs (binary subtype 4), the timestamp
//! is Int64 nanoseconds since the Unix epoch (a BSON date has only milliseconds), and the
//! payload is binary, byte for byte.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::{Envelope, Error, Headers};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document};
use uuid::Uuid;

/// The field names of an envelope in a document.
pub(crate) mod field {
    pub const EVENT_ID: &str = "event_id";
    pub const NAME: &str = "name";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const TOPIC: &str = "topic";
    pub const KEY: &str = "key";
    pub const CREATED_AT: &str = "created_at";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    pub const HEADERS: &str = "headers";
    pub const CONTENT_TYPE: &str = "content_type";
    pub const PAYLOAD: &str = "payload";
}

/// A UUID as BSON (binary subtype 4).
pub(crate) fn uuid_bson(id: Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: id.as_bytes().to_vec(),
    })
}

/// A count or position as BSON Int64, saturating (BSON integers are signed).
pub(crate) fn int(n: u64) -> Bson {
    Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Adds the envelope's fields to `doc`.
pub(crate) fn put_envelope(doc: &mut Document, envelope: &Envelope) -> Result<(), Error> {
    let headers: Document = envelope
        .headers
        .iter()
        .map(|(k, v)| (k.to_owned(), Bson::String(v.to_owned())))
        .collect();
    doc.insert(field::EVENT_ID, uuid_bson(envelope.id));
    doc.insert(field::NAME, envelope.name.as_ref());
    doc.insert(field::SCHEMA_VERSION, i64::from(envelope.version));
    doc.insert(field::TOPIC, envelope.topic.as_ref());
    doc.insert(field::KEY, envelope.key.as_deref().map_or(Bson::Null, Bson::from));
    doc.insert(field::CREATED_AT, nanos(envelope.timestamp)?);
    doc.insert(field::CORRELATION_ID, uuid_bson(envelope.correlation_id));
    doc.insert(
        field::CAUSATION_ID,
        envelope.causation_id.map_or(Bson::Null, uuid_bson),
    );
    doc.insert(field::HEADERS, headers);
    doc.insert(field::CONTENT_TYPE, envelope.content_type.as_ref());
    doc.insert(
        field::PAYLOAD,
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: envelope.payload.to_vec(),
        }),
    );
    Ok(())
}

/// Reads the envelope stored in `doc`; the error names the first field that is missing or
/// of the wrong type.
pub(crate) fn envelope(doc: &Document) -> Result<Envelope, String> {
    let mut headers = Headers::new();
    for (name, value) in get_doc(doc, field::HEADERS)? {
        match value {
            Bson::String(value) => {
                headers.insert(name.as_str(), value.as_str());
            }
            other => return Err(format!("header `{name}` is {other:?}, not a string")),
        }
    }
    Ok(Envelope {
        id: get_uuid(doc, field::EVENT_ID)?,
        name: get_str(doc, field::NAME)?.to_owned().into(),
        version: u32::try_from(get_int(doc, field::SCHEMA_VERSION)?)
            .map_err(|_| format!("`{}` is out of range", field::SCHEMA_VERSION))?,
        topic: get_str(doc, field::TOPIC)?.to_owned().into(),
        key: match doc.get(field::KEY) {
            None | Some(Bson::Null) => None,
            Some(Bson::String(key)) => Some(key.clone()),
            Some(other) => return Err(format!("`{}` is {other:?}, not a string", field::KEY)),
        },
        timestamp: from_nanos(get_int(doc, field::CREATED_AT)?),
        correlation_id: get_uuid(doc, field::CORRELATION_ID)?,
        causation_id: match doc.get(field::CAUSATION_ID) {
            None | Some(Bson::Null) => None,
            Some(_) => Some(get_uuid(doc, field::CAUSATION_ID)?),
        },
        headers,
        content_type: get_str(doc, field::CONTENT_TYPE)?.to_owned().into(),
        payload: match doc.get(field::PAYLOAD) {
            Some(Bson::Binary(binary)) => binary.bytes.clone().into(),
            // Written by hand, e.g. in mongosh: take the text as it is.
            Some(Bson::String(text)) => text.clone().into_bytes().into(),
            other => return Err(format!("`{}` is {other:?}, not binary", field::PAYLOAD)),
        },
    })
}

/// What can be read of an envelope [`envelope`] rejects: each field that reads as its
/// type, a default for the others.
pub(crate) fn salvage_envelope(doc: &Document) -> Envelope {
    Envelope {
        id: get_uuid(doc, field::EVENT_ID).unwrap_or_else(|_| Uuid::nil()),
        name: get_str(doc, field::NAME).unwrap_or_default().to_owned().into(),
        version: get_int(doc, field::SCHEMA_VERSION)
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        topic: get_str(doc, field::TOPIC).unwrap_or_default().to_owned().into(),
        key: get_str(doc, field::KEY).ok().map(str::to_owned),
        timestamp: get_int(doc, field::CREATED_AT).map_or(UNIX_EPOCH, from_nanos),
        correlation_id: get_uuid(doc, field::CORRELATION_ID).unwrap_or_else(|_| Uuid::nil()),
        causation_id: get_uuid(doc, field::CAUSATION_ID).ok(),
        headers: get_doc(doc, field::HEADERS)
            .map(|headers| {
                headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
        content_type: get_str(doc, field::CONTENT_TYPE)
            .unwrap_or_default()
            .to_owned()
            .into(),
        payload: match doc.get(field::PAYLOAD) {
            Some(Bson::Binary(binary)) => binary.bytes.clone().into(),
            _ => Default::default(),
        },
    }
}

pub(crate) fn get_str<'a>(doc: &'a Document, name: &str) -> Result<&'a str, String> {
    match doc.get(name) {
        Some(Bson::String(s)) => Ok(s),
        Some(other) => Err(format!("`{name}` is {other:?}, not a string")),
        None => Err(format!("`{name}` is missing")),
    }
}

/// An integer field, Int32 or Int64 (hand-written documents often hold Int32).
pub(crate) fn get_int(doc: &Document, name: &str) -> Result<i64, String> {
    match doc.get(name) {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(other) => Err(format!("`{name}` is {other:?}, not an integer")),
        None => Err(format!("`{name}` is missing")),
    }
}

/// A non-negative integer field, such as a position or sequence.
pub(crate) fn get_u64(doc: &Document, name: &str) -> Result<u64, String> {
    let n = get_int(doc, name)?;
    u64::try_from(n).map_err(|_| format!("`{name}` is negative ({n})"))
}

pub(crate) fn get_uuid(doc: &Document, name: &str) -> Result<Uuid, String> {
    match doc.get(name) {
        Some(Bson::Binary(binary)) => {
            Uuid::from_slice(&binary.bytes).map_err(|e| format!("`{name}` is not a UUID: {e}"))
        }
        Some(other) => Err(format!("`{name}` is {other:?}, not a UUID")),
        None => Err(format!("`{name}` is missing")),
    }
}

fn get_doc<'a>(doc: &'a Document, name: &str) -> Result<&'a Document, String> {
    match doc.get(name) {
        Some(Bson::Document(d)) => Ok(d),
        Some(other) => Err(format!("`{name}` is {other:?}, not a document")),
        None => Err(format!("`{name}` is missing")),
    }
}

/// Nanoseconds since the Unix epoch, negative before it: exact for `SystemTime` on Linux,
/// so an envelope reads back equal to what was written.
pub(crate) fn nanos(time: SystemTime) -> Result<i64, Error> {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()),
        Err(before) => i64::try_from(before.duration().as_nanos()).map(|n| -n),
    };
    nanos.map_err(|_| {
        Error::backend(format!(
            "the time {time:?} is outside what eventflow-mongo stores (years 1678 to 2262); check \
             the clock or the timestamps set on envelopes"
        ))
    })
}

pub(crate) fn from_nanos(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// The current time in nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> i64 {
    nanos(SystemTime::now()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_exactly() {
        let cause = Envelope::new("a", 1, "t", "application/json", "{}");
        let mut envelope =
            Envelope::new("order.paid", 3, "orders", "application/json", "{\"n\": 1}").caused_by(&cause);
        envelope.key = Some("order-1".into());
        envelope.headers.insert("tenant", "acme");
        let mut doc = Document::new();
        put_envelope(&mut doc, &envelope).unwrap();
        assert_eq!(super::envelope(&doc).unwrap(), envelope);
    }

    #[test]
    fn a_broken_document_names_the_field() {
        let envelope = Envelope::new("a", 1, "t", "application/json", "{}");
        let mut doc = Document::new();
        put_envelope(&mut doc, &envelope).unwrap();
        doc.insert(field::CREATED_AT, "yesterday");
        let error = super::envelope(&doc).unwrap_err();
        assert!(error.contains("created_at"), "{error}");
        assert_eq!(salvage_envelope(&doc).id, envelope.id);
    }
}
