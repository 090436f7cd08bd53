use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "stock.reserved")]
struct StockReserved(u64, #[event(key)] String);

fn main() {
    assert_eq!(StockReserved::NAME, "stock.reserved");
    assert_eq!(StockReserved::TOPIC, "stock.reserved");
    let reserved = StockReserved(3, "SKU-9".into());
    assert_eq!(reserved.partition_key().as_deref(), Some("SKU-9"));
    assert_eq!(reserved.0, 3);
}
