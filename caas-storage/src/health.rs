//! [`Storage::health`](crate::Storage::health): one report on every server the handle uses.
//!
//! Each component is checked concurrently and bounded by `health.timeout`, so a dead server
//! shows as `down` after that bound and never makes the call hang. The overall status is
//! `down` when MongoDB (the source of truth) is down, `degraded` when anything else is down,
//! `up` otherwise.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Component;

/// Up, degraded or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working.
    Up,
    /// Working without some non-essential component (cache, events): data is safe, some
    /// features are slower or delayed.
    Degraded,
    /// Not working.
    Down,
}

/// The result of [`Storage::health`](crate::Storage::health), serializable to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// Overall status.
    pub status: HealthStatus,
    /// When the checks started, RFC 3339 UTC.
    pub timestamp: String,
    /// How long all checks took together, in milliseconds.
    pub took_ms: f64,
    /// One entry per checked component.
    pub components: Vec<ComponentHealth>,
}

impl HealthReport {
    /// The entry named `name`, if there is one.
    pub fn component(&self, name: &str) -> Option<&ComponentHealth> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// The health of one component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentHealth {
    /// Unique name, e.g. `mongodb`, `redis/db1`, `kafka`.
    pub name: String,
    /// Which server it is.
    pub component: Component,
    /// `up` or `down`.
    pub status: HealthStatus,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Component-specific facts (server version, purposes of a Redis database, broker count).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// Runs one check under `timeout` and records its outcome.
pub(crate) async fn check<F>(
    name: String,
    component: Component,
    timeout: Duration,
    details: BTreeMap<String, serde_json::Value>,
    f: F,
) -> ComponentHealth
where
    F: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let outcome = match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    ComponentHealth {
        name,
        component,
        status: if outcome.is_ok() {
            HealthStatus::Up
        } else {
            HealthStatus::Down
        },
        latency_ms,
        error: outcome.err(),
        details,
    }
}

/// Combines component results into the overall status.
pub(crate) fn overall(components: &[ComponentHealth]) -> HealthStatus {
    let down = |c: &&ComponentHealth| c.status != HealthStatus::Up;
    if components.iter().filter(down).any(|c| c.name == "mongodb") {
        HealthStatus::Down
    } else if components.iter().any(|c| down(&c)) {
        HealthStatus::Degraded
    } else {
        HealthStatus::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_hangs_is_down_after_its_timeout() {
        let started = Instant::now();
        let c = check(
            "kafka".into(),
            Component::Kafka,
            Duration::from_millis(50),
            BTreeMap::new(),
            std::future::pending(),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(c.status, HealthStatus::Down);
        assert!(c.error.unwrap().contains("no answer within"));
    }

    #[tokio::test]
    async fn overall_status_follows_the_source_of_truth() {
        async fn up(name: &str, component: Component) -> ComponentHealth {
            check(
                name.into(),
                component,
                Duration::from_secs(1),
                BTreeMap::new(),
                async { Ok(()) },
            )
            .await
        }
        async fn down(name: &str, component: Component) -> ComponentHealth {
            check(
                name.into(),
                component,
                Duration::from_secs(1),
                BTreeMap::new(),
                async { Err("refused".to_owned()) },
            )
            .await
        }
        let all_up = vec![
            up("mongodb", Component::Mongodb).await,
            up("kafka", Component::Kafka).await,
        ];
        assert_eq!(overall(&all_up), HealthStatus::Up);
        let kafka_down = vec![
            up("mongodb", Component::Mongodb).await,
            down("kafka", Component::Kafka).await,
        ];
        assert_eq!(overall(&kafka_down), HealthStatus::Degraded);
        let mongo_down = vec![
            down("mongodb", Component::Mongodb).await,
            up("kafka", Component::Kafka).await,
        ];
        assert_eq!(overall(&mongo_down), HealthStatus::Down);
    }
}
