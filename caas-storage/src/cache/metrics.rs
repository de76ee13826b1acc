//! Per-entity cache counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Live counters of one entity type.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub local_hits: AtomicU64,
    pub local_misses: AtomicU64,
    pub redis_hits: AtomicU64,
    pub redis_misses: AtomicU64,
    pub sets: AtomicU64,
    pub fenced_puts: AtomicU64,
    pub invalidations: AtomicU64,
    pub errors: AtomicU64,
    pub decode_errors: AtomicU64,
    pub bypassed: AtomicU64,
    pub db_loads: AtomicU64,
    pub load_nanos: AtomicU64,
    pub stampede_waits: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CacheMetrics {
        let loads = self.db_loads.load(Relaxed);
        CacheMetrics {
            local_hits: self.local_hits.load(Relaxed),
            local_misses: self.local_misses.load(Relaxed),
            redis_hits: self.redis_hits.load(Relaxed),
            redis_misses: self.redis_misses.load(Relaxed),
            sets: self.sets.load(Relaxed),
            fenced_puts: self.fenced_puts.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            errors: self.errors.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            bypassed: self.bypassed.load(Relaxed),
            db_loads: loads,
            mean_load_ms: if loads == 0 {
                0.0
            } else {
                self.load_nanos.load(Relaxed) as f64 / loads as f64 / 1e6
            },
            stampede_waits: self.stampede_waits.load(Relaxed),
        }
    }
}

/// A snapshot of one entity type's cache counters since the handle was created.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheMetrics {
    /// Reads served by the in-process tier.
    pub local_hits: u64,
    /// Reads the in-process tier could not serve.
    pub local_misses: u64,
    /// Reads served by Redis.
    pub redis_hits: u64,
    /// Reads Redis could not serve.
    pub redis_misses: u64,
    /// Entries written to Redis.
    pub sets: u64,
    /// Puts refused because a write happened while the value was loaded (stale-set race
    /// prevented) or a newer version was already cached.
    pub fenced_puts: u64,
    /// Entries invalidated by writes or by explicit calls.
    pub invalidations: u64,
    /// Redis calls that failed or timed out.
    pub errors: u64,
    /// Entries that did not decode (deleted and treated as misses).
    pub decode_errors: u64,
    /// Reads that skipped Redis (breaker open, or namespace awaiting cleanup after an outage).
    pub bypassed: u64,
    /// Loads from MongoDB after a miss.
    pub db_loads: u64,
    /// Mean duration of those loads.
    pub mean_load_ms: f64,
    /// Misses that waited for another caller's load instead of loading themselves.
    pub stampede_waits: u64,
}
