//! The connection layer: the pools, what the servers support, the configuration and the fault
//! points, owned once and shared by everything built on top.
//!
//! [`Connections`] is the lowest piece of the runtime. The cache, the write-behind queue and the
//! outbox are each built from it and never see [`Storage`](crate::Storage), which only wires
//! them together. Cheap to clone (one `Arc`).
//!
//! - [`mongo`]: the MongoDB client (pool settings, command log) and the call bound.
//! - [`redis`]: one auto-reconnecting connection per allocated logical database, or one cluster
//!   connection, behind [`RedisConnection`]; every connection (cluster nodes and the pub/sub
//!   connection included) with the URL's credentials and TLS.
//! - [`kafka`]: the shared idempotent producer and its [`KafkaContext`].
//! - [`topics`]: the declared topics (created when missing, checked for drift) and the Kafka
//!   circuit breaker.
//! - [`clock`]: the clock the runtime reads, which tests move in memory.
//! - [`faults`]: points where a test can stop a write as if the process died there.
//! - [`lease`]: one holder at a time for a background job, in Redis.
//! - [`breaker`]: the circuit breaker in front of Redis (the cache) and Kafka (publishing, topic
//!   admin).
//! - [`retry`]: the retry policy for transient MongoDB faults (what may be sent again, how
//!   often, how far apart).

pub(crate) mod breaker;
mod clock;
mod faults;
pub(crate) mod kafka;
pub(crate) mod lease;
pub(crate) mod mongo;
mod redis;
pub(crate) mod retry;
pub(crate) mod topics;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use rdkafka::producer::FutureProducer;

use crate::capabilities::Capabilities;
use crate::config::StorageConfig;
use crate::error::{Component, Error, Result};

pub(crate) use self::redis::LocalRedis;
pub use self::redis::RedisConnection;
pub(crate) use clock::Clock;
pub use faults::FaultPoint;
pub use kafka::KafkaContext;
pub(crate) use mongo::CommandLog;
pub use topics::{TopicDrift, TopicReport};

/// The pools and facts every part of the runtime is built from. See the module docs.
#[derive(Clone)]
pub(crate) struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    config: StorageConfig,
    mongo: mongodb::Client,
    capabilities: Capabilities,
    redis: BTreeMap<u8, RedisConnection>,
    pubsub: ::redis::Client,
    /// The producer: made at connect; in memory only if something asks for it (nothing is
    /// published there).
    kafka: OnceLock<(FutureProducer<KafkaContext>, Arc<kafka::KafkaState>)>,
    topics: topics::TopicAdmin,
    faults: faults::Faults,
    /// The server's clock minus this process's, measured at connect.
    clock_offset_ms: i64,
    /// This process's clock as the runtime reads it: moved by tests in memory, never on the
    /// servers.
    clock: Clock,
    /// Where entity documents live: the MongoDB client above, or this process.
    documents: Documents,
}

/// Where the executor's documents live.
#[derive(Clone)]
pub(crate) enum Documents {
    /// On the MongoDB-wire server of [`Connections::mongo`].
    Mongo,
    /// In this process ([`Storage::in_memory`](crate::Storage::in_memory)).
    Memory(crate::backend::memory::MemoryStore),
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("server", &self.inner.capabilities.server_description())
            .field(
                "redis_databases",
                &self.inner.redis.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// How to connect, beyond the configuration.
#[derive(Default)]
pub(crate) struct ConnectOptions {
    /// Called with every command the MongoDB driver starts.
    pub on_command: Option<CommandLog>,
    /// Applied to the detected capabilities before anything uses them (tests force a branch).
    pub adjust_capabilities: Option<AdjustCapabilities>,
}

/// Changes the detected capabilities before anything uses them.
pub(crate) type AdjustCapabilities = Box<dyn FnOnce(&mut Capabilities) + Send>;

impl Connections {
    /// Builds the pools and detects the server's capabilities (MongoDB must answer within
    /// `mongodb.server_selection_timeout`). Redis and Kafka connect lazily: a service starts
    /// while they are down, and health reports them.
    pub(crate) async fn connect(config: StorageConfig, options: ConnectOptions) -> Result<Self> {
        config.check()?;
        let mongo = mongo::client(&config, options.on_command).await?;
        let probe_bound =
            config.mongodb.server_selection_timeout * 2 + config.mongodb.connect_timeout;
        let mut capabilities = tokio::time::timeout(
            probe_bound,
            Capabilities::detect(&mongo, &config.mongodb.probe_database),
        )
        .await
        .map_err(|_| Error::Timeout {
            component: Component::Mongodb,
            operation: "capability detection",
            after: probe_bound,
        })??;
        if let Some(adjust) = options.adjust_capabilities {
            adjust(&mut capabilities);
        }
        tracing::info!(server = %capabilities.server_description(), ?capabilities, "connected to MongoDB");
        let clock_offset_ms = mongo::clock_offset_ms(&mongo).await;
        let redis = redis::connect(&config).await?;
        let pubsub = redis::pubsub_client(&config)?;
        let kafka = OnceLock::from(kafka::producer(&config)?);
        let topics = topics::TopicAdmin::new(&config)?;
        Ok(Connections {
            inner: Arc::new(Inner {
                config,
                mongo,
                capabilities,
                redis,
                pubsub,
                kafka,
                topics,
                faults: faults::Faults::default(),
                clock_offset_ms,
                clock: Clock::default(),
                documents: Documents::Mongo,
            }),
        })
    }

    /// Connections for [`Storage::in_memory`](crate::Storage::in_memory): documents and the
    /// Redis tier in this process, no Kafka (events stay in the outbox, where tests read
    /// them). The MongoDB client is never connected (it points at a closed port, and fails
    /// fast): the features that need a server refuse to run in memory instead.
    pub(crate) fn in_memory(
        mut config: StorageConfig,
        redis_memory: RedisConnection,
        clock: Clock,
    ) -> Result<Self> {
        config.check()?;
        // No broker: no admin client, and a producer only if asked for (it reaches nothing).
        config.kafka.brokers = String::new();
        config.kafka.properties.clear();
        let options = mongodb::options::ClientOptions::builder()
            .hosts(vec![mongodb::options::ServerAddress::Tcp {
                host: "127.0.0.1".into(),
                port: Some(9),
            }])
            .server_selection_timeout(std::time::Duration::from_millis(1))
            .heartbeat_freq(std::time::Duration::from_secs(24 * 3600))
            .build();
        let mongo = mongodb::Client::with_options(options)
            .map_err(|e| Error::mongo("in-memory client", e))?;
        let redis = config
            .redis
            .databases
            .purposes()
            .into_keys()
            .map(|db| (db, redis_memory.clone()))
            .collect();
        let pubsub = ::redis::Client::open("redis://127.0.0.1:9")
            .map_err(|e| Error::config("redis.url", e.to_string()))?;
        let documents = Documents::Memory(crate::backend::memory::MemoryStore::new({
            let clock = clock.clone();
            move || clock.now_ms()
        }));
        Ok(Connections {
            inner: Arc::new(Inner {
                topics: topics::TopicAdmin::without_client(&config),
                config,
                mongo,
                capabilities: Capabilities::in_memory(),
                redis,
                pubsub,
                kafka: OnceLock::new(),
                faults: faults::Faults::default(),
                clock_offset_ms: 0,
                clock,
                documents,
            }),
        })
    }

    /// The configuration the pools were built from.
    pub(crate) fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// What the MongoDB-wire server supports.
    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    /// The MongoDB client.
    pub(crate) fn mongo(&self) -> &mongodb::Client {
        &self.inner.mongo
    }

    /// A MongoDB database by name (with `mongodb.database_suffix`), from the shared pool.
    pub(crate) fn database(&self, name: &str) -> mongodb::Database {
        self.inner.mongo.database(&self.database_name(name))
    }

    /// The stored name of database `name`: with `mongodb.database_suffix` appended.
    pub(crate) fn database_name(&self, name: &str) -> String {
        format!("{name}{}", self.inner.config.mongodb.database_suffix)
    }

    /// Collection `database.name` on the document backend, with `options` (read and write
    /// concerns, read preference: MongoDB only).
    pub(crate) fn collection(
        &self,
        database: &str,
        name: &str,
        options: mongodb::options::CollectionOptions,
    ) -> crate::backend::Coll {
        use crate::backend::{memory, mongo, Coll};
        match &self.inner.documents {
            Documents::Mongo => Coll::new(Arc::new(mongo::MongoCollection::new(
                self.database(database)
                    .collection_with_options(name, options),
            ))),
            Documents::Memory(store) => Coll::new(Arc::new(memory::MemoryStore::collection(
                store,
                &self.database_name(database),
                name,
            ))),
        }
    }

    /// A session for one transaction at a time on the document backend.
    pub(crate) async fn start_session(&self) -> Result<crate::backend::Session> {
        match &self.inner.documents {
            Documents::Mongo => self
                .inner
                .mongo
                .start_session()
                .await
                .map(|s| crate::backend::Session::Mongo(Box::new(s)))
                .map_err(|e| Error::mongo("start session", e)),
            Documents::Memory(store) => Ok(crate::backend::Session::Memory(store.session())),
        }
    }

    /// The in-process document store, when documents live in this process.
    pub(crate) fn memory(&self) -> Option<&crate::backend::memory::MemoryStore> {
        match &self.inner.documents {
            Documents::Mongo => None,
            Documents::Memory(store) => Some(store),
        }
    }

    /// The connection to Redis logical database `db`, which the configuration must allocate.
    pub(crate) fn redis(&self, db: u8) -> Result<RedisConnection> {
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

    /// Every allocated logical database and its connection (one entry per database; on a
    /// cluster they all share one connection).
    pub(crate) fn redis_databases(&self) -> &BTreeMap<u8, RedisConnection> {
        &self.inner.redis
    }

    /// The connection that caches entities of MongoDB database `database`.
    pub(crate) fn redis_cache_for(&self, database: &str) -> RedisConnection {
        let db = self.inner.config.redis.databases.cache_db_for(database);
        self.inner.redis[&db].clone()
    }

    /// The client pub/sub subscriptions are made with.
    pub(crate) fn redis_pubsub(&self) -> &::redis::Client {
        &self.inner.pubsub
    }

    /// The shared idempotent Kafka producer (made at connect; in memory, on first use).
    pub(crate) fn kafka(&self) -> &FutureProducer<KafkaContext> {
        &self
            .inner
            .kafka
            .get_or_init(|| {
                // Only in memory, where the configuration has no brokers and no properties,
                // the only settings librdkafka refuses.
                kafka::producer(&self.inner.config).expect("a Kafka producer without properties")
            })
            .0
    }

    /// The declared topics' admin and the Kafka circuit breaker.
    pub(crate) fn topics(&self) -> &topics::TopicAdmin {
        &self.inner.topics
    }

    /// Whether `entity` may publish to `topic` (see [`topics::TopicAdmin::check_declared`]).
    pub(crate) fn check_topic(&self, entity: &str, topic: &str) -> Result<()> {
        self.inner
            .topics
            .check_declared(&self.inner.config, entity, topic)
    }

    /// The latest error librdkafka reported for the producer (credentials masked).
    pub(crate) fn kafka_last_error(&self) -> Option<String> {
        self.inner.kafka.get()?.1.last_error()
    }

    /// Now by the server's clock (this process's clock corrected by the offset measured at
    /// connect), for times that processes compare with each other (claims).
    pub(crate) fn server_now(&self) -> mongodb::bson::DateTime {
        mongodb::bson::DateTime::from_millis(self.inner.clock.now_ms() + self.inner.clock_offset_ms)
    }

    /// This process's clock as the runtime reads it (cache deadlines, the memory backend's
    /// time): real time, plus what a test advanced in memory.
    pub(crate) fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Consumes an injected fault at `point`, if one is armed: the write stops there.
    pub(crate) fn fault(&self, point: FaultPoint) -> Result<()> {
        self.inner.faults.take(point)
    }

    /// Arms a fault: the next write that reaches `point` stops there.
    #[cfg(feature = "testing")]
    pub(crate) fn inject_fault(&self, point: FaultPoint) {
        self.inner.faults.arm(point);
    }
}
