//! The Redis `INFO` sampler: a background task of every `Storage` that reads `INFO` every
//! `metrics.redis_info_interval` (`0s`: not started) and sets
//! `caas_redis_used_memory_bytes`, `caas_redis_evicted_keys_total` (the server's own total,
//! as an absolute counter) and `caas_redis_connected_clients`, labelled by node (`host:port`;
//! on a Redis Cluster one sample per primary). It stops when the last `Storage` handle drops.

use std::future::Future;
use std::time::Duration;

use ::metrics::{counter, gauge};

use super::metrics::names::*;

/// Samples every `interval` until aborted (the `Storage` aborts it when dropped): `sample`
/// returns `(node, INFO reply)` pairs, each bounded by `bound`.
pub(crate) async fn run<F, Fut, E>(interval: Duration, bound: Duration, mut sample: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<(String, String)>, E>>,
    E: std::fmt::Display,
{
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match tokio::time::timeout(bound, sample()).await {
            Ok(Ok(samples)) => {
                for (node, info) in samples {
                    record(node, &info);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not sample Redis INFO"),
            Err(_) => tracing::debug!("Redis INFO sample timed out"),
        }
    }
}

/// Sets the metrics of one node's `INFO` reply.
pub(crate) fn record(node: String, info: &str) {
    for (field, name, counter_kind) in [
        ("used_memory", REDIS_USED_MEMORY_BYTES, false),
        ("evicted_keys", REDIS_EVICTED_KEYS_TOTAL, true),
        ("connected_clients", REDIS_CONNECTED_CLIENTS, false),
    ] {
        let Some(v) = field_of(info, field) else {
            continue;
        };
        if counter_kind {
            counter!(name, "node" => node.clone()).absolute(v);
        } else {
            gauge!(name, "node" => node.clone()).set(v as f64);
        }
    }
}

/// The integer value of `field` in an `INFO` reply (`field:value` lines).
fn field_of(info: &str, field: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k == field).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `host:port` of a Redis URL (no credentials), for the `node` label.
pub(crate) fn node_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        "local".to_owned()
    } else if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_node_names() {
        let info =
            "# Memory\r\nused_memory:1024\r\nused_memory_human:1K\r\n# Stats\r\nevicted_keys:7\r\n";
        assert_eq!(field_of(info, "used_memory"), Some(1024));
        assert_eq!(field_of(info, "evicted_keys"), Some(7));
        assert_eq!(field_of(info, "connected_clients"), None);
        assert_eq!(node_of("redis://:s3cret@cache:6380/0"), "cache:6380");
        assert_eq!(node_of("rediss://cache/"), "cache:6379");
        assert_eq!(node_of("unix:///tmp/redis.sock"), "local");
    }
}
