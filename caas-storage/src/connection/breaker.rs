//! The circuit breaker in front of Redis (the cache) and Kafka (the outbox relay's publishing
//! and the topic admin calls): after a few consecutive failures the server is skipped for a
//! cool-down (the cache goes to MongoDB alone; the relay leaves events pending), so an outage
//! costs one timeout per cool-down instead of one per call. After the cool-down one call is let
//! through as a probe; its outcome closes or reopens the breaker.
//!
//! Every breaker is named by its component (`redis`, `kafka`) and records, through the
//! `metrics` facade, the gauge `caas_breaker_open{component}` (1 open or half-open, 0 closed)
//! and the counter `caas_breaker_transitions_total{component, to = "open" | "closed"}`.
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
    component: &'static str,
}

/// What a breaker is doing, for health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the cool-down ends.
    Open,
    /// One probe call is out; its outcome decides.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go to the server.
#[derive(Debug)]
pub(crate) enum Permit {
    /// Closed: go ahead.
    Go,
    /// The one probe after a cool-down: report its outcome on it.
    Probe(ProbeGuard),
    /// Open: skip the server.
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

    /// Whether this is the one probe after a cool-down.
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self, Permit::Probe(_))
    }

    /// The call succeeded; true when this closes an open breaker (the server is back).
    pub(crate) fn success(self, breaker: &Breaker) -> bool {
        if let Permit::Probe(mut guard) = self {
            guard.breaker = None;
        }
        breaker.success()
    }

    /// The call failed.
    pub(crate) fn failure(self, breaker: &Breaker) {
        if let Permit::Probe(mut guard) = self {
            guard.breaker = None;
        }
        breaker.failure();
    }
}

impl Breaker {
    /// A closed breaker for `component` (the `component` label of its metrics) that opens
    /// after `threshold` consecutive failures for `cooldown`.
    pub(crate) fn new(component: &'static str, threshold: u32, cooldown: Duration) -> Self {
        crate::telemetry::metrics::breaker_state(component, false, false);
        Breaker {
            inner: Arc::new(Inner {
                state: Mutex::new(State::Closed { failures: 0 }),
                threshold: threshold.max(1),
                cooldown,
                component,
            }),
        }
    }

    /// Records a transition to open (`true`) or closed in the metrics.
    fn transition(&self, open: bool) {
        let component = self.inner.component;
        if open {
            tracing::warn!(component, cooldown = ?self.inner.cooldown, "circuit breaker opened");
        } else {
            tracing::info!(component, "circuit breaker closed");
        }
        crate::telemetry::metrics::breaker_state(component, open, true);
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
        drop(s);
        if recovered {
            self.transition(false);
        }
        recovered
    }

    fn failure(&self) {
        let mut s = self.inner.state.lock().expect("breaker lock");
        let (next, opens) = match *s {
            State::Closed { failures } if failures + 1 < self.inner.threshold => (
                State::Closed {
                    failures: failures + 1,
                },
                false,
            ),
            State::Closed { .. } => (
                State::Open {
                    until: Instant::now() + self.inner.cooldown,
                },
                true,
            ),
            // A failed probe (or a late failure while open): open again, no new transition.
            State::HalfOpen | State::Open { .. } => (
                State::Open {
                    until: Instant::now() + self.inner.cooldown,
                },
                false,
            ),
        };
        *s = next;
        drop(s);
        if opens {
            self.transition(true);
        }
    }

    /// What the breaker is doing now (an open breaker whose cool-down ended is reported open
    /// until the next call probes).
    pub(crate) fn state(&self) -> BreakerState {
        match *self.inner.state.lock().expect("breaker lock") {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
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

    /// Long enough that a busy machine does not end it between two calls that expect the
    /// breaker still open (a 20-30 ms cool-down could pass while the test thread waited).
    pub(super) const COOL_DOWN: Duration = Duration::from_millis(300);
    /// A wait past [`COOL_DOWN`].
    pub(super) const PAST_COOL_DOWN: Duration = Duration::from_millis(350);

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new("test", 3, COOL_DOWN);
        b.failure();
        b.failure();
        assert!(matches!(b.permit(), Permit::Go));
        b.failure();
        assert!(b.permit().skips());
        std::thread::sleep(PAST_COOL_DOWN);
        let probe = b.permit();
        assert!(matches!(probe, Permit::Probe(_)));
        assert!(b.permit().skips(), "one probe at a time");
        probe.failure(&b);
        assert!(b.permit().skips(), "a failed probe reopens");
        std::thread::sleep(PAST_COOL_DOWN);
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
        let b = Breaker::new("test", 1, COOL_DOWN);
        Permit::Go.failure(&b);
        std::thread::sleep(PAST_COOL_DOWN);
        let probe = b.permit();
        assert!(matches!(probe, Permit::Probe(_)));
        drop(probe); // a cancelled future
        assert!(b.is_open());
        std::thread::sleep(PAST_COOL_DOWN);
        assert!(
            matches!(b.permit(), Permit::Probe(_)),
            "another probe after the cool-down"
        );
    }
}

#[cfg(test)]
mod metric_tests {
    //! The breaker's metrics, read back through a recorder of this test's own.
    use super::tests::{COOL_DOWN, PAST_COOL_DOWN};
    use super::*;
    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Every counter and gauge by name and sorted labels.
    #[derive(Default)]
    struct Recorded {
        values: Mutex<BTreeMap<String, Arc<Cell>>>,
    }

    #[derive(Default)]
    struct Cell(AtomicU64);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl GaugeFn for Cell {
        fn increment(&self, value: f64) {
            self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + value);
        }
        fn decrement(&self, value: f64) {
            self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) - value);
        }
        fn set(&self, value: f64) {
            self.0.store(value.to_bits(), Ordering::Relaxed);
        }
    }

    impl Recorded {
        fn cell(&self, key: &Key) -> Arc<Cell> {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            self.values.lock().unwrap().entry(name).or_default().clone()
        }

        fn counter(&self, name: &str) -> u64 {
            self.values
                .lock()
                .unwrap()
                .get(name)
                .map_or(0, |c| c.0.load(Ordering::Relaxed))
        }

        fn gauge(&self, name: &str) -> Option<f64> {
            self.values
                .lock()
                .unwrap()
                .get(name)
                .map(|c| f64::from_bits(c.0.load(Ordering::Relaxed)))
        }
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn transitions_are_counted_and_the_gauge_follows_the_state() {
        let rec = Recorded::default();
        metrics::with_local_recorder(&rec, || {
            let b = Breaker::new("kafka", 2, COOL_DOWN);
            let open = "caas_breaker_open{component=kafka}";
            let to_open = "caas_breaker_transitions_total{component=kafka,to=open}";
            let to_closed = "caas_breaker_transitions_total{component=kafka,to=closed}";
            assert_eq!(rec.gauge(open), Some(0.0));
            b.permit().failure(&b);
            assert_eq!(
                rec.counter(to_open),
                0,
                "one failure is below the threshold"
            );
            b.permit().failure(&b);
            assert_eq!(b.state(), BreakerState::Open);
            assert_eq!(rec.gauge(open), Some(1.0));
            assert_eq!(rec.counter(to_open), 1);
            std::thread::sleep(PAST_COOL_DOWN);
            let probe = b.permit();
            assert!(probe.is_probe());
            assert_eq!(b.state(), BreakerState::HalfOpen);
            probe.failure(&b);
            assert_eq!(
                rec.counter(to_open),
                1,
                "a failed probe is no new transition"
            );
            std::thread::sleep(PAST_COOL_DOWN);
            assert!(b.permit().success(&b));
            assert_eq!(b.state(), BreakerState::Closed);
            assert_eq!(rec.gauge(open), Some(0.0));
            assert_eq!(rec.counter(to_closed), 1);
        });
    }
}
