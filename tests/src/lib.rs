//! Shared helpers for the behaviour tests: events, a recorder of what handlers saw, a
//! timeout that turns a hang into a clear failure, and a capture of what the bus logs.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::Event;
use serde::{Deserialize, Serialize};

pub mod projections;

/// A keyed event with a sequence number, to check order and completeness.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "order.paid", version = 1, topic = "orders")]
pub struct OrderPaid {
    #[event(key)]
    pub order_id: String,
    pub seq: u64,
}

/// `(key, seq)` of each event a group handled, in handling order.
type Handled = Vec<(String, u64)>;

/// What handlers saw, by group.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<HashMap<String, Handled>>>);

impl Recorder {
    pub fn record(&self, group: &str, event: &OrderPaid) {
        let mut seen = self.0.lock().unwrap();
        seen.entry(group.to_owned())
            .or_default()
            .push((event.order_id.clone(), event.seq));
    }

    /// What `group` saw, in handling order.
    pub fn seen(&self, group: &str) -> Vec<(String, u64)> {
        self.0.lock().unwrap().get(group).cloned().unwrap_or_default()
    }

    /// The sequence numbers `group` saw, sorted.
    pub fn sorted_seqs(&self, group: &str) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.seen(group).into_iter().map(|(_, s)| s).collect();
        seqs.sort_unstable();
        seqs
    }
}

/// Awaits `future`, failing the test with `what` if it takes longer than `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

/// Waits until `check` holds, polling every 10 ms, for at most `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    within(secs, what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A SQLite database path no other test or test run uses.
pub fn temp_db() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!(
        "eventflow-test-{}-{}-{nanos}.db",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes a SQLite database and its WAL files.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// How a restarted process took the outbox over after its predecessor was killed: the
/// times `takeover_child commit` printed.
#[derive(Clone, Copy, Debug)]
pub struct Takeover {
    /// From the commit of the first unit of work to its handler running.
    pub after_commit: Duration,
    /// From the process's start to that handler running.
    pub after_start: Duration,
}

/// Runs the takeover child `binary` on `store` (`sqlite PATH` or `mongo DATABASE`): one
/// process takes the outbox lease and is killed with SIGKILL, a second one commits an
/// event; returns how soon that event was handled.
pub fn kill_and_restart(binary: &str, store: [&str; 2]) -> Takeover {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut holder = Command::new(binary)
        .args([store[0], store[1], "hold"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the takeover child starts");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("holding "),
        "the first child did not take the lease: `{line}`"
    );
    holder.kill().unwrap(); // SIGKILL: the lease stays in the store
    holder.wait().unwrap();
    restart(binary, store)
}

/// Starts `takeover_child commit` on `store` and returns its figures.
pub fn restart(binary: &str, store: [&str; 2]) -> Takeover {
    let output = std::process::Command::new(binary)
        .args([store[0], store[1], "commit"])
        .output()
        .expect("the takeover child starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the restarted child failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("handled "))
        .unwrap_or_else(|| panic!("the restarted child printed no `handled` line: {stdout}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    Takeover {
        after_commit: Duration::from_millis(figures[0]),
        after_start: Duration::from_millis(figures[1]),
    }
}

/// What the bus logs on the current thread while a test runs, as text.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Captures the `tracing` events of the current thread until the guard is dropped.
    pub fn start() -> (CapturedLog, tracing::subscriber::DefaultGuard) {
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
