//! Decide once, then run: what a member knows before its first record. Which path a
//! group's events take through their handler (plain, inbox-guarded, own unit of work,
//! shared unit of work, broker transaction) depends only on the bus's storage, the
//! handler and the member's consumer, so it is chosen once per route when the member
//! starts, as a [`Delivery`], and each record only looks its route's up.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::super::sequenced::Parking;
use super::super::shared::{Group, GroupRoute, Shared};
use crate::context::Scope;
use crate::transport::{Record, TransactionalSink};
use crate::{DeadLetter, Envelope, Error};

/// The path an event takes through its handler, in one member of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// No storage and no broker transaction: the handler runs, the offset commit is the
    /// only record of it (at least once).
    Plain,
    /// A handler without `Tx` on a bus with storage: the inbox skips the events processed
    /// before (one query per batch) and records the handled ones before their commit.
    InboxGuarded,
    /// A handler taking `Tx` on storage whose units of work have no savepoints: each
    /// attempt in a unit of work of its own, with its inbox marker and follow-ups.
    OwnUnit,
    /// A handler taking `Tx` on storage with savepoints: the first attempts of consecutive
    /// events share one unit of work, each in a savepoint (group commit); retries, and a
    /// storage that turns out to refuse savepoints, go the [`OwnUnit`](Self::OwnUnit) way.
    SharedUnit,
    /// The member's consumer handles its batches in a broker transaction: its follow-ups
    /// go out in that transaction, which also takes the inbox's place (an aborted batch
    /// is handled again, so nothing is marked processed).
    BrokerTransaction,
}

impl Delivery {
    /// The path of `route`'s events on a bus with `storage` or not, in a member whose
    /// consumer publishes in a broker transaction or not.
    fn decide(route: &GroupRoute, storage: bool, broker_transaction: bool) -> Delivery {
        match (route.route.transactional(), storage, broker_transaction) {
            // `start()` refuses `Tx` in a broker transaction; were it let through, its
            // unit of work would still hold its marker and follow-ups.
            (true, true, _) if broker_transaction => Delivery::OwnUnit,
            (true, true, _) => Delivery::SharedUnit,
            // `start()` refuses `Tx` without storage; the handler would be told so.
            (true, false, false) => Delivery::Plain,
            (_, _, true) => Delivery::BrokerTransaction,
            (false, true, false) => Delivery::InboxGuarded,
            (false, false, false) => Delivery::Plain,
        }
    }

    /// Whether attempts run outside any unit of work or broker transaction.
    pub(super) fn outside_units(self) -> bool {
        matches!(self, Delivery::Plain | Delivery::InboxGuarded)
    }

    /// Whether each attempt runs in a unit of work holding its inbox marker.
    pub(super) fn in_unit_of_work(self) -> bool {
        matches!(self, Delivery::OwnUnit | Delivery::SharedUnit)
    }
}

/// An event's handler in this member, with the path its events take.
#[derive(Clone, Copy)]
pub(super) struct Routed<'a> {
    pub(super) route: &'a GroupRoute,
    pub(super) delivery: Delivery,
}

/// A record of a lane, with its route and whether the inbox skips it.
pub(super) type Queued<'a> = (&'a Record, Option<Routed<'a>>, bool);

/// One member of a consumer group: the bus, the group, the consumer's transactional sink
/// and the delivery decision of each of the group's routes.
pub(super) struct Member {
    pub(super) shared: Arc<Shared>,
    pub(super) group: Arc<Group>,
    /// The consumer's sink when it handles its batches in a broker transaction: the
    /// follow-ups and the transport's copy of dead letters go through it.
    pub(super) sink: Option<Arc<dyn TransactionalSink>>,
    /// What the member's handler contexts share.
    pub(super) scope: Arc<Scope>,
    /// By event name, in the order of the group's routes of that name.
    deliveries: HashMap<&'static str, Vec<Delivery>>,
}

impl Member {
    pub(super) fn new(
        shared: Arc<Shared>,
        group: Arc<Group>,
        sink: Option<Arc<dyn TransactionalSink>>,
    ) -> Self {
        let storage = shared.storage.is_some();
        let deliveries = group
            .routes
            .iter()
            .map(|(name, versions)| {
                let decided = versions
                    .iter()
                    .map(|route| Delivery::decide(route, storage, sink.is_some()))
                    .collect();
                (*name, decided)
            })
            .collect();
        let scope = Arc::new(Scope {
            group: group.name.clone(),
            outgoing: shared.outgoing.clone(),
        });
        Member {
            shared,
            group,
            sink,
            scope,
            deliveries,
        }
    }

    /// The handler for `envelope` (see [`Group::route_at`]) and its path; `None` if the group
    /// has none for its event.
    pub(super) fn route(&self, envelope: &Envelope) -> Option<Routed<'_>> {
        let (index, route) = self.group.route_at(envelope)?;
        let delivery = self.deliveries[&*envelope.name][index];
        Some(Routed { route, delivery })
    }

    /// Hands a dead letter's copy to the transport: into the consumer's transaction, if it
    /// has one, else through the bus's transport.
    pub(super) async fn hand_dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        match &self.sink {
            Some(sink) => sink.dead_letter(letter).await,
            None => self.shared.transport.dead_letter(letter).await,
        }
    }
}

/// What handling one partition's records of a batch needs beside its [`Member`]: the
/// shutdown signal, and the keys parked in a group with sequenced dead letters.
pub(super) struct Lane<'a> {
    pub(super) member: &'a Member,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) parking: Option<&'a Parking>,
}

impl Lane<'_> {
    /// Whether shutdown came, checked before every record. The shutdown value is only
    /// ever set once, to `true`, and a lane that saw it stops; so while the channel's
    /// version is the one this receiver saw, nothing changed. That is one load, where
    /// `borrow` takes the channel's read lock, a write to a cache line that every member
    /// shares.
    pub(super) fn stopping(&self) -> bool {
        !matches!(self.shutdown.has_changed(), Ok(false)) && *self.shutdown.borrow()
    }
}
