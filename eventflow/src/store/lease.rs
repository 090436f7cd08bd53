//! Who holds the outbox lease: a relay id that names the process it runs in, so that a relay
//! restarted after a crash can tell that its predecessor is gone and take the outbox over at
//! once instead of waiting for the dead relay's lease to run out.
//!
//! A relay id reads `relay-<uuid>@<host> pid=<pid> start=<ticks> boot=<boot id>
//! pidns=<pid namespace>`. A holder is provably gone when it names this host, this boot of
//! its kernel and this pid namespace (so its process would be visible here) and either no
//! process has its pid, or the process that has it started at another time (the pid was
//! reused). A holder on another host, in another container's pid namespace, or written by
//! an older eventflow (`relay-<uuid>`) is never taken for gone: the lease runs out first.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// The outbox lease as a store holds it: which relay delivers the outbox, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxLease {
    /// The holder's relay id (see [`relay_is_gone`]).
    pub holder: String,
    /// When the lease runs out unless the holder renews it.
    pub expires_at: SystemTime,
}

impl OutboxLease {
    /// Whether the lease has run out.
    pub fn is_expired(&self) -> bool {
        self.expires_at <= SystemTime::now()
    }

    /// Whether another relay may take the outbox now: the lease ran out, or its holder is
    /// provably gone ([`relay_is_gone`]).
    pub fn can_be_taken(&self) -> bool {
        self.is_expired() || relay_is_gone(&self.holder)
    }

    /// `expires_at` as a UTC date and time, for log lines.
    pub fn expires_at_utc(&self) -> String {
        utc(self.expires_at)
    }
}

/// A new relay id for this process: unique, and naming host, process id, process start
/// time, boot id and pid namespace so that [`relay_is_gone`] can judge it later.
pub fn new_relay_id() -> String {
    format!("relay-{}@{}", Uuid::now_v7(), this_process().describe())
}

/// Whether the relay named `holder` provably no longer runs: it ran on this host, in this
/// boot and pid namespace, and its process has exited (or its pid now belongs to a process
/// that started at another time). False whenever that cannot be told, so the caller waits
/// for the lease to expire.
///
/// Storage backends call it when another relay holds an unexpired lease: a relay restarted
/// after `kill -9` takes the outbox over at once.
pub fn relay_is_gone(holder: &str) -> bool {
    let Some(other) = Process::parse(holder) else {
        return false;
    };
    let this = this_process();
    let (Some(start), Some(boot), Some(pidns)) = (other.start, &other.boot, &other.pidns) else {
        return false;
    };
    if other.host != this.host || this.boot.is_none() {
        return false;
    }
    if Some(boot) != this.boot.as_ref() {
        // Same host, another boot: every process of that boot is gone.
        return true;
    }
    if Some(pidns) != this.pidns.as_ref() {
        return false;
    }
    match start_time(&format!("/proc/{}/stat", other.pid)) {
        None => std::path::Path::new("/proc/self/stat").exists(),
        Some(now_there) => now_there != start,
    }
}

/// What a relay id says about its process.
#[derive(Debug, PartialEq, Eq)]
struct Process {
    host: String,
    pid: u32,
    start: Option<u64>,
    boot: Option<String>,
    pidns: Option<String>,
}

impl Process {
    fn describe(&self) -> String {
        let mut out = format!("{} pid={}", self.host, self.pid);
        if let Some(start) = self.start {
            out.push_str(&format!(" start={start}"));
        }
        if let Some(boot) = &self.boot {
            out.push_str(&format!(" boot={boot}"));
        }
        if let Some(pidns) = &self.pidns {
            out.push_str(&format!(" pidns={pidns}"));
        }
        out
    }

    fn parse(relay: &str) -> Option<Process> {
        let (_, at) = relay.split_once('@')?;
        let mut words = at.split(' ');
        let host = words.next()?.to_owned();
        let mut process = Process {
            host,
            pid: 0,
            start: None,
            boot: None,
            pidns: None,
        };
        for word in words {
            match word.split_once('=')? {
                ("pid", pid) => process.pid = pid.parse().ok()?,
                ("start", start) => process.start = Some(start.parse().ok()?),
                ("boot", boot) => process.boot = Some(boot.to_owned()),
                ("pidns", pidns) => process.pidns = Some(pidns.to_owned()),
                _ => {}
            }
        }
        (process.pid != 0).then_some(process)
    }
}

fn this_process() -> &'static Process {
    static THIS: OnceLock<Process> = OnceLock::new();
    THIS.get_or_init(|| {
        let read = |path: &str| std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned());
        let host = read("/proc/sys/kernel/hostname")
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".to_owned())
            .replace([' ', '@'], "_");
        let pidns = std::fs::read_link("/proc/self/ns/pid").ok().map(|link| {
            let link = link.to_string_lossy();
            link.trim_start_matches("pid:[").trim_end_matches(']').to_owned()
        });
        Process {
            host,
            pid: std::process::id(),
            start: start_time("/proc/self/stat"),
            boot: read("/proc/sys/kernel/random/boot_id"),
            pidns,
        }
    })
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks after boot.
fn start_time(stat: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// `time` as `2026-12-01T08:39:13.250Z`.
fn utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let (days, secs) = ((since.as_secs() / 86_400) as i64, since.as_secs() % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_of_this_process_is_not_gone() {
        let id = new_relay_id();
        assert!(id.starts_with("relay-"), "{id}");
        assert!(!relay_is_gone(&id), "{id}");
    }

    #[test]
    fn an_old_style_or_foreign_holder_is_never_taken_for_gone() {
        assert!(!relay_is_gone("relay-0190a8f4-c3d2-7c1e-9b3f-5a7d2e4c6b8a"));
        assert!(!relay_is_gone("garbage@"));
        let this = this_process();
        let elsewhere = "relay-x@another-host pid=1 start=1 boot=b pidns=1";
        assert!(!relay_is_gone(elsewhere));
        let other_ns = format!(
            "relay-x@{} pid=4000000 start=1 boot={} pidns=other",
            this.host,
            this.boot.clone().unwrap_or_default()
        );
        assert!(!relay_is_gone(&other_ns));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_holder_whose_process_exited_or_whose_pid_was_reused_is_gone() {
        let this = this_process();
        let holder = |pid: u32, start: u64| {
            format!(
                "relay-x@{} pid={pid} start={start} boot={} pidns={}",
                this.host,
                this.boot.clone().unwrap(),
                this.pidns.clone().unwrap()
            )
        };
        // No process has pid 4,000,000 (above Linux's pid_max limit of 2^22).
        assert!(relay_is_gone(&holder(4_000_000, 1)));
        // This process, with another start time: its pid was reused.
        assert!(relay_is_gone(&holder(this.pid, this.start.unwrap() + 1)));
        assert!(!relay_is_gone(&holder(this.pid, this.start.unwrap())));
        let rebooted = format!("relay-x@{} pid=1 start=1 boot=another pidns=1", this.host);
        assert!(relay_is_gone(&rebooted));
    }

    #[test]
    fn dates_print_in_utc() {
        let time = UNIX_EPOCH + Duration::from_millis(1_796_114_353_250);
        assert_eq!(utc(time), "2026-12-01T08:39:13.250Z");
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
