//! The Kafka headers an [`Envelope`] travels in, and reading them back.
//!
//! Every eventflow message carries its metadata in headers named `eventflow-*` (plus
//! `content-type`); the envelope's free-form headers, such as W3C `traceparent`, are
//! Kafka headers of the same name. The payload is the codec's bytes, the Kafka key is the
//! partition key. A producer in another language publishes eventflow events by setting
//! [`ID`], [`NAME`], [`VERSION`] and [`CONTENT_TYPE`]; the others are optional.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::{DeadLetter, Envelope};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

/// The event id, a UUID. Required.
pub const ID: &str = "eventflow-id";
/// The event name. Required.
pub const NAME: &str = "eventflow-name";
/// The payload schema version, a decimal number. Required.
pub const VERSION: &str = "eventflow-version";
/// The payload's MIME type, e.g. `application/json`. Required.
pub const CONTENT_TYPE: &str = "content-type";
/// The correlation id, a UUID; the event id if absent.
pub const CORRELATION_ID: &str = "eventflow-correlation-id";
/// The causation id, a UUID, for events published by a handler.
pub const CAUSATION_ID: &str = "eventflow-causation-id";
/// When the event was created, in nanoseconds since the Unix epoch; the Kafka timestamp
/// if absent.
pub const TIMESTAMP: &str = "eventflow-timestamp";

/// On a dead-letter topic: why the group gave up.
pub const ERROR: &str = "eventflow-error";
/// On a dead-letter topic: how many times the handler ran (0: the message could not be
/// decoded or is not an eventflow event).
pub const ATTEMPTS: &str = "eventflow-attempts";
/// On a dead-letter topic: the consumer group that gave up.
pub const GROUP: &str = "eventflow-group";
/// On a dead-letter topic: the Kafka topic the message was read from.
pub const ORIGIN_TOPIC: &str = "eventflow-origin-topic";
/// On a dead-letter topic: the partition the message was read from, when known.
pub const ORIGIN_PARTITION: &str = "eventflow-origin-partition";
/// On a dead-letter topic: the offset the message was read from, when known.
pub const ORIGIN_OFFSET: &str = "eventflow-origin-offset";
/// On a dead-letter topic: when the group gave up, in milliseconds since the Unix epoch.
pub const FAILED_AT: &str = "eventflow-failed-at";

const RESERVED: [&str; 7] = [
    ID,
    NAME,
    VERSION,
    CONTENT_TYPE,
    CORRELATION_ID,
    CAUSATION_ID,
    TIMESTAMP,
];

/// The headers carrying `envelope`'s metadata. Formats on the stack: librdkafka copies
/// the values anyway.
pub(crate) fn encode(envelope: &Envelope) -> OwnedHeaders {
    let (mut id, mut correlation, mut causation) = (
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
    );
    let (mut version, mut timestamp) = ([0; 40], [0; 40]);
    let mut headers = OwnedHeaders::new_with_capacity(7 + envelope.headers.len())
        .insert(header(ID, envelope.id.hyphenated().encode_lower(&mut id)))
        .insert(header(NAME, &envelope.name))
        .insert(header(VERSION, decimal(envelope.version.into(), &mut version)))
        .insert(header(CONTENT_TYPE, &envelope.content_type))
        .insert(header(
            CORRELATION_ID,
            envelope
                .correlation_id
                .hyphenated()
                .encode_lower(&mut correlation),
        ))
        .insert(header(
            TIMESTAMP,
            decimal(nanos_since_epoch(envelope.timestamp), &mut timestamp),
        ));
    if let Some(cause) = envelope.causation_id {
        headers = headers.insert(header(
            CAUSATION_ID,
            cause.hyphenated().encode_lower(&mut causation),
        ));
    }
    for (name, value) in &envelope.headers {
        if !RESERVED.contains(&name.as_str()) {
            headers = headers.insert(header(name, value));
        }
    }
    headers
}

/// `n` in decimal, written into `buffer`.
fn decimal(mut n: u128, buffer: &mut [u8; 40]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[start..]).expect("ASCII digits")
}

/// The headers of a dead-lettered event: its own, plus why and where it failed.
pub(crate) fn encode_dead_letter(letter: &DeadLetter, origin_topic: &str) -> OwnedHeaders {
    let failed_at = nanos_since_epoch(letter.failed_at) / 1_000_000;
    encode(&letter.envelope)
        .insert(header(ERROR, &letter.error))
        .insert(header(ATTEMPTS, &letter.attempts.to_string()))
        .insert(header(GROUP, &letter.group))
        .insert(header(ORIGIN_TOPIC, origin_topic))
        .insert(header(FAILED_AT, &failed_at.to_string()))
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Rebuilds an envelope from a Kafka message's parts; the error says what is missing.
pub(crate) fn decode(
    headers: Option<&impl Headers>,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    kafka_timestamp_ms: Option<i64>,
) -> Result<Envelope, String> {
    let Some(headers) = headers else {
        return Err(format!(
            "the message has no headers, so it is not an eventflow event (it needs at least `{ID}`, \
             `{NAME}`, `{VERSION}` and `{CONTENT_TYPE}`); publish it through eventflow or set those headers"
        ));
    };
    let mut id = None;
    let mut name = None;
    let mut version = None;
    let mut content_type = None;
    let mut correlation_id = None;
    let mut causation_id = None;
    let mut timestamp = None;
    let mut free = std::collections::BTreeMap::new();
    for h in headers.iter() {
        let value = h.value.unwrap_or_default();
        let text = || std::str::from_utf8(value).map_err(|_| format!("header `{}` is not UTF-8", h.key));
        let uuid = || {
            text().and_then(|t| {
                Uuid::parse_str(t).map_err(|e| format!("header `{}` is not a UUID ({e}): {t:?}", h.key))
            })
        };
        match h.key {
            ID => id = Some(uuid()?),
            NAME => name = Some(text()?.to_owned()),
            VERSION => {
                let t = text()?;
                version = Some(
                    t.parse::<u32>()
                        .map_err(|_| format!("header `{VERSION}` is not a version number: {t:?}"))?,
                );
            }
            CONTENT_TYPE => content_type = Some(text()?.to_owned()),
            CORRELATION_ID => correlation_id = Some(uuid()?),
            CAUSATION_ID => causation_id = Some(uuid()?),
            TIMESTAMP => {
                let t = text()?;
                let nanos = t
                    .parse::<u64>()
                    .map_err(|_| format!("header `{TIMESTAMP}` is not a number of nanoseconds: {t:?}"))?;
                timestamp = Some(UNIX_EPOCH + Duration::from_nanos(nanos));
            }
            other => {
                if let Ok(value) = std::str::from_utf8(value) {
                    free.insert(other.to_owned(), value.to_owned());
                }
            }
        }
    }
    let missing = [
        (ID, id.is_none()),
        (NAME, name.is_none()),
        (VERSION, version.is_none()),
        (CONTENT_TYPE, content_type.is_none()),
    ]
    .into_iter()
    .filter_map(|(header, absent)| absent.then_some(format!("`{header}`")))
    .collect::<Vec<_>>();
    if !missing.is_empty() {
        return Err(format!(
            "the message lacks the header(s) {}, so it is not an eventflow event; publish it through \
             eventflow or set those headers",
            missing.join(", ")
        ));
    }
    let id = id.unwrap_or_default();
    let key = key
        .map(|k| String::from_utf8(k.to_vec()).map_err(|_| "the message key is not UTF-8".to_owned()))
        .transpose()?;
    let timestamp = timestamp.unwrap_or_else(|| {
        kafka_timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms))
    });
    Ok(Envelope {
        id,
        name: Cow::Owned(name.unwrap_or_default()),
        version: version.unwrap_or_default(),
        topic: Cow::Owned(topic.to_owned()),
        key,
        timestamp,
        correlation_id: correlation_id.unwrap_or(id),
        causation_id,
        headers: free,
        content_type: Cow::Owned(content_type.unwrap_or_default()),
        payload: bytes_of(payload),
    })
}

fn bytes_of(payload: Option<&[u8]>) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(payload.unwrap_or_default())
}

fn nanos_since_epoch(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Milliseconds since the Unix epoch, as Kafka timestamps are.
pub(crate) fn millis_since_epoch(time: SystemTime) -> i64 {
    (nanos_since_epoch(time) / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_survives_the_round_trip() {
        let cause = Envelope::new("order.placed", 1, "orders", "application/json", "{}");
        let mut envelope =
            Envelope::new("order.paid", 3, "orders", "application/json", r#"{"total":1}"#).caused_by(&cause);
        envelope.key = Some("order-1".into());
        envelope.headers.insert("tenant".into(), "acme".into());
        let headers = encode(&envelope);
        let back = decode(
            Some(&headers),
            "orders",
            Some(b"order-1"),
            Some(&envelope.payload),
            None,
        )
        .unwrap();
        assert_eq!(back, envelope);
    }

    #[test]
    fn decimals_are_written_in_full() {
        for n in [0u128, 7, 10, 1_795_308_000_914_000_000, u128::MAX] {
            assert_eq!(decimal(n, &mut [0; 40]), n.to_string());
        }
    }

    #[test]
    fn a_foreign_message_is_refused_with_the_missing_headers() {
        let headers = OwnedHeaders::new().insert(header(ID, &Uuid::now_v7().to_string()));
        let error = decode(Some(&headers), "orders", None, Some(b"hello"), None).unwrap_err();
        assert!(
            error.contains("`eventflow-name`, `eventflow-version`, `content-type`"),
            "{error}"
        );
        let error = decode(None::<&OwnedHeaders>, "orders", None, Some(b"hello"), None).unwrap_err();
        assert!(error.contains("no headers"), "{error}");
    }
}
