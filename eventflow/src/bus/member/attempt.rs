//! Running a handler: one attempt with its [`Context`], unit of work, held follow-ups,
//! panic catch and span, and the attempts of one event within its retry budget.

use std::sync::Arc;

use uuid::Uuid;

use super::super::route::{watched, Finished};
use super::super::shared::{Group, GroupRoute, Shared};
use super::delivery::{Delivery, Lane, Routed};
use super::outcome::Failure;
use super::retry::{back_off_or_give_up, sleep_unless_stopped, transient_pause};
use crate::follow_ups::{self, FollowUps};
use crate::store::Storage;
use crate::transport::TransactionalSink;
use crate::{BoxError, Context, Envelope, Error, Tx};

/// Runs `envelope`'s handler from attempt `first_attempt` on until it succeeds (the attempt
/// it succeeded at), the retry budget runs out or shutdown comes. A transient failure
/// ([`Error::Transient`]) runs it again at once, without spending the budget, up to
/// [`Error::TRANSIENT_RETRIES`] in a row.
///
/// `failed` is the error of attempt `first_attempt` when it already ran (in a run, see
/// `run`): the attempts go on from its failure.
pub(super) async fn attempt_all(
    lane: &mut Lane<'_>,
    routed: Routed<'_>,
    envelope: &Arc<Envelope>,
    first_attempt: u32,
    mut failed: Option<BoxError>,
) -> Result<u32, Failure> {
    let member = lane.member;
    let (shared, group, route) = (&member.shared, &member.group, routed.route);
    refuse_unknown_version(group, route, envelope)?;
    let mut attempt = first_attempt;
    // Attempts that failed with a transient error in a row: run again, not counted.
    let mut transient = 0;
    let mut uncounted = 0;
    loop {
        if let Some(error) = failed.take() {
            after_failure(
                lane,
                routed,
                envelope,
                error,
                attempt,
                &mut transient,
                &mut uncounted,
            )
            .await?;
            attempt += 1;
            continue;
        }
        let mut ctx = Context::new(envelope.clone(), member.scope.clone(), attempt);
        let span = handle_span(group, route, envelope, attempt);
        let mut tx = None;
        let mut begin_error: Option<BoxError> = None;
        if let (Some(storage), true) = (&shared.storage, routed.delivery.in_unit_of_work()) {
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
        let holds = tx.is_some() || routed.delivery == Delivery::BrokerTransaction;
        let follow_ups = holds.then(FollowUps::default);
        ctx.follow_ups = follow_ups.clone();
        let error = match begin_error {
            Some(error) => Some(error),
            None => handle_once(route, envelope, ctx, shared, &span, tx, follow_ups.as_ref())
                .await
                .map_err(|undecodable| undecodable_failure(&span, undecodable))?,
        };
        let Some(error) = error else {
            if let (Some(sink), Some(follow_ups)) = (&member.sink, follow_ups) {
                send_follow_ups(sink, follow_ups, &span).await?;
            }
            return Ok(attempt);
        };
        failed = Some(error);
    }
}

/// After attempt `attempt` failed with `error`: waits before the next one (at once, not
/// counted, for a transient error, up to [`Error::TRANSIENT_RETRIES`] in a row; else the
/// route's backoff), or gives up when the budget is spent or shutdown comes.
async fn after_failure(
    lane: &mut Lane<'_>,
    routed: Routed<'_>,
    envelope: &Envelope,
    error: BoxError,
    attempt: u32,
    transient: &mut u32,
    uncounted: &mut u32,
) -> Result<(), Failure> {
    let (shared, route) = (&lane.member.shared, routed.route);
    let span = handle_span(&lane.member.group, route, envelope, attempt);
    let is_transient = crate::error::is_transient(&*error);
    if !is_transient {
        *transient = 0;
    }
    match is_transient && *transient < Error::TRANSIENT_RETRIES {
        true => {
            *transient += 1;
            *uncounted += 1;
            let wait = transient_pause(*transient);
            tracing::info!(parent: &span, error = %error, ?wait, "handler met a transient conflict; running it again");
            match sleep_unless_stopped(wait, &mut lane.shutdown).await {
                true => Err(Failure::Interrupted),
                false => Ok(()),
            }
        }
        false => {
            let counted = attempt - *uncounted;
            let error = error.to_string();
            back_off_or_give_up(shared, route, error, counted, attempt, &mut lane.shutdown, &span).await
        }
    }
}

/// Refuses an event of a newer version than the route's handler knows: dead-lettered
/// without an attempt.
fn refuse_unknown_version(group: &Group, route: &GroupRoute, envelope: &Envelope) -> Result<(), Failure> {
    if route.knows(envelope) {
        return Ok(());
    }
    let error = Error::UnknownVersion {
        id: envelope.id,
        name: envelope.name.to_string(),
        found: envelope.version,
        expected: route.route.event_version(),
        group: group.name.to_string(),
    };
    tracing::error!(group = %group.name, event.id = %envelope.id, %error, "dead-lettering event");
    Err(Failure::Failed {
        error: error.to_string(),
        attempts: 0,
    })
}

pub(super) fn undecodable_failure(span: &tracing::Span, undecodable: Error) -> Failure {
    tracing::error!(parent: span, error = %undecodable, "dead-lettering event");
    Failure::Failed {
        error: undecodable.to_string(),
        attempts: 0,
    }
}

/// Decodes the payload and starts the handler, in its span, its panics caught; `Err` if the
/// payload does not decode.
fn run_handler(
    route: &GroupRoute,
    envelope: &Envelope,
    ctx: Context,
    shared: &Shared,
    span: &tracing::Span,
) -> Result<impl std::future::Future<Output = Finished>, Error> {
    let mut started = route.route.invoke(envelope, ctx, shared.codec())?;
    let span = span.clone();
    Ok(async move { watched(started.as_mut(), &span).await })
}

/// `None` if the handler succeeded, else its error or panic.
fn finished(finished: Finished) -> Option<BoxError> {
    match finished {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(panic) => Some(panic_error(panic)),
    }
}

/// Runs the handler once and commits its unit of work if it has one. `Ok(None)` when it
/// succeeded, `Ok(Some(error))` when it failed (to retry), `Err` when the payload does
/// not decode (not worth retrying).
pub(super) async fn handle_once(
    route: &GroupRoute,
    envelope: &Envelope,
    ctx: Context,
    shared: &Shared,
    span: &tracing::Span,
    tx: Option<Tx>,
    follow_ups: Option<&FollowUps>,
) -> Result<Option<BoxError>, Error> {
    let held = ctx.follow_ups.clone();
    let started = run_handler(route, envelope, ctx, shared, span)?;
    let ended = match held {
        // `EventBus::publish` from inside the handler joins its held-back follow-ups.
        Some(held) => follow_ups::HELD_FOLLOW_UPS.scope(held, started).await,
        None => started.await,
    };
    Ok(match (finished(ended), tx) {
        (None, Some(tx)) => commit(&tx, follow_ups).await.err().map(Into::into),
        (outcome, _) => outcome,
    })
}

pub(super) fn handle_span(
    group: &Group,
    route: &GroupRoute,
    envelope: &Envelope,
    attempt: u32,
) -> tracing::Span {
    tracing::info_span!(
        "eventflow.handle",
        event.id = %envelope.id,
        event.name = %envelope.name,
        group = %group.name,
        handler = route.route.options().name,
        attempt,
    )
}

/// Hands a succeeded attempt's follow-ups to the consumer's transactional sink. If
/// that fails, the record is left unfinished: the consumer aborts its transaction, so the
/// batch is handled again.
async fn send_follow_ups(
    sink: &Arc<dyn TransactionalSink>,
    follow_ups: FollowUps,
    span: &tracing::Span,
) -> Result<(), Failure> {
    let envelopes = follow_ups::take(&follow_ups);
    if envelopes.is_empty() {
        return Ok(());
    }
    match sink.publish_batch(envelopes).await {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::error!(parent: span, %error, "publishing the handler's follow-ups in the consumer's transaction failed; the batch is handled again");
            Err(Failure::Interrupted)
        }
    }
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

pub(super) fn panic_error(panic: Box<dyn std::any::Any + Send>) -> BoxError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("handler panicked: {message}").into()
}
