//! The AMQP message an [`Envelope`] travels in, and reading it back.
//!
//! # Wire format
//!
//! The body is the codec's bytes. The metadata goes where AMQP tools look for it:
//!
//! | envelope | AMQP |
//! |---|---|
//! | id | property `message-id`, the UUID in its hyphenated form |
//! | name | property `type` |
//! | content type | property `content-type` |
//! | correlation id | property `correlation-id` |
//! | timestamp | property `timestamp` (seconds), and header [`TIMESTAMP`] in nanoseconds |
//! | version | header [`VERSION`], an integer |
//! | partition key | header [`KEY`] (the routing key is the queue number the key picked) |
//! | causation id | header [`CAUSATION_ID`], when there is one |
//! | free-form headers (`traceparent`, ...) | headers of the same name, as strings |
//!
//! Messages are persistent (`delivery-mode` 2). A producer in another language publishes
//! an eventflow event by setting `message-id`, `type`, `content-type` and the [`VERSION`]
//! header; a message without them is not an eventflow event, and the group that receives
//! it dead-letters it with the reason in [`ERROR`].
//!
//! A dead-letter message keeps the event's properties and headers and adds [`ERROR`],
//! [`ATTEMPTS`], [`GROUP`], [`ORIGIN_TOPIC`], [`ORIGIN_QUEUE`] and [`FAILED_AT`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use eventflow::{DeadLetter, Envelope};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use uuid::Uuid;

/// Header: the payload schema version, an integer.
pub const VERSION: &str = "eventflow-version";
/// Header: when the event was created, in nanoseconds since the Unix epoch (the
/// `timestamp` property has only seconds).
pub const TIMESTAMP: &str = "eventflow-timestamp";
/// Header: the event's partition key.
pub const KEY: &str = "eventflow-key";
/// Header: the id of the event whose handler published this one.
pub const CAUSATION_ID: &str = "eventflow-causation-id";

/// Dead letters: why the group gave up.
pub const ERROR: &str = "eventflow-error";
/// Dead letters: how many times the handler ran (0: not an eventflow event).
pub const ATTEMPTS: &str = "eventflow-attempts";
/// Dead letters: the group that gave up.
pub const GROUP: &str = "eventflow-group";
/// Dead letters: the eventflow topic the message was published to.
pub const ORIGIN_TOPIC: &str = "eventflow-origin-topic";
/// Dead letters: the queue the message was read from, when known.
pub const ORIGIN_QUEUE: &str = "eventflow-origin-queue";
/// Dead letters: when the group gave up, in milliseconds since the Unix epoch.
pub const FAILED_AT: &str = "eventflow-failed-at";

const RESERVED: [&str; 4] = [VERSION, TIMESTAMP, KEY, CAUSATION_ID];

/// AMQP's persistent delivery mode.
const PERSISTENT: u8 = 2;

pub(crate) fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The properties and headers carrying `envelope`'s metadata.
pub(crate) fn encode(envelope: &Envelope) -> BasicProperties {
    let since = since_epoch(envelope.timestamp);
    let mut headers = BTreeMap::new();
    headers.insert(ShortString::from(VERSION), AMQPValue::LongUInt(envelope.version));
    headers.insert(
        ShortString::from(TIMESTAMP),
        AMQPValue::LongLongInt(since.as_nanos().min(i64::MAX as u128) as i64),
    );
    if let Some(key) = &envelope.key {
        headers.insert(ShortString::from(KEY), text(key));
    }
    if let Some(cause) = envelope.causation_id {
        headers.insert(ShortString::from(CAUSATION_ID), text(&cause.to_string()));
    }
    for (name, value) in &envelope.headers {
        headers.insert(ShortString::from(name), text(value));
    }
    BasicProperties::default()
        .with_message_id(envelope.id.to_string().into())
        .with_type(ShortString::from(&*envelope.name))
        .with_content_type(ShortString::from(&*envelope.content_type))
        .with_correlation_id(envelope.correlation_id.to_string().into())
        .with_timestamp(since.as_secs())
        .with_delivery_mode(PERSISTENT)
        .with_headers(FieldTable::from(headers))
}

/// The text of a header value written as a string (or, from other producers, a number).
fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => header_number(other).map(|n| n.to_string()),
    }
}

fn header_number(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    })
}

/// Reads the envelope of a message received from `topic`, or says why it is not an
/// eventflow event.
pub(crate) fn decode(properties: &BasicProperties, topic: &str, payload: Bytes) -> Result<Envelope, String> {
    let id = properties
        .message_id()
        .as_ref()
        .ok_or("no `message-id` property: not an eventflow event")?;
    let id = Uuid::parse_str(id.as_str())
        .map_err(|e| format!("the `message-id` property `{id}` is not a UUID ({e})"))?;
    let name = properties
        .kind()
        .as_ref()
        .ok_or("no `type` property (the event name): not an eventflow event")?
        .as_str()
        .to_owned();
    let content_type = properties
        .content_type()
        .as_ref()
        .ok_or("no `content-type` property: not an eventflow event")?
        .as_str()
        .to_owned();
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty).inner();
    let version = headers
        .get(VERSION)
        .ok_or(format!("no `{VERSION}` header: not an eventflow event"))?;
    let version = header_number(version)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(format!(
            "the `{VERSION}` header is not a version number: {version:?}"
        ))?;
    let mut envelope = Envelope::new(name, version, topic.to_owned(), content_type, payload);
    envelope.id = id;
    envelope.correlation_id = match properties.correlation_id() {
        Some(correlation) => Uuid::parse_str(correlation.as_str())
            .map_err(|e| format!("the `correlation-id` property `{correlation}` is not a UUID ({e})"))?,
        None => id,
    };
    envelope.timestamp = match (
        headers.get(TIMESTAMP).and_then(header_number),
        properties.timestamp(),
    ) {
        (Some(nanos), _) if nanos >= 0 => {
            UNIX_EPOCH + Duration::from_nanos(nanos.min(u64::MAX.into()) as u64)
        }
        (_, Some(seconds)) => UNIX_EPOCH + Duration::from_secs(*seconds),
        _ => SystemTime::now(),
    };
    envelope.key = headers.get(KEY).and_then(header_text);
    envelope.causation_id = match headers.get(CAUSATION_ID).and_then(header_text) {
        Some(cause) => Some(
            Uuid::parse_str(&cause)
                .map_err(|e| format!("the `{CAUSATION_ID}` header `{cause}` is not a UUID ({e})"))?,
        ),
        None => None,
    };
    // Replaces the fresh trace `Envelope::new` started with the message's own headers.
    envelope.headers = headers
        .iter()
        .filter(|(name, _)| !RESERVED.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), header_text(value)?)))
        .collect();
    Ok(envelope)
}

/// Where a dead letter came from, for its headers.
pub(crate) struct Origin<'a> {
    pub(crate) group: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) queue: Option<&'a str>,
    pub(crate) error: &'a str,
    pub(crate) attempts: u32,
    pub(crate) failed_at: SystemTime,
}

/// Adds the dead-letter headers of `origin` to `properties`.
pub(crate) fn with_dead_letter_headers(properties: BasicProperties, origin: &Origin<'_>) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ERROR.into(), text(origin.error));
    headers.insert(ATTEMPTS.into(), AMQPValue::LongUInt(origin.attempts));
    headers.insert(GROUP.into(), text(origin.group));
    headers.insert(ORIGIN_TOPIC.into(), text(origin.topic));
    if let Some(queue) = origin.queue {
        headers.insert(ORIGIN_QUEUE.into(), text(queue));
    }
    let failed_at = since_epoch(origin.failed_at).as_millis().min(i64::MAX as u128) as i64;
    headers.insert(FAILED_AT.into(), AMQPValue::LongLongInt(failed_at));
    properties.with_headers(headers).with_delivery_mode(PERSISTENT)
}

/// The properties of `letter`'s dead-letter message.
pub(crate) fn encode_dead_letter(letter: &DeadLetter) -> BasicProperties {
    let origin = Origin {
        group: &letter.group,
        topic: &letter.envelope.topic,
        queue: None,
        error: &letter.error,
        attempts: letter.attempts,
        failed_at: letter.failed_at,
    };
    with_dead_letter_headers(encode(&letter.envelope), &origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_survives_the_trip_through_amqp_properties() {
        let mut sent = Envelope::new("order.paid", 3, "orders", "application/json", &b"{}"[..]);
        sent.key = Some("order-7".into());
        sent.causation_id = Some(Uuid::now_v7());
        sent.correlation_id = Uuid::now_v7();
        sent.headers.insert("tenant", "acme");
        let properties = encode(&sent);
        assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
        assert_eq!(properties.kind().as_ref().map(|k| k.as_str()), Some("order.paid"));
        let received = decode(&properties, "orders", Bytes::from_static(b"{}")).expect("an eventflow event");
        assert_eq!(received.id, sent.id);
        assert_eq!(received.name, sent.name);
        assert_eq!(received.version, 3);
        assert_eq!(received.key, sent.key);
        assert_eq!(received.correlation_id, sent.correlation_id);
        assert_eq!(received.causation_id, sent.causation_id);
        assert_eq!(received.timestamp, sent.timestamp);
        assert_eq!(received.content_type, "application/json");
        assert_eq!(
            received.headers, sent.headers,
            "traceparent and free-form headers"
        );
        assert_eq!(&received.payload[..], b"{}");
    }

    #[test]
    fn a_message_without_eventflow_metadata_is_refused_with_the_reason() {
        let bare = BasicProperties::default();
        let reason = decode(&bare, "orders", Bytes::from_static(b"hello")).unwrap_err();
        assert!(reason.contains("message-id"), "{reason}");
        let no_version = BasicProperties::default()
            .with_message_id(Uuid::now_v7().to_string().into())
            .with_type("order.paid".into())
            .with_content_type("application/json".into());
        let reason = decode(&no_version, "orders", Bytes::new()).unwrap_err();
        assert!(reason.contains(VERSION), "{reason}");
        let bad_id = BasicProperties::default().with_message_id("42".into());
        let reason = decode(&bad_id, "orders", Bytes::new()).unwrap_err();
        assert!(reason.contains("not a UUID"), "{reason}");
    }
}
