//! Event-sourced aggregates: loading by replay, saving with optimistic concurrency, and
//! many writers racing on one stream, on the in-memory store and on SQLite.

use std::collections::BTreeSet;
use std::sync::Arc;

use eventflow::store::{EventStore, SqliteStore};
use eventflow::{subscribe, Aggregate, Error, Event, EventBus, InProcess, MemoryStore, State, Storage};
use eventflow_tests::{remove_db, temp_db, within};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "cart.event", topic = "carts")]
enum CartEvent {
    ItemAdded {
        #[event(key)]
        cart: String,
        item: String,
        by: u32,
    },
    CheckedOut {
        #[event(key)]
        cart: String,
    },
}

#[derive(Default, Debug)]
struct Cart {
    items: Vec<String>,
    checked_out: bool,
}

impl Aggregate for Cart {
    type Event = CartEvent;
    const KIND: &'static str = "cart";

    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::ItemAdded { item, .. } => self.items.push(item.clone()),
            CartEvent::CheckedOut { .. } => self.checked_out = true,
        }
    }
}

fn added(cart: &str, item: &str, by: u32) -> CartEvent {
    CartEvent::ItemAdded {
        cart: cart.into(),
        item: item.into(),
        by,
    }
}

#[tokio::test]
async fn an_aggregate_is_rebuilt_from_the_events_it_saved() {
    let bus = EventBus::builder()
        .storage(MemoryStore::new())
        .start()
        .await
        .unwrap();
    let carts = bus.repository::<Cart>().unwrap();

    let mut cart = carts.load("c-1").await.unwrap();
    assert_eq!(
        (cart.version(), cart.items.len()),
        (0, 0),
        "a new aggregate is the default"
    );
    cart.record(added("c-1", "book", 0));
    cart.record(added("c-1", "pen", 0));
    assert_eq!(cart.items, ["book", "pen"], "recording applies at once");
    assert_eq!(carts.save(&mut cart).await.unwrap(), 2);
    assert!(cart.pending().is_empty());

    cart.record(CartEvent::CheckedOut { cart: "c-1".into() });
    assert_eq!(carts.save(&mut cart).await.unwrap(), 3);

    let reloaded = carts.load("c-1").await.unwrap();
    assert_eq!(reloaded.items, ["book", "pen"]);
    assert!(reloaded.checked_out);
    assert_eq!((reloaded.version(), reloaded.stream()), (3, "cart-c-1"));
    bus.shutdown().await;
}

#[tokio::test]
async fn saving_from_a_stale_version_is_a_conflict_and_writes_nothing() {
    let store = MemoryStore::new();
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();
    let carts = bus.repository::<Cart>().unwrap();
    let mut seed = carts.load("c-2").await.unwrap();
    seed.record(added("c-2", "book", 0));
    carts.save(&mut seed).await.unwrap();

    let mut first = carts.load("c-2").await.unwrap();
    let mut second = carts.load("c-2").await.unwrap();
    first.record(added("c-2", "pen", 1));
    second.record(added("c-2", "lamp", 2));
    carts.save(&mut first).await.unwrap();
    let error = carts.save(&mut second).await.unwrap_err();
    assert!(
        matches!(&error, Error::Conflict { stream, actual: 2, .. } if stream == "cart-c-2"),
        "{error:?}"
    );
    assert_eq!(
        second.pending().len(),
        1,
        "a failed save must keep the recorded events"
    );

    let stored = store.read_stream("cart-c-2", 1).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(carts.load("c-2").await.unwrap().items, ["book", "pen"]);
    bus.shutdown().await;
}

#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<Vec<CartEvent>>>);

#[subscribe(group = "cart-audit")]
async fn audit(event: CartEvent, State(seen): State<Seen>) -> Result<(), String> {
    seen.0.lock().unwrap().push(event);
    Ok(())
}

#[tokio::test]
async fn saved_events_are_published_with_the_unit_of_work() {
    let transport = InProcess::new();
    let seen = Seen::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(MemoryStore::new())
        .state(seen.clone())
        .handler(audit)
        .start()
        .await
        .unwrap();
    let carts = bus.repository::<Cart>().unwrap();

    let mut cart = carts.load("c-3").await.unwrap();
    cart.record(added("c-3", "book", 0));
    let mut work = bus.begin().await.unwrap();
    work.save(&mut cart).await.unwrap();
    drop(work);
    assert_eq!(
        carts.load("c-3").await.unwrap().version(),
        0,
        "a dropped unit of work saved the aggregate"
    );

    let mut cart = carts.load("c-3").await.unwrap();
    cart.record(added("c-3", "book", 0));
    let mut work = bus.begin().await.unwrap();
    work.save(&mut cart).await.unwrap();
    work.commit().await.unwrap();
    within(5, "the audit", async {
        while seen.0.lock().unwrap().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    within(5, "the group to finish", transport.wait_idle()).await;
    assert_eq!(*seen.0.lock().unwrap(), [added("c-3", "book", 0)]);
    bus.shutdown().await;
}

#[tokio::test]
async fn a_repository_needs_storage() {
    let bus = EventBus::builder().start().await.unwrap();
    let error = bus.repository::<Cart>().unwrap_err();
    assert!(error.to_string().contains(".storage(store)"), "{error}");
}

/// Many writers add to one cart at once, each reloading and retrying after a conflict.
/// Every append either lands at the next version or is a conflict; none is lost, none
/// overwrites another.
async fn writers_race_on_one_stream(bus: EventBus, storage: Arc<dyn Storage>) {
    const WRITERS: u32 = 32;
    const ITEMS: u32 = 10;
    let carts = bus.repository::<Cart>().unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let carts = carts.clone();
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                for n in 0..ITEMS {
                    loop {
                        let mut cart = carts.load("race").await.unwrap();
                        cart.record(added("race", &format!("{writer}/{n}"), writer));
                        match carts.save(&mut cart).await {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => conflicts += 1,
                            Err(other) => panic!("writer {writer}: {other}"),
                        }
                        tokio::task::yield_now().await;
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += within(120, "the writers", task).await.unwrap();
    }

    let stored = storage.read_stream("cart-race", 1).await.unwrap();
    let total = (WRITERS * ITEMS) as u64;
    assert_eq!(stored.len() as u64, total, "an event was lost or doubled");
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "versions have gaps or repeats"
    );
    let items: BTreeSet<String> = carts.load("race").await.unwrap().items.iter().cloned().collect();
    assert_eq!(
        items.len() as u64,
        total,
        "an item is missing or was written twice"
    );
    assert!(
        conflicts > 0,
        "{WRITERS} racing writers never conflicted: the race did not happen"
    );
    println!("{total} appends by {WRITERS} writers, {conflicts} conflicts detected and retried");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_memory_lose_nothing() {
    let store = MemoryStore::new();
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();
    writers_race_on_one_stream(bus, Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_sqlite_lose_nothing() {
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();
    writers_race_on_one_stream(bus, Arc::new(store)).await;
    remove_db(&path);
}
