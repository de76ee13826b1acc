//! [`Storage`]: the handle that owns the connection pools.
//!
//! One `Storage` per process is the intended use; it is cheap to clone (an `Arc`) and every
//! repository, background worker and health check hangs off it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::event::command::{CommandEvent, CommandStartedEvent};
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;

use crate::cache::CacheLayer;
use crate::capabilities::Capabilities;
use crate::config::StorageConfig;
use crate::entity::{Entity, EntityMeta};
use crate::error::{Component, Error, Result};
use crate::health::{self, ComponentHealth, HealthReport};
use crate::index::{IndexPlan, SyncOptions};
use crate::redis_conn::RedisConnection;
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
    config: StorageConfig,
    mongo: mongodb::Client,
    capabilities: Capabilities,
    redis: BTreeMap<u8, RedisConnection>,
    kafka: FutureProducer,
    cache: CacheLayer,
    write_behind: WriteBehind,
    faults: std::sync::Mutex<Vec<FaultPoint>>,
    /// Databases whose entities record outbox events (learnt as repositories are made), for
    /// the outbox lag in the health report.
    outbox_databases: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
}

/// Points where a test can make a write stop as if the process died there (see
/// [`Storage::inject_fault`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// After a write's outbox events are recorded, before the entity write.
    OutboxAfterPrepare,
    /// After the entity write, before its outbox events are marked.
    OutboxAfterWrite,
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
            .field("mongodb", &self.inner.config.mongodb.uri)
            .field("server", &self.inner.capabilities.server_description())
            .field("redis", &self.inner.config.redis.url)
            .field(
                "redis_databases",
                &self.inner.redis.keys().collect::<Vec<_>>(),
            )
            .field("kafka", &self.inner.config.kafka.brokers)
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
        config.check()?;
        let mongo = mongo_client(&config, on_command).await?;
        let probe_bound =
            config.mongodb.server_selection_timeout * 2 + config.mongodb.connect_timeout;
        let capabilities = tokio::time::timeout(
            probe_bound,
            Capabilities::detect(&mongo, &config.mongodb.probe_database),
        )
        .await
        .map_err(|_| Error::Timeout {
            component: Component::Mongodb,
            operation: "capability detection",
            after: probe_bound,
        })??;
        tracing::info!(server = %capabilities.server_description(), ?capabilities, "connected to MongoDB");

        let mut redis = BTreeMap::new();
        if config.redis.cluster_nodes.is_empty() {
            for db in config.redis.databases.purposes().into_keys() {
                redis.insert(db, RedisConnection::single(redis_manager(&config, db)?));
            }
        } else {
            let cluster = RedisConnection::cluster(cluster_client(&config)?);
            for db in config.redis.databases.purposes().into_keys() {
                redis.insert(db, cluster.clone());
            }
        }
        if config.redis.ready_check {
            for (db, conn) in &redis {
                let mut conn = conn.clone();
                let ping = redis::cmd("PING");
                match tokio::time::timeout(
                    config.redis.connection_timeout,
                    ping.query_async::<String>(&mut conn),
                )
                .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(db, error = %e, "Redis not ready at connect; caching degrades to the database until it is"),
                    Err(_) => tracing::warn!(db, "Redis did not answer at connect; caching degrades to the database until it does"),
                }
            }
        }
        let kafka = kafka_producer(&config)?;
        let cache = CacheLayer::new(
            config.redis.key_prefix.clone(),
            config.cache.clone(),
            pubsub_client(&config)?,
        );
        let write_behind =
            WriteBehind::new(config.redis.key_prefix.clone(), config.write_behind.clone());
        let storage = Storage {
            inner: Arc::new(Inner {
                config,
                mongo,
                capabilities,
                redis,
                kafka,
                cache,
                write_behind,
                faults: std::sync::Mutex::new(Vec::new()),
                outbox_databases: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            }),
        };
        let wb = &storage.inner.config.write_behind;
        if wb.resume_on_connect && wb.start_flusher {
            if let Err(e) = storage.write_behind().resume(&storage).await {
                tracing::warn!(error = %e, "could not look for write-behind queues to resume; writes queued earlier apply once Redis answers and this entity is written again");
            }
        }
        Ok(storage)
    }

    /// The configuration this handle was built from.
    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// What the MongoDB-wire server supports.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    /// The MongoDB client, for what caas-storage does not cover. Writes made through it bypass
    /// tenancy, caching and the outbox.
    pub fn mongo(&self) -> &mongodb::Client {
        &self.inner.mongo
    }

    /// A MongoDB database by name (`caas_auth`, `caas_messaging`, ...), from the shared pool.
    pub fn database(&self, name: &str) -> mongodb::Database {
        self.inner.mongo.database(name)
    }

    /// The auto-reconnecting connection to Redis logical database `db`, which must be one the
    /// configuration allocates (see [`RedisDatabases`](crate::config::RedisDatabases)).
    pub fn redis(&self, db: u8) -> Result<RedisConnection> {
        self.inner.redis.get(&db).cloned().ok_or_else(|| {
            Error::config(
                "redis.databases",
                format!(
                    "Redis database {db} is not allocated to any purpose; allocated: {:?}",
                    self.inner.redis.keys().collect::<Vec<_>>()
                ),
            )
        })
    }

    /// The Redis connection that caches entities of MongoDB database `database`.
    pub fn redis_cache_for(&self, database: &str) -> RedisConnection {
        let db = self.inner.config.redis.databases.cache_db_for(database);
        self.inner.redis[&db].clone()
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
    #[doc(hidden)]
    pub fn inject_fault(&self, point: FaultPoint) {
        self.inner.faults.lock().expect("faults").push(point);
    }

    /// Consumes an injected fault at `point`, if one is armed.
    pub(crate) fn fault(&self, point: FaultPoint) -> Result<()> {
        let mut faults = self.inner.faults.lock().expect("faults");
        match faults.iter().position(|p| *p == point) {
            Some(i) => {
                faults.remove(i);
                Err(Error::Timeout {
                    component: Component::Mongodb,
                    operation: "injected fault (process stopped here)",
                    after: Duration::ZERO,
                })
            }
            None => Ok(()),
        }
    }

    pub(crate) fn downgrade(&self) -> WeakStorage {
        WeakStorage(Arc::downgrade(&self.inner))
    }

    /// The shared idempotent Kafka producer.
    pub fn kafka_producer(&self) -> &FutureProducer {
        &self.inner.kafka
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
        let r = &self.inner.config.redis;
        if !r.cluster_nodes.is_empty() {
            let mut details = BTreeMap::new();
            details.insert("nodes".to_owned(), r.cluster_nodes.clone().into());
            return self
                .inner
                .redis
                .values()
                .next()
                .map(|c| ("redis/cluster".to_owned(), c.clone(), details))
                .into_iter()
                .collect();
        }
        let purposes = r.databases.purposes();
        self.inner
            .redis
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
        crate::index::sync_indexes(&db, &self.inner.capabilities, meta, options).await
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
        let timeout = self.inner.config.health.timeout;

        let mongo = {
            let client = self.inner.mongo.clone();
            let mut details = BTreeMap::new();
            details.insert(
                "server".to_owned(),
                self.inner.capabilities.server_description().into(),
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
            let producer = self.inner.kafka.clone();
            let mut details = BTreeMap::new();
            details.insert(
                "brokers".to_owned(),
                self.inner.config.kafka.brokers.clone().into(),
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

type CommandLog = Arc<dyn Fn(&CommandStartedEvent) + Send + Sync>;

async fn mongo_client(
    config: &StorageConfig,
    on_command: Option<CommandLog>,
) -> Result<mongodb::Client> {
    let m = &config.mongodb;
    let mut options = ClientOptions::parse(&m.uri)
        .await
        .map_err(|e| Error::Config {
            key: "mongodb.uri".into(),
            reason: e.to_string(),
        })?;
    options.app_name = Some(m.app_name.clone());
    options.max_pool_size = Some(m.max_pool_size);
    options.min_pool_size = Some(m.min_pool_size);
    options.max_idle_time = Some(m.max_idle_time);
    options.server_selection_timeout = Some(m.server_selection_timeout);
    options.connect_timeout = Some(m.connect_timeout);
    let log = on_command.or_else(|| {
        tracing::enabled!(target: "caas_storage::mongodb", tracing::Level::DEBUG).then(|| {
            Arc::new(|e: &CommandStartedEvent| {
                tracing::debug!(target: "caas_storage::mongodb", db = %e.db, command = %e.command, "mongodb command");
            }) as CommandLog
        })
    });
    if let Some(log) = log {
        options.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| {
            if let CommandEvent::Started(started) = e {
                log(&started);
            }
        }));
    }
    mongodb::Client::with_options(options).map_err(|e| Error::Config {
        key: "mongodb.uri".into(),
        reason: e.to_string(),
    })
}

fn cluster_client(config: &StorageConfig) -> Result<redis::cluster::ClusterClient> {
    let r = &config.redis;
    let nodes: Vec<String> = r
        .cluster_nodes
        .iter()
        .map(|n| format!("redis://{n}/"))
        .collect();
    redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(r.connection_timeout)
        .response_timeout(r.response_timeout)
        .retries(r.max_retries as u32)
        .build()
        .map_err(|e| Error::config("redis.cluster_nodes", e.to_string()))
}

/// The client the cache's invalidation listener subscribes with: on a cluster, the first seed
/// node (PUBLISH reaches every node of a cluster).
fn pubsub_client(config: &StorageConfig) -> Result<redis::Client> {
    match config.redis.cluster_nodes.first() {
        Some(node) => redis::Client::open(format!("redis://{node}/"))
            .map_err(|e| Error::config("redis.cluster_nodes", e.to_string())),
        None => redis_client(config, config.redis.databases.platform_cache),
    }
}

fn redis_client(config: &StorageConfig, db: u8) -> Result<redis::Client> {
    let bad_url = |e: redis::RedisError| Error::config("redis.url", e.to_string());
    let info = config
        .redis
        .url
        .as_str()
        .into_connection_info()
        .map_err(bad_url)?;
    let settings = info.redis_settings().clone().set_db(i64::from(db));
    redis::Client::open(info.set_redis_settings(settings)).map_err(bad_url)
}

fn redis_manager(config: &StorageConfig, db: u8) -> Result<ConnectionManager> {
    let r = &config.redis;
    let client = redis_client(config, db)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_number_of_retries(r.max_retries)
        .set_connection_timeout(Some(r.connection_timeout))
        .set_response_timeout(Some(r.response_timeout))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| Error::Redis {
        operation: "create connection manager",
        source: e,
    })
}

fn kafka_producer(config: &StorageConfig) -> Result<FutureProducer> {
    let k = &config.kafka;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &k.brokers)
        .set("client.id", &k.client_id)
        .set("acks", &k.acks)
        .set("enable.idempotence", k.enable_idempotence.to_string())
        .set(
            "message.timeout.ms",
            k.message_timeout.as_millis().to_string(),
        );
    for (key, value) in &k.properties {
        cc.set(key, value);
    }
    cc.create()
        .map_err(|e| Error::config("kafka.properties", e.to_string()))
}
