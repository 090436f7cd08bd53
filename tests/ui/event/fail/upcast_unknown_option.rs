use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPaidV1 {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 2, upcast(form = OrderPaidV1))]
struct OrderPaid {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.placed", version = 2, upcast())]
struct OrderPlaced {
    order_id: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.shipped", version = 2, upcast = "v1")]
struct OrderShipped {
    order_id: String,
}

fn main() {}
