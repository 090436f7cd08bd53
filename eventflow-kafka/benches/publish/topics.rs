//! The bench's topics: created as eventflow creates its own, deleted after each run, and
//! those of interrupted runs cleaned up.

use eventflow_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use eventflow_kafka::rdkafka::client::DefaultClientContext;

use super::*;

/// Deletes the topic of a run, so that the runs do not pile data up on the broker.
pub async fn delete_topic(prefix: &str) {
    delete_topics(&[kafka(prefix).kafka_topic("bench")]).await;
}

/// Creates `topic` as eventflow creates its topics: [`PARTITIONS`] partitions, one
/// replica.
pub async fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("creating the admin client");
    let new = NewTopic::new(topic, PARTITIONS as i32, TopicReplication::Fixed(1));
    let created = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("creating the raw side's topic");
    for result in created {
        result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code}"));
    }
}

async fn delete_topics(topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("creating the admin client");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let deleted = admin.delete_topics(&names, &AdminOptions::new()).await;
    if let Err(error) = deleted.map_err(|e| e.to_string()).and_then(|results| {
        results
            .into_iter()
            .try_for_each(|r| r.map(drop).map_err(|(topic, code)| format!("{topic}: {code}")))
    }) {
        eprintln!("  could not delete the bench's topics: {error}");
    }
}

/// Deletes the topics earlier runs of this bench left behind (interrupted, or from before
/// it deleted them): `bench-<pid>-<ms>-...` created over ten minutes ago, long enough that
/// no run still uses them.
pub async fn delete_stale_topics() {
    let producer = raw_producer();
    let Ok(metadata) = producer.client().fetch_metadata(None, Duration::from_secs(10)) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let stale: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|name| {
            let mut parts = name.strip_prefix("bench-").unwrap_or_default().split(['-', '.']);
            let created = parts.nth(1).and_then(|ms| ms.parse::<u128>().ok());
            created.is_some_and(|ms| now.saturating_sub(ms) > 10 * 60 * 1000)
        })
        .map(str::to_owned)
        .collect();
    if !stale.is_empty() {
        eprintln!("deleting {} topics left by earlier runs", stale.len());
        for chunk in stale.chunks(100) {
            delete_topics(chunk).await;
        }
    }
}
