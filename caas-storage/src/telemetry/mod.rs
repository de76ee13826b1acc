//! Observability: `tracing` spans for every repository call, the trace context carried
//! through the outbox to Kafka consumers, and metrics through the `metrics` facade.
//!
//! - [`trace`]: [`TraceContext`](trace::TraceContext) (W3C `traceparent`), the task-scoped
//!   current context, and how to bridge to OpenTelemetry. Also at `caas_storage::trace`.
//! - [`metrics`]: every metric name ([`metrics::names`]) and what records it.
//! - `spans.rs`: the repository span and its fields (listed in its docs and in
//!   `docs/operations.md`).
//! - `mongodb.rs`: the driver's pool (CMAP) and command monitoring events: pool and command
//!   metrics, and the slow-command log (target `caas_storage::slow_query`).
//! - `redis_info.rs`: the background task sampling Redis `INFO` (`metrics.redis_info_interval`).
//!
//! The library installs no subscriber and no recorder: with none, spans are disabled
//! callsites and metrics the facade's no-op.

pub mod metrics;
pub(crate) mod mongodb;
pub(crate) mod redis_info;
pub(crate) mod spans;
pub mod trace;
