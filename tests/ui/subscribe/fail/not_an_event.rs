use eventflow::subscribe;

#[subscribe(group = "inventory")]
async fn reserve_stock(order_id: String) -> Result<(), std::io::Error> {
    let _ = order_id;
    Ok(())
}

fn main() {}
