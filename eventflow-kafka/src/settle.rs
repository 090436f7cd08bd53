//! Settling on Kafka: [`EventBus::settled`](eventflow::EventBus::settled) and a graceful
//! shutdown wait until the bus's groups have committed what was published before the call,
//! read from the broker as `kafka-consumer-groups --describe` reads it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{base_config, Inner};
use crate::config::StartFrom;
use crate::Error;

/// How long each request may wait for the broker.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How often committed offsets are read again while waiting.
const POLL: Duration = Duration::from_millis(100);

/// A Kafka group id and the Kafka topics it consumes.
pub(crate) type Subscriptions = Vec<(String, Vec<String>)>;

/// Waits until each group has committed, on every partition of its topics, at least the end
/// of the log as it was when this was called.
pub(crate) async fn until_settled(inner: Arc<Inner>, groups: Subscriptions) -> Result<(), Error> {
    let targets = blocking(inner.clone(), {
        let groups = groups.clone();
        move |inner| ends(inner, &groups)
    })
    .await?;
    loop {
        let behind = blocking(inner.clone(), {
            let targets = targets.clone();
            move |inner| behind(inner, &targets)
        })
        .await?;
        if behind.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What the groups have not committed yet, in words, or `None` when nothing is left.
pub(crate) async fn unsettled(inner: Arc<Inner>, groups: Subscriptions) -> Option<String> {
    let left = blocking(inner, move |inner| {
        let targets = ends(inner, &groups)?;
        behind(inner, &targets)
    })
    .await;
    match left {
        Ok(left) if left.is_empty() => None,
        Ok(left) => Some(
            left.iter()
                .map(|((group, topic), n)| {
                    format!("group `{group}` has {n} events of Kafka topic `{topic}` not committed")
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Err(error) => Some(format!("the groups' lag could not be read: {error}")),
    }
}

/// Per group: the end offset of each partition of each of its topics.
type Targets = Vec<(String, HashMap<(String, i32), i64>)>;

/// Per (group, Kafka topic): how many events the group has not committed.
type Behind = Vec<((String, String), i64)>;

fn ends(inner: &Inner, groups: &Subscriptions) -> Result<Targets, Error> {
    let client = client(inner, "eventflow-settle")?;
    let mut targets = Vec::new();
    for (group, topics) in groups {
        let mut ends = HashMap::new();
        for topic in topics {
            let partitions = inner.partition_count(&client, topic, TIMEOUT)?;
            for partition in 0..partitions as i32 {
                let (_, high) = client
                    .fetch_watermarks(topic, partition, TIMEOUT)
                    .map_err(|e| inner.error(format!("reading the end of topic `{topic}`"), e))?;
                ends.insert((topic.clone(), partition), high);
            }
        }
        targets.push((group.clone(), ends));
    }
    Ok(targets)
}

/// Per (group, topic): how many events below the targets the group has not committed.
fn behind(inner: &Inner, targets: &Targets) -> Result<Behind, Error> {
    let mut left: HashMap<(String, String), i64> = HashMap::new();
    for (group, ends) in targets {
        if ends.is_empty() {
            continue;
        }
        let client = client(inner, group)?;
        let mut list = TopicPartitionList::new();
        for (topic, partition) in ends.keys() {
            list.add_partition(topic, *partition);
        }
        let committed = client
            .committed_offsets(list, TIMEOUT)
            .map_err(|e| inner.error(format!("reading the committed offsets of `{group}`"), e))?;
        for element in committed.elements() {
            let end = ends[&(element.topic().to_owned(), element.partition())];
            let from = match (element.offset(), inner.config.start_from) {
                (Offset::Offset(offset), _) => offset,
                // A group that starts from the latest skips what was there before it joined.
                (_, StartFrom::Latest) => end,
                (_, StartFrom::Earliest) => 0,
            };
            if from < end {
                *left
                    .entry((group.clone(), element.topic().to_owned()))
                    .or_default() += end - from;
            }
        }
    }
    let mut left: Vec<_> = left.into_iter().collect();
    left.sort();
    Ok(left)
}

fn client(inner: &Inner, group_id: &str) -> Result<BaseConsumer, Error> {
    base_config(&inner.config)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| {
            inner.error(
                format!("creating a client to read the offsets of `{group_id}`"),
                e,
            )
        })
}

async fn blocking<T: Send + 'static>(
    inner: Arc<Inner>,
    work: impl FnOnce(&Inner) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(move || work(&inner))
        .await
        .map_err(|panic| Error::Config(format!("reading the groups' offsets panicked: {panic}")))?
}
