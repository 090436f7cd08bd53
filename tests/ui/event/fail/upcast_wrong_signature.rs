use eventflow::Event;
use serde::{Deserialize, Serialize};

fn step(v1: String) -> String {
    v1
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 2, upcast(v1 = step))]
struct OrderPaid {
    order_id: String,
}

fn main() {}
