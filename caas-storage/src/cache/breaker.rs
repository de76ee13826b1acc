//! A circuit breaker in front of Redis: after a few consecutive failures the cache is skipped
//! (reads and writes go to MongoDB alone) for a cool-down, so an outage costs one timeout per
//! cool-down instead of one per call. One probe call is let through after the cool-down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

/// Whether a call may go to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Closed: go ahead.
    Go,
    /// The one probe after a cool-down.
    Probe,
    /// Open: skip the cache.
    Skip,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub(crate) fn permit(&self) -> Permit {
        let mut s = self.state.lock().expect("breaker lock");
        match *s {
            State::Closed { .. } => Permit::Go,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                Permit::Probe
            }
            State::Open { .. } | State::HalfOpen => Permit::Skip,
        }
    }

    /// Records a success; true when this closes an open breaker (Redis is back).
    pub(crate) fn success(&self) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        let recovered = matches!(*s, State::HalfOpen | State::Open { .. });
        *s = State::Closed { failures: 0 };
        recovered
    }

    pub(crate) fn failure(&self) {
        let mut s = self.state.lock().expect("breaker lock");
        *s = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + self.cooldown,
            },
        };
    }

    pub(crate) fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().expect("breaker lock"),
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
        b.failure();
        b.failure();
        assert_eq!(b.permit(), Permit::Go);
        b.failure();
        assert_eq!(b.permit(), Permit::Skip);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Skip, "one probe at a time");
        b.failure();
        assert_eq!(b.permit(), Permit::Skip, "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        assert!(b.success(), "a good probe closes and reports recovery");
        assert_eq!(b.permit(), Permit::Go);
        assert!(!b.success());
    }
}
