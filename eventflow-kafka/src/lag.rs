//! Consumer lag: how far a group is behind a topic, as `kafka-consumer-groups --describe`
//! reports it.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::base_config;
use crate::config::StartFrom;
use crate::{Error, Kafka};

/// How long each request of [`Kafka::lag`] may wait for the broker.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Kafka {
    /// Events of eventflow topic `topic` that group `group` has not committed yet: per
    /// partition, the end of the log minus the group's committed offset, summed. Where the
    /// group has committed nothing, every event kept counts if the group
    /// [starts from](crate::KafkaBuilder::start_from) the earliest, none if it starts from
    /// the latest (it will skip them). 0 for a topic that does not exist.
    ///
    /// The figure to alert on when a consumer falls behind, and to wait on in tests. Each
    /// call opens a short-lived client and asks the broker for the partitions, their ends
    /// and the group's offsets; it does not join the group.
    ///
    /// ```no_run
    /// # async fn example(kafka: eventflow_kafka::Kafka) -> Result<(), eventflow_kafka::Error> {
    /// let behind = kafka.lag("orders", "inventory").await?;
    /// if behind > 10_000 {
    ///     tracing::warn!(behind, "inventory is falling behind on orders");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lag(&self, topic: &str, group: &str) -> Result<u64, Error> {
        let inner = self.inner.clone();
        let topic = self.kafka_topic(topic);
        let group_id = self.group_id(group);
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = base_config(&inner.config)
                .set("group.id", &group_id)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| inner.error(format!("creating a client to read the lag of `{group_id}`"), e))?;
            let partitions = inner.partition_count(&client, &topic, TIMEOUT)?;
            if partitions == 0 {
                return Ok(0);
            }
            let mut all = TopicPartitionList::new();
            all.add_partition_range(&topic, 0, partitions as i32 - 1);
            let committed = client
                .committed_offsets(all, TIMEOUT)
                .map_err(|e| inner.error(format!("reading the committed offsets of `{group_id}`"), e))?;
            let mut lag = 0;
            for element in committed.elements() {
                let (low, high) = client
                    .fetch_watermarks(&topic, element.partition(), TIMEOUT)
                    .map_err(|e| inner.error(format!("reading the end of topic `{topic}`"), e))?;
                let from = match (element.offset(), inner.config.start_from) {
                    (Offset::Offset(offset), _) => offset.max(low),
                    (_, StartFrom::Earliest) => low,
                    (_, StartFrom::Latest) => high,
                };
                lag += (high - from).max(0) as u64;
            }
            Ok(lag)
        })
        .await
        .map_err(|panic| Error::Config(format!("reading consumer lag panicked: {panic}")))?
    }
}
