//! Write-behind: the durable queue behind `eventual` entities.
//!
//! A queued write is acknowledged once Redis has appended it to the entity's stream
//! (`XADD {prefix}caas:wb:<database>.<collection>`); a flusher applies the stream to MongoDB in
//! batches and deletes entries only after they are applied. So an acknowledged write survives
//! the death of the process that made it: the next process that makes a repository of the
//! entity applies it. Durability against the death of *Redis* is Redis's: run it with AOF
//! (`appendonly yes`, `appendfsync everysec` or `always`).
//!
//! The queue never writes to MongoDB itself. A repository registers its entity's write
//! pipeline (an `Apply` handle) when it is made, and the flusher hands every entry to it: queued writes
//! bump versions, stamp timestamps and keep the cache exactly as direct writes do, and entries
//! naming an entity no repository of this process registered are never applied by it.
//!
//! One flusher per stream at a time (a lease in Redis), so each entity's writes apply in the
//! order they were acknowledged. Re-applying an entry after a crash is harmless (an insert
//! whose document is already there counts as applied; updates and deletes apply to the current
//! version). A database fault stops the batch at the failing entry, which is retried with
//! backoff and never dropped; an entry the database rejects for good is retried
//! `max_attempts` times and then moved to the stream's dead-letter stream `...:dead` with the
//! error, as is an entry that is not one this framework wrote.

mod entry;
pub(crate) mod flusher;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mongodb::bson::Document;
use serde::Serialize;

use crate::config::WriteBehindConfig;
use crate::connection::{Connections, RedisConnection};
use crate::entity::{Entity, EntityMeta};
use crate::error::{Component, Error, Result};
use crate::tenant::TenantId;

pub(crate) use entry::Op;

/// Lag of one queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueLag {
    /// `database.collection`.
    pub namespace: String,
    /// Writes acknowledged and not yet applied.
    pub pending: u64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_age_ms: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_letters: u64,
}

/// One entry of a dead-letter stream: a queued write set aside after the database refused it
/// `max_attempts` times, or an entry that is not one this framework wrote. See
/// [`WriteBehind::dead_letters`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (what [`WriteBehind::replay`] takes).
    pub id: String,
    /// Its id in the queue it was taken from.
    pub source_id: Option<String>,
    /// When it was set aside, in milliseconds since the Unix epoch.
    pub dead_at_ms: u64,
    /// Why the database refused it (or why it could not be read).
    pub error: Option<String>,
    /// The entity it writes, when the entry decodes.
    pub entity: Option<String>,
    /// The tenant, when the entry decodes.
    pub tenant: Option<String>,
    /// `insert`, `update`, `upsert` or `delete`, when the entry decodes.
    pub op: Option<String>,
    /// The id of the document it writes, as text, when the entry decodes.
    pub document_id: Option<String>,
    /// Why the entry does not decode (it can still be replayed, and is set aside again).
    pub decode_error: Option<String>,
}

/// What the flusher hands queued writes to: the write pipeline of one entity, registered by
/// its repository. See the module docs.
#[async_trait]
pub(crate) trait Apply: Send + Sync {
    /// Inserts `docs`, all of `tenant`, each stamped with its queue position. Fails as a whole
    /// only when nothing can be said of any document (a fault); otherwise one result per
    /// document, `Ok` when the document is in the database now (inserted, or already there
    /// from an earlier attempt).
    async fn insert(&self, tenant: &TenantId, docs: Vec<Document>) -> Result<Vec<Result<()>>>;

    /// Applies one update, upsert or delete of `tenant`, queued at `position`
    /// (`document::queue_position`): only to a document at an earlier position, so that
    /// applying it again changes nothing.
    async fn apply(&self, tenant: &TenantId, op: Op, position: &str) -> Result<()>;
}

/// The write-behind queues of one `Storage` handle. Reach it with `Storage::write_behind`.
pub struct WriteBehind {
    shared: Arc<Shared>,
}

/// The registered pipelines of one stream, by entity name.
type Appliers = HashMap<&'static str, Arc<dyn Apply>>;

/// What the flushers share with the handle.
pub(crate) struct Shared {
    conn: Connections,
    prefix: String,
    settings: WriteBehindConfig,
    /// This handle's identity in stream leases.
    token: String,
    /// Registered pipelines by stream key, then entity name.
    appliers: Mutex<HashMap<String, Appliers>>,
    /// The running flusher of each stream.
    flushers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// One round at a time per stream in this process: `flush()`, `shutdown()` and the
    /// background flusher share the handle's lease, so the lease alone cannot keep them apart.
    rounds: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Failed attempts per stream, per entry at the head of that stream, for setting aside
    /// the entries the database refuses for good.
    attempts: Mutex<HashMap<String, HashMap<String, u32>>>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("prefix", &self.shared.prefix)
            .field(
                "flushers",
                &self.shared.flushers.lock().expect("flushers").len(),
            )
            .finish()
    }
}

impl Drop for WriteBehind {
    /// Stops the background flushers, then gives up their streams' leases once their
    /// aborted rounds are gone, so other instances take the queues over at once instead of
    /// when the leases expire. Giving up needs a runtime to run on; without one the leases
    /// expire after `lease_ttl`, as they do when a process dies.
    fn drop(&mut self) {
        let running = self.shared.take_flushers();
        for (_, task) in &running {
            task.abort();
        }
        if running.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        runtime.spawn(async move {
            for (key, _) in running {
                // Waits for the aborted round's lock: no round of this handle runs after.
                let _ = flusher::release(&shared, &key).await;
            }
        });
    }
}

/// Appends every entry, or none when they would take the queue past its bound (then returns
/// minus the current length).
///
/// KEYS: the stream. ARGV: the bound, then one encoded entry per write.
pub(crate) static APPEND: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local len = redis.call('XLEN', KEYS[1])
if len + #ARGV - 1 > tonumber(ARGV[1]) then return -len end
for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
return len + #ARGV - 1
",
    )
});

fn stream_key(prefix: &str, database: &str, collection: &str) -> String {
    format!("{prefix}caas:wb:{database}.{collection}")
}

pub(crate) fn redis_err(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |source| Error::Redis { operation, source }
}

impl Shared {
    fn conn(&self) -> Result<RedisConnection> {
        self.conn
            .redis(self.conn.config().redis.databases.write_behind)
    }

    /// Starts the flusher of `key` unless one runs.
    fn ensure_flusher(self: &Arc<Self>, key: String) {
        let mut flushers = self.flushers.lock().expect("flushers");
        if flushers.get(&key).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let task = tokio::spawn(flusher::run(self.clone(), key.clone()));
        flushers.insert(key, task.abort_handle());
    }

    /// This handle's background flushers, each with its stream, taken out of the map (the
    /// caller stops them).
    fn take_flushers(&self) -> Vec<(String, tokio::task::AbortHandle)> {
        self.flushers.lock().expect("flushers").drain().collect()
    }

    /// Whether this handle's background flusher of stream `key` runs.
    fn flusher_runs(&self, key: &str) -> bool {
        self.flushers
            .lock()
            .expect("flushers")
            .get(key)
            .is_some_and(|h| !h.is_finished())
    }

    /// The lock rounds of stream `key` take in this process.
    fn round_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.rounds
            .lock()
            .expect("rounds")
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// The entities registered for stream `key` (the labels of its backlog).
    fn entities_of(&self, key: &str) -> Vec<&'static str> {
        self.appliers
            .lock()
            .expect("appliers")
            .get(key)
            .map(|by_entity| by_entity.keys().copied().collect())
            .unwrap_or_default()
    }

    fn applier(&self, key: &str, entity: &str) -> Option<Arc<dyn Apply>> {
        self.appliers
            .lock()
            .expect("appliers")
            .get(key)
            .and_then(|by_entity| by_entity.get(entity))
            .cloned()
    }
}

impl WriteBehind {
    /// The queues over `conn`'s Redis, with its `write_behind` settings.
    pub(crate) fn new(conn: Connections) -> Self {
        WriteBehind {
            shared: Arc::new(Shared {
                prefix: conn.config().redis.key_prefix.clone(),
                settings: conn.config().write_behind.clone(),
                token: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7()),
                appliers: Mutex::new(HashMap::new()),
                flushers: Mutex::new(HashMap::new()),
                rounds: Mutex::new(HashMap::new()),
                attempts: Mutex::new(HashMap::new()),
                conn,
            }),
        }
    }

    /// Registers the pipeline that applies `meta`'s queued writes, and starts the flusher of
    /// its queue if the queue holds writes (left by an earlier process, say). The first
    /// registration of an entity wins; later ones are ignored.
    pub(crate) fn register(&self, meta: &'static EntityMeta, applier: Arc<dyn Apply>) {
        let key = stream_key(&self.shared.prefix, meta.database, meta.collection);
        let fresh = {
            let mut appliers = self.shared.appliers.lock().expect("appliers");
            let by_entity = appliers.entry(key.clone()).or_default();
            if by_entity.contains_key(meta.name) {
                false
            } else {
                by_entity.insert(meta.name, applier);
                true
            }
        };
        // Outside a runtime (a repository made in synchronous code) the flusher starts with
        // the first queued write instead.
        let runtime = tokio::runtime::Handle::try_current().ok();
        if let (true, true, Some(runtime)) = (fresh, self.shared.settings.start_flusher, runtime) {
            let shared = self.shared.clone();
            runtime.spawn(async move {
                let waiting = match shared.conn() {
                    Ok(mut conn) => redis::cmd("XLEN")
                        .arg(&key)
                        .query_async::<u64>(&mut conn)
                        .await
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                if waiting > 0 {
                    shared.ensure_flusher(key);
                }
            });
        }
    }

    /// Appends `ops` of `meta` to its stream; returns once Redis acknowledged them.
    pub(crate) async fn enqueue(
        &self,
        meta: &'static EntityMeta,
        tenant: &TenantId,
        ops: &[Op],
    ) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let key = stream_key(&self.shared.prefix, meta.database, meta.collection);
        let mut append = APPEND.key(&key);
        append.arg(self.shared.settings.max_pending);
        for op in ops {
            append.arg(entry::encode(meta, tenant, op)?);
        }
        let mut conn = self.shared.conn()?;
        let bound = self.shared.settings.enqueue_timeout;
        let pending: i64 = tokio::time::timeout(bound, append.invoke_async(&mut conn))
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Redis,
                operation: "write-behind enqueue",
                after: bound,
            })?
            .map_err(redis_err("write-behind enqueue (XADD)"))?;
        if pending < 0 {
            return Err(Error::QueueFull {
                queue: format!("{}.{}", meta.database, meta.collection),
                pending: pending.unsigned_abs(),
                max: self.shared.settings.max_pending,
            });
        }
        if self.shared.settings.start_flusher {
            self.shared.ensure_flusher(key);
        }
        Ok(())
    }

    /// Every queue stream (with `dead`, the dead-letter streams too), found with `SCAN`.
    async fn queues(&self, dead: bool) -> Result<Vec<String>> {
        let mut conn = self.shared.conn()?;
        let pattern = format!("{}caas:wb:*", self.shared.prefix);
        let mut found = conn
            .scan_match(&pattern, Some("stream"))
            .await
            .map_err(redis_err("write-behind (SCAN queues)"))?;
        found.retain(|k| dead || !k.ends_with(":dead"));
        Ok(found)
    }

    /// Applies everything queued for `E` now, in this task, and returns when its queue is
    /// empty (or `timeout` passed). For shutdown and tests. Needs a repository of `E` to have
    /// been made on this handle (it registers the pipeline that applies the queue). Unless
    /// this handle's background flusher runs on the queue, the queue's lease is given up
    /// afterwards, so another instance's flusher need not wait for it to expire.
    pub async fn flush<E: Entity>(&self, timeout: Duration) -> Result<()> {
        let key = stream_key(&self.shared.prefix, E::META.database, E::META.collection);
        self.flush_key(&key, timeout).await
    }

    /// Applies the queue of every entity registered on this handle; see [`flush`](Self::flush).
    pub async fn flush_all(&self, timeout: Duration) -> Result<()> {
        let keys: Vec<String> = self
            .shared
            .appliers
            .lock()
            .expect("appliers")
            .keys()
            .cloned()
            .collect();
        for key in keys {
            self.flush_key(&key, timeout).await?;
        }
        Ok(())
    }

    async fn flush_key(&self, key: &str, timeout: Duration) -> Result<()> {
        let result = self.drain_key(key, timeout).await;
        // The rounds above took the stream's lease. With no flusher of this handle to apply
        // what comes next, holding it until it expires would keep every other instance
        // from the stream meanwhile (lease_ttl): give it up.
        if !self.shared.flusher_runs(key) {
            if let Err(e) = flusher::release(&self.shared, key).await {
                // Not released, it expires after lease_ttl: later, never wrong.
                tracing::debug!(stream = key, error = %e, "write-behind: lease not released");
            }
        }
        result
    }

    /// Stops this handle's background flushers, each between two rounds; a later queued
    /// write starts its stream's flusher again. Returns the streams they were flushing.
    pub(crate) async fn stop_flushers(&self) -> Vec<String> {
        let running = self.shared.take_flushers();
        let mut keys = Vec::with_capacity(running.len());
        for (key, task) in running {
            let lock = self.shared.round_lock(&key);
            let _between_rounds = lock.lock().await;
            task.abort();
            keys.push(key);
        }
        keys
    }

    /// Orderly shutdown of the queues (`Storage::shutdown`): stops the background flushers,
    /// applies every registered entity's queue (bounded by `timeout`), and gives up this
    /// handle's stream leases, so the other instances take the queues over at once.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> Result<()> {
        let stopped = self.stop_flushers().await;
        let result = self.flush_all(timeout).await;
        for key in stopped {
            // flush_all released the streams it flushed; these are the rest.
            if let Err(e) = flusher::release(&self.shared, &key).await {
                tracing::debug!(stream = %key, error = %e, "write-behind: lease not released");
            }
        }
        result
    }

    async fn drain_key(&self, key: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut conn = self.shared.conn()?;
            let len: u64 = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("write-behind flush (XLEN)"))?;
            if len == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    component: Component::Mongodb,
                    operation: "write-behind flush",
                    after: timeout,
                });
            }
            match flusher::round(&self.shared, key).await {
                Ok(n) if n > 0 => {}
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The dead letters of `E`'s queue, oldest first, at most `limit` (see [`DeadLetter`]).
    /// Entries of other entities sharing the collection's queue are listed too.
    pub async fn dead_letters<E: Entity>(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let meta = E::META;
        let key = stream_key(&self.shared.prefix, meta.database, meta.collection);
        let mut conn = self.shared.conn()?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{key}:dead"))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(redis_err("write-behind dead letters (XRANGE)"))?;
        let text = |sid: &redis::streams::StreamId, field: &str| -> Option<String> {
            sid.map
                .get(field)
                .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok())
        };
        Ok(reply
            .ids
            .iter()
            .map(|sid| {
                let raw: Option<Vec<u8>> = sid
                    .map
                    .get("e")
                    .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok());
                let mut letter = DeadLetter {
                    id: sid.id.clone(),
                    source_id: text(sid, "source_id"),
                    dead_at_ms: stream_id_millis(&sid.id).unwrap_or(0),
                    error: text(sid, "error"),
                    entity: None,
                    tenant: None,
                    op: None,
                    document_id: None,
                    decode_error: None,
                };
                match entry::decode(raw.as_deref(), meta.database, meta.collection) {
                    Ok(e) => {
                        let id = match &e.op {
                            Op::Insert(d) => d.get(meta.id_field).cloned(),
                            Op::Update { id, .. } | Op::Upsert { id, .. } | Op::Delete { id } => {
                                Some(id.clone())
                            }
                        };
                        letter.op = Some(e.op.name().to_owned());
                        letter.document_id = id.as_ref().map(crate::document::id_as_text);
                        letter.entity = Some(e.entity);
                        letter.tenant = Some(e.tenant.to_string());
                    }
                    Err(e) => letter.decode_error = Some(e.to_string()),
                }
                letter
            })
            .collect())
    }

    /// Puts dead letters of `E`'s queue back at the end of the queue, to be applied again
    /// (after the cause of their refusal was fixed): those with the given dead-letter ids, or
    /// with `None` all of them. Returns how many were moved.
    ///
    /// A replayed write goes **behind** the writes queued since it was set aside, so it
    /// applies after them: replay an update only if that is still what should win. Each entry
    /// is appended to the queue before it is removed from the dead letters, so a failure in
    /// between leaves it in both (applying an entry twice is harmless), never in neither. The
    /// queue's flusher applies them: a process with a repository of `E` (or
    /// [`flush`](Self::flush)).
    pub async fn replay<E: Entity>(&self, ids: Option<&[String]>) -> Result<u64> {
        let meta = E::META;
        let key = stream_key(&self.shared.prefix, meta.database, meta.collection);
        let dead = format!("{key}:dead");
        let mut conn = self.shared.conn()?;
        let mut entries: Vec<redis::streams::StreamId> = Vec::new();
        match ids {
            None => {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&dead)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err("write-behind replay (XRANGE)"))?;
                entries = reply.ids;
            }
            Some(ids) => {
                for id in ids {
                    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                        .arg(&dead)
                        .arg(id)
                        .arg(id)
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_err("write-behind replay (XRANGE)"))?;
                    entries.extend(reply.ids);
                }
            }
        }
        let mut moved = 0;
        for sid in entries {
            let raw: Vec<u8> = sid
                .map
                .get("e")
                .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok())
                .unwrap_or_default();
            redis::cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("e")
                .arg(raw)
                .query_async::<String>(&mut conn)
                .await
                .map_err(redis_err("write-behind replay (XADD)"))?;
            let removed: u64 = redis::cmd("XDEL")
                .arg(&dead)
                .arg(&sid.id)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("write-behind replay (XDEL)"))?;
            moved += removed.min(1);
        }
        if moved > 0 && self.shared.settings.start_flusher {
            self.shared.ensure_flusher(key);
        }
        Ok(moved)
    }

    /// Removes every queued and dead-lettered entry of `tenant` from `meta`'s stream (read in
    /// pages of 500 with `XRANGE`, removed with `XDEL`). Returns (queued, dead) removed. An
    /// entry a flusher is applying at that moment may still land: erase after the tenant's
    /// traffic stopped.
    pub(crate) async fn purge_tenant(
        &self,
        meta: &EntityMeta,
        tenant: &TenantId,
    ) -> Result<(u64, u64)> {
        let key = stream_key(&self.shared.prefix, meta.database, meta.collection);
        let mut conn = self.shared.conn()?;
        let queued = purge_stream(&mut conn, &key, tenant).await?;
        let dead = purge_stream(&mut conn, &format!("{key}:dead"), tenant).await?;
        Ok((queued, dead))
    }

    /// Pending writes and their age, per queue (every queue of this Redis and key prefix).
    pub async fn lag(&self) -> Result<Vec<QueueLag>> {
        let keys = self.queues(true).await?;
        let mut conn = self.shared.conn()?;
        let mut out: BTreeMap<String, QueueLag> = BTreeMap::new();
        let now_ms = now_millis();
        for key in &keys {
            let (base, dead) = match key.strip_suffix(":dead") {
                Some(b) => (b, true),
                None => (key.as_str(), false),
            };
            let namespace = base.rsplit("caas:wb:").next().unwrap_or(base).to_owned();
            let len: u64 = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("write-behind lag (XLEN)"))?;
            let entry = out.entry(namespace.clone()).or_insert(QueueLag {
                namespace,
                pending: 0,
                oldest_age_ms: 0,
                dead_letters: 0,
            });
            if dead {
                entry.dead_letters = len;
                continue;
            }
            entry.pending = len;
            let first: redis::Value = redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("write-behind lag (XRANGE)"))?;
            if let Some(ms) = first_entry_millis(&first) {
                entry.oldest_age_ms = now_ms.saturating_sub(ms);
            }
        }
        Ok(out.into_values().collect())
    }
}

/// Deletes the entries of `tenant` from stream `key`; entries that do not decode are left.
async fn purge_stream(conn: &mut RedisConnection, key: &str, tenant: &TenantId) -> Result<u64> {
    let mut start = "-".to_owned();
    let mut removed = 0;
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await
            .map_err(redis_err("erase write-behind entries (XRANGE)"))?;
        let Some(last) = page.ids.last() else {
            return Ok(removed);
        };
        start = format!("({}", last.id);
        let ids: Vec<&str> = page
            .ids
            .iter()
            .filter(|e| {
                let raw: Option<Vec<u8>> = e
                    .map
                    .get("e")
                    .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok());
                raw.and_then(|r| Document::from_reader(r.as_slice()).ok())
                    .is_some_and(|d| d.get_str("tenant") == Ok(tenant.as_str()))
            })
            .map(|e| e.id.as_str())
            .collect();
        if !ids.is_empty() {
            let n: u64 = redis::cmd("XDEL")
                .arg(key)
                .arg(&ids)
                .query_async(conn)
                .await
                .map_err(redis_err("erase write-behind entries (XDEL)"))?;
            removed += n;
        }
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn stream_id_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn first_entry_millis(v: &redis::Value) -> Option<u64> {
    let redis::Value::Array(entries) = v else {
        return None;
    };
    let redis::Value::Array(entry) = entries.first()? else {
        return None;
    };
    let id: String = redis::FromRedisValue::from_redis_value(entry.first()?.clone()).ok()?;
    id.split('-').next()?.parse().ok()
}
