//! A test kit for aggregates: given past events, when a command runs, then these new
//! events (or this error). No storage, no bus.
//!
//! ```
//! use eventflow::testing::AggregateTest;
//! use eventflow::{Aggregate, Event, Loaded};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
//! #[event(name = "order.event")]
//! enum OrderEvent {
//!     Placed { total_cents: u64 },
//!     Paid { cents: u64 },
//! }
//!
//! #[derive(Default)]
//! struct Order { due_cents: u64 }
//!
//! impl Aggregate for Order {
//!     type Event = OrderEvent;
//!     const KIND: &'static str = "order";
//!     fn apply(&mut self, event: &OrderEvent) {
//!         match event {
//!             OrderEvent::Placed { total_cents } => self.due_cents = *total_cents,
//!             OrderEvent::Paid { cents } => self.due_cents -= cents,
//!         }
//!     }
//! }
//!
//! #[derive(Debug, PartialEq)]
//! enum PayError { TooMuch { due_cents: u64 } }
//!
//! /// The command: checks the state, then records what happened.
//! fn pay(order: &mut Loaded<Order>, cents: u64) -> Result<(), PayError> {
//!     if cents > order.due_cents {
//!         return Err(PayError::TooMuch { due_cents: order.due_cents });
//!     }
//!     order.record(OrderEvent::Paid { cents });
//!     Ok(())
//! }
//!
//! AggregateTest::<Order>::given([OrderEvent::Placed { total_cents: 500 }])
//!     .when(|order| pay(order, 200))
//!     .then([OrderEvent::Paid { cents: 200 }]);
//!
//! AggregateTest::<Order>::given([OrderEvent::Placed { total_cents: 500 }])
//!     .when(|order| pay(order, 900))
//!     .then_error(PayError::TooMuch { due_cents: 500 });
//! ```
//!
//! A mismatch panics with the expected and the recorded events side by side, numbered, and
//! the first that differs. `then` also checks that each recorded event survives being
//! encoded and decoded again (a `#[serde(skip)]` field would not), as saving it would.

use std::fmt::{self, Debug, Write as _};

use super::{Aggregate, EventSet, Loaded};
use crate::codec::Json;

/// An aggregate under test: built from past events with [`given`](AggregateTest::given),
/// then put through a command with [`when`](AggregateTest::when).
pub struct AggregateTest<A: Aggregate> {
    aggregate: Loaded<A>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate `test-1` as these past events leave it, as if loaded from its stream.
    pub fn given(past: impl IntoIterator<Item = A::Event>) -> Self {
        Self::given_for("test-1", past)
    }

    /// [`given`](AggregateTest::given) for the aggregate of id `id`, for commands that look
    /// at it.
    pub fn given_for(id: &str, past: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        let mut version = 0;
        for event in past {
            state.apply(&event);
            version += 1;
        }
        AggregateTest {
            aggregate: Loaded {
                id: id.to_owned(),
                stream: super::Repository::<A>::stream(id),
                state,
                version,
                pending: Vec::new(),
            },
        }
    }

    /// Runs a command on the aggregate: a closure that checks its state and
    /// [`record`](Loaded::record)s events, returning `()` or a `Result`.
    pub fn when<R: CommandOutcome>(mut self, command: impl FnOnce(&mut Loaded<A>) -> R) -> When<A, R> {
        let outcome = command(&mut self.aggregate);
        When {
            aggregate: self.aggregate,
            outcome,
        }
    }
}

impl<A: Aggregate> Debug for AggregateTest<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateTest")
            .field("aggregate", &std::any::type_name::<A>())
            .field("version", &self.aggregate.version)
            .finish()
    }
}

/// What a command returned, and the aggregate it left: check it with
/// [`then`](When::then) or [`then_error`](When::then_error).
pub struct When<A: Aggregate, R> {
    aggregate: Loaded<A>,
    outcome: R,
}

impl<A: Aggregate, R: CommandOutcome> When<A, R>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts that the command succeeded and recorded exactly `expected`, in order.
    /// Returns the aggregate, for further checks of its state.
    ///
    /// # Panics
    ///
    /// If the command failed, recorded other events, or recorded one that does not decode
    /// back to itself.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> Loaded<A> {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        if let Err(error) = self.outcome.into_result() {
            panic!(
                "expected the command to succeed, but it failed: {error:?}\n{}",
                listing("expected", &expected)
            );
        }
        let recorded = &self.aggregate.pending;
        if *recorded != expected {
            panic!("{}", difference(&expected, recorded));
        }
        for (number, event) in recorded.iter().enumerate() {
            check_round_trip(number + 1, event);
        }
        self.aggregate
    }

    /// Asserts that the command failed with `expected` and recorded nothing.
    ///
    /// # Panics
    ///
    /// If the command succeeded, failed with another error, or recorded events before
    /// failing (a save after it would write them).
    #[track_caller]
    pub fn then_error(self, expected: R::Error)
    where
        R::Error: PartialEq,
    {
        self.then_error_that(|error| *error == expected, &format!("{expected:?}"));
    }

    /// [`then_error`](When::then_error) for errors that are not `PartialEq`: asserts that
    /// the error's message (`Display`) contains `text`.
    #[track_caller]
    pub fn then_error_containing(self, text: &str)
    where
        R::Error: fmt::Display,
    {
        self.then_error_that(
            |error| error.to_string().contains(text),
            &format!("an error containing {text:?}"),
        );
    }

    #[track_caller]
    fn then_error_that(self, matches: impl FnOnce(&R::Error) -> bool, expected: &str) {
        let recorded = &self.aggregate.pending;
        match self.outcome.into_result() {
            Ok(()) => panic!(
                "expected the command to fail with {expected}, but it succeeded\n{}",
                listing("recorded", recorded)
            ),
            Err(error) if !matches(&error) => {
                panic!("expected the command to fail with {expected}, but it failed with {error:?}")
            }
            Err(_) if !recorded.is_empty() => panic!(
                "the command failed as expected, but recorded events first; a save would write \
                 them, so record only once every check passed\n{}",
                listing("recorded", recorded)
            ),
            Err(_) => {}
        }
    }
}

impl<A: Aggregate, R> Debug for When<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("When")
            .field("aggregate", &std::any::type_name::<A>())
            .field("recorded", &self.aggregate.pending.len())
            .finish()
    }
}

/// What a command may return: `()`, or a `Result` whose `Err` is its refusal.
pub trait CommandOutcome {
    /// The command's error; [`std::convert::Infallible`] for `()`.
    type Error: Debug;

    /// `Ok` if the command succeeded.
    fn into_result(self) -> Result<(), Self::Error>;
}

impl CommandOutcome for () {
    type Error = std::convert::Infallible;

    fn into_result(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl<T, E: Debug> CommandOutcome for Result<T, E> {
    type Error = E;

    fn into_result(self) -> Result<(), E> {
        self.map(|_| ())
    }
}

/// The events numbered, one per line, under a heading.
fn listing<E: Debug>(what: &str, events: &[E]) -> String {
    let mut out = format!(
        "{what} {} event{}:",
        events.len(),
        if events.len() == 1 { "" } else { "s" }
    );
    for (number, event) in events.iter().enumerate() {
        let _ = write!(out, "\n  {}. {event:?}", number + 1);
    }
    out
}

fn difference<E: Debug + PartialEq>(expected: &[E], recorded: &[E]) -> String {
    let first = expected
        .iter()
        .zip(recorded)
        .position(|(e, r)| e != r)
        .unwrap_or(expected.len().min(recorded.len()));
    let detail = match (expected.get(first), recorded.get(first)) {
        (Some(e), Some(r)) => format!("event {}: expected {e:?}, recorded {r:?}", first + 1),
        (Some(e), None) => format!("event {} was expected and not recorded: {e:?}", first + 1),
        (None, Some(r)) => format!("event {} was recorded and not expected: {r:?}", first + 1),
        (None, None) => unreachable!("the lists differ"),
    };
    format!(
        "the command recorded other events than expected\n{}\n{}\nfirst difference at {detail}",
        listing("expected", expected),
        listing("recorded", recorded)
    )
}

/// Saving encodes the event and loading decodes it: they must give it back as it was.
#[track_caller]
fn check_round_trip<E: EventSet + PartialEq + Debug>(number: usize, event: &E) {
    let back = event
        .envelope(&Json)
        .and_then(|envelope| E::decode(&Json, &envelope));
    match back {
        Ok(back) if back == *event => {}
        Ok(back) => panic!(
            "recorded event {number} does not survive being saved: {event:?} loads back as \
             {back:?}; check its serde attributes (a skipped or defaulted field)"
        ),
        Err(error) => panic!("recorded event {number} cannot be saved and loaded: {error} ({event:?})"),
    }
}
