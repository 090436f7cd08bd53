//! [`KafkaBuilder`]: everything a [`Kafka`] transport can be configured with.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::GroupProtocol;

/// The broker address used when `KAFKA_BROKERS` is not set.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// Where a consumer group that has never committed an offset starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// Events published after the group's first member subscribed, as the in-process
    /// transport does: `subscribe` commits the current end of every partition the group
    /// has no offset for. The default.
    #[default]
    Latest,
    /// Everything still in the topic: a new group (a new projection, say) catches up on
    /// the history.
    Earliest,
}

/// How an event's metadata travels in Kafka headers; see [`headers`](crate::headers) for
/// both formats. A consumer reads every format whatever it writes, so producers can switch
/// one topic at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireFormat {
    /// eventflow's compact form: all the metadata in one `eventflow` header, about 100
    /// bytes. The default.
    #[default]
    Eventflow,
    /// The [CloudEvents](https://cloudevents.io) Kafka protocol binding in binary content
    /// mode (`ce_specversion`, `ce_id`, `ce_type`, ... headers), which CloudEvents SDKs and
    /// other tools read without knowing eventflow; see [`cloudevents`](crate::cloudevents).
    CloudEvents,
}

/// Configures a [`Kafka`](crate::Kafka) transport. Start with
/// [`Kafka::builder`](crate::Kafka::builder) or [`Kafka::from_env`](crate::Kafka::from_env).
///
/// Defaults: topics created with 8 partitions and replication factor 1 (raise it to 3 on
/// a production cluster), idempotent producer with `acks=all` and `linger.ms=5`, 30 s
/// delivery timeout, consumers with auto-commit off, `read_committed` isolation and up to
/// 256 records per poll.
#[derive(Clone, Debug)]
pub struct KafkaBuilder {
    pub(crate) brokers: String,
    pub(crate) topic_prefix: String,
    pub(crate) group_prefix: String,
    pub(crate) partitions: i32,
    pub(crate) topic_partitions: HashMap<String, i32>,
    pub(crate) replication: i32,
    pub(crate) dead_letter_topic: String,
    pub(crate) linger: Duration,
    pub(crate) batch_size: usize,
    pub(crate) idempotence: bool,
    pub(crate) delivery_timeout: Duration,
    pub(crate) max_batch: usize,
    pub(crate) start_from: StartFrom,
    pub(crate) producer_config: Vec<(String, String)>,
    pub(crate) consumer_config: Vec<(String, String)>,
    pub(crate) group_protocol: GroupProtocol,
    pub(crate) transactional_groups: HashSet<String>,
    pub(crate) transactional_id_prefix: Option<String>,
    pub(crate) wire_format: WireFormat,
    pub(crate) topic_formats: HashMap<String, WireFormat>,
    pub(crate) cloudevents_source: Option<String>,
}

impl KafkaBuilder {
    pub(crate) fn new(brokers: impl Into<String>) -> Self {
        KafkaBuilder {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            group_prefix: String::new(),
            partitions: 8,
            topic_partitions: HashMap::new(),
            replication: 1,
            dead_letter_topic: "{topic}.{group}.dlq".to_owned(),
            linger: Duration::from_millis(5),
            batch_size: 10_000,
            idempotence: true,
            delivery_timeout: Duration::from_secs(30),
            max_batch: 256,
            start_from: StartFrom::Latest,
            producer_config: Vec::new(),
            consumer_config: Vec::new(),
            group_protocol: GroupProtocol::Classic,
            transactional_groups: HashSet::new(),
            transactional_id_prefix: None,
            wire_format: WireFormat::Eventflow,
            topic_formats: HashMap::new(),
            cloudevents_source: None,
        }
    }

    /// Prepended to every eventflow topic to make the Kafka topic name, e.g. `"staging."`
    /// turns `orders` into `staging.orders`. Default: none.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// Prepended to every eventflow group to make the Kafka `group.id`. Default: none, so
    /// group `inventory` is `group.id=inventory`.
    pub fn group_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.group_prefix = prefix.into();
        self
    }

    /// Partitions of the topics this transport creates. Default 8. Topics that exist
    /// already are used as they are.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = clamp(partitions);
        self
    }

    /// Partitions of one topic (the eventflow name, without prefix) if it is created here.
    pub fn topic_partitions(mut self, topic: impl Into<String>, partitions: u32) -> Self {
        self.topic_partitions.insert(topic.into(), clamp(partitions));
        self
    }

    /// Replication factor of the topics this transport creates. Default 1, which suits a
    /// single development broker; use 3 on a production cluster.
    pub fn replication(mut self, replication: u32) -> Self {
        self.replication = clamp(replication);
        self
    }

    /// The name of a group's dead-letter topic, with `{topic}` standing for the Kafka
    /// topic the event was read from and `{group}` for the eventflow group. Default
    /// `"{topic}.{group}.dlq"`.
    pub fn dead_letter_topic(mut self, template: impl Into<String>) -> Self {
        self.dead_letter_topic = template.into();
        self
    }

    /// How long the producer waits to fill a batch (`linger.ms`). Default 5 ms.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Most messages in one produce batch (`batch.num.messages`). Default 10 000.
    pub fn batch_size(mut self, messages: usize) -> Self {
        self.batch_size = messages.max(1);
        self
    }

    /// Whether the producer is idempotent (`enable.idempotence`, which implies
    /// `acks=all`): a retried send is never written twice and order per partition holds.
    /// Default true; turn off only for a broker that does not support it.
    pub fn idempotence(mut self, idempotence: bool) -> Self {
        self.idempotence = idempotence;
        self
    }

    /// How long a publish keeps retrying before it fails (`message.timeout.ms`); the
    /// outbox relay then retries the batch with backoff. Default 30 s.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Most records one poll of a consumer returns. Default 256.
    pub fn max_batch(mut self, records: usize) -> Self {
        self.max_batch = records.max(1);
        self
    }

    /// Where a group without committed offsets starts. Default [`StartFrom::Latest`].
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// Sets any librdkafka producer property, e.g. `("compression.type", "lz4")`; applied
    /// after the settings above, so it overrides them.
    pub fn producer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_config.push((key.into(), value.into()));
        self
    }

    /// Sets any librdkafka consumer property, e.g. `("session.timeout.ms", "10000")`;
    /// applied after the settings above, so it overrides them.
    pub fn consumer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_config.push((key.into(), value.into()));
        self
    }

    /// The consumer group protocol of every group on this transport. Default
    /// [`GroupProtocol::Classic`]; [`GroupProtocol::Consumer`] is Kafka 4's (KIP-848), under
    /// which the classic settings `session.timeout.ms`, `heartbeat.interval.ms` and
    /// `partition.assignment.strategy` are the broker's and [`build`](KafkaBuilder::build)
    /// refuses them in [`consumer_config`](KafkaBuilder::consumer_config).
    pub fn group_protocol(mut self, protocol: GroupProtocol) -> Self {
        self.group_protocol = protocol;
        self
    }

    /// Runs eventflow group `group` exactly once from Kafka to Kafka: each member handles
    /// every polled batch in a Kafka transaction of its own transactional producer. The
    /// follow-ups its handlers publish with [`Context::publish`](eventflow::Context::publish)
    /// and the offsets of the batch are committed together
    /// (`send_offsets_to_transaction`), or not at all: consumers reading with
    /// `isolation.level=read_committed` (eventflow's do) never see the output of a batch
    /// that was aborted, and its events are handled again.
    ///
    /// - A follow-up is sent when its handler returns `Ok`; a failed attempt publishes
    ///   nothing. An event that is dead-lettered commits with its batch, its copy on the
    ///   dead-letter topic too.
    /// - If sending a follow-up or committing fails, the transaction is aborted and the
    ///   member reads the batch again.
    /// - Effects outside Kafka (a database write, an e-mail) are still at least once, and
    ///   the bus does not use its inbox for such a group: the transaction decides what was
    ///   handled. Publishing with `EventBus::publish` from a handler bypasses the
    ///   transaction.
    pub fn transactional_group(mut self, group: impl Into<String>) -> Self {
        self.transactional_groups.insert(group.into());
        self
    }

    /// Prepended to the `transactional.id` of the members of
    /// [transactional groups](KafkaBuilder::transactional_group), which is
    /// `<prefix><group.id>.<n>`, `n` being the member's slot (0 for the first member of the
    /// group this transport starts, 1 for the second, ...).
    ///
    /// Default: a random prefix per transport, which never collides with another running
    /// instance; a member that crashed mid-transaction then blocks `read_committed` readers
    /// of the partitions it wrote to until the broker aborts the transaction
    /// (`transaction.timeout.ms`, set to the [delivery timeout](KafkaBuilder::delivery_timeout)).
    /// Give a name that is stable across restarts and unique among the running instances
    /// (a Kubernetes StatefulSet pod name) and a restarted member fences its predecessor
    /// at once, aborting what it left open. Two running instances with the same prefix
    /// fence each other.
    pub fn transactional_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.transactional_id_prefix = Some(prefix.into());
        self
    }

    /// The format this transport writes events' metadata in, on every topic without a
    /// [format of its own](KafkaBuilder::topic_format). Default [`WireFormat::Eventflow`].
    /// Consumers read both formats whatever this says.
    pub fn wire_format(mut self, format: WireFormat) -> Self {
        self.wire_format = format;
        self
    }

    /// The format events published to one topic (the eventflow name, without prefix) are
    /// written in, e.g. `.topic_format("orders", WireFormat::CloudEvents)` for a topic that
    /// services outside eventflow read.
    pub fn topic_format(mut self, topic: impl Into<String>, format: WireFormat) -> Self {
        self.topic_formats.insert(topic.into(), format);
        self
    }

    /// The CloudEvents `source` attribute (`ce_source`) of the events this transport writes
    /// in [`WireFormat::CloudEvents`]: a URI-reference naming the producing application, e.g.
    /// `"https://shop.example.com/checkout"`. Default `/<topic>`, the eventflow topic. An
    /// event that carries a `ce_source` header of its own (one read from CloudEvents and
    /// forwarded) keeps it.
    pub fn cloudevents_source(mut self, source: impl Into<String>) -> Self {
        self.cloudevents_source = Some(source.into());
        self
    }

    pub(crate) fn kafka_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    pub(crate) fn group_id(&self, group: &str) -> String {
        format!("{}{group}", self.group_prefix)
    }

    pub(crate) fn dead_letter_topic_for(&self, kafka_topic: &str, group: &str) -> String {
        self.dead_letter_topic
            .replace("{topic}", kafka_topic)
            .replace("{group}", group)
    }

    /// The format events of eventflow topic `topic` are written in.
    pub(crate) fn format_of(&self, topic: &str) -> WireFormat {
        if self.topic_formats.is_empty() {
            return self.wire_format;
        }
        self.topic_formats.get(topic).copied().unwrap_or(self.wire_format)
    }

    pub(crate) fn partitions_of(&self, kafka_topic: &str) -> i32 {
        kafka_topic
            .strip_prefix(&self.topic_prefix)
            .and_then(|topic| self.topic_partitions.get(topic))
            .copied()
            .unwrap_or(self.partitions)
    }
}

fn clamp(n: u32) -> i32 {
    i32::try_from(n.max(1)).unwrap_or(i32::MAX)
}
