//! The Kafka headers an [`Envelope`] travels in, and reading them back.
//!
//! Eventflow writes one of two formats, chosen per transport with
//! [`KafkaBuilder::wire_format`](crate::KafkaBuilder::wire_format) and per topic with
//! [`KafkaBuilder::topic_format`](crate::KafkaBuilder::topic_format): the compact one below
//! (the default) or [CloudEvents](crate::cloudevents). A consumer reads
//! both, and the older one-header-per-field form, whatever it writes: the `eventflow`
//! header if there is one, else the CloudEvents headers if there is `ce_specversion`, else
//! the individual headers.
//!
//! # Wire format
//!
//! The payload is the codec's bytes and the Kafka key is the partition key. The envelope's
//! metadata travels in one header, [`EVENTFLOW`] (`eventflow`), whose value is eight fields
//! separated by `;`:
//!
//! ```text
//! 1;<id>;<name>;<version>;<timestamp>;<correlation id>;<causation id>;<content type>
//! 1;0190a8f4c3d27c1e9b3f5a7d2e4c6b8a;order.paid;1;1718000000123456789;;;application/json
//! ```
//!
//! | field | value |
//! |---|---|
//! | `1` | the format; a consumer refuses a format it does not know |
//! | id | the event id, a UUID (eventflow writes 32 lowercase hex digits; hyphens are accepted) |
//! | name | the event name; it cannot contain `;` |
//! | version | the payload schema version, in decimal |
//! | timestamp | when the event was created, in nanoseconds since the Unix epoch; empty: the Kafka timestamp |
//! | correlation id | a UUID; empty: the event id (an event that starts a flow) |
//! | causation id | a UUID, for an event published by a handler; empty: none |
//! | content type | the payload's MIME type, e.g. `application/json`; the rest of the value, so it may contain `;` |
//!
//! The envelope's free-form headers, such as W3C [`traceparent`](eventflow::TRACEPARENT),
//! are Kafka headers of the same name. A producer in another language publishes an
//! eventflow event by setting the `eventflow` header, e.g. `1;<a fresh UUID>;order.paid;1;;;;application/json`.
//!
//! One header rather than one per field: every header costs the client an allocation and
//! the broker and every consumer a parsed record header, and the field names cost bytes
//! on every message (the metadata takes about 100 bytes instead of 230).
//!
//! Messages in the older form, one header per field ([`ID`], [`NAME`], [`VERSION`],
//! [`CONTENT_TYPE`] required, the others optional), are still read. Eventflow writes that
//! form for an event whose name contains `;`, and for dead letters, which people read
//! with generic tools: a dead-letter message carries the individual headers plus
//! [`ERROR`], [`ATTEMPTS`], [`GROUP`], [`ORIGIN_TOPIC`] and [`FAILED_AT`].

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::{DeadLetter, Envelope};
use rdkafka::message::{Header, OwnedHeaders};
use uuid::Uuid;

/// The header carrying an event's metadata in one value (see the [wire format](self)).
pub const EVENTFLOW: &str = "eventflow";
/// The [`EVENTFLOW`] header format this version writes and reads.
const FORMAT: &str = "1";

/// The event id, a UUID, in the individual-header form.
pub const ID: &str = "eventflow-id";
/// The event name, in the individual-header form.
pub const NAME: &str = "eventflow-name";
/// The payload schema version, a decimal number, in the individual-header form.
pub const VERSION: &str = "eventflow-version";
/// The payload's MIME type, e.g. `application/json`, in the individual-header form.
pub const CONTENT_TYPE: &str = "content-type";
/// The correlation id, a UUID, in the individual-header form; the event id if absent.
pub const CORRELATION_ID: &str = "eventflow-correlation-id";
/// The causation id, a UUID, in the individual-header form, for events published by a
/// handler.
pub const CAUSATION_ID: &str = "eventflow-causation-id";
/// When the event was created, in nanoseconds since the Unix epoch, in the
/// individual-header form; the Kafka timestamp if absent.
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

const RESERVED: [&str; 8] = [
    EVENTFLOW,
    ID,
    NAME,
    VERSION,
    CONTENT_TYPE,
    CORRELATION_ID,
    CAUSATION_ID,
    TIMESTAMP,
];

/// The [`EVENTFLOW`] header and the free-form headers, and the Kafka timestamp.
pub(crate) fn encode_compact(envelope: &Envelope) -> (OwnedHeaders, i64) {
    let nanos = nanos_since_epoch(envelope.timestamp);
    let millis = (nanos / 1_000_000) as i64;
    if envelope.name.contains(';') {
        return (encode_individually(envelope), millis);
    }
    let (mut version, mut timestamp) = ([0; 20], [0; 20]);
    let fields = Fields {
        envelope,
        version: decimal(envelope.version.into(), &mut version),
        timestamp: decimal(nanos, &mut timestamp),
    };
    // Built on the stack when it fits, as it does for any name eventflow's derive accepts:
    // librdkafka copies the value anyway.
    let mut inline = [0; 256];
    let mut spilled = Vec::new();
    let len = fields.len();
    let buffer = if len <= inline.len() {
        &mut inline[..len]
    } else {
        spilled.resize(len, 0);
        &mut spilled[..]
    };
    fields.write(buffer);
    let headers = with_free_headers(
        OwnedHeaders::new_with_capacity(1 + envelope.headers.len()).insert(Header {
            key: EVENTFLOW,
            value: Some(&*buffer),
        }),
        envelope,
    );
    (headers, millis)
}

/// The fields of an [`EVENTFLOW`] value, the numbers already in decimal.
struct Fields<'a> {
    envelope: &'a Envelope,
    version: &'a [u8],
    timestamp: &'a [u8],
}

impl Fields<'_> {
    const UUID: usize = 32;

    /// The length of the value, for [`Fields::write`].
    fn len(&self) -> usize {
        let envelope = self.envelope;
        FORMAT.len()
            + 7 // separators
            + Self::UUID
            + envelope.name.len()
            + self.version.len()
            + self.timestamp.len()
            + if envelope.correlation_id == envelope.id { 0 } else { Self::UUID }
            + envelope.causation_id.map_or(0, |_| Self::UUID)
            + envelope.content_type.len()
    }

    /// Writes the value into `out`, exactly [`Fields::len`] bytes.
    fn write(&self, out: &mut [u8]) {
        let envelope = self.envelope;
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        let mut uuid = Uuid::encode_buffer();
        put(FORMAT.as_bytes());
        put(b";");
        put(envelope.id.simple().encode_lower(&mut uuid).as_bytes());
        put(b";");
        put(envelope.name.as_bytes());
        put(b";");
        put(self.version);
        put(b";");
        put(self.timestamp);
        put(b";");
        if envelope.correlation_id != envelope.id {
            put(envelope
                .correlation_id
                .simple()
                .encode_lower(&mut uuid)
                .as_bytes());
        }
        put(b";");
        if let Some(cause) = envelope.causation_id {
            put(cause.simple().encode_lower(&mut uuid).as_bytes());
        }
        put(b";");
        put(envelope.content_type.as_bytes());
    }
}

/// `envelope`'s metadata as one header per field, the form dead letters carry.
fn encode_individually(envelope: &Envelope) -> OwnedHeaders {
    let (mut id, mut correlation, mut causation) = (
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
    );
    let (mut version, mut timestamp) = ([0; 20], [0; 20]);
    let mut headers = OwnedHeaders::new_with_capacity(7 + envelope.headers.len())
        .insert(header(ID, envelope.id.hyphenated().encode_lower(&mut id)))
        .insert(header(NAME, &envelope.name))
        .insert(bytes_header(
            VERSION,
            decimal(envelope.version.into(), &mut version),
        ))
        .insert(header(CONTENT_TYPE, &envelope.content_type))
        .insert(header(
            CORRELATION_ID,
            envelope
                .correlation_id
                .hyphenated()
                .encode_lower(&mut correlation),
        ))
        .insert(bytes_header(
            TIMESTAMP,
            decimal(nanos_since_epoch(envelope.timestamp), &mut timestamp),
        ));
    if let Some(cause) = envelope.causation_id {
        headers = headers.insert(header(
            CAUSATION_ID,
            cause.hyphenated().encode_lower(&mut causation),
        ));
    }
    with_free_headers(headers, envelope)
}

/// Whether `name` is one of the headers eventflow's own formats write, which an envelope's
/// free-form header of that name must not shadow.
pub(crate) fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

fn with_free_headers(mut headers: OwnedHeaders, envelope: &Envelope) -> OwnedHeaders {
    for (name, value) in &envelope.headers {
        if !is_reserved(name) {
            headers = headers.insert(header(name, value));
        }
    }
    headers
}

/// `n` in decimal, written into `buffer` two digits at a time (a timestamp has 19).
pub(crate) fn decimal(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    const PAIRS: [u8; 200] = {
        let mut pairs = [0; 200];
        let mut i = 0;
        while i < 100 {
            pairs[2 * i] = b'0' + (i / 10) as u8;
            pairs[2 * i + 1] = b'0' + (i % 10) as u8;
            i += 1;
        }
        pairs
    };
    let mut start = buffer.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        start -= 2;
        buffer[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        start -= 2;
        buffer[start..start + 2].copy_from_slice(&PAIRS[n as usize * 2..n as usize * 2 + 2]);
    } else {
        start -= 1;
        buffer[start] = b'0' + n as u8;
    }
    &buffer[start..]
}

/// The headers of a dead-lettered event: its own, one per field, plus why and where it
/// failed.
pub(crate) fn encode_dead_letter(letter: &DeadLetter, origin_topic: &str) -> OwnedHeaders {
    let failed_at = nanos_since_epoch(letter.failed_at) / 1_000_000;
    encode_individually(&letter.envelope)
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

fn bytes_header<'a>(key: &'a str, value: &'a [u8]) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value),
    }
}

/// An envelope's metadata, as read from either header form.
/// Borrowed from the message's headers, so that reading one allocates only what the
/// envelope keeps.
#[derive(Default)]
pub(crate) struct Metadata<'a> {
    pub(crate) id: Option<Uuid>,
    pub(crate) name: Option<&'a str>,
    pub(crate) version: Option<u32>,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) timestamp: Option<SystemTime>,
    /// The partition key, if the format carries it besides the Kafka key.
    pub(crate) key: Option<&'a str>,
}

/// Reads the [`EVENTFLOW`] header's value. Only the name and the content type become
/// text, so only they are checked to be UTF-8; the other fields are read as the ASCII they
/// must be (a byte outside it fails the field's own check).
pub(crate) fn read_metadata(value: &[u8]) -> Result<Metadata<'_>, String> {
    let (fields, count) = split_fields(value);
    if fields[0] != FORMAT.as_bytes() {
        return Err(format!(
            "header `{EVENTFLOW}` is in format {:?}, which this version of eventflow-kafka does \
             not read (it reads format {FORMAT}); upgrade eventflow-kafka on this consumer",
            String::from_utf8_lossy(fields[0])
        ));
    }
    if count < fields.len() {
        const WHAT: [&str; 8] = [
            "format",
            "id",
            "name",
            "version",
            "timestamp",
            "correlation id",
            "causation id",
            "content type",
        ];
        return Err(format!(
            "header `{EVENTFLOW}` ends before the {}: {:?}; it holds \
             `1;<id>;<name>;<version>;<timestamp>;<correlation id>;<causation id>;<content type>`",
            WHAT[count],
            String::from_utf8_lossy(value)
        ));
    }
    let [_, id, name, version, timestamp, correlation, causation, content_type] = fields;
    let text = |what: &str, field| {
        std::str::from_utf8(field).map_err(|_| {
            format!(
                "the {what} in header `{EVENTFLOW}` is not UTF-8: {:?}",
                String::from_utf8_lossy(value)
            )
        })
    };
    let name = text("name", name)?;
    if name.is_empty() {
        return Err(format!(
            "header `{EVENTFLOW}` has an empty event name: {:?}",
            String::from_utf8_lossy(value)
        ));
    }
    let content_type = text("content type", content_type)?;
    let version = parse_decimal(version)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| invalid("version", "a version number", version))?;
    let timestamp = match timestamp.is_empty() {
        true => None,
        false => Some(
            parse_decimal(timestamp)
                .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos))
                .ok_or_else(|| invalid("timestamp", "a number of nanoseconds", timestamp))?,
        ),
    };
    Ok(Metadata {
        id: Some(uuid_field("id", id)?),
        name: Some(name),
        version: Some(version),
        content_type: Some(content_type),
        correlation_id: optional_uuid_field("correlation id", correlation)?,
        causation_id: optional_uuid_field("causation id", causation)?,
        timestamp,
        key: None,
    })
}

/// The error for a field of an [`EVENTFLOW`] value that is not `expected`.
fn invalid(what: &str, expected: &str, field: &[u8]) -> String {
    format!(
        "the {what} in header `{EVENTFLOW}` is not {expected}: {:?}",
        String::from_utf8_lossy(field)
    )
}

/// A UUID field of an [`EVENTFLOW`] value, called `what` in the error.
fn uuid_field(what: &str, field: &[u8]) -> Result<Uuid, String> {
    Uuid::try_parse_ascii(field).map_err(|e| {
        format!(
            "the {what} in header `{EVENTFLOW}` is not a UUID ({e}): {:?}",
            String::from_utf8_lossy(field)
        )
    })
}

/// A UUID field that may be empty (none).
fn optional_uuid_field(what: &str, field: &[u8]) -> Result<Option<Uuid>, String> {
    match field.is_empty() {
        true => Ok(None),
        false => uuid_field(what, field).map(Some),
    }
}

/// The fields of an [`EVENTFLOW`] value as `splitn(8, ';')` yields them (the last, the
/// content type, keeps any further `;`), and how many there are. `splitn` looks at one
/// byte at a time, which made splitting cost more than the rest of reading the value;
/// `memchr` looks at a word or more at a time.
fn split_fields(value: &[u8]) -> ([&[u8]; 8], usize) {
    let mut fields: [&[u8]; 8] = [b""; 8];
    let mut rest = value;
    for (count, field) in fields.iter_mut().enumerate().take(7) {
        let Some(len) = memchr::memchr(b';', rest) else {
            *field = rest;
            return (fields, count + 1);
        };
        *field = &rest[..len];
        rest = &rest[len + 1..];
    }
    fields[7] = rest;
    (fields, 8)
}

/// `digits` as a decimal number, as `str::parse::<u64>` reads one (digits after an
/// optional `+`), at a few instructions a digit: `parse` reads a number of more than 16
/// digits, such as a timestamp's 19, on its generic overflow-checked path, at some fifteen.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    /// `u64::MAX` has 20 digits, so any 19 fit.
    const ALWAYS_FITS: usize = 19;
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for (i, &byte) in digits.iter().enumerate() {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = match i < ALWAYS_FITS {
            true => n * 10 + u64::from(digit),
            false => n.checked_mul(10)?.checked_add(u64::from(digit))?,
        };
    }
    Some(n)
}

/// Reads one header of the individual-header form into `metadata`; `false` if `key` is
/// not one.
pub(crate) fn read_individual<'a>(
    metadata: &mut Metadata<'a>,
    key: &str,
    value: &'a [u8],
) -> Result<bool, String> {
    let text = || std::str::from_utf8(value).map_err(|_| format!("header `{key}` is not UTF-8"));
    let uuid = || {
        text().and_then(|t| {
            Uuid::parse_str(t).map_err(|e| format!("header `{key}` is not a UUID ({e}): {t:?}"))
        })
    };
    match key {
        ID => metadata.id = Some(uuid()?),
        NAME => metadata.name = Some(text()?),
        VERSION => {
            let t = text()?;
            metadata.version = Some(
                t.parse::<u32>()
                    .map_err(|_| format!("header `{VERSION}` is not a version number: {t:?}"))?,
            );
        }
        CONTENT_TYPE => metadata.content_type = Some(text()?),
        CORRELATION_ID => metadata.correlation_id = Some(uuid()?),
        CAUSATION_ID => metadata.causation_id = Some(uuid()?),
        TIMESTAMP => {
            let t = text()?;
            let nanos = t
                .parse::<u64>()
                .map_err(|_| format!("header `{TIMESTAMP}` is not a number of nanoseconds: {t:?}"))?;
            metadata.timestamp = Some(UNIX_EPOCH + Duration::from_nanos(nanos));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `text` as the envelope keeps it: for the few topics, names and content types a process
/// sees over and over, one copy made the first time and kept for good, so that reading a
/// message does not allocate them again; past the first 256 distinct values (a producer
/// writing ever new names), an owned copy per envelope as before, so memory stays bounded.
pub(crate) fn known_text(text: &str) -> Cow<'static, str> {
    use std::sync::RwLock;
    const MOST: usize = 256;
    static KNOWN: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());
    let find = |known: &[&'static str]| known.iter().find(|kept| **kept == text).copied();
    if let Some(kept) = find(&KNOWN.read().unwrap_or_else(|e| e.into_inner())) {
        return Cow::Borrowed(kept);
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = find(&known) {
        return Cow::Borrowed(kept);
    }
    if known.len() >= MOST {
        return Cow::Owned(text.to_owned());
    }
    let kept: &'static str = Box::leak(text.into());
    known.push(kept);
    Cow::Borrowed(kept)
}

/// The name and the content type of the message a consumer read last. The next message
/// mostly carries the same ones, which then cost a comparison instead of a [`known_text`]
/// lookup under its lock, a lock every consumer of the process shares.
#[derive(Default)]
pub(crate) struct LastTexts {
    name: Cow<'static, str>,
    content_type: Cow<'static, str>,
}

impl LastTexts {
    /// The event name `text`, as [`known_text`] keeps it.
    pub(crate) fn name(&mut self, text: &str) -> Cow<'static, str> {
        recall(&mut self.name, text)
    }

    /// The content type `text`, as [`known_text`] keeps it.
    pub(crate) fn content_type(&mut self, text: &str) -> Cow<'static, str> {
        recall(&mut self.content_type, text)
    }
}

fn recall(last: &mut Cow<'static, str>, text: &str) -> Cow<'static, str> {
    if **last != *text {
        *last = known_text(text);
    }
    last.clone()
}

pub(crate) fn bytes_of(payload: Option<&[u8]>) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(payload.unwrap_or_default())
}

/// Nanoseconds since the Unix epoch (0 before it), as the timestamp field holds them; fits
/// a `u64` until the year 2554.
pub(crate) fn nanos_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch, as Kafka timestamps are.
pub(crate) fn millis_since_epoch(time: SystemTime) -> i64 {
    (nanos_since_epoch(time) / 1_000_000) as i64
}

#[cfg(test)]
mod tests;
