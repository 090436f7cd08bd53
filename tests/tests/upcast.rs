//! Upcasting: events of older versions read as the current type wherever eventflow decodes
//! them (repository loads from SQLite, handlers, dead-letter replays, `eventflow::decode`),
//! through typed (`From`) and JSON upcasters chained v1 → v2 → v3; versions that cannot be
//! read are clear errors, never silent decodes.

use std::sync::{Arc, Mutex};

use eventflow::store::{EventStore, ExpectedVersion, SqliteStore};
use eventflow::upcast::UpcastError;
use eventflow::{
    subscribe, Aggregate, Envelope, Error, Event, EventBus, EventSet, InProcess, State, Storage,
};
use eventflow_tests::{remove_db, temp_db, within};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `order.placed` v1, as the first release wrote it: whole euros.
#[derive(Serialize, Deserialize)]
struct OrderPlacedV1 {
    order_id: String,
    amount: u64,
}

/// v2: cents.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "order.placed", version = 2, topic = "orders", upcast(from = OrderPlacedV1))]
struct OrderPlacedV2 {
    #[event(key)]
    order_id: String,
    cents: u64,
}

impl From<OrderPlacedV1> for OrderPlacedV2 {
    fn from(v1: OrderPlacedV1) -> Self {
        OrderPlacedV2 {
            order_id: v1.order_id,
            cents: v1.amount * 100,
        }
    }
}

/// v3, the current one: a currency. Reads v1 through v2's own upcaster.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "order.placed", version = 3, topic = "orders", upcast(from = OrderPlacedV2))]
struct OrderPlaced {
    #[event(key)]
    order_id: String,
    cents: u64,
    currency: String,
}

impl From<OrderPlacedV2> for OrderPlaced {
    fn from(v2: OrderPlacedV2) -> Self {
        OrderPlaced {
            order_id: v2.order_id,
            cents: v2.cents,
            currency: "EUR".into(),
        }
    }
}

/// `order.item_added` v3, whose old types are gone: v1 had no quantity, v2 called the sku
/// `item`. Upcast on the JSON.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(
    name = "order.item_added",
    version = 3,
    topic = "orders",
    upcast(v1 = quantity_of_one, v2 = item_is_sku)
)]
struct ItemAdded {
    #[event(key)]
    order_id: String,
    sku: String,
    quantity: u32,
}

fn quantity_of_one(mut v1: Value) -> Result<Value, String> {
    v1["quantity"] = json!(1);
    Ok(v1)
}

fn item_is_sku(mut v2: Value) -> Result<Value, String> {
    let fields = v2.as_object_mut().ok_or("a v2 item_added is not an object")?;
    let item = fields.remove("item").ok_or("a v2 item_added without `item`")?;
    fields.insert("sku".into(), item);
    Ok(v2)
}

#[derive(EventSet, Debug, PartialEq, Clone)]
enum OrderEvent {
    Placed(OrderPlaced),
    ItemAdded(ItemAdded),
}

#[derive(Default, Debug)]
struct Order {
    cents: u64,
    currency: String,
    items: Vec<(String, u32)>,
}

impl Aggregate for Order {
    type Event = OrderEvent;
    const KIND: &'static str = "order";

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed(placed) => {
                self.cents = placed.cents;
                self.currency = placed.currency.clone();
            }
            OrderEvent::ItemAdded(item) => self.items.push((item.sku.clone(), item.quantity)),
        }
    }
}

/// An envelope as an older producer wrote it.
fn written(name: &'static str, version: u32, payload: Value) -> Envelope {
    let mut envelope = Envelope::new(name, version, "orders", "application/json", payload.to_string());
    envelope.key = payload["order_id"].as_str().map(str::to_owned);
    envelope
}

async fn write_stream(store: &SqliteStore, stream: &str, events: &[Envelope]) {
    let mut tx = store.begin().await.unwrap();
    tx.append(stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn old_events_in_sqlite_load_as_the_current_version() {
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    write_stream(
        &store,
        "order-o-1",
        &[
            written("order.placed", 1, json!({"order_id": "o-1", "amount": 12})),
            written("order.item_added", 1, json!({"order_id": "o-1", "item": "pen"})),
            written(
                "order.item_added",
                2,
                json!({"order_id": "o-1", "item": "book", "quantity": 2}),
            ),
            written(
                "order.item_added",
                3,
                json!({"order_id": "o-1", "sku": "lamp", "quantity": 3}),
            ),
        ],
    )
    .await;
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();
    let orders = bus.repository::<Order>().unwrap();

    let mut order = orders.load("o-1").await.unwrap();
    assert_eq!(
        (order.cents, order.currency.as_str()),
        (1200, "EUR"),
        "v1 (euros) went through v2 (cents) to v3 (currency)"
    );
    assert_eq!(
        order.items,
        [
            ("pen".to_owned(), 1),
            ("book".to_owned(), 2),
            ("lamp".to_owned(), 3)
        ],
        "JSON upcasters: v1 got a quantity, v2's item became the sku"
    );
    assert_eq!(order.version(), 4);

    order.record(OrderEvent::ItemAdded(ItemAdded {
        order_id: "o-1".into(),
        sku: "ink".into(),
        quantity: 5,
    }));
    orders.save(&mut order).await.unwrap();
    let stored = store.read_stream("order-o-1", 5).await.unwrap();
    assert_eq!(
        (&*stored[0].envelope.name, stored[0].envelope.version),
        ("order.item_added", 3),
        "new events are written at the current version"
    );
    assert_eq!(orders.load("o-1").await.unwrap().items.len(), 4);
    bus.shutdown().await;
    remove_db(&path);
}

/// A v2 event with no upcaster: the aggregate below must not read a v1 as v2.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "note.added", version = 2, topic = "notes")]
struct NoteAdded {
    text: String,
    #[serde(default)]
    by: String,
}

#[derive(Default, Debug)]
struct Notebook;

impl Aggregate for Notebook {
    type Event = NoteAdded;
    const KIND: &'static str = "notebook";

    fn apply(&mut self, _event: &NoteAdded) {}
}

#[tokio::test]
async fn a_version_the_type_cannot_read_fails_the_load() {
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let newer = written("order.item_added", 4, json!({"order_id": "o-2", "sku": "pen"}));
    write_stream(&store, "order-o-2", &[newer]).await;
    let broken = written("order.item_added", 2, json!({"order_id": "o-3", "quantity": 1}));
    write_stream(&store, "order-o-3", &[broken]).await;
    let stranger = written("order.cancelled", 1, json!({"order_id": "o-4"}));
    write_stream(&store, "order-o-4", &[stranger]).await;
    // `by` defaults, so a v1 payload would decode as v2 without a word: it must not.
    let old_note = Envelope::new("note.added", 1, "notes", "application/json", r#"{"text":"hi"}"#);
    write_stream(&store, "notebook-n-1", &[old_note]).await;
    let bus = EventBus::builder().storage(store.clone()).start().await.unwrap();

    let orders = bus.repository::<Order>().unwrap();
    let error = orders.load("o-2").await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Upcast {
                version: 4,
                source: UpcastError::Newer {
                    found: 4,
                    known: 3,
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("newer than v3"), "{message}");
    assert!(message.contains("deploy the consumers"), "{message}");

    let error = orders.load("o-3").await.unwrap_err();
    assert!(
        matches!(&error, Error::Upcast { source: UpcastError::Failed { from: 2, reason, .. }, .. } if reason.contains("without `item`")),
        "{error:?}"
    );

    let error = orders.load("o-4").await.unwrap_err();
    assert!(
        matches!(&error, Error::Upcast { source: UpcastError::NotInSet { found, .. }, .. } if found == "order.cancelled"),
        "{error:?}"
    );
    assert!(error.to_string().contains("add a variant"), "{error}");

    let error = bus
        .repository::<Notebook>()
        .unwrap()
        .load("n-1")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Upcast {
                source: UpcastError::NoUpcaster { from: 1, to: 2, .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("#[event(upcast(v1 = function))]"),
        "{error}"
    );
    bus.shutdown().await;
    remove_db(&path);
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    fn entries(&self) -> Vec<String> {
        let mut entries = self.0.lock().unwrap().clone();
        entries.sort();
        entries
    }
}

#[subscribe(group = "billing")]
async fn bill(event: OrderPlaced, State(log): State<Log>) -> Result<(), String> {
    log.push(format!("bill {event:?}"));
    Ok(())
}

#[subscribe(group = "billing")]
async fn pick(event: ItemAdded, State(log): State<Log>) -> Result<(), String> {
    log.push(format!("pick {event:?}"));
    Ok(())
}

#[tokio::test]
async fn a_v3_handler_receives_events_of_an_old_producer() {
    let transport = InProcess::new();
    let log = Log::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(log.clone())
        .handler(bill)
        .handler(pick)
        .start()
        .await
        .unwrap();

    let old_producer = [
        written("order.placed", 1, json!({"order_id": "o-9", "amount": 5})),
        written("order.item_added", 1, json!({"order_id": "o-9", "item": "pen"})),
    ];
    for envelope in old_producer {
        bus.publish_envelope(envelope).await.unwrap();
    }
    within(10, "the events to be handled", transport.wait_idle()).await;

    let placed = OrderPlaced {
        order_id: "o-9".into(),
        cents: 500,
        currency: "EUR".into(),
    };
    let added = ItemAdded {
        order_id: "o-9".into(),
        sku: "pen".into(),
        quantity: 1,
    };
    assert_eq!(
        log.entries(),
        [format!("bill {placed:?}"), format!("pick {added:?}")]
    );
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test]
async fn a_newer_version_is_dead_lettered_with_a_clear_reason() {
    let transport = InProcess::new();
    let log = Log::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(log.clone())
        .handler(bill)
        .start()
        .await
        .unwrap();

    let newer = written(
        "order.placed",
        4,
        json!({"order_id": "o-7", "cents": 1, "currency": "EUR", "vat": 0}),
    );
    let id = bus.publish_envelope(newer).await.unwrap();
    within(10, "the event to be dead-lettered", transport.wait_idle()).await;

    assert!(log.entries().is_empty(), "a newer version reached the handler");
    let letters = bus.dead_letters(Some("billing")).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].envelope.id, letters[0].attempts), (id, 0));
    let reason = &letters[0].error;
    assert!(reason.contains("`order.placed` v4"), "{reason}");
    assert!(reason.contains("expects v3"), "{reason}");
    assert!(reason.contains("deploy the consumers that know v4"), "{reason}");
    bus.shutdown().await;
}

/// The same `note.added` v2 once the upcaster is deployed.
mod deployed {
    use eventflow::{subscribe, Event, State};
    use serde::{Deserialize, Serialize};
    use serde_json::{json, Value};

    use super::Log;

    #[derive(Event, Serialize, Deserialize, Debug)]
    #[event(name = "note.added", version = 2, topic = "notes", upcast(v1 = signed_by_nobody))]
    pub struct NoteAdded {
        pub text: String,
        pub by: String,
    }

    fn signed_by_nobody(mut v1: Value) -> Result<Value, String> {
        v1["by"] = json!("nobody");
        Ok(v1)
    }

    #[subscribe(group = "notes")]
    pub async fn file_note(note: NoteAdded, State(log): State<Log>) -> Result<(), String> {
        log.push(format!("{} by {}", note.text, note.by));
        Ok(())
    }
}

#[subscribe(group = "notes")]
async fn file_note(note: NoteAdded, State(log): State<Log>) -> Result<(), String> {
    log.push(format!("{} by {}", note.text, note.by));
    Ok(())
}

#[tokio::test]
async fn a_dead_letter_replays_once_the_upcaster_is_deployed() {
    let path = temp_db();
    let log = Log::default();
    let transport = InProcess::new();
    let before = EventBus::builder()
        .transport(transport.clone())
        .storage(SqliteStore::open(&path).await.unwrap())
        .state(log.clone())
        .handler(file_note)
        .start()
        .await
        .unwrap();
    let old_note = Envelope::new("note.added", 1, "notes", "application/json", r#"{"text":"hi"}"#);
    before.publish_envelope(old_note).await.unwrap();
    within(10, "the note to be dead-lettered", transport.wait_idle()).await;
    let letters = before.dead_letters(Some("notes")).await.unwrap();
    assert_eq!(letters.len(), 1, "a v1 note without upcaster must not be handled");
    assert!(
        letters[0].error.contains("no upcaster covers v1"),
        "{}",
        letters[0].error
    );
    assert!(log.entries().is_empty(), "{:?}", log.entries());
    before.shutdown().await;

    let after = EventBus::builder()
        .storage(SqliteStore::open(&path).await.unwrap())
        .state(log.clone())
        .handler(deployed::file_note)
        .start()
        .await
        .unwrap();
    let letter = after.dead_letters(Some("notes")).await.unwrap().remove(0);
    after.replay_dead_letter(letter.id).await.unwrap();
    assert_eq!(log.entries(), ["hi by nobody"]);
    assert!(after.dead_letters(None).await.unwrap().is_empty());
    after.shutdown().await;
    remove_db(&path);
}

#[subscribe(group = "audit")]
async fn audit_v2(event: OrderPlacedV2, State(log): State<Log>) -> Result<(), String> {
    log.push(format!("v2 handler: {} {}", event.order_id, event.cents));
    Ok(())
}

#[subscribe(group = "audit")]
async fn audit_v3(event: OrderPlaced, State(log): State<Log>) -> Result<(), String> {
    log.push(format!(
        "v3 handler: {} {} {}",
        event.order_id, event.cents, event.currency
    ));
    Ok(())
}

#[tokio::test]
async fn handlers_of_two_versions_share_a_group_during_a_rollout() {
    let transport = InProcess::new();
    let log = Log::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(log.clone())
        .handler(audit_v2)
        .handler(audit_v3)
        .start()
        .await
        .expect("a group may hold a handler of each version of an event");

    bus.publish_envelope(written("order.placed", 1, json!({"order_id": "a", "amount": 1})))
        .await
        .unwrap();
    bus.publish(&OrderPlacedV2 {
        order_id: "b".into(),
        cents: 2,
    })
    .await
    .unwrap();
    bus.publish(&OrderPlaced {
        order_id: "c".into(),
        cents: 3,
        currency: "USD".into(),
    })
    .await
    .unwrap();
    within(10, "the events to be handled", transport.wait_idle()).await;

    assert_eq!(
        log.entries(),
        ["v2 handler: a 100", "v2 handler: b 2", "v3 handler: c 3 USD"],
        "each event goes to the handler of its version, a v1 to the oldest that reads it"
    );
    bus.shutdown().await;
}

#[test]
fn decode_reads_old_versions_and_refuses_other_events() {
    let v1 = written("order.placed", 1, json!({"order_id": "o-5", "amount": 3}));
    let placed: OrderPlaced = eventflow::decode(&v1).unwrap();
    assert_eq!(
        placed,
        OrderPlaced {
            order_id: "o-5".into(),
            cents: 300,
            currency: "EUR".into()
        }
    );
    let v2: OrderPlacedV2 = eventflow::decode(&v1).unwrap();
    assert_eq!(v2.cents, 300, "an older type reads what is older than it");

    let error = eventflow::decode::<OrderPlacedV2>(&written("order.placed", 3, json!({"order_id": "o"})))
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Upcast {
                source: UpcastError::Newer {
                    found: 3,
                    known: 2,
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );

    let item = written(
        "order.item_added",
        3,
        json!({"order_id": "o-5", "sku": "pen", "quantity": 1}),
    );
    let error = eventflow::decode::<OrderPlaced>(&item).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Upcast {
                source: UpcastError::OtherEvent { .. },
                ..
            }
        ),
        "{error:?}"
    );
    let set = OrderEvent::decode(&eventflow::codec::Json, &item).unwrap();
    assert!(
        matches!(set, OrderEvent::ItemAdded(ItemAdded { quantity: 1, .. })),
        "{set:?}"
    );

    let bad_v1 = written("order.placed", 1, json!({"order_id": "o-6"}));
    let error = eventflow::decode::<OrderPlaced>(&bad_v1).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Upcast {
                source: UpcastError::Decode { version: 1, .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("missing field `amount`"), "{error}");
}

/// An upcaster with a bug.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "note.moved", version = 2, topic = "notes", upcast(v1 = buggy))]
struct NoteMoved {
    to: String,
}

fn buggy(v1: Value) -> Result<Value, String> {
    let to = v1["to"].as_str().expect("every v1 has a `to`");
    Ok(json!({ "to": to }))
}

#[subscribe(group = "notes")]
async fn move_note(note: NoteMoved, State(log): State<Log>) -> Result<(), String> {
    log.push(format!("moved to {}", note.to));
    Ok(())
}

#[tokio::test]
async fn a_panicking_upcaster_dead_letters_its_event_and_the_group_goes_on() {
    let transport = InProcess::new();
    let log = Log::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(log.clone())
        .handler(move_note)
        .start()
        .await
        .unwrap();
    let bad = Envelope::new("note.moved", 1, "notes", "application/json", r#"{"from":"a"}"#);
    let good = Envelope::new("note.moved", 1, "notes", "application/json", r#"{"to":"b"}"#);
    bus.publish_envelope(bad).await.unwrap();
    bus.publish_envelope(good).await.unwrap();
    within(10, "the notes to be handled", transport.wait_idle()).await;

    assert_eq!(
        log.entries(),
        ["moved to b"],
        "the event after the bad one was handled"
    );
    let letters = bus.dead_letters(Some("notes")).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .error
            .contains("the upcaster of `note.moved` from v1 failed: it panicked: every v1 has a `to`"),
        "{}",
        letters[0].error
    );
    bus.shutdown().await;
}
