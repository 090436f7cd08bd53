//! [`EventSet`]: the events of an aggregate, one [`Event`] type or several.

use crate::codec::Codec;
use crate::upcast::{self, UpcastError};
use crate::{Envelope, Error, Event};

/// The events an aggregate records: one [`Event`] type (every event is a set of one), or an
/// enum whose variants wrap existing events, made with `#[derive(EventSet)]`.
///
/// In an enum, each variant is saved and published under its own event's name, version and
/// topic, so the handlers of other groups subscribe to the event type itself:
///
/// ```
/// use eventflow::{Event, EventSet};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "book.borrowed", topic = "library")]
/// struct BookBorrowed { #[event(key)] book: String, member: String }
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "book.returned", topic = "library")]
/// struct BookReturned { #[event(key)] book: String }
///
/// #[derive(EventSet, Debug)]
/// enum BookEvent {
///     Borrowed(BookBorrowed),
///     Returned(BookReturned),
/// }
///
/// let codec = eventflow::codec::Json;
/// let borrowed = BookEvent::Borrowed(BookBorrowed { book: "b-1".into(), member: "ann".into() });
/// let envelope = borrowed.envelope(&codec)?;
/// assert_eq!((&*envelope.name, &*envelope.topic), ("book.borrowed", "library"));
/// assert!(matches!(BookEvent::decode(&codec, &envelope)?, BookEvent::Borrowed(_)));
/// # Ok::<(), eventflow::Error>(())
/// ```
///
/// A variant is a tuple variant with one field, an [`Event`]; each event type appears in
/// one variant. Older versions are upcast as the event type declares.
pub trait EventSet: Send + Sync + Sized + 'static {
    /// Encodes the event in a new envelope, under its own name, version and topic.
    fn envelope(&self, codec: &dyn Codec) -> Result<Envelope, Error>;

    /// Decodes an envelope of one of the set's events, upcasting an older version. An
    /// envelope of an event outside the set is an error.
    fn decode(codec: &dyn Codec, envelope: &Envelope) -> Result<Self, Error>;
}

impl<E: Event> EventSet for E {
    fn envelope(&self, codec: &dyn Codec) -> Result<Envelope, Error> {
        crate::outgoing::encode_envelope(codec, self)
    }

    fn decode(codec: &dyn Codec, envelope: &Envelope) -> Result<Self, Error> {
        upcast::decode_with(codec, envelope)
    }
}

/// The error for an envelope of an event outside the set `S`; what `#[derive(EventSet)]`
/// returns for a name none of its variants has.
pub fn not_in_set<S: EventSet>(envelope: &Envelope) -> Error {
    Error::Upcast {
        id: envelope.id,
        name: envelope.name.to_string(),
        version: envelope.version,
        source: UpcastError::NotInSet {
            set: std::any::type_name::<S>(),
            found: envelope.name.to_string(),
        },
    }
}
