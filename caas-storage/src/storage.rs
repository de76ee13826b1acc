//! [`Storage`]: the handle a service holds. It wires the parts together and owns nothing else:
//! the connection layer (pools, capabilities, config, fault points), the cache and the
//! write-behind queue built from it, and the list of entities its repositories were made for.
//!
//! One `Storage` per process is the intended use; it is cheap to clone (an `Arc`) and every
//! repository, background worker and health check hangs off it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::event::command::CommandStartedEvent;

use crate::audit::{AuditLog, AuditOptions};
use crate::cache::CacheLayer;
use crate::capabilities::Capabilities;
use crate::config::StorageConfig;
use crate::connection::TopicReport;
use crate::connection::{CommandLog, ConnectOptions, Connections, RedisConnection};
use crate::entity::{Entity, EntityMeta};
use crate::error::Component;
use crate::error::Result;
use crate::health::{self, HealthReport, HealthStatus};
use crate::index::{IndexPlan, SyncOptions};
use crate::outbox::{Deduplicator, OutboxRelay, OutboxStore, RelayOptions};
use crate::rate_limit::{RateLimit, RateLimiter};
use crate::retention::{Retention, RetentionReport};
use crate::sessions::{SessionOptions, SessionStore};
use crate::ttl::{TtlReport, TtlSweeper};
use crate::write_behind::WriteBehind;

/// The connection pools, what was learnt about the servers at connect, and the parts built on
/// them.
///
/// ```no_run
/// # async fn run() -> caas_storage::Result<()> {
/// use caas_storage::{Storage, StorageConfig};
/// let storage = Storage::connect(StorageConfig::from_env()?).await?;
/// println!("{}", serde_json::to_string_pretty(&storage.health().await).unwrap());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connections,
    cache: Arc<CacheLayer>,
    queue: Arc<WriteBehind>,
    retention: Arc<Retention>,
    retention_task: Option<tokio::task::AbortHandle>,
    ttl: Arc<TtlSweeper>,
    ttl_task: Option<tokio::task::AbortHandle>,
    /// The Redis `INFO` sampler (`metrics.redis_info_interval`).
    redis_info_task: Option<tokio::task::AbortHandle>,
    /// The entities repositories were made for on this handle, by (database, collection,
    /// name).
    entities: Mutex<BTreeMap<(&'static str, &'static str, &'static str), &'static EntityMeta>>,
    /// The audit logs made on this handle, for health.
    audit_logs: Mutex<Vec<AuditLog>>,
    /// What tests read and move on this handle: the events already taken, the memory clock.
    test: TestState,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in [
            self.retention_task.take(),
            self.ttl_task.take(),
            self.redis_info_task.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.inner.conn.config();
        f.debug_struct("Storage")
            .field("mongodb", &crate::redact::url(&c.mongodb.uri))
            .field("server", &self.capabilities().server_description())
            .field("redis", &crate::redact::url(&c.redis.url))
            .field(
                "redis_databases",
                &self.inner.conn.redis_databases().keys().collect::<Vec<_>>(),
            )
            .field("kafka", &c.kafka.brokers)
            .finish()
    }
}

/// Connects a [`Storage`] with options beyond the configuration: see [`Storage::builder`].
#[must_use = "a builder does nothing until `connect`"]
pub struct StorageBuilder {
    config: StorageConfig,
    options: ConnectOptions,
    entities: Vec<&'static EntityMeta>,
}

impl fmt::Debug for StorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageBuilder").finish_non_exhaustive()
    }
}

impl StorageBuilder {
    /// Calls `on_command` with every command the MongoDB driver starts (the exact document
    /// sent: concerns, read preference, session fields). For tests and diagnostics; the
    /// callback runs on the driver's path, so keep it cheap. Without it, commands are logged
    /// by `tracing` at debug level under target `caas_storage::mongodb` when that level is
    /// enabled at connect.
    pub fn on_command(
        mut self,
        on_command: impl Fn(&CommandStartedEvent) + Send + Sync + 'static,
    ) -> Self {
        self.options.on_command = Some(Arc::new(on_command) as CommandLog);
        self
    }

    /// Changes the detected [`Capabilities`] before anything uses them, to run the code path
    /// of another server: e.g. `atomic_conditional_updates = true` on FerretDB takes
    /// MongoDB's version-filter path, which is only safe with one writer at a time. For tests.
    #[cfg(feature = "testing")]
    pub fn capabilities(mut self, adjust: impl FnOnce(&mut Capabilities) + Send + 'static) -> Self {
        self.options.adjust_capabilities = Some(Box::new(adjust));
        self
    }

    /// The entities the service will make repositories for (`&[User::META, Order::META]`):
    /// [`connect`](Self::connect) checks that each `outbox(topic = ...)` names a topic of
    /// `kafka.topics`, and fails with an [`Error::Config`](crate::Error::Config) naming the
    /// entity and the topic when one does not (under `kafka.undeclared_topics = "error"`; a
    /// warning under `"warn"`), before anything is written.
    pub fn entities(mut self, entities: &[&'static EntityMeta]) -> Self {
        self.entities.extend_from_slice(entities);
        self
    }

    /// Connects: see [`Storage::connect`].
    pub async fn connect(self) -> Result<Storage> {
        let conn = Connections::connect(self.config, self.options).await?;
        Storage::assemble(conn, &self.entities, TestState::default())
    }
}

impl Storage {
    /// Wires the cache, the queue and the background jobs over `conn`. In memory, the jobs
    /// that need a server (retention, TTL sweeping, Redis `INFO` sampling) are not started.
    pub(crate) fn assemble(
        conn: Connections,
        entities: &[&'static EntityMeta],
        test: TestState,
    ) -> Result<Storage> {
        for meta in entities {
            if let Some(outbox) = &meta.outbox {
                conn.check_topic(&format!("entity {}", meta.name), outbox.topic)?;
            }
        }
        let on_server = conn.memory().is_none();
        let retention = Arc::new(Retention::new(conn.clone()));
        let retention_task = (on_server && conn.config().retention.enabled)
            .then(|| tokio::spawn(retention.clone().run_forever()).abort_handle());
        let cache = Arc::new(CacheLayer::new(conn.clone()));
        let ttl = Arc::new(TtlSweeper::new(conn.clone(), cache.clone()));
        let ttl_task = (on_server && conn.config().ttl.sweeper && !conn.capabilities().ttl_indexes)
            .then(|| tokio::spawn(ttl.clone().run_forever()).abort_handle());
        let redis_info_task = if on_server {
            redis_info_task(&conn)
        } else {
            None
        };
        Ok(Storage {
            inner: Arc::new(Inner {
                redis_info_task,
                cache,
                queue: Arc::new(WriteBehind::new(conn.clone())),
                retention,
                retention_task,
                ttl,
                ttl_task,
                entities: Mutex::new(BTreeMap::new()),
                audit_logs: Mutex::new(Vec::new()),
                test,
                conn,
            }),
        })
    }
}

impl Storage {
    /// Connects: builds the MongoDB pool and detects the server's [`Capabilities`] (this needs
    /// MongoDB to answer within `mongodb.server_selection_timeout`), and sets up one
    /// auto-reconnecting Redis connection per allocated logical database and the shared Kafka
    /// producer. Redis and Kafka connect lazily: a service starts while they are down, and
    /// [`health`](Self::health) reports them.
    pub async fn connect(config: StorageConfig) -> Result<Self> {
        Self::builder(config).connect().await
    }

    /// A [`StorageBuilder`], to connect with a command log (or, with the `testing` feature,
    /// adjusted capabilities).
    pub fn builder(config: StorageConfig) -> StorageBuilder {
        StorageBuilder {
            config,
            options: ConnectOptions::default(),
            entities: Vec::new(),
        }
    }

    /// The configuration this handle was built from.
    pub fn config(&self) -> &StorageConfig {
        self.inner.conn.config()
    }

    /// What the MongoDB-wire server supports.
    pub fn capabilities(&self) -> &Capabilities {
        self.inner.conn.capabilities()
    }

    /// The raw driver clients, for what caas-storage does not cover. **Everything done
    /// through them bypasses the framework**: no tenant scope, no cache invalidation, no
    /// version bump, no outbox event. Reads are harmless; a write through them can leave
    /// stale cache entries and events missing. Prefer a repository call.
    pub fn raw(&self) -> RawClients<'_> {
        RawClients {
            conn: &self.inner.conn,
        }
    }

    /// The cache: metrics, explicit invalidation.
    pub fn cache(&self) -> &CacheLayer {
        &self.inner.cache
    }

    /// The write-behind queues of `eventual` entities: flush, lag.
    pub fn write_behind(&self) -> &WriteBehind {
        &self.inner.queue
    }

    /// The outbox of MongoDB database `database`: lag, parked events, redrive, clean-up.
    pub fn outbox(&self, database: &str) -> OutboxStore {
        OutboxStore::new(&self.inner.conn, database)
    }

    /// A relay that publishes the outboxes of `options.databases` to Kafka with this handle's
    /// producer. Fails on invalid options or when the Kafka admin client (for topic creation)
    /// cannot be configured.
    pub fn outbox_relay(&self, options: RelayOptions) -> Result<OutboxRelay> {
        self.on_servers("the outbox relay (in memory, read events with test_events)")?;
        OutboxRelay::new(&self.inner.conn, options)
    }

    /// Creates the declared topics (`kafka.topics`) that do not exist (unless
    /// `kafka.create_topics` is off) and checks the existing ones against their declarations:
    /// partitions, replication factor, `cleanup.policy`, `retention.ms`,
    /// `min.insync.replicas` and the other declared configs. Nothing existing is changed.
    /// Fails with an [`Error::Config`](crate::Error::Config) naming `kafka.topics` and each
    /// topic when a topic cannot be created (a replication factor larger than the cluster) or,
    /// under `kafka.topic_drift = "error"`, when one drifted; with a Kafka error or a timeout
    /// when the cluster cannot be reached (at once while the Kafka circuit breaker is open).
    /// The relay does the same when it starts; see `docs/kafka.md`.
    pub async fn ensure_topics(&self) -> Result<TopicReport> {
        self.on_servers("Kafka topic administration")?;
        let conn = &self.inner.conn;
        let drift = conn.config().kafka.topic_drift;
        let report = conn
            .topics()
            .check(conn.config(), conn.config().kafka.create_topics)
            .await?;
        report.log(drift);
        report.into_result(drift)
    }

    /// [`ensure_topics`](Self::ensure_topics) without creating anything and without applying
    /// `kafka.topic_drift`: what exists and how it differs.
    pub async fn check_topics(&self) -> Result<TopicReport> {
        self.on_servers("Kafka topic administration")?;
        let conn = &self.inner.conn;
        conn.topics().check(conn.config(), false).await
    }

    /// The hash-chained audit log described by `options` (see `docs/audit.md`). Fails, naming
    /// the option, on invalid options. Asking again with the same options returns the same log
    /// (its appends queue behind each other instead of racing); [`health`](Self::health)
    /// reports every log made here.
    pub fn audit_log(&self, options: AuditOptions) -> Result<AuditLog> {
        self.on_servers("the audit log")?;
        let mut logs = self.inner.audit_logs.lock().expect("audit logs");
        if let Some(log) = logs.iter().find(|l| *l.options() == options) {
            return Ok(log.clone());
        }
        let log = AuditLog::new(&self.inner.conn, options)?;
        logs.push(log.clone());
        Ok(log)
    }

    /// The session store (see [`sessions`](crate::sessions)) in Redis database
    /// `redis.databases.sessions`.
    pub fn sessions(&self, options: SessionOptions) -> Result<SessionStore> {
        let config = self.config();
        let redis = self.inner.conn.redis(config.redis.databases.sessions)?;
        SessionStore::new(redis, config, options)
    }

    /// A rate limiter named `name` enforcing `rate` per tenant and key (see
    /// [`rate_limit`](crate::rate_limit)), in Redis database `redis.databases.rate_limiting`.
    pub fn rate_limiter(&self, name: &str, rate: RateLimit) -> Result<RateLimiter> {
        let config = self.config();
        let redis = self
            .inner
            .conn
            .redis(config.redis.databases.rate_limiting)?;
        RateLimiter::new(redis, config, name, rate)
    }

    /// A consumer-side deduplicator keeping its records in MongoDB database `database`.
    pub fn deduplicator(&self, database: &str) -> Deduplicator {
        self.inner.retention.watch_consumer(database);
        Deduplicator::new(&self.inner.conn, database)
    }

    /// Applies the retention (see [`retention`](crate::retention)) now, whichever instance
    /// holds its lease; it also runs every `retention.interval` on its own.
    pub async fn run_retention(&self) -> Result<RetentionReport> {
        self.on_servers("retention")?;
        self.inner.retention.run().await
    }

    /// Deletes expired documents of the entities repositories were made for that declare a TTL
    /// index, now, whichever instance holds the sweeper's lease (see [`ttl`](crate::ttl));
    /// where the server lacks TTL indexes it also runs every `ttl.interval` on its own. Does
    /// nothing where the server has TTL indexes: they expire documents themselves.
    pub async fn run_ttl_sweep(&self) -> Result<TtlReport> {
        self.on_servers("the TTL sweeper")?;
        self.inner.ttl.run().await
    }

    /// Orderly shutdown: applies the write-behind queue of every entity a repository was made
    /// for on this handle (bounded by `timeout`), so acknowledged `eventual` writes are in
    /// MongoDB before the process exits. Writes left when it times out are not lost: the next
    /// process that makes a repository of the entity applies them.
    ///
    /// The handle's background flushers stop, and it gives up its queues' leases, so the
    /// other instances' flushers take the queues over at their next tick rather than when the
    /// leases expire (`write_behind.lease_ttl`). A write queued on this handle afterwards
    /// starts its queue's flusher again.
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.write_behind().shutdown(timeout).await
    }

    /// Brings `E`'s indexes in line with its declaration: creates missing ones and reports
    /// changed, extraneous and unsupported ones (see [`index`](crate::index)). Idempotent.
    pub async fn sync_indexes<E: Entity>(&self) -> Result<IndexPlan> {
        self.sync_indexes_with(E::META, SyncOptions::default())
            .await
    }

    /// [`sync_indexes`](Self::sync_indexes) for one entity's metadata (`User::META`) with
    /// options: dry run, drop extraneous, re-create changed.
    pub async fn sync_indexes_with(
        &self,
        meta: &EntityMeta,
        options: SyncOptions,
    ) -> Result<IndexPlan> {
        if let Some(memory) = self.inner.conn.memory() {
            // In memory the declared unique indexes are enforced from the first repository
            // on; there is nothing to build.
            memory.declare_indexes(&self.inner.conn.database_name(meta.database), meta);
            return Ok(IndexPlan {
                entity: meta.name.to_owned(),
                namespace: format!("{}.{}", meta.database, meta.collection),
                changes: Vec::new(),
            });
        }
        let db = self.inner.conn.database(meta.database);
        crate::index::sync_indexes(&db, self.capabilities(), meta.index_target(), options).await
    }

    /// Syncs the indexes of every entity listed, e.g. `&[User::META, Session::META]`.
    pub async fn sync_all_indexes(
        &self,
        entities: &[&EntityMeta],
        options: SyncOptions,
    ) -> Result<Vec<IndexPlan>> {
        let mut plans = Vec::with_capacity(entities.len());
        for meta in entities {
            plans.push(self.sync_indexes_with(meta, options).await?);
        }
        Ok(plans)
    }

    /// Checks MongoDB, every allocated Redis database and Kafka concurrently, and reports the
    /// write-behind backlog and the outbox lag of the entities repositories were made for.
    /// Each check is bounded by `health.timeout`: never fails and never hangs; a dead
    /// component is reported `down`.
    pub async fn health(&self) -> HealthReport {
        let mut outbox_databases: Vec<&'static str> = self
            .inner
            .entities
            .lock()
            .expect("entities")
            .values()
            .filter(|m| m.outbox.is_some())
            .map(|m| m.database)
            .collect();
        outbox_databases.dedup();
        let mut report = health::report(
            &self.inner.conn,
            &self.inner.queue,
            &self.inner.retention,
            &self.inner.ttl,
            outbox_databases,
        )
        .await;
        let logs = self.inner.audit_logs.lock().expect("audit logs").clone();
        let timeout = self.inner.conn.config().health.timeout;
        for log in logs {
            let o = log.options();
            let name = format!("audit/{}.{}", o.database, o.collection);
            let c = health::check(
                name,
                Component::Mongodb,
                timeout,
                Default::default(),
                async {
                    let s = log.status().await.map_err(|e| e.to_string())?;
                    let age = s.last_checkpoint_age.map(|a| a.as_millis() as u64);
                    Ok([
                        ("backlog".to_owned(), s.backlog.into()),
                        ("queued".to_owned(), s.queued.into()),
                        ("last_checkpoint_age_ms".to_owned(), age.into()),
                    ]
                    .into_iter()
                    .collect())
                },
            )
            .await;
            if c.status == HealthStatus::Down && report.status == HealthStatus::Up {
                report.status = HealthStatus::Degraded;
            }
            report.components.push(c);
        }
        report
    }

    /// Test hook: the next write through this handle that reaches `point` stops there, as if
    /// the process died, and returns a timeout error.
    #[cfg(feature = "testing")]
    pub fn inject_fault(&self, point: crate::connection::FaultPoint) {
        self.inner.conn.inject_fault(point);
    }

    // ---- for the executor ----------------------------------------------------------------

    pub(crate) fn connections(&self) -> &Connections {
        &self.inner.conn
    }

    pub(crate) fn cache_handle(&self) -> Arc<CacheLayer> {
        self.inner.cache.clone()
    }

    /// `Ok` on servers; in memory, [`Error::Unsupported`](crate::Error::Unsupported) naming
    /// `feature`: the features the memory backend does not model refuse to start rather than
    /// fail later against no server.
    pub(crate) fn on_servers(&self, feature: &'static str) -> Result<()> {
        match self.inner.conn.memory() {
            None => Ok(()),
            Some(_) => Err(crate::Error::Unsupported {
                feature,
                server: self.capabilities().server_description(),
            }),
        }
    }

    pub(crate) fn test_state(&self) -> &TestState {
        &self.inner.test
    }

    /// The entities repositories were made for on this handle.
    pub(crate) fn registered(&self) -> Vec<&'static EntityMeta> {
        self.inner
            .entities
            .lock()
            .expect("entities")
            .values()
            .copied()
            .collect()
    }

    pub(crate) fn queue_handle(&self) -> Arc<WriteBehind> {
        self.inner.queue.clone()
    }

    /// Notes that a repository of `meta` was made on this handle.
    pub(crate) fn register(&self, meta: &'static EntityMeta) {
        self.inner
            .entities
            .lock()
            .expect("entities")
            .entry((meta.database, meta.collection, meta.name))
            .or_insert(meta);
        self.inner.retention.watch_entity(meta);
        self.inner.ttl.watch_entity(meta);
    }
}

/// What a [`Storage`] keeps for tests (`testing/`): the events already taken.
#[derive(Debug, Default)]
pub(crate) struct TestState {
    /// Event ids already returned by `Storage::take_test_events`.
    pub(crate) taken: Mutex<std::collections::HashSet<String>>,
}

/// Starts the Redis `INFO` sampler (`metrics.redis_info_interval`; `0s`: none).
fn redis_info_task(conn: &Connections) -> Option<tokio::task::AbortHandle> {
    let c = conn.config();
    if c.metrics.redis_info_interval.is_zero() {
        return None;
    }
    let node = crate::telemetry::redis_info::node_of(&c.redis.url);
    let db = c.redis.databases.platform_cache;
    let conn = conn.clone();
    let sample = move || {
        let (conn, node) = (conn.clone(), node.clone());
        async move {
            let mut redis = conn.redis(db).map_err(|e| e.to_string())?;
            redis
                .info_each("all", &node)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let task = crate::telemetry::redis_info::run(
        c.metrics.redis_info_interval,
        c.redis.response_timeout * 2,
        sample,
    );
    Some(tokio::spawn(task).abort_handle())
}

/// The raw driver clients of a [`Storage`]: see [`Storage::raw`]. The driver crates are
/// re-exported in [`driver`](crate::driver), so their types need no dependency of your own.
#[derive(Debug, Clone, Copy)]
pub struct RawClients<'s> {
    conn: &'s Connections,
}

impl<'s> RawClients<'s> {
    /// The documents of `database.collection` that `filter` matches, as stored (framework
    /// fields such as `_deleted_at` included), on either backend: for tests and diagnostics
    /// that look below the repository. (The driver handles below reach no server in memory.)
    pub async fn documents(
        self,
        database: &str,
        collection: &str,
        filter: mongodb::bson::Document,
    ) -> Result<Vec<mongodb::bson::Document>> {
        self.conn
            .collection(database, collection, Default::default())
            .find_all(filter, Default::default())
            .await
            .map_err(|e| crate::Error::mongo(format!("find {database}.{collection}"), e))
    }

    /// The MongoDB client (its pool is the one repositories use).
    pub fn mongo(self) -> &'s mongodb::Client {
        self.conn.mongo()
    }

    /// A MongoDB database by name (`caas_auth`, `caas_messaging`, ...; `mongodb.database_suffix`
    /// is appended), from the shared pool.
    pub fn database(self, name: &str) -> mongodb::Database {
        self.conn.database(name)
    }

    /// The auto-reconnecting connection to Redis logical database `db`, which must be one the
    /// configuration allocates (see [`RedisDatabases`](crate::config::RedisDatabases)).
    pub fn redis(self, db: u8) -> Result<RedisConnection> {
        self.conn.redis(db)
    }

    /// The Redis connection that caches entities of MongoDB database `database`.
    pub fn redis_cache_for(self, database: &str) -> RedisConnection {
        self.conn.redis_cache_for(database)
    }

    /// The shared idempotent Kafka producer (its [`KafkaContext`](crate::KafkaContext) logs
    /// librdkafka's errors through `tracing`).
    pub fn kafka_producer(self) -> &'s rdkafka::producer::FutureProducer<crate::KafkaContext> {
        self.conn.kafka()
    }
}
