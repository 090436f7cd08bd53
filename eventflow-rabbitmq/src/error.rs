//! The crate's [`Error`] type.

/// What can go wrong talking to RabbitMQ. Converted into [`eventflow::Error::Backend`] where
/// eventflow's traits return errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work.
    #[error("invalid RabbitMQ transport configuration: {0}")]
    Config(String),

    /// An AMQP operation failed.
    #[error("{what} failed: {source}; {hint}")]
    Amqp {
        /// What eventflow was doing.
        what: String,
        /// What lapin said.
        source: Box<lapin::Error>,
        /// What to check.
        hint: String,
    },

    /// The broker refused a published message (a negative publisher confirm).
    #[error(
        "RabbitMQ refused the message published to exchange `{exchange}` (negative publisher \
         confirm: the broker could not store it, e.g. a full disk or a queue over its length \
         limit); check the broker's log. The outbox relay publishes it again"
    )]
    Refused {
        /// The exchange the message went to.
        exchange: String,
    },
}

impl Error {
    pub(crate) fn amqp(what: impl Into<String>, url: &str, source: lapin::Error) -> Self {
        let hint = match source.kind() {
            lapin::ErrorKind::ProtocolError(error) if error.get_id() == 406 => {
                "a queue or exchange exists with other settings (PRECONDITION_FAILED): eventflow \
                 declares its queues as quorum queues with a single active consumer; delete the \
                 old ones or choose other names with `RabbitMqBuilder::prefix`"
                    .to_owned()
            }
            lapin::ErrorKind::ProtocolError(error) if error.get_id() == 403 => format!(
                "the broker denied access (ACCESS_REFUSED): check the user and virtual host in \
                 `{url}` and its permissions"
            ),
            lapin::ErrorKind::ProtocolError(error) if error.get_id() == 530 => format!(
                "the broker refused the virtual host (NOT_ALLOWED): create it (`rabbitmqctl \
                 add_vhost`) or fix the path of `{url}`; the default vhost `/` is written %2f"
            ),
            _ => format!(
                "check that RabbitMQ at `{url}` is running and reachable (the address comes from \
                 `AMQP_URL` with `RabbitMq::from_env`); eventflow reconnects with backoff"
            ),
        };
        Error::Amqp {
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
