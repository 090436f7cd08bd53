//! Messages on a subscribed topic that are not eventflow events ("foreign" messages): the
//! envelope the bus gets for one, and the copy written to the group's dead-letter topic.
//!
//! The bus lists a foreign envelope ([`Envelope::FOREIGN`]) as a dead letter of every
//! group; when the consumer commits past it, the raw message, its bytes and headers as
//! they came, goes to the group's dead-letter topic with the reason it was refused.

use std::time::SystemTime;

use eventflow::transport::Record;
use eventflow::Envelope;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};

use crate::client::Inner;
use crate::headers;
use crate::Error;

/// A foreign message, kept from its poll until it is dead-lettered.
pub(crate) struct Foreign {
    reason: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

impl Foreign {
    /// Keeps `message`, refused for `reason`.
    pub(crate) fn of(message: &BorrowedMessage<'_>, reason: String) -> Self {
        Foreign {
            reason,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: message.headers().map(|h| h.detach()),
        }
    }

    /// The [`Envelope::FOREIGN`] envelope of `message`: its bytes as they are, its reason
    /// and origin in headers (with its own headers that are text), and an id derived from
    /// its position, so that reading it again after a restart replaces its dead letter
    /// instead of adding one.
    pub(crate) fn envelope(
        &self,
        message: &BorrowedMessage<'_>,
        event_topic: &str,
        kafka_topic: &str,
    ) -> Envelope {
        let mut envelope = Envelope::new(
            Envelope::FOREIGN,
            0,
            event_topic.to_owned(),
            "application/octet-stream",
            self.payload.clone(),
        );
        let position = format!("kafka:{kafka_topic}:{}:{}", message.partition(), message.offset());
        envelope.id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, position.as_bytes());
        envelope.correlation_id = envelope.id;
        envelope.key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
        if let Some(original) = message.headers() {
            for header in original.iter() {
                if let Some(Ok(value)) = header.value.map(std::str::from_utf8) {
                    envelope.headers.insert(header.key, value);
                }
            }
        }
        envelope
            .headers
            .insert(Envelope::FOREIGN_REASON, self.reason.as_str());
        envelope.headers.insert(headers::ORIGIN_TOPIC, kafka_topic);
        envelope
            .headers
            .insert(headers::ORIGIN_PARTITION, message.partition().to_string());
        envelope
            .headers
            .insert(headers::ORIGIN_OFFSET, message.offset().to_string());
        envelope
    }

    /// Writes the message, at `record`'s position, to `group`'s dead-letter topic, with
    /// its reason and origin in headers after its own.
    pub(crate) async fn dead_letter(&self, inner: &Inner, group: &str, record: &Record) -> Result<(), Error> {
        let dlq = inner.config.dead_letter_topic_for(&record.topic, group);
        inner.ensure_topic(&dlq).await?;
        let (partition, offset) = (record.partition.to_string(), record.offset.to_string());
        let failed_at = headers::millis_since_epoch(SystemTime::now()).to_string();
        let added = [
            (headers::ERROR, self.reason.as_str()),
            (headers::ATTEMPTS, "0"),
            (headers::GROUP, group),
            (headers::ORIGIN_TOPIC, &record.topic),
            (headers::ORIGIN_PARTITION, &partition),
            (headers::ORIGIN_OFFSET, &offset),
            (headers::FAILED_AT, &failed_at),
        ];
        let mut out = OwnedHeaders::new();
        if let Some(original) = &self.headers {
            for h in original.iter() {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        for (key, value) in added {
            out = out.insert(Header {
                key,
                value: Some(value),
            });
        }
        let delivery = inner
            .enqueue(
                &dlq,
                self.key.as_deref(),
                &self.payload,
                out,
                headers::millis_since_epoch(SystemTime::now()),
            )
            .await?;
        inner.delivered(delivery, &dlq).await
    }
}
