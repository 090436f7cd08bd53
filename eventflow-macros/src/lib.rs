//! Procedural macros for [eventflow](https://docs.rs/eventflow): `#[derive(Event)]` and
//! `#[subscribe]`. Use them through the `eventflow` crate, which re-exports them and
//! documents them.

mod attr;
mod event;
mod event_set;
mod subscribe;

use proc_macro::TokenStream;

/// Implements `eventflow::Event` for a struct or enum that is serde `Serialize +
/// Deserialize`.
///
/// Container attributes, all optional:
///
/// | attribute | meaning | default |
/// |---|---|---|
/// | `#[event(name = "order.paid")]` | the stable name in every envelope | the type name |
/// | `#[event(version = 2)]` | the payload schema version, from 1 | 1 |
/// | `#[event(topic = "orders")]` | the topic it is published to | the name |
/// | `#[event(upcast(from = OldType))]` | reads older versions through `OldType` and `From<OldType>` | none |
/// | `#[event(upcast(v1 = function))]` | reads v1 by turning its JSON into v2's with `function` | none |
/// | `#[event(crate = "my::eventflow")]` | path to the eventflow crate if renamed | `::eventflow` |
///
/// `#[event(key)]` on one field makes it the partition key (through `ToString`): events
/// with the same key are handled in order. In an enum, each variant may mark one field.
/// Without a key, events spread over partitions.
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
///     total_amount: u64,
/// }
/// ```
///
/// `OldType` is a plain serde type of the version just before, or an `Event` of an older
/// version with upcasters of its own (a chain v1 → v2 → v3); a JSON upcaster is a
/// `fn(serde_json::Value) -> Result<serde_json::Value, String>` turning version N into N+1,
/// and is tried before `from`. See `eventflow::upcast`.
///
/// Misuse is a compile error on the offending token: an unknown or repeated attribute,
/// `version = 0`, an upcaster for a version not older than the event's, a name or topic with characters brokers reject, `key` on two fields, or a
/// type without serde impls.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event::expand(input).into()
}

/// Implements `eventflow::EventSet` for an enum whose variants each wrap one event type,
/// so an aggregate's events can be existing events, each saved and published under its own
/// name, version and topic.
///
/// ```
/// use eventflow::{Event, EventSet};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # struct BookBorrowed { book: String }
/// # #[derive(Event, Serialize, Deserialize)]
/// # struct BookReturned { book: String }
///
/// #[derive(EventSet)]
/// enum BookEvent {
///     Borrowed(BookBorrowed),
///     Returned(BookReturned),
/// }
/// ```
///
/// `#[event_set(crate = "my::eventflow")]` gives the path to the eventflow crate if renamed.
/// A variant of another shape, or an event type in two variants, is a compile error on it.
#[proc_macro_derive(EventSet, attributes(event_set))]
pub fn derive_event_set(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event_set::expand(input).into()
}

/// Turns an `async fn` into an `eventflow::Handler` of one consumer group.
///
/// The first argument is the event; every other argument is an extractor
/// (`eventflow::FromContext`): `Context` for the event's metadata and follow-up publishing,
/// `State<T>` for application state. The function returns `Result<(), E>` where `E`
/// converts into a boxed error (any `std::error::Error + Send + Sync`, `String`,
/// `anyhow::Error`).
///
/// | option | meaning | default |
/// |---|---|---|
/// | `group = "inventory"` | the consumer group | the function path |
/// | `retries = 5` | retries after the first attempt before dead-lettering | the bus default, 3 |
/// | `crate = "my::eventflow"` | path to the eventflow crate if renamed | `::eventflow` |
///
/// ```
/// use eventflow::{subscribe, Context, Event, State};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # struct OrderPaid { order_id: String }
/// # #[derive(Clone)] struct Db;
///
/// #[subscribe(group = "inventory", retries = 5)]
/// async fn reserve_stock(order: OrderPaid, ctx: Context, State(db): State<Db>) -> Result<(), std::io::Error> {
///     Ok(())
/// }
///
/// let bus = eventflow::EventBus::builder().state(Db).handler(reserve_stock);
/// ```
///
/// The function becomes a unit struct of the same name (register it with
/// `EventBus::builder().handler(reserve_stock)`) and is also registered for
/// `EventBusBuilder::discovered_handlers`. An argument that is not an extractor is a
/// compile error on that argument.
#[proc_macro_attribute]
pub fn subscribe(args: TokenStream, item: TokenStream) -> TokenStream {
    subscribe::expand(args.into(), item.into()).into()
}
