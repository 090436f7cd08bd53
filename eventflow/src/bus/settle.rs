//! Waiting for what was published to be handled: [`EventBus::settled`], and the drain of a
//! graceful [`EventBus::shutdown`].

use std::time::Duration;

use futures_util::FutureExt;

use super::event_bus::EventBus;
use super::shared::Shared;
use crate::Error;

impl EventBus {
    /// Waits until everything published through this bus (with [`publish`](Self::publish))
    /// or committed through it (units of work, `Tx` handlers' follow-ups) before the call
    /// has been handled or dead-lettered by every group of this bus: the relay has brought
    /// the committed outbox entries to the transport, and each group has committed them,
    /// retries and dead letters included.
    ///
    /// For tests, examples and short-lived tools that must not end before their events
    /// took effect; prefer [`settled_within`](Self::settled_within), which cannot hang.
    /// Events published after the call (follow-ups of the handlers, say) are not waited
    /// for; call it again to wait for those.
    ///
    /// ```
    /// # use eventflow::{subscribe, Event, EventBus, MemoryStore};
    /// # #[derive(Event, serde::Serialize, serde::Deserialize)]
    /// # struct OrderPaid { order_id: String }
    /// # #[subscribe(group = "ledger")]
    /// # async fn ledger(_event: OrderPaid) -> Result<(), std::io::Error> { Ok(()) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), eventflow::Error> {
    /// let bus = EventBus::builder().storage(MemoryStore::new()).handler(ledger).start().await?;
    /// let mut work = bus.begin().await?;
    /// work.publish(&OrderPaid { order_id: "XYZ-123".into() }).await?;
    /// work.commit().await?;
    /// bus.settled().await?; // `ledger` has handled it
    /// # bus.shutdown().await; Ok(()) }
    /// ```
    ///
    /// What it waits for on the transport comes from
    /// [`Transport::until_settled`](crate::transport::Transport::until_settled): the
    /// in-process transport tells exactly, Kafka from the groups' committed offsets against
    /// the ends of their partitions taken at the call; a transport that cannot tell makes it
    /// fail with [`Error::Unsupported`]. If another relay (another process or bus on the same store) holds
    /// the outbox lease, the entries it delivers are not waited for. Fails with
    /// [`Error::Closed`] once the bus has shut down.
    pub async fn settled(&self) -> Result<(), Error> {
        self.shared.settle(true).await
    }

    /// [`settled`](Self::settled), for at most `timeout`: then it fails with
    /// [`Error::NotSettled`], which says what is still waiting (commits the relay has not
    /// brought over, events a group has not handled, the relay that holds the outbox).
    pub async fn settled_within(&self, timeout: Duration) -> Result<(), Error> {
        match tokio::time::timeout(timeout, self.settled()).await {
            Ok(settled) => settled,
            Err(_) => Err(Error::NotSettled {
                waited: timeout,
                pending: self.shared.unsettled().await,
            }),
        }
    }

    /// Runs until Ctrl-C or SIGTERM ([`shutdown_signal`](crate::shutdown_signal)), then
    /// [`shutdown`](Self::shutdown)s gracefully: what was published is handled first,
    /// within the [`shutdown_timeout`](crate::EventBusBuilder::shutdown_timeout).
    pub async fn run_until_signal(self) {
        crate::shutdown_signal().await;
        self.shutdown().await;
    }
}

impl Shared {
    /// The bus's groups and the topics each consumes.
    fn group_topics(&self) -> Vec<(&str, &[&str])> {
        self.groups
            .values()
            .map(|group| (&*group.name, &group.topics[..]))
            .collect()
    }

    /// Waits for the outbox, then the transport. With `strict`, a transport that cannot
    /// tell when its groups are done is an error; otherwise (a shutdown's drain) the
    /// events are safe with it and not waited for.
    pub(super) async fn settle(&self, strict: bool) -> Result<(), Error> {
        if let Some(outbox) = &self.outbox {
            if !outbox.relayed_through(outbox.committed()).await {
                return Err(Error::Closed);
            }
        }
        let groups = self.group_topics();
        if groups.is_empty() {
            return Ok(());
        }
        match self.transport.until_settled(&groups) {
            Some(settled) => settled.await,
            None if strict => Err(Error::Unsupported(
                "this bus's transport cannot tell when its groups have handled an event \
                 (`Transport::until_settled` returns None); wait on the broker's consumer lag \
                 instead"
                    .into(),
            )),
            None => Ok(()),
        }
    }

    /// Whether nothing is waiting now: what a drain checks after each pass, since the
    /// handlers of one pass may publish follow-ups.
    ///
    /// A transport that keeps its events in memory answers at once (its `until_settled`
    /// is ready when nothing is left). One that asks a broker (Kafka) cannot answer before
    /// a round trip, so its wait is never ready at the first poll: its lag now decides,
    /// as [`Transport::unsettled`](crate::transport::Transport::unsettled) reads it. Taking
    /// the first poll's `Pending` for "not settled" made every shutdown on Kafka wait out
    /// its whole deadline while asking the broker again and again.
    async fn is_settled_now(&self) -> bool {
        if !self.outbox.as_ref().is_none_or(|outbox| outbox.is_relayed()) {
            return false;
        }
        let groups = self.group_topics();
        if groups.is_empty() {
            return true;
        }
        match self.transport.until_settled(&groups).map(FutureExt::now_or_never) {
            None => true,
            Some(Some(settled)) => settled.is_ok(),
            Some(None) => self.transport.unsettled(&groups).await.is_none(),
        }
    }

    /// Hands everything published and committed so far to the groups, follow-ups
    /// included, until nothing is left.
    pub(super) async fn drain(&self) -> Result<(), Error> {
        loop {
            self.settle(false).await?;
            if self.is_settled_now().await {
                return Ok(());
            }
        }
    }

    /// What a settle still waits for, in words.
    pub(super) async fn unsettled(&self) -> String {
        let mut parts = Vec::new();
        if let Some(outbox) = &self.outbox {
            if !outbox.is_relayed() {
                let commits = outbox.committed().saturating_sub(outbox.relayed());
                parts.push(format!(
                    "the relay has not yet delivered the entries of {commits} units of work \
                     committed to the outbox (they are safe there)"
                ));
            }
            if let Some(storage) = &self.storage {
                if let Ok(Some(lease)) = storage.outbox_lease().await {
                    if Some(&*lease.holder) != self.relay_id.as_deref() && !lease.is_expired() {
                        parts.push(format!(
                            "another relay, `{}`, holds the outbox lease until {}",
                            lease.holder,
                            lease.expires_at_utc()
                        ));
                    }
                }
            }
        }
        let groups = self.group_topics();
        if let Some(transport) = self.transport.unsettled(&groups).await {
            parts.push(transport);
        }
        if parts.is_empty() {
            parts.push("events still being handled".into());
        }
        parts.join("; ")
    }
}
