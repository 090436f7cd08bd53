//! One member of a consumer group: polls its partitions, runs handlers with retries,
//! dead-letters what keeps failing, commits what is done.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use futures_util::FutureExt;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use super::sequenced::{self, Parking};
use super::shared::{Group, GroupRoute, Shared};
use crate::dead_letter::DeadLetter;
use crate::follow_ups::{self, FollowUps};
use crate::store::Storage;
use crate::transport::{Consumer, Record, Transport};
use crate::{BoxError, Context, Envelope, Error, Tx};

/// How handling one record ended.
enum Outcome {
    /// Skipped (no handler in this group, or processed before), handled by a transactional
    /// handler (its marker is committed) or dead-lettered: commit it.
    Done,
    /// Handled by a handler without a transaction: record it in the inbox, then commit it.
    Handled,
    /// Shutdown came first: leave it uncommitted, to be handled again later.
    Interrupted,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    group: Arc<Group>,
    mut consumer: Box<dyn Consumer>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A consumer that publishes in a broker transaction gets the follow-ups of its records.
    let publisher = consumer.publisher();
    let mut failures = 0;
    // The previous batch, while its inbox markers are written: the next batch is polled and
    // handled meanwhile, and the previous one is committed once its markers are durable.
    let mut marking: Option<Marking> = None;
    loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            written = async { (&mut marking.as_mut().expect("checked by the branch condition").written).await },
                if marking.is_some() => Step::Marked(written),
            polled = consumer.poll() => Step::Polled(polled),
        };
        let records = match step {
            Step::Marked(written) => {
                let batch = marking.take().expect("a batch was being marked");
                commit_marked(&group, &mut *consumer, batch.records, written).await;
                continue;
            }
            Step::Polled(Ok(records)) => {
                failures = 0;
                records
            }
            Step::Polled(Err(error)) => {
                failures += 1;
                let wait = shared.backoff.delay(failures).max(Duration::from_millis(10));
                tracing::error!(group = %group.name, %error, ?wait, "polling the transport failed; retrying");
                if sleep_unless_stopped(wait, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        let in_flight = marking.as_ref().map(|batch| &batch.ids);
        let batch = handle_batch(
            &shared,
            &group,
            &records,
            publisher.as_ref(),
            &shutdown,
            in_flight,
        )
        .await;
        // Commits stay in poll order: the previous batch first.
        if let Some(previous) = marking.take() {
            let written = previous.written.await;
            commit_marked(&group, &mut *consumer, previous.records, written).await;
        }
        if batch.handled.is_empty() {
            commit_records(&group, &mut *consumer, &batch.done).await;
        } else {
            marking = Some(Marking::start(&shared, &group, batch, &shutdown));
        }
        if *shutdown.borrow() {
            break;
        }
    }
    if let Some(last) = marking.take() {
        let written = last.written.await;
        commit_marked(&group, &mut *consumer, last.records, written).await;
    }
    if let Err(error) = consumer.close().await {
        tracing::warn!(group = %group.name, %error, "leaving the consumer group failed");
    }
}

/// What woke the consumer loop.
enum Step {
    /// The previous batch's inbox markers are written (`Ok(true)`), or shutdown came first.
    Marked(Result<bool, tokio::task::JoinError>),
    /// The transport returned records, or failed.
    Polled(Result<Vec<Record>, Error>),
}

/// A handled batch: what to commit, and the events handled by handlers without a
/// transaction, to record in the inbox first.
struct Batch {
    done: Vec<Record>,
    handled: Vec<Uuid>,
}

/// A handled batch whose inbox markers are being written, on a task of their own so that
/// the next batch is handled meanwhile. Its records are committed once the markers are
/// durable, so the at-least-once boundary stays where it was: a crash before that leaves
/// the batch uncommitted, to be handled again.
struct Marking {
    records: Vec<Record>,
    /// The events being marked: processed, for the next batch's inbox check.
    ids: HashSet<Uuid>,
    /// `true` once the markers are written; `false` if shutdown came first.
    written: tokio::task::JoinHandle<bool>,
}

impl Marking {
    fn start(
        shared: &Arc<Shared>,
        group: &Arc<Group>,
        batch: Batch,
        shutdown: &watch::Receiver<bool>,
    ) -> Self {
        let ids = batch.handled.iter().copied().collect();
        let (shared, group, mut shutdown) = (shared.clone(), group.clone(), shutdown.clone());
        let handled = batch.handled;
        let written = tokio::spawn(async move {
            let Some(storage) = &shared.storage else {
                return true;
            };
            let marked = with_retries(
                &shared,
                &mut shutdown,
                "recording processed events in the inbox",
                || storage.mark_all_processed(&group.name, &handled),
            );
            marked.await.is_some()
        });
        Marking {
            records: batch.done,
            ids,
            written,
        }
    }
}

/// Commits a batch whose inbox markers were being written, if they were.
async fn commit_marked(
    group: &Group,
    consumer: &mut dyn Consumer,
    records: Vec<Record>,
    written: Result<bool, tokio::task::JoinError>,
) {
    match written {
        Ok(true) => commit_records(group, consumer, &records).await,
        // Shutdown came first: left uncommitted, handled again later (the inbox skips
        // what it recorded).
        Ok(false) => {}
        Err(error) => {
            tracing::error!(group = %group.name, %error, "recording processed events in the inbox failed; they will be handled again");
        }
    }
}

async fn commit_records(group: &Group, consumer: &mut dyn Consumer, records: &[Record]) {
    if let Err(error) = consumer.commit(records).await {
        tracing::error!(group = %group.name, %error, "committing handled events failed; they will be handled again");
    }
}

/// Handles a batch, partitions concurrently and each partition in order. Returns the
/// records to commit (per partition, the ones handled before a shutdown interrupted it)
/// and the events to record in the inbox before committing them.
///
/// With storage, the inbox guards handlers without a transaction in two round trips per
/// batch: one query for the events processed before (skipped), and one write recording
/// the ones handled now, which [`Marking`] makes before the commit. `in_flight` are the
/// events of the previous batch whose markers are still being written: processed too.
///
/// With a transactional `publisher`, the consumer's transaction takes the inbox's place: a
/// batch whose transaction aborts is handled again, so it must not be marked processed.
async fn handle_batch(
    shared: &Arc<Shared>,
    group: &Arc<Group>,
    records: &[Record],
    publisher: Option<&Arc<dyn Transport>>,
    shutdown: &watch::Receiver<bool>,
    in_flight: Option<&HashSet<Uuid>>,
) -> Batch {
    let interrupted = || Batch {
        done: Vec::new(),
        handled: Vec::new(),
    };
    let guarded = |record: &Record| {
        shared.storage.is_some()
            && publisher.is_none()
            && group
                .route(&record.envelope)
                .is_some_and(|route| !route.route.transactional())
    };
    let parking = match Parking::load(shared, group, &mut shutdown.clone()).await {
        Some(parking) => parking,
        None => return interrupted(),
    };
    let parking = parking.as_ref();
    let mut skip = HashSet::new();
    if let Some(storage) = &shared.storage {
        let ids: Vec<Uuid> = records
            .iter()
            .filter(|r| guarded(r))
            .map(|r| r.envelope.id)
            .collect();
        if !ids.is_empty() {
            let mut shutdown = shutdown.clone();
            let checked = with_retries(shared, &mut shutdown, "checking the inbox", || {
                storage.processed(&group.name, &ids)
            });
            match checked.await {
                Some(processed) => skip = processed,
                None => return interrupted(),
            }
        }
    }
    let mut lanes: Vec<Vec<(&Record, bool)>> = Vec::new();
    let mut seen = HashSet::new();
    for record in records {
        let id = record.envelope.id;
        // Processed before, or a second copy in this batch.
        let skipped = guarded(record)
            && (skip.contains(&id) || in_flight.is_some_and(|ids| ids.contains(&id)) || !seen.insert(id));
        if skipped {
            tracing::debug!(group = %group.name, event.id = %id, "event already processed by this group; skipped");
        }
        match lanes
            .iter_mut()
            .find(|lane| lane[0].0.partition == record.partition && lane[0].0.topic == record.topic)
        {
            Some(lane) => lane.push((record, skipped)),
            None => lanes.push(vec![(record, skipped)]),
        }
    }
    let lanes = lanes.into_iter().map(|lane| async move {
        let mut shutdown = shutdown.clone();
        let mut done = Vec::with_capacity(lane.len());
        let mut handled = Vec::new();
        let mut unit: Option<SharedUnit> = None;
        for (record, skipped) in lane {
            if *shutdown.borrow() {
                break;
            }
            let set_aside = match skipped {
                true => None,
                false => set_aside(group, &record.envelope, parking),
            };
            let joins = !skipped && set_aside.is_none() && can_share_unit(shared, group, record, publisher);
            let flush = unit
                .as_ref()
                .is_some_and(|unit| !(joins || skipped) || unit.is_full());
            if flush && !commit_unit(shared, group, unit.take(), &mut done, &mut shutdown, parking).await {
                return (done, handled);
            }
            if let Some(letter) = set_aside {
                match park(shared, publisher, letter, &mut shutdown, parking).await {
                    Outcome::Interrupted => return (done, handled),
                    _ => done.push(record.clone()),
                }
                continue;
            }
            if skipped {
                match &mut unit {
                    Some(unit) => unit.records.push((record, false)),
                    None => done.push(record.clone()),
                }
                continue;
            }
            let mut failed_first = None;
            if joins {
                match attempt_in_unit(shared, group, &record.envelope, &mut unit).await {
                    Joined::Yes => {
                        unit.as_mut()
                            .expect("a handler joined the unit")
                            .records
                            .push((record, true));
                        continue;
                    }
                    Joined::Failed(error) => {
                        // What succeeded before it is committed now, so that the retries
                        // below do not hold the database's write lock.
                        if !commit_unit(shared, group, unit.take(), &mut done, &mut shutdown, parking).await {
                            return (done, handled);
                        }
                        failed_first = Some(error);
                    }
                    Joined::No => {}
                }
            }
            match deliver(
                shared,
                group,
                &record.envelope,
                publisher,
                &mut shutdown,
                failed_first,
                parking,
            )
            .await
            {
                Outcome::Done => done.push(record.clone()),
                Outcome::Handled => {
                    handled.push(record.envelope.id);
                    done.push(record.clone());
                }
                Outcome::Interrupted => return (done, handled),
            }
        }
        commit_unit(shared, group, unit.take(), &mut done, &mut shutdown, parking).await;
        (done, handled)
    });
    let (done, handled): (Vec<_>, Vec<_>) = join_all(lanes).await.into_iter().unzip();
    Batch {
        done: done.into_iter().flatten().collect(),
        handled: handled.into_iter().flatten().collect(),
    }
}

/// Runs the group's handler for one event with its retry budget, dead-lettering it if the
/// budget runs out or the event cannot be decoded.
async fn deliver(
    shared: &Arc<Shared>,
    group: &Group,
    envelope: &Arc<Envelope>,
    publisher: Option<&Arc<dyn Transport>>,
    shutdown: &mut watch::Receiver<bool>,
    failed_first: Option<Failure>,
    parking: Option<&Parking>,
) -> Outcome {
    let Some(route) = group.route(envelope) else {
        return Outcome::Done;
    };
    let guarded = shared.storage.is_some() && publisher.is_none() && !route.route.transactional();
    let attempts = match failed_first {
        None => attempt_all(shared, group, route, envelope, publisher, shutdown, 1).await,
        Some(Failure::Failed { error, attempts: 0 }) => Err(Failure::Failed { error, attempts: 0 }),
        Some(Failure::Failed { error, attempts }) => {
            let span = handle_span(group, route, envelope, attempts);
            match back_off_or_give_up(shared, route, error, attempts, attempts, shutdown, &span).await {
                Ok(()) => {
                    attempt_all(shared, group, route, envelope, publisher, shutdown, attempts + 1).await
                }
                Err(failure) => Err(failure),
            }
        }
        Some(Failure::Interrupted) => Err(Failure::Interrupted),
    };
    match attempts {
        Ok(_) if guarded => Outcome::Handled,
        Ok(_) => Outcome::Done,
        Err(Failure::Interrupted) => Outcome::Interrupted,
        Err(Failure::Failed { error, attempts }) => {
            let letter = DeadLetter {
                id: DeadLetter::id_for(&group.name, envelope.id),
                group: group.name.to_string(),
                envelope: Envelope::clone(envelope),
                error,
                attempts,
                failed_at: SystemTime::now(),
            };
            let outcome = dead_letter(shared, publisher, &letter, shutdown).await;
            if let (Outcome::Done, Some(parking)) = (&outcome, parking) {
                parking.block(&letter);
            }
            outcome
        }
    }
}

/// The dead letter of an event set aside without running its handler: a message that is
/// not an eventflow event, or, in a group with sequenced dead letters, an event parked
/// behind an earlier dead letter of its key.
fn set_aside(group: &Group, envelope: &Envelope, parking: Option<&Parking>) -> Option<DeadLetter> {
    if envelope.name == Envelope::FOREIGN {
        return Some(sequenced::foreign(group, envelope));
    }
    if !group.routes.contains_key(&*envelope.name) {
        return None;
    }
    let head = parking?.head(envelope)?;
    Some(sequenced::parked(group, envelope, head))
}

/// Stores a letter from [`set_aside`]; its key is blocked from then on in a sequenced group.
/// A foreign message's copy at the transport is the transport's own (it has the raw
/// message), so only the bus's store gets it here.
async fn park(
    shared: &Shared,
    publisher: Option<&Arc<dyn Transport>>,
    letter: DeadLetter,
    shutdown: &mut watch::Receiver<bool>,
    parking: Option<&Parking>,
) -> Outcome {
    tracing::warn!(group = %letter.group, event.id = %letter.envelope.id, error = %letter.error, "event set aside as a dead letter");
    let outcome = match letter.is_foreign() {
        true => match with_retries(shared, shutdown, "storing a dead letter", || {
            shared.dead_letters.put(letter.clone())
        })
        .await
        {
            Some(()) => Outcome::Done,
            None => Outcome::Interrupted,
        },
        false => dead_letter(shared, publisher, &letter, shutdown).await,
    };
    if let (Outcome::Done, Some(parking)) = (&outcome, parking) {
        parking.block(&letter);
    }
    outcome
}

/// Runs a dead letter's event through its group's handler again; `true` if it was handled
/// (the letter is removed), `false` if it failed again (the letter stays, with the new
/// error; a parked letter stays as a letter of its own, no longer parked).
pub(super) async fn replay(
    shared: &Arc<Shared>,
    group: &Group,
    mut letter: DeadLetter,
) -> Result<bool, Error> {
    letter.envelope.headers.remove(DeadLetter::PARKED_BEHIND);
    let route = group.route(&letter.envelope).ok_or_else(|| {
        Error::Config(format!(
            "group `{}` has no handler for `{}` on this bus; register it before replaying",
            group.name, letter.envelope.name
        ))
    })?;
    let (_keep_open, mut never) = watch::channel(false);
    let envelope = Arc::new(letter.envelope.clone());
    match attempt_all(shared, group, route, &envelope, None, &mut never, 1).await {
        Ok(_) => {
            if let Some(storage) = &shared.storage {
                storage.mark_processed(&group.name, letter.envelope.id).await?;
            }
            shared.dead_letters.take(letter.id).await?;
            Ok(true)
        }
        Err(Failure::Failed { error, attempts }) => {
            letter.error = error;
            letter.attempts += attempts;
            letter.failed_at = SystemTime::now();
            shared.dead_letters.put(letter).await?;
            Ok(false)
        }
        Err(Failure::Interrupted) => Ok(false),
    }
}

enum Failure {
    Failed { error: String, attempts: u32 },
    Interrupted,
}

async fn attempt_all(
    shared: &Arc<Shared>,
    group: &Group,
    route: &GroupRoute,
    envelope: &Arc<Envelope>,
    publisher: Option<&Arc<dyn Transport>>,
    shutdown: &mut watch::Receiver<bool>,
    first_attempt: u32,
) -> Result<u32, Failure> {
    if envelope.version > route.route.event_version() {
        let error = Error::UnknownVersion {
            id: envelope.id,
            name: envelope.name.to_string(),
            found: envelope.version,
            expected: route.route.event_version(),
            group: group.name.to_string(),
        };
        tracing::error!(group = %group.name, event.id = %envelope.id, %error, "dead-lettering event");
        return Err(Failure::Failed {
            error: error.to_string(),
            attempts: 0,
        });
    }
    let mut attempt = first_attempt;
    // Attempts that failed with a transient error in a row: run again, not counted.
    let mut transient = 0;
    let mut uncounted = 0;
    let transactional = route.route.transactional();
    loop {
        let mut ctx = Context::new(
            envelope.clone(),
            group.name.clone(),
            attempt,
            shared.outgoing.clone(),
        );
        let span = handle_span(group, route, envelope, attempt);
        let mut tx = None;
        let mut begin_error: Option<BoxError> = None;
        if let (Some(storage), true) = (&shared.storage, transactional) {
            match begin_marked(storage, &group.name, envelope.id).await {
                Ok(Some(started)) => tx = Some(started),
                Ok(None) => {
                    tracing::debug!(parent: &span, "event already processed by this group; skipped");
                    return Ok(attempt);
                }
                Err(error) => {
                    begin_error = Some(format!("could not start the handler's unit of work: {error}").into())
                }
            }
        }
        ctx.transaction = tx.clone();
        // Follow-ups wait for the attempt to succeed: then they go into the handler's unit
        // of work (its outbox) or the consumer's broker transaction.
        let follow_ups = (tx.is_some() || publisher.is_some()).then(FollowUps::default);
        ctx.follow_ups = follow_ups.clone();
        let error = match begin_error {
            Some(error) => Some(error),
            None => handle_once(route, envelope, ctx, shared, &span, tx, follow_ups.as_ref())
                .await
                .map_err(|undecodable| {
                    tracing::error!(parent: &span, error = %undecodable, "dead-lettering event");
                    Failure::Failed {
                        error: undecodable.to_string(),
                        attempts: 0,
                    }
                })?,
        };
        let Some(error) = error else {
            if let (Some(publisher), Some(follow_ups)) = (publisher, follow_ups) {
                send_follow_ups(publisher, follow_ups, &span).await?;
            }
            return Ok(attempt);
        };
        let is_transient = crate::error::is_transient(&*error);
        if !is_transient {
            transient = 0;
        }
        match is_transient && transient < Error::TRANSIENT_RETRIES {
            true => {
                transient += 1;
                uncounted += 1;
                let wait = transient_pause(transient);
                tracing::info!(parent: &span, error = %error, ?wait, "handler met a transient conflict; running it again");
                if sleep_unless_stopped(wait, shutdown).await {
                    return Err(Failure::Interrupted);
                }
            }
            false => {
                let counted = attempt - uncounted;
                back_off_or_give_up(
                    shared,
                    route,
                    error.to_string(),
                    counted,
                    attempt,
                    shutdown,
                    &span,
                )
                .await?;
            }
        }
        attempt += 1;
    }
}

/// The pause before running a handler again after its `n`th transient failure in a row:
/// random (so that the units of work that conflicted do not meet again), growing to 100 ms.
fn transient_pause(n: u32) -> Duration {
    let ceiling_ms = (1u64 << n.min(7)).min(100);
    Duration::from_micros(fastrand::u64(500..=ceiling_ms * 1000))
}

/// After attempt `attempt` failed with `error`, the `counted`th against the route's retry
/// budget: gives up (to dead-letter the event) once the budget is spent, else waits out the
/// backoff before the next attempt.
async fn back_off_or_give_up(
    shared: &Shared,
    route: &GroupRoute,
    error: String,
    counted: u32,
    attempt: u32,
    shutdown: &mut watch::Receiver<bool>,
    span: &tracing::Span,
) -> Result<(), Failure> {
    if counted > route.retries {
        tracing::error!(parent: span, error = %error, attempts = attempt, "handler failed; dead-lettering event");
        return Err(Failure::Failed {
            error,
            attempts: attempt,
        });
    }
    let wait = shared.backoff.delay(counted);
    tracing::warn!(parent: span, error = %error, ?wait, "handler failed; retrying");
    match sleep_unless_stopped(wait, shutdown).await {
        true => Err(Failure::Interrupted),
        false => Ok(()),
    }
}

fn handle_span(group: &Group, route: &GroupRoute, envelope: &Envelope, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "eventflow.handle",
        event.id = %envelope.id,
        event.name = %envelope.name,
        group = %group.name,
        handler = route.route.options().name,
        attempt,
    )
}

/// Handlers of this many consecutive events share a unit of work at most.
const SHARED_UNIT_EVENTS: usize = 256;
/// A shared unit of work is committed once it has been open this long, so that it holds
/// the database's write lock only briefly.
const SHARED_UNIT_TIME: Duration = Duration::from_millis(2);

/// One unit of work shared by the transactional handlers of consecutive events of a
/// partition, each in a savepoint of its own (group commit): one commit makes the effects
/// and inbox markers of all of them durable. Commits that wrote one page or two would
/// otherwise cost more than the handlers. It holds the storage's write lock (on SQLite)
/// while open, so it is committed after [`SHARED_UNIT_TIME`] or [`SHARED_UNIT_EVENTS`],
/// before any other handler runs (which may start a unit of work of its own), when a
/// handler fails (before its retries) and at the end of the batch.
struct SharedUnit<'a> {
    /// `None` while a handler holds it (through its `Tx`), and once it is abandoned.
    tx: Option<Box<dyn crate::store::Transaction>>,
    opened: Instant,
    /// The records handled in it (`true`) or skipped meanwhile (`false`), in order: done
    /// once it commits.
    records: Vec<(&'a Record, bool)>,
}

impl SharedUnit<'_> {
    fn tx(&mut self) -> &mut dyn crate::store::Transaction {
        self.tx
            .as_deref_mut()
            .expect("the shared unit of work is back from its handler and not abandoned")
    }

    fn is_full(&self) -> bool {
        self.records.len() >= SHARED_UNIT_EVENTS || self.opened.elapsed() >= SHARED_UNIT_TIME
    }
}

/// Whether `record`'s handler can run in a shared unit of work: a transactional handler,
/// on storage with savepoints, outside a broker transaction.
fn can_share_unit(
    shared: &Shared,
    group: &Group,
    record: &Record,
    publisher: Option<&Arc<dyn Transport>>,
) -> bool {
    shared.storage.is_some()
        && publisher.is_none()
        && shared.savepoints.load(Ordering::Relaxed)
        && group
            .route(&record.envelope)
            .is_some_and(|route| route.route.transactional())
}

/// How a handler's first attempt in a shared unit of work went.
enum Joined {
    /// Handled (its writes and marker wait for the unit's commit), or processed before.
    Yes,
    /// Failed; its writes are rolled back. The retries run in units of work of their own.
    Failed(Failure),
    /// Not tried: no unit of work could be opened, or the storage has no savepoints.
    No,
}

/// Runs the first attempt of `envelope`'s transactional handler in the lane's shared unit
/// of work, opening one if none is open.
async fn attempt_in_unit<'a>(
    shared: &Arc<Shared>,
    group: &Group,
    envelope: &Arc<Envelope>,
    unit: &mut Option<SharedUnit<'a>>,
) -> Joined {
    let (Some(storage), Some(route)) = (&shared.storage, group.route(envelope)) else {
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
    let mut ctx = Context::new(envelope.clone(), group.name.clone(), 1, shared.outgoing.clone());
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

fn failure(error: Error, attempts: u32) -> Failure {
    Failure::Failed {
        error: error.to_string(),
        attempts,
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

/// Commits a shared unit of work and marks its records done. If the commit fails, each of
/// its handlers runs again in a unit of work of its own (its usual path, with retries).
/// Returns false if shutdown interrupted that.
async fn commit_unit<'a>(
    shared: &Arc<Shared>,
    group: &Group,
    unit: Option<SharedUnit<'a>>,
    done: &mut Vec<Record>,
    shutdown: &mut watch::Receiver<bool>,
    parking: Option<&Parking>,
) -> bool {
    let Some(unit) = unit else {
        return true;
    };
    let handled = unit.records.iter().filter(|(_, handled)| *handled).count();
    let committed = match unit.tx {
        Some(tx) => tx.commit().await,
        None => Err(Error::Config("it was abandoned after a failed rollback".into())),
    };
    match committed {
        Ok(()) => {
            done.extend(unit.records.into_iter().map(|(record, _)| record.clone()));
            return true;
        }
        Err(error) => {
            tracing::warn!(group = %group.name, %error, handlers = handled, "committing the unit of work shared by transactional handlers failed; running them again one by one");
        }
    }
    for (record, handled) in unit.records {
        if handled {
            match deliver(shared, group, &record.envelope, None, shutdown, None, parking).await {
                Outcome::Done | Outcome::Handled => {}
                Outcome::Interrupted => return false,
            }
        }
        done.push(record.clone());
    }
    true
}

/// Hands a succeeded attempt's follow-ups to the consumer's transactional publisher. If
/// that fails, the record is left unfinished: the consumer aborts its transaction, so the
/// batch is handled again.
async fn send_follow_ups(
    publisher: &Arc<dyn Transport>,
    follow_ups: FollowUps,
    span: &tracing::Span,
) -> Result<(), Failure> {
    let envelopes = follow_ups::take(&follow_ups);
    if envelopes.is_empty() {
        return Ok(());
    }
    match publisher.publish_batch(envelopes).await {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::error!(parent: span, %error, "publishing the handler's follow-ups in the consumer's transaction failed; the batch is handled again");
            Err(Failure::Interrupted)
        }
    }
}

/// Stores a dead letter, retrying until the store takes it: an event is committed only
/// once it is handled or safely dead-lettered. The transport's copy goes through the
/// consumer's `publisher` if it has one, so that in a broker transaction it commits or
/// aborts with the batch.
async fn dead_letter(
    shared: &Shared,
    publisher: Option<&Arc<dyn Transport>>,
    letter: &DeadLetter,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let transport = publisher.unwrap_or(&shared.transport);
    let stored = with_retries(shared, shutdown, "storing a dead letter", || {
        shared.dead_letters.put(letter.clone())
    });
    if stored.await.is_none() {
        return Outcome::Interrupted;
    }
    let handed = with_retries(
        shared,
        shutdown,
        "handing a dead letter to the transport",
        || async {
            match transport.dead_letter(letter).await {
                // Refused for good (too large for the broker's dead-letter topic, say): it is
                // in the bus's store, which is what `EventBus::dead_letters` lists.
                Err(error) if error.is_permanent() => {
                    tracing::error!(group = %letter.group, event.id = %letter.envelope.id, %error, "the transport refused the dead letter's copy for good; it is kept in the dead-letter store only");
                    Ok(())
                }
                other => other,
            }
        },
    );
    match handed.await {
        Some(()) => Outcome::Done,
        None => Outcome::Interrupted,
    }
}

/// Runs the handler once and commits its unit of work if it has one. `Ok(None)` when it
/// succeeded, `Ok(Some(error))` when it failed (to retry), `Err` when the payload does
/// not decode (not worth retrying).
async fn handle_once(
    route: &GroupRoute,
    envelope: &Envelope,
    ctx: Context,
    shared: &Shared,
    span: &tracing::Span,
    tx: Option<Tx>,
    follow_ups: Option<&FollowUps>,
) -> Result<Option<BoxError>, Error> {
    let held = ctx.follow_ups.clone();
    let started = AssertUnwindSafe(route.route.invoke(envelope, ctx, shared.codec())?)
        .catch_unwind()
        .instrument(span.clone());
    let finished = match held {
        // `EventBus::publish` from inside the handler joins its held-back follow-ups.
        Some(held) => follow_ups::HELD_FOLLOW_UPS.scope(held, started).await,
        None => started.await,
    };
    Ok(match finished {
        Ok(Ok(())) => match tx {
            None => None,
            Some(tx) => commit(&tx, follow_ups).await.err().map(Into::into),
        },
        Ok(Err(error)) => Some(error),
        Err(panic) => Some(panic_error(panic)),
    })
}

/// Starts a handler's unit of work with its inbox marker; `None` if the group already
/// processed the event.
async fn begin_marked(storage: &Arc<dyn Storage>, group: &str, event_id: Uuid) -> Result<Option<Tx>, Error> {
    let mut tx = storage.begin().await?;
    Ok(tx.mark_processed(group, event_id).await?.then(|| Tx::new(tx)))
}

/// Commits a handler's unit of work with the follow-ups it published in its outbox. A
/// concurrent duplicate that committed first makes this one a no-op, not a failure.
async fn commit(tx: &Tx, follow_ups: Option<&FollowUps>) -> Result<(), Error> {
    let Some(mut tx) = tx.take().await else {
        return Err(Error::Config(
            "the handler's unit of work was already taken".into(),
        ));
    };
    follow_ups::enqueue(&mut *tx, follow_ups).await?;
    match tx.commit().await {
        Ok(()) | Err(Error::AlreadyProcessed { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Runs a storage operation until it succeeds, backing off between failures; `None` if
/// shutdown came first. Storage trouble must not turn into dead letters or lost events.
pub(super) async fn with_retries<T, F>(
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    mut operation: impl FnMut() -> F,
) -> Option<T>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let mut failures = 0;
    loop {
        match operation().await {
            Ok(value) => return Some(value),
            Err(error) => {
                failures += 1;
                tracing::error!(%error, "{what} failed; retrying");
                if sleep_unless_stopped(shared.backoff.delay(failures), shutdown).await {
                    return None;
                }
            }
        }
    }
}

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> BoxError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("handler panicked: {message}").into()
}

/// Sleeps for `wait`; returns true if shutdown came first.
async fn sleep_unless_stopped(wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if wait.is_zero() {
        return *shutdown.borrow();
    }
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => true,
        _ = tokio::time::sleep(wait) => false,
    }
}
