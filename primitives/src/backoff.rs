//! Exponential backoff with jitter, for every loop that retries: a failed accept, a lost control-plane stream, a
//! failed certificate renewal. Jitter keeps a fleet of proxies that failed together from retrying together.

use std::time::Duration;

/// Delays that double from `base` up to `max`; each is drawn uniformly from its upper half ("equal jitter"), so
/// a delay is never shorter than half the nominal one and never longer than `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next try; each call lengthens the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// After a success: the next failure starts again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// The jittered delay before retry number `attempt` (0-based): in `[n/2, n]` where `n = min(base * 2^attempt, max)`.
pub fn delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let nominal = base
        .checked_mul(2u32.saturating_pow(attempt.min(31)))
        .unwrap_or(max)
        .min(max);
    let half = nominal / 2;
    let spread = u64::try_from((nominal - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if spread == 0 {
        0
    } else {
        rand::random_range(0..=spread)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_bounds_and_jitters() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(base, max);
        let mut seen = std::collections::BTreeSet::new();
        for attempt in 0..12 {
            let nominal = (base * 2u32.pow(attempt)).min(max);
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "attempt {attempt}: {d:?}");
            seen.insert(d);
        }
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert!(b.next_delay() <= base);
        // Twelve draws from continuous ranges: jitter makes them distinct.
        assert!(seen.len() > 6, "{seen:?}");
        assert_eq!(delay(Duration::ZERO, max, 5), Duration::ZERO);
        assert!(delay(base, max, u32::MAX) <= max);
    }
}
