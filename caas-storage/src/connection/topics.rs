//! Declared Kafka topics (`kafka.topics`): created when missing, checked for drift when they
//! exist, under the Kafka circuit breaker. See `docs/kafka.md`.
//!
//! What is compared: the partition count, the replication factor (the replicas of each
//! partition) and every topic config the declaration sets (`cleanup.policy`, `retention.ms`,
//! `min.insync.replicas`, [`TopicSpec::configs`]). Nothing existing is changed: a difference
//! is reported ([`TopicReport::drift`]), logged at warn level, shown in health, and refused
//! when `kafka.topic_drift = "error"`.
//!
//! Replication factors are never lowered silently. On a cluster of exactly one broker with
//! `kafka.single_broker_fallback` (the default), a topic declared with more replicas is created
//! with one (and `min.insync.replicas` 1, which one replica can satisfy), with a warning and a
//! [`TopicReport::fallbacks`] entry; on two or more brokers, a factor larger than the broker
//! count is an error naming the topic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Serialize;

use super::breaker::{Breaker, BreakerState};
use super::kafka;
use crate::config::{StorageConfig, TopicPolicy, TopicSpec};
use crate::error::{Component, Error, Result};

/// Bound on each admin call (metadata, describe, create).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a topic check found, and what it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TopicReport {
    /// Brokers in the cluster's metadata (the live ones).
    pub brokers: usize,
    /// Declared topics created by this check.
    pub created: Vec<String>,
    /// Declared topics that do not exist and were not created (a check only, or
    /// `kafka.create_topics = false`).
    pub missing: Vec<String>,
    /// Topics given one replica instead of the declared factor, on a one-broker cluster
    /// (`kafka.single_broker_fallback`), with the reason.
    pub fallbacks: Vec<String>,
    /// Existing topics that differ from their declaration.
    pub drift: Vec<TopicDrift>,
    /// Declared topics that could not be created (a replication factor larger than the broker
    /// count, a broker's refusal), with the reason.
    pub errors: Vec<String>,
}

/// How one existing topic differs from its declaration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicDrift {
    /// The topic.
    pub topic: String,
    /// Each difference, e.g. `partitions: 1, declared 3` or
    /// `cleanup.policy: "compact", declared "delete"`.
    pub differences: Vec<String>,
}

impl TopicReport {
    /// Whether every declared topic exists as declared.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.drift.is_empty() && self.errors.is_empty()
    }

    /// The topics the relay must not publish to under `drift` policy: those that could not be
    /// made, and drifted ones when drift is an error.
    pub(crate) fn blocked(&self, drift: TopicPolicy) -> HashSet<String> {
        let mut out: HashSet<String> = self
            .errors
            .iter()
            .filter_map(|e| e.split(':').next().map(str::to_owned))
            .collect();
        if drift == TopicPolicy::Error {
            out.extend(self.drift.iter().map(|d| d.topic.clone()));
        }
        out
    }

    /// `Ok(self)`, or the error the configuration asks for: an [`Error::Config`] naming
    /// `kafka.topics` and every topic that could not be made, or that drifted under
    /// `kafka.topic_drift = "error"`.
    pub(crate) fn into_result(self, drift: TopicPolicy) -> Result<Self> {
        let mut problems = self.errors.clone();
        if drift == TopicPolicy::Error {
            problems.extend(self.drift.iter().map(|d| {
                format!(
                    "{}: {} (kafka.topic_drift = \"error\")",
                    d.topic,
                    d.differences.join("; ")
                )
            }));
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(Error::config("kafka.topics", problems.join(" | ")))
        }
    }
}

/// What the cluster's metadata says about one topic.
struct Existing {
    partitions: usize,
    replication: usize,
}

/// The admin client of the declared topics and the Kafka circuit breaker, shared by the
/// relay and [`Storage::ensure_topics`](crate::Storage::ensure_topics).
pub(crate) struct TopicAdmin {
    /// `None` in memory, where there is no cluster.
    admin: Option<Arc<AdminClient<DefaultClientContext>>>,
    breaker: Breaker,
    /// Undeclared topics already warned about (`kafka.undeclared_topics = "warn"`).
    warned: Mutex<HashSet<String>>,
}

impl TopicAdmin {
    /// The admin client (it connects lazily) and a closed breaker.
    pub(crate) fn new(config: &StorageConfig) -> Result<Self> {
        let client_id = format!("{}-admin", config.kafka.client_id);
        let admin = kafka::client_config(config, &[("client.id", client_id)])
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(|e| {
                Error::config(
                    "kafka.properties",
                    crate::redact::scrub(&e.to_string(), config.credentials()),
                )
            })?;
        Ok(TopicAdmin {
            admin: Some(Arc::new(admin)),
            ..TopicAdmin::without_client(config)
        })
    }

    /// The declaration checks and the breaker without an admin client (in memory): every call
    /// that needs the cluster fails with [`Error::Unsupported`].
    pub(crate) fn without_client(config: &StorageConfig) -> Self {
        TopicAdmin {
            admin: None,
            breaker: Breaker::new(
                "kafka",
                config.kafka.breaker_failures,
                config.kafka.breaker_cooldown,
            ),
            warned: Mutex::new(HashSet::new()),
        }
    }

    fn admin(&self) -> Result<&Arc<AdminClient<DefaultClientContext>>> {
        self.admin.as_ref().ok_or_else(|| Error::Unsupported {
            feature: "Kafka topic administration",
            server: "memory (no Kafka cluster)".into(),
        })
    }

    /// The Kafka circuit breaker (publishing and admin calls).
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// What the Kafka breaker is doing.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Whether `entity` may publish to `topic`: yes when it is declared; otherwise an
    /// [`Error::Config`] naming both under `kafka.undeclared_topics = "error"`, a warning
    /// (once per topic) under `"warn"`.
    pub(crate) fn check_declared(
        &self,
        config: &StorageConfig,
        entity: &str,
        topic: &str,
    ) -> Result<()> {
        let k = &config.kafka;
        if k.topic(topic).is_some() {
            return Ok(());
        }
        match k.undeclared_topics {
            TopicPolicy::Error => Err(Error::config(
                "kafka.topics",
                format!(
                    "{entity} publishes to Kafka topic {topic:?}, which kafka.topics does not declare \
                     (declared: {}); declare it, or set kafka.undeclared_topics = \"warn\"",
                    k.topics
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            TopicPolicy::Warn => {
                let first = self
                    .warned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(topic.to_owned());
                if first {
                    tracing::warn!(
                        entity,
                        topic,
                        "Kafka topic is not declared in kafka.topics (kafka.undeclared_topics = warn)"
                    );
                }
                Ok(())
            }
        }
    }

    /// Checks every declared topic against the cluster, creating missing ones when `create`;
    /// under the breaker (an open breaker answers at once with a timeout error), bounded.
    /// Problems are in the report; the caller applies the policies
    /// ([`TopicReport::into_result`]).
    pub(crate) async fn check(&self, config: &StorageConfig, create: bool) -> Result<TopicReport> {
        self.admin()?;
        let permit = self.breaker.permit();
        if permit.skips() {
            return Err(Error::Timeout {
                component: Component::Kafka,
                operation: "topic check (Kafka circuit breaker open)",
                after: config.kafka.breaker_cooldown,
            });
        }
        match self.check_now(config, create).await {
            Ok(report) => {
                permit.success(&self.breaker);
                Ok(report)
            }
            Err(e) => {
                // An unreachable cluster opens the breaker; a refusal (authorization) does not.
                if matches!(e, Error::Timeout { .. })
                    || matches!(&e, Error::Kafka { source, .. } if is_transport(source))
                {
                    permit.failure(&self.breaker);
                } else {
                    permit.success(&self.breaker);
                }
                Err(e)
            }
        }
    }

    async fn check_now(&self, config: &StorageConfig, create: bool) -> Result<TopicReport> {
        let k = &config.kafka;
        let (brokers, existing) = self.metadata().await?;
        let mut report = TopicReport {
            brokers,
            ..TopicReport::default()
        };
        let single = brokers == 1 && k.single_broker_fallback;
        // What each declared topic should be on this cluster.
        let effective = |spec: &TopicSpec| -> (i32, BTreeMap<String, String>) {
            let mut configs = spec.topic_configs();
            if single && spec.replication_factor > 1 {
                if let Some(m) = configs.get_mut("min.insync.replicas") {
                    *m = "1".into();
                }
                (1, configs)
            } else {
                (spec.replication_factor, configs)
            }
        };

        // The names on the cluster carry kafka.topic_suffix; the report keeps declared ones.
        let on_cluster: HashMap<&str, String> = k
            .topics
            .iter()
            .map(|spec| (spec.name.as_str(), k.topic_name(&spec.name)))
            .collect();
        let mut to_create = Vec::new();
        let mut to_describe = Vec::new();
        for spec in &k.topics {
            let (rf, _) = effective(spec);
            match existing.get(&on_cluster[spec.name.as_str()]) {
                Some(e) => {
                    let mut differences = Vec::new();
                    if e.partitions != spec.partitions as usize {
                        differences.push(format!(
                            "partitions: {}, declared {}",
                            e.partitions, spec.partitions
                        ));
                    }
                    if e.replication != rf as usize {
                        differences.push(format!(
                            "replication factor: {}, declared {}",
                            e.replication, spec.replication_factor
                        ));
                    }
                    if single && spec.replication_factor > 1 && e.replication == 1 {
                        report.fallbacks.push(format!(
                            "{}: replication factor 1 instead of {} on a one-broker cluster",
                            spec.name, spec.replication_factor
                        ));
                    }
                    if !differences.is_empty() {
                        report.drift.push(TopicDrift {
                            topic: spec.name.clone(),
                            differences,
                        });
                    }
                    to_describe.push(spec);
                }
                None if !create => report.missing.push(spec.name.clone()),
                None if rf as usize > brokers => report.errors.push(format!(
                    "{}: replication factor {} needs {} brokers; the cluster has {brokers}{}",
                    spec.name,
                    spec.replication_factor,
                    spec.replication_factor,
                    if brokers == 1 {
                        " (kafka.single_broker_fallback is off)"
                    } else {
                        ""
                    }
                )),
                None => to_create.push(spec),
            }
        }

        // Configs of the existing ones.
        if !to_describe.is_empty() {
            let resources: Vec<ResourceSpecifier<'_>> = to_describe
                .iter()
                .map(|s| ResourceSpecifier::Topic(&on_cluster[s.name.as_str()]))
                .collect();
            let described = self
                .bounded(
                    "describe topic configs",
                    self.admin()?.describe_configs(&resources, &options()),
                )
                .await?;
            let mut found: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            for r in described.into_iter().flatten() {
                if let OwnedResourceSpecifier::Topic(name) = r.specifier {
                    let Some(name) = k.declared_name(&name).map(str::to_owned) else {
                        continue;
                    };
                    let values = r
                        .entries
                        .into_iter()
                        .filter_map(|e| e.value.map(|v| (e.name, v)))
                        .collect();
                    found.insert(name, values);
                }
            }
            for spec in to_describe {
                let (_, want) = effective(spec);
                let Some(have) = found.get(&spec.name) else {
                    continue;
                };
                let mut differences = Vec::new();
                for (key, value) in &want {
                    let actual = have.get(key).map(String::as_str).unwrap_or("");
                    if normalize(key, actual) != normalize(key, value) {
                        differences.push(format!("{key}: {actual:?}, declared {value:?}"));
                    }
                }
                if differences.is_empty() {
                    continue;
                }
                match report.drift.iter_mut().find(|d| d.topic == spec.name) {
                    Some(d) => d.differences.extend(differences),
                    None => report.drift.push(TopicDrift {
                        topic: spec.name.clone(),
                        differences,
                    }),
                }
            }
        }

        // Creation of the missing ones.
        if !to_create.is_empty() {
            let planned: Vec<(String, i32, i32, BTreeMap<String, String>)> = to_create
                .iter()
                .map(|spec| {
                    let (rf, configs) = effective(spec);
                    (k.topic_name(&spec.name), spec.partitions, rf, configs)
                })
                .collect();
            let new: Vec<NewTopic<'_>> = planned
                .iter()
                .map(|(name, partitions, rf, configs)| {
                    configs.iter().fold(
                        NewTopic::new(name, *partitions, TopicReplication::Fixed(*rf)),
                        |t, (k, v)| t.set(k, v),
                    )
                })
                .collect();
            let results = self
                .bounded(
                    "create topics",
                    self.admin()?.create_topics(&new, &options()),
                )
                .await?;
            let declared = |name: String| k.declared_name(&name).map(str::to_owned).unwrap_or(name);
            for r in results {
                match r
                    .map(declared)
                    .map_err(|(name, code)| (declared(name), code))
                {
                    Ok(name) => {
                        let spec = to_create.iter().find(|s| s.name == name);
                        if let Some(spec) = spec.filter(|s| single && s.replication_factor > 1) {
                            tracing::warn!(
                                topic = %name,
                                declared = spec.replication_factor,
                                "one-broker Kafka cluster: topic created with replication factor 1 \
                                 (kafka.single_broker_fallback)"
                            );
                            report.fallbacks.push(format!(
                                "{name}: replication factor 1 instead of {} on a one-broker cluster",
                                spec.replication_factor
                            ));
                        }
                        tracing::info!(topic = %name, "created a declared Kafka topic");
                        report.created.push(name);
                    }
                    // Another instance made it in between: it is checked next time.
                    Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        report.created.push(name);
                    }
                    Err((name, code)) => report.errors.push(format!("{name}: {code}")),
                }
            }
        }
        Ok(report)
    }

    /// Creates an undeclared topic (`kafka.undeclared_topics = "warn"`) with the relay's
    /// settings, under its name on the cluster (`topic` is the declared name); `replication`
    /// -1 takes the broker's `default.replication.factor`. Under the breaker; true when it
    /// exists afterwards.
    pub(crate) async fn create_undeclared(
        &self,
        config: &StorageConfig,
        topic: &str,
        partitions: i32,
        replication: i32,
    ) -> bool {
        let Ok(admin) = self.admin() else {
            return false;
        };
        let permit = self.breaker.permit();
        if permit.skips() {
            return false;
        }
        let name = config.kafka.topic_name(topic);
        let new = NewTopic::new(&name, partitions, TopicReplication::Fixed(replication));
        match self
            .bounded("create topic", admin.create_topics([&new], &options()))
            .await
        {
            Ok(results) => {
                permit.success(&self.breaker);
                results.iter().all(|r| match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
                    Err((name, code)) => {
                        tracing::warn!(topic = %name, error = %code, "could not create a Kafka topic");
                        false
                    }
                })
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "could not create a Kafka topic");
                permit.failure(&self.breaker);
                false
            }
        }
    }

    /// Deletes every topic on the cluster whose name ends with `suffix` (a
    /// `#[caas_storage::test]` test's own, after it ran); their names.
    pub(crate) async fn delete_suffixed(&self, suffix: &str) -> Result<Vec<String>> {
        if suffix.is_empty() {
            return Ok(Vec::new());
        }
        let (_, existing) = self.metadata().await?;
        let doomed: Vec<&str> = existing
            .keys()
            .map(String::as_str)
            .filter(|name| name.ends_with(suffix))
            .collect();
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let results = self
            .bounded(
                "delete topics",
                self.admin()?.delete_topics(&doomed, &options()),
            )
            .await?;
        let mut deleted = Vec::new();
        for r in results {
            match r {
                Ok(name) => deleted.push(name),
                Err((name, code)) => {
                    tracing::warn!(topic = %name, error = %code, "could not delete a topic");
                    return Err(Error::Kafka {
                        operation: "delete topics",
                        source: KafkaError::AdminOp(code),
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// The live brokers, and the partitions and replication factor of every topic.
    async fn metadata(&self) -> Result<(usize, HashMap<String, Existing>)> {
        let admin = self.admin()?.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(None, ADMIN_TIMEOUT).map(|m| {
                let topics = m
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| {
                        let replication = t
                            .partitions()
                            .iter()
                            .map(|p| p.replicas().len())
                            .max()
                            .unwrap_or(0);
                        (
                            t.name().to_owned(),
                            Existing {
                                partitions: t.partitions().len(),
                                replication,
                            },
                        )
                    })
                    .collect();
                (m.brokers().len(), topics)
            })
        });
        match tokio::time::timeout(ADMIN_TIMEOUT + Duration::from_secs(1), fetched).await {
            Ok(Ok(Ok(found))) => Ok(found),
            Ok(Ok(Err(source))) => Err(Error::Kafka {
                operation: "topic metadata",
                source,
            }),
            Ok(Err(_)) | Err(_) => Err(Error::Timeout {
                component: Component::Kafka,
                operation: "topic metadata",
                after: ADMIN_TIMEOUT,
            }),
        }
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        f: impl std::future::Future<Output = rdkafka::error::KafkaResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(ADMIN_TIMEOUT + Duration::from_secs(1), f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Kafka { operation, source }),
            Err(_) => Err(Error::Timeout {
                component: Component::Kafka,
                operation,
                after: ADMIN_TIMEOUT,
            }),
        }
    }
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT))
}

/// `cleanup.policy` lists compare as sets; other values as trimmed text.
fn normalize(key: &str, value: &str) -> String {
    if key == "cleanup.policy" {
        let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
        parts.sort_unstable();
        return parts.join(",");
    }
    value.trim().to_owned()
}

impl TopicReport {
    /// Logs the drift (warn) and the topics that could not be made (error).
    pub(crate) fn log(&self, drift: TopicPolicy) {
        log_report(self, drift)
    }
}

fn log_report(report: &TopicReport, drift: TopicPolicy) {
    for d in &report.drift {
        tracing::warn!(
            topic = %d.topic, differences = %d.differences.join("; "), policy = drift.as_str(),
            "Kafka topic differs from its declaration (kafka.topic_drift)"
        );
    }
    for e in &report.errors {
        tracing::error!(problem = %e, "declared Kafka topic could not be created");
    }
}

/// Whether a Kafka error says the cluster could not be reached (or answered too late), as
/// opposed to refusing one request: what counts toward the Kafka circuit breaker.
pub(crate) fn is_transport(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(is_transport_code)
}

/// The error codes of an unreachable or unavailable cluster (see [`is_transport`]).
pub(crate) fn is_transport_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException
            | C::Resolve
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::TimedOutQueue
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policies_compare_as_sets() {
        assert_eq!(
            normalize("cleanup.policy", "delete, compact"),
            normalize("cleanup.policy", "compact,delete")
        );
        assert_ne!(
            normalize("cleanup.policy", "compact"),
            normalize("cleanup.policy", "delete")
        );
    }

    #[test]
    fn errors_and_drift_under_error_policy_block_and_fail() {
        let report = TopicReport {
            brokers: 2,
            errors: vec!["a: replication factor 3 needs 3 brokers; the cluster has 2".into()],
            drift: vec![TopicDrift {
                topic: "b".into(),
                differences: vec!["partitions: 1, declared 3".into()],
            }],
            ..TopicReport::default()
        };
        assert_eq!(
            report.blocked(TopicPolicy::Warn),
            HashSet::from(["a".to_owned()])
        );
        assert_eq!(
            report.blocked(TopicPolicy::Error),
            HashSet::from(["a".to_owned(), "b".to_owned()])
        );
        let e = report
            .clone()
            .into_result(TopicPolicy::Error)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kafka.topics") && e.contains("b: partitions: 1, declared 3"),
            "{e}"
        );
        let e = report
            .into_result(TopicPolicy::Warn)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("b:"), "drift is only warned about: {e}");
    }

    #[test]
    fn transport_errors_count_toward_the_breaker_and_refusals_do_not() {
        assert!(is_transport_code(RDKafkaErrorCode::MessageTimedOut));
        assert!(is_transport_code(RDKafkaErrorCode::AllBrokersDown));
        assert!(!is_transport_code(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!is_transport_code(
            RDKafkaErrorCode::TopicAuthorizationFailed
        ));
    }
}
