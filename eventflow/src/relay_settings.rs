//! [`RelaySettings`]: how the bus's outbox relay claims and delivers.

use std::time::Duration;

use crate::Error;

/// How the outbox [`Relay`](crate::Relay) of a bus works, set with
/// [`EventBusBuilder::relay`](crate::EventBusBuilder::relay).
///
/// ```
/// # use std::time::Duration;
/// use eventflow::{EventBus, MemoryStore, RelaySettings};
/// # async fn run() -> Result<(), eventflow::Error> {
/// let bus = EventBus::builder()
///     .storage(MemoryStore::new())
///     .relay(RelaySettings::default().lease(Duration::from_secs(5)).batch(128))
///     .start()
///     .await?;
/// # bus.shutdown().await; Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySettings {
    pub(crate) lease: Duration,
    pub(crate) batch: usize,
    pub(crate) poll_interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            lease: Duration::from_secs(10),
            batch: 512,
            poll_interval: Duration::from_millis(500),
        }
    }
}

impl RelaySettings {
    /// How long the outbox stays a relay's after its last claim. Default 10 s.
    ///
    /// Relays of several processes on one store take turns through this lease. A relay
    /// whose process died holds deliveries up until its lease runs out, unless the relay
    /// that comes next runs on the same host and finds that process gone (then it takes
    /// over at once; see [`relay_is_gone`](crate::store::relay_is_gone)). Shorter means a
    /// faster takeover from a relay on another host, and more lease writes.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Most entries claimed and delivered per batch. Default 512.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How often the relay looks for commits it was not woken for (those of other
    /// processes), and for the lease of a relay that holds the outbox. Default 500 ms.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Fails on a lease or poll interval of zero: the relay would renew its lease, or poll
    /// the store, without pause.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.lease.is_zero() {
            return Err(Error::Config(
                "the relay's lease is zero, so it would be renewed without pause; give \
                 `RelaySettings::lease` a duration, e.g. the default 10 s"
                    .to_owned(),
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config(
                "the relay's poll interval is zero, so it would poll the store without pause; \
                 give `RelaySettings::poll_interval` a duration, e.g. the default 500 ms"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}
