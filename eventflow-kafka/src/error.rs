//! The crate's [`Error`] type.

/// What can go wrong talking to Kafka. Converted into [`eventflow::Error::Backend`] where
/// eventflow's traits return errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work.
    #[error("invalid Kafka transport configuration: {0}")]
    Config(String),

    /// A Kafka operation failed.
    #[error("{what} failed: {source}; {hint}")]
    Kafka {
        /// What eventflow was doing.
        what: String,
        /// What librdkafka said.
        source: Box<rdkafka::error::KafkaError>,
        /// What to check.
        hint: String,
    },
}

impl Error {
    pub(crate) fn kafka(what: impl Into<String>, brokers: &str, source: rdkafka::error::KafkaError) -> Self {
        if let Some(hint) = source.rdkafka_error_code().and_then(permanent) {
            return Error::Kafka {
                what: what.into(),
                source: Box::new(source),
                hint: hint.to_owned(),
            };
        }
        let hint = match source.rdkafka_error_code() {
            Some(rdkafka::types::RDKafkaErrorCode::Fatal) => {
                "librdkafka's client failed for good (a fatal error, logged with its reason); \
                 eventflow replaces the transport's producer, so publishing again goes through \
                 a new one"
                    .to_owned()
            }
            _ => format!(
                "check that the Kafka brokers at `{brokers}` are running and reachable (the address \
                 comes from `KAFKA_BROKERS` with `Kafka::from_env`); eventflow retries with backoff"
            ),
        };
        Error::Kafka {
            what: what.into(),
            source: Box::new(source),
            hint,
        }
    }
}

impl Error {
    /// Whether publishing the same message again would fail the same way: a message over
    /// the size limit, an invalid topic, a record the broker rejects, a topic this client
    /// may not write to. The other failures (broker down, timeouts, leaders moving) are
    /// transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Kafka { source, .. } => source.rdkafka_error_code().and_then(permanent).is_some(),
            Error::Config(_) => false,
        }
    }
}

/// What to do about a failure that publishing again cannot fix, if `code` is one. The
/// size check is made twice: by librdkafka before sending (the producer's
/// `message.max.bytes`) and by the broker (its `message.max.bytes`, a topic's
/// `max.message.bytes`); both answer `MessageSizeTooLarge`.
fn permanent(code: rdkafka::types::RDKafkaErrorCode) -> Option<&'static str> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    Some(match code {
        Code::MessageSizeTooLarge | Code::MessageBatchTooLarge => {
            "the message is larger than Kafka accepts (the producer's `message.max.bytes`, 1 MB by \
             default, checked before sending; the broker's `message.max.bytes` or the topic's \
             `max.message.bytes`, checked when it arrives): make the event smaller or split it, \
             or raise the limits on the broker or topic and on the producer \
             (`KafkaBuilder::producer_config(\"message.max.bytes\", ..)`)"
        }
        Code::InvalidMessageSize | Code::InvalidRecord | Code::InvalidMessage => {
            "the broker rejects this record as it is (its format, size or a broker-side policy); \
             fix what the broker's log names, then publish it again"
        }
        Code::InvalidTopic => {
            "the topic name is not valid in Kafka (at most 249 characters of ASCII letters, \
             digits, `.`, `_` and `-`): rename the event's topic or change the topic prefix"
        }
        Code::TopicAuthorizationFailed => {
            "this client may not write to the topic: grant the principal it connects as WRITE \
             (and CREATE, for topics eventflow creates) on it, then publish again"
        }
        Code::PolicyViolation => {
            "the broker's policy refuses the request (e.g. topic creation settings): change the \
             policy or create the topic by hand as the policy wants"
        }
        _ => return None,
    })
}

/// A permanent failure becomes [`eventflow::Error::Rejected`] (of an event the error does
/// not name: [`Kafka`](crate::Kafka)'s `publish_batch` fills in which), so the outbox
/// relay dead-letters the event instead of retrying; any other failure is
/// [`eventflow::Error::Backend`].
impl From<Error> for eventflow::Error {
    fn from(error: Error) -> Self {
        match error.is_permanent() {
            true => eventflow::Error::rejected(uuid::Uuid::nil(), error.to_string()),
            false => eventflow::Error::backend(error),
        }
    }
}
