//! The boxed future type handlers, transports and projections return: on a floor of its own,
//! since the transport (below the bus) and the handlers (above the context) both name it.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future, as handlers return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
