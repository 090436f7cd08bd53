//! Private Apache Kafka clusters for the tests that stop, kill and restart brokers (a
//! broker outage, a leader failover): KRaft nodes, each a combined broker and controller,
//! started from the jars `scripts/servers.sh` resolves (`KAFKA_LIBS`, by default
//! `target/test-servers/kafka/libs`) on free ports of their own, so that what these tests
//! do to them disturbs no other test. Dropping the cluster kills its processes and removes
//! its data, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eventflow_kafka::rdkafka::ClientConfig;

/// How long a node may take to start serving, on a machine busy with other tests.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One KRaft node: broker and controller in one JVM.
struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    properties: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

/// A private Kafka cluster of one or more nodes on 127.0.0.1.
pub struct KafkaCluster {
    libs: PathBuf,
    root: PathBuf,
    nodes: Vec<Node>,
}

/// The directory of Apache Kafka's jars, or a failure that says how to get them.
fn kafka_libs() -> PathBuf {
    let libs = std::env::var_os("KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target/test-servers/kafka/libs"));
    let has_kafka = std::fs::read_dir(&libs).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-"))
    });
    assert!(
        has_kafka,
        "no Apache Kafka jars in {} (KAFKA_LIBS). This test runs Kafka brokers of its own: run \
         `scripts/test`, which resolves them with Maven, or `source scripts/servers.sh && \
         ensure_kafka_jars` once, or export KAFKA_LIBS=/path/to/kafka/libs",
        libs.display()
    );
    libs
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lies in the repository")
        .to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port")
        .port()
}

impl KafkaCluster {
    /// Formats and starts `size` nodes with the broker `settings` added to each node's
    /// configuration, and waits until every broker is in the cluster's metadata.
    pub fn start(size: u32, settings: &[(&str, &str)]) -> KafkaCluster {
        let libs = kafka_libs();
        let root = std::env::temp_dir().join(super::unique("kafka-cluster"));
        std::fs::create_dir_all(&root).expect("creating the cluster's directory");
        let mut nodes: Vec<Node> = (1..=size)
            .map(|id| Node {
                id,
                port: free_port(),
                controller_port: free_port(),
                properties: root.join(format!("node-{id}.properties")),
                log: root.join(format!("node-{id}.log")),
                process: None,
            })
            .collect();
        let voters: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect();
        let replicas = size.min(3).to_string();
        for node in &nodes {
            let data = root.join(format!("data-{}", node.id));
            let mut properties = format!(
                "process.roles=broker,controller\nnode.id={id}\ncontroller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\ncontroller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 inter.broker.listener.name=PLAINTEXT\nlog.dirs={data}\n\
                 offsets.topic.replication.factor={replicas}\ntransaction.state.log.replication.factor={replicas}\n\
                 share.coordinator.state.topic.replication.factor={replicas}\n\
                 group.initial.rebalance.delay.ms=0\n",
                id = node.id,
                voters = voters.join(","),
                port = node.port,
                controller = node.controller_port,
                data = data.display(),
            );
            for (key, value) in settings {
                properties.push_str(&format!("{key}={value}\n"));
            }
            std::fs::write(&node.properties, properties).expect("writing a node's configuration");
        }
        let cluster_id = base64_uuid(uuid::Uuid::now_v7());
        // The nodes are formatted together: each format is a JVM start of its own.
        let formats: Vec<(Child, &Node)> = nodes
            .iter()
            .map(|node| {
                let log = std::fs::File::create(&node.log).expect("creating a node's log");
                let child = java(&libs)
                    .args(["kafka.tools.StorageTool", "format", "--ignore-formatted", "-t"])
                    .arg(&cluster_id)
                    .arg("-c")
                    .arg(&node.properties)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("running java: Kafka needs a JDK 17 or later on the PATH");
                (child, node)
            })
            .collect();
        for (mut child, node) in formats {
            let status = child.wait().expect("waiting for the log dir format");
            assert!(
                status.success(),
                "formatting node {}'s log dir failed:\n{}",
                node.id,
                tail(&node.log)
            );
        }
        let mut cluster = KafkaCluster {
            libs,
            root,
            nodes: Vec::new(),
        };
        for node in &mut nodes {
            node.spawn(&cluster.libs);
        }
        cluster.nodes = nodes;
        let ids: Vec<u32> = cluster.nodes.iter().map(|n| n.id).collect();
        cluster.wait_for_brokers(&ids);
        cluster
    }

    /// The bootstrap list of every node.
    pub fn brokers(&self) -> String {
        let addresses: Vec<String> = self.nodes.iter().map(Node::address).collect();
        addresses.join(",")
    }

    /// Kills node `id` as a crash would (SIGKILL): no controlled shutdown, no flush.
    pub fn kill(&mut self, id: u32) {
        let node = self.node(id);
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `id` as an operator would (SIGTERM, a controlled shutdown), waiting for
    /// it to exit.
    pub fn stop(&mut self, id: u32) {
        let node = self.node(id);
        if let Some(mut child) = node.process.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Starts node `id` again on its data and ports, and waits until it is back in the
    /// cluster's metadata.
    pub fn restart(&mut self, id: u32) {
        let libs = self.libs.clone();
        self.node(id).spawn(&libs);
        self.wait_for_brokers(&[id]);
    }

    /// The node leading `partition` of `topic`, from the metadata of the nodes alive.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<u32> {
        let alive: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(Node::address)
            .collect();
        let metadata = client(&alive.join(","))
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()?;
        let topic = metadata.topics().first()?;
        let partition = topic.partitions().iter().find(|p| p.id() == partition)?;
        u32::try_from(partition.leader()).ok()
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    /// Waits until each of `ids` answers and is listed in its own metadata as a broker.
    fn wait_for_brokers(&mut self, ids: &[u32]) {
        let deadline = Instant::now() + START_TIMEOUT;
        for &id in ids {
            loop {
                let node = self.node(id);
                if let Some(Some(status)) = node.process.as_mut().map(|p| p.try_wait().ok().flatten()) {
                    panic!(
                        "Kafka node {id} exited ({status}) before serving:\n{}",
                        tail(&node.log)
                    );
                }
                let listed = client(&node.address())
                    .fetch_metadata(None, Duration::from_secs(2))
                    .is_ok_and(|m| m.brokers().iter().any(|b| b.id() == id as i32));
                if listed {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Kafka node {id} did not serve metadata within {START_TIMEOUT:?}:\n{}",
                    tail(&node.log)
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

impl Node {
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self, libs: &Path) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .expect("opening a node's log");
        let child = java(libs)
            .arg("kafka.Kafka")
            .arg(&self.properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("running java: Kafka needs a JDK 17 or later on the PATH");
        self.process = Some(child);
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "the private Kafka cluster's logs are kept in {}",
                self.root.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A `java` command on Kafka's class path with the test broker's log configuration.
fn java(libs: &Path) -> Command {
    let mut command = Command::new("java");
    command
        .arg("-Xmx384m")
        .arg("-Xms128m")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            repository().join("scripts/kafka/log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .stdin(Stdio::null());
    command
}

fn client(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "0")
        .create()
        .expect("creating a Kafka client")
}

/// Kafka's cluster id form: 16 bytes in URL-safe base64 without padding (22 characters).
fn base64_uuid(id: uuid::Uuid) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The end of a node's log, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
