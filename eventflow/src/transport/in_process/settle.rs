//! When the in-process transport is settled: the outboxes relaying to it have brought
//! everything committed, and the groups asked about have committed everything published.

use std::pin::pin;
use std::sync::Arc;

use super::{lock, InProcess, Topic};
use crate::{BoxFuture, Error, OutboxProgress};

/// A partition's end when the wait began, and the group that must commit up to it.
struct Mark {
    topic: Arc<Topic>,
    partition: usize,
    end: u64,
    group: Arc<str>,
}

impl InProcess {
    pub(super) fn add_outbox(&self, outbox: OutboxProgress) {
        let mut outboxes = lock(&self.inner.outboxes);
        outboxes.retain(|o| !o.is_stopped());
        outboxes.push(outbox);
    }

    /// Whether every outbox relaying here has relayed what was committed to it.
    pub(super) fn outboxes_relayed(&self) -> bool {
        lock(&self.inner.outboxes).iter().all(OutboxProgress::is_relayed)
    }

    /// Waits until every outbox relaying here has relayed what was committed to it before
    /// the call (handled, too: the relay marks entries delivered once every group
    /// committed them).
    pub(super) async fn wait_outboxes(&self) {
        let outboxes: Vec<_> = lock(&self.inner.outboxes).clone();
        for outbox in outboxes {
            outbox.relayed_through(outbox.committed()).await;
        }
    }

    fn marks(&self, groups: &[(&str, &[&str])]) -> Vec<Mark> {
        let mut marks = Vec::new();
        for &(group, topics) in groups {
            for name in topics {
                let Some(topic) = lock(&self.inner.topics).get(*name).cloned() else {
                    continue;
                };
                for (partition, log) in topic.partitions.iter().enumerate() {
                    let mut log = lock(&log.log);
                    let end = log.end();
                    if let Some(cursor) = log.cursor(group) {
                        if cursor.committed < end {
                            marks.push(Mark {
                                topic: topic.clone(),
                                partition,
                                end,
                                group: cursor.group.clone(),
                            });
                        }
                    }
                }
            }
        }
        marks
    }

    /// Resolves once each of `groups` has committed what was published to its topics
    /// before the call.
    pub(super) fn until_groups_committed(
        &self,
        groups: &[(&str, &[&str])],
    ) -> BoxFuture<'static, Result<(), Error>> {
        let mut marks = self.marks(groups);
        let inner = self.inner.clone();
        Box::pin(async move {
            loop {
                let mut progress = pin!(inner.progress.notified());
                progress.as_mut().enable();
                marks.retain(|mark| {
                    let mut log = lock(&mark.topic.partitions[mark.partition].log);
                    log.cursor(&mark.group).is_some_and(|c| c.committed < mark.end)
                });
                if marks.is_empty() {
                    return Ok(());
                }
                progress.await;
            }
        })
    }

    /// What `groups` have not committed yet, per group and topic.
    pub(super) fn describe_lag(&self, groups: &[(&str, &[&str])]) -> Option<String> {
        let mut parts = Vec::new();
        for &(group, topics) in groups {
            for topic in topics {
                let lag = self.lag(topic, group);
                if lag > 0 {
                    parts.push(format!(
                        "group `{group}` has {lag} events of topic `{topic}` not handled"
                    ));
                }
            }
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}
