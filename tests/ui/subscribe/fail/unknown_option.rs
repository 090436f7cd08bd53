use eventflow::{subscribe, Event};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
struct OrderPaid {
    order_id: String,
}

#[subscribe(gruop = "inventory")]
async fn reserve_stock(event: OrderPaid) -> Result<(), std::io::Error> {
    let _ = event;
    Ok(())
}

fn main() {
    // Still a handler as far as the rest of the program is concerned: no second error here.
    let _ = eventflow::EventBus::builder().handler(reserve_stock);
}
