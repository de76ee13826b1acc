//! Transactional outbox: events recorded atomically with the writes that cause them, and the
//! relay that publishes them to Kafka.
//!
//! - [`EventEnvelope`]: the event as published (JSON value, headers, key = aggregate id).
//! - [`OutboxStore`] ([`Storage::outbox`](crate::Storage::outbox)): the `caas_outbox`
//!   collection of a database. On MongoDB with transactions, writers insert events as `ready`
//!   in the entity write's transaction ([`OutboxStore::insert_ready_in`]). Without
//!   transactions (FerretDB, standalone MongoDB) they follow the transaction-free protocol:
//!   [`prepare`](OutboxStore::prepare) before the write, [`commit`](OutboxStore::commit) or
//!   [`abandon`](OutboxStore::abandon) after it, and [`reconcile`](OutboxStore::reconcile)
//!   decides what a crash left `prepared` by looking at the entity document. Its records:
//!   [`PendingEvent`], [`WriteRef`], [`OutboxRecord`], [`EventState`].
//! - [`OutboxRelay`] ([`Storage::outbox_relay`](crate::Storage::outbox_relay)): drains
//!   `ready` records to Kafka, shard by shard ([`shard_of`]), holding a lease per shard (in
//!   [`LEASE_COLLECTION`]) so that several relays split the work without publishing an event
//!   twice (except across a relay crash: delivery is at-least-once).
//! - [`RelayMetrics`], [`OutboxLag`] and [`ReconcileReport`] for health.
//! - [`Deduplicator`] ([`Storage::deduplicator`](crate::Storage::deduplicator)) and
//!   [`envelope_from_message`] for consumers; [`handle_traced`] runs a handler in the trace
//!   the event was recorded in (the `traceparent` header the relay sends).
//!
//! The protocol, its guarantees and its limits are described in `docs/outbox.md`.

mod admin;
mod consumer;
mod envelope;
mod lease;
mod metrics;
mod reconcile;
mod record;
mod recording;
mod relay;
mod relay_reads;
mod store;

pub use consumer::{
    envelope_from_message, handle_traced, header_value, trace_context, Deduplicator,
    CONSUMED_COLLECTION,
};
pub use envelope::{payload_from_document, EventEnvelope};
pub use lease::LEASE_COLLECTION;
pub use metrics::RelayMetrics;
pub use record::{
    shard_of, EventState, OutboxLag, OutboxRecord, PendingEvent, ReconcileReport, WriteKind,
    WriteRef, DEFAULT_RECONCILE_AFTER, DEFAULT_SHARD_COUNT, OUTBOX_COLLECTION,
    PUBLISHED_COLLECTION, TRACEPARENT_FIELD,
};
pub(crate) use recording::Verdict;
pub use relay::{DrainReport, OutboxRelay, RelayArchive, RelayHandle, RelayOptions};
pub use store::OutboxStore;

use crate::connection::Connections;
use crate::error::Result;

/// The combined backlog of the outboxes of `databases`: pending (`prepared + ready`) count and
/// the age of the oldest pending event (for health reports).
pub(crate) async fn outbox_lag(conn: &Connections, databases: &[&str]) -> Result<OutboxLag> {
    let mut total = OutboxLag::default();
    for db in databases {
        total.merge(&OutboxStore::new(conn, db).lag().await?);
    }
    Ok(total)
}
