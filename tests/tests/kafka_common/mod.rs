//! What the Kafka tests share: a transport on the broker from `KAFKA_BROKERS`, with topic
//! and group names no other test or run uses, and a check that fails loudly when there is
//! no broker.

#![allow(dead_code)]

pub mod cluster;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eventflow_kafka::rdkafka::ClientConfig;
use eventflow_kafka::{Kafka, KafkaBuilder};

/// The broker list under test.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| eventflow_kafka::DEFAULT_BROKERS.to_owned())
}

/// A name no other test or test run uses, for topic and group prefixes.
pub fn unique(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "t-{test}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the test with a clear message if no broker answers at `brokers`.
pub fn require_broker(brokers: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("creating a Kafka client");
    if let Err(error) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "no Kafka broker answers at `{brokers}` ({error}). These tests need a real \
             Kafka-protocol broker: run `scripts/test`, which starts one, or start one yourself \
             and set KAFKA_BROKERS=host:port"
        );
    }
}

/// Sends eventflow's and librdkafka's log lines to the test's captured output, so a failing
/// test shows what the transport saw (rebalances, failed commits, broker trouble).
/// `RUST_LOG` overrides the default filter, warnings and eventflow-kafka's info lines.
pub fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,eventflow_kafka=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Deletes the topics test runs created more than an hour ago, once per test process, so
/// that running the suite against a real cluster does not pile them up. A topic still in
/// use by a running test is younger than that.
fn delete_stale_topics(brokers: &str) {
    use eventflow_kafka::rdkafka::admin::{AdminClient, AdminOptions};
    use eventflow_kafka::rdkafka::client::DefaultClientContext;
    use std::sync::atomic::AtomicBool;
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    let metadata_client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("creating a Kafka client");
    let Ok(metadata) = metadata_client.fetch_metadata(None, Duration::from_secs(10)) else {
        return;
    };
    let cutoff = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() - 3600 * 1_000_000_000;
    // `unique` names: `t-<test>-<pid>-<n>-<nanos>`, then `.` and the topic.
    let stale: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| {
            let Some(prefix) = name.strip_prefix("t-").and_then(|rest| rest.split('.').next()) else {
                return false;
            };
            let created = prefix.rsplit('-').next().and_then(|n| n.parse::<u128>().ok());
            created.is_some_and(|created| created < cutoff)
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = stale.iter().map(String::as_str).collect();
    // Best effort, on a thread of its own since the callers run on a runtime already: a
    // broker that cannot delete topics keeps them.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = runtime.block_on(admin.delete_topics(&names, &AdminOptions::new()));
            }
        });
    });
}

/// A transport builder on the broker under test whose topics and groups belong to `test`
/// alone, with librdkafka's consumer defaults.
pub fn bare_builder(test: &str) -> KafkaBuilder {
    capture_logs();
    let brokers = brokers();
    require_broker(&brokers);
    delete_stale_topics(&brokers);
    let name = unique(test);
    Kafka::builder(brokers)
        .topic_prefix(format!("{name}."))
        .group_prefix(format!("{name}."))
        .partitions(6)
}

/// A transport builder on the broker under test whose topics and groups belong to `test`
/// alone; consumers (of the classic group protocol) notice rebalances within a second, and
/// a rebalance waits at most 15 s for a member to rejoin (`max.poll.interval.ms`, the
/// rebalance timeout, is 5 minutes by default: a member the broker still counts but that
/// does not rejoin would stall the group that long).
pub fn builder(test: &str) -> KafkaBuilder {
    bare_builder(test)
        .consumer_config("session.timeout.ms", "6000")
        .consumer_config("heartbeat.interval.ms", "500")
        .consumer_config("max.poll.interval.ms", "15000")
}

/// A transport on the broker under test, private to `test`.
pub fn kafka(test: &str) -> Kafka {
    builder(test).build().expect("building the Kafka transport")
}

/// A producer that knows nothing of eventflow, on `kafka`'s brokers. It picks partitions
/// as eventflow does (`murmur2_random`, the Java client's default), so a message lands on
/// the partition of eventflow's events of the same key.
pub fn foreign_producer(kafka: &Kafka) -> eventflow_kafka::rdkafka::producer::FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("partitioner", "murmur2_random")
        .create()
        .expect("creating a producer")
}

/// A consumer of `topic` from its beginning, in a group of its own; it sees uncommitted
/// transactional data too unless `read_committed`.
fn reader(topic: &str, read_committed: bool) -> eventflow_kafka::rdkafka::consumer::StreamConsumer {
    use eventflow_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
    let isolation = if read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // Notice soon a topic that does not exist yet when the reader subscribes.
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("isolation.level", isolation)
        .create()
        .expect("creating a reader");
    consumer.subscribe(&[topic]).expect("subscribing the reader");
    consumer
}

/// Reads `topic` from the beginning until `count` messages arrived, failing after `secs`
/// seconds. Reads uncommitted data too unless `read_committed`.
pub async fn read_topic(
    topic: &str,
    count: usize,
    secs: u64,
    read_committed: bool,
) -> Vec<eventflow_kafka::rdkafka::message::OwnedMessage> {
    use eventflow_kafka::rdkafka::Message;
    let consumer = reader(topic, read_committed);
    let mut messages = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(secs), async {
        while messages.len() < count {
            match consumer.recv().await {
                Ok(message) => messages.push(message.detach()),
                // The topic may not exist yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    if read.await.is_err() {
        panic!(
            "read {} of {count} messages from `{topic}` in {secs}s: {:?}",
            messages.len(),
            messages
                .iter()
                .map(|m| m.payload().map(String::from_utf8_lossy))
                .collect::<Vec<_>>()
        );
    }
    messages
}

/// The value of header `name`, as text.
pub fn header(message: &eventflow_kafka::rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use eventflow_kafka::rdkafka::message::{Headers, Message};
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Everything `topic` holds, read from the beginning for `secs` seconds.
pub async fn read_for(
    topic: &str,
    secs: u64,
    read_committed: bool,
) -> Vec<eventflow_kafka::rdkafka::message::OwnedMessage> {
    let consumer = reader(topic, read_committed);
    let mut messages = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match consumer.recv().await {
                Ok(message) => messages.push(message.detach()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    messages
}
