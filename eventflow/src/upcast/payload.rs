//! What an upcaster reads: a [`Payload`], still encoded or already JSON, and an [`Old`]
//! one of a version before the type's. [`Event::upcast`](crate::Event::upcast) takes an
//! `Old`, so this module imports nothing that knows events; the ways to read one as an
//! event live in [`upcast`](crate::upcast).

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::codec::{self, Codec, CodecError};

/// An event's payload on its way to the version a type knows: still encoded, or already
/// turned into JSON by an upcaster.
pub enum Payload<'a> {
    /// As stored or received, with the codec that encoded it.
    Encoded {
        /// The codec of the bus that encoded it.
        codec: &'a dyn Codec,
        /// The payload bytes.
        bytes: &'a [u8],
    },
    /// JSON, as an upcaster returned it.
    Json(Value),
}

impl Payload<'_> {
    /// Decodes the payload into `T` as it is, without looking at versions.
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, CodecError> {
        match self {
            Payload::Encoded { codec, bytes } => codec::decode(codec, bytes),
            Payload::Json(value) => serde_json::from_value(value).map_err(CodecError::new),
        }
    }

    pub(super) fn into_json(self) -> Result<Value, CodecError> {
        self.decode()
    }
}

impl fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Encoded { bytes, .. } => f.debug_struct("Encoded").field("len", &bytes.len()).finish(),
            Payload::Json(value) => f.debug_tuple("Json").field(value).finish(),
        }
    }
}

/// A payload of an older version than the type reading it: what
/// [`Event::upcast`](crate::Event::upcast) gets.
#[derive(Debug)]
pub struct Old<'a> {
    pub(super) version: u32,
    pub(super) payload: Payload<'a>,
}

impl Old<'_> {
    /// The payload's version.
    pub fn version(&self) -> u32 {
        self.version
    }
}
