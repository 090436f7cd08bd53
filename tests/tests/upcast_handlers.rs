//! Upcasting where eventflow delivers events: a handler of the current version receives
//! events of an old producer, a newer version is dead-lettered with a clear reason, a dead
//! letter replays once the upcaster is deployed, handlers of two versions share a group
//! during a rollout, and a panicking upcaster dead-letters only its event. Loads and
//! `eventflow::decode` are in `upcast.rs`.

use std::sync::{Arc, Mutex};

use eventflow::store::SqliteStore;
use eventflow::{subscribe, Envelope, Event, EventBus, InProcess, State};
use eventflow_tests::{remove_db, temp_db, within};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod upcast_common;
use upcast_common::{written, ItemAdded, NoteAdded, OrderPlaced, OrderPlacedV2};

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
