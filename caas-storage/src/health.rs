//! [`Storage::health`](crate::Storage::health): one report on every server the handle uses.
//!
//! Each component is checked concurrently and bounded by `health.timeout`, so a dead server
//! shows as `down` after that bound and never makes the call hang. The overall status is
//! `down` when MongoDB (the source of truth) is down, `degraded` when anything else is down,
//! `up` otherwise.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, DateTime};
use rdkafka::producer::{FutureProducer, Producer};
use serde::Serialize;

use crate::connection::{Connections, KafkaContext, RedisConnection};
use crate::error::Component;
use crate::outbox::outbox_lag;
use crate::retention::Retention;
use crate::ttl::TtlSweeper;
use crate::write_behind::WriteBehind;

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

/// Facts a check adds to its component's details.
type Details = BTreeMap<String, serde_json::Value>;

/// Runs one check under `timeout` and records its outcome; what the check returns is added to
/// `details`.
pub(crate) async fn check<F>(
    name: String,
    component: Component,
    timeout: Duration,
    mut details: Details,
    f: F,
) -> ComponentHealth
where
    F: Future<Output = Result<Details, String>>,
{
    let start = Instant::now();
    let outcome = match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (status, error) = match outcome {
        Ok(found) => {
            details.extend(found);
            (HealthStatus::Up, None)
        }
        Err(e) => (HealthStatus::Down, Some(e)),
    };
    ComponentHealth {
        name,
        component,
        status,
        latency_ms,
        error,
        details,
    }
}

/// Checks MongoDB, every allocated Redis database (or the cluster once), Kafka and the two
/// backlogs concurrently, each bounded by `health.timeout`.
pub(crate) async fn report(
    conn: &Connections,
    queue: &WriteBehind,
    retention: &Retention,
    ttl: &TtlSweeper,
    outbox_databases: Vec<&'static str>,
) -> HealthReport {
    let timestamp = DateTime::now().try_to_rfc3339_string().unwrap_or_default();
    let started = Instant::now();
    let timeout = conn.config().health.timeout;

    let in_memory = conn.memory().is_some();
    let mongo = {
        let client = conn.mongo().clone();
        let details = Details::from([(
            "server".to_owned(),
            conn.capabilities().server_description().into(),
        )]);
        check(
            "mongodb".into(),
            Component::Mongodb,
            timeout,
            details,
            async move {
                if in_memory {
                    return Ok(Details::new());
                }
                client
                    .database("admin")
                    .run_command(doc! { "ping": 1 })
                    .await
                    .map(|_| Details::new())
                    .map_err(|e| e.to_string())
            },
        )
    };
    let redis = futures::future::join_all(redis_targets(conn).into_iter().map(
        |(name, mut redis, details)| {
            check(name, Component::Redis, timeout, details, async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut redis)
                    .await
                    .map(|_| Details::new())
                    .map_err(|e| crate::redact::scrub(&e.to_string(), conn.config().credentials()))
            })
        },
    ));
    let kafka = async {
        let details = Details::from([
            (
                "brokers".to_owned(),
                conn.config().kafka.brokers.clone().into(),
            ),
            (
                "breaker".to_owned(),
                conn.topics().breaker_state().as_str().into(),
            ),
        ]);
        let mut health = check(
            "kafka".into(),
            Component::Kafka,
            timeout,
            details,
            async move {
                if in_memory {
                    // Nothing is published in memory: events stay in the outbox.
                    return Ok(Details::from([("in_memory".to_owned(), true.into())]));
                }
                kafka_metadata(conn.kafka().clone(), timeout)
                    .await
                    .map(|_| Details::new())
            },
        )
        .await;
        // librdkafka's metadata error only says the transport failed; the client's own error
        // says why (a refused SASL login, an untrusted certificate).
        if let (Some(error), Some(latest)) = (health.error.as_mut(), conn.kafka_last_error()) {
            error.push_str("; latest Kafka client error: ");
            error.push_str(&latest);
        }
        if let Some(error) = health.error.as_mut() {
            *error = crate::redact::scrub(error, conn.config().credentials());
        }
        health
    };
    // The declared topics as they are (nothing is created here): drift is listed; the
    // component is down when a topic cannot be made, or drifted under kafka.topic_drift =
    // "error".
    let topics = {
        let k = &conn.config().kafka;
        let details = Details::from([
            ("declared".to_owned(), k.topics.len().into()),
            ("topic_drift".to_owned(), k.topic_drift.as_str().into()),
        ]);
        check(
            "kafka/topics".into(),
            Component::Kafka,
            timeout,
            details,
            async move {
                if in_memory {
                    return Ok(Details::new());
                }
                let report = conn
                    .topics()
                    .check(conn.config(), false)
                    .await
                    .map_err(|e| e.to_string())?;
                let found = match serde_json::to_value(&report) {
                    Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
                    _ => Details::new(),
                };
                match report.into_result(k.topic_drift) {
                    Ok(_) => Ok(found),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
    };
    // Backlogs are `up` with their size in the details (a backlog is not an outage); `down`
    // only when they cannot be read.
    let write_behind = check(
        "write_behind".into(),
        Component::Redis,
        timeout,
        Details::new(),
        async {
            let lag = queue.lag().await.map_err(|e| e.to_string())?;
            Ok(Details::from([
                (
                    "pending".to_owned(),
                    lag.iter().map(|l| l.pending).sum::<u64>().into(),
                ),
                (
                    "oldest_age_ms".to_owned(),
                    lag.iter()
                        .map(|l| l.oldest_age_ms)
                        .max()
                        .unwrap_or(0)
                        .into(),
                ),
                (
                    "dead_letters".to_owned(),
                    lag.iter().map(|l| l.dead_letters).sum::<u64>().into(),
                ),
            ]))
        },
    );
    let outbox = check(
        "outbox".into(),
        Component::Mongodb,
        timeout,
        Details::from([("databases".to_owned(), outbox_databases.clone().into())]),
        async {
            let lag = outbox_lag(conn, &outbox_databases)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Details::from([
                ("pending".to_owned(), lag.pending.into()),
                ("parked".to_owned(), lag.parked.into()),
                (
                    "oldest_pending_age_ms".to_owned(),
                    lag.oldest_pending_age_ms.unwrap_or(0).into(),
                ),
            ]))
        },
    );
    // What the framework keeps for itself (bounded by the retention task).
    let kept = check(
        "retention".into(),
        Component::Mongodb,
        timeout,
        Details::new(),
        async {
            if in_memory {
                // Retention does not run in memory.
                return Ok(Details::new());
            }
            let sizes = retention.sizes().await.map_err(|e| e.to_string())?;
            match serde_json::to_value(sizes) {
                Ok(serde_json::Value::Object(m)) => Ok(m.into_iter().collect()),
                _ => Ok(Details::new()),
            }
        },
    );
    // Expiry: by the server's TTL indexes, or by the sweeper, with what it deleted.
    let expiry = check(
        "ttl".into(),
        Component::Mongodb,
        timeout,
        Details::new(),
        async {
            match serde_json::to_value(ttl.stats()) {
                Ok(serde_json::Value::Object(m)) => Ok(m.into_iter().collect()),
                _ => Ok(Details::new()),
            }
        },
    );
    let (mongo, redis, kafka, topics, write_behind, outbox, kept, expiry) = tokio::join!(
        mongo,
        redis,
        kafka,
        topics,
        write_behind,
        outbox,
        kept,
        expiry
    );
    let mut components: Vec<ComponentHealth> = vec![mongo];
    components.extend(redis);
    components.extend([kafka, topics, write_behind, outbox, kept, expiry]);
    HealthReport {
        status: overall(&components),
        timestamp,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        components,
    }
}

/// What the health check pings: each allocated logical database, or the cluster once.
fn redis_targets(conn: &Connections) -> Vec<(String, RedisConnection, Details)> {
    let r = &conn.config().redis;
    if !r.cluster_nodes.is_empty() {
        let details = Details::from([("nodes".to_owned(), r.cluster_nodes.clone().into())]);
        return conn
            .redis_databases()
            .values()
            .next()
            .map(|c| ("redis/cluster".to_owned(), c.clone(), details))
            .into_iter()
            .collect();
    }
    let purposes = r.databases.purposes();
    conn.redis_databases()
        .iter()
        .map(|(db, c)| {
            let details = Details::from([
                ("db".to_owned(), (*db).into()),
                (
                    "purposes".to_owned(),
                    purposes.get(db).cloned().unwrap_or_default().into(),
                ),
            ]);
            (format!("redis/db{db}"), c.clone(), details)
        })
        .collect()
}

async fn kafka_metadata(
    producer: FutureProducer<KafkaContext>,
    timeout: Duration,
) -> Result<(), String> {
    let brokers = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|m| m.brokers().len())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if brokers == 0 {
        return Err("metadata lists no brokers".into());
    }
    Ok(())
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
            std::future::pending::<Result<Details, String>>(),
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
                async { Ok(Details::new()) },
            )
            .await
        }
        async fn down(name: &str, component: Component) -> ComponentHealth {
            check(
                name.into(),
                component,
                Duration::from_secs(1),
                BTreeMap::new(),
                async { Err::<Details, _>("refused".to_owned()) },
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
