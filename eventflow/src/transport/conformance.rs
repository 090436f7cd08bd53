//! The transport conformance suite: one async function per guarantee, run unchanged
//! against every transport — [`InProcess`](super::InProcess), Kafka, and yours.
//!
//! Each function takes a fresh transport whose topics and groups no other test uses, and
//! panics with a message naming the broken guarantee. Most go through an [`EventBus`], as
//! an application would; the redelivery test drives the [`Transport`] and [`Consumer`]
//! traits directly, to kill a member between poll and commit. Waits are generous (a broker
//! needs seconds to balance a group) and end in a failure naming what did not happen.
//!
//! [`transport_conformance!`](crate::transport_conformance) turns them into one
//! `#[tokio::test]` each:
//!
//! ```
//! # mod wrapper {
//! eventflow::transport_conformance!(async { eventflow::InProcess::new() });
//! # }
//! ```
//!
//! A transport under test needs at least 3 partitions per topic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Consumer, Record, Transport};
use crate::handler::{Handler, HandlerOptions};
use crate::{Backoff, BoxError, Context, Envelope, Event, EventBus};

/// Runs every guarantee of the suite as its own `#[tokio::test]`, each on a transport made
/// by `$make` (an expression of a future yielding a fresh transport).
#[macro_export]
macro_rules! transport_conformance {
    ($make:expr) => {
        $crate::transport_conformance!(@tests $make;
            every_group_receives_every_event,
            members_of_a_group_share_the_work_without_loss_or_duplicates,
            events_of_one_key_are_handled_in_publish_order,
            uncommitted_events_are_redelivered_after_a_member_dies,
            a_restarted_group_resumes_after_its_last_commit,
            a_failing_event_is_dead_lettered_and_its_partition_moves_on,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let transport = $make.await;
                $crate::transport::conformance::$name(&transport).await;
            }
        )*
    };
}

/// How long a test waits for what it expects before failing.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a test keeps watching for duplicates once everything expected arrived.
const SETTLE: Duration = Duration::from_millis(750);
/// The topic every event of the suite goes to.
pub const TOPIC: &str = "conformance";

/// The suite's event: a key and a number unique within a test.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Numbered {
    key: String,
    n: u64,
}

impl Event for Numbered {
    const NAME: &'static str = "conformance.numbered";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = TOPIC;

    fn partition_key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

fn numbered(key: impl Into<String>, n: u64) -> Numbered {
    Numbered { key: key.into(), n }
}

/// `(member, key, n)` for every invocation, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(usize, String, u64)>>>);

impl Log {
    fn entries(&self) -> Vec<(usize, String, u64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn numbers(&self) -> Vec<u64> {
        let mut numbers: Vec<u64> = self.entries().into_iter().map(|(_, _, n)| n).collect();
        numbers.sort_unstable();
        numbers
    }
}

/// A handler that logs what it handles; it fails on `fails_on` and sleeps a little when
/// `slow`, so that handlers of different partitions interleave.
struct Recording {
    group: &'static str,
    member: usize,
    log: Log,
    fails_on: Option<u64>,
    slow: bool,
}

impl Recording {
    fn new(group: &'static str, member: usize, log: &Log) -> Self {
        Recording {
            group,
            member,
            log: log.clone(),
            fails_on: None,
            slow: false,
        }
    }
}

impl Handler for Recording {
    type Event = Numbered;

    fn options(&self) -> HandlerOptions {
        HandlerOptions::new("conformance::recording", self.group).retries(1)
    }

    fn call(
        &self,
        event: Numbered,
        _ctx: Context,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        let (log, member, fails_on, slow) = (self.log.clone(), self.member, self.fails_on, self.slow);
        async move {
            if slow {
                tokio::time::sleep(Duration::from_micros((event.n * 7919) % 2000)).await;
            }
            if fails_on == Some(event.n) {
                return Err(format!("event {} is poison", event.n).into());
            }
            log.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((member, event.key, event.n));
            Ok(())
        }
    }
}

async fn start<T: Transport + Clone>(transport: &T, handlers: Vec<Recording>) -> EventBus {
    let mut builder = EventBus::builder()
        .transport(transport.clone())
        .backoff(Backoff::exponential(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ));
    for handler in handlers {
        builder = builder.handler(handler);
    }
    builder.start().await.expect("starting a bus on the transport")
}

/// Waits until `check` holds, failing with `what` after [`PATIENCE`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if waited.await.is_err() {
        panic!("waited {PATIENCE:?} for {what}");
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {what}"))
}

/// Every consumer group receives every event exactly once.
pub async fn every_group_receives_every_event<T: Transport + Clone>(transport: &T) {
    let logs: Vec<Log> = (0..3).map(|_| Log::default()).collect();
    let groups = ["billing", "shipping", "analytics"];
    let handlers = groups
        .iter()
        .zip(&logs)
        .map(|(group, log)| Recording::new(group, 0, log))
        .collect();
    let bus = start(transport, handlers).await;
    for n in 0..120 {
        bus.publish(&numbered(format!("key-{}", n % 10), n))
            .await
            .expect("publishing");
    }
    for (group, log) in groups.iter().zip(&logs) {
        until(&format!("group {group} to handle 120 events"), || {
            log.entries().len() >= 120
        })
        .await;
    }
    tokio::time::sleep(SETTLE).await;
    for (group, log) in groups.iter().zip(&logs) {
        assert_eq!(
            log.numbers(),
            (0..120).collect::<Vec<_>>(),
            "group {group} missed or doubled events"
        );
    }
    bus.shutdown().await;
}

/// Three members of one group each handle a share of the events; together they handle
/// every event once.
pub async fn members_of_a_group_share_the_work_without_loss_or_duplicates<T: Transport + Clone>(
    transport: &T,
) {
    let log = Log::default();
    let mut buses = Vec::new();
    for member in 0..3 {
        buses.push(start(transport, vec![Recording::new("workers", member, &log)]).await);
    }
    // A broker balances a group while its members join; publish in rounds until every
    // member has had its share.
    let mut published = 0;
    for _round in 0..30 {
        for _ in 0..60 {
            buses[0]
                .publish(&numbered(format!("key-{published}"), published))
                .await
                .expect("publishing");
            published += 1;
        }
        until(&format!("the group to handle {published} events"), || {
            log.entries().len() as u64 >= published
        })
        .await;
        let members: HashSet<usize> = log.entries().iter().map(|(m, _, _)| *m).collect();
        if members.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let entries = log.entries();
    for member in 0..3 {
        let share = entries.iter().filter(|(m, _, _)| *m == member).count();
        assert!(share > 0, "member {member} handled none of {published} events");
    }
    assert_each_once(&entries, published);
    for bus in buses {
        bus.shutdown().await;
    }
}

/// Asserts that `entries` hold each of the numbers `0..published` once; else names the
/// numbers lost and, for each one handled twice, the members that handled it and when (its
/// places in the log), which tells a rebalance's double from a redelivery.
fn assert_each_once(entries: &[(usize, String, u64)], published: u64) {
    let mut handled: std::collections::BTreeMap<u64, Vec<(usize, usize)>> = Default::default();
    for (place, (member, _, n)) in entries.iter().enumerate() {
        handled.entry(*n).or_default().push((*member, place));
    }
    let lost: Vec<u64> = (0..published).filter(|n| !handled.contains_key(n)).collect();
    let twice: Vec<String> = handled
        .iter()
        .filter(|(_, by)| by.len() > 1)
        .map(|(n, by)| {
            let by: Vec<String> = by
                .iter()
                .map(|(m, place)| format!("member {m} at {place}"))
                .collect();
            format!("{n} by {}", by.join(", "))
        })
        .collect();
    let unknown: Vec<u64> = handled.keys().copied().filter(|n| *n >= published).collect();
    assert!(
        lost.is_empty() && twice.is_empty() && unknown.is_empty(),
        "events lost or handled twice, of {published} published ({} handlings): lost {lost:?}; \
         handled twice: [{}]; never published: {unknown:?}",
        entries.len(),
        twice.join("; "),
    );
}

/// Within a group, events with the same key are handled one after the other, in publish
/// order, while several publishers and members run at once.
pub async fn events_of_one_key_are_handled_in_publish_order<T: Transport + Clone>(transport: &T) {
    let log = Log::default();
    let mut buses = Vec::new();
    for member in 0..2 {
        let mut handler = Recording::new("ordered", member, &log);
        handler.slow = true;
        buses.push(start(transport, vec![handler]).await);
    }
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let bus = buses[0].clone();
            tokio::spawn(async move {
                for i in 0..50u64 {
                    let key = format!("publisher-{p}-key-{}", i % 4);
                    bus.publish(&numbered(key, p * 1000 + i))
                        .await
                        .expect("publishing");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher task");
    }
    until("the group to handle 200 events", || log.entries().len() >= 200).await;
    tokio::time::sleep(SETTLE).await;
    let entries = log.entries();
    assert_eq!(entries.len(), 200, "events lost or handled twice");
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, key, n) in &entries {
        by_key.entry(key).or_default().push(*n);
    }
    for (key, numbers) in by_key {
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "key {key} handled out of publish order: {numbers:?}"
        );
    }
    for bus in buses {
        bus.shutdown().await;
    }
}

fn envelope(n: u64) -> Envelope {
    let mut envelope = Envelope::new(
        Numbered::NAME,
        1,
        TOPIC,
        "application/json",
        format!("{{\"key\":\"key-{}\",\"n\":{n}}}", n % 5),
    );
    envelope.key = Some(format!("key-{}", n % 5));
    envelope
}

/// Polls `consumer` until it has seen every id in `wanted`; returns everything it saw.
async fn poll_until(consumer: &mut dyn Consumer, wanted: &HashSet<Uuid>, what: &str) -> Vec<Record> {
    let mut seen = Vec::new();
    within(what, async {
        while !wanted
            .iter()
            .all(|id| seen.iter().any(|r: &Record| r.envelope.id == *id))
        {
            seen.extend(consumer.poll().await.expect("polling"));
        }
    })
    .await;
    seen
}

/// A member that dies between poll and commit loses nothing: the next member receives
/// every record it did not commit, and none it did.
pub async fn uncommitted_events_are_redelivered_after_a_member_dies<T: Transport + Clone>(transport: &T) {
    let mut first = transport
        .subscribe("crashing", &[TOPIC])
        .await
        .expect("subscribing");
    let envelopes: Vec<Envelope> = (0..20).map(envelope).collect();
    for envelope in &envelopes {
        transport.publish(envelope.clone()).await.expect("publishing");
    }
    let all: HashSet<Uuid> = envelopes.iter().map(|e| e.id).collect();
    let received = poll_until(&mut *first, &all, "the first member to receive 20 events").await;

    // Commit the first half of each partition, then die without committing the rest.
    let mut by_partition: HashMap<(Arc<str>, u32), Vec<Record>> = HashMap::new();
    for record in received {
        by_partition
            .entry((record.topic.clone(), record.partition))
            .or_default()
            .push(record);
    }
    let mut committed = Vec::new();
    for records in by_partition.values_mut() {
        records.sort_by_key(|r| r.offset);
        committed.extend(records[..records.len() / 2].iter().cloned());
    }
    first.commit(&committed).await.expect("committing");
    drop(first);

    let committed_ids: HashSet<Uuid> = committed.iter().map(|r| r.envelope.id).collect();
    let uncommitted: HashSet<Uuid> = all.difference(&committed_ids).copied().collect();
    let mut second = transport
        .subscribe("crashing", &[TOPIC])
        .await
        .expect("subscribing again");
    let mut redelivered = poll_until(
        &mut *second,
        &uncommitted,
        "the next member to receive the uncommitted events",
    )
    .await;
    if let Ok(more) = tokio::time::timeout(SETTLE, second.poll()).await {
        redelivered.extend(more.expect("polling"));
    }
    let again: Vec<&Record> = redelivered
        .iter()
        .filter(|r| committed_ids.contains(&r.envelope.id))
        .collect();
    assert!(
        again.is_empty(),
        "{} committed events were delivered again: {again:?}",
        again.len()
    );
    let ids: Vec<Uuid> = redelivered.iter().map(|r| r.envelope.id).collect();
    let unique: HashSet<&Uuid> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an event was redelivered twice to one member"
    );
    second.commit(&redelivered).await.expect("committing");
    second.close().await.expect("closing");
}

/// A group that shut down and starts again handles what was published meanwhile, and
/// nothing it had already handled.
pub async fn a_restarted_group_resumes_after_its_last_commit<T: Transport + Clone>(transport: &T) {
    let log = Log::default();
    let bus = start(transport, vec![Recording::new("restarting", 0, &log)]).await;
    for n in 0..30 {
        bus.publish(&numbered(format!("key-{}", n % 4), n))
            .await
            .expect("publishing");
    }
    until("the group to handle 30 events", || log.entries().len() >= 30).await;
    bus.shutdown().await;

    // A transport keeps the events of a group that has no member: publish through another
    // bus (one without handlers) while the group is down.
    let publisher = start(transport, Vec::new()).await;
    for n in 30..60 {
        publisher
            .publish(&numbered(format!("key-{}", n % 4), n))
            .await
            .expect("publishing");
    }
    let bus = start(transport, vec![Recording::new("restarting", 1, &log)]).await;
    until("the restarted group to handle 60 events", || {
        log.entries().len() >= 60
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        log.numbers(),
        (0..60).collect::<Vec<_>>(),
        "the restarted group lost or repeated events"
    );
    let after: Vec<u64> = log
        .entries()
        .iter()
        .filter(|(m, _, _)| *m == 1)
        .map(|(_, _, n)| *n)
        .collect();
    assert!(
        after.iter().all(|n| *n >= 30),
        "the restarted group handled events committed before: {after:?}"
    );
    bus.shutdown().await;
    publisher.shutdown().await;
}

/// An event whose handler keeps failing is dead-lettered with its error and attempts, and
/// the events after it in its partition are handled.
pub async fn a_failing_event_is_dead_lettered_and_its_partition_moves_on<T: Transport + Clone>(
    transport: &T,
) {
    let log = Log::default();
    let mut handler = Recording::new("fragile", 0, &log);
    handler.fails_on = Some(3);
    let bus = start(transport, vec![handler]).await;
    let mut poison = None;
    for n in 0..10 {
        let id = bus.publish(&numbered("one-key", n)).await.expect("publishing");
        if n == 3 {
            poison = Some(id);
        }
    }
    until("the events after the poison one to be handled", || {
        log.entries().len() >= 9
    })
    .await;
    let letters = within("the dead letter", async {
        loop {
            let letters = bus
                .dead_letters(Some("fragile"))
                .await
                .expect("listing dead letters");
            if !letters.is_empty() {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(letters.len(), 1, "exactly the poison event is dead-lettered");
    assert_eq!(Some(letters[0].envelope.id), poison);
    assert_eq!(letters[0].attempts, 2, "1 attempt and 1 retry");
    assert!(
        letters[0].error.contains("event 3 is poison"),
        "the dead letter keeps the handler's error: {}",
        letters[0].error
    );
    let handled: Vec<u64> = log.entries().iter().map(|(_, _, n)| *n).collect();
    assert_eq!(
        handled,
        [0, 1, 2, 4, 5, 6, 7, 8, 9],
        "the partition moved on, in order"
    );
    bus.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::assert_each_once;

    fn entries(handlings: &[(usize, u64)]) -> Vec<(usize, String, u64)> {
        handlings
            .iter()
            .map(|&(m, n)| (m, format!("key-{n}"), n))
            .collect()
    }

    #[test]
    fn each_event_once_passes() {
        assert_each_once(&entries(&[(0, 1), (1, 0), (2, 2)]), 3);
    }

    #[test]
    #[should_panic(
        expected = "lost [1]; handled twice: [2 by member 0 at 1, member 2 at 2]; never published: []"
    )]
    fn a_double_names_its_members_and_a_loss_its_number() {
        assert_each_once(&entries(&[(1, 0), (0, 2), (2, 2)]), 3);
    }
}
