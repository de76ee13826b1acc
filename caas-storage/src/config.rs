//! [`StorageConfig`]: where the servers are and how the pools behave.
//!
//! Build it in code (`StorageConfig::default()` and field updates), from environment variables
//! ([`StorageConfig::from_env`]), from a TOML file ([`StorageConfig::from_toml_file`]), or both:
//! `from_env` reads the file named by `CAAS_CONFIG_FILE` first and lets variables override it.
//! The defaults are the reference design's pool numbers. A bad value is an [`Error::Config`]
//! naming the TOML key or the environment variable, and what is accepted.
//!
//! | TOML key | environment variable | default |
//! |---|---|---|
//! | `mongodb.uri` | `CAAS_MONGODB_URI` | `mongodb://127.0.0.1:27017/` |
//! | `mongodb.app_name` | `CAAS_MONGODB_APP_NAME` | `caas-storage` |
//! | `mongodb.max_pool_size` | `CAAS_MONGODB_MAX_POOL_SIZE` | 50 |
//! | `mongodb.min_pool_size` | `CAAS_MONGODB_MIN_POOL_SIZE` | 10 |
//! | `mongodb.max_idle_time` | `CAAS_MONGODB_MAX_IDLE_TIME` | `30s` |
//! | `mongodb.server_selection_timeout` | `CAAS_MONGODB_SERVER_SELECTION_TIMEOUT` | `5s` |
//! | `mongodb.connect_timeout` | `CAAS_MONGODB_CONNECT_TIMEOUT` | `10s` |
//! | `mongodb.socket_timeout` | `CAAS_MONGODB_SOCKET_TIMEOUT` | `45s` |
//! | `mongodb.probe_database` | `CAAS_MONGODB_PROBE_DATABASE` | `caas_platform` |
//! | `mongodb.database_suffix` | `CAAS_MONGODB_DATABASE_SUFFIX` | empty: appended to every database name the runtime uses (`caas_auth` becomes `caas_auth_t1`), so one server can hold isolated copies (the `#[caas_storage::test]` macro's per-test databases) |
//! | `mongodb.causal_wait` | `CAAS_MONGODB_CAUSAL_WAIT` | `2s` |
//! | `mongodb.slow_command_threshold` | `CAAS_MONGODB_SLOW_COMMAND_THRESHOLD` | `100ms` (commands at least this slow are logged under target `caas_storage::slow_query`) |
//! | `redis.url` | `CAAS_REDIS_URL` | `redis://127.0.0.1:6379/` |
//! | `redis.max_retries` | `CAAS_REDIS_MAX_RETRIES` | 3 |
//! | `redis.ready_check` | `CAAS_REDIS_READY_CHECK` | `true` |
//! | `redis.connection_timeout` | `CAAS_REDIS_CONNECTION_TIMEOUT` | `2s` |
//! | `redis.response_timeout` | `CAAS_REDIS_RESPONSE_TIMEOUT` | `2s` |
//! | `redis.key_prefix` | `CAAS_REDIS_KEY_PREFIX` | empty |
//! | `redis.cluster_nodes` | `CAAS_REDIS_CLUSTER_NODES` (comma-separated) | empty: not a cluster |
//! | `redis.tls_ca_file` | `CAAS_REDIS_TLS_CA_FILE` | none: the system's roots |
//! | `redis.tls_cert_file` | `CAAS_REDIS_TLS_CERT_FILE` | none: no client certificate |
//! | `redis.tls_key_file` | `CAAS_REDIS_TLS_KEY_FILE` | none |
//! | `redis.databases.platform_cache` | `CAAS_REDIS_DB_PLATFORM_CACHE` | 0 |
//! | `redis.databases.sessions` | `CAAS_REDIS_DB_SESSIONS` | 4 |
//! | `redis.databases.rate_limiting` | `CAAS_REDIS_DB_RATE_LIMITING` | 5 |
//! | `redis.databases.write_behind` | `CAAS_REDIS_DB_WRITE_BEHIND` | 6 |
//! | `redis.databases.services.NAME` | `CAAS_REDIS_DB_SERVICE_NAME` | auth 1, compliance 2, crypto 3 |
//! | `kafka.brokers` | `CAAS_KAFKA_BROKERS` | `127.0.0.1:9092` |
//! | `kafka.client_id` | `CAAS_KAFKA_CLIENT_ID` | `caas-storage` |
//! | `kafka.topic_suffix` | `CAAS_KAFKA_TOPIC_SUFFIX` | empty: appended to every topic name the runtime sends to Kafka (`platform.events` becomes `platform.events.t1`), so one cluster can hold isolated copies (the `#[caas_storage::test]` macro's per-test topics); declarations, outbox records and reports keep the declared names |
//! | `kafka.acks` | `CAAS_KAFKA_ACKS` | `all` |
//! | `kafka.enable_idempotence` | `CAAS_KAFKA_ENABLE_IDEMPOTENCE` | `true` |
//! | `kafka.message_timeout` | `CAAS_KAFKA_MESSAGE_TIMEOUT` | `30s` |
//! | `kafka.topics` (array of tables: `name`, `partitions`, `replication_factor`, `retention_ms`, `cleanup_policy`, `min_insync_replicas`, `configs`) | `CAAS_KAFKA_TOPICS` (`name[:partitions[:replication_factor]]` separated by commas; the other settings at their defaults) | the seed's seven (`platform.events`, `platform.audit`, `platform.notifications`, `auth.revocation.events`, `chat.messages`, `chat.events`, `notifications`), each 3 partitions, replication factor 3, `cleanup.policy` `delete`, `min.insync.replicas` 2 |
//! | `kafka.undeclared_topics` | `CAAS_KAFKA_UNDECLARED_TOPICS` | `error` (or `warn`): an outbox or dead-letter topic missing from `kafka.topics` |
//! | `kafka.topic_drift` | `CAAS_KAFKA_TOPIC_DRIFT` | `warn` (or `error`): an existing topic that differs from its declaration |
//! | `kafka.create_topics` | `CAAS_KAFKA_CREATE_TOPICS` | `true`: create missing declared topics |
//! | `kafka.single_broker_fallback` | `CAAS_KAFKA_SINGLE_BROKER_FALLBACK` | `true`: on a one-broker cluster, create with replication factor 1 (logged) |
//! | `kafka.breaker_failures` | `CAAS_KAFKA_BREAKER_FAILURES` | 3 |
//! | `kafka.breaker_cooldown` | `CAAS_KAFKA_BREAKER_COOLDOWN` | `10s` |
//! | `kafka.properties.NAME` (table) | `CAAS_KAFKA_PROPERTY_NAME` (`_` for `.`: `CAAS_KAFKA_PROPERTY_SASL_PASSWORD` sets `sasl.password`) | empty: extra librdkafka settings |
//! | `cache.op_timeout` | `CAAS_CACHE_OP_TIMEOUT` | `250ms` |
//! | `cache.breaker_failures` | `CAAS_CACHE_BREAKER_FAILURES` | 3 |
//! | `cache.breaker_cooldown` | `CAAS_CACHE_BREAKER_COOLDOWN` | `1s` |
//! | `cache.stampede_wait` | `CAAS_CACHE_STAMPEDE_WAIT` | `300ms` |
//! | `cache.load_lock_ttl` | `CAAS_CACHE_LOAD_LOCK_TTL` | `2s` |
//! | `cache.generation_ttl` | `CAAS_CACHE_GENERATION_TTL` | `10m` |
//! | `cache.invalidation_channel` | `CAAS_CACHE_INVALIDATION_CHANNEL` | `caas:cache:invalidate` |
//! | `write_behind.batch_size` | `CAAS_WRITE_BEHIND_BATCH_SIZE` | 500 |
//! | `write_behind.flush_interval` | `CAAS_WRITE_BEHIND_FLUSH_INTERVAL` | `50ms` |
//! | `write_behind.retry_backoff` | `CAAS_WRITE_BEHIND_RETRY_BACKOFF` | `500ms` |
//! | `write_behind.lease_ttl` | `CAAS_WRITE_BEHIND_LEASE_TTL` | `5s` |
//! | `write_behind.max_attempts` | `CAAS_WRITE_BEHIND_MAX_ATTEMPTS` | 5 |
//! | `write_behind.enqueue_timeout` | `CAAS_WRITE_BEHIND_ENQUEUE_TIMEOUT` | `2s` |
//! | `write_behind.max_pending` | `CAAS_WRITE_BEHIND_MAX_PENDING` | 1000000 |
//! | `write_behind.start_flusher` | `CAAS_WRITE_BEHIND_START_FLUSHER` | `true` |
//! | `write_behind.max_dead_letters` | `CAAS_WRITE_BEHIND_MAX_DEAD_LETTERS` | 10000 |
//! | `health.timeout` | `CAAS_HEALTH_TIMEOUT` | `2s` |
//! | `retention.enabled` | `CAAS_RETENTION_ENABLED` | `true` |
//! | `retention.interval` | `CAAS_RETENTION_INTERVAL` | `10m` |
//! | `retention.published_events` | `CAAS_RETENTION_PUBLISHED_EVENTS` | `7d` |
//! | `retention.abandoned_events` | `CAAS_RETENTION_ABANDONED_EVENTS` | `7d` |
//! | `retention.consumed_events` | `CAAS_RETENTION_CONSUMED_EVENTS` | `7d` |
//! | `migrations.write_back_on_read` | `CAAS_MIGRATIONS_WRITE_BACK_ON_READ` | `false` |
//! | `migrations.database` | `CAAS_MIGRATIONS_DATABASE` | `caas_platform` |
//! | `migrations.batch_size` | `CAAS_MIGRATIONS_BATCH_SIZE` | 500 |
//! | `migrations.rate_limit` | `CAAS_MIGRATIONS_RATE_LIMIT` | 0 (no limit) |
//! | `migrations.lock_lease` | `CAAS_MIGRATIONS_LOCK_LEASE` | `30s` |
//! | `migrations.lock_wait` | `CAAS_MIGRATIONS_LOCK_WAIT` | `30m` |
//! | `ttl.sweeper` | `CAAS_TTL_SWEEPER` | `true` |
//! | `ttl.interval` | `CAAS_TTL_INTERVAL` | `1m` |
//! | `ttl.batch_size` | `CAAS_TTL_BATCH_SIZE` | 1000 |
//! | `retry.max_attempts` | `CAAS_RETRY_MAX_ATTEMPTS` | 5 (1: no retries) |
//! | `retry.initial_backoff` | `CAAS_RETRY_INITIAL_BACKOFF` | `50ms` |
//! | `retry.max_backoff` | `CAAS_RETRY_MAX_BACKOFF` | `2s` |
//! | `metrics.redis_info_interval` | `CAAS_METRICS_REDIS_INFO_INTERVAL` | `15s` (`0s`: no Redis `INFO` sampling) |
//!
//! The outbox relay's settings (`outbox.relay.*`, e.g. `outbox.relay.batch_size`,
//! `outbox.relay.archive` = `auto` | `bulk` | `off`, default `auto`) are
//! [`RelayOptions`](crate::outbox::RelayOptions) fields, given to `Storage::outbox_relay`;
//! `RelayArchive` parses from text, and a bad value is an error naming its key
//! (`docs/outbox.md`).
//!
//! Durations are written with a unit: `250ms`, `5s`, `30m`, `2h`, `1d`, or sums like `1m30s`.
//!
//! TLS and credentials: in `mongodb.uri` (`mongodb://user:pw@host/?tls=true&tlsCAFile=...`),
//! in `redis.url` (`rediss://user:pw@host/`, with `redis.tls_*` for a private CA or a client
//! certificate; a cluster's nodes and the pub/sub connection use them too) and in
//! `kafka.properties` (`security.protocol`, `sasl.*`, `ssl.*`). `docs/security.md` has
//! examples of each. Passwords are masked wherever the configuration is printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// Everything [`Storage::connect`](crate::Storage::connect) needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The MongoDB-wire server.
    pub mongodb: MongoConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// Cache behaviour (Redis tier, breaker, stampede protection).
    pub cache: CacheConfig,
    /// The durable queue behind `eventual` entities.
    pub write_behind: WriteBehindConfig,
    /// Health checks.
    pub health: HealthConfig,
    /// How long the framework keeps what it writes for itself (outbox archive, consumed-event
    /// records, version claims).
    pub retention: RetentionConfig,
    /// Schema versions: reads of older documents, the batch migrator, its ledger and lock.
    pub migrations: MigrationsConfig,
    /// Expiry of documents of entities with a TTL index, where the server has no TTL indexes.
    pub ttl: TtlConfig,
    /// The retry policy for transient MongoDB faults (`connection/retry.rs`).
    pub retry: RetryConfig,
    /// Metrics the runtime samples on its own (see `caas_storage::telemetry::metrics`).
    pub metrics: MetricsConfig,
}

/// MongoDB connection and pool settings. `Debug` and `Serialize` mask the password in `uri`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string (`mongodb://` or `mongodb+srv://`).
    #[serde(serialize_with = "masked_url")]
    pub uri: String,
    /// Application name sent in the handshake (shows in server logs).
    pub app_name: String,
    /// Most connections per server.
    #[serde(deserialize_with = "lenient")]
    pub max_pool_size: u32,
    /// Connections kept open per server.
    #[serde(deserialize_with = "lenient")]
    pub min_pool_size: u32,
    /// How long an idle pooled connection lives.
    #[serde(with = "duration_text")]
    pub max_idle_time: Duration,
    /// How long to wait for a suitable server.
    #[serde(with = "duration_text")]
    pub server_selection_timeout: Duration,
    /// TCP connect timeout.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Upper bound on one database operation. The Rust driver has no `socketTimeoutMS`, so
    /// caas-storage enforces this bound around each operation it runs.
    #[serde(with = "duration_text")]
    pub socket_timeout: Duration,
    /// Database used for capability probes at connect (a scratch collection, left empty).
    pub probe_database: String,
    /// Appended to every database name the runtime uses (entities', outboxes', audit logs'),
    /// so that isolated copies share one server: `caas_auth` with suffix `_t1` is
    /// `caas_auth_t1`. Letters, digits, `_` and `-` only. Empty by default.
    pub database_suffix: String,
    /// How long a read with a [`CausalToken`](crate::consistency::CausalToken) waits for the
    /// version the token requires before it fails with a timeout.
    #[serde(with = "duration_text")]
    pub causal_wait: Duration,
    /// Commands at least this slow are logged at warn level under target
    /// `caas_storage::slow_query` (their shape, never their values) and counted in
    /// `caas_mongodb_slow_commands_total`. `0ms` logs every command.
    #[serde(with = "duration_text")]
    pub slow_command_threshold: Duration,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri: "mongodb://127.0.0.1:27017/".into(),
            app_name: "caas-storage".into(),
            max_pool_size: 50,
            min_pool_size: 10,
            max_idle_time: Duration::from_secs(30),
            server_selection_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            socket_timeout: Duration::from_secs(45),
            probe_database: "caas_platform".into(),
            database_suffix: String::new(),
            causal_wait: Duration::from_secs(2),
            slow_command_threshold: Duration::from_millis(100),
        }
    }
}

/// Redis connection settings and the allocation of logical databases. `Debug` and `Serialize`
/// mask the password in `url`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Connection URL (`redis://`, `rediss://`, `redis+unix://` or `unix://`). A database number
    /// in the URL is ignored: [`RedisDatabases`] chooses it per purpose.
    #[serde(serialize_with = "masked_url")]
    pub url: String,
    /// Reconnect attempts per request before it fails.
    #[serde(deserialize_with = "lenient")]
    pub max_retries: usize,
    /// Ping each connection before handing it out.
    #[serde(deserialize_with = "lenient")]
    pub ready_check: bool,
    /// Bound on establishing a connection.
    #[serde(with = "duration_text")]
    pub connection_timeout: Duration,
    /// Bound on one command's response.
    #[serde(with = "duration_text")]
    pub response_timeout: Duration,
    /// Prepended to every key this crate writes (so several deployments can share a Redis).
    pub key_prefix: String,
    /// Which logical database serves which purpose.
    pub databases: RedisDatabases,
    /// Redis Cluster seed nodes (`host:port`). When set, `url` only supplies the scheme
    /// (`rediss://` for TLS), the username, the password and the protocol, which every node
    /// connection (and the pub/sub connection) uses; every purpose shares the cluster's
    /// database 0, and keys keep purposes apart.
    #[serde(deserialize_with = "list")]
    pub cluster_nodes: Vec<String>,
    /// PEM file of the certificate authorities a `rediss://` server's certificate must chain
    /// to, instead of the system's roots (a private CA). Only with `rediss://`.
    #[serde(
        deserialize_with = "optional_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate presented to a `rediss://` server that asks for one
    /// (`tls-auth-clients yes`); needs `tls_key_file`.
    #[serde(
        deserialize_with = "optional_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the private key of `tls_cert_file`.
    #[serde(
        deserialize_with = "optional_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".into(),
            max_retries: 3,
            ready_check: true,
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            key_prefix: String::new(),
            databases: RedisDatabases::default(),
            cluster_nodes: Vec::new(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// Logical Redis databases by purpose, as allocated in the reference design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisDatabases {
    /// Cache of platform-level data and of services without their own database.
    #[serde(deserialize_with = "lenient")]
    pub platform_cache: u8,
    /// Session storage.
    #[serde(deserialize_with = "lenient")]
    pub sessions: u8,
    /// Rate limiting.
    #[serde(deserialize_with = "lenient")]
    pub rate_limiting: u8,
    /// Write-behind queues of `eventual` entities.
    #[serde(deserialize_with = "lenient")]
    pub write_behind: u8,
    /// Per-service caches, by service name. An entity in MongoDB database `caas_auth` caches in
    /// the database of service `auth`.
    #[serde(deserialize_with = "lenient_map")]
    pub services: BTreeMap<String, u8>,
}

impl Default for RedisDatabases {
    fn default() -> Self {
        RedisDatabases {
            platform_cache: 0,
            sessions: 4,
            rate_limiting: 5,
            write_behind: 6,
            services: [("auth", 1), ("compliance", 2), ("crypto", 3)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }
}

impl RedisDatabases {
    /// The cache database for entities stored in MongoDB database `database`: the service's own
    /// (`caas_auth` -> service `auth`) or else the platform cache.
    pub fn cache_db_for(&self, database: &str) -> u8 {
        let service = database.strip_prefix("caas_").unwrap_or(database);
        self.services
            .get(service)
            .copied()
            .unwrap_or(self.platform_cache)
    }

    /// Every distinct logical database with the purposes it serves, in database order.
    pub fn purposes(&self) -> BTreeMap<u8, Vec<String>> {
        let mut out: BTreeMap<u8, Vec<String>> = BTreeMap::new();
        out.entry(self.platform_cache)
            .or_default()
            .push("platform_cache".into());
        for (name, db) in &self.services {
            out.entry(*db).or_default().push(format!("{name}_cache"));
        }
        out.entry(self.sessions)
            .or_default()
            .push("sessions".into());
        out.entry(self.rate_limiting)
            .or_default()
            .push("rate_limiting".into());
        out.entry(self.write_behind)
            .or_default()
            .push("write_behind".into());
        out
    }
}

/// Kafka producer settings. `Debug` and `Serialize` mask the values of `properties` that hold
/// secrets (`sasl.password`, `ssl.key.*`, ...).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// Appended to every topic name the runtime sends to Kafka: the relay publishes an
    /// `outbox(topic = "platform.events")` event to `platform.events<suffix>`, and the declared
    /// topics are created and checked under those names. Everything else keeps the declared
    /// name: [`topics`](Self::topics), outbox records, topic reports. Consumers subscribe to
    /// [`topic_name`](Self::topic_name). Empty by default; the `#[caas_storage::test]` macro
    /// gives each test on the servers one of its own.
    pub topic_suffix: String,
    /// Producer acknowledgements: `all`, `1` or `0`. Idempotence requires `all`.
    pub acks: String,
    /// Idempotent producer (no duplicates from producer retries).
    #[serde(deserialize_with = "lenient")]
    pub enable_idempotence: bool,
    /// How long the producer keeps trying to deliver one message.
    #[serde(with = "duration_text")]
    pub message_timeout: Duration,
    /// Extra librdkafka properties, passed through as given to every Kafka client the runtime
    /// makes (the producer, the relay's admin client) and to
    /// [`client_config`](Self::client_config) for your consumers; they win over the settings
    /// above. Security goes here: `security.protocol` (`SASL_PLAINTEXT`, `SASL_SSL`, `SSL`),
    /// `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`), `sasl.username`,
    /// `sasl.password`, `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`, ...
    #[serde(serialize_with = "masked_properties")]
    pub properties: BTreeMap<String, String>,
    /// The topics events may be published to, with their settings (see `docs/kafka.md`).
    /// Missing ones are created (with [`create_topics`](Self::create_topics)) and existing ones
    /// are checked against their declaration by the relay when it starts and by
    /// [`Storage::ensure_topics`](crate::Storage::ensure_topics).
    #[serde(deserialize_with = "topic_list")]
    pub topics: Vec<TopicSpec>,
    /// What an entity's `outbox(topic = ...)` (or the relay's dead-letter topic) naming a
    /// topic missing from [`topics`](Self::topics) gets: an error (the default) or a warning.
    pub undeclared_topics: TopicPolicy,
    /// What an existing topic that differs from its declaration (fewer partitions, another
    /// `cleanup.policy`, ...) gets: a warning (the default; health lists the drift) or an error
    /// (the relay does not publish to it, `ensure_topics` fails).
    pub topic_drift: TopicPolicy,
    /// Create the declared topics that do not exist.
    #[serde(deserialize_with = "lenient")]
    pub create_topics: bool,
    /// On a cluster of exactly one broker (a dev broker), create topics with replication
    /// factor 1 (and `min.insync.replicas` 1) instead of failing, with a warning. A cluster
    /// of two or more brokers never gets a lower replication factor than declared.
    #[serde(deserialize_with = "lenient")]
    pub single_broker_fallback: bool,
    /// Consecutive Kafka failures (transport, all brokers down, timeouts; not a refused
    /// message) that open the Kafka circuit breaker.
    #[serde(deserialize_with = "lenient")]
    pub breaker_failures: u32,
    /// How long an open Kafka breaker keeps the relay from publishing before one probe.
    #[serde(with = "duration_text")]
    pub breaker_cooldown: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            client_id: "caas-storage".into(),
            topic_suffix: String::new(),
            acks: "all".into(),
            enable_idempotence: true,
            message_timeout: Duration::from_secs(30),
            properties: BTreeMap::new(),
            topics: SEED_TOPICS.iter().map(|t| TopicSpec::named(*t)).collect(),
            undeclared_topics: TopicPolicy::Error,
            topic_drift: TopicPolicy::Warn,
            create_topics: true,
            single_broker_fallback: true,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

impl KafkaConfig {
    /// The name topic `declared` has on the cluster: `declared` with
    /// [`topic_suffix`](Self::topic_suffix) appended. Subscribe to this.
    pub fn topic_name(&self, declared: &str) -> String {
        format!("{declared}{}", self.topic_suffix)
    }

    /// The declared name of cluster topic `name` (the inverse of
    /// [`topic_name`](Self::topic_name)); `None` for a topic without the suffix.
    pub(crate) fn declared_name<'n>(&self, name: &'n str) -> Option<&'n str> {
        name.strip_suffix(self.topic_suffix.as_str())
    }

    /// The declaration of topic `name`, if [`topics`](Self::topics) has one.
    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// Declares `spec` (replacing a declaration of the same name); for building a
    /// configuration in code.
    pub fn declare_topic(&mut self, spec: TopicSpec) -> &mut Self {
        self.topics.retain(|t| t.name != spec.name);
        self.topics.push(spec);
        self
    }
}

/// The topics of the reference design, declared by default.
pub const SEED_TOPICS: [&str; 7] = [
    "platform.events",
    "platform.audit",
    "platform.notifications",
    "auth.revocation.events",
    "chat.messages",
    "chat.events",
    "notifications",
];

/// A declared Kafka topic (`[[kafka.topics]]`). Settings left out take the defaults below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Partitions (default 3). A topic with another count is drift: Kafka can add partitions
    /// but never remove them, and adding them moves keys to other partitions, so the framework
    /// reports it and changes nothing.
    #[serde(deserialize_with = "lenient")]
    pub partitions: i32,
    /// Replicas of each partition (default 3). Never lowered silently: see
    /// [`KafkaConfig::single_broker_fallback`].
    #[serde(deserialize_with = "lenient")]
    pub replication_factor: i32,
    /// `retention.ms` (default: the broker's).
    pub retention_ms: Option<i64>,
    /// `cleanup.policy`: `delete` (the default), `compact`, or `compact,delete`.
    pub cleanup_policy: Option<String>,
    /// `min.insync.replicas` (default 2: with `acks = all`, a write is acknowledged once two
    /// replicas have it, and one broker may be down).
    pub min_insync_replicas: Option<i32>,
    /// Other topic configs, set at creation and checked for drift like the ones above.
    pub configs: BTreeMap<String, String>,
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            name: String::new(),
            partitions: 3,
            replication_factor: 3,
            retention_ms: None,
            cleanup_policy: Some("delete".into()),
            min_insync_replicas: Some(2),
            configs: BTreeMap::new(),
        }
    }
}

impl TopicSpec {
    /// `name` with the default settings.
    pub fn named(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            ..TopicSpec::default()
        }
    }

    /// Every topic config the declaration sets (`cleanup.policy`, `retention.ms`,
    /// `min.insync.replicas`, then [`configs`](Self::configs)), as Kafka names them.
    pub fn topic_configs(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(p) = &self.cleanup_policy {
            out.insert("cleanup.policy".to_owned(), p.clone());
        }
        if let Some(r) = self.retention_ms {
            out.insert("retention.ms".to_owned(), r.to_string());
        }
        if let Some(m) = self.min_insync_replicas {
            out.insert("min.insync.replicas".to_owned(), m.to_string());
        }
        for (k, v) in &self.configs {
            out.insert(k.clone(), v.clone());
        }
        out
    }

    fn problem(&self) -> Option<String> {
        if self.name.is_empty() || self.name.len() > 249 {
            return Some("a topic name is 1 to 249 characters".into());
        }
        if let Some(bad) = self
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
        {
            return Some(format!(
                "{:?} cannot be a Kafka topic name (it contains {bad:?}; use letters, digits, `.`, `_`, `-`)",
                self.name
            ));
        }
        if self.partitions < 1 {
            return Some(format!("{}: partitions must be at least 1", self.name));
        }
        if self.replication_factor < 1 {
            return Some(format!(
                "{}: replication_factor must be at least 1",
                self.name
            ));
        }
        if let Some(m) = self.min_insync_replicas {
            if m < 1 || m > self.replication_factor {
                return Some(format!(
                    "{}: min_insync_replicas {m} must be between 1 and the replication factor ({})",
                    self.name, self.replication_factor
                ));
            }
        }
        if let Some(p) = &self.cleanup_policy {
            let mut parts: Vec<&str> = p.split(',').map(str::trim).collect();
            parts.sort_unstable();
            if !matches!(
                parts.as_slice(),
                ["delete"] | ["compact"] | ["compact", "delete"]
            ) {
                return Some(format!(
                    "{}: cleanup_policy {p:?} is not one of delete, compact, compact,delete",
                    self.name
                ));
            }
        }
        None
    }
}

/// What a topic problem gets: `kafka.undeclared_topics` and `kafka.topic_drift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicPolicy {
    /// Logged at warn level and shown in health; the work goes on.
    Warn,
    /// Refused with an [`Error::Config`].
    Error,
}

impl TopicPolicy {
    /// `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicPolicy::Warn => "warn",
            TopicPolicy::Error => "error",
        }
    }
}

/// How the cache behaves around Redis. Per-entity TTLs and strategies are declared on the
/// entity (`cache(...)`); these settings are per process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bound on one cache call to Redis; past it the call counts as failed and the request goes
    /// on to MongoDB.
    #[serde(with = "duration_text")]
    pub op_timeout: Duration,
    /// Consecutive Redis failures that open the circuit breaker.
    #[serde(deserialize_with = "lenient")]
    pub breaker_failures: u32,
    /// How long an open breaker skips Redis before one probe call.
    #[serde(with = "duration_text")]
    pub breaker_cooldown: Duration,
    /// How long a miss waits for another caller's load of the same entry before loading itself.
    #[serde(with = "duration_text")]
    pub stampede_wait: Duration,
    /// How long a loader holds the stampede lock at most.
    #[serde(with = "duration_text")]
    pub load_lock_ttl: Duration,
    /// How long an entry's invalidation generation is kept after its last write.
    #[serde(with = "duration_text")]
    pub generation_ttl: Duration,
    /// Pub/sub channel that carries invalidations to other instances' in-process tiers.
    pub invalidation_channel: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            op_timeout: Duration::from_millis(250),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(1),
            stampede_wait: Duration::from_millis(300),
            load_lock_ttl: Duration::from_secs(2),
            generation_ttl: Duration::from_secs(600),
            invalidation_channel: "caas:cache:invalidate".into(),
        }
    }
}

/// The write-behind queue (see [`write_behind`](crate::write_behind)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteBehindConfig {
    /// Most queued writes applied in one round.
    #[serde(deserialize_with = "lenient")]
    pub batch_size: usize,
    /// Pause between rounds when the queue is empty.
    #[serde(with = "duration_text")]
    pub flush_interval: Duration,
    /// Pause after a round that failed (database down).
    #[serde(with = "duration_text")]
    pub retry_backoff: Duration,
    /// How long a flusher's lease on a queue lasts without renewal.
    #[serde(with = "duration_text")]
    pub lease_ttl: Duration,
    /// Attempts at an entry the database rejects for good before it is dead-lettered.
    #[serde(deserialize_with = "lenient")]
    pub max_attempts: u32,
    /// Bound on appending a write to the queue.
    #[serde(with = "duration_text")]
    pub enqueue_timeout: Duration,
    /// Most writes a queue holds; past it, queued writes fail with `Error::QueueFull` (the
    /// database has been unreachable for long) instead of growing Redis without bound.
    #[serde(deserialize_with = "lenient")]
    pub max_pending: u64,
    /// Run flushers in this process (turn off in processes that only enqueue). A flusher
    /// starts when a repository of an entity is made and its queue holds writes (left by an
    /// earlier process, say), and whenever a write is queued.
    #[serde(deserialize_with = "lenient")]
    pub start_flusher: bool,
    /// Most entries kept in each dead-letter stream; the oldest go first.
    #[serde(deserialize_with = "lenient")]
    pub max_dead_letters: u64,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        WriteBehindConfig {
            batch_size: 500,
            flush_interval: Duration::from_millis(50),
            retry_backoff: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
            max_attempts: 5,
            enqueue_timeout: Duration::from_secs(2),
            max_pending: 1_000_000,
            start_flusher: true,
            max_dead_letters: 10_000,
        }
    }
}

/// The retry policy for transient MongoDB faults: which calls are sent again is decided by
/// `connection/retry.rs` (reads after any transient fault, writes only when the command never
/// left); this says how often and how far apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1: no retries).
    #[serde(deserialize_with = "lenient")]
    pub max_attempts: u32,
    /// The pause after the first failed attempt; it doubles after each one, up to
    /// `max_backoff`, half of it random.
    #[serde(with = "duration_text")]
    pub initial_backoff: Duration,
    /// The longest pause between attempts.
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Health check settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Bound on each component's check; a dead server is reported down after this long.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            timeout: Duration::from_secs(2),
        }
    }
}

/// Retention of what the framework writes for itself, enforced by a background task of every
/// `Storage` (under a lease, so one instance at a time does it), sizes in `Storage::health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Run the retention task in this process.
    #[serde(deserialize_with = "lenient")]
    pub enabled: bool,
    /// Between two runs.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Published outbox events are kept this long after publication (for audits and
    /// reconciliation), then deleted.
    #[serde(with = "duration_text")]
    pub published_events: Duration,
    /// Outbox events whose write did not happen are kept this long, then deleted.
    #[serde(with = "duration_text")]
    pub abandoned_events: Duration,
    /// Consumed-event records of deduplicators are kept this long (longer than any
    /// redelivery can come late), then deleted.
    #[serde(with = "duration_text")]
    pub consumed_events: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let week = Duration::from_secs(7 * 24 * 3600);
        RetentionConfig {
            enabled: true,
            interval: Duration::from_secs(600),
            published_events: week,
            abandoned_events: week,
            consumed_events: week,
        }
    }
}

/// Schema versions and migrations (see `docs/migrations.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationsConfig {
    /// Write a document a read upgraded back at the current schema version. Off by default:
    /// during a rolling update, replicas of the older release cannot read what is written at
    /// the newer version, so documents are better rewritten by `Storage::migrate` once every
    /// replica runs the new release.
    #[serde(deserialize_with = "lenient")]
    pub write_back_on_read: bool,
    /// The MongoDB database holding the migration ledger (`_caas_migrations`) and its lock.
    pub database: String,
    /// Documents the batch migrator reads and rewrites per batch.
    #[serde(deserialize_with = "lenient")]
    pub batch_size: usize,
    /// Most documents per second the batch migrator rewrites (0: as fast as it can).
    #[serde(deserialize_with = "lenient")]
    pub rate_limit: u32,
    /// How long the migration lock lasts without renewal; its holder renews it every third of
    /// this, and a holder that stopped renewing (it died) is taken over after it.
    #[serde(with = "duration_text")]
    pub lock_lease: Duration,
    /// How long `Storage::migrate` waits for another process holding the lock before it gives
    /// up with `Error::MigrationLock`.
    #[serde(with = "duration_text")]
    pub lock_wait: Duration,
}

impl Default for MigrationsConfig {
    fn default() -> Self {
        MigrationsConfig {
            write_back_on_read: false,
            database: "caas_platform".to_owned(),
            batch_size: 500,
            rate_limit: 0,
            lock_lease: Duration::from_secs(30),
            lock_wait: Duration::from_secs(30 * 60),
        }
    }
}

/// The TTL sweeper: where the server has no TTL indexes (FerretDB), a background task of every
/// `Storage` (under a lease, one instance at a time) deletes the expired documents of the
/// entities that declare a TTL index. Where the server has them, the index does it and the
/// sweeper stays idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtlConfig {
    /// Run the sweeper in this process.
    #[serde(deserialize_with = "lenient")]
    pub sweeper: bool,
    /// Between two runs.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Most documents one run deletes per entity (the rest wait for the next run).
    #[serde(deserialize_with = "lenient")]
    pub batch_size: u64,
}

impl Default for TtlConfig {
    fn default() -> Self {
        TtlConfig {
            sweeper: true,
            interval: Duration::from_secs(60),
            batch_size: 1000,
        }
    }
}

/// Metrics sampled by background tasks of every `Storage` (the rest are recorded as things
/// happen). Recorded through the `metrics` facade: nothing is exported unless the service
/// installs a recorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Between two samples of Redis `INFO` (`caas_redis_used_memory_bytes`,
    /// `caas_redis_evicted_keys_total`, `caas_redis_connected_clients`; on a cluster one
    /// sample per primary). `0s` disables the sampling task.
    #[serde(with = "duration_text")]
    pub redis_info_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            redis_info_interval: Duration::from_secs(15),
        }
    }
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &crate::redact::url(&self.uri))
            .field("app_name", &self.app_name)
            .field("max_pool_size", &self.max_pool_size)
            .field("min_pool_size", &self.min_pool_size)
            .field("max_idle_time", &self.max_idle_time)
            .field("server_selection_timeout", &self.server_selection_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("socket_timeout", &self.socket_timeout)
            .field("probe_database", &self.probe_database)
            .field("database_suffix", &self.database_suffix)
            .field("causal_wait", &self.causal_wait)
            .field("slow_command_threshold", &self.slow_command_threshold)
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("max_retries", &self.max_retries)
            .field("ready_check", &self.ready_check)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("databases", &self.databases)
            .field("cluster_nodes", &self.cluster_nodes)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("topic_suffix", &self.topic_suffix)
            .field("acks", &self.acks)
            .field("enable_idempotence", &self.enable_idempotence)
            .field("message_timeout", &self.message_timeout)
            .field("properties", &masked(&self.properties))
            .field("topics", &self.topics)
            .field("undeclared_topics", &self.undeclared_topics)
            .field("topic_drift", &self.topic_drift)
            .field("create_topics", &self.create_topics)
            .field("single_broker_fallback", &self.single_broker_fallback)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .finish()
    }
}

fn masked(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(k, v)| {
            let v = if crate::redact::is_secret_property(k) {
                crate::redact::MASK
            } else {
                v.as_str()
            };
            (k.as_str(), v)
        })
        .collect()
}

fn masked_url<S: serde::Serializer>(url: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact::url(url))
}

fn masked_properties<S: serde::Serializer>(
    properties: &BTreeMap<String, String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    masked(properties).serialize(s)
}

impl StorageConfig {
    /// Every credential the configuration holds (passwords in the URLs, secret Kafka
    /// properties), for masking them in text that may quote them (driver errors).
    pub(crate) fn credentials(&self) -> Vec<&str> {
        let mut out: Vec<&str> = [&self.mongodb.uri, &self.redis.url]
            .into_iter()
            .filter_map(|u| crate::redact::password(u))
            .collect();
        out.extend(
            self.kafka
                .properties
                .iter()
                .filter(|(k, _)| crate::redact::is_secret_property(k))
                .map(|(_, v)| v.as_str()),
        );
        out
    }
}

/// Environment variable sections: `CAAS_<SECTION>_<KEY>` sets `<section>.<key>`.
const ENV_SECTIONS: [(&str, &str); 11] = [
    ("CAAS_WRITE_BEHIND_", "write_behind"),
    ("CAAS_MONGODB_", "mongodb"),
    ("CAAS_REDIS_", "redis"),
    ("CAAS_KAFKA_", "kafka"),
    ("CAAS_CACHE_", "cache"),
    ("CAAS_HEALTH_", "health"),
    ("CAAS_RETENTION_", "retention"),
    ("CAAS_MIGRATIONS_", "migrations"),
    ("CAAS_TTL_", "ttl"),
    ("CAAS_RETRY_", "retry"),
    ("CAAS_METRICS_", "metrics"),
];

impl StorageConfig {
    /// Reads the process environment: the TOML file named by `CAAS_CONFIG_FILE` if set, then
    /// every `CAAS_MONGODB_*`, `CAAS_REDIS_*`, `CAAS_KAFKA_*` and `CAAS_HEALTH_*` variable on
    /// top. An unknown variable in those families is an error (it is most likely a typo).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// [`from_env`](Self::from_env) over the given variables instead of the process
    /// environment (for tests and for services that assemble their own).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let mut table = match vars.iter().find(|(k, _)| k == "CAAS_CONFIG_FILE") {
            Some((_, path)) => read_toml_table(Path::new(path))?,
            None => toml::Table::new(),
        };
        let mut origins = BTreeMap::new();
        for (name, value) in &vars {
            let Some(path) = env_path(name) else { continue };
            set_path(&mut table, &path, toml::Value::String(value.clone()));
            origins.insert(path.join("."), name.clone());
        }
        Self::from_table(table, &origins)
    }

    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::config("<toml>", e.message().to_owned()))?;
        Self::from_table(table, &BTreeMap::new())
    }

    /// Reads and parses a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_table(read_toml_table(path.as_ref())?, &BTreeMap::new())
    }

    fn from_table(table: toml::Table, origins: &BTreeMap<String, String>) -> Result<Self> {
        let config: StorageConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let mut reason = inner.message().to_owned();
                // deny_unknown_fields reports at the parent; name the unknown key itself.
                let key = match unknown_field(&reason) {
                    Some(field) if path == field || path.ends_with(&format!(".{field}")) => path,
                    Some(field) if path == "." => field.to_owned(),
                    Some(field) => format!("{path}.{field}"),
                    None => path,
                };
                if let Some(var) = origins.get(&key) {
                    reason = format!("{reason} (from {var})");
                    return Error::config(var.clone(), reason);
                }
                Error::config(key, reason)
            })?;
        config.validate(origins)?;
        Ok(config)
    }

    /// Checks values that parse but cannot work. Called by every constructor here and by
    /// [`Storage::connect`](crate::Storage::connect).
    pub fn check(&self) -> Result<()> {
        self.validate(&BTreeMap::new())
    }

    fn validate(&self, origins: &BTreeMap<String, String>) -> Result<()> {
        let err = |key: &str, reason: String| {
            Error::config(
                origins.get(key).cloned().unwrap_or_else(|| key.to_owned()),
                reason,
            )
        };
        let m = &self.mongodb;
        if !(m.uri.starts_with("mongodb://") || m.uri.starts_with("mongodb+srv://")) {
            return Err(err(
                "mongodb.uri",
                format!(
                    "{:?} is not a MongoDB connection string; expected mongodb://host:port/ or mongodb+srv://host/",
                    crate::redact::url(&m.uri)
                ),
            ));
        }
        if m.max_pool_size == 0 {
            return Err(err("mongodb.max_pool_size", "must be at least 1".into()));
        }
        if m.database_suffix.len() > 24
            || !m
                .database_suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(err(
                "mongodb.database_suffix",
                format!(
                    "{:?}: at most 24 letters, digits, '_' or '-' (it becomes part of database names)",
                    m.database_suffix
                ),
            ));
        }
        if m.min_pool_size > m.max_pool_size {
            return Err(err(
                "mongodb.min_pool_size",
                format!(
                    "{} is larger than mongodb.max_pool_size ({})",
                    m.min_pool_size, m.max_pool_size
                ),
            ));
        }
        for (key, d) in [
            (
                "mongodb.server_selection_timeout",
                m.server_selection_timeout,
            ),
            ("mongodb.connect_timeout", m.connect_timeout),
            ("mongodb.socket_timeout", m.socket_timeout),
            ("redis.connection_timeout", self.redis.connection_timeout),
            ("redis.response_timeout", self.redis.response_timeout),
            ("kafka.message_timeout", self.kafka.message_timeout),
            ("kafka.breaker_cooldown", self.kafka.breaker_cooldown),
            ("cache.op_timeout", self.cache.op_timeout),
            ("cache.load_lock_ttl", self.cache.load_lock_ttl),
            ("cache.generation_ttl", self.cache.generation_ttl),
            ("health.timeout", self.health.timeout),
            ("retention.interval", self.retention.interval),
            ("migrations.lock_lease", self.migrations.lock_lease),
            ("migrations.lock_wait", self.migrations.lock_wait),
            ("ttl.interval", self.ttl.interval),
        ] {
            if d.is_zero() {
                return Err(err(key, "must be longer than zero".into()));
            }
        }
        if self.retry.max_attempts == 0 {
            return Err(err(
                "retry.max_attempts",
                "must be at least 1 (1 means no retries)".into(),
            ));
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err(err(
                "retry.max_backoff",
                format!(
                    "{:?} is shorter than retry.initial_backoff ({:?})",
                    self.retry.max_backoff, self.retry.initial_backoff
                ),
            ));
        }
        if self.migrations.batch_size == 0 {
            return Err(err("migrations.batch_size", "must be at least 1".into()));
        }
        if self.ttl.batch_size == 0 {
            return Err(err("ttl.batch_size", "must be at least 1".into()));
        }
        if let Some(why) = database_name_problem(&self.migrations.database) {
            return Err(err("migrations.database", why));
        }
        let r = &self.redis;
        if !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| r.url.starts_with(s))
        {
            return Err(err(
                "redis.url",
                format!(
                    "{:?} is not a Redis URL; expected redis://host:port/, rediss://, redis+unix:// or unix://",
                    crate::redact::url(&r.url)
                ),
            ));
        }
        if let Some(bad) = r.cluster_nodes.iter().find(|n| !is_host_port(n)) {
            return Err(err(
                "redis.cluster_nodes",
                format!("{bad:?} is not host:port"),
            ));
        }
        let tcp = r.url.starts_with("redis://") || r.url.starts_with("rediss://");
        if !r.cluster_nodes.is_empty() && !tcp {
            return Err(err(
                "redis.url",
                "a cluster is reached over TCP: with redis.cluster_nodes, redis.url must be redis:// or rediss:// (it supplies the credentials and TLS of every node)".into(),
            ));
        }
        let tls_files = [
            ("redis.tls_ca_file", &r.tls_ca_file),
            ("redis.tls_cert_file", &r.tls_cert_file),
            ("redis.tls_key_file", &r.tls_key_file),
        ];
        if let Some((key, _)) = tls_files.iter().find(|(_, f)| f.is_some()) {
            if !r.url.starts_with("rediss://") {
                return Err(err(
                    key,
                    format!(
                        "is for TLS connections, but redis.url {:?} is not rediss://",
                        crate::redact::url(&r.url)
                    ),
                ));
            }
        }
        match (&r.tls_cert_file, &r.tls_key_file) {
            (Some(_), None) => {
                return Err(err(
                    "redis.tls_cert_file",
                    "needs redis.tls_key_file (the certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "redis.tls_key_file",
                    "needs redis.tls_cert_file (the client certificate)".into(),
                ))
            }
            _ => {}
        }
        if r.key_prefix.chars().any(|c| c.is_whitespace() || c == '*') {
            return Err(err(
                "redis.key_prefix",
                "may not contain whitespace or `*`".into(),
            ));
        }
        let k = &self.kafka;
        if k.brokers.split(',').any(|b| !is_host_port(b.trim())) {
            return Err(err(
                "kafka.brokers",
                format!(
                    "{:?} is not a list of host:port separated by commas",
                    k.brokers
                ),
            ));
        }
        if k.topic_suffix.len() > 40
            || !k
                .topic_suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(err(
                "kafka.topic_suffix",
                format!(
                    "{:?}: at most 40 letters, digits, '.', '_' or '-' (it becomes part of topic names)",
                    k.topic_suffix
                ),
            ));
        }
        if !["all", "-1", "1", "0"].contains(&k.acks.as_str()) {
            return Err(err(
                "kafka.acks",
                format!("{:?} is not one of all, 1, 0", k.acks),
            ));
        }
        if k.enable_idempotence && !matches!(k.acks.as_str(), "all" | "-1") {
            return Err(err(
                "kafka.acks",
                "an idempotent producer (kafka.enable_idempotence) needs acks = \"all\"".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &k.topics {
            if let Some(why) = t.problem() {
                return Err(err("kafka.topics", why));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(err(
                    "kafka.topics",
                    format!("{:?} is declared twice", t.name),
                ));
            }
        }
        Ok(())
    }
}

/// Why `name` cannot be a MongoDB database name, if it cannot.
fn database_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty; name a MongoDB database".into());
    }
    if let Some(bad) = name.chars().find(|c| "/\\. \"$\0".contains(*c)) {
        return Some(format!(
            "{name:?} cannot be a MongoDB database name (it contains {bad:?})"
        ));
    }
    (name.len() > 63).then(|| "MongoDB database names are at most 63 bytes long".into())
}

fn read_toml_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config("CAAS_CONFIG_FILE", format!("cannot read {path:?}: {e}")))?;
    text.parse().map_err(|e: toml::de::Error| {
        Error::config(
            path.display().to_string(),
            e.to_string().trim_end().to_owned(),
        )
    })
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// `CAAS_REDIS_DB_SERVICE_AUTH` -> `redis.databases.services.auth`.
fn env_path(name: &str) -> Option<Vec<String>> {
    let (prefix, section) = ENV_SECTIONS.iter().find(|(p, _)| name.starts_with(p))?;
    let rest = name[prefix.len()..].to_ascii_lowercase();
    let mut path = vec![(*section).to_owned()];
    if *section == "kafka" {
        if let Some(property) = rest.strip_prefix("property_") {
            path.extend(["properties".to_owned(), property.replace('_', ".")]);
            return Some(path);
        }
    }
    if *section == "redis" {
        if let Some(service) = rest.strip_prefix("db_service_") {
            path.extend(["databases", "services", service].map(str::to_owned));
            return Some(path);
        }
        if let Some(purpose) = rest.strip_prefix("db_") {
            path.extend(["databases", purpose].map(str::to_owned));
            return Some(path);
        }
    }
    path.push(rest);
    Some(path)
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("paths are never empty");
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.clone(), value);
}

/// Accepts a value of its own type or a string that parses as one (environment variables are
/// always strings).
fn lenient<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Text(String),
        Value(T),
    }
    match Either::<T>::deserialize(d)? {
        Either::Value(v) => Ok(v),
        Either::Text(s) => s.trim().parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a valid {}: {e}",
                std::any::type_name::<T>()
            ))
        }),
    }
}

/// Topic declarations: an array of tables, or (environment variables) a string of
/// `name[:partitions[:replication_factor]]` separated by commas.
fn topic_list<'de, D>(d: D) -> std::result::Result<Vec<TopicSpec>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Tables(Vec<TopicSpec>),
    }
    let text = match Either::deserialize(d)? {
        Either::Tables(t) => return Ok(t),
        Either::Text(text) => text,
    };
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split(':');
        let mut spec = TopicSpec::named(parts.next().unwrap_or_default());
        let mut number = |what: &str| -> std::result::Result<Option<i32>, D::Error> {
            parts
                .next()
                .map(|p| {
                    p.trim().parse::<i32>().map_err(|_| {
                        serde::de::Error::custom(format!(
                            "{item:?}: {what} {p:?} is not a number (expected name[:partitions[:replication_factor]])"
                        ))
                    })
                })
                .transpose()
        };
        if let Some(p) = number("partitions")? {
            spec.partitions = p;
        }
        if let Some(r) = number("replication_factor")? {
            spec.replication_factor = r;
            spec.min_insync_replicas = spec.min_insync_replicas.map(|m| m.min(r));
        }
        out.push(spec);
    }
    Ok(out)
}

/// A list, or a string of items separated by commas (environment variables).
fn list<'de, D>(d: D) -> std::result::Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// A path, or nothing when absent or empty (an environment variable set to nothing).
fn optional_path<'de, D>(d: D) -> std::result::Result<Option<PathBuf>, D::Error>
where
    D: Deserializer<'de>,
{
    let p: Option<PathBuf> = Option::deserialize(d)?;
    Ok(p.filter(|p| !p.as_os_str().is_empty()))
}

fn lenient_map<'de, D>(d: D) -> std::result::Result<BTreeMap<String, u8>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Db(#[serde(deserialize_with = "lenient")] u8);
    let m: BTreeMap<String, Db> = BTreeMap::deserialize(d)?;
    Ok(m.into_iter().map(|(k, Db(v))| (k, v)).collect())
}

/// Parses `250ms`, `5s`, `30m`, `2h`, `1d` and sums such as `1m30s`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; expected e.g. 250ms, 5s, 30m, 2h, 1d".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration; expected a number with a unit, e.g. 250ms, 5s, 30m, 2h, 1d"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let step = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => {
                return Err(format!(
                    "{text:?} has no unit; write e.g. {n}s or {n}ms (units: ms, s, m, h, d)"
                ))
            }
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?}; units are ms, s, m, h, d"
                ))
            }
        };
        total = total.saturating_add(step);
    }
    Ok(total)
}

/// Renders a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s != 0 && s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

mod duration_text {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_pool_numbers() {
        let c = StorageConfig::default();
        assert_eq!(c.mongodb.max_pool_size, 50);
        assert_eq!(c.mongodb.min_pool_size, 10);
        assert_eq!(c.mongodb.max_idle_time, Duration::from_secs(30));
        assert_eq!(c.mongodb.server_selection_timeout, Duration::from_secs(5));
        assert_eq!(c.mongodb.socket_timeout, Duration::from_secs(45));
        assert_eq!(c.redis.max_retries, 3);
        assert!(c.redis.ready_check);
        assert_eq!(c.kafka.acks, "all");
        assert!(c.kafka.enable_idempotence);
        assert_eq!(c.redis.databases.cache_db_for("caas_auth"), 1);
        assert_eq!(c.redis.databases.cache_db_for("caas_messaging"), 0);
        assert_eq!(c.redis.databases.sessions, 4);
        assert_eq!(c.redis.databases.rate_limiting, 5);
        c.check().unwrap();
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("fast").is_err());
        for d in ["250ms", "5s", "30m", "2h", "1d", "90s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

    #[test]
    fn env_overrides_and_names_the_variable_on_error() {
        let c = StorageConfig::from_vars([
            ("CAAS_MONGODB_URI", "mongodb://db.internal:27018/"),
            ("CAAS_MONGODB_MAX_POOL_SIZE", "20"),
            ("CAAS_REDIS_DB_SERVICE_MESSAGING", "7"),
            ("CAAS_REDIS_KEY_PREFIX", "42"),
            ("CAAS_HEALTH_TIMEOUT", "750ms"),
            ("PATH", "/usr/bin"),
            ("CAAS_SERVICES_DIR", "/elsewhere"),
        ])
        .unwrap();
        assert_eq!(c.mongodb.uri, "mongodb://db.internal:27018/");
        assert_eq!(c.mongodb.max_pool_size, 20);
        assert_eq!(c.redis.databases.cache_db_for("caas_messaging"), 7);
        assert_eq!(c.redis.key_prefix, "42");
        assert_eq!(c.health.timeout, Duration::from_millis(750));

        let e = StorageConfig::from_vars([("CAAS_MONGODB_MAX_POOL_SIZE", "lots")]).unwrap_err();
        let Error::Config { key, reason } = e else {
            panic!("not a config error")
        };
        assert_eq!(key, "CAAS_MONGODB_MAX_POOL_SIZE");
        assert!(reason.contains("\"lots\""), "{reason}");

        let c = StorageConfig::from_vars([
            ("CAAS_MIGRATIONS_WRITE_BACK_ON_READ", "true"),
            ("CAAS_MIGRATIONS_RATE_LIMIT", "250"),
            ("CAAS_MIGRATIONS_LOCK_LEASE", "3s"),
            ("CAAS_TTL_BATCH_SIZE", "50"),
        ])
        .unwrap();
        assert!(c.migrations.write_back_on_read);
        assert_eq!(c.migrations.rate_limit, 250);
        assert_eq!(c.migrations.lock_lease, Duration::from_secs(3));
        assert_eq!(c.ttl.batch_size, 50);
        for (var, value, reason) in [
            ("CAAS_MIGRATIONS_BATCH_SIZE", "0", "at least 1"),
            ("CAAS_MIGRATIONS_DATABASE", "a.b", "database name"),
            ("CAAS_TTL_INTERVAL", "0s", "longer than zero"),
            ("CAAS_TTL_SWEEPER", "maybe", "\"maybe\""),
        ] {
            match StorageConfig::from_vars([(var, value)]) {
                Err(Error::Config { key, reason: r }) => {
                    assert_eq!(key, var);
                    assert!(r.contains(reason), "{var}: {r}");
                }
                other => panic!("{var}: expected a config error, got {other:?}"),
            }
        }

        let e = StorageConfig::from_vars([("CAAS_MONGODB_POOL_SIZE", "5")]).unwrap_err();
        let Error::Config { key, reason } = e else {
            panic!("not a config error")
        };
        assert_eq!(key, "CAAS_MONGODB_POOL_SIZE");
        assert!(
            reason.contains("max_pool_size"),
            "lists accepted keys: {reason}"
        );
    }

    #[test]
    fn tls_files_and_kafka_properties_from_the_environment() {
        let c = StorageConfig::from_vars([
            ("CAAS_REDIS_URL", "rediss://:pw@cache:6380/"),
            ("CAAS_REDIS_TLS_CA_FILE", "/etc/caas/ca.pem"),
            ("CAAS_REDIS_TLS_CERT_FILE", "/etc/caas/client.pem"),
            ("CAAS_REDIS_TLS_KEY_FILE", "/etc/caas/client.key"),
            ("CAAS_KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
            ("CAAS_KAFKA_PROPERTY_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("CAAS_KAFKA_PROPERTY_SASL_PASSWORD", "kpw"),
        ])
        .unwrap();
        assert_eq!(
            c.redis.tls_ca_file.as_deref(),
            Some(Path::new("/etc/caas/ca.pem"))
        );
        assert_eq!(
            c.redis.tls_key_file.as_deref(),
            Some(Path::new("/etc/caas/client.key"))
        );
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(c.kafka.properties["sasl.password"], "kpw");
        assert!(c.credentials().contains(&"kpw"));
        let printed = format!("{c:?}{}", serde_json::to_string(&c).unwrap());
        assert!(
            !printed.contains("kpw") && !printed.contains(":pw@"),
            "{printed}"
        );

        // An empty variable is no file.
        let c = StorageConfig::from_vars([("CAAS_REDIS_TLS_CA_FILE", "")]).unwrap();
        assert_eq!(c.redis.tls_ca_file, None);

        type Vars = &'static [(&'static str, &'static str)];
        let cases: [(Vars, &str, &str); 4] = [
            (
                &[("CAAS_REDIS_TLS_CA_FILE", "/ca.pem")],
                "CAAS_REDIS_TLS_CA_FILE",
                "not rediss://",
            ),
            (
                &[
                    ("CAAS_REDIS_URL", "rediss://h/"),
                    ("CAAS_REDIS_TLS_CERT_FILE", "/c.pem"),
                ],
                "CAAS_REDIS_TLS_CERT_FILE",
                "tls_key_file",
            ),
            (
                &[
                    ("CAAS_REDIS_URL", "rediss://h/"),
                    ("CAAS_REDIS_TLS_KEY_FILE", "/c.key"),
                ],
                "CAAS_REDIS_TLS_KEY_FILE",
                "tls_cert_file",
            ),
            (
                &[
                    ("CAAS_REDIS_URL", "unix:///run/redis.sock"),
                    ("CAAS_REDIS_CLUSTER_NODES", "h:7000"),
                ],
                "CAAS_REDIS_URL",
                "cluster",
            ),
        ];
        for (vars, want_key, want_reason) in cases {
            match StorageConfig::from_vars(vars.iter().copied()) {
                Err(Error::Config { key, reason }) => {
                    assert_eq!(key, want_key, "{vars:?}");
                    assert!(reason.contains(want_reason), "{vars:?}: {reason}");
                }
                other => panic!("{vars:?}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn toml_errors_name_the_key_and_what_is_accepted() {
        let c = StorageConfig::from_toml_str(
            "[mongodb]\nuri = \"mongodb://a:1/\"\nmax_idle_time = \"1m\"\n[kafka.properties]\n\"linger.ms\" = \"5\"\n",
        )
        .unwrap();
        assert_eq!(c.mongodb.max_idle_time, Duration::from_secs(60));
        assert_eq!(c.kafka.properties["linger.ms"], "5");

        let cases = [
            (
                "[redis]\nresponse_timeout = \"2 parsecs\"",
                "redis.response_timeout",
                "unit",
            ),
            (
                "[mongodb]\nmaxPoolSize = 3",
                "mongodb.maxPoolSize",
                "max_pool_size",
            ),
            (
                "[mongodb]\nmin_pool_size = 90",
                "mongodb.min_pool_size",
                "max_pool_size",
            ),
            (
                "[mongodb]\nuri = \"postgres://x\"",
                "mongodb.uri",
                "mongodb://",
            ),
            ("[kafka]\nacks = \"1\"", "kafka.acks", "idempotent"),
            (
                "[kafka]\ntopic_suffix = \"/t1\"",
                "kafka.topic_suffix",
                "topic names",
            ),
            (
                "[mongodb]\ndatabase_suffix = \"_t.1\"",
                "mongodb.database_suffix",
                "database names",
            ),
            (
                "[kafka]\nbrokers = \"localhost\"",
                "kafka.brokers",
                "host:port",
            ),
            ("[cache]\nttl = 1", "cache.ttl", "op_timeout"),
            ("[caches]\nttl = 1", "caches", "mongodb"),
        ];
        for (text, want_key, want_reason) in cases {
            match StorageConfig::from_toml_str(text) {
                Err(Error::Config { key, reason }) => {
                    assert_eq!(key, want_key, "{text}");
                    assert!(reason.contains(want_reason), "{text}: {reason}");
                }
                other => panic!("{text}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_topic_suffix_renames_topics_on_the_cluster_only() {
        let c = StorageConfig::from_vars([("CAAS_KAFKA_TOPIC_SUFFIX", ".t7")]).unwrap();
        assert_eq!(c.kafka.topic_suffix, ".t7");
        assert_eq!(c.kafka.topic_name("platform.events"), "platform.events.t7");
        assert_eq!(
            c.kafka.declared_name("platform.events.t7"),
            Some("platform.events")
        );
        assert_eq!(c.kafka.declared_name("platform.events"), None);
        // Declarations keep their names.
        assert!(c.kafka.topic("platform.events").is_some());
        let plain = StorageConfig::default();
        assert_eq!(plain.kafka.topic_name("chat.events"), "chat.events");
    }

    #[test]
    fn topics_default_to_the_seed_and_are_declared_in_toml_or_the_environment() {
        let c = StorageConfig::default();
        let names: Vec<&str> = c.kafka.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, SEED_TOPICS);
        let t = c.kafka.topic("chat.messages").unwrap();
        assert_eq!((t.partitions, t.replication_factor), (3, 3));
        assert_eq!(t.min_insync_replicas, Some(2));
        assert_eq!(c.kafka.undeclared_topics, TopicPolicy::Error);
        assert_eq!(c.kafka.topic_drift, TopicPolicy::Warn);

        let c = StorageConfig::from_toml_str(
            "[kafka]\ntopic_drift = \"error\"\n[[kafka.topics]]\nname = \"orders\"\npartitions = 6\n\
             cleanup_policy = \"compact\"\nretention_ms = 86400000\n[kafka.topics.configs]\n\
             \"max.message.bytes\" = \"2097152\"\n",
        )
        .unwrap();
        assert_eq!(c.kafka.topic_drift, TopicPolicy::Error);
        assert_eq!(
            c.kafka.topics.len(),
            1,
            "a declaration replaces the defaults"
        );
        let t = &c.kafka.topics[0];
        assert_eq!(t.partitions, 6);
        assert_eq!(t.replication_factor, 3);
        let configs = t.topic_configs();
        assert_eq!(configs["cleanup.policy"], "compact");
        assert_eq!(configs["retention.ms"], "86400000");
        assert_eq!(configs["min.insync.replicas"], "2");
        assert_eq!(configs["max.message.bytes"], "2097152");

        let c = StorageConfig::from_vars([
            ("CAAS_KAFKA_TOPICS", "a.events, b.events:1:1,c:12"),
            ("CAAS_KAFKA_UNDECLARED_TOPICS", "warn"),
            ("CAAS_KAFKA_BREAKER_FAILURES", "5"),
            ("CAAS_KAFKA_BREAKER_COOLDOWN", "2s"),
            ("CAAS_KAFKA_SINGLE_BROKER_FALLBACK", "false"),
        ])
        .unwrap();
        let k = &c.kafka;
        assert_eq!(k.undeclared_topics, TopicPolicy::Warn);
        assert_eq!(
            (k.breaker_failures, k.breaker_cooldown),
            (5, Duration::from_secs(2))
        );
        assert!(!k.single_broker_fallback);
        let b = k.topic("b.events").unwrap();
        assert_eq!((b.partitions, b.replication_factor), (1, 1));
        assert_eq!(
            b.min_insync_replicas,
            Some(1),
            "lowered to the replication factor"
        );
        assert_eq!(k.topic("c").unwrap().partitions, 12);
        assert_eq!(k.topic("a.events").unwrap().replication_factor, 3);
    }

    #[test]
    fn bad_topic_declarations_name_their_key() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case<'_>; 6] = [
            (
                &[("CAAS_KAFKA_TOPICS", "a:x")],
                "CAAS_KAFKA_TOPICS",
                "not a number",
            ),
            (
                &[("CAAS_KAFKA_TOPICS", "a b")],
                "CAAS_KAFKA_TOPICS",
                "cannot be a Kafka topic name",
            ),
            (
                &[("CAAS_KAFKA_TOPICS", "a:0")],
                "CAAS_KAFKA_TOPICS",
                "partitions",
            ),
            (
                &[("CAAS_KAFKA_TOPICS", "a,a")],
                "CAAS_KAFKA_TOPICS",
                "declared twice",
            ),
            (
                &[("CAAS_KAFKA_TOPIC_DRIFT", "ignore")],
                "CAAS_KAFKA_TOPIC_DRIFT",
                "unknown variant",
            ),
            (
                &[("CAAS_KAFKA_BREAKER_COOLDOWN", "0s")],
                "CAAS_KAFKA_BREAKER_COOLDOWN",
                "longer than zero",
            ),
        ];
        for (vars, want_key, want_reason) in cases {
            match StorageConfig::from_vars(vars.iter().copied()) {
                Err(Error::Config { key, reason }) => {
                    assert_eq!(key, want_key, "{vars:?}");
                    assert!(reason.contains(want_reason), "{vars:?}: {reason}");
                }
                other => panic!("{vars:?}: expected a config error, got {other:?}"),
            }
        }
        let e = StorageConfig::from_toml_str(
            "[[kafka.topics]]\nname = \"t\"\nreplication_factor = 1\nmin_insync_replicas = 2\n\
             [[kafka.topics]]\nname = \"u\"\ncleanup_policy = \"forever\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("kafka.topics") && e.contains("min_insync_replicas"),
            "{e}"
        );
    }
}
