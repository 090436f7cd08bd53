//! The [`Event`] trait: what a type must say about itself to travel as a fact.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::upcast::{Old, UpcastError};

/// A fact that happened, published to whoever listens.
///
/// Implement it with `#[derive(Event)]`:
///
/// ```
/// use eventflow::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize)]
/// #[event(name = "order.paid", version = 1, topic = "orders")]
/// struct OrderPaid {
///     #[event(key)]
///     order_id: String,
///     total_cents: u64,
/// }
///
/// assert_eq!(OrderPaid::NAME, "order.paid");
/// assert_eq!(OrderPaid::TOPIC, "orders");
/// let paid = OrderPaid { order_id: "XYZ-123".into(), total_cents: 4200 };
/// assert_eq!(paid.partition_key().as_deref(), Some("XYZ-123"));
/// ```
///
/// The name and version travel in every [`Envelope`](crate::Envelope); a consumer uses them
/// to pick the type to decode into, so renaming a type in code does not break consumers as
/// long as `name` stays the same.
///
/// An event is encoded and decoded with serde, so a type without `Serialize` and
/// `Deserialize` is refused at compile time, on the type:
///
/// ```compile_fail,E0277
/// use eventflow::Event;
///
/// #[derive(Event)]
/// #[event(name = "order.paid")]
/// struct OrderPaid {
///     #[event(key)]
///     order_id: String,
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event's stable name, e.g. `"order.paid"`. Defaults to the type name.
    const NAME: &'static str;
    /// The schema version of the payload, starting at 1.
    const VERSION: u32;
    /// The topic the event is published to. Defaults to the event name.
    const TOPIC: &'static str;

    /// The partition key: events with the same key land on the same partition and are
    /// handled in publish order within each consumer group. `None` spreads events over
    /// partitions.
    fn partition_key(&self) -> Option<String>;

    /// Reads a payload of an older version than [`VERSION`](Event::VERSION). By default no
    /// older version can be read; `#[derive(Event)]` implements it from
    /// `#[event(upcast(...))]` (see [`upcast`](crate::upcast)).
    fn upcast(old: Old<'_>) -> Result<Self, UpcastError> {
        // `Old::no_upcaster` says the same; it lives above this module, with the other ways
        // to read an `Old` as an event, so the error is made here.
        Err(UpcastError::NoUpcaster {
            event: Self::NAME,
            from: old.version(),
            to: Self::VERSION,
        })
    }
}
