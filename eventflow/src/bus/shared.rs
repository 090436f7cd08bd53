//! The ground floor of the bus: what the bus, its builder, its members and its dead-letter
//! operations share. Below all of them, so that none imports the module that builds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::route::Route;
use crate::codec::Codec;
use crate::outgoing::Outgoing;
use crate::projection::ProjectionHandle;
use crate::retry::Backoff;
use crate::store::{DeadLetterStore, Storage};
use crate::transport::Transport;
use crate::{Envelope, Error, OutboxProgress};

/// What the bus, its workers and every handler [`Context`](crate::Context) share.
pub(crate) struct Shared {
    /// Publishing: the transport, the codec and the application state.
    pub(super) outgoing: Arc<Outgoing>,
    /// The same transport as `outgoing`'s, for subscribing, settling and dead letters.
    pub(super) transport: Arc<dyn Transport>,
    pub(super) dead_letters: Arc<dyn DeadLetterStore>,
    pub(super) storage: Option<Arc<dyn Storage>>,
    pub(super) backoff: Backoff,
    pub(super) groups: HashMap<Arc<str>, Arc<Group>>,
    /// The relay's progress and id, with storage.
    pub(super) outbox: Option<OutboxProgress>,
    pub(super) relay_id: Option<String>,
    pub(super) shutdown_timeout: Duration,
    /// Set when a shutdown begins: the bus takes no new publishes or units of work, while
    /// handlers still publish their follow-ups.
    pub(super) draining: AtomicBool,
    pub(super) projections: HashMap<&'static str, ProjectionHandle>,
    /// Whether the storage's units of work have savepoints, so that transactional
    /// handlers share one (see [`Transaction::savepoint`]); cleared when one says no.
    ///
    /// [`Transaction::savepoint`]: crate::store::Transaction::savepoint
    pub(super) savepoints: AtomicBool,
}

/// A consumer group: its handlers by event name, each name's by version.
pub(crate) struct Group {
    pub(super) name: Arc<str>,
    pub(super) routes: HashMap<&'static str, Vec<GroupRoute>>,
    pub(super) topics: Vec<&'static str>,
    pub(super) workers: usize,
    /// Whether later events of a dead-lettered event's key are parked behind it.
    pub(super) sequenced: bool,
}

impl Group {
    /// The handler for `envelope`: the one of its event's version; else the oldest newer
    /// one, which upcasts it; else the newest, which refuses it as too new;
    /// with its place among the routes of its event's name.
    pub(super) fn route_at(&self, envelope: &Envelope) -> Option<(usize, &GroupRoute)> {
        let versions = self.routes.get(&*envelope.name)?;
        let index = versions
            .iter()
            .position(|route| route.route.event_version() >= envelope.version)
            .or_else(|| versions.len().checked_sub(1))?;
        Some((index, &versions[index]))
    }

    /// Every handler of the group.
    pub(super) fn all_routes(&self) -> impl Iterator<Item = &GroupRoute> {
        self.routes.values().flatten()
    }
}

pub(super) struct GroupRoute {
    pub(super) route: Arc<dyn Route>,
    pub(super) retries: u32,
}

impl GroupRoute {
    /// Whether the handler knows `envelope`'s version: its own, or an older one it upcasts.
    pub(super) fn knows(&self, envelope: &Envelope) -> bool {
        envelope.version <= self.route.event_version()
    }
}

impl Shared {
    pub(crate) fn codec(&self) -> &dyn Codec {
        self.outgoing.codec()
    }

    pub(super) fn refuse_when_draining(&self) -> Result<(), Error> {
        match self.draining.load(Ordering::Acquire) {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }
}
