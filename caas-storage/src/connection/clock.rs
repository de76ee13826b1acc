//! The runtime's clock: real time, plus an offset a test moves forward in memory (through
//! `caas_storage::testing::TestClock`), so expiry (cache TTLs and fences, the in-process
//! tier, sessions, rate limits, claims) can be tested without waiting. On the servers nothing
//! moves it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the Unix epoch, plus what tests advanced. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    offset_ms: Arc<AtomicI64>,
    /// The instant real time stopped for this clock, or [`RUNNING`] while it follows real time.
    frozen_at_ms: Arc<AtomicI64>,
}

/// The value of `frozen_at_ms` while the clock follows real time.
const RUNNING: i64 = i64::MIN;

impl Default for Clock {
    fn default() -> Self {
        Clock {
            offset_ms: Arc::default(),
            frozen_at_ms: Arc::new(AtomicI64::new(RUNNING)),
        }
    }
}

impl Clock {
    /// Now, in milliseconds since the Unix epoch, as this clock says.
    pub(crate) fn now_ms(&self) -> i64 {
        let base = match self.frozen_at_ms.load(Ordering::SeqCst) {
            RUNNING => mongodb::bson::DateTime::now().timestamp_millis(),
            frozen => frozen,
        };
        base + self.offset_ms.load(Ordering::SeqCst)
    }

    /// Stops real time for this clock: from now on only [`advance`](Self::advance) moves it,
    /// so a test can put it exactly at an expiry boundary. Freezing a frozen clock does nothing.
    pub(crate) fn freeze(&self) {
        let now = mongodb::bson::DateTime::now().timestamp_millis();
        let _ =
            self.frozen_at_ms
                .compare_exchange(RUNNING, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Moves this clock forward by `by`.
    pub(crate) fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let clock = Clock::default();
        clock.freeze();
        let at = clock.now_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now_ms(), at, "real time does not move a frozen clock");
        clock.advance(Duration::from_millis(7));
        assert_eq!(clock.now_ms(), at + 7);
        clock.freeze();
        assert_eq!(clock.now_ms(), at + 7, "freezing again keeps the time");
    }

    #[test]
    fn a_running_clock_follows_real_time_plus_the_offset() {
        let clock = Clock::default();
        let before = mongodb::bson::DateTime::now().timestamp_millis();
        clock.advance(Duration::from_secs(60));
        let now = clock.now_ms();
        let after = mongodb::bson::DateTime::now().timestamp_millis();
        assert!(now >= before + 60_000 && now <= after + 60_000, "{now}");
    }
}
