//! Upcasting where eventflow reads stored events: events of older versions load as the
//! current type from SQLite and through `eventflow::decode`, via typed (`From`) and JSON
//! upcasters chained v1 → v2 → v3; versions that cannot be read are clear errors, never
//! silent decodes. Handlers and dead letters are in `upcast_handlers.rs`.

use eventflow::store::{EventStore, ExpectedVersion, SqliteStore};
use eventflow::upcast::UpcastError;
use eventflow::{Aggregate, Envelope, Error, EventBus, EventSet, Storage};
use eventflow_tests::{remove_db, temp_db};
use serde_json::json;

mod upcast_common;
use upcast_common::{written, ItemAdded, NoteAdded, OrderPlaced, OrderPlacedV2};

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
