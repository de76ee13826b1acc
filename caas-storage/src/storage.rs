//! [`Storage`]: the handle that owns the connection pools.
//!
//! One `Storage` per process is the intended use; it is cheap to clone (an `Arc`) and every
//! repository, background worker and health check hangs off it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::event::command::CommandStartedEvent;
use rdkafka::producer::{FutureProducer, Producer};

use crate::cache::CacheLayer;
use crate::capabilities::Capabilities;
use crate::config::StorageConfig;
use crate::connection::RedisConnection;
use crate::connection::{CommandLog, ConnectOptions, Connections, FaultPoint};
use crate::entity::{Entity, EntityMeta};
use crate::error::{Component, Result};
use crate::health::{self, ComponentHealth, HealthReport};
use crate::index::{IndexPlan, SyncOptions};
use crate::write_behind::WriteBehind;

/// The connection pools and what was learnt about the servers at connect.
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
    cache: CacheLayer,
    write_behind: WriteBehind,
    /// Databases whose entities record outbox events (learnt as repositories are made), for
    /// the outbox lag in the health report.
    outbox_databases: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
}

/// A [`Storage`] that does not keep the pools alive (for background tasks).
#[derive(Clone, Debug)]
pub(crate) struct WeakStorage(std::sync::Weak<Inner>);

impl WeakStorage {
    pub(crate) fn upgrade(&self) -> Option<Storage> {
        self.0.upgrade().map(|inner| Storage { inner })
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Storage")
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("mongodb", &self.inner.conn.config().mongodb.uri)
            .field(
                "server",
                &self.inner.conn.capabilities().server_description(),
            )
            .field("redis", &self.inner.conn.config().redis.url)
            .field(
                "redis_databases",
                &self.inner.conn.redis_databases().keys().collect::<Vec<_>>(),
            )
            .field("kafka", &self.inner.conn.config().kafka.brokers)
            .finish()
    }
}

impl Storage {
    /// Connects: builds the MongoDB pool and detects the server's [`Capabilities`] (this needs
    /// MongoDB to answer within `mongodb.server_selection_timeout`), and sets up one
    /// auto-reconnecting Redis connection per allocated logical database and the shared Kafka
    /// producer. Redis and Kafka connect lazily: a service starts while they are down, and
    /// [`health`](Self::health) reports them.
    pub async fn connect(config: StorageConfig) -> Result<Self> {
        Self::connect_inner(config, None).await
    }

    /// [`connect`](Self::connect), calling `on_command` with every command the MongoDB driver
    /// starts (the exact document sent: concerns, read preference, session fields). For tests
    /// and diagnostics; the callback runs on the driver's path, so keep it cheap. Without it,
    /// commands are logged by `tracing` at debug level under target `caas_storage::mongodb`
    /// when that level is enabled at connect.
    pub async fn connect_with_command_log(
        config: StorageConfig,
        on_command: impl Fn(&CommandStartedEvent) + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::connect_inner(config, Some(Arc::new(on_command))).await
    }

    async fn connect_inner(config: StorageConfig, on_command: Option<CommandLog>) -> Result<Self> {
        let conn = Connections::connect(
            config,
            ConnectOptions {
                on_command,
                adjust_capabilities: None,
            },
        )
        .await?;
        let config = conn.config();
        let cache = CacheLayer::new(
            config.redis.key_prefix.clone(),
            config.cache.clone(),
            conn.redis_pubsub().clone(),
        );
        let write_behind =
            WriteBehind::new(config.redis.key_prefix.clone(), config.write_behind.clone());
        let storage = Storage {
            inner: Arc::new(Inner {
                conn,
                cache,
                write_behind,
                outbox_databases: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            }),
        };
        let wb = &storage.inner.conn.config().write_behind;
        if wb.resume_on_connect && wb.start_flusher {
            if let Err(e) = storage.write_behind().resume(&storage).await {
                tracing::warn!(error = %e, "could not look for write-behind queues to resume; writes queued earlier apply once Redis answers and this entity is written again");
            }
        }
        Ok(storage)
    }

    /// The configuration this handle was built from.
    pub fn config(&self) -> &StorageConfig {
        self.inner.conn.config()
    }

    /// What the MongoDB-wire server supports.
    pub fn capabilities(&self) -> &Capabilities {
        self.inner.conn.capabilities()
    }

    /// The MongoDB client, for what caas-storage does not cover. Writes made through it bypass
    /// tenancy, caching and the outbox.
    pub fn mongo(&self) -> &mongodb::Client {
        self.inner.conn.mongo()
    }

    /// A MongoDB database by name (`caas_auth`, `caas_messaging`, ...), from the shared pool.
    pub fn database(&self, name: &str) -> mongodb::Database {
        self.inner.conn.database(name)
    }

    /// The auto-reconnecting connection to Redis logical database `db`, which must be one the
    /// configuration allocates (see [`RedisDatabases`](crate::config::RedisDatabases)).
    pub fn redis(&self, db: u8) -> Result<RedisConnection> {
        self.inner.conn.redis(db)
    }

    /// The Redis connection that caches entities of MongoDB database `database`.
    pub fn redis_cache_for(&self, database: &str) -> RedisConnection {
        self.inner.conn.redis_cache_for(database)
    }

    /// The cache: metrics, explicit invalidation.
    pub fn cache(&self) -> &CacheLayer {
        &self.inner.cache
    }

    /// The write-behind queues of `eventual` entities: flush, lag.
    pub fn write_behind(&self) -> &WriteBehind {
        &self.inner.write_behind
    }

    /// Orderly shutdown: applies every write-behind queue of this Redis (bounded by `timeout`)
    /// so acknowledged `eventual` writes are in MongoDB before the process exits. Writes left
    /// when it times out are not lost: the next process applies them at connect.
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.write_behind().flush_all(self, timeout).await
    }

    /// Notes that entities of `database` record outbox events (the health report then shows
    /// that outbox's lag).
    pub(crate) fn note_outbox_database(&self, database: &'static str) {
        self.inner
            .outbox_databases
            .lock()
            .expect("outbox databases")
            .insert(database);
    }

    /// Fault injection for tests: the next write through this handle that reaches `point`
    /// stops there, as if the process died, and returns a timeout error.
    #[cfg(feature = "testing")]
    pub fn inject_fault(&self, point: FaultPoint) {
        self.inner.conn.inject_fault(point);
    }

    /// Consumes an injected fault at `point`, if one is armed.
    pub(crate) fn fault(&self, point: FaultPoint) -> Result<()> {
        self.inner.conn.fault(point)
    }

    pub(crate) fn downgrade(&self) -> WeakStorage {
        WeakStorage(Arc::downgrade(&self.inner))
    }

    /// The shared idempotent Kafka producer.
    pub fn kafka_producer(&self) -> &FutureProducer {
        self.inner.conn.kafka()
    }

    /// The backlogs: writes queued for `eventual` entities and events waiting in outboxes.
    /// Reported `up` with their lag in the details (a backlog is not an outage); `down` only
    /// when it cannot be read.
    async fn backlog_health(&self, timeout: Duration) -> Vec<ComponentHealth> {
        use std::sync::Mutex;
        let queue = Mutex::new(BTreeMap::new());
        let write_behind = health::check(
            "write_behind".into(),
            Component::Redis,
            timeout,
            BTreeMap::new(),
            async {
                let lag = self
                    .write_behind()
                    .lag(self)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut d = queue.lock().expect("details");
                d.insert(
                    "pending".to_owned(),
                    lag.iter().map(|l| l.pending).sum::<u64>().into(),
                );
                d.insert(
                    "oldest_age_ms".to_owned(),
                    lag.iter()
                        .map(|l| l.oldest_age_ms)
                        .max()
                        .unwrap_or(0)
                        .into(),
                );
                d.insert(
                    "dead_letters".to_owned(),
                    lag.iter().map(|l| l.dead_letters).sum::<u64>().into(),
                );
                Ok(())
            },
        );
        let databases: Vec<&'static str> = self
            .inner
            .outbox_databases
            .lock()
            .expect("outbox databases")
            .iter()
            .copied()
            .collect();
        let events = Mutex::new(BTreeMap::new());
        let outbox = health::check(
            "outbox".into(),
            Component::Mongodb,
            timeout,
            BTreeMap::new(),
            async {
                let lag = crate::outbox::outbox_lag(self, &databases)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut d = events.lock().expect("details");
                d.insert("databases".to_owned(), databases.clone().into());
                d.insert("pending".to_owned(), lag.pending.into());
                d.insert("parked".to_owned(), lag.parked.into());
                d.insert(
                    "oldest_pending_age_ms".to_owned(),
                    lag.oldest_pending_age_ms.unwrap_or(0).into(),
                );
                Ok(())
            },
        );
        let (mut wb, mut ob) = tokio::join!(write_behind, outbox);
        wb.details = queue.into_inner().expect("details");
        ob.details = events.into_inner().expect("details");
        vec![wb, ob]
    }

    /// What the health check pings: each allocated logical database, or the cluster once.
    fn redis_health_targets(
        &self,
    ) -> Vec<(String, RedisConnection, BTreeMap<String, serde_json::Value>)> {
        let r = &self.inner.conn.config().redis;
        if !r.cluster_nodes.is_empty() {
            let mut details = BTreeMap::new();
            details.insert("nodes".to_owned(), r.cluster_nodes.clone().into());
            return self
                .inner
                .conn
                .redis_databases()
                .values()
                .next()
                .map(|c| ("redis/cluster".to_owned(), c.clone(), details))
                .into_iter()
                .collect();
        }
        let purposes = r.databases.purposes();
        self.inner
            .conn
            .redis_databases()
            .iter()
            .map(|(db, c)| {
                let mut details = BTreeMap::new();
                details.insert("db".to_owned(), (*db).into());
                details.insert(
                    "purposes".to_owned(),
                    purposes.get(db).cloned().unwrap_or_default().into(),
                );
                (format!("redis/db{db}"), c.clone(), details)
            })
            .collect()
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
        let db = self.database(meta.database);
        crate::index::sync_indexes(&db, self.inner.conn.capabilities(), meta, options).await
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

    /// Checks MongoDB, every allocated Redis database and Kafka concurrently, each bounded by
    /// `health.timeout`. Never fails and never hangs: a dead component is reported `down`.
    pub async fn health(&self) -> HealthReport {
        let timestamp = mongodb::bson::DateTime::now()
            .try_to_rfc3339_string()
            .unwrap_or_default();
        let started = Instant::now();
        let timeout = self.inner.conn.config().health.timeout;

        let mongo = {
            let client = self.inner.conn.mongo().clone();
            let mut details = BTreeMap::new();
            details.insert(
                "server".to_owned(),
                self.inner.conn.capabilities().server_description().into(),
            );
            health::check(
                "mongodb".into(),
                Component::Mongodb,
                timeout,
                details,
                async move {
                    client
                        .database("admin")
                        .run_command(doc! { "ping": 1 })
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
            )
        };

        let redis = futures::future::join_all(self.redis_health_targets().into_iter().map(
            |(name, mut conn, details)| {
                health::check(name, Component::Redis, timeout, details, async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            },
        ));

        let kafka = {
            let producer = self.inner.conn.kafka().clone();
            let mut details = BTreeMap::new();
            details.insert(
                "brokers".to_owned(),
                self.inner.conn.config().kafka.brokers.clone().into(),
            );
            health::check(
                "kafka".into(),
                Component::Kafka,
                timeout,
                details,
                async move { kafka_metadata(producer, timeout).await },
            )
        };

        let backlog = self.backlog_health(timeout);
        let (mongo, redis, kafka, backlog) = tokio::join!(mongo, redis, kafka, backlog);
        let mut components: Vec<ComponentHealth> = vec![mongo];
        components.extend(redis);
        components.push(kafka);
        components.extend(backlog);
        HealthReport {
            status: health::overall(&components),
            timestamp,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            components,
        }
    }
}

async fn kafka_metadata(producer: FutureProducer, timeout: Duration) -> Result<(), String> {
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
