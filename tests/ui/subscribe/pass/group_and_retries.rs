use eventflow::{subscribe, Event, Handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
struct OrderPaid {
    order_id: String,
}

#[subscribe(group = "notification", retries = 0)]
async fn send_confirmation(event: OrderPaid) -> Result<(), std::io::Error> {
    let _ = event.order_id;
    Ok(())
}

#[subscribe(retries = 7, group = "ledger")]
async fn book_payment(event: OrderPaid) -> Result<(), std::io::Error> {
    let _ = event.order_id;
    Ok(())
}

fn main() {
    let options = send_confirmation.options();
    assert_eq!(options.group, "notification");
    assert_eq!(options.retries, Some(0));

    let options = book_payment.options();
    assert_eq!(options.name, concat!(module_path!(), "::book_payment"));
    assert_eq!(options.group, "ledger");
    assert_eq!(options.retries, Some(7));
}
