//! CPU time per event, of this process, of the publishing thread and of a broker on this
//! machine, from `/proc/<pid>/task/*/schedstat`.

/// CPU seconds the live threads of process `pid` (or `self`) have run, from each
/// thread's `/proc/<pid>/task/<tid>/schedstat` (Linux; nanoseconds, where `/proc/<pid>/stat`
/// counts 10 ms ticks); 0 if it cannot be read.
fn cpu_secs_of(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

/// CPU seconds the calling thread has run (Linux); 0 if it cannot be read.
fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |nanos| nanos as f64 / 1e9)
}

/// CPU time of this process and of the broker named by `KAFKA_BENCH_BROKER_PID`, if any.
#[derive(Clone, Copy)]
pub struct Cpu {
    /// This process, all threads.
    pub client: f64,
    /// The thread that publishes: eventflow's own work, and the raw sides' encoding and
    /// `send`; librdkafka's threads do the rest.
    pub caller: f64,
    pub broker: Option<f64>,
}

impl Cpu {
    pub fn now() -> Cpu {
        Cpu {
            client: cpu_secs_of("self"),
            caller: thread_cpu_secs(),
            broker: std::env::var("KAFKA_BENCH_BROKER_PID")
                .ok()
                .map(|pid| cpu_secs_of(&pid)),
        }
    }

    /// Microseconds of CPU per event since `self`, for `n` events.
    pub fn per_event_since(self, n: usize) -> Cpu {
        let now = Cpu::now();
        let per = |used: f64| used / n as f64 * 1e6;
        Cpu {
            client: per(now.client - self.client),
            caller: per(now.caller - self.caller),
            broker: now.broker.zip(self.broker).map(|(b, a)| per(b - a)),
        }
    }
}
