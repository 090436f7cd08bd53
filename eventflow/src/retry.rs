//! Retry timing: [`Backoff`].

use std::time::Duration;

/// Exponential backoff with full jitter between the attempts of a failing handler.
///
/// The n-th retry waits a random time in `[delay/2, delay]` where
/// `delay = min(initial * factor^(n-1), max)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
    jitter: bool,
}

impl Backoff {
    /// Backoff starting at `initial`, doubling each retry, capped at `max`.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            factor: 2.0,
            jitter: true,
        }
    }

    /// No wait between attempts (for tests).
    pub fn none() -> Self {
        Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            factor: 1.0,
            jitter: false,
        }
    }

    /// Sets the growth factor (at least 1).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// Turns jitter on or off.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The wait before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.factor.powi(retry.saturating_sub(1).min(64) as i32);
        let delay = self.initial.as_secs_f64() * exp;
        let delay = Duration::from_secs_f64(delay.min(self.max.as_secs_f64()));
        if self.jitter {
            delay.mul_f64(0.5 + fastrand::f64() * 0.5)
        } else {
            delay
        }
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 30 s, with jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let b = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(50)).jitter(false);
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(2), Duration::from_millis(20));
        assert_eq!(b.delay(3), Duration::from_millis(40));
        assert_eq!(b.delay(4), Duration::from_millis(50));
        let j = b.jitter(true).delay(2);
        assert!(j >= Duration::from_millis(10) && j <= Duration::from_millis(20));
    }
}
