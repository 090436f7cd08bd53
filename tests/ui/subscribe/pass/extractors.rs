use eventflow::{subscribe, Context, Event, Handler, State};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
}

#[derive(Clone, Default)]
struct Stock(Arc<Mutex<Vec<String>>>);

/// Reserves the stock of a paid order.
#[subscribe(group = "inventory", retries = 5)]
async fn reserve_stock(
    event: OrderPaid,
    ctx: Context,
    State(stock): State<Stock>,
) -> Result<(), std::io::Error> {
    let _ = ctx.attempt();
    stock.0.lock().unwrap().push(event.order_id);
    Ok(())
}

fn main() {
    let options = reserve_stock.options();
    assert_eq!(options.name, concat!(module_path!(), "::reserve_stock"));
    assert_eq!(options.group, "inventory");
    assert_eq!(options.retries, Some(5));
}
