//! A Kafka message's headers in either wire format: written in the [format](WireFormat)
//! the topic is set to (the compact [`eventflow`](crate::headers::EVENTFLOW) header, or
//! [CloudEvents](crate::cloudevents)' binary mode), read in whichever the message carries.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::Envelope;
use rdkafka::message::{Headers, OwnedHeaders};

use crate::cloudevents;
use crate::config::{KafkaBuilder, WireFormat};
use crate::headers::{
    bytes_of, encode_compact, millis_since_epoch, read_individual, read_metadata, LastTexts, Metadata,
    CONTENT_TYPE, EVENTFLOW, ID, NAME, VERSION,
};

/// The headers carrying `envelope`'s metadata in the [format](WireFormat) `config` sets for
/// its topic, with the free-form headers (tests; the producers use [`encode_timed`]).
#[cfg(test)]
pub(crate) fn encode(envelope: &Envelope, config: &KafkaBuilder) -> OwnedHeaders {
    encode_timed(envelope, config).0
}

/// [`encode`], and the envelope's timestamp in milliseconds for the Kafka timestamp, read
/// from the clock value once.
pub(crate) fn encode_timed(envelope: &Envelope, config: &KafkaBuilder) -> (OwnedHeaders, i64) {
    if config.format_of(&envelope.topic) == WireFormat::CloudEvents {
        let headers = cloudevents::encode(envelope, config.cloudevents_source.as_deref());
        return (headers, millis_since_epoch(envelope.timestamp));
    }
    encode_compact(envelope)
}

/// Rebuilds an envelope from a Kafka message's parts; the error says what is missing.
#[cfg(test)]
pub(crate) fn decode(
    headers: Option<&impl Headers>,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    kafka_timestamp_ms: Option<i64>,
) -> Result<Envelope, String> {
    let mut texts = LastTexts::default();
    decode_on(
        headers,
        crate::headers::known_text(topic),
        key,
        payload,
        kafka_timestamp_ms,
        &mut texts,
    )
}

/// Rebuilds an envelope from the parts of a message on the event topic `topic`, which a
/// consumer works out once per Kafka topic rather than once per message, its name and
/// content type kept as `texts` keeps them; the error says what is missing.
pub(crate) fn decode_on(
    headers: Option<&impl Headers>,
    topic: Cow<'static, str>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    kafka_timestamp_ms: Option<i64>,
    texts: &mut LastTexts,
) -> Result<Envelope, String> {
    let Some(headers) = headers else {
        return Err(format!(
            "the message has no headers, so it is not an eventflow event (it needs the `{EVENTFLOW}` \
             header, or CloudEvents' `{}`, `{}` and `{}`); publish it through eventflow or set those \
             headers",
            cloudevents::SPECVERSION,
            cloudevents::ID,
            cloudevents::TYPE
        ));
    };
    let mut compact = None;
    let mut cloud = cloudevents::Attributes::default();
    let mut individual = Metadata::default();
    let mut free = eventflow::Headers::new();
    for h in headers.iter() {
        let value = h.value.unwrap_or_default();
        if h.key == EVENTFLOW {
            compact = Some(read_metadata(value)?);
        } else if !cloud.offer(h.key, value) && !read_individual(&mut individual, h.key, value)? {
            if let Ok(value) = std::str::from_utf8(value) {
                free.insert(h.key, value);
            }
        }
    }
    let metadata = match compact {
        Some(metadata) => {
            cloud.keep_as_headers(&mut free);
            metadata
        }
        None if cloud.present() => cloud.into_metadata(individual.content_type, &mut free)?,
        None => {
            cloud.keep_as_headers(&mut free);
            let missing = [
                (ID, individual.id.is_none()),
                (NAME, individual.name.is_none()),
                (VERSION, individual.version.is_none()),
                (CONTENT_TYPE, individual.content_type.is_none()),
            ]
            .into_iter()
            .filter_map(|(header, absent)| absent.then_some(format!("`{header}`")))
            .collect::<Vec<_>>();
            if !missing.is_empty() {
                return Err(format!(
                    "the message has no `{EVENTFLOW}` header, no `{}` and lacks the header(s) {}, so \
                     it is not an eventflow event; publish it through eventflow or set the \
                     `{EVENTFLOW}` header (or produce it as a CloudEvent in binary mode)",
                    cloudevents::SPECVERSION,
                    missing.join(", ")
                ));
            }
            individual
        }
    };
    let id = metadata.id.unwrap_or_default();
    let key = match key {
        Some(k) => {
            Some(String::from_utf8(k.to_vec()).map_err(|_| "the message key is not UTF-8".to_owned())?)
        }
        None => metadata.key.map(str::to_owned),
    };
    let timestamp = metadata.timestamp.unwrap_or_else(|| {
        kafka_timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms))
    });
    Ok(Envelope {
        id,
        name: texts.name(metadata.name.unwrap_or_default()),
        version: metadata.version.unwrap_or_default(),
        topic,
        key,
        timestamp,
        correlation_id: metadata.correlation_id.unwrap_or(id),
        causation_id: metadata.causation_id,
        headers: free,
        content_type: texts.content_type(metadata.content_type.unwrap_or_default()),
        payload: bytes_of(payload),
    })
}
