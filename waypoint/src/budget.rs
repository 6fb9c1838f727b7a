//! Counted admission, the primitive behind every circuit breaker: `http2MaxRequests` (active requests),
//! `maxRetries` (active retries) and `http1MaxPendingRequests` (pending requests).

use std::sync::atomic::{AtomicUsize, Ordering};

/// One unit of a budget, given back when dropped.
pub struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one unit of `counter` unless it is at `limit` (None: unlimited).
pub fn admit(counter: &AtomicUsize, limit: Option<usize>) -> Option<Counted<'_>> {
    let prev = counter.fetch_add(1, Ordering::AcqRel);
    let guard = Counted(counter);
    match limit {
        Some(max) if prev >= max => None,
        _ => Some(guard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_returns_units_on_drop() {
        let c = AtomicUsize::new(0);
        let a = admit(&c, Some(2)).expect("first");
        let b = admit(&c, Some(2)).expect("second");
        assert!(admit(&c, Some(2)).is_none(), "third is over the limit");
        assert_eq!(c.load(Ordering::Acquire), 2, "a refusal holds nothing");
        drop(a);
        assert!(admit(&c, Some(2)).is_some());
        drop(b);
        assert_eq!(c.load(Ordering::Acquire), 0);
        let held: Vec<_> = (0..100)
            .map(|_| admit(&c, None).expect("unlimited"))
            .collect();
        assert_eq!(c.load(Ordering::Acquire), 100);
        drop(held);
        assert_eq!(c.load(Ordering::Acquire), 0);
    }
}
