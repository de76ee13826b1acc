//! `cache stats|invalidate`: the [`CacheLayer`](crate::cache::CacheLayer) over the declared
//! cached entities.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cache::CacheMetrics;
use crate::cli::args::{CacheCommand, EntityFilter};
use crate::cli::commands::tenant;
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::{Context, Registered};
use crate::entity::CacheStrategy;

/// One cached entity.
#[derive(Serialize)]
struct Stats {
    entity: &'static str,
    namespace: String,
    /// `cache_aside`, `write_through` or `write_behind`.
    strategy: &'static str,
    ttl_seconds: u64,
    /// Whether it has an in-process tier too.
    local_tier: bool,
    /// Entries in Redis (of `--tenant`, when given).
    redis_entries: u64,
    /// This process's counters (a CLI process's are about its own calls only; a service's are
    /// on its `/metrics`).
    metrics: CacheMetrics,
}

/// One entity's invalidation.
#[derive(Serialize)]
struct Invalidated {
    entity: &'static str,
    namespace: String,
    invalidated: u64,
}

/// The selected entities that are cached; naming an uncached one is a usage error.
fn cached<'c>(
    ctx: &'c Context<'_>,
    filter: &EntityFilter,
) -> Result<Vec<&'c Registered>, CliError> {
    let mut out = Vec::new();
    for r in ctx.select(filter)? {
        if r.meta.cache.is_some() {
            out.push(r);
        } else if !filter.entities.is_empty() {
            return Err(CliError::Usage {
                message: format!("`{}` is not cached", r.meta.name),
            });
        }
    }
    Ok(out)
}

pub(crate) async fn run(ctx: &Context<'_>, command: CacheCommand) -> Result<Report, CliError> {
    match command {
        CacheCommand::Stats { filter, tenant: t } => {
            let t = t.as_deref().map(tenant).transpose()?;
            let mut entities = Vec::new();
            for r in cached(ctx, &filter)? {
                let spec = r.meta.cache.expect("cached");
                let redis_entries = r
                    .ops
                    .entry_count(ctx.storage, t.as_ref())
                    .await
                    .context(|| format!("cache entry count of {}", r.meta.name))?;
                entities.push(Stats {
                    entity: r.meta.name,
                    namespace: r.namespace(),
                    strategy: match spec.strategy {
                        CacheStrategy::CacheAside => "cache_aside",
                        CacheStrategy::WriteThrough => "write_through",
                        CacheStrategy::WriteBehind => "write_behind",
                    },
                    ttl_seconds: spec.ttl.as_secs(),
                    local_tier: spec.local.is_some(),
                    redis_entries,
                    metrics: r.ops.metrics(ctx.storage),
                });
            }
            let bypassing = ctx.storage.cache().is_bypassing_redis();
            let mut text = String::new();
            for s in &entities {
                let _ = writeln!(
                    text,
                    "{:<12} {:<32} {:<13} ttl {:>6}s  {} entries in Redis{}",
                    s.entity,
                    s.namespace,
                    s.strategy,
                    s.ttl_seconds,
                    s.redis_entries,
                    if s.local_tier {
                        " (+ in-process tier)"
                    } else {
                        ""
                    }
                );
            }
            let total: u64 = entities.iter().map(|s| s.redis_entries).sum();
            let _ = writeln!(
                text,
                "{} cached entities, {total} entries{}{}",
                entities.len(),
                t.as_ref()
                    .map(|t| format!(" of tenant {t}"))
                    .unwrap_or_default(),
                if bypassing {
                    "; the breaker keeps calls away from Redis"
                } else {
                    ""
                }
            );
            Ok(Report::new(
                &serde_json::json!({
                    "tenant": t.as_ref().map(|t| t.as_str()),
                    "redis_entries": total,
                    "bypassing_redis": bypassing,
                    "entities": entities,
                }),
                text,
                Exit::Ok,
            ))
        }
        CacheCommand::Invalidate { filter, tenant: t } => {
            let t = tenant(&t)?;
            let mut entities = Vec::new();
            for r in cached(ctx, &filter)? {
                let invalidated = r
                    .ops
                    .invalidate_all(ctx.storage, Some(&t))
                    .await
                    .context(|| format!("cache invalidation of {}", r.meta.name))?;
                entities.push(Invalidated {
                    entity: r.meta.name,
                    namespace: r.namespace(),
                    invalidated,
                });
            }
            let total: u64 = entities.iter().map(|e| e.invalidated).sum();
            let mut text = String::new();
            for e in &entities {
                let _ = writeln!(
                    text,
                    "{:<12} {:<32} {}",
                    e.entity, e.namespace, e.invalidated
                );
            }
            let _ = writeln!(text, "{total} entries of tenant {t} invalidated");
            Ok(Report::new(
                &serde_json::json!({
                    "tenant": t.as_str(),
                    "invalidated": total,
                    "entities": entities,
                }),
                text,
                Exit::Ok,
            ))
        }
    }
}
