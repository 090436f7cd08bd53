//! The [`Envelope`] every event travels in.

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use uuid::Uuid;

use crate::headers::TRACEPARENT;
use crate::Headers;

/// An event on the wire: its metadata and its encoded payload.
///
/// Transports and storage backends carry envelopes without knowing the event types; a
/// handler's [`Context`](crate::Context) exposes the metadata of the envelope it handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this event (UUID v7, so ids sort by creation time).
    pub id: Uuid,
    /// The event name, [`Event::NAME`](crate::Event::NAME).
    pub name: Cow<'static, str>,
    /// The payload schema version, [`Event::VERSION`](crate::Event::VERSION).
    pub version: u32,
    /// The topic the event is published to.
    pub topic: Cow<'static, str>,
    /// The partition key, if the event has one.
    pub key: Option<String>,
    /// When the event was created.
    pub timestamp: SystemTime,
    /// Id shared by every event of one business flow; the id of the first event of the flow.
    pub correlation_id: Uuid,
    /// Id of the event whose handler published this one, if any.
    pub causation_id: Option<Uuid>,
    /// Free-form headers; `traceparent` carries trace context.
    pub headers: Headers,
    /// MIME type of the payload, e.g. `application/json`.
    pub content_type: Cow<'static, str>,
    /// The encoded event.
    pub payload: Bytes,
}

impl Envelope {
    /// The name of an envelope that holds a message that is not an eventflow event (no
    /// metadata, or metadata that does not parse), as a transport hands it over: the raw
    /// bytes as payload, content type `application/octet-stream`, the reason in header
    /// [`Envelope::FOREIGN_REASON`], where it came from in other headers. Every group that
    /// reads one dead-letters it at once, with the reason, so it is listed by
    /// [`EventBus::dead_letters`](crate::EventBus::dead_letters); it cannot be replayed,
    /// only discarded.
    pub const FOREIGN: &'static str = "eventflow.foreign";

    /// The header of a [foreign](Envelope::FOREIGN) envelope that says why the message is
    /// not an eventflow event.
    pub const FOREIGN_REASON: &'static str = "eventflow-foreign-reason";

    /// Creates an envelope that starts a new flow: a fresh id that is also its correlation
    /// id, no causation, the current time and a new trace.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        version: u32,
        topic: impl Into<Cow<'static, str>>,
        content_type: impl Into<Cow<'static, str>>,
        payload: impl Into<Bytes>,
    ) -> Self {
        let id = Uuid::now_v7();
        let headers = Headers::one(TRACEPARENT, traceparent(id.as_u128(), new_span_id()).as_str());
        Envelope {
            id,
            name: name.into(),
            version,
            topic: topic.into(),
            key: None,
            timestamp: SystemTime::now(),
            correlation_id: id,
            causation_id: None,
            headers,
            content_type: content_type.into(),
            payload: payload.into(),
        }
    }

    /// Makes this envelope a consequence of `cause`: same correlation id, `cause` as the
    /// causation, and the same trace with a new span.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.follow(cause);
        self
    }

    /// [`caused_by`](Self::caused_by) in place.
    pub(crate) fn follow(&mut self, cause: &Envelope) {
        self.correlation_id = cause.correlation_id;
        self.causation_id = Some(cause.id);
        if let Some(trace_id) = cause.trace_id().and_then(|t| u128::from_str_radix(t, 16).ok()) {
            self.headers
                .set(TRACEPARENT, traceparent(trace_id, new_span_id()).as_str());
        }
    }

    /// The W3C trace id from the `traceparent` header, if the header is well formed.
    pub fn trace_id(&self) -> Option<&str> {
        let value = self.headers.get(TRACEPARENT)?;
        let mut parts = value.split('-');
        let (_version, trace_id) = (parts.next()?, parts.next()?);
        (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
    }
}

fn new_span_id() -> u64 {
    // A span id of zero is invalid in W3C trace context.
    fastrand::u64(1..)
}

/// `00-{trace id}-{span id}-01`, written digit by digit into a buffer on the stack: it is
/// built for every published event, and this is several times cheaper than `format!` or
/// pushing `char`s. [`Headers`] keeps it in place, without an allocation.
fn traceparent(trace_id: u128, span_id: u64) -> TraceParent {
    let mut out = *b"00-################################-################-01";
    hex(&mut out[3..19], (trace_id >> 64) as u64);
    hex(&mut out[19..35], trace_id as u64);
    hex(&mut out[36..52], span_id);
    TraceParent(out)
}

/// A `traceparent` header's value, written by [`traceparent`].
struct TraceParent([u8; 55]);

impl TraceParent {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits and dashes")
    }
}

/// Writes `value` as 16 hex digits into `out`, a byte (two digits) at a time.
fn hex(out: &mut [u8], value: u64) {
    for (digits, byte) in out.chunks_exact_mut(2).zip(value.to_be_bytes()) {
        digits.copy_from_slice(&HEX_PAIRS[byte as usize]);
    }
}

/// The two hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_up_keeps_flow_and_trace() {
        let first = Envelope::new("a", 1, "t", "application/json", "{}");
        let second = Envelope::new("b", 1, "t", "application/json", "{}").caused_by(&first);
        assert_eq!(second.correlation_id, first.id);
        assert_eq!(second.causation_id, Some(first.id));
        assert_eq!(second.trace_id(), first.trace_id());
        assert_ne!(second.headers[TRACEPARENT], first.headers[TRACEPARENT]);
    }

    #[test]
    fn traceparent_is_w3c_formatted() {
        let trace_id = 0x0af7651916cd43dd8448eb211c80319c;
        let header = traceparent(trace_id, 0xb7ad6b7169203331);
        assert_eq!(
            header.as_str(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(traceparent(1, 2).as_str(), format!("00-{:032x}-{:016x}-01", 1, 2));
    }
}
