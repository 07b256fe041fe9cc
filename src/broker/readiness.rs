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

    /// Marks one prefetch as done.
    pub fn complete_one(&self) {
        let _ = self.pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
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
