//! Declared Kafka topics and the Kafka circuit breaker against real brokers: missing topics
//! created with their declared settings (read back with the admin client), drift reported in
//! health and refused under `kafka.topic_drift = "error"` (the relay holds the topic's events
//! back), entities naming undeclared topics refused, replication factor 3 on one broker never
//! silently 1, and the breaker opening during a broker outage and closing after it, with the
//! backlog delivered.
//!
//! The declared-settings test runs on the 3-broker cluster of `scripts/services`
//! (`CAAS_TEST_KAFKA_CLUSTER`); the drift and replication tests on the shared broker, with
//! topics named per run; the breaker test on a private broker it stops and starts.

use caas_storage_tests as common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use caas_storage::config::{TopicPolicy, TopicSpec};
use caas_storage::outbox::{envelope_from_message, RelayOptions};
use caas_storage::prelude::*;
use caas_storage::{HealthStatus, StorageConfig};
use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn unique(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::now_v7().simple())
}

/// The 3-broker cluster of `scripts/services` (`kafka-cluster`).
fn cluster_brokers() -> String {
    std::env::var("CAAS_TEST_KAFKA_CLUSTER")
        .unwrap_or_else(|_| "127.0.0.1:9096,127.0.0.1:9097,127.0.0.1:9098".into())
}

/// The suite's configuration on `brokers`, declaring exactly `topics`, refusing undeclared
/// ones (the library's default).
fn config_with(brokers: &str, topics: Vec<TopicSpec>) -> StorageConfig {
    let mut c = common::config();
    c.kafka.brokers = brokers.to_owned();
    c.kafka.topics = topics;
    c.kafka.undeclared_topics = TopicPolicy::Error;
    c
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// Partitions and the replicas of each, from the cluster's metadata (`None`: no such topic).
fn layout(brokers: &str, topic: &str) -> Option<(usize, usize)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    let replicas = t.partitions().iter().map(|p| p.replicas().len()).min()?;
    Some((t.partitions().len(), replicas))
}

/// A topic's configs as the brokers report them (`describe_configs`).
async fn configs_of(brokers: &str, topic: &str) -> BTreeMap<String, String> {
    let admin = admin(brokers);
    let res = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options())
        .await
        .expect("describe_configs");
    let r = res.into_iter().next().unwrap().expect("topic configs");
    assert_eq!(r.specifier, OwnedResourceSpecifier::Topic(topic.to_owned()));
    r.entries
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect()
}

#[tokio::test]
async fn missing_declared_topics_are_created_with_their_settings_on_three_brokers() {
    let brokers = cluster_brokers();
    let events = TopicSpec {
        partitions: 4,
        retention_ms: Some(3_600_000),
        configs: BTreeMap::from([("max.message.bytes".into(), "2097152".into())]),
        ..TopicSpec::named(unique("test.topics.events"))
    };
    let changelog = TopicSpec {
        partitions: 2,
        cleanup_policy: Some("compact".into()),
        ..TopicSpec::named(unique("test.topics.changelog"))
    };
    let storage = Storage::connect(config_with(
        &brokers,
        vec![events.clone(), changelog.clone()],
    ))
    .await
    .unwrap();
    let report = storage
        .ensure_topics()
        .await
        .expect("the cluster of scripts/services is up (scripts/services start kafka-cluster)");
    assert_eq!(report.brokers, 3, "{report:?}");
    let created: HashSet<&str> = report.created.iter().map(String::as_str).collect();
    assert_eq!(
        created,
        HashSet::from([events.name.as_str(), changelog.name.as_str()])
    );
    assert!(
        report.fallbacks.is_empty() && report.drift.is_empty(),
        "{report:?}"
    );

    assert_eq!(layout(&brokers, &events.name), Some((4, 3)));
    assert_eq!(layout(&brokers, &changelog.name), Some((2, 3)));
    let c = configs_of(&brokers, &events.name).await;
    assert_eq!(c["retention.ms"], "3600000");
    assert_eq!(c["cleanup.policy"], "delete");
    assert_eq!(c["min.insync.replicas"], "2");
    assert_eq!(c["max.message.bytes"], "2097152");
    let c = configs_of(&brokers, &changelog.name).await;
    assert_eq!(c["cleanup.policy"], "compact");
    assert_eq!(c["min.insync.replicas"], "2");

    // Idempotent: a second pass finds them as declared.
    let again = storage.ensure_topics().await.unwrap();
    assert!(again.created.is_empty() && again.is_clean(), "{again:?}");
    let health = storage.health().await;
    let topics = health.component("kafka/topics").unwrap();
    assert_eq!(topics.status, HealthStatus::Up, "{topics:?}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_kafka_topics_drift",
    collection = "orders",
    outbox(topic = "test.topics.drifted", insert = "order.placed")
)]
struct DriftOrder {
    #[repository(id)]
    order_id: String,
    #[repository(tenant)]
    tenant_id: String,
    #[repository(version)]
    version: u64,
}

#[tokio::test]
async fn drift_is_reported_in_health_and_refused_in_error_mode() {
    let brokers = common::config().kafka.brokers;
    // The topic exists with one partition and compaction; it is declared with three and
    // deletion (one replica: the shared broker is a single one).
    let topic = "test.topics.drifted";
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let made = admin(&brokers)
        .create_topics([&new], &admin_options())
        .await
        .unwrap();
    assert!(
        made[0].is_ok() || matches!(&made[0], Err((_, c)) if c.to_string().contains("exists")),
        "{made:?}"
    );
    assert_eq!(layout(&brokers, topic), Some((1, 1)), "left as made");
    let declared = TopicSpec {
        replication_factor: 1,
        min_insync_replicas: Some(1),
        ..TopicSpec::named(topic)
    };

    // Warn (the default): reported, nothing changed, health up with the drift in its details.
    let storage = Storage::connect(config_with(&brokers, vec![declared.clone()]))
        .await
        .unwrap();
    let report = storage.ensure_topics().await.unwrap();
    let drift = &report
        .drift
        .iter()
        .find(|d| d.topic == topic)
        .unwrap()
        .differences;
    assert!(
        drift.iter().any(|d| d == "partitions: 1, declared 3"),
        "{drift:?}"
    );
    assert!(
        drift
            .iter()
            .any(|d| d.starts_with("cleanup.policy: \"compact\", declared \"delete\"")),
        "{drift:?}"
    );
    assert_eq!(
        layout(&brokers, topic),
        Some((1, 1)),
        "drift changes nothing"
    );
    let health = storage.health().await;
    let h = health.component("kafka/topics").unwrap();
    assert_eq!(h.status, HealthStatus::Up, "{h:?}");
    let shown = serde_json::to_string(&h.details["drift"]).unwrap();
    assert!(
        shown.contains(topic) && shown.contains("partitions: 1, declared 3"),
        "{shown}"
    );

    // Error: ensure_topics fails naming the topic, health is down, the relay holds back.
    let mut config = config_with(&brokers, vec![declared]);
    config.kafka.topic_drift = TopicPolicy::Error;
    let storage = Storage::connect(config).await.unwrap();
    match storage.ensure_topics().await {
        Err(Error::Config { key, reason }) => {
            assert_eq!(key, "kafka.topics");
            assert!(
                reason.contains(topic) && reason.contains("partitions: 1, declared 3"),
                "{reason}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let health = storage.health().await;
    let h = health.component("kafka/topics").unwrap();
    assert_eq!(h.status, HealthStatus::Down, "{h:?}");
    assert!(h.error.as_deref().unwrap().contains(topic), "{h:?}");
    assert_eq!(health.status, HealthStatus::Degraded);

    let db = "caas_kafka_topics_drift";
    storage.raw().database(db).drop().await.unwrap();
    let t = common::tenant("drift");
    let repo = DriftOrderRepository::try_new(&storage).expect("the topic is declared");
    repo.insert(
        &t,
        &DriftOrder {
            order_id: "o1".into(),
            tenant_id: t.to_string(),
            version: 0,
        },
    )
    .await
    .unwrap();
    let relay = storage
        .outbox_relay(RelayOptions::for_databases([db]))
        .unwrap();
    let mut deferred = 0;
    for _ in 0..3 {
        let r = relay.drain_once().await.unwrap();
        assert_eq!(r.published, 0, "{r:?}");
        assert_eq!(r.failed, 0, "held back, not attempted: {r:?}");
        deferred += r.deferred;
    }
    assert!(deferred >= 3, "the event waited in every pass");
    let lag = storage.outbox(db).lag().await.unwrap();
    assert_eq!((lag.pending, lag.parked), (1, 0), "{lag:?}");
    relay.release().await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_kafka_topics_undeclared",
    collection = "orders",
    outbox(topic = "test.topics.undeclared", insert = "order.placed")
)]
struct StrayOrder {
    #[repository(id)]
    order_id: String,
    #[repository(tenant)]
    tenant_id: String,
    #[repository(version)]
    version: u64,
}

#[tokio::test]
async fn an_entity_naming_an_undeclared_topic_is_refused_naming_both() {
    let mut config = common::config();
    config.kafka.topics = StorageConfig::default().kafka.topics;
    config.kafka.undeclared_topics = TopicPolicy::Error;
    let names_both = |e: &Error| match e {
        Error::Config { key, reason } => {
            key == "kafka.topics"
                && reason.contains("StrayOrder")
                && reason.contains("\"test.topics.undeclared\"")
        }
        _ => false,
    };

    // At connect, when the builder is told the entities.
    let e = Storage::builder(config.clone())
        .entities(&[StrayOrder::META])
        .connect()
        .await
        .unwrap_err();
    assert!(names_both(&e), "{e}");

    // At repository creation.
    let storage = Storage::connect(config.clone()).await.unwrap();
    let e = StrayOrderRepository::try_new(&storage).unwrap_err();
    assert!(names_both(&e), "{e}");

    // `new` cannot fail: the first write does, before anything is written.
    let db = "caas_kafka_topics_undeclared";
    storage.raw().database(db).drop().await.unwrap();
    let repo = StrayOrderRepository::new(&storage);
    let t = common::tenant("stray");
    let order = StrayOrder {
        order_id: "o1".into(),
        tenant_id: t.to_string(),
        version: 0,
    };
    let e = repo.insert(&t, &order).await.unwrap_err();
    assert!(names_both(&e), "{e}");
    assert!(
        repo.find_by_id(&t, &"o1".to_owned())
            .await
            .unwrap()
            .is_none(),
        "nothing written"
    );
    assert_eq!(storage.outbox(db).lag().await.unwrap().pending, 0);

    // A dead-letter topic is checked too.
    let e = storage
        .outbox_relay(RelayOptions {
            dlq_topic: Some("test.topics.nowhere".into()),
            ..RelayOptions::for_databases([db])
        })
        .unwrap_err();
    assert!(e.to_string().contains("test.topics.nowhere"), "{e}");

    // Warn: the write goes through.
    config.kafka.undeclared_topics = TopicPolicy::Warn;
    let storage = Storage::builder(config)
        .entities(&[StrayOrder::META])
        .connect()
        .await
        .unwrap();
    StrayOrderRepository::try_new(&storage)
        .unwrap()
        .insert(&t, &order)
        .await
        .unwrap();
}

#[tokio::test]
async fn replication_factor_three_on_one_broker_is_never_silently_one() {
    let brokers = common::config().kafka.brokers;
    // Fallback off: an error naming the topic and the broker count; nothing created.
    let strict = TopicSpec::named(unique("test.topics.rf3-strict"));
    let mut config = config_with(&brokers, vec![strict.clone()]);
    config.kafka.single_broker_fallback = false;
    let storage = Storage::connect(config).await.unwrap();
    match storage.ensure_topics().await {
        Err(Error::Config { key, reason }) => {
            assert_eq!(key, "kafka.topics");
            assert!(
                reason.contains(&strict.name)
                    && reason.contains("replication factor 3 needs 3 brokers; the cluster has 1"),
                "{reason}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(layout(&brokers, &strict.name), None, "not created");

    // Fallback on (the default): created with one replica and min.insync.replicas 1, and
    // reported as a fallback, not hidden.
    let dev = TopicSpec::named(unique("test.topics.rf3-dev"));
    let storage = Storage::connect(config_with(&brokers, vec![dev.clone()]))
        .await
        .unwrap();
    let report = storage.ensure_topics().await.unwrap();
    assert_eq!(report.brokers, 1);
    assert_eq!(report.created, vec![dev.name.clone()]);
    assert_eq!(report.fallbacks.len(), 1, "{report:?}");
    assert!(
        report.fallbacks[0].contains(&dev.name)
            && report.fallbacks[0].contains("replication factor 1 instead of 3"),
        "{report:?}"
    );
    assert_eq!(layout(&brokers, &dev.name), Some((3, 1)));
    assert_eq!(
        configs_of(&brokers, &dev.name).await["min.insync.replicas"],
        "1"
    );
    // Checked again: the fallback is known, not drift.
    let again = storage.ensure_topics().await.unwrap();
    assert!(
        again.drift.is_empty() && again.fallbacks.len() == 1,
        "{again:?}"
    );
    let health = storage.health().await;
    let h = health.component("kafka/topics").unwrap();
    assert!(
        serde_json::to_string(&h.details["fallbacks"])
            .unwrap()
            .contains(&dev.name),
        "{h:?}"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_kafka_topics_breaker",
    collection = "orders",
    outbox(topic = "test.topics.breaker", insert = "order.placed")
)]
struct BreakerOrder {
    #[repository(id)]
    order_id: String,
    #[repository(tenant)]
    tenant_id: String,
    #[repository(version)]
    version: u64,
}

/// The Kafka component's breaker state in health.
async fn breaker_state(storage: &Storage) -> String {
    let health = storage.health().await;
    health.component("kafka").unwrap().details["breaker"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_for<F, Fut>(what: &str, bound: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every `order.placed` aggregate id on `topic`, read from the beginning.
async fn aggregates_on(brokers: &str, topic: &str, want: usize) -> HashSet<String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("kafka-topics-test"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < want && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            seen.insert(envelope_from_message(&m).unwrap().aggregate_id);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_breaker_opens_during_an_outage_and_closes_after_it() {
    let mut kafka = tokio::task::spawn_blocking(common::private_kafka)
        .await
        .unwrap();
    let brokers = format!("127.0.0.1:{}", kafka.port);
    let topic = "test.topics.breaker";
    let mut config = config_with(
        &brokers,
        vec![TopicSpec {
            partitions: 1,
            replication_factor: 1,
            min_insync_replicas: Some(1),
            ..TopicSpec::named(topic)
        }],
    );
    config.kafka.message_timeout = Duration::from_secs(3);
    config.kafka.breaker_failures = 2;
    config.kafka.breaker_cooldown = Duration::from_secs(2);
    config.health.timeout = Duration::from_secs(2);
    let storage = Storage::builder(config)
        .entities(&[BreakerOrder::META])
        .connect()
        .await
        .unwrap();
    let db = "caas_kafka_topics_breaker";
    storage.raw().database(db).drop().await.unwrap();
    let repo = BreakerOrderRepository::try_new(&storage).unwrap();
    let relay = storage
        .outbox_relay(RelayOptions {
            poll_interval: Duration::from_millis(50),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            max_attempts: 1000,
            ..RelayOptions::for_databases([db])
        })
        .unwrap();
    let handle = relay.spawn();
    let t = common::tenant("breaker");
    let order = |i: usize| BreakerOrder {
        order_id: format!("o{i}"),
        tenant_id: t.to_string(),
        version: 0,
    };
    let pending = || async { storage.outbox(db).lag().await.unwrap().pending };

    for i in 0..5 {
        repo.insert(&t, &order(i)).await.unwrap();
    }
    wait_for(
        "first events delivered",
        Duration::from_secs(30),
        || async { pending().await == 0 },
    )
    .await;
    assert_eq!(breaker_state(&storage).await, "closed");

    // The broker goes away; writes go on (MongoDB), the relay's sends fail and the breaker
    // opens.
    kafka.stop();
    for i in 5..10 {
        repo.insert(&t, &order(i)).await.unwrap();
    }
    wait_for("breaker open", Duration::from_secs(40), || async {
        breaker_state(&storage).await != "closed"
    })
    .await;
    // While open, the relay sends nothing: the failures counted stop growing between probes
    // (each probe is one event).
    let failures = handle.metrics().failures;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        handle.metrics().failures <= failures + 1,
        "at most one probe failed in a second: {failures} -> {}",
        handle.metrics().failures
    );
    assert!(pending().await >= 5);

    // Back: the probe succeeds, the breaker closes, the backlog is delivered.
    let kafka = tokio::task::spawn_blocking(move || {
        kafka.start();
        kafka
    })
    .await
    .unwrap();
    wait_for("backlog delivered", Duration::from_secs(60), || async {
        pending().await == 0
    })
    .await;
    wait_for("breaker closed", Duration::from_secs(20), || async {
        breaker_state(&storage).await == "closed"
    })
    .await;
    let seen = aggregates_on(&brokers, topic, 10).await;
    let want: HashSet<String> = (0..10).map(|i| format!("o{i}")).collect();
    assert_eq!(seen, want, "every event, before and after the outage");
    handle.shutdown().await;
    drop(kafka);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_kafka_topics_adhoc",
    collection = "orders",
    outbox(topic = "test.topics.adhoc", insert = "order.placed")
)]
struct AdHocOrder {
    #[repository(id)]
    order_id: String,
    #[repository(tenant)]
    tenant_id: String,
    #[repository(version)]
    version: u64,
}

/// Under `kafka.undeclared_topics = "warn"` the relay creates an undeclared topic itself: on
/// the 3-broker cluster it gets the brokers' default replication factor (3), not 1 (the
/// relay's old hard-coded `topic_replication` default, which failed this test).
#[tokio::test]
async fn an_undeclared_topic_made_by_the_relay_is_not_given_one_replica_on_three_brokers() {
    let brokers = cluster_brokers();
    // Made by this run, not left by an earlier one.
    let topic = "test.topics.adhoc";
    let _ = admin(&brokers)
        .delete_topics(&[topic], &admin_options())
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while layout(&brokers, topic).is_some() {
        assert!(Instant::now() < deadline, "{topic} not deleted within 30s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut config = config_with(&brokers, Vec::new());
    config.kafka.undeclared_topics = TopicPolicy::Warn;
    let storage = Storage::builder(config)
        .entities(&[AdHocOrder::META])
        .connect()
        .await
        .unwrap();
    let db = "caas_kafka_topics_adhoc";
    storage.raw().database(db).drop().await.unwrap();
    let t = common::tenant("adhoc");
    AdHocOrderRepository::try_new(&storage)
        .unwrap()
        .insert(
            &t,
            &AdHocOrder {
                order_id: "o1".into(),
                tenant_id: t.to_string(),
                version: 0,
            },
        )
        .await
        .unwrap();
    let relay = storage
        .outbox_relay(RelayOptions::for_databases([db]))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while storage.outbox(db).lag().await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "not delivered within 60s");
        relay.drain_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.release().await;
    assert_eq!(layout(&brokers, topic), Some((3, 3)));
}

/// `kafka.topic_suffix`: declared topics are created and checked on the cluster under their
/// suffixed names, while reports keep the declared names; a drifted suffixed topic is found
/// as drift of its declaration, and the unsuffixed name is never touched.
#[tokio::test]
async fn a_topic_suffix_creates_and_checks_the_suffixed_topics() {
    let brokers = common::config().kafka.brokers;
    let topic = unique("test.topics.suffixed");
    let suffix = format!(".t{}", &uuid::Uuid::now_v7().simple().to_string()[22..]);
    let declared = TopicSpec {
        partitions: 2,
        replication_factor: 1,
        min_insync_replicas: Some(1),
        retention_ms: Some(3_600_000),
        ..TopicSpec::named(&topic)
    };
    let mut config = config_with(&brokers, vec![declared.clone()]);
    config.kafka.topic_suffix = suffix.clone();
    let on_cluster = config.kafka.topic_name(&topic);
    assert_eq!(on_cluster, format!("{topic}{suffix}"));

    let storage = Storage::connect(config.clone()).await.unwrap();
    let report = storage.ensure_topics().await.unwrap();
    assert_eq!(report.created, vec![topic.clone()], "{report:?}");
    assert_eq!(layout(&brokers, &on_cluster), Some((2, 1)));
    assert_eq!(
        layout(&brokers, &topic),
        None,
        "the declared name is not made"
    );
    assert_eq!(
        configs_of(&brokers, &on_cluster).await["retention.ms"],
        "3600000"
    );

    // Checked again: it exists as declared.
    let report = storage.check_topics().await.unwrap();
    assert!(report.is_clean() && report.created.is_empty(), "{report:?}");

    // Declared otherwise now: the suffixed topic's configs are compared, under the declared name.
    config.kafka.topics = vec![TopicSpec {
        retention_ms: Some(7_200_000),
        ..declared
    }];
    let storage = Storage::connect(config).await.unwrap();
    let report = storage.check_topics().await.unwrap();
    assert_eq!(report.drift.len(), 1, "{report:?}");
    assert_eq!(report.drift[0].topic, topic);
    assert!(
        report.drift[0]
            .differences
            .iter()
            .any(|d| d.starts_with("retention.ms: \"3600000\"")),
        "{report:?}"
    );
}
