//! One member of a consumer group: polls its partitions, hands each batch to its lanes,
//! commits in poll order. The rooms of its work:
//!
//! - `delivery`: what the member decides before its first record, one [`Delivery`] per
//!   route (plain, inbox-guarded, own unit of work, shared unit, broker transaction);
//! - `lane`: a batch split into partitions, each record down its route's path;
//! - `run`: the first attempts of consecutive events of one handler, in one call of it;
//! - `attempt`: one attempt of a handler with its context, panic catch and span, and the
//!   attempts of an event within its budget;
//! - `retry`: the retry budget, transient re-runs and storage retries;
//! - `group_commit`: transactional handlers sharing a unit of work in savepoints;
//! - `inbox_guard`: the inbox check before a batch and its markers after;
//! - `dead_letter`: giving up, setting aside and replaying.
//!
//! [`Delivery`]: delivery::Delivery

mod attempt;
mod dead_letter;
mod delivery;
mod group_commit;
mod inbox_guard;
mod lane;
mod outcome;
mod retry;
mod run;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::shared::{Group, Shared};
use crate::transport::{Consumer, Record};
use crate::Error;
use delivery::Member;
use inbox_guard::Marking;
use lane::handle_batch;
use retry::sleep_unless_stopped;

pub(super) use dead_letter::replay;
pub(super) use retry::with_retries;

/// Runs one member of `group` on `consumer` until shutdown: polls, handles each batch,
/// commits in poll order, and leaves the group.
pub(super) async fn run(
    shared: Arc<Shared>,
    group: Arc<Group>,
    mut consumer: Box<dyn Consumer>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A consumer that publishes in a broker transaction gets the follow-ups of its records.
    let member = Member::new(shared, group, consumer.transactional_sink());
    let group = &member.group;
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
                commit_marked(group, &mut *consumer, batch.records, written).await;
                continue;
            }
            Step::Polled(Ok(records)) => {
                failures = 0;
                records
            }
            Step::Polled(Err(error)) => {
                failures += 1;
                let wait = member
                    .shared
                    .backoff
                    .delay(failures)
                    .max(Duration::from_millis(10));
                tracing::error!(group = %group.name, %error, ?wait, "polling the transport failed; retrying");
                if sleep_unless_stopped(wait, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        let in_flight = marking.as_ref().map(|batch| &batch.ids);
        let batch = handle_batch(&member, records, &shutdown, in_flight).await;
        // Commits stay in poll order: the previous batch first.
        if let Some(previous) = marking.take() {
            let written = previous.written.await;
            commit_marked(group, &mut *consumer, previous.records, written).await;
        }
        if batch.handled.is_empty() {
            commit_records(group, &mut *consumer, &batch.done).await;
        } else {
            marking = Some(Marking::start(&member, batch, &shutdown));
        }
        if *shutdown.borrow() {
            break;
        }
    }
    if let Some(last) = marking.take() {
        let written = last.written.await;
        commit_marked(group, &mut *consumer, last.records, written).await;
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
