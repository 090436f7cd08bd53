//! The checkout: orders are paid and saved with their `OrderPaid` fact in one unit of
//! work; four independent consumers react.
//!
//! ```text
//! cargo run --example checkout                   # SQLite in ./eventflow-checkout.db
//! cargo run --example checkout -- --orders 50    # more orders: time to press Ctrl-C
//! cargo run --example checkout -- --store memory # nothing kept between runs
//! cargo run --example checkout -- --transport kafka  # on Kafka at $KAFKA_BROKERS
//! cargo run --example checkout -- --transport rabbitmq  # on RabbitMQ at $AMQP_URL
//! cargo run --example checkout -- --store mongo --transport kafka  # the full seed setup
//! ```
//!
//! `EVENTFLOW_STORE`, `EVENTFLOW_DB` and `EVENTFLOW_TRANSPORT` set the same as the flags.
//!
//! Inventory reserves stock, Shipping books a courier and Loyalty adds points: each writes
//! its effect in the transaction that records the event as processed for its group
//! (exactly once). Notification sends the confirmation mail, which no transaction can take
//! back: the inbox records the event after the mail went out, so a redelivered event is
//! skipped (at least once, duplicates suppressed). None of them knows about the others.
//!
//! The data lives in a SQLite file. Run the example twice: the second run finds the
//! orders paid and delivers nothing again. Kill it mid-run (Ctrl-C) and run it again: the
//! outbox delivers what was committed and not yet handled, and every consumer's effect is
//! there exactly once. Delete the file to start over.
//!
//! One order comes with a 2 MB gift note, over what the transport takes (Kafka's
//! `message.max.bytes`, 1 MB by default; the in-process transport is given the same
//! limit): the relay sets its event aside as a dead letter of `eventflow.outbox`, with the
//! transport's reason, and the other orders are delivered all the same.

use std::sync::Arc;
use std::time::Duration;

use eventflow::store::{rusqlite, SqliteStore, SqliteTransaction};
use eventflow::{subscribe, Aggregate, Context, Event, EventBus, InProcess, MemoryStore, Relay, Storage, Tx};
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::{MongoStore, MongoTransaction, DEFAULT_URI};
use serde::{Deserialize, Serialize};

/// An order was paid.
#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "order.paid", version = 1, topic = "orders")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
    user_id: String,
    total_amount: u64,
    /// A note printed on the gift wrapping, if the order is a gift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gift_note: Option<String>,
}

/// An order, event-sourced: its state is what its events add up to.
#[derive(Default)]
struct Order {
    paid: bool,
}

impl Aggregate for Order {
    type Event = OrderPaid;
    const KIND: &'static str = "order";

    fn apply(&mut self, _paid: &OrderPaid) {
        self.paid = true;
    }
}

type Result = std::result::Result<(), eventflow::Error>;

#[subscribe(group = "inventory")]
async fn reserve_stock(order: OrderPaid, tx: Tx, ctx: Context) -> Result {
    let what = format!("reserved stock for {}", order.order_id);
    record_effect(&tx, &ctx, &order, &what).await
}

#[subscribe(group = "notification", retries = 5)]
async fn send_confirmation(order: OrderPaid, ctx: Context) -> Result {
    // A mail server round trip.
    tokio::time::sleep(Duration::from_millis(150)).await;
    say(
        &ctx,
        &format!("mailed {} about {}", order.user_id, order.order_id),
    );
    Ok(())
}

#[subscribe(group = "shipping")]
async fn book_courier(order: OrderPaid, tx: Tx, ctx: Context) -> Result {
    let what = format!("booked a courier for {}", order.order_id);
    record_effect(&tx, &ctx, &order, &what).await
}

#[subscribe(group = "loyalty", retries = 5)]
async fn add_points(order: OrderPaid, tx: Tx, ctx: Context) -> Result {
    let what = format!("{} earned {} points", order.user_id, order.total_amount / 100);
    record_effect(&tx, &ctx, &order, &what).await
}

/// Writes a consumer's effect in its transaction, through the backend's own transaction
/// type: the effect and the group's processed-event marker commit together.
async fn record_effect(tx: &Tx, ctx: &Context, order: &OrderPaid, what: &str) -> Result {
    let mut tx = tx.lock().await;
    if let Some(sqlite) = tx.downcast_mut::<SqliteTransaction>() {
        sqlite.connection().execute(
            "INSERT INTO effects (grp, order_id, what) VALUES (?1, ?2, ?3)",
            (ctx.group(), &order.order_id, what),
        )?;
    } else if let Some(mongo) = tx.downcast_mut::<MongoTransaction>() {
        let effect = doc! { "grp": ctx.group(), "order_id": &order.order_id, "what": what };
        mongo
            .collection::<Document>("effects")
            .insert_one(effect)
            .session(mongo.session())
            .await?;
    }
    say(ctx, what);
    Ok(())
}

/// Prints one line of the trace: who reacted to which event.
fn say(ctx: &Context, what: &str) {
    println!(
        "  {:<14} {what:<34} event …{}",
        format!("[{}]", ctx.group()),
        short(ctx.event_id())
    );
}

/// The last hex digits of an event id, enough to tell events apart in the trace.
fn short(id: uuid::Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

/// Command-line options: `--orders N`, `--store sqlite|mongo|memory`, `--db PATH`,
/// `--transport in-process|kafka|rabbitmq`.
struct Options {
    orders: u64,
    store: String,
    db: String,
    transport: String,
}

impl Options {
    fn parse() -> std::result::Result<Options, String> {
        let mut options = Options {
            orders: 3,
            store: std::env::var("EVENTFLOW_STORE").unwrap_or_else(|_| "sqlite".into()),
            db: std::env::var("EVENTFLOW_DB").unwrap_or_else(|_| "eventflow-checkout.db".into()),
            transport: std::env::var("EVENTFLOW_TRANSPORT").unwrap_or_else(|_| "in-process".into()),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--orders" => {
                    options.orders = value()?
                        .parse()
                        .map_err(|_| "--orders needs a number".to_owned())?
                }
                "--store" => options.store = value()?,
                "--db" => options.db = value()?,
                "--transport" => options.transport = value()?,
                other => {
                    return Err(format!(
                        "unknown option `{other}`; use --orders N, --store sqlite|mongo|memory, --db PATH, \
                         --transport in-process|kafka|rabbitmq"
                    ))
                }
            }
        }
        Ok(options)
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    eventflow_examples::init_tracing();
    let options = Options::parse()?;
    let mut builder = EventBus::builder().discovered_handlers();
    builder = match options.transport.as_str() {
        // The same limit as Kafka's default `message.max.bytes`.
        "in-process" => builder.transport(InProcess::builder().max_message_bytes(1_000_000).build()),
        "kafka" => {
            let kafka = eventflow_kafka::Kafka::from_env().build()?;
            println!("transport: Kafka at {}", brokers());
            builder.transport(kafka)
        }
        "rabbitmq" => {
            let rabbit = eventflow_rabbitmq::RabbitMq::from_env().build()?;
            println!("transport: RabbitMQ at {}", rabbit.url());
            builder.transport(rabbit)
        }
        other => {
            return Err(format!("unknown transport `{other}`; use in-process, kafka or rabbitmq").into())
        }
    };
    let mut mongo = None;
    let store: Arc<dyn Storage> = match options.store.as_str() {
        "sqlite" => {
            // The store first: its error says what to check when the file cannot be opened.
            let store = SqliteStore::open(&options.db).await?;
            let sql = rusqlite::Connection::open(&options.db)?;
            sql.execute_batch(
                "CREATE TABLE IF NOT EXISTS effects (grp TEXT NOT NULL, order_id TEXT NOT NULL, what TEXT NOT NULL)",
            )?;
            println!("store: SQLite in {} (delete it to start over)", options.db);
            builder = builder.storage(store.clone());
            Arc::new(store)
        }
        "memory" => {
            println!("store: in memory (nothing is kept)");
            let store = MemoryStore::new();
            builder = builder.storage(store.clone());
            Arc::new(store)
        }
        "mongo" => {
            let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.into());
            let database = std::env::var("MONGODB_DATABASE").unwrap_or_else(|_| "eventflow_checkout".into());
            println!("store: MongoDB database {database} at {uri} (drop it to start over)");
            let store = MongoStore::connect(&uri, &database).await?;
            builder = builder.storage(store.clone());
            mongo = Some(store.clone());
            Arc::new(store)
        }
        other => return Err(format!("unknown store `{other}`; use sqlite, mongo or memory").into()),
    };
    let bus = builder.start().await?;
    let mut groups: Vec<&str> = bus.groups().collect();
    groups.sort_unstable();
    println!("consumer groups: {}", groups.join(", "));

    let orders = bus.repository::<Order>()?;
    let customers = ["alice", "bob", "carol", "dave"];
    for n in 0..=options.orders {
        // The last order is a gift, with a note far too long for the transport.
        let (order_id, gift_note) = match n == options.orders {
            false => (format!("XYZ-{}", 123 + n), None),
            true => ("XYZ-GIFT".to_owned(), Some("Happy birthday! ".repeat(128 * 1024))),
        };
        let size = gift_note.as_ref().map(String::len);
        let paid = OrderPaid {
            order_id: order_id.clone(),
            user_id: customers[n as usize % customers.len()].into(),
            total_amount: 999 + 1_000 * n,
            gift_note,
        };
        if !pay(&bus, &orders, paid).await? {
            println!("order {order_id} was paid in an earlier run");
            continue;
        }
        match size {
            None => println!("paid order {order_id}: saved with its order.paid event"),
            Some(size) => println!(
                "paid order {order_id} with a gift note of {} MB: saved with its order.paid event",
                size / 1_000_000
            ),
        }
    }

    // Every group records each event it handled in the inbox: wait until all of them have
    // every order.paid event of the store, including what an earlier, killed run left.
    let paid: Vec<uuid::Uuid> = store
        .read_all(0, usize::MAX)
        .await?
        .into_iter()
        .filter(|e| e.envelope.name == OrderPaid::NAME)
        .map(|e| e.envelope.id)
        .collect();
    // An event the transport refused for good is not waited for: it is a dead letter.
    loop {
        let refused = refused_events(&bus).await?;
        let deliverable: Vec<uuid::Uuid> = paid.iter().copied().filter(|id| !refused.contains(id)).collect();
        let mut handled = true;
        for group in &groups {
            handled &= store.processed(group, &deliverable).await?.len() == deliverable.len();
        }
        if handled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("every consumer handled every order");
    for letter in bus.dead_letters(Some(Relay::DEAD_LETTER_GROUP)).await? {
        println!(
            "not delivered: event …{} of order {} is a dead letter of `{}`; the transport said:\n    {}",
            short(letter.envelope.id),
            letter.envelope.key.as_deref().unwrap_or("?"),
            letter.group,
            letter.error,
        );
    }
    match (options.store.as_str(), &mongo) {
        ("sqlite", _) => summary(&options.db, paid.len())?,
        (_, Some(mongo)) => {
            let effects = store_effects(mongo).await?;
            println!("effects in the store ({} orders paid so far):", paid.len());
            for (group, count) in effects {
                println!("  {group:<10} {count} effects");
            }
        }
        _ => {}
    }
    bus.shutdown().await;
    Ok(())
}

/// Pays the order `paid` names, unless an earlier run did: its new state and the event
/// announcing it commit together, and the relay delivers the event after the commit.
/// Returns whether it paid it now.
///
/// A transient failure is waited out and the order loaded again. On MongoDB, a run killed
/// in the middle of a commit leaves its transaction open on the server, holding that
/// order's stream, until the server aborts it (`transactionLifetimeLimitSeconds`, 60 s).
async fn pay(
    bus: &EventBus,
    orders: &eventflow::Repository<Order>,
    paid: OrderPaid,
) -> std::result::Result<bool, eventflow::Error> {
    const GIVE_UP_AFTER: Duration = Duration::from_secs(90);
    let started = std::time::Instant::now();
    loop {
        let mut order = orders.load(&paid.order_id).await?;
        if order.paid {
            return Ok(false);
        }
        order.record(paid.clone());
        let mut work = bus.begin().await?;
        work.save(&mut order).await?;
        match work.commit().await {
            Ok(()) => return Ok(true),
            Err(eventflow::Error::Transient(error)) if started.elapsed() < GIVE_UP_AFTER => {
                println!("order {}: {error}; trying again in 5 s", paid.order_id);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The events the relay set aside because the transport refused them for good.
async fn refused_events(
    bus: &EventBus,
) -> std::result::Result<std::collections::HashSet<uuid::Uuid>, eventflow::Error> {
    let letters = bus.dead_letters(Some(Relay::DEAD_LETTER_GROUP)).await?;
    Ok(letters.into_iter().map(|letter| letter.envelope.id).collect())
}

/// Each transactional consumer's effects in the MongoDB database.
async fn store_effects(
    mongo: &MongoStore,
) -> std::result::Result<Vec<(String, u64)>, Box<dyn std::error::Error>> {
    let effects = mongo.database().collection::<Document>("effects");
    let mut counts = Vec::new();
    for group in ["inventory", "loyalty", "shipping"] {
        counts.push((
            group.to_owned(),
            effects.count_documents(doc! { "grp": group }).await?,
        ));
    }
    Ok(counts)
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Each transactional consumer's effects in the SQLite file: one per order, however often
/// the example ran or was killed.
fn summary(db: &str, orders: usize) -> std::result::Result<(), rusqlite::Error> {
    let sql = rusqlite::Connection::open(db)?;
    let mut select =
        sql.prepare("SELECT grp, COUNT(*), COUNT(DISTINCT order_id) FROM effects GROUP BY grp ORDER BY grp")?;
    let rows = select.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    println!("effects in the store ({orders} orders paid so far):");
    for row in rows {
        let (group, effects, distinct) = row?;
        println!("  {group:<10} {effects} effects for {distinct} orders");
    }
    Ok(())
}
