use eventflow::{subscribe, Event};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
struct OrderPaid {
    order_id: String,
}

#[subscribe(group = "inventory")]
async fn reserve_stock(event: OrderPaid, db: String) -> Result<(), std::io::Error> {
    let _ = (event, db);
    Ok(())
}

fn main() {}
