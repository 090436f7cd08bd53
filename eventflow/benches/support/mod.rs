//! What the benches here share: sizes read from the environment, medians, and temporary
//! SQLite files removed with their `-wal` and `-shm`.

// Each bench is a crate of its own and uses only some of these.
#![allow(dead_code)]

pub mod alloc;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The value of the environment variable `name`, or `default` if it is not set. A value
/// that does not parse stops the bench with a message, rather than running another size
/// than the one asked for.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a positive integer, got `{value}`")),
        Err(_) => default,
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// The median of `samples` (the upper middle one for an even count).
pub fn median_duration(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A temporary database file, removed with its `-wal` and `-shm` when dropped.
pub struct TempDb(PathBuf);

impl TempDb {
    /// A fresh file for `bench`'s part `tag`, unique within this process.
    pub fn new(bench: &str, tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "eventflow-bench-{bench}-{}-{tag}-{n}.db",
            std::process::id()
        ));
        let db = TempDb(path);
        db.remove();
        db
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}
