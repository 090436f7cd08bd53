//! A run: the first attempts of consecutive records of a lane whose events go to the same
//! plain or inbox-guarded handler, made in one call of the handler's route
//! ([`Route::run`](super::super::route::Route::run)) instead of a boxed future per event.
//! The run takes records while they qualify and ends at the first attempt that fails,
//! which the lane takes on from there with the event's retry budget.

use std::iter::Peekable;
use std::vec;

use uuid::Uuid;

use super::super::route::{Finished, Run};
use super::attempt::{handle_span, panic_error, undecodable_failure};
use super::dead_letter::set_aside;
use super::delivery::{Delivery, Lane, Queued, Routed};
use super::outcome::Failure;
use crate::transport::Record;
use crate::{BoxError, Context, Envelope, Error};

/// The records of a lane still to handle.
pub(super) type Rest<'a> = Peekable<vec::IntoIter<Queued<'a>>>;

/// Whether an event's first attempt can be made in a run of `routed`: its handler runs
/// outside any unit of work and knows its version.
pub(super) fn runs(routed: Routed<'_>, envelope: &Envelope) -> bool {
    routed.delivery.outside_units() && routed.route.knows(envelope)
}

/// One run of a lane, as [`Run`] for its route: starts at a record the lane let through,
/// then takes the lane's next records while they go to the same handler, are neither
/// skipped nor set aside, and shutdown has not come.
pub(super) struct LaneRun<'l, 'a> {
    lane: &'l Lane<'a>,
    routed: Routed<'a>,
    first: Option<&'a Record>,
    rest: &'l mut Rest<'a>,
    current: Option<&'a Record>,
    done: &'l mut Vec<&'a Record>,
    handled: &'l mut Vec<Uuid>,
    /// The record whose first attempt did not succeed, where the run ended: its error, for
    /// the attempts to go on from, or why it is not for its handler (a payload that does
    /// not decode).
    pub(super) failed: Option<(&'a Record, Result<BoxError, Failure>)>,
}

impl<'l, 'a> LaneRun<'l, 'a> {
    /// A run starting at `first`, which the lane checked; records handled go to `done`
    /// (and their events to `handled` when the inbox records them).
    pub(super) fn new(
        lane: &'l Lane<'a>,
        routed: Routed<'a>,
        first: &'a Record,
        rest: &'l mut Rest<'a>,
        done: &'l mut Vec<&'a Record>,
        handled: &'l mut Vec<Uuid>,
    ) -> Self {
        LaneRun {
            lane,
            routed,
            first: Some(first),
            rest,
            current: None,
            done,
            handled,
            failed: None,
        }
    }

    /// Whether the lane's next record joins the run. Its route is the run's (a member
    /// decides a route's delivery once), so its handler's version is all left to check.
    fn joins(&self, (record, routed, skipped): &Queued<'a>) -> bool {
        let envelope = &record.envelope;
        !skipped
            && routed.is_some_and(|routed| std::ptr::eq(routed.route, self.routed.route))
            && self.routed.route.knows(envelope)
            && !self.lane.stopping()
            // The run's events share the name of its first, which the lane found not
            // foreign: only a parked key sets one aside, in a group that sequences its dead
            // letters.
            && (self.lane.parking.is_none()
                || set_aside(&self.lane.member.group, envelope, self.lane.parking).is_none())
    }
}

impl Run for LaneRun<'_, '_> {
    fn next(&mut self) -> Option<(Context, tracing::Span)> {
        let record = match self.first.take() {
            Some(record) => record,
            None => {
                let next = *self.rest.peek()?;
                if !self.joins(&next) {
                    return None;
                }
                self.rest.next();
                next.0
            }
        };
        self.current = Some(record);
        let member = self.lane.member;
        let envelope = &record.envelope;
        let ctx = Context::new(envelope.clone(), member.scope.clone(), 1);
        Some((ctx, handle_span(&member.group, self.routed.route, envelope, 1)))
    }

    fn ended(&mut self, ended: Result<Finished, Error>) -> bool {
        let record = self.current.take().expect("`ended` follows `next`");
        match ended {
            Ok(Ok(Ok(()))) => {
                if self.routed.delivery == Delivery::InboxGuarded {
                    self.handled.push(record.envelope.id);
                }
                self.done.push(record);
                true
            }
            Ok(Ok(Err(error))) => {
                self.failed = Some((record, Ok(error)));
                false
            }
            Ok(Err(panicked)) => {
                self.failed = Some((record, Ok(panic_error(panicked))));
                false
            }
            Err(undecodable) => {
                let member = self.lane.member;
                let span = handle_span(&member.group, self.routed.route, &record.envelope, 1);
                self.failed = Some((record, Err(undecodable_failure(&span, undecodable))));
                false
            }
        }
    }
}
