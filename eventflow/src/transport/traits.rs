//! The traits a transport implements: [`Transport`] carries envelopes to consumer groups,
//! [`Consumer`] is one member of a group, reading [`Record`]s, and [`TransactionalSink`] where
//! a member in a broker transaction writes. They sit in a room of their
//! own, below the [`InProcess`](super::InProcess) transport that implements them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{BoxFuture, DeadLetter, Envelope, Error, OutboxProgress};

/// An event read from a partition.
#[derive(Clone, Debug)]
pub struct Record {
    /// The topic it was read from.
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The event.
    pub envelope: Arc<Envelope>,
}

/// Carries envelopes to consumer groups.
///
/// Implemented by [`InProcess`](super::InProcess) here and by `eventflow_kafka::Kafka`;
/// implement it to plug in another broker, and prove the implementation with the
/// [`conformance`](super::conformance) suite.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publishes one envelope to `envelope.topic`, on the partition its key selects.
    /// Returns once the transport has accepted it (for a broker: acknowledged it). May wait
    /// while the transport applies backpressure.
    ///
    /// An event the transport refuses for good (too large, an invalid topic, a record the
    /// broker rejects whatever happens) is [`Error::Rejected`], made with
    /// [`Error::rejected`] and a reason that says what to do; any other error is taken as
    /// transient (broker down, a timeout), worth publishing again later.
    async fn publish(&self, envelope: Envelope) -> Result<(), Error>;

    /// Publishes several envelopes, keeping their order per key.
    ///
    /// `Ok` when every envelope was accepted. [`Error::Rejected`] when some were refused
    /// for good: its [`Rejection`](crate::Rejection)s give their positions in `envelopes`,
    /// and every envelope *not* listed was accepted. Any other error is transient and says
    /// nothing about which envelopes went through: the caller publishes the whole batch
    /// again (at least once; the consumers' inbox absorbs duplicates).
    ///
    /// Later envelopes of a refused envelope's key are still published: ordering per key
    /// holds among the delivered ones. The outbox relay offers the other policy, parking
    /// them ([`EventBusBuilder::sequenced_dead_letters`](crate::EventBusBuilder::sequenced_dead_letters)).
    ///
    /// The default publishes one by one with [`publish`](Transport::publish).
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), Error> {
        let mut rejections = Vec::new();
        for (index, envelope) in envelopes.into_iter().enumerate() {
            match self.publish(envelope).await {
                Ok(()) => {}
                Err(Error::Rejected { rejections: refused }) => rejections.extend(
                    refused
                        .into_iter()
                        .map(|rejection| crate::Rejection { index, ..rejection }),
                ),
                Err(error) => return Err(error),
            }
        }
        match rejections.is_empty() {
            true => Ok(()),
            false => Err(Error::Rejected { rejections }),
        }
    }

    /// Joins `group` as a new member that consumes `topics`. The group's partitions are
    /// rebalanced over its members.
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, Error>;

    /// Called when a group gives up on an event, after the bus stored the dead letter and
    /// before the event is committed. A broker transport forwards it to a dead-letter
    /// topic there; an error makes the bus retry with backoff. The default does nothing.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        let _ = letter;
        Ok(())
    }

    /// For a transport that keeps accepted events only in this process's memory (such as
    /// [`InProcess`](super::InProcess)): a future that resolves once every group has
    /// committed everything published through the transport before the call. The outbox
    /// relay keeps entries until then, so a crash between publishing and handling loses
    /// nothing.
    ///
    /// `None`, the default, says the transport is durable: once it accepted an event (a
    /// broker acknowledged it), the event outlives this process.
    fn until_handled(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// For [`EventBus::settled`](crate::EventBus::settled) and a graceful
    /// [`shutdown`](crate::EventBus::shutdown): a future that resolves once each of `groups`
    /// (a group and the topics it consumes) has committed every event published to those
    /// topics before the call. `None` says the transport cannot tell.
    ///
    /// The default is [`until_handled`](Transport::until_handled) for a transport that is
    /// not durable (it waits for every group, the bus's or not), and `None` for a durable
    /// one. A broker transport can answer from its consumer groups' lag (high watermarks
    /// taken at the call, then committed offsets).
    fn until_settled(&self, groups: &[(&str, &[&str])]) -> Option<BoxFuture<'static, Result<(), Error>>> {
        let _ = groups;
        let handled = self.until_handled()?;
        Some(Box::pin(async move {
            handled.await;
            Ok(())
        }))
    }

    /// What [`until_settled`](Transport::until_settled) still waits for, in words (for
    /// example "group `inventory`: 3 events of `orders` not committed"), for the error of
    /// [`EventBus::settled_within`](crate::EventBus::settled_within) and the log line of a
    /// shutdown that ran out of time. A graceful shutdown also asks it, after each pass of
    /// its drain, when `until_settled`'s future is not ready at its first poll: `None` then
    /// means nothing is left, so a transport whose `until_settled` needs a round trip should
    /// answer this from the same lag. The default says nothing.
    async fn unsettled(&self, groups: &[(&str, &[&str])]) -> Option<String> {
        let _ = groups;
        None
    }

    /// Called by a bus that runs an outbox relay to this transport, with the relay's
    /// progress, so that the transport's own "idle" waits (such as
    /// [`InProcess::wait_idle`](super::InProcess::wait_idle)) also wait for entries
    /// committed and not yet relayed. The default ignores it.
    fn relays_from(&self, outbox: OutboxProgress) {
        let _ = outbox;
    }
}

/// One member of a consumer group. Dropping it leaves the group; its uncommitted records
/// are delivered again to the member that takes its partitions.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// Waits for the next records of the partitions this member owns, in offset order per
    /// partition. Must be cancel-safe: dropping the future loses no record.
    async fn poll(&mut self) -> Result<Vec<Record>, Error>;

    /// Marks `records` as handled: the group will not see them again.
    async fn commit(&mut self, records: &[Record]) -> Result<(), Error>;

    /// Leaves the group after committing what was committed.
    async fn close(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// For a member that handles each polled batch in a broker transaction (Kafka's
    /// exactly-once mode): the sink that writes into that transaction, so that the
    /// follow-ups handlers publish (and the copies of dead letters) become visible together
    /// with the batch's [`commit`](Consumer::commit), or never if it is aborted.
    ///
    /// When it is `Some`, the bus collects what an attempt publishes through
    /// [`Context::publish`](crate::Context::publish) and hands it to this sink only once
    /// the handler succeeded, so a failed attempt publishes nothing; and it skips the inbox
    /// for this member, since an aborted batch must be handled again. `None`, the default,
    /// publishes follow-ups through the bus's transport right away.
    fn transactional_sink(&self) -> Option<Arc<dyn TransactionalSink>> {
        None
    }
}

/// Where a member that handles its batches in a broker transaction writes: into that
/// transaction (see [`Consumer::transactional_sink`]). Only what a handler's output needs: a
/// sink publishes and dead-letters, it never subscribes.
#[async_trait]
pub trait TransactionalSink: Send + Sync {
    /// Publishes a succeeded attempt's follow-ups into the open transaction, in order.
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), Error>;

    /// Writes a dead letter's copy into the open transaction, so a batch that aborts
    /// leaves none (it is written again when the batch is handled again).
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), Error>;
}
