//! Retry policies: a handler's retry budget with its backoff, the uncounted re-runs after a
//! transient conflict, and storage operations retried until they succeed.

use std::time::Duration;

use tokio::sync::watch;

use super::super::shared::{GroupRoute, Shared};
use super::outcome::Failure;
use crate::Error;

/// Runs a storage operation until it succeeds, backing off between failures; `None` if
/// shutdown came first. Storage trouble must not turn into dead letters or lost events.
pub(in crate::bus) async fn with_retries<T, F>(
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

/// The pause before running a handler again after its `n`th transient failure in a row:
/// random (so that the units of work that conflicted do not meet again), growing to 100 ms.
pub(super) fn transient_pause(n: u32) -> Duration {
    let ceiling_ms = (1u64 << n.min(7)).min(100);
    Duration::from_micros(fastrand::u64(500..=ceiling_ms * 1000))
}

/// After attempt `attempt` failed with `error`, the `counted`th against the route's retry
/// budget: gives up (to dead-letter the event) once the budget is spent, else waits out the
/// backoff before the next attempt.
pub(super) async fn back_off_or_give_up(
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

/// Sleeps for `wait`; returns true if shutdown came first.
pub(super) async fn sleep_unless_stopped(wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if wait.is_zero() {
        return *shutdown.borrow();
    }
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => true,
        _ = tokio::time::sleep(wait) => false,
    }
}
