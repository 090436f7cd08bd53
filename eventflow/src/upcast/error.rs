//! [`UpcastError`]: a version of an event that could not be read. It sits below
//! [`Error`](crate::Error), which holds one in `Upcast`, and below [`Event`](crate::Event),
//! whose `upcast` returns one, so it imports nothing above the codec.

use crate::codec::CodecError;

/// A version of an event that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The payload is of a newer version than the type knows.
    #[error(
        "`{event}` v{found} is newer than v{known}, the newest this program knows: deploy the \
         consumers that know v{found} before the producers that publish it"
    )]
    Newer {
        /// The event name.
        event: &'static str,
        /// The payload's version.
        found: u32,
        /// The type's version.
        known: u32,
    },
    /// Nothing turns this older version into the type's.
    #[error(
        "`{event}` v{from} cannot be read as v{to}: no upcaster covers v{from}; declare one on \
         the event type, `#[event(upcast(v{from} = function))]` on the JSON or \
         `#[event(upcast(from = OldType))]` with `From<OldType>`"
    )]
    NoUpcaster {
        /// The event name.
        event: &'static str,
        /// The version no upcaster covers.
        from: u32,
        /// The type's version.
        to: u32,
    },
    /// An upcaster returned an error.
    #[error("the upcaster of `{event}` from v{from} failed: {reason}")]
    Failed {
        /// The event name.
        event: &'static str,
        /// The version it upcasts from.
        from: u32,
        /// What it said.
        reason: String,
    },
    /// The payload did not decode at some version on the way.
    #[error("the payload of `{event}` does not match v{version}: {source}")]
    Decode {
        /// The event name.
        event: &'static str,
        /// The version it was decoded at.
        version: u32,
        /// What the codec said.
        source: CodecError,
    },
    /// The envelope holds another event.
    #[error("the envelope holds `{found}`, not `{expected}`: decode it as the type of `{found}`")]
    OtherEvent {
        /// The name of the type asked for.
        expected: &'static str,
        /// The name in the envelope.
        found: String,
    },
    /// The envelope holds an event that none of an [`EventSet`](crate::EventSet)'s
    /// variants has.
    #[error(
        "`{found}` is none of the events of `{set}`: add a variant for it, or keep it out of \
         the aggregate's stream"
    )]
    NotInSet {
        /// The set's type.
        set: &'static str,
        /// The name in the envelope.
        found: String,
    },
}
