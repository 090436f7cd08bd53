// A handler returns `Result<(), E>`: the error is on the part of the return type that differs.
use eventflow::{subscribe, Event};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
struct OrderPaid {
    order_id: String,
}

#[subscribe]
async fn count(event: OrderPaid) -> Result<u32, std::io::Error> {
    let _ = event;
    Ok(1)
}

#[subscribe]
async fn not_result(event: OrderPaid) -> u32 {
    let _ = event;
    1
}

fn main() {}
