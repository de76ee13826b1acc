//! The one retry policy for transient MongoDB faults: bounded attempts, exponential backoff
//! with jitter, and a rule for what may be sent again.
//!
//! A call is retried only when sending it again cannot do anything twice:
//!
//! - **reads** ([`Retry::Read`]) on any transient fault ([`Error::is_transient`]): a network
//!   error, a server-selection timeout, a cleared pool, a failover code;
//! - **writes** ([`Retry::Unsent`]) only when the driver proves the command never reached a
//!   server: no server could be selected, the pool was cleared before the command went out,
//!   the connection was refused, or the server labelled the failure `NoWritesPerformed`. A
//!   write that fails after it may have been sent (a reset connection, a timeout) is not
//!   retried here; it is the pipeline's ambiguous case (`docs/outbox.md`), and on a replica set
//!   the driver's own retryable writes (one retry under the same transaction number, which the
//!   server de-duplicates) cover it;
//! - **the insert of one document outside a transaction** on any transient fault, even one that
//!   leaves open whether it landed: its `_id` is unique, so it cannot apply twice, and a
//!   duplicate `_id` on the resend is read back to tell the first send from another writer's
//!   document (`repo/apply.rs::insert_one`). A server restart closes pooled connections under
//!   the next calls; without this, the first insert on each failed.
//!
//! Each attempt is bounded by `mongodb.socket_timeout`; a call that timed out is not retried
//! (it may have been applied, and a second wait of the same length is what an outage costs
//! without a breaker). Calls inside a transaction are not retried one by one: the transaction
//! is the unit (`TransientTransactionError`). Redis is covered by the cache's circuit breaker
//! (an outage costs one timeout, then reads go to MongoDB) and Kafka by librdkafka's own
//! retries under the idempotent producer plus the relay's backoff and breaker.
//!
//! Every retry is counted in `caas_retries_total{component="mongodb"}` and logged at debug
//! level (target `caas_storage::retry`).

use std::future::IntoFuture;
use std::time::Duration;

use crate::config::RetryConfig;
use crate::error::{Component, Error, Result};

/// Which faults a call may be retried after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// An idempotent read: any transient fault.
    Read,
    /// A write: only faults that prove the command was never sent.
    Unsent,
}

impl Retry {
    /// Whether a call of this class that failed with `e` may be sent again.
    pub(crate) fn allows(self, e: &mongodb::error::Error) -> bool {
        match self {
            Retry::Read => Error::mongo("", e.clone()).is_transient(),
            Retry::Unsent => unsent(e),
        }
    }
}

/// Whether the driver's error proves the command never reached a server.
pub(crate) fn unsent(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    if e.contains_label("NoWritesPerformed") {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } | ErrorKind::ConnectionPoolCleared { .. } => true,
        ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

impl RetryConfig {
    /// The pause before attempt `attempt + 1` (`attempt` counts from 1): half of
    /// `min(max_backoff, initial_backoff * 2^(attempt-1))` fixed, the other half random, so
    /// retrying callers spread out but every pause is at least half the step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let half = step / 2;
        let spread = half.as_micros() as u64;
        let random = if spread == 0 {
            0
        } else {
            uuid::Uuid::new_v4().as_u128() as u64 % (spread + 1)
        };
        half + Duration::from_micros(random)
    }

    /// Runs the driver call `call` makes, each attempt bounded by `bound`, again after the
    /// faults `class` allows, up to `max_attempts` attempts in all. The driver's last result
    /// is returned as it is; only a timeout becomes an [`Error::Timeout`].
    pub(crate) async fn run<T, F>(
        &self,
        class: Retry,
        operation: &'static str,
        bound: Duration,
        mut call: impl FnMut() -> F,
    ) -> Result<mongodb::error::Result<T>>
    where
        F: IntoFuture<Output = mongodb::error::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(bound, call().into_future())
                .await
                .map_err(|_| Error::Timeout {
                    component: Component::Mongodb,
                    operation,
                    after: bound,
                })?;
            match &result {
                Err(e) if attempt < self.max_attempts && class.allows(e) => {
                    let pause = self.backoff(attempt);
                    tracing::debug!(
                        target: "caas_storage::retry",
                        operation, attempt, pause_ms = pause.as_millis() as u64, error = %e,
                        "retrying a MongoDB call"
                    );
                    metrics::counter!("caas_retries_total", "component" => "mongodb").increment(1);
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                _ => return Ok(result),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_of_it_random() {
        let p = policy();
        for _ in 0..200 {
            let first = p.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let second = p.backoff(2);
            assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
            let capped = p.backoff(9);
            assert!(capped >= Duration::from_millis(150) && capped <= Duration::from_millis(300));
        }
        let distinct: std::collections::BTreeSet<_> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(distinct.len() > 1, "the pauses are jittered");
    }

    #[test]
    fn writes_are_sent_again_only_when_they_never_left() {
        let refused = mongodb::error::Error::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ));
        let reset =
            mongodb::error::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(Retry::Unsent.allows(&refused));
        assert!(
            !Retry::Unsent.allows(&reset),
            "a reset write may have landed"
        );
        assert!(Retry::Read.allows(&reset));
        assert!(Retry::Read.allows(&refused));
    }
}
