//! Type-erased handlers: decode the payload, then call the typed handler, one event at a
//! time or a run of them in one call.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

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

    /// Handles the events `run` hands out, one after the other, each decoded, in its span,
    /// its panic caught, telling `run` how each ended, until `run` has no more or ends the
    /// run. One future for the run instead of a boxed one per event: what the first
    /// attempts of a partition's events mostly are.
    fn run<'r>(&'r self, codec: &'r dyn Codec, run: &'r mut (dyn Run + 'r)) -> BoxFuture<'r, ()>;
}

/// The events of a run through [`Route::run`], and where their outcomes go: the member's
/// side of a run, which decides which events belong to it.
pub(crate) trait Run: Send {
    /// The next event, as the context its handler gets, with the span its call runs in;
    /// `None` ends the run.
    fn next(&mut self) -> Option<(Context, tracing::Span)>;

    /// How the event that [`next`](Run::next) gave last ended: `Err` if its payload did not
    /// decode. Returns whether the run goes on.
    fn ended(&mut self, ended: Result<Finished, Error>) -> bool;
}

/// What a handler's call ended with, a panic caught as an error.
pub(crate) type Finished = Result<Result<(), BoxError>, Box<dyn Any + Send>>;

/// Runs a handler's call to its end in `span`, its panic caught. The call is polled where
/// it lies: a handler's future is a few hundred bytes, which each wrapping combinator would
/// copy once more.
pub(crate) async fn watched<F>(mut call: Pin<&mut F>, span: &tracing::Span) -> Finished
where
    F: Future<Output = Result<(), BoxError>> + ?Sized,
{
    poll_fn(|cx| {
        let _entered = span.enter();
        match panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
            Ok(Poll::Ready(done)) => Poll::Ready(Ok(done)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panicked) => Poll::Ready(Err(panicked)),
        }
    })
    .await
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
        Ok(Box::pin(self.handler.call(event, ctx)))
    }

    fn run<'r>(&'r self, codec: &'r dyn Codec, run: &'r mut (dyn Run + 'r)) -> BoxFuture<'r, ()> {
        Box::pin(async move {
            while let Some((ctx, span)) = run.next() {
                let ended = match upcast::decode_payload::<H::Event>(codec, ctx.envelope()) {
                    Ok(event) => Ok(watched(pin!(self.handler.call(event, ctx)), &span).await),
                    Err(undecodable) => Err(undecodable),
                };
                if !run.ended(ended) {
                    break;
                }
            }
        })
    }
}
