use eventflow::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn step(v: Value) -> Result<Value, String> {
    Ok(v)
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 2, upcast(v2 = step, v0 = step))]
struct OrderPaid {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.placed", upcast(v1 = step))]
struct OrderPlaced {
    order_id: String,
}

fn main() {}
