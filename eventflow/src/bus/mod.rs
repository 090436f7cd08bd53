//! The [`EventBus`]: publishes events and runs the handlers of every consumer group.
//!
//! This file is only the door: the bus's state lives in `shared` (the floor every part
//! stands on), the handle in `event_bus`, its configuration in `builder`, each group
//! member's loop in `member`.

mod builder;
mod dead_letters;
mod event_bus;
mod inbox;
mod member;
mod route;
mod sequenced;
mod settle;
mod shared;
mod unit_of_work;

pub use builder::{EventBusBuilder, Registration};
pub use event_bus::EventBus;
pub use unit_of_work::UnitOfWork;
