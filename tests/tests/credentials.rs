//! TLS and credentials, end to end against the servers `scripts/services up` runs for them
//! (`tests/src/lib.rs::secure`): a Redis with `requirepass`, the same Redis over TLS, a
//! password-protected Redis Cluster reachable in plain TCP and over TLS with client
//! certificates, FerretDB's TLS listener, and Kafka's SASL_PLAINTEXT and SASL_SSL listeners
//! (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512). Wrong credentials must fail with an error that says
//! what is wrong and never shows the password.

use caas_storage_tests as common;
use common::secure;

use std::time::{Duration, Instant};

use caas_storage::outbox::{envelope_from_message, EventEnvelope, RelayOptions};
use caas_storage::prelude::*;
use caas_storage::{HealthStatus, StorageConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

// ---------------------------------------------------------------------------------------------
// Entities
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_platform", collection = "test_credential_notes",
             consistency = read_your_writes, cache(ttl = "5m"))]
struct Note {
    #[repository(id)]
    pub note_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub text: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_platform", collection = "test_credential_settings",
             consistency = read_your_writes, cache(ttl = "5m", local(ttl = "30s", capacity = 100)))]
struct Setting {
    #[repository(id)]
    pub key: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub value: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cred_plain", collection = "orders", consistency = strong,
             outbox(topic = "test.credentials.plain", insert = "order.placed"))]
struct PlainOrder {
    #[repository(id)]
    pub order_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cred_scram", collection = "orders", consistency = strong,
             outbox(topic = "test.credentials.scram", insert = "order.placed"))]
struct ScramOrder {
    #[repository(id)]
    pub order_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cred_ssl", collection = "orders", consistency = strong,
             outbox(topic = "test.credentials.ssl", insert = "order.placed"))]
struct SslOrder {
    #[repository(id)]
    pub order_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cred_wrong", collection = "orders", consistency = strong,
             outbox(topic = "test.credentials.wrong", insert = "order.placed"))]
struct WrongOrder {
    #[repository(id)]
    pub order_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(version)]
    pub version: u64,
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The suite's configuration (`CAAS_*` from the environment) with `extra` variables on top, as
/// a deployment that configures everything through its environment would.
fn config_with(extra: &[(&str, String)]) -> StorageConfig {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .collect();
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    common::suite_config(StorageConfig::from_vars(vars).expect("the configuration is valid"))
}

/// Every Redis component of a health report is up.
async fn assert_redis_up(storage: &Storage, what: &str) {
    let report = storage.health().await;
    let redis: Vec<_> = report
        .components
        .iter()
        .filter(|c| c.name.starts_with("redis/"))
        .collect();
    assert!(!redis.is_empty(), "{what}: no Redis component: {report:#?}");
    for c in redis {
        assert_eq!(c.status, HealthStatus::Up, "{what}: {c:#?}");
    }
}

/// The first Redis component's error, which must be down.
async fn redis_error(storage: &Storage, what: &str) -> String {
    let report = storage.health().await;
    let c = report
        .components
        .iter()
        .find(|c| c.name.starts_with("redis/"))
        .unwrap_or_else(|| panic!("{what}: no Redis component: {report:#?}"));
    assert_eq!(c.status, HealthStatus::Down, "{what}: {c:#?}");
    let error = c.error.clone().unwrap_or_default();
    eprintln!("{what}: {error}");
    error
}

/// A note is read through the cache (a miss, then a hit from Redis), updated, and read back
/// updated (the entry was invalidated), with no cache error on the way; its entry is in the
/// Redis the handle is configured with.
async fn caches_and_invalidates(storage: &Storage, label: &str) {
    let repo = NoteRepository::new(storage);
    let t = common::tenant(label);
    let id = "n1".to_owned();
    repo.insert(
        &t,
        &Note {
            note_id: id.clone(),
            tenant_id: t.to_string(),
            text: "first".into(),
            version: 0,
        },
    )
    .await
    .unwrap();
    for _ in 0..2 {
        assert_eq!(
            repo.find_by_id(&t, &id).await.unwrap().unwrap().text,
            "first"
        );
    }
    let mut conn = storage.raw().redis_cache_for("caas_platform");
    let keys = conn
        .scan_match(&format!("*{t}*"), None)
        .await
        .expect("the cache's Redis answers with the configured credentials");
    assert!(!keys.is_empty(), "{label}: the entry is in Redis");
    repo.update(
        &t,
        &id,
        NotePatch {
            text: Some("second".into()),
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        repo.find_by_id(&t, &id).await.unwrap().unwrap().text,
        "second",
        "{label}: the write invalidated the cached entry"
    );
    let m = storage.cache().metrics_of::<Note>();
    assert_eq!(m.errors, 0, "{label}: {m:?}");
    assert!(m.redis_hits >= 1 && m.sets >= 1, "{label}: {m:?}");
}

/// Two handles with in-process tiers on the same Redis: the second handle's invalidation
/// subscription (its own pub/sub connection) is live, and a write through the first drops the
/// second's in-process copy.
async fn pubsub_invalidates(a: &Storage, b: &Storage, label: &str) {
    let (repo_a, repo_b) = (SettingRepository::new(a), SettingRepository::new(b));
    let t = common::tenant(label);
    let key = "theme".to_owned();
    repo_a
        .insert(
            &t,
            &Setting {
                key: key.clone(),
                tenant_id: t.to_string(),
                value: "dark".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    for repo in [&repo_a, &repo_b] {
        for _ in 0..2 {
            assert_eq!(
                repo.find_by_id(&t, &key).await.unwrap().unwrap().value,
                "dark"
            );
        }
    }
    assert!(b.cache().metrics_of::<Setting>().local_hits >= 1);
    // The subscription connects in the background: wait until the server counts it.
    let channel = b.config().cache.invalidation_channel.clone();
    let mut conn = b.raw().redis_cache_for("caas_platform");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // On a cluster the command goes to every node and the counts are added up.
        let counts: std::collections::HashMap<String, i64> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        let n = counts.get(&channel).copied().unwrap_or(0);
        if n >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the invalidation subscriptions never connected ({n} subscriber(s) of {channel})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    repo_a
        .update(
            &t,
            &key,
            SettingPatch {
                value: Some("light".into()),
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while repo_b.find_by_id(&t, &key).await.unwrap().unwrap().value != "light" {
        assert!(
            Instant::now() < deadline,
            "{label}: the other instance kept its stale in-process copy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `config` with an invalidation channel of its own, so that the subscribers counted are the
/// test's (other tests subscribe on the same servers).
fn own_channel(mut config: StorageConfig) -> StorageConfig {
    config.cache.invalidation_channel = format!(
        "caas:cache:invalidate:{}",
        common::tenant("channel").as_str()
    );
    config
}

fn redis_url(scheme: &str, password: &str, addr: &str) -> String {
    format!("{scheme}://:{password}@{addr}/")
}

// ---------------------------------------------------------------------------------------------
// Redis, one server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_redis_with_a_password_caches_and_invalidates() {
    let mut config = common::config();
    config.redis.url = redis_url("redis", &secure::redis_password(), &secure::redis_auth());
    let config = own_channel(config);
    let a = Storage::connect(config.clone()).await.unwrap();
    assert_redis_up(&a, "password").await;
    caches_and_invalidates(&a, "redis-pw").await;
    let b = Storage::connect(config).await.unwrap();
    pubsub_invalidates(&a, &b, "redis-pw-pubsub").await;
}

#[tokio::test]
async fn a_wrong_redis_password_is_a_clear_error_without_the_password() {
    const WRONG: &str = "not-the-redis-password";
    let mut config = common::config();
    config.redis.url = redis_url("redis", WRONG, &secure::redis_auth());
    let storage = Storage::connect(config).await.unwrap();
    let error = redis_error(&storage, "wrong password").await;
    assert!(
        error.contains("WRONGPASS") || error.to_lowercase().contains("auth"),
        "the error says authentication failed: {error}"
    );
    assert!(
        !error.contains(WRONG),
        "the error shows the password: {error}"
    );

    // Reads still work (from MongoDB), and cache errors are counted, not raised.
    let repo = NoteRepository::new(&storage);
    let t = common::tenant("redis-wrong-pw");
    let note = Note {
        note_id: "n".into(),
        tenant_id: t.to_string(),
        text: "x".into(),
        version: 0,
    };
    repo.insert(&t, &note).await.unwrap();
    assert!(repo.find_by_id(&t, &note.note_id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_rediss_url_is_served_over_tls_and_verifies_the_server() {
    let url = redis_url("rediss", &secure::redis_password(), &secure::redis_tls());

    // Without the test CA, the server's certificate is not trusted: TLS is on, and verifies.
    let mut config = common::config();
    config.redis.url = url.clone();
    let storage = Storage::connect(config)
        .await
        .expect("a rediss:// URL connects (lazily)");
    let error = redis_error(&storage, "rediss without the CA").await;
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "the error names the untrusted certificate: {error}"
    );
    assert!(!error.contains(&secure::redis_password()), "{error}");

    // With it (from the environment, as a deployment sets it), caching works over TLS.
    let config = config_with(&[
        ("CAAS_REDIS_URL", url),
        ("CAAS_REDIS_TLS_CA_FILE", secure::tls_file("ca.crt")),
    ]);
    let config = own_channel(config);
    let a = Storage::connect(config.clone()).await.unwrap();
    assert_redis_up(&a, "rediss with the CA").await;
    caches_and_invalidates(&a, "rediss").await;
    let b = Storage::connect(config).await.unwrap();
    pubsub_invalidates(&a, &b, "rediss-pubsub").await;
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cluster_connections_keep_the_password_of_the_url() {
    let nodes = secure::redis_auth_cluster();
    let mut config = common::config();
    config.redis.url = redis_url("redis", &secure::redis_password(), &nodes[0]);
    config.redis.cluster_nodes = nodes;
    config.redis.key_prefix = format!("cred{}:", std::process::id());
    let config = own_channel(config);
    let a = Storage::connect(config.clone()).await.unwrap();
    assert_redis_up(&a, "cluster with a password").await;
    caches_and_invalidates(&a, "cluster-pw").await;
    // The pub/sub connection of the cache's invalidation listener is a connection of its own.
    let b = Storage::connect(config).await.unwrap();
    pubsub_invalidates(&a, &b, "cluster-pw-pubsub").await;
}

#[tokio::test]
async fn a_wrong_cluster_password_is_a_clear_error_without_the_password() {
    const WRONG: &str = "not-the-cluster-password";
    let nodes = secure::redis_auth_cluster();
    let mut config = common::config();
    config.redis.url = redis_url("redis", WRONG, &nodes[0]);
    config.redis.cluster_nodes = nodes;
    let storage = Storage::connect(config).await.unwrap();
    let error = redis_error(&storage, "cluster, wrong password").await;
    assert!(
        error.contains("WRONGPASS") || error.to_lowercase().contains("auth"),
        "the error says authentication failed: {error}"
    );
    assert!(
        !error.contains(WRONG),
        "the error shows the password: {error}"
    );
}

#[tokio::test]
async fn a_tls_cluster_with_client_certificates_caches_and_invalidates() {
    let nodes = secure::redis_tls_cluster();
    let url = redis_url("rediss", &secure::redis_password(), &nodes[0]);
    let prefix = format!("credtls{}:", std::process::id());
    let config = config_with(&[
        ("CAAS_REDIS_URL", url.clone()),
        ("CAAS_REDIS_CLUSTER_NODES", nodes.join(",")),
        ("CAAS_REDIS_KEY_PREFIX", prefix.clone()),
        ("CAAS_REDIS_TLS_CA_FILE", secure::tls_file("ca.crt")),
        ("CAAS_REDIS_TLS_CERT_FILE", secure::tls_file("client.crt")),
        ("CAAS_REDIS_TLS_KEY_FILE", secure::tls_file("client.key")),
    ]);
    let config = own_channel(config);
    let a = Storage::connect(config.clone()).await.unwrap();
    assert_redis_up(&a, "TLS cluster").await;
    caches_and_invalidates(&a, "cluster-tls").await;
    let b = Storage::connect(config).await.unwrap();
    pubsub_invalidates(&a, &b, "cluster-tls-pubsub").await;

    // The cluster requires client certificates: without one, the handshake is refused.
    let config = config_with(&[
        ("CAAS_REDIS_URL", url),
        ("CAAS_REDIS_CLUSTER_NODES", nodes.join(",")),
        ("CAAS_REDIS_KEY_PREFIX", prefix),
        ("CAAS_REDIS_TLS_CA_FILE", secure::tls_file("ca.crt")),
    ]);
    let storage = Storage::connect(config).await.unwrap();
    let error = redis_error(&storage, "TLS cluster without a client certificate").await;
    assert!(!error.contains(&secure::redis_password()), "{error}");
}

// ---------------------------------------------------------------------------------------------
// MongoDB
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mongodb_over_tls_with_the_ca_of_the_connection_string() {
    let ca = secure::tls_file("ca.crt");
    let mut config = common::config();
    config.mongodb.uri = format!("mongodb://{}/?tls=true&tlsCAFile={ca}", secure::mongo_tls());
    let storage = Storage::connect(config.clone()).await.unwrap();
    let repo = NoteRepository::new(&storage);
    let t = common::tenant("mongo-tls");
    let note = Note {
        note_id: "n".into(),
        tenant_id: t.to_string(),
        text: "over tls".into(),
        version: 0,
    };
    repo.insert(&t, &note).await.unwrap();
    assert_eq!(repo.get(&t, &note.note_id).await.unwrap().text, "over tls");

    // Without the CA the server is not trusted.
    config.mongodb.uri = format!("mongodb://{}/?tls=true", secure::mongo_tls());
    config.mongodb.server_selection_timeout = Duration::from_secs(2);
    let error = Storage::connect(config).await.unwrap_err().to_string();
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "the error names the untrusted certificate: {error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------

/// The configuration with Kafka reached through `brokers` with `properties`.
fn kafka_config(brokers: String, properties: &[(&str, String)]) -> StorageConfig {
    let mut config = common::config();
    config.kafka.brokers = brokers;
    config.kafka.message_timeout = Duration::from_secs(10);
    for (k, v) in properties {
        config.kafka.properties.insert((*k).to_owned(), v.clone());
    }
    config
}

fn sasl(protocol: &str, mechanism: &str, password: &str) -> Vec<(&'static str, String)> {
    let mut p = vec![
        ("security.protocol", protocol.to_owned()),
        ("sasl.mechanism", mechanism.to_owned()),
        ("sasl.username", secure::kafka_user()),
        ("sasl.password", password.to_owned()),
    ];
    if protocol.ends_with("SSL") {
        p.push(("ssl.ca.location", secure::tls_file("ca.crt")));
    }
    p
}

/// A consumer connected as the runtime's producer is (`KafkaConfig::client_config`: brokers and
/// the security properties).
fn consumer(config: &StorageConfig, group: &str) -> StreamConsumer {
    config
        .kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("the consumer is created with the configured security settings")
}

/// The events of `tenant` on `topic`, read through `consumer` until one arrived.
async fn events_of(
    consumer: &StreamConsumer,
    topic: &str,
    tenant: &TenantId,
) -> Vec<EventEnvelope> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        let n = md
            .as_ref()
            .ok()
            .and_then(|md| md.topics().iter().find(|t| t.name() == topic))
            .map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} never appeared: {md:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while out.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no event of {tenant} on {topic}");
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                let e = envelope_from_message(&m).unwrap();
                if e.tenant == tenant.as_str() {
                    out.push(e);
                }
            }
            Ok(Err(e)) => panic!("consumer: {e}"),
            Err(_) => panic!("no event of {tenant} on {topic}"),
        }
    }
    out
}

/// The `last_error` the relay recorded on `tenant`'s events in `database`'s outbox.
async fn delivery_errors(storage: &Storage, database: &str, tenant: &TenantId) -> Vec<String> {
    use futures::TryStreamExt;
    storage
        .outbox(database)
        .collection()
        .find(mongodb::bson::doc! { "tenant": tenant.as_str() })
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|d| d.get_str("last_error").ok().map(str::to_owned))
        .collect()
}

/// Drains `database`'s outbox until `tenant`'s event was published (or fails with the relay's
/// errors).
async fn relay_publishes(storage: &Storage, database: &str, tenant: &TenantId) {
    let mut options = RelayOptions::for_databases([database]);
    options.reconcile_after = Duration::from_millis(200);
    options.backoff_base = Duration::from_millis(50);
    let relay = storage.outbox_relay(options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut errors = Vec::new();
    loop {
        let report = relay.drain_once().await.unwrap();
        errors.extend(report.errors);
        if report.published > 0 && storage.outbox(database).pending_count().await.unwrap() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not publish through {}: {errors:?} {:?}",
            storage.config().kafka.brokers,
            delivery_errors(storage, database, tenant).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.release().await;
}

#[tokio::test]
async fn the_outbox_relay_publishes_through_sasl_plain() {
    let config = kafka_config(
        secure::kafka_sasl(),
        &sasl("SASL_PLAINTEXT", "PLAIN", &secure::kafka_password()),
    );
    let storage = Storage::connect(config.clone()).await.unwrap();
    storage.sync_indexes::<PlainOrder>().await.unwrap();
    let t = common::tenant("sasl-plain");
    PlainOrderRepository::new(&storage)
        .insert(
            &t,
            &PlainOrder {
                order_id: "o1".into(),
                tenant_id: t.to_string(),
                version: 0,
            },
        )
        .await
        .unwrap();
    relay_publishes(&storage, "caas_cred_plain", &t).await;
    let c = consumer(&config, &format!("cred-plain-{t}"));
    let events = events_of(&c, "test.credentials.plain", &t).await;
    assert_eq!(events[0].event_type, "order.placed");
}

#[tokio::test]
async fn the_outbox_relay_publishes_through_sasl_scram() {
    let config = kafka_config(
        secure::kafka_sasl(),
        &sasl("SASL_PLAINTEXT", "SCRAM-SHA-512", &secure::kafka_password()),
    );
    let storage = Storage::connect(config.clone()).await.unwrap();
    storage.sync_indexes::<ScramOrder>().await.unwrap();
    let t = common::tenant("sasl-scram");
    ScramOrderRepository::new(&storage)
        .insert(
            &t,
            &ScramOrder {
                order_id: "o1".into(),
                tenant_id: t.to_string(),
                version: 0,
            },
        )
        .await
        .unwrap();
    relay_publishes(&storage, "caas_cred_scram", &t).await;
    let c = consumer(&config, &format!("cred-scram-{t}"));
    let events = events_of(&c, "test.credentials.scram", &t).await;
    assert_eq!(events[0].event_type, "order.placed");
}

#[tokio::test]
async fn the_outbox_relay_publishes_through_sasl_ssl() {
    let config = kafka_config(
        secure::kafka_sasl_ssl(),
        &sasl("SASL_SSL", "SCRAM-SHA-256", &secure::kafka_password()),
    );
    let storage = Storage::connect(config.clone()).await.unwrap();
    storage.sync_indexes::<SslOrder>().await.unwrap();
    let t = common::tenant("sasl-ssl");
    SslOrderRepository::new(&storage)
        .insert(
            &t,
            &SslOrder {
                order_id: "o1".into(),
                tenant_id: t.to_string(),
                version: 0,
            },
        )
        .await
        .unwrap();
    relay_publishes(&storage, "caas_cred_ssl", &t).await;
    let c = consumer(&config, &format!("cred-ssl-{t}"));
    let events = events_of(&c, "test.credentials.ssl", &t).await;
    assert_eq!(events[0].event_type, "order.placed");
}

#[tokio::test]
async fn a_wrong_sasl_password_is_a_clear_error_without_the_password() {
    const WRONG: &str = "not-the-kafka-password";
    let config = kafka_config(
        secure::kafka_sasl(),
        &sasl("SASL_PLAINTEXT", "PLAIN", WRONG),
    );
    let storage = Storage::connect(config).await.unwrap();
    let report = storage.health().await;
    let kafka = report.component("kafka").expect("a kafka component");
    assert_eq!(kafka.status, HealthStatus::Down, "{kafka:#?}");
    let error = kafka.error.clone().unwrap_or_default();
    eprintln!("kafka, wrong SASL password: {error}");
    assert!(
        error.to_lowercase().contains("authentication"),
        "the error says authentication failed: {error}"
    );
    assert!(
        !error.contains(WRONG),
        "the error shows the password: {error}"
    );

    // The relay's delivery fails (librdkafka times the message out: a refused login does not
    // fail queued messages), and what it records holds no password either.
    storage.sync_indexes::<WrongOrder>().await.unwrap();
    let t = common::tenant("sasl-wrong");
    WrongOrderRepository::new(&storage)
        .insert(
            &t,
            &WrongOrder {
                order_id: "o1".into(),
                tenant_id: t.to_string(),
                version: 0,
            },
        )
        .await
        .unwrap();
    let mut options = RelayOptions::for_databases(["caas_cred_wrong"]);
    options.reconcile_after = Duration::from_millis(200);
    options.create_topics = false;
    let relay = storage.outbox_relay(options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let errors = loop {
        let report = relay.drain_once().await.unwrap();
        assert_eq!(report.published, 0, "{report:?}");
        let errors = delivery_errors(&storage, "caas_cred_wrong", &t).await;
        if !errors.is_empty() {
            break errors;
        }
        assert!(Instant::now() < deadline, "no delivery failure recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    relay.release().await;
    for error in &errors {
        assert!(
            !error.contains(WRONG),
            "the error shows the password: {error}"
        );
    }
    // The health report, asked again, still names the cause.
    let report = storage.health().await;
    let error = report.component("kafka").unwrap().error.clone().unwrap();
    assert!(error.contains("Authentication failed"), "{error}");
    storage
        .outbox("caas_cred_wrong")
        .collection()
        .delete_many(mongodb::bson::doc! { "tenant": t.as_str() })
        .await
        .unwrap();
}
