use eventflow::{subscribe, Event};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
struct OrderPaid {
    order_id: String,
}

// The error must convert into `eventflow::BoxError`.
#[subscribe(group = "inventory")]
async fn reserve_stock(event: OrderPaid) -> Result<(), u32> {
    let _ = event;
    Ok(())
}

fn main() {}
