use eventflow::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize)]
struct OrderPaidV1 {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 2, upcast(from = OrderPaidV1))]
struct OrderPaidV2 {
    order_id: String,
    total_cents: u64,
}

impl From<OrderPaidV1> for OrderPaidV2 {
    fn from(v1: OrderPaidV1) -> Self {
        OrderPaidV2 { order_id: v1.order_id, total_cents: 0 }
    }
}

fn currency(mut v3: Value) -> Result<Value, String> {
    v3["currency"] = "EUR".into();
    Ok(v3)
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 4, upcast(v3 = currency, from = OrderPaidV2))]
struct OrderPaid {
    order_id: String,
    total_cents: u64,
    currency: String,
}

impl From<OrderPaidV2> for OrderPaid {
    fn from(v2: OrderPaidV2) -> Self {
        OrderPaid { order_id: v2.order_id, total_cents: v2.total_cents, currency: "EUR".into() }
    }
}

fn main() {
    let v1 = eventflow::Envelope::new("order.paid", 1, "order.paid", "application/json", r#"{"order_id":"a"}"#);
    let paid: OrderPaid = eventflow::decode(&v1).unwrap();
    assert_eq!(paid.currency, "EUR");
}
