//! Metrics, recorded through the `metrics` crate's facade: caas-storage records, the
//! service chooses the exporter (Prometheus, StatsD, OpenTelemetry...) by installing a
//! recorder. With none installed every call here is the facade's no-op.
//!
//! The names are the constants in [`names`]; `docs/operations.md` describes each, its labels
//! and what to alert on. Label values are `&'static str` wherever the value is known at compile
//! time (entity, operation, tier, outcome), so recording allocates no label strings.

use std::time::Duration;

use ::metrics::{counter, gauge, histogram};

/// Every metric name caas-storage records, in one place.
pub mod names {
    /// Counter {entity, operation, outcome}: repository calls (reads and writes); `outcome`
    /// is `ok` or the error's [`kind`](crate::Error::kind).
    pub const REPOSITORY_OPERATIONS_TOTAL: &str = "caas_repository_operations_total";
    /// Histogram {entity, operation}: duration of repository calls, in seconds.
    pub const REPOSITORY_OPERATION_DURATION_SECONDS: &str =
        "caas_repository_operation_duration_seconds";
    /// Counter {entity, operation, kind}: repository calls that failed, by error kind.
    pub const REPOSITORY_ERRORS_TOTAL: &str = "caas_repository_errors_total";

    /// Counter {entity, tier = `local` | `redis`, result = `hit` | `miss`}: cache lookups.
    pub const CACHE_REQUESTS_TOTAL: &str = "caas_cache_requests_total";
    /// Counter {entity, tier = `local`}: entries the in-process tier evicted (size or expiry).
    pub const CACHE_EVICTIONS_TOTAL: &str = "caas_cache_evictions_total";
    /// Counter {entity}: cache entries invalidated (by writes and explicit calls).
    pub const CACHE_INVALIDATIONS_TOTAL: &str = "caas_cache_invalidations_total";
    /// Gauge {component}: 1 while the component's circuit breaker is open, else 0.
    pub const BREAKER_OPEN: &str = "caas_breaker_open";
    /// Counter {component, to = `open` | `closed`}: circuit breaker transitions.
    pub const BREAKER_TRANSITIONS_TOTAL: &str = "caas_breaker_transitions_total";

    /// Gauge {state = `in_use` | `open`}: MongoDB pool connections (all servers).
    pub const MONGODB_POOL_CONNECTIONS: &str = "caas_mongodb_pool_connections";
    /// Gauge: the MongoDB pool's maximum size per server (`mongodb.max_pool_size`).
    pub const MONGODB_POOL_MAX_SIZE: &str = "caas_mongodb_pool_max_size";
    /// Histogram: seconds from a connection checkout's start to its connection (or failure).
    pub const MONGODB_POOL_WAIT_SECONDS: &str = "caas_mongodb_pool_wait_seconds";
    /// Counter {reason = `timeout` | `connection_error` | `pool_closed` | `other`}: checkouts
    /// that failed.
    pub const MONGODB_POOL_CHECKOUT_FAILURES_TOTAL: &str =
        "caas_mongodb_pool_checkout_failures_total";
    /// Histogram {command}: MongoDB command round trips, in seconds.
    pub const MONGODB_COMMAND_DURATION_SECONDS: &str = "caas_mongodb_command_duration_seconds";
    /// Counter {command}: MongoDB commands that failed.
    pub const MONGODB_COMMAND_FAILURES_TOTAL: &str = "caas_mongodb_command_failures_total";
    /// Counter {command}: commands slower than `mongodb.slow_command_threshold`.
    pub const MONGODB_SLOW_COMMANDS_TOTAL: &str = "caas_mongodb_slow_commands_total";

    /// Gauge {entity}: writes waiting in the write-behind queue (sampled by the flusher).
    pub const WRITE_BEHIND_BACKLOG: &str = "caas_write_behind_backlog";
    /// Gauge {database}: outbox events not yet published (set by the relay).
    pub const OUTBOX_PENDING: &str = "caas_outbox_pending";
    /// Gauge {database}: age of the oldest unpublished outbox event, in seconds.
    pub const OUTBOX_LAG_SECONDS: &str = "caas_outbox_lag_seconds";
    /// Counter {topic}: events the relay delivered to Kafka.
    pub const OUTBOX_PUBLISHED_TOTAL: &str = "caas_outbox_published_total";
    /// Counter {topic}: failed delivery attempts.
    pub const OUTBOX_PUBLISH_FAILURES_TOTAL: &str = "caas_outbox_publish_failures_total";
    /// Counter {topic}: events parked after `max_attempts` failures.
    pub const OUTBOX_PARKED_TOTAL: &str = "caas_outbox_parked_total";

    /// Counter {outcome = `committed` | `aborted`}: multi-document transactions.
    pub const TRANSACTIONS_TOTAL: &str = "caas_transactions_total";

    /// Gauge {node}: Redis `used_memory`, in bytes.
    pub const REDIS_USED_MEMORY_BYTES: &str = "caas_redis_used_memory_bytes";
    /// Counter {node}: Redis `evicted_keys` (the server's own total).
    pub const REDIS_EVICTED_KEYS_TOTAL: &str = "caas_redis_evicted_keys_total";
    /// Gauge {node}: Redis `connected_clients`.
    pub const REDIS_CONNECTED_CLIENTS: &str = "caas_redis_connected_clients";
}

use names::*;

/// One repository call's outcome and duration.
pub(crate) fn repository_call(
    entity: &'static str,
    operation: &'static str,
    error_kind: Option<&'static str>,
    elapsed: Duration,
) {
    let outcome = error_kind.unwrap_or("ok");
    counter!(REPOSITORY_OPERATIONS_TOTAL, "entity" => entity, "operation" => operation, "outcome" => outcome)
        .increment(1);
    histogram!(REPOSITORY_OPERATION_DURATION_SECONDS, "entity" => entity, "operation" => operation)
        .record(elapsed.as_secs_f64());
    if let Some(kind) = error_kind {
        counter!(REPOSITORY_ERRORS_TOTAL, "entity" => entity, "operation" => operation, "kind" => kind)
            .increment(1);
    }
}

/// A cache lookup in `tier` (`local` or `redis`).
pub(crate) fn cache_lookup(entity: &'static str, tier: &'static str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!(CACHE_REQUESTS_TOTAL, "entity" => entity, "tier" => tier, "result" => result)
        .increment(1);
}

/// An entry the in-process tier evicted.
pub(crate) fn cache_eviction(entity: &'static str) {
    counter!(CACHE_EVICTIONS_TOTAL, "entity" => entity, "tier" => "local").increment(1);
}

/// `n` cache entries invalidated.
pub(crate) fn cache_invalidations(entity: &'static str, n: u64) {
    counter!(CACHE_INVALIDATIONS_TOTAL, "entity" => entity).increment(n);
}

/// The breaker of `component` is now `open` (or closed); `transition` counts it as a change.
pub(crate) fn breaker_state(component: &'static str, open: bool, transition: bool) {
    gauge!(BREAKER_OPEN, "component" => component).set(if open { 1.0 } else { 0.0 });
    if transition {
        let to = if open { "open" } else { "closed" };
        counter!(BREAKER_TRANSITIONS_TOTAL, "component" => component, "to" => to).increment(1);
    }
}

/// A multi-document transaction ended.
pub(crate) fn transaction(committed: bool) {
    let outcome = if committed { "committed" } else { "aborted" };
    counter!(TRANSACTIONS_TOTAL, "outcome" => outcome).increment(1);
}

/// The write-behind queue of `entity` holds `len` writes.
pub(crate) fn write_behind_backlog(entity: &'static str, len: u64) {
    gauge!(WRITE_BEHIND_BACKLOG, "entity" => entity).set(len as f64);
}

/// The outbox of `database`: pending events and the age of the oldest.
pub(crate) fn outbox_backlog(database: &str, pending: u64, oldest: Option<Duration>) {
    let database = database.to_owned();
    gauge!(OUTBOX_PENDING, "database" => database.clone()).set(pending as f64);
    gauge!(OUTBOX_LAG_SECONDS, "database" => database).set(oldest.map_or(0.0, |d| d.as_secs_f64()));
}

/// Relay deliveries to `topic`: `published` delivered, `failed` attempts failed, `parked`
/// given up on.
pub(crate) fn outbox_deliveries(topic: &str, published: u64, failed: u64, parked: u64) {
    for (name, n) in [
        (OUTBOX_PUBLISHED_TOTAL, published),
        (OUTBOX_PUBLISH_FAILURES_TOTAL, failed),
        (OUTBOX_PARKED_TOTAL, parked),
    ] {
        if n > 0 {
            counter!(name, "topic" => topic.to_owned()).increment(n);
        }
    }
}
