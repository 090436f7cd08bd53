//! Where a new consumer group starts reading ([`StartFrom::Latest`](crate::StartFrom)):
//! the current end of each partition, committed before the group's first member joins.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::Inner;
use crate::member::Member;
use crate::Error;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a topic or group that was just created may take to be served. A real cluster
/// answers "not leader" for a topic whose leaders have not reached the broker's metadata
/// yet, and "not coordinator" or "coordinator loading" for a group whose offsets partition
/// is still being created or loaded (the first group ever, a coordinator moved): moments
/// after `CreateTopics` returned, these are the normal state, not failures.
const SETTLING: Duration = Duration::from_secs(30);

/// Commits the current end of every partition `group_id` has no offset for, so the group
/// reads what is published from now on, even before the group has finished joining.
pub(crate) fn start_new_partitions_at_end(
    inner: &Inner,
    consumer: &StreamConsumer<Member>,
    group_id: &str,
    topics: &[String],
) -> Result<(), Error> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let mut partitions = 0;
        for attempt in 0..50 {
            let metadata = settled(|| consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT))
                .map_err(|e| inner.error(format!("reading the metadata of topic `{topic}`"), e))?;
            partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
            if partitions > 0 || attempt == 49 {
                break;
            }
            // A topic created a moment ago may not have its partitions in metadata yet.
            std::thread::sleep(Duration::from_millis(100));
        }
        if partitions == 0 {
            return Err(Error::Config(format!(
                "topic `{topic}` has no partitions in the broker's metadata; check that it exists"
            )));
        }
        all.add_partition_range(topic, 0, partitions as i32 - 1);
    }
    let committed = settled(|| consumer.committed_offsets(all.clone(), METADATA_TIMEOUT))
        .map_err(|e| inner.error(format!("reading the committed offsets of group `{group_id}`"), e))?;
    let mut start = TopicPartitionList::new();
    for element in committed.elements() {
        if element.offset() != Offset::Invalid {
            continue;
        }
        let (topic, partition) = (element.topic(), element.partition());
        let (_low, high) = settled(|| consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT))
            .map_err(|e| inner.error(format!("reading the end of topic `{topic}`"), e))?;
        start
            .add_partition_offset(topic, partition, Offset::Offset(high))
            .map_err(|e| inner.error("building an offset list", e))?;
    }
    if start.count() > 0 {
        if let Err(error) = settled(|| consumer.commit(&start, CommitMode::Sync)) {
            // Another member is active, so this one may not commit before joining; the
            // partitions start at the earliest offset instead, losing nothing.
            tracing::warn!(group = group_id, %error, "could not set the start offsets of new partitions; they are read from the beginning");
        }
    }
    Ok(())
}

/// Runs `call` again while it fails with an error a cluster gives while a new topic or
/// group settles, for at most [`SETTLING`].
fn settled<T>(mut call: impl FnMut() -> KafkaResult<T>) -> KafkaResult<T> {
    let deadline = Instant::now() + SETTLING;
    let mut wait = Duration::from_millis(50);
    loop {
        match call() {
            Err(error) if is_settling(&error) && Instant::now() < deadline => {
                tracing::debug!(%error, ?wait, "the cluster is still settling a new topic or group; asking again");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

fn is_settling(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            NotCoordinator
                | CoordinatorLoadInProgress
                | CoordinatorNotAvailable
                | NotLeaderForPartition
                | LeaderNotAvailable
                | UnknownTopicOrPartition
                | UnknownPartition
                | RequestTimedOut
                | OperationTimedOut
        )
    )
}
