//! [`PolledOutbox`]: the outbox feed of every row store, polling a [`LeasedOutbox`] under its
//! lease. Every rule of lease timing for row stores lives here: renewing at a third of the
//! lease, the half-lease "still ours" view, standing by and taking over.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::OutboxLease;
use super::leased_outbox::LeasedOutbox;
use super::outbox_entry::OutboxEntry;
use super::outbox_feed::{Fed, FeedSettings, OutboxFeed};
use crate::Error;

/// The [`OutboxFeed`] of a row store: claims batches from a [`LeasedOutbox`] after the last
/// entry it handed out, woken by the store's [`commit_signal`](super::OutboxStore::commit_signal)
/// and polling every [`poll_interval`](FeedSettings::poll_interval) for other processes'
/// commits.
///
/// Each claim renews the lease; while the relay holds ([`OutboxFeed::hold`]) or waits, the
/// feed renews it every third of the lease. While another relay holds an unexpired lease the
/// claims return nothing: the feed reads [`outbox_lease`](super::OutboxStore::outbox_lease)
/// to tell that from an empty outbox, reports [`Fed::StandingBy`] once per holder, and takes
/// over with the first claim after the lease ran out (or at once, when the store's claim
/// finds the holder gone: [`relay_is_gone`](super::relay_is_gone)).
///
/// Return it from [`OutboxStore::open_outbox`](super::OutboxStore::open_outbox); the
/// [`LeasedOutbox`] docs show a whole row backend.
pub struct PolledOutbox {
    outbox: Arc<dyn LeasedOutbox>,
    relay: String,
    settings: FeedSettings,
    commits: watch::Receiver<u64>,
    /// The last sequence handed out, while some handed out are not delivered: the next claim
    /// starts after it. Back to 0 when all are delivered or on rewind, so nothing left
    /// behind (by an error, or while another relay held the lease) is skipped for good.
    after: u64,
    /// Handed out and not yet delivered.
    outstanding: BTreeSet<u64>,
    /// When a claim last found the lease this relay's.
    held_at: Option<Instant>,
    /// When a claim last renewed the lease (if it was this relay's).
    renewed_at: Instant,
    /// The commit count last reported as caught up.
    caught_up: Option<u64>,
    /// The other holder last reported as [`Fed::StandingBy`].
    standing_by: Option<String>,
    /// A claim a dropped [`next`](OutboxFeed::next) left running: the next call takes its
    /// result instead of claiming again (the relay drops `next` whenever a batch the groups
    /// handled comes first).
    claiming: Option<Claim>,
    /// A claim a rewind left behind, still to finish before the lease is given up.
    rewound: Option<JoinHandle<Result<Vec<OutboxEntry>, Error>>>,
}

/// A claim running on its own task.
struct Claim {
    /// The commit count before it started.
    seen: u64,
    started: Instant,
    task: JoinHandle<Result<Vec<OutboxEntry>, Error>>,
}

/// Whose the lease was at an empty claim.
enum Holder {
    Ours,
    Other(OutboxLease),
    Unknown,
}

impl PolledOutbox {
    /// The feed of relay `relay` on `outbox`.
    pub fn new(outbox: Arc<dyn LeasedOutbox>, relay: &str, settings: FeedSettings) -> Self {
        PolledOutbox {
            commits: outbox.commit_signal(),
            outbox,
            relay: relay.to_owned(),
            settings: FeedSettings {
                batch: settings.batch.max(1),
                ..settings
            },
            after: 0,
            outstanding: BTreeSet::new(),
            held_at: None,
            renewed_at: Instant::now(),
            caught_up: None,
            standing_by: None,
            claiming: None,
            rewound: None,
        }
    }

    /// The claim running, or a new one after the last entry handed out.
    fn claim(&mut self) -> &mut Claim {
        self.claiming.get_or_insert_with(|| {
            let (outbox, relay) = (self.outbox.clone(), self.relay.clone());
            let (lease, after, batch) = (self.settings.lease, self.after, self.settings.batch);
            Claim {
                seen: *self.commits.borrow_and_update(),
                started: Instant::now(),
                task: tokio::spawn(async move { outbox.claim_outbox(&relay, lease, after, batch).await }),
            }
        })
    }

    /// Lets a claim left running finish, so that it cannot take the lease again after it was
    /// given up.
    async fn settle_claim(&mut self) {
        let tasks = [self.claiming.take().map(|claim| claim.task), self.rewound.take()];
        for task in tasks.into_iter().flatten() {
            let _ = task.await;
        }
    }

    /// How often the lease is renewed while the relay holds it.
    fn renew_every(&self) -> Duration {
        self.settings.lease / 3
    }

    /// Whose the lease was at an empty claim made at `claimed_at`.
    async fn holder(&mut self, claimed_at: Instant) -> Holder {
        // Each claim renews the lease of the relay that holds it, and nobody takes a live
        // relay's lease before it runs out: held at the last claim, held at this one. Half
        // the lease leaves room for the wall clock the lease is written in.
        if self
            .held_at
            .is_some_and(|at| claimed_at.duration_since(at) < self.settings.lease / 2)
        {
            self.held_at = Some(claimed_at);
            return Holder::Ours;
        }
        match self.outbox.outbox_lease().await {
            Ok(Some(lease)) if lease.holder != self.relay => {
                self.held_at = None;
                Holder::Other(lease)
            }
            // This relay's, or nobody's (a store that does not tell): the claim was ours.
            Ok(_) => {
                self.held_at = Some(claimed_at);
                Holder::Ours
            }
            Err(error) => {
                tracing::debug!(relay = %self.relay, %error, "reading the outbox lease failed");
                Holder::Unknown
            }
        }
    }

    /// Renews the lease with an empty claim.
    async fn renew(&mut self) -> Result<(), Error> {
        let at = Instant::now();
        self.outbox
            .claim_outbox(&self.relay, self.settings.lease, u64::MAX, 0)
            .await?;
        self.renewed_at = at;
        Ok(())
    }
}

#[async_trait]
impl OutboxFeed for PolledOutbox {
    async fn next(&mut self) -> Result<Fed, Error> {
        loop {
            // State changes only right before a return: a future dropped at an await loses
            // nothing, and the next call claims the same entries again.
            let claim = self.claim();
            let (seen, claimed_at) = (claim.seen, claim.started);
            let claimed = (&mut claim.task).await;
            self.claiming = None;
            let entries = claimed.map_err(|panic| {
                Error::backend(format!(
                    "claiming the outbox panicked: {panic}; the claim is made again"
                ))
            })??;
            if let Some(last) = entries.last() {
                self.held_at = Some(claimed_at);
                self.renewed_at = claimed_at;
                self.standing_by = None;
                self.after = last.sequence;
                self.outstanding
                    .extend(entries.iter().map(|entry| entry.sequence));
                // A claim that was not full saw every entry committed before it.
                let caught_up = (entries.len() < self.settings.batch).then_some(seen);
                self.caught_up = self.caught_up.max(caught_up);
                return Ok(Fed::Entries { entries, caught_up });
            }
            let held = match self.holder(claimed_at).await {
                Holder::Ours => {
                    self.renewed_at = claimed_at;
                    self.standing_by = None;
                    if self.caught_up < Some(seen) {
                        self.caught_up = Some(seen);
                        return Ok(Fed::Entries {
                            entries: Vec::new(),
                            caught_up: Some(seen),
                        });
                    }
                    true
                }
                Holder::Other(lease) => {
                    if self.standing_by.as_deref() != Some(&lease.holder) {
                        self.standing_by = Some(lease.holder.clone());
                        return Ok(Fed::StandingBy(lease));
                    }
                    false
                }
                Holder::Unknown => false,
            };
            let wait = match held {
                true => self.settings.poll_interval.min(self.renew_every()),
                false => self.settings.poll_interval,
            };
            tokio::select! {
                changed = self.commits.changed() => {
                    if changed.is_err() {
                        // The store is gone: poll only.
                        tokio::time::sleep(wait).await;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn delivered(&mut self, sequences: &[u64]) -> Result<(), Error> {
        if sequences.is_empty() {
            return Ok(());
        }
        if self.renewed_at.elapsed() >= self.renew_every() {
            self.renew().await?;
        }
        self.outbox.mark_delivered(&self.relay, sequences).await?;
        for sequence in sequences {
            self.outstanding.remove(sequence);
        }
        if self.outstanding.is_empty() {
            self.after = 0;
        }
        Ok(())
    }

    async fn reread(&mut self, sequence: u64) -> Result<Option<OutboxEntry>, Error> {
        let mut again = self
            .outbox
            .claim_outbox(&self.relay, self.settings.lease, sequence.saturating_sub(1), 1)
            .await?;
        Ok(again.pop().filter(|entry| entry.sequence == sequence))
    }

    fn rewind(&mut self) {
        // A claim running after the old cursor: its entries come again with the next one.
        if let Some(claim) = self.claiming.take() {
            self.rewound = Some(claim.task);
        }
        self.after = 0;
        self.outstanding.clear();
        self.caught_up = None;
    }

    async fn hold(&mut self) -> Error {
        loop {
            let due = self.renewed_at + self.renew_every();
            tokio::time::sleep_until(due.into()).await;
            if let Err(error) = self.renew().await {
                return error;
            }
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), Error> {
        self.settle_claim().await;
        self.outbox.release_outbox(&self.relay).await
    }
}

impl std::fmt::Debug for PolledOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolledOutbox")
            .field("relay", &self.relay)
            .field("settings", &self.settings)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}
