//! Reconnect delays: exponential, with equal jitter (between half the ceiling and the
//! ceiling), reset after a healthy period; the first reconnect after losing a connection
//! that was up is spread from zero over several base delays, so the thousands of tenants an
//! SP restart disconnects at the same moment do not all come back at the same moment.

use std::time::Duration;

use rand::Rng;

/// Base delays over which the first reconnect after a lost connection is spread.
pub const LOSS_SPREAD: u32 = 8;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay (without jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniformly random between half the ceiling and the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + ceiling
            .saturating_sub(half)
            .mul_f64(rand::rng().random::<f64>())
    }

    /// The delay before the first reconnect after losing a connection that was up:
    /// uniformly random between zero and [`LOSS_SPREAD`] base delays. Every tenant of an SP
    /// that restarts loses its connection at the same moment; spread over that window they
    /// come back at a pace the SP can take, instead of all within the first half-base.
    /// Failures after it back off as [`next_delay`](Self::next_delay) does.
    pub fn after_lost_connection(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.base
            .saturating_mul(LOSS_SPREAD)
            .min(self.max)
            .mul_f64(rand::rng().random::<f64>())
    }

    /// After a connection that stayed healthy: start again from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 1, "jitter makes delays differ");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn the_reconnect_after_a_lost_connection_is_spread_from_zero() {
        let base = Duration::from_millis(100);
        let mut b = Backoff::new(base, Duration::from_secs(2));
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                b.reset();
                b.after_lost_connection()
            })
            .collect();
        let spread = base * LOSS_SPREAD;
        assert!(delays.iter().all(|d| *d <= spread), "{delays:?}");
        assert!(delays.iter().any(|d| *d < base / 2), "some come back early");
        assert!(
            delays.iter().any(|d| *d > spread / 2),
            "some come back late"
        );
        assert_eq!(
            b.ceiling(),
            base * 2,
            "the next failure backs off from there"
        );
    }
}
