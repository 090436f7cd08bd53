//! A RabbitMQ outage in the middle of a stream: the broker is stopped for more than 10 s
//! and started again. Events committed through the outbox (on SQLite) meanwhile are all
//! delivered once the broker is back, and each takes effect exactly once.
//!
//! Runs a RabbitMQ node of its own (`RABBITMQ_SERVER_BIN`, as `scripts/rabbitmq.sh`
//! exports it, or Debian's `/usr/lib/rabbitmq/bin/rabbitmq-server`) on free ports, so that
//! stopping it disturbs no other test.

mod rabbitmq_common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::store::SqliteStore;
use eventflow::{subscribe, EventBus, State};
use eventflow_rabbitmq::RabbitMq;
use eventflow_tests::{eventually, temp_db, OrderPaid};

const DEBIAN_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A private RabbitMQ node that can be stopped and started on the same ports and data.
struct Broker {
    binary: PathBuf,
    port: u16,
    dist_port: u16,
    data: PathBuf,
    node: String,
    process: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

impl Broker {
    fn start_new() -> Broker {
        let binary = std::env::var_os("RABBITMQ_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEBIAN_SERVER));
        assert!(
            binary.is_file(),
            "no rabbitmq-server at {}: this test stops and restarts a RabbitMQ node of its own; run \
             `scripts/test` (its scripts/rabbitmq.sh installs Debian's rabbitmq-server and exports \
             RABBITMQ_SERVER_BIN) or export RABBITMQ_SERVER_BIN=/path/to/rabbitmq-server",
            binary.display()
        );
        let name = rabbitmq_common::unique("outage");
        let data = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&data).expect("creating the broker's data directory");
        std::fs::write(data.join("enabled_plugins"), "[].\n").expect("writing enabled_plugins");
        let mut broker = Broker {
            binary,
            port: free_port(),
            dist_port: free_port(),
            node: format!("{name}@localhost"),
            data,
            process: None,
        };
        broker.start();
        broker
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.data.join("server.log")).expect("creating the log");
        let child = Command::new(&self.binary)
            // Erlang writes crash dumps to its working directory: keep them with the data.
            .current_dir(&self.data)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.data.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.data.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.data.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", self.data.join("rabbitmq.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.process = Some(child);
        // RabbitMQ opens its AMQP port once it has booted; a loaded machine takes a while.
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.process.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "the private RabbitMQ exited ({status}) before listening; its log: {}",
                    self.data.join("server.log").display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ did not listen on {} within 120 s; its log: {}",
                self.port,
                self.data.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the broker as an operator would (SIGTERM), waiting for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the private RabbitMQ did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[derive(Clone, Default)]
struct Effects(Arc<Mutex<HashMap<u64, u32>>>);

impl Effects {
    fn applied(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[subscribe(group = "ledger")]
async fn ledger(event: OrderPaid, State(effects): State<Effects>) -> Result<(), String> {
    *effects.0.lock().unwrap().entry(event.seq).or_default() += 1;
    Ok(())
}

async fn commit_through_outbox(bus: &EventBus, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let mut work = bus.begin().await.expect("beginning a unit of work");
        work.publish(&OrderPaid {
            order_id: format!("order-{}", seq % 5),
            seq,
        })
        .await
        .unwrap();
        work.commit()
            .await
            .expect("the outbox commits locally whatever the broker does");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_during_a_broker_outage_are_delivered_once_it_is_back() {
    rabbitmq_common::capture_logs();
    let mut broker = Broker::start_new();
    let rabbit = RabbitMq::builder(broker.url())
        .queues_per_group(3)
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .unwrap();
    let effects = Effects::default();
    let store = SqliteStore::open(temp_db()).await.expect("opening SQLite");
    let bus = EventBus::builder()
        .transport(rabbit)
        .storage(store)
        .state(effects.clone())
        .handler(ledger)
        .start()
        .await
        .unwrap();

    commit_through_outbox(&bus, 0..50).await;
    eventually(60, "the events before the outage", || effects.applied() == 50).await;

    broker.stop();
    let stopped = Instant::now();
    commit_through_outbox(&bus, 50..100).await;
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(stopped.elapsed())).await;
    assert_eq!(
        effects.applied(),
        50,
        "nothing can be delivered while the broker is down"
    );
    broker.start();
    let restarted = Instant::now();

    commit_through_outbox(&bus, 100..120).await;
    eventually(
        60,
        "every event committed before, during and after the outage, within 60 s of the restart",
        || effects.applied() == 120,
    )
    .await;
    println!("caught up {:?} after the broker restarted", restarted.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let effects = effects.0.lock().unwrap().clone();
    assert_eq!(effects.len(), 120);
    let doubled: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "effects applied more than once: {doubled:?}");
    bus.shutdown().await;
}
