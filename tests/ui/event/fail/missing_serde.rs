use eventflow::Event;

#[derive(Event)]
#[event(name = "order.paid")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
}

fn main() {}
