//! [`GroupProtocol`]: which consumer group protocol a group's members speak, and what
//! follows from it (how a rebalance hands partitions over, which settings apply).

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::Error;

/// The consumer group protocol of the transport's consumer groups
/// ([`KafkaBuilder::group_protocol`](crate::KafkaBuilder::group_protocol)).
///
/// Either way eventflow commits the offsets of what a member handled before its partitions
/// go to another member, and a member that stops polling for longer than
/// `max.poll.interval.ms` (the rebalance timeout) leaves the group, so its partitions are
/// handled by the others from the last committed offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup), spoken by every broker. The default.
    ///
    /// Rebalances are eager (every member gives up all its partitions, then the group
    /// leader hands them out again) unless `partition.assignment.strategy` is
    /// `cooperative-sticky` (set it with
    /// [`consumer_config`](crate::KafkaBuilder::consumer_config)): then only the partitions
    /// that move are revoked, the others keep being consumed through the rebalance.
    /// `session.timeout.ms` and `heartbeat.interval.ms` are client settings.
    #[default]
    Classic,
    /// Kafka 4's consumer group protocol (KIP-848, `group.protocol=consumer`): the broker
    /// assigns partitions and a member learns of its changes with its heartbeats; a
    /// rebalance only moves the partitions that change owner and never stops the group.
    /// Needs a broker of Kafka 4.0 or later.
    ///
    /// The broker decides what the classic protocol left to clients, and librdkafka refuses
    /// those settings in [`consumer_config`](crate::KafkaBuilder::consumer_config) (so does
    /// [`build`](crate::KafkaBuilder::build)): the assignor is the broker's
    /// `group.consumer.assignors` (pick one with `group.remote.assignor`, not
    /// `partition.assignment.strategy`); the session timeout and heartbeat interval are the
    /// broker's `group.consumer.session.timeout.ms` (45 s by default) and
    /// `group.consumer.heartbeat.interval.ms` (5 s), or per group through the admin API,
    /// not `session.timeout.ms` and `heartbeat.interval.ms`. `max.poll.interval.ms` stays
    /// a client setting.
    Consumer,
}

/// Consumer settings of the classic protocol that librdkafka rejects under
/// `group.protocol=consumer`, with what replaces each.
const CLASSIC_ONLY: [(&str, &str); 4] = [
    (
        "partition.assignment.strategy",
        "the broker assigns partitions; choose its assignor with `group.remote.assignor`",
    ),
    (
        "session.timeout.ms",
        "the broker's `group.consumer.session.timeout.ms` (or the group's `consumer.session.timeout.ms`) sets it",
    ),
    (
        "heartbeat.interval.ms",
        "the broker's `group.consumer.heartbeat.interval.ms` (or the group's `consumer.heartbeat.interval.ms`) sets it",
    ),
    ("group.protocol.type", "it only exists in the classic protocol"),
];

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }

    /// Refuses, before any consumer exists, a consumer setting the protocol does not have.
    /// `group.protocol` set among the consumer settings overrides `self`, as it does on the
    /// consumers.
    pub(crate) fn check(self, consumer_config: &[(String, String)]) -> Result<(), Error> {
        let set = consumer_config
            .iter()
            .rev()
            .find(|(key, _)| key == "group.protocol");
        let consumer = match set {
            Some((_, value)) => value.trim().eq_ignore_ascii_case("consumer"),
            None => self == GroupProtocol::Consumer,
        };
        if !consumer {
            return Ok(());
        }
        for (key, _) in consumer_config {
            if let Some((_, instead)) = CLASSIC_ONLY.iter().find(|(name, _)| name == key) {
                return Err(Error::Config(format!(
                    "consumer setting `{key}` belongs to the classic group protocol, and the \
                     transport uses `GroupProtocol::Consumer` (KIP-848), under which {instead}; \
                     remove `{key}`, or use `GroupProtocol::Classic`"
                )));
            }
        }
        Ok(())
    }
}

/// How long a member of a consumer-protocol group waits for its first partitions before
/// it says that the broker may not speak that protocol: librdkafka then only retries,
/// silently, and the group consumes nothing.
pub(crate) const FIRST_ASSIGNMENT_PATIENCE: Duration = Duration::from_secs(30);

/// Whether a consumer made with `config` speaks the consumer group protocol (KIP-848).
pub(crate) fn is_consumer_protocol(config: &ClientConfig) -> bool {
    config
        .get("group.protocol")
        .is_some_and(|protocol| protocol.trim().eq_ignore_ascii_case("consumer"))
}

/// Whether a consumer made with `config` gets and gives up partitions incrementally: always
/// under the consumer protocol, and under the classic one with a cooperative assignor.
/// Read from the configuration, as librdkafka decides it, so that the rebalance callback
/// never needs to ask the consumer (see `Member::rebalance`).
pub(crate) fn is_incremental(config: &ClientConfig) -> bool {
    let consumer_protocol = is_consumer_protocol(config);
    let cooperative = config
        .get("partition.assignment.strategy")
        .is_some_and(|strategy| strategy.contains("cooperative"));
    consumer_protocol || cooperative
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(settings: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config
    }

    #[test]
    fn only_classic_eager_assignment_is_not_incremental() {
        assert!(!is_incremental(&config(&[])));
        assert!(!is_incremental(&config(&[("group.protocol", "classic")])));
        assert!(!is_incremental(&config(&[(
            "partition.assignment.strategy",
            "range,roundrobin"
        )])));
        assert!(is_incremental(&config(&[(
            "partition.assignment.strategy",
            "cooperative-sticky"
        )])));
        assert!(is_incremental(&config(&[("group.protocol", "consumer")])));
        // librdkafka ignores the strategy under the consumer protocol; so does this.
        assert!(is_incremental(&config(&[
            ("group.protocol", "consumer"),
            ("partition.assignment.strategy", "range"),
        ])));
    }

    #[test]
    fn the_consumer_protocol_refuses_classic_settings_and_says_what_replaces_them() {
        let settings = |key: &str| vec![(key.to_owned(), "1000".to_owned())];
        for (key, _) in CLASSIC_ONLY {
            assert!(GroupProtocol::Classic.check(&settings(key)).is_ok());
            let Err(Error::Config(message)) = GroupProtocol::Consumer.check(&settings(key)) else {
                panic!("`{key}` accepted under the consumer protocol");
            };
            assert!(message.contains(key) && message.contains("remove"), "{message}");
        }
        assert!(GroupProtocol::Consumer
            .check(&settings("max.poll.interval.ms"))
            .is_ok());
        let raw = |protocol: &str| {
            vec![
                ("group.protocol".to_owned(), protocol.to_owned()),
                ("heartbeat.interval.ms".to_owned(), "500".to_owned()),
            ]
        };
        assert!(GroupProtocol::Classic.check(&raw("consumer")).is_err());
        assert!(GroupProtocol::Consumer.check(&raw("classic")).is_ok());
        let Err(Error::Config(message)) = GroupProtocol::Consumer.check(&settings("session.timeout.ms"))
        else {
            unreachable!()
        };
        assert!(message.contains("group.consumer.session.timeout.ms"), "{message}");
    }
}
