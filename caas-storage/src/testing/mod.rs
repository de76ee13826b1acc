//! Testing a service without servers: [`Storage::in_memory`], the events a call recorded
//! ([`Storage::test_events`]), and a clock tests move ([`TestClock`]).
//!
//! The memory backend sits below the repository pipeline (`backend/memory`): tenancy,
//! versions, events, consistency and the cache rules are the same code on both backends, and
//! only where documents and cache entries live differs. `docs/testing.md` says what it does
//! not model.
//!
//! ```
//! # async fn demo() -> caas_storage::Result<()> {
//! use caas_storage::Storage;
//! let storage = Storage::in_memory().await;
//! assert!(storage.is_in_memory());
//! assert!(storage.test_events().await?.is_empty());
//! # Ok(()) }
//! ```

mod harness;
mod redis;

pub use harness::{run_test, TestOutcome, TEST_BACKEND_VAR};

use std::sync::Arc;
use std::time::Duration;

use crate::config::StorageConfig;
use crate::connection::{Clock, Connections, RedisConnection};
use crate::error::Result;
use crate::outbox::{OutboxRecord, OutboxStore};
use crate::storage::{Storage, TestState};

/// The clock of an in-memory [`Storage`]: real time plus what the test advanced. Everything
/// time-based in memory follows it: cache entries and generation fences in the Redis tier,
/// the in-process tier's entries, session and rate-limit windows, version claims and the
/// times the runtime stamps on documents. So a test sees an entry expire without waiting.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct TestClock(Clock);

impl TestClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.advance(by);
    }

    /// Now, as this clock says: what an in-memory storage stamps on a write made now.
    pub fn now(&self) -> crate::bson::DateTime {
        crate::bson::DateTime::from_millis(self.0.now_ms())
    }

    /// Stops real time for this clock: from then on only [`advance`](Self::advance) moves it,
    /// so a test can stand exactly at an expiry (a cache entry with a 30 s TTL is there at
    /// 29.999 s and gone at 30 s). While the clock runs, real time also passes between two
    /// calls, so a test that needs such a boundary freezes first. Freezing twice does nothing;
    /// the clock stays frozen for the life of its storage.
    pub fn freeze(&self) {
        self.0.freeze();
    }
}

impl Storage {
    /// A storage whose documents and cache live in this process, with the default
    /// configuration (which declares the seed's Kafka topics; use
    /// [`in_memory_with`](Self::in_memory_with) to declare yours). Cheap to clone, and the
    /// same type as a connected storage, so it goes into app state as is.
    ///
    /// Repositories behave as on the servers: tenant scope, versions, unique indexes, soft
    /// deletes, transactions, cache fences and invalidation, outbox events (read them with
    /// [`test_events`](Self::test_events); nothing is sent to Kafka), sessions and rate
    /// limits (on the [`test_clock`](Self::test_clock)). The outbox relay, the audit log,
    /// the batch migrator, backups, restores, tenant erasure, retention, the TTL sweeper and
    /// Kafka topic administration need a server and return
    /// [`Error::Unsupported`](crate::Error::Unsupported); so does anything else that would
    /// reach MongoDB, as a server-selection error (`docs/testing.md`).
    pub async fn in_memory() -> Storage {
        Self::in_memory_with(StorageConfig::default())
            .await
            .expect("the default configuration is valid")
    }

    /// [`in_memory`](Self::in_memory) with `config` (its MongoDB, Redis and Kafka addresses
    /// are not used; everything else applies: topics, cache and consistency settings).
    pub async fn in_memory_with(config: StorageConfig) -> Result<Storage> {
        let clock = Clock::default();
        let redis = RedisConnection::memory(Arc::new(redis::MemoryRedis::new(clock.clone())));
        let conn = Connections::in_memory(config, redis, clock)?;
        Storage::assemble(conn, &[], TestState::default())
    }

    /// Whether this storage is in memory ([`in_memory`](Self::in_memory)).
    pub fn is_in_memory(&self) -> bool {
        self.connections().memory().is_some()
    }

    /// The clock of an in-memory storage; `None` on servers, whose clocks tests do not move.
    pub fn test_clock(&self) -> Option<TestClock> {
        let conn = self.connections();
        conn.memory().map(|_| TestClock(conn.clock().clone()))
    }

    /// Every event recorded for writes that happened, on every database a repository of this
    /// handle writes to, oldest first (see [`OutboxStore::recorded_events`]). On servers too:
    /// the records are read from the outbox collections.
    pub async fn test_events(&self) -> Result<Vec<OutboxRecord>> {
        let mut databases: Vec<&str> = self
            .registered()
            .into_iter()
            .filter(|m| m.outbox.is_some())
            .map(|m| m.database)
            .collect();
        databases.sort_unstable();
        databases.dedup();
        let mut all = Vec::new();
        for db in databases {
            all.extend(
                OutboxStore::new(self.connections(), db)
                    .recorded_events()
                    .await?,
            );
        }
        all.sort_by(|a, b| {
            (a.created_at, &a.envelope.event_id).cmp(&(b.created_at, &b.envelope.event_id))
        });
        Ok(all)
    }

    /// The events recorded since the last call (see [`test_events`](Self::test_events)):
    /// what the calls in between published.
    pub async fn take_test_events(&self) -> Result<Vec<OutboxRecord>> {
        let all = self.test_events().await?;
        let mut taken = self
            .test_state()
            .taken
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(all
            .into_iter()
            .filter(|r| taken.insert(r.envelope.event_id.clone()))
            .collect())
    }
}
