//! A circuit breaker in front of Redis: after a few consecutive failures the cache is skipped
//! (reads and writes go to MongoDB alone) for a cool-down, so an outage costs one timeout per
//! cool-down instead of one per call. After the cool-down one call is let through as a probe;
//! its outcome closes or reopens the breaker.
//!
//! The probe is a [`Permit::Probe`] guard: a probe that is neither reported a success nor a
//! failure (its future was cancelled, or its caller forgot) reopens the breaker when dropped,
//! so the next cool-down sends another probe. The breaker can never stay half-open.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// See the module docs. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

/// Whether a call may go to Redis.
#[derive(Debug)]
pub(crate) enum Permit {
    /// Closed: go ahead.
    Go,
    /// The one probe after a cool-down: report its outcome on it.
    Probe(ProbeGuard),
    /// Open: skip the cache.
    Skip,
}

/// The probe's obligation to report; dropped unreported, it reopens the breaker.
#[derive(Debug)]
pub(crate) struct ProbeGuard {
    breaker: Option<Breaker>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.reopen();
        }
    }
}

impl Permit {
    /// Whether the call must be skipped.
    pub(crate) fn skips(&self) -> bool {
        matches!(self, Permit::Skip)
    }

    /// The call succeeded; true when this closes an open breaker (Redis is back).
    pub(crate) fn success(self, breaker: &Breaker) -> bool {
        if let Permit::Probe(mut guard) = self {
            guard.breaker = None;
        }
        breaker.success()
    }

    /// The call failed; true when this opens a closed breaker.
    pub(crate) fn failure(self, breaker: &Breaker) -> bool {
        if let Permit::Probe(mut guard) = self {
            guard.breaker = None;
        }
        breaker.failure()
    }
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            inner: Arc::new(Inner {
                state: Mutex::new(State::Closed { failures: 0 }),
                threshold: threshold.max(1),
                cooldown,
            }),
        }
    }

    pub(crate) fn permit(&self) -> Permit {
        let mut s = self.inner.state.lock().expect("breaker lock");
        match *s {
            State::Closed { .. } => Permit::Go,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                Permit::Probe(ProbeGuard {
                    breaker: Some(self.clone()),
                })
            }
            State::Open { .. } | State::HalfOpen => Permit::Skip,
        }
    }

    fn success(&self) -> bool {
        let mut s = self.inner.state.lock().expect("breaker lock");
        let recovered = matches!(*s, State::HalfOpen | State::Open { .. });
        *s = State::Closed { failures: 0 };
        recovered
    }

    fn failure(&self) -> bool {
        let mut s = self.inner.state.lock().expect("breaker lock");
        let was_closed = matches!(*s, State::Closed { .. });
        *s = match *s {
            State::Closed { failures } if failures + 1 < self.inner.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + self.inner.cooldown,
            },
        };
        was_closed && !matches!(*s, State::Closed { .. })
    }

    /// An unreported probe: open again for a cool-down, so that another probe follows.
    fn reopen(&self) {
        let mut s = self.inner.state.lock().expect("breaker lock");
        if *s == State::HalfOpen {
            *s = State::Open {
                until: Instant::now() + self.inner.cooldown,
            };
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        !matches!(
            *self.inner.state.lock().expect("breaker lock"),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(matches!(b.permit(), Permit::Go));
        assert!(b.failure(), "the failure that opens the breaker says so");
        assert!(b.permit().skips());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.permit();
        assert!(matches!(probe, Permit::Probe(_)));
        assert!(b.permit().skips(), "one probe at a time");
        assert!(!probe.failure(&b), "a failed probe was not closed");
        assert!(b.permit().skips(), "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.permit();
        assert!(
            probe.success(&b),
            "a good probe closes and reports recovery"
        );
        assert!(matches!(b.permit(), Permit::Go));
        assert!(!Permit::Go.success(&b));
    }

    #[test]
    fn a_probe_dropped_unreported_reopens_instead_of_staying_half_open() {
        let b = Breaker::new(1, Duration::from_millis(20));
        Permit::Go.failure(&b);
        std::thread::sleep(Duration::from_millis(30));
        let probe = b.permit();
        assert!(matches!(probe, Permit::Probe(_)));
        drop(probe); // a cancelled future
        assert!(b.is_open());
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            matches!(b.permit(), Permit::Probe(_)),
            "another probe after the cool-down"
        );
    }
}
