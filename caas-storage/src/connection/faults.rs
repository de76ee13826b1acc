//! Fault points: places where a test can make a write stop as if the process died there.
//!
//! Arming one needs the `testing` feature ([`Storage::inject_fault`](crate::Storage)); without
//! it nothing can arm a fault and [`Faults::take`] is a lock and an empty check.

use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Component, Error, Result};

/// Points where a write can be made to stop as if the process died there (see
/// `Storage::inject_fault`, behind the `testing` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// After a write's outbox events are recorded, before the entity write.
    OutboxAfterPrepare,
    /// After the entity write, before its outbox events are marked.
    OutboxAfterWrite,
    /// After a write-behind round applied its batch, before it removes the batch from the
    /// queue.
    QueueAfterApply,
    /// After an audit queue drain appended its batch to the chain, before it records the
    /// batch as done.
    AuditQueueAfterApply,
}

/// The armed fault points of one connection layer.
#[derive(Debug, Default)]
pub(crate) struct Faults(Mutex<Vec<FaultPoint>>);

impl Faults {
    /// Arms `point` once.
    #[cfg(feature = "testing")]
    pub(crate) fn arm(&self, point: FaultPoint) {
        self.0.lock().expect("faults").push(point);
    }

    /// Consumes an armed fault at `point`: a timeout error, as if the process stopped there.
    pub(crate) fn take(&self, point: FaultPoint) -> Result<()> {
        let mut armed = self.0.lock().expect("faults");
        match armed.iter().position(|p| *p == point) {
            Some(i) => {
                armed.remove(i);
                Err(Error::Timeout {
                    component: Component::Mongodb,
                    operation: "injected fault (process stopped here)",
                    after: Duration::ZERO,
                })
            }
            None => Ok(()),
        }
    }
}
