//! Rebalances of a Kafka consumer group under load, for each group protocol: the classic
//! eager protocol, classic with `cooperative-sticky` (incremental), and Kafka 4's consumer
//! protocol (KIP-848, incremental, assigned by the broker).
//!
//! The buses here have no storage, so no inbox hides a redelivery: an event handled twice
//! means a member handed partitions over without committing what it had handled, one never
//! handled means a rebalance skipped it.

mod kafka_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, EventBus, State};
use eventflow_kafka::{GroupProtocol, Kafka, KafkaBuilder};
use eventflow_tests::{eventually, OrderPaid};

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Eager,
    Cooperative,
    Consumer,
}

/// A transport whose consumers speak `protocol`, and a member that stops polling leaves
/// the group after `rebalance_timeout` (`max.poll.interval.ms`).
fn kafka(test: &str, protocol: Protocol, rebalance_timeout: Duration) -> Kafka {
    builder(test, protocol, rebalance_timeout)
        .build()
        .expect("building the Kafka transport")
}

fn builder(test: &str, protocol: Protocol, rebalance_timeout: Duration) -> KafkaBuilder {
    let builder = kafka_common::bare_builder(test)
        .consumer_config("max.poll.interval.ms", rebalance_timeout.as_millis().to_string());
    let classic = |builder: KafkaBuilder| {
        builder
            .consumer_config("session.timeout.ms", "6000")
            .consumer_config("heartbeat.interval.ms", "500")
    };
    match protocol {
        Protocol::Eager => classic(builder).consumer_config("partition.assignment.strategy", "range"),
        Protocol::Cooperative => {
            classic(builder).consumer_config("partition.assignment.strategy", "cooperative-sticky")
        }
        // The session timeout and heartbeat interval are the broker's (45 s and 5 s).
        Protocol::Consumer => builder.group_protocol(GroupProtocol::Consumer),
    }
}

/// One handling of an event: its `seq`, the instance that handled it, and when.
type Handling = (u64, &'static str, Instant);

/// Each handling of an event.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<Handling>>>);

impl Handled {
    fn count(&self) -> usize {
        let handled = self.0.lock().unwrap();
        let mut seqs: Vec<u64> = handled.iter().map(|(seq, _, _)| *seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len()
    }

    /// How many times each `seq` was handled.
    fn times(&self) -> HashMap<u64, u32> {
        let mut times = HashMap::new();
        for (seq, _, _) in self.0.lock().unwrap().iter() {
            *times.entry(*seq).or_default() += 1;
        }
        times
    }
}

/// The instance a bus stands for, and whether it stalls on the first event after `stall`
/// is armed, for `stall.pause`, then handles it.
#[derive(Clone)]
struct Instance {
    name: &'static str,
    stall: Option<Arc<Stall>>,
}

struct Stall {
    pause: Duration,
    armed: AtomicBool,
    /// The `seq` it stalled on, and when the stall ended.
    on: Mutex<Option<(u64, Instant)>>,
}

#[subscribe(group = "ledger")]
async fn ledger(
    event: OrderPaid,
    State(handled): State<Handled>,
    State(me): State<Instance>,
) -> Result<(), String> {
    if let Some(stall) = &me.stall {
        if stall.armed.swap(false, Ordering::AcqRel) {
            // Longer than the rebalance timeout: a pause of the process, a slow call.
            tokio::time::sleep(stall.pause).await;
            *stall.on.lock().unwrap() = Some((event.seq, Instant::now()));
        }
    }
    handled
        .0
        .lock()
        .unwrap()
        .push((event.seq, me.name, Instant::now()));
    Ok(())
}

async fn instance(kafka: &Kafka, handled: &Handled, me: Instance) -> EventBus {
    EventBus::builder()
        .transport(kafka.clone())
        .state(handled.clone())
        .state(me)
        .handler(ledger)
        .start()
        .await
        .expect("starting an instance of the group")
}

fn plain(name: &'static str) -> Instance {
    Instance { name, stall: None }
}

/// Publishes `total` events on 31 keys, `pause` apart, in the background.
fn publish(kafka: &Kafka, total: u64, pause: Duration) -> tokio::task::JoinHandle<EventBus> {
    let kafka = kafka.clone();
    tokio::spawn(async move {
        let publisher = EventBus::builder().transport(kafka).start().await.unwrap();
        for seq in 0..total {
            let order_id = format!("order-{}", seq % 31);
            publisher.publish(&OrderPaid { order_id, seq }).await.unwrap();
            tokio::time::sleep(pause).await;
        }
        publisher
    })
}

/// Every event once: none lost, none handled twice.
fn assert_each_once(handled: &Handled, total: u64, except: Option<u64>) {
    let times = handled.times();
    let lost: Vec<u64> = (0..total).filter(|seq| !times.contains_key(seq)).collect();
    assert!(lost.is_empty(), "events never handled: {lost:?}");
    let mut doubled: Vec<(u64, u32)> = times
        .into_iter()
        .filter(|(seq, n)| *n != 1 && Some(*seq) != except)
        .collect();
    doubled.sort_unstable();
    assert!(
        doubled.is_empty(),
        "events handled more than once (seq, times), so a member handed partitions over \
         without committing what it handled: {doubled:?}"
    );
}

/// The group's lag once it settles at 0: the offsets of every handled event committed.
async fn assert_all_committed(kafka: &Kafka) {
    let mut lag = u64::MAX;
    for _ in 0..100 {
        lag = kafka.lag("orders", "ledger").await.unwrap();
        if lag == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("every event was handled but the group's committed offsets are {lag} behind");
}

async fn scale_one_three_one(protocol: Protocol) {
    let started = Instant::now();
    let kafka = kafka(&format!("scale-{protocol:?}"), protocol, Duration::from_secs(15));
    let handled = Handled::default();
    let mut instances = vec![instance(&kafka, &handled, plain("first")).await];
    let total = 1200;
    let publishing = publish(&kafka, total, Duration::from_millis(15));
    eventually(60, "a first share handled by one instance", || {
        handled.count() >= 150
    })
    .await;
    instances.push(instance(&kafka, &handled, plain("second")).await);
    instances.push(instance(&kafka, &handled, plain("third")).await);
    let scaled_up = handled.count();
    eventually(90, "more handled by three instances", || {
        handled.count() >= scaled_up + 300
    })
    .await;
    let by_three: Vec<&str> = {
        let handled = handled.0.lock().unwrap();
        let mut names: Vec<&str> = handled[scaled_up..].iter().map(|(_, name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        names
    };
    for instance in instances.drain(1..) {
        instance.shutdown().await;
    }
    let publisher = publishing.await.unwrap();
    eventually(90, "every event handled by the one instance left", || {
        handled.count() as u64 >= total
    })
    .await;
    // Anything handled twice shows up within a moment of the last first handling.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_each_once(&handled, total, None);
    assert_all_committed(&kafka).await;
    assert!(
        by_three.len() > 1,
        "after scaling to three, only {by_three:?} handled events: the group never rebalanced"
    );
    println!(
        "{protocol:?}: {total} events through 1 → 3 → 1 instances in {:?}, each handled once",
        started.elapsed()
    );
    instances.remove(0).shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_eager_scaling_one_three_one_loses_and_doubles_nothing() {
    scale_one_three_one(Protocol::Eager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_scaling_one_three_one_loses_and_doubles_nothing() {
    scale_one_three_one(Protocol::Cooperative).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_consumer_protocol_scaling_one_three_one_loses_and_doubles_nothing() {
    scale_one_three_one(Protocol::Consumer).await;
}

async fn stalled_member_is_replaced(protocol: Protocol) {
    let rebalance_timeout = Duration::from_secs(7);
    // One record per poll: the stalled member then holds only the event it stalls on. (With
    // more, the records of its other partitions polled with it are handled but committed
    // only with the whole batch, after the stall, and the replacement handles them again.)
    let kafka = builder(&format!("stall-{protocol:?}"), protocol, rebalance_timeout)
        .max_batch(1)
        .build()
        .expect("building the Kafka transport");
    let handled = Handled::default();
    let stall = Arc::new(Stall {
        pause: Duration::from_secs(18),
        armed: AtomicBool::new(false),
        on: Mutex::new(None),
    });
    let stalling = Instance {
        name: "stalling",
        stall: Some(stall.clone()),
    };
    let first = instance(&kafka, &handled, stalling).await;
    let second = instance(&kafka, &handled, plain("replacement")).await;
    let total = 500;
    let publishing = publish(&kafka, total, Duration::from_millis(60));
    // Armed once both members handle events, so the group has settled: the stall is the
    // only thing that moves partitions.
    eventually(60, "both members handling events", || {
        let handled = handled.0.lock().unwrap();
        ["stalling", "replacement"]
            .iter()
            .all(|me| handled.iter().any(|(_, name, _)| name == me))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stall.armed.store(true, Ordering::Release);
    let publisher = publishing.await.unwrap();
    eventually(120, "every event handled", || handled.count() as u64 >= total).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (stalled_on, stall_ended) = stall.on.lock().unwrap().expect("the stalling instance stalled");
    let handled_stalled: Vec<(&str, Instant)> = handled
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(seq, _, _)| *seq == stalled_on)
        .map(|(_, name, at)| (*name, *at))
        .collect();
    assert!(
        handled_stalled
            .iter()
            .any(|(name, at)| *name == "replacement" && *at < stall_ended),
        "event {stalled_on}, on which a member stalled past the rebalance timeout, was not \
         handled by the other member meanwhile: {handled_stalled:?}"
    );
    // The stalled member handles its event too once it wakes up, not knowing it left the
    // group: a handler without `Tx` is at least once. Every other event once.
    assert_each_once(&handled, total, Some(stalled_on));
    assert_all_committed(&kafka).await;
    println!(
        "{protocol:?}: the member stalled on event {stalled_on} was replaced; the replacement \
         handled it {:?} before the stall ended",
        handled_stalled
            .iter()
            .filter(|(name, _)| *name == "replacement")
            .map(|(_, at)| stall_ended - *at)
            .next()
            .unwrap_or_default()
    );
    first.shutdown().await;
    second.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_eager_a_member_stalled_past_the_rebalance_timeout_is_replaced_without_loss() {
    stalled_member_is_replaced(Protocol::Eager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_a_member_stalled_past_the_rebalance_timeout_is_replaced_without_loss() {
    stalled_member_is_replaced(Protocol::Cooperative).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_a_member_stalled_past_the_rebalance_timeout_is_replaced_without_loss() {
    stalled_member_is_replaced(Protocol::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_protocol_refuses_classic_settings_with_what_to_do() {
    let built = kafka_common::bare_builder("kip848-refused")
        .group_protocol(GroupProtocol::Consumer)
        .consumer_config("session.timeout.ms", "6000")
        .build();
    let Err(eventflow_kafka::Error::Config(message)) = built else {
        panic!("session.timeout.ms was accepted under the consumer protocol");
    };
    assert!(
        message.contains("session.timeout.ms") && message.contains("group.consumer.session.timeout.ms"),
        "{message}"
    );
}
