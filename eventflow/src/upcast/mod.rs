//! Reading older versions of an event: upcasting.
//!
//! An event's payload schema has a version ([`Event::VERSION`]). When a change needs a new
//! version, the event type declares how its older versions become it, in `#[event(...)]`:
//!
//! - `upcast(from = OrderPaidV2)`: typed. `OrderPaidV2` is the type of an older version
//!   (a plain serde type for the version just before, or an [`Event`] of its own, which
//!   brings its own upcasters along), and `OrderPaid: From<OrderPaidV2>`.
//! - `upcast(v1 = path::to::function)`: on the raw payload, for when the old type is gone.
//!   The function is a [`JsonUpcaster`]: it turns the JSON of version 1 into the JSON of
//!   version 2.
//!
//! Every place eventflow decodes an event reads older versions through them: handlers,
//! [`Repository::load`](crate::Repository::load), dead-letter replays, and
//! [`decode`] for code of your own (projections). A version that cannot be
//! read (newer than the type, or older with no upcaster) is an [`UpcastError`], never a
//! silent misread.
//!
//! See the [versioning guide](crate::versioning) for which changes need a new version
//! and how to roll one out.

mod error;
mod payload;

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::UpcastError;
pub use payload::{Old, Payload};

use crate::codec::{self, Codec, Json};
use crate::{Envelope, Error, Event};

/// Turns the JSON payload of one version into the JSON payload of the next; `Err` says why
/// it cannot (the event is then dead-lettered, or the load fails, with that reason).
pub type JsonUpcaster = fn(Value) -> Result<Value, String>;

// The ways to read an `Old` as an event: here, above `Event`, while the type itself sits
// below it (`Event::upcast` takes one).
impl<'a> Old<'a> {
    /// The error for an event that declares no way to read this version.
    pub fn no_upcaster<E: Event>(&self) -> UpcastError {
        UpcastError::NoUpcaster {
            event: E::NAME,
            from: self.version,
            to: E::VERSION,
        }
    }

    /// Reads it as `E` with `E`'s JSON upcasters (`(version, upcaster)` pairs, each
    /// turning that version into the next); what `#[derive(Event)]` generates.
    pub fn upcast_json<E: Event>(self, steps: &[(u32, JsonUpcaster)]) -> Result<E, UpcastError> {
        let (version, payload) = self.run_steps::<E>(steps)?;
        if version == E::VERSION {
            return decode_at::<E>(E::NAME, version, payload);
        }
        Err(UpcastError::NoUpcaster {
            event: E::NAME,
            from: version,
            to: E::VERSION,
        })
    }

    /// Reads it as `E` with `E`'s JSON upcasters, then, for a version they do not cover,
    /// through the older type `T` and `From<T>`; what `#[derive(Event)]` generates for
    /// `upcast(from = T)`.
    pub fn upcast_typed<E: Event, T>(
        self,
        steps: &[(u32, JsonUpcaster)],
        source: Source<T>,
        convert: fn(T) -> E,
    ) -> Result<E, UpcastError> {
        let (version, payload) = self.run_steps::<E>(steps)?;
        if version == E::VERSION {
            return decode_at::<E>(E::NAME, version, payload);
        }
        let older = Old { version, payload };
        (source.read)(E::NAME, E::VERSION, older).map(convert)
    }

    /// Applies the JSON upcasters while one covers the payload's version.
    fn run_steps<E: Event>(self, steps: &[(u32, JsonUpcaster)]) -> Result<(u32, Payload<'a>), UpcastError> {
        let Old {
            mut version,
            mut payload,
        } = self;
        while let Some((_, step)) = steps.iter().find(|(from, _)| *from == version) {
            let json = payload.into_json().map_err(|source| UpcastError::Decode {
                event: E::NAME,
                version,
                source,
            })?;
            let next = step(json).map_err(|reason| UpcastError::Failed {
                event: E::NAME,
                from: version,
                reason,
            })?;
            payload = Payload::Json(next);
            version += 1;
        }
        Ok((version, payload))
    }
}

fn decode_at<T: DeserializeOwned>(
    event: &'static str,
    version: u32,
    payload: Payload<'_>,
) -> Result<T, UpcastError> {
    payload.decode().map_err(|source| UpcastError::Decode {
        event,
        version,
        source,
    })
}

/// How `upcast(from = T)` reads the older type `T`: through `T`'s own upcasters if `T` is
/// an [`Event`], else as a plain serde type of the version just before.
pub struct Source<T> {
    /// Reads `Old` for the event of this name and version.
    read: fn(&'static str, u32, Old<'_>) -> Result<T, UpcastError>,
}

impl<T> fmt::Debug for Source<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// Reads a payload of `version` as `E`: as it is at `E::VERSION`, through `E`'s upcasters
/// if older, and an error if newer.
pub fn read<E: Event>(version: u32, payload: Payload<'_>) -> Result<E, UpcastError> {
    match version.cmp(&E::VERSION) {
        std::cmp::Ordering::Equal => payload.decode().map_err(|source| UpcastError::Decode {
            event: E::NAME,
            version,
            source,
        }),
        std::cmp::Ordering::Greater => Err(UpcastError::Newer {
            event: E::NAME,
            found: version,
            known: E::VERSION,
        }),
        std::cmp::Ordering::Less => E::upcast(Old { version, payload }),
    }
}

/// Decodes the event in `envelope` as `E`, upcasting an older version, with the default
/// [`Json`] codec. An envelope of another event, or of a version `E` cannot read, is an
/// error.
///
/// ```
/// use eventflow::{Envelope, Event};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderPaidV1 { order_id: String }
///
/// #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
/// #[event(name = "order.paid", version = 2, upcast(from = OrderPaidV1))]
/// struct OrderPaid { order_id: String, total_cents: u64 }
///
/// impl From<OrderPaidV1> for OrderPaid {
///     fn from(v1: OrderPaidV1) -> Self {
///         OrderPaid { order_id: v1.order_id, total_cents: 0 }
///     }
/// }
///
/// let old = Envelope::new("order.paid", 1, "order.paid", "application/json", r#"{"order_id":"A-1"}"#);
/// let paid: OrderPaid = eventflow::decode(&old)?;
/// assert_eq!(paid, OrderPaid { order_id: "A-1".into(), total_cents: 0 });
/// # Ok::<(), eventflow::Error>(())
/// ```
pub fn decode<E: Event>(envelope: &Envelope) -> Result<E, Error> {
    decode_with(&Json, envelope)
}

/// [`decode`] with the codec the events were encoded with (the bus's,
/// [`EventBus::decode`](crate::EventBus::decode) uses it).
pub fn decode_with<E: Event>(codec: &dyn Codec, envelope: &Envelope) -> Result<E, Error> {
    if envelope.name != E::NAME {
        return Err(Error::Upcast {
            id: envelope.id,
            name: envelope.name.to_string(),
            version: envelope.version,
            source: UpcastError::OtherEvent {
                expected: E::NAME,
                found: envelope.name.to_string(),
            },
        });
    }
    decode_payload(codec, envelope)
}

/// Decodes `envelope`'s payload as `E` without checking its name: the route or the stream
/// already chose `E`. The current version keeps its [`Error::Decode`]; older and newer ones
/// go through [`read`].
pub(crate) fn decode_payload<E: Event>(codec: &dyn Codec, envelope: &Envelope) -> Result<E, Error> {
    if envelope.version == E::VERSION {
        return codec::decode(codec, &envelope.payload).map_err(|source| Error::Decode {
            id: envelope.id,
            name: envelope.name.to_string(),
            version: envelope.version,
            source,
        });
    }
    let payload = Payload::Encoded {
        codec,
        bytes: &envelope.payload,
    };
    // Upcasters are the application's code: one that panics fails this event (it is
    // dead-lettered, or the load fails), not the worker that runs every event of a group.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read::<E>(envelope.version, payload)
    }));
    let read = read.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        Err(UpcastError::Failed {
            event: E::NAME,
            from: envelope.version,
            reason: format!("it panicked: {message}"),
        })
    });
    read.map_err(|source| Error::Upcast {
        id: envelope.id,
        name: envelope.name.to_string(),
        version: envelope.version,
        source,
    })
}

/// What `#[derive(Event)]` uses to tell an older [`Event`] (read with its own upcasters)
/// from a plain serde type (read at the version just before). Not public API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use serde::de::DeserializeOwned;

    use super::{decode_at, read, Old, Source, UpcastError};
    use crate::Event;

    /// `(&&Probe::<T>::new()).source()` picks [`ViaEvent`] for an event and [`ViaSerde`]
    /// for anything else (autoref specialization).
    pub struct Probe<T>(PhantomData<T>);

    impl<T> Probe<T> {
        pub fn new() -> Self {
            Probe(PhantomData)
        }
    }

    impl<T> Default for Probe<T> {
        fn default() -> Self {
            Probe::new()
        }
    }

    pub trait ViaEvent<T> {
        fn source(&self) -> Source<T>;
    }

    impl<T: Event> ViaEvent<T> for &Probe<T> {
        fn source(&self) -> Source<T> {
            Source {
                read: read_event::<T>,
            }
        }
    }

    pub trait ViaSerde<T> {
        fn source(&self) -> Source<T>;
    }

    impl<T: DeserializeOwned> ViaSerde<T> for Probe<T> {
        fn source(&self) -> Source<T> {
            Source {
                read: read_plain::<T>,
            }
        }
    }

    /// An older event reads every version up to its own.
    fn read_event<T: Event>(event: &'static str, newer: u32, old: Old<'_>) -> Result<T, UpcastError> {
        if T::VERSION >= newer {
            // Declared as older but is not: reading would go round in circles.
            return Err(UpcastError::Failed {
                event,
                from: old.version,
                reason: format!(
                    "`upcast(from = {})` names an event of version {}, not older than v{newer}; \
                     name the type of an older version",
                    std::any::type_name::<T>(),
                    T::VERSION,
                ),
            });
        }
        read::<T>(old.version, old.payload)
    }

    /// A plain serde type is the version just before, and only that.
    fn read_plain<T: DeserializeOwned>(
        event: &'static str,
        newer: u32,
        old: Old<'_>,
    ) -> Result<T, UpcastError> {
        if old.version + 1 != newer {
            return Err(UpcastError::NoUpcaster {
                event,
                from: old.version,
                to: newer,
            });
        }
        decode_at::<T>(event, old.version, old.payload)
    }
}
