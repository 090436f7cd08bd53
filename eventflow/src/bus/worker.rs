//! One member of a consumer group: polls its partitions, runs handlers with retries,
//! dead-letters what keeps failing, commits what is done.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use futures_util::FutureExt;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use super::{Group, GroupRoute, Publisher, Shared};
use crate::context::FollowUps;
use crate::dead_letter::DeadLetter;
use crate::store::Storage;
use crate::transport::{Consumer, Record, Transport};
use crate::{BoxError, Context, Envelope, Error, Event, Tx};

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
    loop {
        let polled = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            polled = consumer.poll() => polled,
        };
        let records = match polled {
            Ok(records) => {
                failures = 0;
                records
            }
            Err(error) => {
                failures += 1;
                let wait = shared.backoff.delay(failures).max(Duration::from_millis(10));
                tracing::error!(group = %group.name, %error, ?wait, "polling the transport failed; retrying");
                if sleep_unless_stopped(wait, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        let done = handle_batch(&shared, &group, &records, publisher.as_ref(), &shutdown).await;
        if let Err(error) = consumer.commit(&done).await {
            tracing::error!(group = %group.name, %error, "committing handled events failed; they will be handled again");
        }
        if *shutdown.borrow() {
            break;
        }
    }
    if let Err(error) = consumer.close().await {
        tracing::warn!(group = %group.name, %error, "leaving the consumer group failed");
    }
}

/// Handles a batch, partitions concurrently and each partition in order. Returns the
/// records to commit: per partition, the ones handled before a shutdown interrupted it.
///
/// With storage, the inbox guards handlers without a transaction in two round trips per
/// batch: one query for the events processed before (skipped), one write recording the
/// ones handled now, before the commit. A crash in between leaves the batch uncommitted,
/// so it is handled again: at least once, as without the inbox.
///
/// With a transactional `publisher`, the consumer's transaction takes the inbox's place: a
/// batch whose transaction aborts is handled again, so it must not be marked processed.
async fn handle_batch(
    shared: &Arc<Shared>,
    group: &Arc<Group>,
    records: &[Record],
    publisher: Option<&Arc<dyn Transport>>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<Record> {
    let guarded = |record: &Record| {
        shared.storage.is_some()
            && publisher.is_none()
            && group
                .routes
                .get(&*record.envelope.name)
                .is_some_and(|route| !route.route.transactional())
    };
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
                None => return Vec::new(),
            }
        }
    }
    let mut lanes: Vec<Vec<(&Record, bool)>> = Vec::new();
    let mut seen = HashSet::new();
    for record in records {
        let id = record.envelope.id;
        // Processed before, or a second copy in this batch.
        let skipped = guarded(record) && (skip.contains(&id) || !seen.insert(id));
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
        for (record, skipped) in lane {
            if *shutdown.borrow() {
                break;
            }
            if skipped {
                done.push(record.clone());
                continue;
            }
            match deliver(shared, group, &record.envelope, publisher, &mut shutdown).await {
                Outcome::Done => done.push(record.clone()),
                Outcome::Handled => {
                    handled.push(record.envelope.id);
                    done.push(record.clone());
                }
                Outcome::Interrupted => break,
            }
        }
        (done, handled)
    });
    let (done, handled): (Vec<_>, Vec<_>) = join_all(lanes).await.into_iter().unzip();
    let handled: Vec<Uuid> = handled.into_iter().flatten().collect();
    if let (Some(storage), false) = (&shared.storage, handled.is_empty()) {
        let mut shutdown = shutdown.clone();
        let marked = with_retries(
            shared,
            &mut shutdown,
            "recording processed events in the inbox",
            || storage.mark_all_processed(&group.name, &handled),
        );
        if marked.await.is_none() {
            return Vec::new();
        }
    }
    done.into_iter().flatten().collect()
}

/// Runs the group's handler for one event with its retry budget, dead-lettering it if the
/// budget runs out or the event cannot be decoded.
async fn deliver(
    shared: &Arc<Shared>,
    group: &Group,
    envelope: &Arc<Envelope>,
    publisher: Option<&Arc<dyn Transport>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let Some(route) = group.routes.get(&*envelope.name) else {
        return Outcome::Done;
    };
    let guarded = shared.storage.is_some() && publisher.is_none() && !route.route.transactional();
    match attempt_all(shared, group, route, envelope, publisher, shutdown).await {
        Ok(_) if guarded => Outcome::Handled,
        Ok(_) => Outcome::Done,
        Err(Failure::Interrupted) => Outcome::Interrupted,
        Err(Failure::Failed { error, attempts }) => {
            let letter = DeadLetter {
                id: Uuid::now_v7(),
                group: group.name.to_string(),
                envelope: Envelope::clone(envelope),
                error,
                attempts,
                failed_at: SystemTime::now(),
            };
            dead_letter(shared, letter, shutdown).await
        }
    }
}

pub(super) async fn replay(shared: &Arc<Shared>, group: &Group, mut letter: DeadLetter) -> Result<(), Error> {
    let route = group.routes.get(&*letter.envelope.name).ok_or_else(|| {
        Error::Config(format!(
            "group `{}` has no handler for `{}` on this bus; register it before replaying",
            group.name, letter.envelope.name
        ))
    })?;
    let (_keep_open, mut never) = watch::channel(false);
    let envelope = Arc::new(letter.envelope.clone());
    match attempt_all(shared, group, route, &envelope, None, &mut never).await {
        Ok(_) => {
            if let Some(storage) = &shared.storage {
                storage.mark_processed(&group.name, letter.envelope.id).await?;
            }
            shared.dead_letters.take(letter.id).await?;
            Ok(())
        }
        Err(Failure::Failed { error, attempts }) => {
            letter.error = error;
            letter.attempts += attempts;
            letter.failed_at = SystemTime::now();
            shared.dead_letters.put(letter).await
        }
        Err(Failure::Interrupted) => Ok(()),
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
) -> Result<u32, Failure> {
    if envelope.version != route.route.event_version() {
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
    let mut attempt = 1;
    let transactional = route.route.transactional();
    loop {
        let mut ctx = Context::new(
            envelope.clone(),
            group.name.clone(),
            attempt,
            Publisher(shared.clone()),
        );
        let span = tracing::info_span!(
            "eventflow.handle",
            event.id = %envelope.id,
            event.name = %envelope.name,
            group = %group.name,
            handler = route.route.options().name,
            attempt,
        );
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
        let follow_ups = publisher.map(|_| FollowUps::default());
        ctx.follow_ups = follow_ups.clone();
        let error = match begin_error {
            Some(error) => Some(error),
            None => handle_once(route, envelope, ctx, shared, &span, tx)
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
        if attempt > route.retries {
            tracing::error!(parent: &span, error = %error, attempts = attempt, "handler failed; dead-lettering event");
            return Err(Failure::Failed {
                error: error.to_string(),
                attempts: attempt,
            });
        }
        let wait = shared.backoff.delay(attempt);
        tracing::warn!(parent: &span, error = %error, ?wait, "handler failed; retrying");
        if sleep_unless_stopped(wait, shutdown).await {
            return Err(Failure::Interrupted);
        }
        attempt += 1;
    }
}

/// Hands a succeeded attempt's follow-ups to the consumer's transactional publisher. If
/// that fails, the record is left unfinished: the consumer aborts its transaction, so the
/// batch is handled again.
async fn send_follow_ups(
    publisher: &Arc<dyn Transport>,
    follow_ups: FollowUps,
    span: &tracing::Span,
) -> Result<(), Failure> {
    let envelopes = std::mem::take(&mut *follow_ups.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
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

impl Publisher {
    /// The envelope of a follow-up of `cause`, for a [`Context`] that holds its follow-ups
    /// back until the attempt succeeds.
    pub(crate) fn envelope_caused_by<E: Event>(
        &self,
        event: &E,
        cause: &Envelope,
    ) -> Result<Envelope, Error> {
        self.0.envelope(event, Some(cause))
    }
}

/// Stores a dead letter, retrying until the store takes it: an event is committed only
/// once it is handled or safely dead-lettered.
async fn dead_letter(shared: &Shared, letter: DeadLetter, shutdown: &mut watch::Receiver<bool>) -> Outcome {
    let stored = with_retries(shared, shutdown, "storing a dead letter", || {
        shared.dead_letters.put(letter.clone())
    });
    if stored.await.is_none() {
        return Outcome::Interrupted;
    }
    match with_retries(shared, shutdown, "handing a dead letter to the transport", || {
        shared.transport.dead_letter(&letter)
    })
    .await
    {
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
) -> Result<Option<BoxError>, Error> {
    let started = route.route.invoke(envelope, ctx, &*shared.codec)?;
    Ok(
        match AssertUnwindSafe(started)
            .catch_unwind()
            .instrument(span.clone())
            .await
        {
            Ok(Ok(())) => match tx {
                None => None,
                Some(tx) => commit(&tx).await.err().map(Into::into),
            },
            Ok(Err(error)) => Some(error),
            Err(panic) => Some(panic_error(panic)),
        },
    )
}

/// Starts a handler's unit of work with its inbox marker; `None` if the group already
/// processed the event.
async fn begin_marked(storage: &Arc<dyn Storage>, group: &str, event_id: Uuid) -> Result<Option<Tx>, Error> {
    let mut tx = storage.begin().await?;
    Ok(tx.mark_processed(group, event_id).await?.then(|| Tx::new(tx)))
}

/// Commits a handler's unit of work. A concurrent duplicate that committed first makes
/// this one a no-op, not a failure.
async fn commit(tx: &Tx) -> Result<(), Error> {
    let Some(tx) = tx.take().await else {
        return Err(Error::Config(
            "the handler's unit of work was already taken".into(),
        ));
    };
    match tx.commit().await {
        Ok(()) | Err(Error::AlreadyProcessed { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Runs a storage operation until it succeeds, backing off between failures; `None` if
/// shutdown came first. Storage trouble must not turn into dead letters or lost events.
async fn with_retries<T, F>(
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
