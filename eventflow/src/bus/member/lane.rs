//! Handling a polled batch: partitions concurrently, each partition's records in order
//! (a lane), each record down the path its route's [`Delivery`] decided.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::watch;
use uuid::Uuid;

use super::super::sequenced::Parking;
use super::attempt::{attempt_all, handle_span};
use super::dead_letter::{give_up, park, set_aside};
use super::delivery::{Delivery, Lane, Member, Queued, Routed};
use super::group_commit::{attempt_in_unit, commit_unit, savepoints, Joined, SharedUnit};
use super::inbox_guard::processed_before;
use super::outcome::{Batch, Failure, Outcome};
use super::retry::back_off_or_give_up;
use super::run::{runs, LaneRun};
use crate::transport::Record;
use crate::Envelope;

/// Handles a batch, partitions concurrently and each partition in order. Returns the
/// records to commit (per partition, the ones handled before a shutdown interrupted it;
/// the polled records themselves when all were) and the events to record in the inbox
/// before committing them.
///
/// `in_flight` are the events of the previous batch whose markers are still being
/// written: processed too.
pub(super) async fn handle_batch(
    member: &Member,
    records: Vec<Record>,
    shutdown: &watch::Receiver<bool>,
    in_flight: Option<&HashSet<Uuid>>,
) -> Batch {
    let group = &member.group;
    let Some(parking) = Parking::load(&member.shared, group, &mut shutdown.clone()).await else {
        return Batch::interrupted();
    };
    let parking = parking.as_ref();
    // Consecutive records mostly carry the same event: its route is looked up once.
    let mut last: Option<(&str, u32, Option<Routed<'_>>)> = None;
    let routed: Vec<Option<Routed<'_>>> = records
        .iter()
        .map(|record| {
            let envelope = &record.envelope;
            match last {
                Some((name, version, routed))
                    if version == envelope.version
                        && (std::ptr::eq(name, &*envelope.name) || name == envelope.name) =>
                {
                    routed
                }
                _ => {
                    let routed = member.route(envelope);
                    last = Some((&envelope.name, envelope.version, routed));
                    routed
                }
            }
        })
        .collect();
    let guarded = |routed: &Option<Routed<'_>>| routed.is_some_and(|r| r.delivery == Delivery::InboxGuarded);
    let ids: Vec<Uuid> = records
        .iter()
        .zip(&routed)
        .filter(|(_, routed)| guarded(routed))
        .map(|(record, _)| record.envelope.id)
        .collect();
    let Some(skip) = processed_before(member, &ids, shutdown).await else {
        return Batch::interrupted();
    };
    let mut lanes: Vec<Vec<Queued<'_>>> = Vec::new();
    let mut seen = HashSet::new();
    for (index, (record, routed)) in records.iter().zip(routed).enumerate() {
        let id = record.envelope.id;
        // Processed before, or a second copy in this batch.
        let skipped = guarded(&routed)
            && (skip.contains(&id) || in_flight.is_some_and(|ids| ids.contains(&id)) || !seen.insert(id));
        if skipped {
            tracing::debug!(group = %group.name, event.id = %id, "event already processed by this group; skipped");
        }
        match lanes.iter_mut().find(|lane| {
            lane[0].0.partition == record.partition && same_topic(&lane[0].0.topic, &record.topic)
        }) {
            Some(lane) => lane.push((record, routed, skipped)),
            None => {
                // Transports hand a partition's records over together, so a new lane
                // mostly takes the rest of the batch: sized for it, it never grows.
                let mut lane = Vec::with_capacity(records.len() - index);
                lane.push((record, routed, skipped));
                lanes.push(lane);
            }
        }
    }
    let lanes = lanes.into_iter().map(|queued| {
        let lane = Lane {
            member,
            shutdown: shutdown.clone(),
            parking,
        };
        run_lane(lane, queued)
    });
    let (done, handled): (Vec<Vec<&Record>>, Vec<_>) = join_all(lanes).await.into_iter().unzip();
    let handled = handled.into_iter().flatten().collect();
    // Lanes say what they finished by reference; only a batch cut short by shutdown copies
    // its finished records out.
    let done = match done.iter().map(Vec::len).sum::<usize>() == records.len() {
        true => {
            drop(done);
            records
        }
        false => done.into_iter().flatten().cloned().collect(),
    };
    Batch { done, handled }
}

/// Handles one partition's records in order; returns the records done and the events to
/// record in the inbox, up to where shutdown interrupted it.
async fn run_lane<'a>(mut lane: Lane<'a>, queued: Vec<Queued<'a>>) -> (Vec<&'a Record>, Vec<Uuid>) {
    let mut done = Vec::with_capacity(queued.len());
    let mut handled = Vec::new();
    let mut unit: Option<SharedUnit> = None;
    let mut queued = queued.into_iter().peekable();
    while let Some((record, routed, skipped)) = queued.next() {
        if lane.stopping() {
            break;
        }
        let set_aside = match skipped {
            true => None,
            false => set_aside(&lane.member.group, &record.envelope, lane.parking),
        };
        let joins = !skipped
            && set_aside.is_none()
            && routed.is_some_and(|r| r.delivery == Delivery::SharedUnit)
            && savepoints(&lane);
        let flush = unit
            .as_ref()
            .is_some_and(|unit| !(joins || skipped) || unit.is_full());
        if flush && !flush_unit(&mut lane, unit.take(), &mut done).await {
            return (done, handled);
        }
        if let Some(letter) = set_aside {
            match park(&mut lane, letter).await {
                Outcome::Interrupted => return (done, handled),
                _ => done.push(record),
            }
            continue;
        }
        if skipped {
            match &mut unit {
                Some(unit) => unit.push(record, false),
                None => done.push(record),
            }
            continue;
        }
        let mut failed_first = None;
        if let (true, Some(routed)) = (joins, routed) {
            match attempt_in_unit(&lane, routed, &record.envelope, &mut unit).await {
                Joined::Yes => {
                    unit.as_mut()
                        .expect("a handler joined the unit")
                        .push(record, true);
                    continue;
                }
                Joined::Failed(error) => {
                    // What succeeded before it is committed now, so that the retries
                    // below do not hold the database's write lock.
                    if !flush_unit(&mut lane, unit.take(), &mut done).await {
                        return (done, handled);
                    }
                    failed_first = Some(error);
                }
                Joined::No => {}
            }
        }
        // Nearly every event: its first attempt, with the events after it that go to the
        // same handler, in one run.
        let (record, outcome) = match (&failed_first, routed.filter(|r| runs(*r, &record.envelope))) {
            (None, Some(routed)) => {
                let mut run = LaneRun::new(&lane, routed, record, &mut queued, &mut done, &mut handled);
                routed.route.route.run(lane.member.shared.codec(), &mut run).await;
                // The run ends at a first attempt that did not succeed: its event goes on
                // from there.
                let Some((record, first)) = run.failed.take() else {
                    continue;
                };
                let attempts = match first {
                    Ok(error) => {
                        Box::pin(attempt_all(&mut lane, routed, &record.envelope, 1, Some(error))).await
                    }
                    Err(failure) => Err(failure),
                };
                (
                    record,
                    conclude(&mut lane, routed, &record.envelope, attempts).await,
                )
            }
            _ => (
                record,
                deliver(&mut lane, routed, &record.envelope, failed_first).await,
            ),
        };
        match outcome {
            Outcome::Done => done.push(record),
            Outcome::Handled => {
                handled.push(record.envelope.id);
                done.push(record);
            }
            Outcome::Interrupted => return (done, handled),
        }
    }
    flush_unit(&mut lane, unit.take(), &mut done).await;
    (done, handled)
}

/// Whether two records' topics are one: a transport gives the records of a topic one
/// shared name, so the pointers mostly settle it.
fn same_topic(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Commits the lane's shared unit of work, if one is open, and marks its records done. If
/// the commit fails, each of its handlers runs again in a unit of work of its own (its
/// usual path, with retries). Returns false if shutdown interrupted that.
async fn flush_unit<'a>(
    lane: &mut Lane<'_>,
    unit: Option<SharedUnit<'a>>,
    done: &mut Vec<&'a Record>,
) -> bool {
    let Some(unit) = unit else {
        return true;
    };
    let Err(records) = commit_unit(lane, unit, done).await else {
        return true;
    };
    let member = lane.member;
    for (record, handled) in records {
        if handled {
            let routed = member.route(&record.envelope);
            if let Outcome::Interrupted = deliver(lane, routed, &record.envelope, None).await {
                return false;
            }
        }
        done.push(record);
    }
    true
}

/// Runs the group's handler for one event with its retry budget (what is left of it after
/// `failed_first`, a first attempt that failed in a shared unit of work), dead-lettering
/// it if the budget runs out or the event cannot be decoded.
async fn deliver(
    lane: &mut Lane<'_>,
    routed: Option<Routed<'_>>,
    envelope: &Arc<Envelope>,
    failed_first: Option<Failure>,
) -> Outcome {
    let Some(routed) = routed else {
        return Outcome::Done;
    };
    // The retry loop is a large future: boxed, so that the futures around it stay small.
    let attempts = match failed_first {
        None => Box::pin(attempt_all(lane, routed, envelope, 1, None)).await,
        Some(Failure::Failed { error, attempts: 0 }) => Err(Failure::Failed { error, attempts: 0 }),
        Some(Failure::Failed { error, attempts }) => {
            let (shared, group) = (&lane.member.shared, &lane.member.group);
            let span = handle_span(group, routed.route, envelope, attempts);
            let waited = back_off_or_give_up(
                shared,
                routed.route,
                error,
                attempts,
                attempts,
                &mut lane.shutdown,
                &span,
            );
            match waited.await {
                Ok(()) => Box::pin(attempt_all(lane, routed, envelope, attempts + 1, None)).await,
                Err(failure) => Err(failure),
            }
        }
        Some(Failure::Interrupted) => Err(Failure::Interrupted),
    };
    conclude(lane, routed, envelope, attempts).await
}

/// What an event's attempts came to: done (handled, for the inbox to record, when its
/// handler is inbox-guarded), interrupted by shutdown, or a dead letter.
async fn conclude(
    lane: &mut Lane<'_>,
    routed: Routed<'_>,
    envelope: &Arc<Envelope>,
    attempts: Result<u32, Failure>,
) -> Outcome {
    match attempts {
        Ok(_) if routed.delivery == Delivery::InboxGuarded => Outcome::Handled,
        Ok(_) => Outcome::Done,
        Err(Failure::Interrupted) => Outcome::Interrupted,
        Err(Failure::Failed { error, attempts }) => give_up(lane, envelope, error, attempts).await,
    }
}
