//! Type-erased handlers: decode the payload, then call the typed handler.

use std::sync::Arc;

use crate::codec::Codec;
use crate::future::BoxFuture;
use crate::handler::{Handler, HandlerOptions};
use crate::state::StateMap;
use crate::upcast;
use crate::{BoxError, Context, Envelope, Error, Event};

/// A handler with its event type erased, as the bus stores it.
pub(crate) trait Route: Send + Sync + 'static {
    fn options(&self) -> &HandlerOptions;
    fn event_name(&self) -> &'static str;
    fn event_version(&self) -> u32;
    fn topic(&self) -> &'static str;
    fn check(&self, state: &StateMap) -> Result<(), String>;
    fn transactional(&self) -> bool;

    /// Decodes the payload (upcasting an older version) and starts the handler; a payload
    /// that does not decode is an error before any attempt.
    fn invoke(
        &self,
        envelope: &Envelope,
        ctx: Context,
        codec: &dyn Codec,
    ) -> Result<BoxFuture<'static, Result<(), BoxError>>, Error>;
}

pub(crate) struct Typed<H> {
    handler: H,
    options: HandlerOptions,
}

impl<H: Handler> Typed<H> {
    pub(crate) fn erase(handler: H) -> Arc<dyn Route> {
        let options = handler.options();
        Arc::new(Typed { handler, options })
    }
}

impl<H: Handler> Route for Typed<H> {
    fn options(&self) -> &HandlerOptions {
        &self.options
    }

    fn event_name(&self) -> &'static str {
        H::Event::NAME
    }

    fn event_version(&self) -> u32 {
        H::Event::VERSION
    }

    fn topic(&self) -> &'static str {
        H::Event::TOPIC
    }

    fn check(&self, state: &StateMap) -> Result<(), String> {
        self.handler.check(state)
    }

    fn transactional(&self) -> bool {
        self.handler.transactional()
    }

    fn invoke(
        &self,
        envelope: &Envelope,
        ctx: Context,
        codec: &dyn Codec,
    ) -> Result<BoxFuture<'static, Result<(), BoxError>>, Error> {
        let event = upcast::decode_payload::<H::Event>(codec, envelope)?;
        Ok(self.handler.call(event, ctx))
    }
}
