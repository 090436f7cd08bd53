//! A member of a consumer group on the in-process transport: its subscriptions, polls
//! from the partitions it owns and commits.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{lock, InProcess, Inner, Member, Topic};
use crate::transport::{Consumer, Record};
use crate::Error;

struct Subscription {
    topic: Arc<Topic>,
    /// The topic's name for this consumer's records: a copy of its own, so that consumers
    /// on different threads do not contend on one reference count for every record.
    name: Arc<str>,
    generation: Arc<AtomicU64>,
    seen: u64,
    /// Owned partitions and the next offset to read from each.
    owned: Vec<(u32, u64)>,
}

struct InProcessConsumer {
    inner: Arc<Inner>,
    group: Arc<str>,
    member: Arc<Member>,
    subscriptions: Vec<Subscription>,
    /// Where the next poll starts, so no partition starves the others.
    next: usize,
}

impl InProcess {
    /// A new member of `group` on `topics`: joined, its partitions assigned at its first
    /// poll.
    pub(super) fn join(&self, group: &str, topics: &[&str]) -> Box<dyn Consumer> {
        let member = Arc::new(Member {
            id: self.inner.next_member.fetch_add(1, Ordering::Relaxed),
            wake: Notify::new(),
        });
        let group: Arc<str> = group.into();
        let mut subscriptions = Vec::with_capacity(topics.len());
        for name in topics {
            let topic = self.topic(name);
            let generation = topic.join(&group, &member);
            subscriptions.push(Subscription {
                name: Arc::from(&*topic.name),
                topic,
                generation,
                seen: u64::MAX,
                owned: Vec::new(),
            });
        }
        Box::new(InProcessConsumer {
            inner: self.inner.clone(),
            group,
            member,
            subscriptions,
            next: 0,
        })
    }
}

impl InProcessConsumer {
    /// Picks up a new assignment; every owned partition restarts from its committed offset.
    fn refresh(&mut self) {
        for sub in &mut self.subscriptions {
            let generation = sub.generation.load(Ordering::Acquire);
            if generation == sub.seen {
                continue;
            }
            sub.seen = generation;
            let groups = lock(&sub.topic.groups);
            let owned = groups
                .get(&*self.group)
                .and_then(|g| g.assignment.get(&self.member.id));
            sub.owned = owned
                .into_iter()
                .flatten()
                .map(|&p| {
                    let mut log = lock(&sub.topic.partitions[p as usize].log);
                    (p, log.cursor(&self.group).map_or(0, |c| c.committed))
                })
                .collect();
        }
    }

    fn fetch(&mut self) -> Vec<Record> {
        let max = self.inner.config.max_batch;
        let mut records = Vec::with_capacity(max.min(64));
        let slots: Vec<(usize, usize)> = self
            .subscriptions
            .iter()
            .enumerate()
            .flat_map(|(s, sub)| (0..sub.owned.len()).map(move |o| (s, o)))
            .collect();
        if slots.is_empty() {
            return records;
        }
        for i in 0..slots.len() {
            let (s, o) = slots[(self.next + i) % slots.len()];
            let sub = &mut self.subscriptions[s];
            let (partition, position) = &mut sub.owned[o];
            let log = lock(&sub.topic.partitions[*partition as usize].log);
            let start = (*position).max(log.base);
            let available = (log.end() - start) as usize;
            let take = available.min(max - records.len());
            let from = (start - log.base) as usize;
            records.extend(
                log.entries
                    .range(from..from + take)
                    .enumerate()
                    .map(|(i, envelope)| Record {
                        topic: sub.name.clone(),
                        partition: *partition,
                        offset: start + i as u64,
                        envelope: envelope.clone(),
                    }),
            );
            *position = start + take as u64;
            if records.len() == max {
                break;
            }
        }
        self.next = (self.next + 1) % slots.len();
        records
    }
}

#[async_trait]
impl Consumer for InProcessConsumer {
    async fn poll(&mut self) -> Result<Vec<Record>, Error> {
        let member = self.member.clone();
        loop {
            let mut wake = pin!(member.wake.notified());
            wake.as_mut().enable();
            self.refresh();
            let records = self.fetch();
            if !records.is_empty() {
                return Ok(records);
            }
            wake.await;
        }
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), Error> {
        let mut done: Vec<(&Arc<str>, u32, u64)> = Vec::new();
        for record in records {
            let next = record.offset + 1;
            // The records of one topic share its name: the pointers mostly settle it.
            let same = |t: &Arc<str>| Arc::ptr_eq(t, &record.topic) || *t == record.topic;
            match done
                .iter_mut()
                .find(|(t, p, _)| *p == record.partition && same(t))
            {
                Some(entry) => entry.2 = entry.2.max(next),
                None => done.push((&record.topic, record.partition, next)),
            }
        }
        for (topic, partition, next) in done {
            let Some(sub) = self.subscriptions.iter().find(|s| s.name == *topic) else {
                continue;
            };
            let partition = &sub.topic.partitions[partition as usize];
            let trimmed = {
                let mut log = lock(&partition.log);
                if let Some(cursor) = log.cursor(&self.group) {
                    cursor.committed = cursor.committed.max(next);
                }
                log.trim()
            };
            if trimmed {
                partition.space.notify_waiters();
            }
        }
        self.inner.progress.notify_waiters();
        Ok(())
    }
}

impl Drop for InProcessConsumer {
    fn drop(&mut self) {
        for sub in &self.subscriptions {
            sub.topic.leave(&self.group, &self.member);
        }
    }
}
