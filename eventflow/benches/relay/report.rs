//! How the parts print their figures: percentiles, rates, and the CPU time used.

use std::time::Duration;

pub fn percentile(sorted: &mut [Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted.sort();
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn percentiles(values: &mut [Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(values, 0.50)),
        ms(percentile(values, 0.90)),
        ms(percentile(values, 0.99)),
        ms(percentile(values, 1.0))
    )
}

pub fn rate(rate: f64) -> String {
    format!("{:.0} events/s", rate)
}

pub fn rate_short(rate: f64) -> String {
    format!("{:.0}/s", rate)
}

pub fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// CPU seconds this process has used so far (user + system), from `/proc/self/stat`; 0 where
/// that file does not exist.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
