//! Transactional outbox: events recorded atomically with the writes that cause them, and the
//! relay that publishes them to Kafka.
//!
//! - [`EventEnvelope`] ([`envelope`]): the event as published (JSON value, headers, key =
//!   aggregate id).
//! - [`OutboxStore`] ([`store`]): the `caas_outbox` collection of a database. On MongoDB with
//!   transactions, writers insert events as `ready` in the entity write's transaction
//!   ([`OutboxStore::insert_ready_in`]). Without transactions (FerretDB, standalone MongoDB)
//!   they follow the transaction-free protocol: [`prepare`](OutboxStore::prepare) before the
//!   write, [`commit`](OutboxStore::commit) or [`abandon`](OutboxStore::abandon) after it, and
//!   [`reconcile`](OutboxStore::reconcile) decides what a crash left `prepared` by looking at
//!   the entity document.
//! - [`OutboxRelay`] ([`relay`]): drains `ready` records to Kafka, shard by shard, holding a
//!   lease per shard ([`lease`]) so that several relays split the work without publishing an
//!   event twice (except across a relay crash: delivery is at-least-once).
//! - [`RelayMetrics`] ([`metrics`]) and [`outbox_lag`] for health.
//! - [`Deduplicator`] and [`envelope_from_message`] ([`consumer`]) for consumers.
//!
//! The protocol, its guarantees and its limits are described in `docs/outbox.md`.

pub mod consumer;
pub mod envelope;
pub mod lease;
pub mod metrics;
pub mod relay;
pub mod store;

pub use consumer::{envelope_from_message, header_value, Deduplicator, CONSUMED_COLLECTION};
pub use envelope::{payload_from_document, EventEnvelope};
pub use lease::LEASE_COLLECTION;
pub use metrics::RelayMetrics;
pub use relay::{DrainReport, OutboxRelay, RelayHandle, RelayOptions};
pub use store::{
    shard_of, EventState, OutboxLag, OutboxRecord, OutboxStore, PendingEvent, ReconcileReport,
    WriteKind, WriteRef, DEFAULT_RECONCILE_AFTER, DEFAULT_SHARD_COUNT, OUTBOX_COLLECTION,
    PUBLISHED_COLLECTION,
};

use crate::error::Result;
use crate::storage::Storage;

/// The combined backlog of the outboxes of `databases`: pending (`prepared + ready`) count and
/// the age of the oldest pending event (for health reports).
pub async fn outbox_lag(storage: &Storage, databases: &[&str]) -> Result<OutboxLag> {
    let mut total = OutboxLag::default();
    for db in databases {
        total.merge(&OutboxStore::new(storage, db).lag().await?);
    }
    Ok(total)
}
