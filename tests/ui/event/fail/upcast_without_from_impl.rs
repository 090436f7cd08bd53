use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPaidV1 {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 2, upcast(from = OrderPaidV1))]
struct OrderPaid {
    order_id: String,
}

fn main() {}
