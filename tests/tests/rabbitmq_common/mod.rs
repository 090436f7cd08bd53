//! What the RabbitMQ tests share: a transport on the broker from `AMQP_URL`, with
//! exchange and queue names no other test or run uses, raw lapin access, and a check that
//! fails loudly when there is no broker.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow_rabbitmq::lapin::{Channel, Connection, ConnectionProperties};
use eventflow_rabbitmq::{RabbitMq, RabbitMqBuilder};

/// The broker under test.
pub fn url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| eventflow_rabbitmq::DEFAULT_URL.to_owned())
}

/// A name no other test or test run uses, for prefixes.
pub fn unique(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "t-{test}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sends eventflow's log lines to the test's captured output.
pub fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,eventflow_rabbitmq=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A raw connection to `url`, failing the test with what to do if no broker answers.
pub async fn connect(url: &str) -> Connection {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "no RabbitMQ answers at `{url}` ({error}). These tests need a real RabbitMQ: run \
             `scripts/test`, which installs and starts one, or start one yourself and set \
             AMQP_URL=amqp://user:password@host:5672/%2f"
        ),
        Err(_) => panic!(
            "RabbitMQ at `{url}` did not answer within 15 s. Run `scripts/test`, which starts \
             one, or set AMQP_URL to a running broker"
        ),
    }
}

/// A raw channel on the broker under test.
pub async fn channel() -> (Connection, Channel) {
    let connection = connect(&url()).await;
    let channel = connection.create_channel().await.expect("opening a channel");
    (connection, channel)
}

/// A transport builder on the broker under test whose exchanges and queues belong to
/// `test` alone, with 3 queues per group (the conformance suite's minimum) and quick
/// rebalancing.
pub async fn builder(test: &str) -> RabbitMqBuilder {
    capture_logs();
    let url = url();
    let _ = connect(&url).await.close(200, "checked".into()).await;
    RabbitMq::builder(url)
        .prefix(format!("{}.", unique(test)))
        .queues_per_group(3)
        .rebalance_interval(Duration::from_millis(250))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
}

/// A transport on the broker under test, private to `test`.
pub async fn rabbit(test: &str) -> RabbitMq {
    builder(test)
        .await
        .build()
        .expect("building the RabbitMQ transport")
}
