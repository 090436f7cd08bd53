use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::event_bus::{EventBus, Running};
use super::route::{Route, Typed};
use super::shared::{Group, GroupRoute, Shared};
use super::{inbox, member};
use crate::codec::{Codec, Json};
use crate::handler::Handler;
use crate::outgoing::Outgoing;
use crate::projection::runner::Starter;
use crate::projection::Projection;
use crate::relay::Relay;
use crate::retry::Backoff;
use crate::state::StateMap;
use crate::store::{DeadLetterStore, MemoryStore, Storage};
use crate::transport::{Consumer, InProcess, Transport};
use crate::{Error, RelaySettings};

/// Configures and starts an [`EventBus`].
///
/// ```
/// # use eventflow::{EventBus, InProcess};
/// # async fn run() -> Result<(), eventflow::Error> {
/// let bus = EventBus::builder()
///     .transport(InProcess::new())
///     .retries(5)
///     .start()
///     .await?;
/// # bus.shutdown().await; Ok(()) }
/// ```
pub struct EventBusBuilder {
    transport: Option<Arc<dyn Transport>>,
    codec: Arc<dyn Codec>,
    state: StateMap,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    storage: Option<Arc<dyn Storage>>,
    backoff: Backoff,
    retries: u32,
    workers: usize,
    group_workers: HashMap<String, usize>,
    sequenced: HashSet<String>,
    routes: Vec<Arc<dyn Route>>,
    projections: Vec<Starter>,
    inbox_retention: Duration,
    relay: RelaySettings,
    shutdown_timeout: Duration,
}

impl EventBus {
    /// Starts configuring a bus.
    pub fn builder() -> EventBusBuilder {
        EventBusBuilder::new()
    }
}

impl EventBusBuilder {
    fn new() -> Self {
        EventBusBuilder {
            transport: None,
            codec: Arc::new(Json),
            state: StateMap::default(),
            dead_letters: None,
            storage: None,
            backoff: Backoff::default(),
            retries: 3,
            workers: 1,
            group_workers: HashMap::new(),
            sequenced: HashSet::new(),
            routes: Vec::new(),
            projections: Vec::new(),
            inbox_retention: inbox::DEFAULT_RETENTION,
            relay: RelaySettings::default(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// Registers a handler, usually a `#[subscribe]` function by name.
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        self.routes.push(Typed::erase(handler));
        self
    }

    /// Registers a [`Projection`]: once the bus starts, it catches up from its checkpoint
    /// and follows new commits. Needs the bus's [`storage`](Self::storage); its handle is
    /// [`EventBus::projection`].
    pub fn projection<P: Projection>(mut self, projection: P) -> Self {
        self.projections.push(Starter::new(projection));
        self
    }

    /// Registers every `#[subscribe]` function linked into the program.
    ///
    /// A handler in a module that nothing in the program references may be left out by the
    /// linker and so not be found; register such handlers with [`handler`](Self::handler).
    pub fn discovered_handlers(mut self) -> Self {
        for registration in inventory::iter::<Registration> {
            self = (registration.register)(self);
        }
        self
    }

    /// The transport events travel on. Default: a new [`InProcess`] transport.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// The codec payloads are encoded with. Default: [`Json`].
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Adds application state that handlers take as [`State<T>`](crate::State).
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Where events that exhausted their retries go. Default: the
    /// [`storage`](Self::storage) if there is one, else memory.
    pub fn dead_letters(mut self, store: impl DeadLetterStore) -> Self {
        self.dead_letters = Some(Arc::new(store));
        self
    }

    /// The storage for units of work ([`EventBus::begin`]), the outbox, the inbox and dead
    /// letters. With it, the bus runs an outbox [`Relay`] to its transport, and every
    /// handler invocation is guarded by the inbox: an event a group already processed is
    /// skipped, and a processed-event marker is recorded after each success (at least
    /// once, duplicates suppressed).
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// How the outbox relay claims and delivers: its lease, batch size and poll interval.
    /// Default: [`RelaySettings::default`] (10 s, 512, 500 ms). Only used with a
    /// [`storage`](Self::storage).
    pub fn relay(mut self, settings: RelaySettings) -> Self {
        self.relay = settings;
        self
    }

    /// How long a graceful [`EventBus::shutdown`] waits for the groups to handle what was
    /// published and committed before it stops them anyway. Default 30 s. What is left
    /// then stays in the outbox or the broker.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long the inbox remembers that a group processed an event. Default: 7 days.
    ///
    /// A copy of an event that arrives later than this is handled again, so keep it well
    /// above the longest time a copy can take: a relay or consumer that was down and
    /// restarted redelivers what it had not recorded as done. The bus prunes older markers
    /// in the background ([`InboxStore::prune_inbox`](crate::store::InboxStore::prune_inbox)); `Duration::MAX` keeps them forever.
    pub fn inbox_retention(mut self, retention: Duration) -> Self {
        self.inbox_retention = retention;
        self
    }

    /// The wait between retries. Default: 100 ms doubling up to 30 s, with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The retry budget of handlers that do not set their own. Default 3.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// How many group members each group runs on this bus. Default 1; each member handles
    /// its partitions concurrently, so more are needed only to share the work of a topic
    /// with few partitions.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// How many members one group runs on this bus.
    pub fn group_workers(mut self, group: impl Into<String>, workers: usize) -> Self {
        self.group_workers.insert(group.into(), workers.max(1));
        self
    }

    /// Makes `group`'s dead letters *sequenced* (Axon's sequenced dead-letter queue): once
    /// an event of key K is dead-lettered in the group, the group's later events of K are
    /// not handled ahead of it but parked behind it, as dead letters marked
    /// [`DeadLetter::PARKED_BEHIND`](crate::DeadLetter::PARKED_BEHIND); events of other
    /// keys flow on. When the letter is replayed
    /// ([`EventBus::replay_dead_letter`]) or discarded
    /// ([`EventBus::discard_dead_letter`]), the parked events are handled in order. The
    /// parked state is in the dead-letter store, so it survives a restart.
    ///
    /// Without it (the default), a dead letter does not hold up its key: later events of
    /// K are handled, possibly ahead of the dead-lettered one when it is replayed.
    ///
    /// With [`Relay::DEAD_LETTER_GROUP`] (`"eventflow.outbox"`), the outbox relay does the
    /// same with events the transport refused for good: the later outbox entries of the
    /// key are parked instead of published (a batch then goes out in waves, each key once
    /// per wave).
    pub fn sequenced_dead_letters(mut self, group: impl Into<String>) -> Self {
        self.sequenced.insert(group.into());
        self
    }

    /// Checks the configuration, joins every group to the transport and starts handling.
    ///
    /// The checks, every one made before anything runs (the configuration checks are
    /// collected into one [`Error::Config`] that lists every problem):
    ///
    /// - each handler's extractors can be served: a [`State<T>`](crate::State) it takes was
    ///   added with [`state`](Self::state) (the error names the handler and the type), and
    ///   no extractor of your own refuses ([`FromContext::check`](crate::FromContext::check));
    /// - a handler that takes [`Tx`](crate::Tx) has a [`storage`](Self::storage) to open
    ///   its transaction in;
    /// - no two handlers of one group handle the same event at the same version (a group
    ///   handles an event once; handlers of different versions of one event may share a
    ///   group, each event going to the handler that reads its version);
    /// - a handler that takes a typed `Tx<T>` runs on a storage whose units of work are `T`
    ///   (the error names both types; to learn it, `start` begins a unit of work and drops
    ///   it);
    /// - each projection's name is unique and the bus has a storage for it;
    /// - each member of each group joins the transport ([`Transport::subscribe`]); its
    ///   error is returned as it is (a broker that cannot be reached, say);
    /// - no group whose consumer handles its batches in a broker transaction (a Kafka
    ///   `transactional_group`) has a handler taking `Tx`: the two cannot commit together.
    ///
    /// Then it starts one task per group member, and with storage the outbox
    /// [`Relay`] (with the [`relay`](Self::relay) settings) and the inbox pruning.
    pub async fn start(mut self) -> Result<EventBus, Error> {
        if let Some(storage) = &self.storage {
            if self.routes.iter().any(|route| route.transactional()) {
                // Learns the type of the storage's units of work, for the handlers that take
                // a typed `Tx<T>`; dropped uncommitted, it leaves no trace.
                let probe = storage.begin().await?;
                self.state
                    .set_transaction_type(((*probe).type_id(), probe.type_name()));
            }
        }
        let groups = self.groups()?;
        self.check_projections()?;
        self.relay.check()?;
        let transport = self.transport.unwrap_or_else(|| Arc::new(InProcess::new()));
        let mut consumers = Vec::new();
        for group in groups.values() {
            for _ in 0..group.workers {
                let consumer = transport.subscribe(&group.name, &group.topics).await?;
                refuse_tx_in_broker_transaction(group, consumer.as_ref())?;
                consumers.push((group.clone(), consumer));
            }
        }
        let dead_letters = match (self.dead_letters, &self.storage) {
            (Some(explicit), _) => explicit,
            (None, Some(storage)) => storage.clone() as Arc<dyn DeadLetterStore>,
            (None, None) => Arc::new(MemoryStore::new()),
        };
        let relay = self.storage.as_ref().map(|storage| {
            Relay::new(storage.clone(), transport.clone())
                .dead_letters(dead_letters.clone())
                .settings(&self.relay)
                .sequenced(self.sequenced.contains(Relay::DEAD_LETTER_GROUP))
        });
        let outbox = relay.as_ref().map(Relay::progress);
        if let Some(outbox) = &outbox {
            transport.relays_from(outbox.clone());
        }
        let shared = Arc::new(Shared {
            outgoing: Arc::new(Outgoing::new(transport.clone(), self.codec, self.state)),
            transport,
            dead_letters,
            storage: self.storage,
            backoff: self.backoff,
            groups,
            outbox,
            relay_id: relay.as_ref().map(|relay| relay.id().to_owned()),
            shutdown_timeout: self.shutdown_timeout,
            draining: AtomicBool::new(false),
            projections: self
                .projections
                .iter()
                .map(|p| (p.handle.name(), p.handle.clone()))
                .collect(),
            savepoints: AtomicBool::new(true),
        });
        let (shutdown, _) = watch::channel(false);
        let mut workers: Vec<_> = consumers
            .into_iter()
            .map(|(group, consumer)| {
                tokio::spawn(member::run(shared.clone(), group, consumer, shutdown.subscribe()))
            })
            .collect();
        if let (Some(storage), Some(relay)) = (&shared.storage, relay) {
            for projection in self.projections {
                workers.push(tokio::spawn(
                    projection.run(storage.clone(), shutdown.subscribe()),
                ));
            }
            workers.push(tokio::spawn(relay.run(shutdown.subscribe())));
            if self.inbox_retention != Duration::MAX {
                let pruning = inbox::prune(storage.clone(), self.inbox_retention, shutdown.subscribe());
                workers.push(tokio::spawn(pruning));
            }
        }
        let running = Arc::new(Running {
            shutdown,
            workers: Mutex::new(workers),
        });
        Ok(EventBus { shared, running })
    }

    /// Fails unless every projection has storage to read and a name of its own.
    fn check_projections(&self) -> Result<(), Error> {
        let mut names = std::collections::HashSet::new();
        for projection in &self.projections {
            let name = projection.handle.name();
            if self.storage.is_none() {
                return Err(Error::Config(format!(
                    "projection `{name}` reads the event store, but the bus has no storage; add one with `.storage(store)`"
                )));
            }
            if !names.insert(name) {
                return Err(Error::Config(format!(
                    "two projections are named `{name}`; they would share one checkpoint, so give each its own `NAME`"
                )));
            }
        }
        Ok(())
    }

    fn groups(&self) -> Result<HashMap<Arc<str>, Arc<Group>>, Error> {
        let mut problems = Vec::new();
        let mut groups: HashMap<Arc<str>, Group> = HashMap::new();
        for route in &self.routes {
            let options = route.options();
            if let Err(reason) = route.check(&self.state) {
                problems.push(format!("handler `{}`: {reason}", options.name));
            }
            if route.transactional() && self.storage.is_none() {
                problems.push(format!(
                    "handler `{}` takes `Tx` but the bus has no storage; add one with `.storage(store)`",
                    options.name
                ));
            }
            let name: Arc<str> = options.group.as_ref().into();
            let group = groups.entry(name.clone()).or_insert_with(|| Group {
                workers: self.group_workers.get(&*name).copied().unwrap_or(self.workers),
                sequenced: self.sequenced.contains(&*name),
                name,
                routes: HashMap::new(),
                topics: Vec::new(),
            });
            let versions = group.routes.entry(route.event_name()).or_default();
            // Handlers of different versions of one event may share a group: each event
            // goes to the handler of its version (see `Group::route`), so a handler of the
            // old version keeps running while the new one rolls out.
            if let Some(other) = versions
                .iter()
                .find(|other| other.route.event_version() == route.event_version())
            {
                problems.push(format!(
                    "handlers `{}` and `{}` both handle `{}` in group `{}` (both v{}); a group \
                     handles an event once, so give one of them its own group",
                    other.route.options().name,
                    options.name,
                    route.event_name(),
                    group.name,
                    route.event_version()
                ));
                continue;
            }
            if !group.topics.contains(&route.topic()) {
                group.topics.push(route.topic());
            }
            let retries = options.retries.unwrap_or(self.retries);
            versions.push(GroupRoute {
                route: route.clone(),
                retries,
            });
            versions.sort_by_key(|route| route.route.event_version());
        }
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        Ok(groups
            .into_iter()
            .map(|(name, group)| (name, Arc::new(group)))
            .collect())
    }
}

impl std::fmt::Debug for EventBusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBusBuilder")
            .field(
                "handlers",
                &self.routes.iter().map(|r| r.options().name).collect::<Vec<_>>(),
            )
            .field("retries", &self.retries)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// A group whose consumer handles each batch in a broker transaction skips the inbox (an
/// aborted batch must be handled again), while a `Tx` handler records its marker in its own
/// database commit: after an abort the redelivery would be skipped and its follow-ups lost.
fn refuse_tx_in_broker_transaction(group: &Group, consumer: &dyn Consumer) -> Result<(), Error> {
    if consumer.transactional_sink().is_none() {
        return Ok(());
    }
    match group.all_routes().find(|route| route.route.transactional()) {
        None => Ok(()),
        Some(route) => Err(Error::Config(format!(
            "handler `{}` takes `Tx`, but group `{}` handles its events in a broker transaction: \
             the two cannot commit together; drop `Tx` from the handler (the broker transaction \
             already makes its follow-ups exactly once) or move it to a group that is not transactional",
            route.route.options().name,
            group.name
        ))),
    }
}

/// A `#[subscribe]` handler found at link time; see
/// [`EventBusBuilder::discovered_handlers`](EventBusBuilder::discovered_handlers).
#[doc(hidden)]
pub struct Registration {
    pub(crate) register: fn(EventBusBuilder) -> EventBusBuilder,
}

impl Registration {
    #[doc(hidden)]
    pub const fn new<H: Handler + Default>() -> Self {
        Registration {
            register: register::<H>,
        }
    }
}

fn register<H: Handler + Default>(builder: EventBusBuilder) -> EventBusBuilder {
    builder.handler(H::default())
}

inventory::collect!(Registration);
