//! What the upcasting tests share: `order.placed` in three versions (typed upcasters,
//! v1 → v2 → v3), `order.item_added` with JSON upcasters, `note.added` v2 without any, and
//! envelopes as an older producer wrote them.

use eventflow::{Envelope, Event};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `order.placed` v1, as the first release wrote it: whole euros.
#[derive(Serialize, Deserialize)]
pub struct OrderPlacedV1 {
    pub order_id: String,
    pub amount: u64,
}

/// v2: cents.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "order.placed", version = 2, topic = "orders", upcast(from = OrderPlacedV1))]
pub struct OrderPlacedV2 {
    #[event(key)]
    pub order_id: String,
    pub cents: u64,
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
pub struct OrderPlaced {
    #[event(key)]
    pub order_id: String,
    pub cents: u64,
    pub currency: String,
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
pub struct ItemAdded {
    #[event(key)]
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
}

pub fn quantity_of_one(mut v1: Value) -> Result<Value, String> {
    v1["quantity"] = json!(1);
    Ok(v1)
}

pub fn item_is_sku(mut v2: Value) -> Result<Value, String> {
    let fields = v2.as_object_mut().ok_or("a v2 item_added is not an object")?;
    let item = fields.remove("item").ok_or("a v2 item_added without `item`")?;
    fields.insert("sku".into(), item);
    Ok(v2)
}

/// A v2 event with no upcaster: the aggregate below must not read a v1 as v2.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "note.added", version = 2, topic = "notes")]
pub struct NoteAdded {
    pub text: String,
    #[serde(default)]
    pub by: String,
}

/// An envelope as an older producer wrote it.
pub fn written(name: &'static str, version: u32, payload: Value) -> Envelope {
    let mut envelope = Envelope::new(name, version, "orders", "application/json", payload.to_string());
    envelope.key = payload["order_id"].as_str().map(str::to_owned);
    envelope
}
