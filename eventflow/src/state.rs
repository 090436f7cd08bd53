//! The application state a bus holds for its handlers, one value per type: the ground floor
//! below the builder that fills it, the [`Context`](crate::Context) that serves it and the
//! handlers that are checked against it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The application state values a bus holds, one per type, and what `start()` checks
/// handlers against.
#[derive(Clone, Default)]
pub struct StateMap(
    HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// The type (and name) of the storage's units of work, when a handler takes `Tx`.
    Option<(TypeId, &'static str)>,
);

impl StateMap {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn set_transaction_type(&mut self, held: (TypeId, &'static str)) {
        self.1 = Some(held);
    }

    /// The type of the bus storage's units of work and its name, if the bus knows it (it
    /// learns it at start when a handler takes [`Tx`](crate::Tx)).
    pub fn transaction_type(&self) -> Option<(TypeId, &'static str)> {
        self.1
    }

    /// A clone of the value of type `T`, if the bus has one.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref::<T>().cloned()
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMap").field("len", &self.0.len()).finish()
    }
}
