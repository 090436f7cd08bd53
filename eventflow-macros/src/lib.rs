//! Procedural macros for [eventflow](https://docs.rs/eventflow): `#[derive(Event)]` and
//! `#[subscribe]`. Use them through the `eventflow` crate, which re-exports them and
//! documents them.

mod attr;
mod event;
mod subscribe;

use proc_macro::TokenStream;

/// Implements `eventflow::Event`. See the `eventflow` crate for the attributes.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event::expand(input).into()
}

/// Turns an `async fn` into an `eventflow::Handler`. See the `eventflow` crate.
#[proc_macro_attribute]
pub fn subscribe(args: TokenStream, item: TokenStream) -> TokenStream {
    subscribe::expand(args.into(), item.into()).into()
}
