//! Group commit: the transactional handlers of consecutive events of a partition share one
//! unit of work, each in a savepoint of its own, so that one commit makes the effects and
//! inbox markers of all of them durable. Commits that wrote one page or two would
//! otherwise cost more than the handlers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::attempt::{handle_once, handle_span};
use super::delivery::{Lane, Routed};
use super::outcome::{failure, Failure};
use crate::follow_ups::{self, FollowUps};
use crate::store::Transaction;
use crate::transport::Record;
use crate::{Context, Envelope, Error, Tx};

/// Handlers of this many consecutive events share a unit of work at most.
const SHARED_UNIT_EVENTS: usize = 256;
/// A shared unit of work is committed once it has been open this long, so that it holds
/// the database's write lock only briefly.
const SHARED_UNIT_TIME: Duration = Duration::from_millis(2);

/// One unit of work shared by the transactional handlers of consecutive events of a
/// partition. It holds the storage's write lock (on SQLite) while open, so it is committed
/// after [`SHARED_UNIT_TIME`] or [`SHARED_UNIT_EVENTS`], before any other handler runs
/// (which may start a unit of work of its own), when a handler fails (before its retries)
/// and at the end of the batch.
pub(super) struct SharedUnit<'a> {
    /// `None` while a handler holds it (through its `Tx`), and once it is abandoned.
    tx: Option<Box<dyn Transaction>>,
    opened: Instant,
    /// The records handled in it (`true`) or skipped meanwhile (`false`), in order: done
    /// once it commits.
    records: Vec<(&'a Record, bool)>,
}

impl<'a> SharedUnit<'a> {
    fn tx(&mut self) -> &mut dyn Transaction {
        self.tx
            .as_deref_mut()
            .expect("the shared unit of work is back from its handler and not abandoned")
    }

    /// Whether it is time to commit it.
    pub(super) fn is_full(&self) -> bool {
        self.records.len() >= SHARED_UNIT_EVENTS || self.opened.elapsed() >= SHARED_UNIT_TIME
    }

    /// Adds `record`, handled in the unit (`true`) or skipped while it was open (`false`).
    pub(super) fn push(&mut self, record: &'a Record, handled: bool) {
        self.records.push((record, handled));
    }
}

/// How a handler's first attempt in a shared unit of work went.
pub(super) enum Joined {
    /// Handled (its writes and marker wait for the unit's commit), or processed before.
    Yes,
    /// Failed; its writes are rolled back. The retries run in units of work of their own.
    Failed(Failure),
    /// Not tried: no unit of work could be opened, or the storage has no savepoints.
    No,
}

/// Whether the storage's units of work still have savepoints (it can say no only once).
pub(super) fn savepoints(lane: &Lane<'_>) -> bool {
    lane.member.shared.savepoints.load(Ordering::Relaxed)
}

/// Runs the first attempt of `envelope`'s transactional handler in the lane's shared unit
/// of work, opening one if none is open.
pub(super) async fn attempt_in_unit<'a>(
    lane: &Lane<'_>,
    routed: Routed<'_>,
    envelope: &Arc<Envelope>,
    unit: &mut Option<SharedUnit<'a>>,
) -> Joined {
    let (shared, group, route) = (&lane.member.shared, &lane.member.group, routed.route);
    let Some(storage) = &shared.storage else {
        return Joined::No;
    };
    if envelope.version != route.route.event_version() {
        return Joined::No; // dead-lettered by the usual path
    }
    if unit.is_none() {
        let Ok(tx) = storage.begin().await else {
            return Joined::No; // the usual path retries
        };
        *unit = Some(SharedUnit {
            tx: Some(tx),
            opened: Instant::now(),
            records: Vec::new(),
        });
    }
    let open = unit.as_mut().expect("opened above");
    match open.tx().savepoint().await {
        Ok(true) => {}
        Ok(false) => {
            shared.savepoints.store(false, Ordering::Relaxed);
            if open.records.is_empty() {
                *unit = None; // rolled back: nothing was written
            }
            return Joined::No;
        }
        Err(_) => return Joined::No,
    }
    let span = handle_span(group, route, envelope, 1);
    match open.tx().mark_processed(&group.name, envelope.id).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(parent: &span, "event already processed by this group; skipped");
            return match open.tx().release_savepoint().await {
                Ok(()) => Joined::Yes,
                Err(error) => Joined::Failed(failure(error, 1)),
            };
        }
        Err(error) => return rolled_back(open, failure(error, 1)).await,
    }
    // The handler gets the unit of work through its `Tx`, and gives it back when done.
    let tx = Tx::new(open.tx.take().expect("the shared unit of work is not in use"));
    let mut ctx = Context::new(envelope.clone(), lane.member.scope.clone(), 1);
    ctx.transaction = Some(tx.clone());
    let follow_ups = FollowUps::default();
    ctx.follow_ups = Some(follow_ups.clone());
    let outcome = handle_once(route, envelope, ctx, shared, &span, None, None).await;
    open.tx = tx.take().await;
    match outcome {
        Ok(None) => {
            let kept = async {
                follow_ups::enqueue(open.tx(), Some(&follow_ups)).await?;
                open.tx().release_savepoint().await
            };
            match kept.await {
                Ok(()) => Joined::Yes,
                Err(error) => rolled_back(open, failure(error, 1)).await,
            }
        }
        Ok(Some(error)) => {
            tracing::warn!(parent: &span, error = %error, "handler failed");
            let failed = Failure::Failed {
                error: error.to_string(),
                attempts: 1,
            };
            rolled_back(open, failed).await
        }
        Err(undecodable) => {
            tracing::error!(parent: &span, error = %undecodable, "dead-lettering event");
            let failed = Failure::Failed {
                error: undecodable.to_string(),
                attempts: 0,
            };
            rolled_back(open, failed).await
        }
    }
}

/// Undoes a failed handler's writes in the shared unit of work.
async fn rolled_back(unit: &mut SharedUnit<'_>, failed: Failure) -> Joined {
    if let Err(error) = unit.tx().rollback_to_savepoint().await {
        tracing::warn!(%error, "rolling back a failed handler's writes failed; its unit of work is abandoned");
        // Dropped uncommitted: its handlers run again one by one.
        unit.tx = None;
    }
    Joined::Failed(failed)
}

/// Commits a shared unit of work and adds its records to `done`. If the commit fails, its
/// records come back, in order, each with whether its handler ran in it: those must run
/// again in units of work of their own (their usual path, with retries) before they are
/// done.
pub(super) async fn commit_unit<'a>(
    lane: &Lane<'_>,
    unit: SharedUnit<'a>,
    done: &mut Vec<&'a Record>,
) -> Result<(), Vec<(&'a Record, bool)>> {
    let handled = unit.records.iter().filter(|(_, handled)| *handled).count();
    let committed = match unit.tx {
        Some(tx) => tx.commit().await,
        None => Err(Error::Config("it was abandoned after a failed rollback".into())),
    };
    match committed {
        Ok(()) => {
            done.extend(unit.records.into_iter().map(|(record, _)| record));
            Ok(())
        }
        Err(error) => {
            tracing::warn!(group = %lane.member.group.name, %error, handlers = handled, "committing the unit of work shared by transactional handlers failed; running them again one by one");
            Err(unit.records)
        }
    }
}
