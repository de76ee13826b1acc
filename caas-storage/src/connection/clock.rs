//! The runtime's clock: real time, plus an offset a test moves forward in memory (through
//! `caas_storage::testing::TestClock`), so expiry (cache TTLs and fences, the in-process
//! tier, sessions, rate limits, claims) can be tested without waiting. On the servers nothing
//! moves it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the Unix epoch, plus what tests advanced. Cheap to clone (shared).
#[derive(Clone, Default, Debug)]
pub(crate) struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, in milliseconds since the Unix epoch, as this clock says.
    pub(crate) fn now_ms(&self) -> i64 {
        mongodb::bson::DateTime::now().timestamp_millis() + self.offset_ms.load(Ordering::SeqCst)
    }

    /// Moves this clock forward by `by`.
    pub(crate) fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}
