//! The [`Handler`] trait that `#[subscribe]` implements, and its options.

use std::borrow::Cow;
use std::future::Future;

use crate::state::StateMap;
use crate::{BoxError, Context, Event};

/// Reacts to one event type within one consumer group.
///
/// `#[subscribe]` implements this on a unit struct named after the function, so
/// `EventBus::builder().handler(reserve_stock)` registers it. Implementing it by hand is
/// possible but rarely needed: for a handler that carries values of its own, say.
///
/// ```
/// use std::future::Future;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// use eventflow::{BoxError, Context, Event, EventBus, Handler, HandlerOptions, InProcess};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize)]
/// #[event(name = "order.paid", topic = "orders")]
/// struct OrderPaid {
///     #[event(key)]
///     order_id: String,
///     total: u64,
/// }
///
/// /// Adds up what was paid.
/// struct Revenue(Arc<AtomicU64>);
///
/// impl Handler for Revenue {
///     type Event = OrderPaid;
///
///     fn options(&self) -> HandlerOptions {
///         HandlerOptions::new("revenue", "reporting")
///     }
///
///     fn call(&self, event: OrderPaid, _ctx: Context) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
///         let total = self.0.clone();
///         async move {
///             total.fetch_add(event.total, Ordering::Relaxed);
///             Ok(())
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventflow::Error> {
/// let total = Arc::new(AtomicU64::new(0));
/// let transport = InProcess::new();
/// let bus = EventBus::builder()
///     .transport(transport.clone())
///     .handler(Revenue(total.clone()))
///     .start()
///     .await?;
/// bus.publish(&OrderPaid { order_id: "XYZ-123".into(), total: 4_200 }).await?;
/// transport.wait_idle().await;
/// assert_eq!(total.load(Ordering::Relaxed), 4_200);
/// bus.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The event this handler reacts to.
    type Event: Event;

    /// The handler's name, group and retry budget.
    fn options(&self) -> HandlerOptions;

    /// Checks at start-up that every argument the handler takes can be provided.
    fn check(&self, state: &StateMap) -> Result<(), String> {
        let _ = state;
        Ok(())
    }

    /// Whether the handler takes a [`Tx`](crate::Tx), so it runs in a unit of work that
    /// commits its writes with its inbox marker.
    fn transactional(&self) -> bool {
        false
    }

    /// Handles one event.
    ///
    /// The future is the handler's own type, not boxed: the bus runs the events of a
    /// partition through it in one future of its own. `#[subscribe]` writes it as an
    /// `async move` block.
    fn call(
        &self,
        event: Self::Event,
        ctx: Context,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static;
}

/// How a handler is named, grouped and retried.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// The handler's name, its function path by default.
    pub name: &'static str,
    /// The consumer group. Every group receives every event; the workers of one group share
    /// them.
    pub group: Cow<'static, str>,
    /// How many times a failed invocation is retried before the event is dead-lettered.
    /// `None` takes the bus default.
    pub retries: Option<u32>,
}

impl HandlerOptions {
    /// Options for handler `name` in `group`, with the bus default retry budget.
    pub fn new(name: &'static str, group: impl Into<Cow<'static, str>>) -> Self {
        HandlerOptions {
            name,
            group: group.into(),
            retries: None,
        }
    }

    /// Sets the retry budget.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }
}
