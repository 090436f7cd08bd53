use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(nmae = "order.paid")]
struct OrderPaid {
    order_id: String,
}

fn main() {}
