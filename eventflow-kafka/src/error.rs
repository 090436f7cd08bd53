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

impl From<Error> for eventflow::Error {
    fn from(error: Error) -> Self {
        eventflow::Error::backend(error)
    }
}
