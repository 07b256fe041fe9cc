//! Readiness: a one-way latch that opens once every prefetch is in the cache.
//!
//! It never closes again: an Entra outage after start is ridden out by the cache, and
//! pulling the pod out of service would only make it worse
//! (docs/architecture.md#start-up-readiness-and-shutdown).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts prefetches still outstanding.
#[derive(Debug, Default)]
pub struct Readiness {
    pending: AtomicUsize,
}

impl Readiness {
    /// A latch waiting for `pending` prefetches.
    pub fn new(pending: usize) -> Self {
        Self { pending: AtomicUsize::new(pending) }
    }

    /// Marks one prefetch as done. True for exactly one call: the one that opened the latch
    /// (so that becoming ready is logged once).
    pub fn complete_one(&self) -> bool {
        self.pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) == Ok(1)
    }

    /// Whether every prefetch is done.
    pub fn is_ready(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
    }

    /// Prefetches still outstanding.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_prefetch_opens_the_latch() {
        let readiness = Readiness::new(2);
        assert!(!readiness.complete_one());
        assert!(!readiness.is_ready());
        assert!(readiness.complete_one(), "the second of two opens it");
        assert!(readiness.is_ready());
        assert!(!readiness.complete_one(), "an open latch cannot open again");
        assert!(!Readiness::new(0).complete_one());
    }
}
