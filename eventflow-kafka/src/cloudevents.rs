//! The [CloudEvents](https://cloudevents.io) wire format: the CloudEvents 1.0 Kafka
//! protocol binding in binary content mode, written for topics set to
//! [`WireFormat::CloudEvents`](crate::WireFormat::CloudEvents) and always read.
//!
//! ```
//! use eventflow_kafka::{Kafka, WireFormat};
//!
//! // Topic `orders` in CloudEvents for the services outside eventflow that read it, the
//! // others in eventflow's compact header.
//! let kafka = Kafka::from_env()
//!     .topic_format("orders", WireFormat::CloudEvents)
//!     .cloudevents_source("https://shop.example.com/checkout")
//!     .build()?;
//! # drop(kafka);
//! # Ok::<(), eventflow_kafka::Error>(())
//! ```
//!
//! # Headers
//!
//! The payload is the codec's bytes, the Kafka key the partition key, and the metadata
//! travels in these headers (values UTF-8):
//!
//! | header | CloudEvents attribute | value |
//! |---|---|---|
//! | `ce_specversion` | `specversion` | `1.0` (any `1.x` is read) |
//! | `ce_id` | `id` | the event id, a hyphenated UUID |
//! | `ce_source` | `source` | [`KafkaBuilder::cloudevents_source`](crate::KafkaBuilder::cloudevents_source), default `/<topic>` |
//! | `ce_type` | `type` | the event name, e.g. `order.paid` |
//! | `ce_time` | `time` | when the event was created, RFC 3339 in UTC to the nanosecond, e.g. `2026-12-01T08:39:13.123Z` |
//! | `content-type` | `datacontenttype` | the payload's MIME type, e.g. `application/json` |
//! | `ce_eventversion` | extension `eventversion` | the payload schema version ([`Event::VERSION`](eventflow::Event::VERSION)), in decimal |
//! | `ce_partitionkey` | extension `partitionkey` ([partitioning](https://github.com/cloudevents/spec/blob/main/cloudevents/extensions/partitioning.md)) | the partition key, also the Kafka key; absent for an event without one |
//! | `ce_correlationid` | extension `correlationid` | the correlation id, a UUID: the id of the event that started the flow |
//! | `ce_causationid` | extension `causationid` | the causation id, a UUID: the event whose handler published this one; absent for none |
//! | `ce_traceparent`, `ce_tracestate` | extensions `traceparent`, `tracestate` ([distributed tracing](https://github.com/cloudevents/spec/blob/main/cloudevents/extensions/distributed-tracing.md)) | W3C trace context, from the envelope's [`traceparent`](eventflow::TRACEPARENT) header |
//!
//! `correlationid` and `causationid` are the names of the CloudEvents correlation
//! extension proposal. The payload schema version gets an extension of its own rather than
//! `dataschema`, which is a URI of a schema document eventflow does not have.
//!
//! The envelope's other free-form headers are extensions when their name is a valid
//! CloudEvents attribute name (lowercase letters and digits: `tenant` travels as
//! `ce_tenant`), and plain Kafka headers of the same name otherwise.
//!
//! # Reading
//!
//! A message with a `ce_specversion` header (and no [`eventflow`](crate::headers::EVENTFLOW)
//! header, which takes precedence) is read as a CloudEvent. It needs `ce_id` and `ce_type`;
//! the rest have defaults, so events from any CloudEvents producer are handled:
//!
//! - `ce_id` that is not a UUID (CloudEvents ids are any string): the envelope's id is a UUID
//!   derived from `ce_source` and `ce_id`, the same for every copy of the message, so the
//!   inbox still recognises a redelivery; the original is kept in the header `ce_id`.
//! - No `ce_time`: the Kafka timestamp. No `content-type`: `application/json`. No
//!   `ce_eventversion`: version 1. No correlation id: the event id. No Kafka key: the
//!   `ce_partitionkey`, if any.
//! - `ce_source`, `ce_subject` and `ce_dataschema` are kept in the envelope's headers under
//!   those names (and a forwarded event keeps its `ce_source`); any other extension
//!   `ce_<name>` becomes header `<name>`, and `ce_traceparent` becomes `traceparent`.
//!
//! A message whose `ce_specversion` is not 1.x, or whose `ce_time` or id headers do not
//! parse, is refused with the reason (and dead-lettered by the consuming group).
//!
//! Binary mode only: a message in structured mode (`content-type:
//! application/cloudevents+json`, the whole event as JSON in the value) has no
//! `ce_specversion` header and is refused as not an eventflow event.

mod time;

use eventflow::{Envelope, Headers};
use rdkafka::message::{Header, OwnedHeaders};
use uuid::Uuid;

use crate::headers::{decimal, nanos_since_epoch, Metadata, CONTENT_TYPE};

/// The CloudEvents spec version, `1.0`.
pub const SPECVERSION: &str = "ce_specversion";
/// The event id.
pub const ID: &str = "ce_id";
/// The producing context, a URI-reference.
pub const SOURCE: &str = "ce_source";
/// The event name.
pub const TYPE: &str = "ce_type";
/// When the event was created, RFC 3339.
pub const TIME: &str = "ce_time";
/// The subject, kept in the envelope's headers under this name when read.
pub const SUBJECT: &str = "ce_subject";
/// The schema URI, kept in the envelope's headers under this name when read.
pub const DATASCHEMA: &str = "ce_dataschema";
/// The payload schema version (extension `eventversion`).
pub const EVENT_VERSION: &str = "ce_eventversion";
/// The partition key (extension `partitionkey`), also the Kafka key.
pub const PARTITION_KEY: &str = "ce_partitionkey";
/// The correlation id (extension `correlationid`).
pub const CORRELATION_ID: &str = "ce_correlationid";
/// The causation id (extension `causationid`).
pub const CAUSATION_ID: &str = "ce_causationid";
/// W3C trace context (extension `traceparent`).
pub const TRACEPARENT: &str = "ce_traceparent";

/// The spec version written.
const VERSION_1_0: &str = "1.0";
/// What a binary-mode message without `content-type` holds.
const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Attribute names eventflow maps itself: a free-form header of one of these names is not
/// written as an extension, since it would clash.
const MAPPED: [&str; 13] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "subject",
    "dataschema",
    "data",
    "eventversion",
    "partitionkey",
    "correlationid",
    "causationid",
];

/// The headers of `envelope` in CloudEvents binary mode; `source` is the configured
/// `ce_source`, `None` for the default `/<topic>`.
pub(crate) fn encode(envelope: &Envelope, source: Option<&str>) -> OwnedHeaders {
    let (mut id, mut correlation, mut causation) = (
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
    );
    let (mut version, mut time) = ([0; 20], [0; time::MAX_LEN]);
    let default_source;
    let source = match envelope.headers.get(SOURCE) {
        Some(forwarded) => forwarded,
        None => match source {
            Some(configured) => configured,
            None => {
                default_source = format!("/{}", envelope.topic);
                &default_source
            }
        },
    };
    let mut headers = OwnedHeaders::new_with_capacity(9 + envelope.headers.len())
        .insert(header(SPECVERSION, VERSION_1_0))
        .insert(header(ID, envelope.id.hyphenated().encode_lower(&mut id)))
        .insert(header(SOURCE, source))
        .insert(header(TYPE, &envelope.name))
        .insert(header(
            TIME,
            time::write(nanos_since_epoch(envelope.timestamp), &mut time),
        ))
        .insert(header(CONTENT_TYPE, &envelope.content_type))
        .insert(Header {
            key: EVENT_VERSION,
            value: Some(decimal(envelope.version.into(), &mut version)),
        });
    if let Some(key) = &envelope.key {
        headers = headers.insert(header(PARTITION_KEY, key));
    }
    headers = headers.insert(header(
        CORRELATION_ID,
        envelope
            .correlation_id
            .hyphenated()
            .encode_lower(&mut correlation),
    ));
    if let Some(cause) = envelope.causation_id {
        headers = headers.insert(header(
            CAUSATION_ID,
            cause.hyphenated().encode_lower(&mut causation),
        ));
    }
    let mut name = [0; 64];
    for (key, value) in &envelope.headers {
        if key.starts_with("ce_") {
            if [SUBJECT, DATASCHEMA].contains(&key) {
                headers = headers.insert(header(key, value));
            }
            continue; // eventflow's own, or `ce_source`, written above
        }
        if crate::headers::is_reserved(key) || MAPPED.contains(&key) {
            continue;
        }
        headers = if is_attribute_name(key) && key.len() + 3 <= name.len() {
            name[..3].copy_from_slice(b"ce_");
            name[3..3 + key.len()].copy_from_slice(key.as_bytes());
            let prefixed = std::str::from_utf8(&name[..3 + key.len()]).expect("ASCII name");
            headers.insert(header(prefixed, value))
        } else {
            headers.insert(header(key, value))
        };
    }
    headers
}

/// A CloudEvents attribute name: lowercase ASCII letters and digits.
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// The `ce_` headers of a message, gathered while its headers are read once.
#[derive(Default)]
pub(crate) struct Attributes<'a> {
    specversion: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
    source: Option<&'a [u8]>,
    type_: Option<&'a [u8]>,
    time: Option<&'a [u8]>,
    version: Option<&'a [u8]>,
    partition_key: Option<&'a [u8]>,
    correlation_id: Option<&'a [u8]>,
    causation_id: Option<&'a [u8]>,
    /// Other `ce_` headers: extensions, `ce_subject`, `ce_dataschema`.
    others: Vec<(&'a str, &'a [u8])>,
    /// Whether any `ce_` header was taken: most messages have none, and then there is
    /// nothing to keep.
    taken: bool,
}

impl<'a> Attributes<'a> {
    /// Takes the header if it is a `ce_` one; `false` if it is not.
    pub(crate) fn offer(&mut self, key: &'a str, value: &'a [u8]) -> bool {
        let slot = match key {
            SPECVERSION => &mut self.specversion,
            ID => &mut self.id,
            SOURCE => &mut self.source,
            TYPE => &mut self.type_,
            TIME => &mut self.time,
            EVENT_VERSION => &mut self.version,
            PARTITION_KEY => &mut self.partition_key,
            CORRELATION_ID => &mut self.correlation_id,
            CAUSATION_ID => &mut self.causation_id,
            _ if key.starts_with("ce_") => {
                self.others.push((key, value));
                self.taken = true;
                return true;
            }
            _ => return false,
        };
        *slot = Some(value);
        self.taken = true;
        true
    }

    /// Whether the message is a CloudEvent (it has `ce_specversion`).
    pub(crate) fn present(&self) -> bool {
        self.specversion.is_some()
    }

    /// The `ce_` headers of a message read in another format, kept as they are among the
    /// envelope's headers.
    pub(crate) fn keep_as_headers(self, free: &mut Headers) {
        if !self.taken {
            return;
        }
        let mapped = [
            (SPECVERSION, self.specversion),
            (ID, self.id),
            (SOURCE, self.source),
            (TYPE, self.type_),
            (TIME, self.time),
            (EVENT_VERSION, self.version),
            (PARTITION_KEY, self.partition_key),
            (CORRELATION_ID, self.correlation_id),
            (CAUSATION_ID, self.causation_id),
        ];
        let present = mapped.into_iter().filter_map(|(key, value)| Some((key, value?)));
        for (key, value) in present.chain(self.others) {
            if let Ok(value) = std::str::from_utf8(value) {
                free.insert(key, value);
            }
        }
    }

    /// The envelope metadata of a CloudEvent; the extensions and kept attributes go to
    /// `free`. `content_type` is the `content-type` header, if any.
    pub(crate) fn into_metadata(
        self,
        content_type: Option<&'a str>,
        free: &mut Headers,
    ) -> Result<Metadata<'a>, String> {
        let text = |key: &str, value: &'a [u8]| {
            std::str::from_utf8(value).map_err(|_| format!("header `{key}` is not UTF-8"))
        };
        let uuid = |key: &str, value: &'a [u8]| {
            let t = text(key, value)?;
            Uuid::parse_str(t).map_err(|e| format!("header `{key}` is not a UUID ({e}): {t:?}"))
        };
        let required = |key: &str, value: Option<&'a [u8]>| {
            value.map(|v| text(key, v)).transpose()?.ok_or_else(|| {
                format!(
                    "the message has `{SPECVERSION}` but no `{key}` header, so it is not a valid \
                     CloudEvent in binary mode; its producer must set `{key}`"
                )
            })
        };
        let specversion = required(SPECVERSION, self.specversion)?;
        if !specversion.starts_with("1.") {
            return Err(format!(
                "header `{SPECVERSION}` is {specversion:?}, a CloudEvents version this version of \
                 eventflow-kafka does not read (it reads 1.x); produce CloudEvents 1.0"
            ));
        }
        let raw_id = required(ID, self.id)?;
        let name = required(TYPE, self.type_)?;
        if name.is_empty() {
            return Err(format!("header `{TYPE}` is empty; it must name the event"));
        }
        let source = self.source.map(|v| text(SOURCE, v)).transpose()?;
        let id = match Uuid::parse_str(raw_id) {
            Ok(id) => id,
            Err(_) => {
                free.insert(ID, raw_id);
                derived_id(source.unwrap_or_default(), raw_id)
            }
        };
        if let Some(source) = source {
            free.insert(SOURCE, source);
        }
        for (key, value) in self.others {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            let name = if key == SUBJECT || key == DATASCHEMA {
                key
            } else {
                &key[3..]
            };
            free.insert(name, value);
        }
        let version = match self.version {
            None => 1,
            Some(v) => {
                let t = text(EVENT_VERSION, v)?;
                t.parse()
                    .map_err(|_| format!("header `{EVENT_VERSION}` is not a version number: {t:?}"))?
            }
        };
        Ok(Metadata {
            id: Some(id),
            name: Some(name),
            version: Some(version),
            content_type: Some(content_type.unwrap_or(DEFAULT_CONTENT_TYPE)),
            correlation_id: self.correlation_id.map(|v| uuid(CORRELATION_ID, v)).transpose()?,
            causation_id: self.causation_id.map(|v| uuid(CAUSATION_ID, v)).transpose()?,
            timestamp: self
                .time
                .map(|v| time::parse(text(TIME, v)?).map_err(|e| format!("header `{TIME}`: {e}")))
                .transpose()?,
            key: self.partition_key.map(|v| text(PARTITION_KEY, v)).transpose()?,
        })
    }
}

/// A UUID for a CloudEvent whose id is not one: version 8 (custom), from the 128-bit
/// FNV-1a hash of source and id, so every copy of the message gets the same one.
fn derived_id(source: &str, id: &str) -> Uuid {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let hash = source
        .bytes()
        .chain([0])
        .chain(id.bytes())
        .fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid()
}

#[cfg(test)]
mod tests;
