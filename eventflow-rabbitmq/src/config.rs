//! [`RabbitMqBuilder`]: how a [`RabbitMq`](crate::RabbitMq) transport is set up. The
//! publisher, the members and the topology read these settings, and the transport is made
//! of them, so this module imports none of those: [`build`](RabbitMqBuilder::build) lives
//! with [`RabbitMq`](crate::RabbitMq), in `transport.rs`.

use std::time::Duration;

use crate::Error;

/// The broker `RabbitMq::from_env` uses when `AMQP_URL` is unset: RabbitMQ's defaults.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Configures a [`RabbitMq`](crate::RabbitMq) transport. Made by
/// [`RabbitMq::builder`](crate::RabbitMq::builder) or
/// [`RabbitMq::from_env`](crate::RabbitMq::from_env); [`build`](RabbitMqBuilder::build)
/// connects lazily, on first use.
#[derive(Clone, Debug)]
pub struct RabbitMqBuilder {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) queues_per_group: u32,
    pub(crate) prefetch: u16,
    pub(crate) rebalance_interval: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
}

impl RabbitMqBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        RabbitMqBuilder {
            url: url.into(),
            prefix: String::new(),
            queues_per_group: 4,
            prefetch: 64,
            rebalance_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// Put in front of every exchange and queue name this transport declares, so that
    /// several applications or test runs share a broker (a virtual host does that too).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many queues each group has per topic (default 4), the equivalent of Kafka's
    /// partitions: an event's key picks its queue, a group's members share its queues, so
    /// at most this many members of a group work at once. Every application publishing or
    /// consuming a topic must use the same number, or keys land on other queues.
    pub fn queues_per_group(mut self, queues: u32) -> Self {
        self.queues_per_group = queues;
        self
    }

    /// How many unacknowledged messages the broker sends a member per queue (default 64):
    /// the bound on what a member holds in memory, and so its backpressure.
    pub fn prefetch(mut self, messages: u16) -> Self {
        self.prefetch = messages;
        self
    }

    /// How often a member compares the queues it is active on with its fair share of the
    /// group's, and hands surplus queues on to the others (default 1 s).
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.rebalance_interval = interval;
        self
    }

    /// The backoff between reconnection attempts after the connection was lost: from
    /// `min`, doubling up to `max` (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// The configuration's mistakes, each with what to write instead: what
    /// [`build`](RabbitMqBuilder::build) checks.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Err(error) = self.url.parse::<lapin::uri::AMQPUri>() {
            return Err(Error::Config(format!(
                "`{}` is not an AMQP URL ({error}); write it as \
                 amqp://user:password@host:5672/vhost, the default vhost `/` as %2f",
                self.url
            )));
        }
        if self.queues_per_group == 0 {
            return Err(Error::Config(
                "queues_per_group is 0; a group needs at least one queue per topic".into(),
            ));
        }
        if self.prefetch == 0 {
            return Err(Error::Config(
                "prefetch is 0, which RabbitMQ reads as unlimited; give a bound such as 64".into(),
            ));
        }
        Ok(())
    }

    /// The reconnection delay before attempt `attempt` (1 for the first retry).
    pub(crate) fn reconnect_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.reconnect_min.saturating_mul(factor).min(self.reconnect_max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Error, RabbitMq};

    fn refused(builder: super::RabbitMqBuilder) -> String {
        match builder.build() {
            Err(Error::Config(message)) => message,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused_with_what_to_do() {
        let message = refused(RabbitMq::builder("localhost:5672"));
        assert!(
            message.contains("amqp://user:password@host:5672/vhost"),
            "{message}"
        );
        let message = refused(RabbitMq::builder(super::DEFAULT_URL).queues_per_group(0));
        assert!(message.contains("at least one queue"), "{message}");
        let message = refused(RabbitMq::builder(super::DEFAULT_URL).prefetch(0));
        assert!(message.contains("unlimited"), "{message}");
        assert!(RabbitMq::builder(super::DEFAULT_URL).build().is_ok());
    }

    #[test]
    fn reconnecting_backs_off_exponentially_up_to_the_maximum() {
        let builder = RabbitMq::builder(super::DEFAULT_URL)
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (1..=6).map(|a| builder.reconnect_delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(builder.reconnect_delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn names_follow_the_documented_topology() {
        let rabbit = RabbitMq::builder(super::DEFAULT_URL)
            .prefix("shop.")
            .build()
            .unwrap();
        assert_eq!(rabbit.exchange("orders"), "shop.orders");
        assert_eq!(rabbit.queue("inventory", "orders", 3), "shop.inventory.orders.3");
        assert_eq!(
            rabbit.dead_letter_queue("inventory"),
            "shop.inventory.dead-letters"
        );
        assert_eq!(rabbit.queues_per_group(), 4);
    }
}
