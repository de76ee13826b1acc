//! Relay counters ([`RelayMetrics`] is their snapshot).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::record::{OutboxLag, ReconcileReport};

/// The shortest interval `published_per_sec` is computed over.
const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// A point-in-time view of one relay's counters. Counts are totals since the relay started;
/// `pending` and `oldest_pending_age_ms` are as of the relay's last backlog check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RelayMetrics {
    /// The relay's instance id.
    pub instance_id: String,
    /// Events delivered to Kafka and marked published.
    pub published: u64,
    /// Failed delivery attempts.
    pub failures: u64,
    /// Events parked after `max_attempts` failures.
    pub parked: u64,
    /// Times an event was held back because an earlier event of its aggregate was pending.
    pub deferred: u64,
    /// Prepared records reconciled to `ready`.
    pub reconciled_ready: u64,
    /// Prepared records reconciled to `abandoned`.
    pub reconciled_abandoned: u64,
    /// Prepared records parked as ambiguous by reconciliation.
    pub reconciled_parked: u64,
    /// Pending (`prepared + ready`) events across the relay's databases.
    pub pending: u64,
    /// Age of the oldest pending event, in milliseconds.
    pub oldest_pending_age_ms: Option<u64>,
    /// Publish rate over the last completed interval (at least one second).
    pub published_per_sec: f64,
    /// Shard leases held, over all databases.
    pub shards_held: u64,
    /// Drain passes run.
    pub passes: u64,
}

struct Rate {
    since: Instant,
    published_then: u64,
    per_sec: f64,
}

/// The live counters behind [`RelayMetrics`].
pub(crate) struct Counters {
    instance_id: String,
    pub published: AtomicU64,
    pub failures: AtomicU64,
    pub parked: AtomicU64,
    pub deferred: AtomicU64,
    reconciled_ready: AtomicU64,
    reconciled_abandoned: AtomicU64,
    reconciled_parked: AtomicU64,
    pending: AtomicU64,
    /// `u64::MAX` when nothing is pending.
    oldest_pending_age_ms: AtomicU64,
    pub shards_held: AtomicU64,
    pub passes: AtomicU64,
    rate: Mutex<Rate>,
}

impl Counters {
    pub(crate) fn new(instance_id: String) -> Self {
        Counters {
            instance_id,
            published: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            reconciled_ready: AtomicU64::new(0),
            reconciled_abandoned: AtomicU64::new(0),
            reconciled_parked: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            oldest_pending_age_ms: AtomicU64::new(u64::MAX),
            shards_held: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            rate: Mutex::new(Rate {
                since: Instant::now(),
                published_then: 0,
                per_sec: 0.0,
            }),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_reconcile(&self, r: &ReconcileReport) {
        Self::add(&self.reconciled_ready, r.ready);
        Self::add(&self.reconciled_abandoned, r.abandoned);
        Self::add(&self.reconciled_parked, r.parked);
    }

    pub(crate) fn record_lag(&self, lag: &OutboxLag) {
        self.pending.store(lag.pending, Ordering::Relaxed);
        self.oldest_pending_age_ms.store(
            lag.oldest_pending_age_ms.unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Closes the rate interval if it is long enough.
    pub(crate) fn tick(&self) {
        let published = self.published.load(Ordering::Relaxed);
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = r.since.elapsed();
        if elapsed >= RATE_INTERVAL {
            r.per_sec = published.saturating_sub(r.published_then) as f64 / elapsed.as_secs_f64();
            r.since = Instant::now();
            r.published_then = published;
        }
    }

    pub(crate) fn snapshot(&self) -> RelayMetrics {
        self.tick();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let oldest = load(&self.oldest_pending_age_ms);
        RelayMetrics {
            instance_id: self.instance_id.clone(),
            published: load(&self.published),
            failures: load(&self.failures),
            parked: load(&self.parked),
            deferred: load(&self.deferred),
            reconciled_ready: load(&self.reconciled_ready),
            reconciled_abandoned: load(&self.reconciled_abandoned),
            reconciled_parked: load(&self.reconciled_parked),
            pending: load(&self.pending),
            oldest_pending_age_ms: (oldest != u64::MAX).then_some(oldest),
            published_per_sec: self.rate.lock().unwrap_or_else(|p| p.into_inner()).per_sec,
            shards_held: load(&self.shards_held),
            passes: load(&self.passes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_counters() {
        let c = Counters::new("r1".into());
        Counters::add(&c.published, 5);
        c.record_reconcile(&ReconcileReport {
            ready: 2,
            abandoned: 1,
            ..Default::default()
        });
        c.record_lag(&OutboxLag {
            pending: 3,
            oldest_pending_age_ms: Some(40),
            ..Default::default()
        });
        let s = c.snapshot();
        assert_eq!(
            (s.published, s.reconciled_ready, s.reconciled_abandoned),
            (5, 2, 1)
        );
        assert_eq!((s.pending, s.oldest_pending_age_ms), (3, Some(40)));
        assert_eq!(s.instance_id, "r1");
        c.record_lag(&OutboxLag::default());
        assert_eq!(c.snapshot().oldest_pending_age_ms, None);
    }
}
