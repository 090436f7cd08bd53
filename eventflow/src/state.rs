//! The application state a bus holds for its handlers, one value per type: the ground floor
//! below the builder that fills it, the [`Context`](crate::Context) that serves it and the
//! handlers that are checked against it.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// The application state values a bus holds, one per type, and what `start()` checks
/// handlers against.
///
/// A list rather than a hash map: a bus holds a handful of values, and a handler that takes
/// `State<T>` looks its value up on every event, where comparing a few `TypeId`s is cheaper
/// than hashing one.
#[derive(Clone, Default)]
pub struct StateMap(
    Vec<(TypeId, Arc<dyn Any + Send + Sync>)>,
    /// The type (and name) of the storage's units of work, when a handler takes `Tx`.
    Option<(TypeId, &'static str)>,
);

impl StateMap {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        let (id, value): (_, Arc<dyn Any + Send + Sync>) = (TypeId::of::<T>(), Arc::new(value));
        match self.0.iter_mut().find(|(held, _)| *held == id) {
            Some((_, held)) => *held = value,
            None => self.0.push((id, value)),
        }
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
        let id = TypeId::of::<T>();
        let (_, value) = self.0.iter().find(|(held, _)| *held == id)?;
        value.downcast_ref::<T>().cloned()
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMap").field("len", &self.0.len()).finish()
    }
}
