//! Reconnect delays: exponential, with equal jitter (between half the ceiling and the
//! ceiling) so a thousand tenants that lost the SP at the same moment do not all come back at
//! the same moment; reset after a healthy period.

use std::time::Duration;

use rand::Rng;

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
}
