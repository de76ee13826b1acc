//! The `tracing` spans of repository calls: one `caas_storage.repository` span (info level) per
//! call, reads and writes alike, with child spans at debug level for the cache
//! (`caas_storage.cache`) and MongoDB (`caas_storage.mongodb`) steps.
//!
//! Fields of the repository span (OpenTelemetry database conventions where one exists):
//!
//! | field | value |
//! |---|---|
//! | `otel.name` | `<operation> <collection>` |
//! | `otel.kind` | `client` |
//! | `db.system` | `mongodb` |
//! | `db.operation` | the call: `find_by_id`, `insert`, `update_checked`, `find`, `page`, ... |
//! | `db.collection.name` | the entity's collection |
//! | `db.namespace` | the entity's database |
//! | `caas.entity` | the entity's name |
//! | `caas.tenant` | the tenant id |
//! | `caas.consistency` | the consistency model the call follows |
//! | `caas.cache` | by-id reads of cached entities: `local_hit`, `redis_hit`, `miss`, `bypass` |
//! | `caas.outcome` | `ok`, or the error's [`kind`](crate::Error::kind) |
//! | `otel.status_code` | `OK` or `ERROR` |
//! | `error.type` | the error's kind, on failure |
//! | `duration_ms` | the call's duration |
//! | `trace_id`, `span_id`, `parent_span_id` | the call's [`TraceContext`] |
//!
//! No field or event carries a document value: filters, documents and secret fields stay out
//! (the tenant id is the one value recorded). The outcome and duration also go to the
//! repository metrics ([`names`](super::metrics::names)).

use std::future::Future;
use std::time::Instant;

use tracing::field::Empty;
use tracing::Instrument;

use super::trace::TraceContext;
use crate::consistency::Consistency;
use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::tenant::TenantId;

/// Target of the repository spans.
pub(crate) const TARGET: &str = "caas_storage::repository";

/// Runs one repository call (`f`) under its span, as its trace context, and records its
/// outcome and duration (span fields and metrics).
pub(crate) fn repository_call<'f, T, F>(
    meta: &'static EntityMeta,
    operation: &'static str,
    tenant: &TenantId,
    consistency: Consistency,
    f: F,
) -> impl Future<Output = Result<T>> + 'f
where
    F: Future<Output = Result<T>> + 'f,
    T: 'f,
{
    repository_call_classified(meta, operation, tenant, consistency, f, |r| {
        r.as_ref().err().map(Error::kind)
    })
}

/// [`repository_call`], with `failure` telling which results are failures (by error kind):
/// e.g. an insert the pipeline reports `Ok` with a per-document duplicate.
///
/// Not an `async fn`: the call's future is boxed once here and the wrappers around it stay a
/// pointer wide (nested `async fn`s each copy, and hold twice, a future as large as the
/// call's whole state machine; that cost more than all the recording).
pub(crate) fn repository_call_classified<'f, T, F, C>(
    meta: &'static EntityMeta,
    operation: &'static str,
    tenant: &TenantId,
    consistency: Consistency,
    f: F,
    failure: C,
) -> impl Future<Output = Result<T>> + 'f
where
    F: Future<Output = Result<T>> + 'f,
    T: 'f,
    C: FnOnce(&Result<T>) -> Option<&'static str> + 'f,
{
    let f = Box::pin(f);
    let (ctx, parent) = TraceContext::for_call();
    let span = tracing::info_span!(
        target: TARGET,
        "caas_storage.repository",
        otel.name = format!("{operation} {}", meta.collection),
        otel.kind = "client",
        db.system = "mongodb",
        db.operation = operation,
        db.collection.name = meta.collection,
        db.namespace = meta.database,
        caas.entity = meta.name,
        caas.tenant = %tenant,
        caas.consistency = consistency.as_str(),
        caas.cache = Empty,
        caas.outcome = Empty,
        otel.status_code = Empty,
        error.type = Empty,
        duration_ms = Empty,
        trace_id = %ctx.trace_id(),
        span_id = %ctx.span_id(),
        parent_span_id = parent.map(tracing::field::display),
    );
    async move {
        let started = Instant::now();
        let result = ctx.scope(f.instrument(span.clone())).await;
        let elapsed = started.elapsed();
        let kind = failure(&result);
        if !span.is_disabled() {
            span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
            span.record("caas.outcome", kind.unwrap_or("ok"));
            span.record(
                "otel.status_code",
                if kind.is_some() { "ERROR" } else { "OK" },
            );
            if let Some(kind) = kind {
                span.record("error.type", kind);
                tracing::debug!(target: TARGET, parent: &span, operation, error.type = kind, "repository call failed");
            }
        }
        super::metrics::repository_call(meta.name, operation, kind, elapsed);
        result
    }
}

/// Records on the current repository span how the cache served a by-id read.
pub(crate) fn cache_outcome(span: &tracing::Span, outcome: &'static str) {
    span.record("caas.cache", outcome);
}

/// The debug span of a MongoDB step of a call.
pub(crate) fn mongodb(command: &'static str) -> tracing::Span {
    tracing::debug_span!(target: TARGET, "caas_storage.mongodb", db.operation = command)
}

/// The debug span of the cache step of a by-id read.
pub(crate) fn cache() -> tracing::Span {
    tracing::debug_span!(target: TARGET, "caas_storage.cache", caas.cache = Empty)
}
