//! [`Member`]: a consumer's membership in its group, the rebalance callback that hands
//! partitions over (eager or incremental, as the group protocol says) and commits what was
//! handled before they go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::group_protocol::FIRST_ASSIGNMENT_PATIENCE;

/// The consumer's context: serves rebalances, and counts revocations and remembers the
/// partitions revoked, so a poll can tell that records it already took belong to a
/// partition that moved.
#[derive(Default)]
pub(crate) struct Member {
    revocations: AtomicU64,
    /// The partitions revoked since the current poll began.
    revoked: Mutex<HashSet<(String, i32)>>,
    /// Whether partitions were ever assigned to this member.
    assigned: AtomicBool,
    group: String,
    /// Whether partitions are assigned and revoked incrementally: under the consumer group
    /// protocol (KIP-848) always, under the classic one with `cooperative-sticky`. The eager
    /// `assign`/`unassign` are for the classic eager protocol only; librdkafka's KIP-848
    /// guide forbids them under the consumer protocol.
    incremental: bool,
    /// Set once the member committed for the last time and is leaving the group.
    leaving: AtomicBool,
}

impl Member {
    pub(crate) fn new(group: &str, incremental: bool) -> Self {
        Member {
            revocations: AtomicU64::new(0),
            revoked: Mutex::default(),
            assigned: AtomicBool::new(false),
            group: group.to_owned(),
            incremental,
            leaving: AtomicBool::new(false),
        }
    }

    /// How many revocations this member has had.
    pub(crate) fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Marks the member as leaving the group: it committed for the last time.
    pub(crate) fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    /// The partitions revoked since the last call.
    pub(crate) fn take_revoked(&self) -> HashSet<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientContext for Member {
    /// librdkafka's errors are informational unless fatal: it reconnects, refreshes
    /// metadata and rejoins the group by itself, as long as the member keeps polling.
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal)) {
            tracing::error!(group = %self.group, %error, reason, "the Kafka consumer failed for good");
        } else {
            tracing::warn!(group = %self.group, %error, reason, "Kafka consumer trouble; librdkafka retries by itself");
        }
    }
}

impl ConsumerContext for Member {
    /// rdkafka's default, without its one hazard: it asks librdkafka for the rebalance
    /// protocol, a request to the consumer group's handle. Once that handle has terminated
    /// (the consumer is closing), librdkafka drops every request to it unanswered and the
    /// caller waits forever (librdkafka#4041, rust-rdkafka#509): a member that was shut
    /// down hung in its final revocation. The protocol is known from the configuration, and
    /// a terminated handle is asked nothing.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        if consumer.closed() {
            return;
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            _ => Rebalance::Error(KafkaError::Rebalance(err.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let assigned = match (err, self.incremental) {
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, false) => consumer.assign(partitions),
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true) => {
                consumer.incremental_assign(partitions)
            }
            (_, false) => consumer.unassign(),
            (_, true) => consumer.incremental_unassign(partitions),
        };
        if let Err(error) = assigned {
            tracing::warn!(group = %self.group, %error, "applying a rebalance failed; librdkafka rejoins the group");
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(group = %self.group, %error, "an offset commit failed; the next one or the commit on revoke covers it, or those events are handled again")
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Every record handled so far has its offset stored (the worker commits
                // before it polls again, and rebalances are only served while it polls);
                // the commits of those offsets are asynchronous, so finish them now,
                // before the partitions move. A member leaving the group committed already.
                let leaving = self.leaving.load(Ordering::Acquire);
                let committed = match leaving {
                    true => Ok(()),
                    false => consumer.commit_consumer_state(CommitMode::Sync),
                };
                if let Err(error) = committed {
                    if !matches!(error, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                        tracing::warn!(group = %self.group, %error, "committing before a rebalance failed; the new owner handles those events again");
                    }
                }
                let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
                for partition in partitions.elements() {
                    revoked.insert((partition.topic().to_owned(), partition.partition()));
                }
                drop(revoked);
                self.revocations.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(group = %self.group, partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                self.assigned.store(true, Ordering::Release);
                // An incremental rebalance lets a member keep consuming the partitions it
                // keeps, but the broker refuses their commits until the rebalance completes
                // (ILLEGAL_GENERATION, STALE_MEMBER_EPOCH): the offsets handled meanwhile
                // are stored, not committed, and without another commit on those
                // partitions their events would be handled again by a later owner. The
                // rebalance is complete here: commit them now.
                if self.incremental && !self.leaving.load(Ordering::Acquire) {
                    match consumer.commit_consumer_state(CommitMode::Async) {
                        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                        Err(error) => {
                            tracing::warn!(group = %self.group, %error, "committing after a rebalance failed; the next commit covers it")
                        }
                    }
                }
                tracing::debug!(group = %self.group, partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Error(error) => {
                tracing::error!(group = %self.group, %error, "consumer group rebalance failed");
            }
        }
    }
}

/// Under the consumer group protocol, a broker that does not speak it (Kafka before 4.0,
/// or with the protocol turned off) makes librdkafka retry without a word: say so once
/// if the member still has no partitions after a while.
pub(crate) fn warn_if_never_assigned(consumer: Weak<StreamConsumer<Member>>, group_id: String) {
    tokio::spawn(async move {
        tokio::time::sleep(FIRST_ASSIGNMENT_PATIENCE).await;
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        if !consumer.context().assigned.load(Ordering::Acquire) {
            tracing::warn!(
                group = %group_id,
                waited = ?FIRST_ASSIGNMENT_PATIENCE,
                "no partitions assigned to this member of a consumer-protocol (KIP-848) group yet; \
                 unless other members hold them all, the broker may not support that protocol \
                 (it needs Apache Kafka 4.0 or later with group.coordinator.rebalance.protocols \
                 including `consumer`): use GroupProtocol::Classic on such a broker"
            );
        }
    });
}
