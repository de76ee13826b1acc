//! The cache: an optional in-process tier, then Redis, then MongoDB, declared per entity with
//! `cache(...)`.
//!
//! What it guarantees (details and the choice per consistency model in `docs/caching.md`):
//! - **No stale-set race.** Every write bumps the entry's generation in Redis before it is
//!   acknowledged; a put after a miss succeeds only if the generation is the one read before
//!   the load (the `PUT_IF_UNCHANGED` script in `cache/scripts.rs`). Write-through puts are
//!   fenced by version, and a delete leaves a tombstone that fences out every older put. The
//!   in-process tier is fenced the same way (`local.rs`): it takes no value the fences refused.
//! - **One loader per hot miss.** The first miss takes a short lock; the others wait for its
//!   value (bounded by `cache.stampede_wait`) and load themselves only if it does not come.
//! - **Redis never fails a request.** Errors and timeouts (`cache.op_timeout`) send the call
//!   to MongoDB; a circuit breaker skips Redis while it is down and probes it after a
//!   cool-down (a probe that never reports, say cancelled, reopens it: it never stays
//!   half-open). Writes made while Redis could not be told are remembered, and their entity's
//!   entries are cleared when Redis is back, by one streaming `SCAN` per entity, before Redis
//!   serves that entity again.
//! - **Identity is the namespace**: entries are keyed by database, collection and entity name,
//!   never by the struct name alone (`keys.rs`).
//! - Entries that do not decode are misses, deleted and counted. Entries carry the schema
//!   version they were put at: an older one is upgraded through the entity's steps as it is
//!   read, a newer one (put by a newer release during a rolling update) is a miss left in
//!   place (`entry.rs`). The in-process tier holds decoded values, so always current ones.
//! - Secret fields are never cached.

mod entry;
mod keys;
mod listener;
mod local;
mod metrics;
pub(crate) mod scripts;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document};

use crate::config::CacheConfig;
use crate::connection::breaker::Breaker;
use crate::connection::{Connections, RedisConnection};
use crate::document;
use crate::entity::{CacheSpec, Entity, EntityMeta};
use crate::error::{Component, Error, Result};
use crate::tenant::TenantId;

use self::metrics::{bump, Counters};
use crate::telemetry::{metrics as telemetry, spans};
use entry::Decoded;
use keys::EntryKeys;
use tracing::Instrument;

pub use self::metrics::CacheMetrics;

/// The cache of one `Storage` handle: tiers, breaker, metrics. Reach it with
/// `Storage::cache`; repositories use it on their own.
pub struct CacheLayer {
    conn: Connections,
    prefix: String,
    settings: CacheConfig,
    breaker: Breaker,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    /// Entities (by identity and logical database) with writes Redis was not told about; their
    /// entries are cleared when Redis is back, and Redis is not read for them until then. The
    /// lock is held by the one caller clearing them.
    dirty: Mutex<HashMap<(String, u8), Clearing>>,
    local: Arc<local::Registry>,
    listener: Mutex<Option<tokio::task::AbortHandle>>,
    /// Test hooks: a pause between loading from MongoDB and putting into Redis; a one-shot
    /// pause before the next write's put.
    load_delay_ms: AtomicU64,
    put_delay_ms: AtomicU64,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("prefix", &self.prefix)
            .field("breaker_open", &self.breaker.is_open())
            .finish()
    }
}

impl Drop for CacheLayer {
    fn drop(&mut self) {
        if let Some(h) = self.listener.lock().expect("listener lock").take() {
            h.abort();
        }
    }
}

/// Held by the one caller clearing an entity's entries after an outage.
type Clearing = Arc<tokio::sync::Mutex<()>>;

/// Why a Redis call was not answered.
enum Fault {
    Skipped,
    Failed(String),
}

impl CacheLayer {
    /// The cache over `conn`'s Redis, with its `cache` settings and `redis.key_prefix`.
    pub(crate) fn new(conn: Connections) -> Self {
        let settings: CacheConfig = conn.config().cache.clone();
        CacheLayer {
            prefix: conn.config().redis.key_prefix.clone(),
            breaker: Breaker::new(
                "redis",
                settings.breaker_failures,
                settings.breaker_cooldown,
            ),
            settings,
            counters: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashMap::new()),
            local: Arc::new(local::Registry::new(conn.clock().clone())),
            listener: Mutex::new(None),
            load_delay_ms: AtomicU64::new(0),
            put_delay_ms: AtomicU64::new(0),
            conn,
        }
    }

    /// Counters per entity (keyed `database.collection:Entity`), since this handle was
    /// created.
    pub fn metrics(&self) -> BTreeMap<String, CacheMetrics> {
        self.counters
            .lock()
            .expect("cache counters")
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }

    /// Counters of entity `E`.
    pub fn metrics_of<E: Entity>(&self) -> CacheMetrics {
        self.counters_of(&keys::identity(E::META)).snapshot()
    }

    /// Test hook: pause this long after each load from MongoDB, before the put into Redis, to
    /// widen the window in which a concurrent write can race the put.
    #[cfg(feature = "testing")]
    pub fn inject_load_delay(&self, delay: Duration) {
        self.load_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Test hook: pause this long before the next write's cache put (once), to let another
    /// write's cache step land first.
    #[cfg(feature = "testing")]
    pub fn inject_put_delay(&self, delay: Duration) {
        self.put_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the breaker currently keeps calls away from Redis.
    pub fn is_bypassing_redis(&self) -> bool {
        self.breaker.is_open()
    }

    fn counters_of(&self, identity: &str) -> Arc<Counters> {
        let mut counters = self.counters.lock().expect("cache counters");
        match counters.get(identity) {
            Some(c) => c.clone(),
            None => counters.entry(identity.to_owned()).or_default().clone(),
        }
    }

    fn channel_for(&self, spec: &CacheSpec) -> &str {
        if spec.local.is_some() {
            &self.settings.invalidation_channel
        } else {
            ""
        }
    }

    /// Runs one Redis call under the breaker and the op timeout; its outcome is reported to
    /// the breaker whatever it is (a probe dropped unreported reopens it).
    async fn call<T, F>(&self, f: F) -> std::result::Result<T, Fault>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.guarded(self.settings.op_timeout, f).await
    }

    async fn guarded<T, F>(&self, bound: Duration, f: F) -> std::result::Result<T, Fault>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let permit = self.breaker.permit();
        if permit.skips() {
            return Err(Fault::Skipped);
        }
        match tokio::time::timeout(bound, f).await {
            Ok(Ok(v)) => {
                if permit.success(&self.breaker) {
                    tracing::info!("Redis is back; cache calls resume");
                }
                Ok(v)
            }
            Ok(Err(e)) => {
                self.failed(permit);
                Err(Fault::Failed(e.to_string()))
            }
            Err(_) => {
                self.failed(permit);
                Err(Fault::Failed(format!("no answer within {bound:?}")))
            }
        }
    }

    /// Reports a failed Redis call to the breaker (which records its state in the metrics).
    fn failed(&self, permit: crate::connection::breaker::Permit) {
        permit.failure(&self.breaker);
    }

    fn local_tier<E: Entity>(
        &self,
        identity: &str,
        spec: &CacheSpec,
    ) -> Option<Arc<dyn local::LocalTier>> {
        let l = spec.local.as_ref()?;
        let tier = self.local.tier::<E>(identity, l);
        let mut listener = self.listener.lock().expect("listener lock");
        // In memory there is one process: no other instance's tier to hear from.
        if listener.is_none() && self.conn.memory().is_none() {
            *listener = Some(listener::spawn(
                self.conn.redis_pubsub().clone(),
                self.settings.invalidation_channel.clone(),
                Arc::downgrade(&self.local),
            ));
        }
        Some(tier)
    }

    /// Clears an entity's entries if writes happened while Redis was unreachable. Returns
    /// whether Redis may be read for it. One caller clears (one streaming SCAN); the others
    /// read MongoDB meanwhile instead of scanning too.
    async fn ensure_clean(&self, identity: &str, conn: &mut RedisConnection, db: u8) -> bool {
        let key = (identity.to_owned(), db);
        let Some(lock) = self.dirty.lock().expect("dirty set").get(&key).cloned() else {
            return true;
        };
        let Ok(_clearing) = lock.try_lock() else {
            return false;
        };
        if !self.dirty.lock().expect("dirty set").contains_key(&key) {
            return true; // cleared by the caller that held the lock before us
        }
        let pattern = keys::pattern(&self.prefix, None, identity);
        match self.delete_matching(conn, &pattern).await {
            Ok(n) => {
                self.dirty.lock().expect("dirty set").remove(&key);
                tracing::info!(
                    entity = identity,
                    entries = n,
                    "cleared cache entries that may have gone stale while Redis was unreachable"
                );
                true
            }
            Err(_) => false,
        }
    }

    fn mark_dirty(&self, identity: &str, db: u8) {
        self.dirty
            .lock()
            .expect("dirty set")
            .entry((identity.to_owned(), db))
            .or_default();
    }

    /// The logical database and connection that cache entities of `meta`.
    fn redis_for(&self, meta: &EntityMeta) -> (u8, RedisConnection) {
        let db = self
            .conn
            .config()
            .redis
            .databases
            .cache_db_for(meta.database);
        (db, self.conn.redis_cache_for(meta.database))
    }

    /// SCANs (never KEYS) for `pattern` and invalidates what it finds, page by page (memory
    /// stays flat), with their generations. The SCAN reports to the breaker like any call.
    async fn delete_matching(
        &self,
        conn: &mut RedisConnection,
        pattern: &str,
    ) -> std::result::Result<u64, Fault> {
        let deleted = AtomicU64::new(0);
        let mut pages = conn.clone();
        let scan = pages.scan_each(pattern, None, |found| {
            let mut conn = conn.clone();
            let deleted = &deleted;
            async move {
                let data_keys: HashSet<&str> = found
                    .iter()
                    .filter(|k| !k.ends_with(":load"))
                    .map(|k| k.strip_suffix(":gen").unwrap_or(k))
                    .collect();
                for data in data_keys {
                    let Some(tag) = keys::tag_of(&self.prefix, data) else {
                        continue;
                    };
                    // The identity is part of the tag: `tenant:identity:id`.
                    let identity = tag.split(':').skip(1).take(2).collect::<Vec<_>>().join(":");
                    let dropped: i64 = scripts::INVALIDATE
                        .key(data)
                        .key(format!("{data}:gen"))
                        .arg(self.settings.generation_ttl.as_millis() as u64)
                        .arg(&self.settings.invalidation_channel)
                        .arg(keys::message(&identity, tag))
                        .invoke_async(&mut conn)
                        .await?;
                    deleted.fetch_add(dropped.unsigned_abs(), Ordering::Relaxed);
                }
                Ok(())
            }
        });
        self.guarded(self.settings.op_timeout * 20, scan).await?;
        Ok(deleted.load(Ordering::Relaxed))
    }

    /// Read-through: in-process tier, then Redis, then `load` (MongoDB), filling the tiers on
    /// the way back with fenced puts.
    pub(crate) async fn read<E, F, Fut>(
        &self,
        tenant: &TenantId,
        id: &Bson,
        load: F,
    ) -> Result<Option<E>>
    where
        E: Entity,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<E>>>,
    {
        let Some(spec) = E::META.cache.as_ref() else {
            return load().await;
        };
        let identity = keys::identity(E::META);
        let c = self.counters_of(&identity);
        let tag = keys::tag(tenant, &identity, id);
        // The repository call's span, told how the cache served it.
        let call = tracing::Span::current();
        let entity = E::META.name;
        let tier = self.local_tier::<E>(&identity, spec);
        let local = tier.as_ref().and_then(local::typed::<E>);
        // Fences the in-process fill: any invalidation from here on refuses it.
        let epoch = local.map(local::Typed::epoch);
        if let Some(local) = local {
            if let Some(hit) = local.get(&tag).and_then(|e| e.local_cache_clone()) {
                bump(&c.local_hits);
                telemetry::cache_lookup(entity, "local", true);
                spans::cache_outcome(&call, "local_hit");
                return Ok(Some(hit));
            }
            bump(&c.local_misses);
            telemetry::cache_lookup(entity, "local", false);
        }
        let fill = |e: E, put_refused: bool| {
            if let (Some(local), Some(epoch), false) = (local, epoch, put_refused) {
                if let Some(copy) = e.local_cache_clone() {
                    local.fill(&tag, copy, epoch);
                }
            }
            e
        };

        let (db, mut conn) = self.redis_for(E::META);
        if !self.ensure_clean(&identity, &mut conn, db).await {
            bump(&c.bypassed);
            spans::cache_outcome(&call, "bypass");
            return self.load_counted(&c, load).await;
        }
        let k = keys::entry(&self.prefix, &tag);
        let looked_up = self
            .get_entry::<E>(&mut conn, &k, &c)
            .instrument(spans::cache())
            .await;
        match looked_up {
            Err(_) => {
                bump(&c.bypassed);
                spans::cache_outcome(&call, "bypass");
                let loaded = self.load_counted(&c, load).await?;
                return Ok(loaded.map(|e| fill(e, false)));
            }
            Ok(Some(e)) => {
                bump(&c.redis_hits);
                telemetry::cache_lookup(entity, "redis", true);
                spans::cache_outcome(&call, "redis_hit");
                return Ok(Some(fill(e, false)));
            }
            Ok(None) => {
                bump(&c.redis_misses);
                telemetry::cache_lookup(entity, "redis", false);
                spans::cache_outcome(&call, "miss");
            }
        }

        // Miss. Read the generation before loading: a write after this point changes it and
        // fences our put.
        let generation: Option<String> = match self
            .call(redis::cmd("GET").arg(&k.generation).query_async(&mut conn))
            .await
        {
            Ok(g) => g,
            Err(_) => {
                let loaded = self.load_counted(&c, load).await?;
                return Ok(loaded.map(|e| fill(e, false)));
            }
        };
        let token = entry::lock_token();
        let locked: bool = self
            .call(
                redis::cmd("SET")
                    .arg(&k.load)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.settings.load_lock_ttl.as_millis() as u64)
                    .query_async::<Option<String>>(&mut conn),
            )
            .await
            .map(|r| r.is_some())
            .unwrap_or(true);
        if !locked {
            bump(&c.stampede_waits);
            let deadline = Instant::now() + self.settings.stampede_wait;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
                match self.get_entry::<E>(&mut conn, &k, &c).await {
                    Ok(Some(e)) => {
                        bump(&c.redis_hits);
                        telemetry::cache_lookup(entity, "redis", true);
                        spans::cache_outcome(&call, "redis_hit");
                        return Ok(Some(fill(e, false)));
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
        let loaded = self.load_counted(&c, load).await;
        let delay = self.load_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut refused = false;
        if let Ok(Some(e)) = &loaded {
            match entry::from_entity(e) {
                Ok(value) => {
                    let put = self
                        .call(
                            scripts::PUT_IF_UNCHANGED
                                .key(&k.data)
                                .key(&k.generation)
                                .arg(generation.unwrap_or_default())
                                .arg(value)
                                .arg(entry::ttl_ms(spec))
                                .invoke_async::<i64>(&mut conn),
                        )
                        .await;
                    match put {
                        Ok(1) => bump(&c.sets),
                        Ok(_) => {
                            bump(&c.fenced_puts);
                            refused = true;
                        }
                        Err(_) => bump(&c.errors),
                    }
                }
                Err(e) => tracing::warn!(entity = E::META.name, error = %e, "entity not cacheable"),
            }
        }
        if locked {
            let _ = self
                .call(
                    scripts::RELEASE_LOCK
                        .key(&k.load)
                        .arg(&token)
                        .invoke_async::<i64>(&mut conn),
                )
                .await;
        }
        // The value the Redis fence refused predates a write: the caller gets it (its read
        // started before the write), the in-process tier does not.
        Ok(loaded?.map(|e| fill(e, refused)))
    }

    async fn get_entry<E: Entity>(
        &self,
        conn: &mut RedisConnection,
        k: &EntryKeys,
        c: &Counters,
    ) -> std::result::Result<Option<E>, ()> {
        let raw: Option<Vec<u8>> = match self
            .call(redis::cmd("GET").arg(&k.data).query_async(conn))
            .await
        {
            Ok(v) => v,
            Err(Fault::Failed(_)) => {
                bump(&c.errors);
                return Err(());
            }
            Err(Fault::Skipped) => return Err(()),
        };
        let Some(raw) = raw else { return Ok(None) };
        match entry::decode::<E>(&raw) {
            Decoded::Entity(e) => Ok(Some(e)),
            Decoded::Deleted | Decoded::Newer => Ok(None),
            Decoded::Corrupt => {
                bump(&c.decode_errors);
                let _ = self
                    .call(redis::cmd("DEL").arg(&k.data).query_async::<i64>(conn))
                    .await;
                Ok(None)
            }
        }
    }

    async fn load_counted<E, F, Fut>(&self, c: &Counters, load: F) -> Result<Option<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<E>>>,
    {
        let started = Instant::now();
        let r = load().instrument(spans::mongodb("find")).await;
        bump(&c.db_loads);
        c.load_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// After a write to MongoDB, before it is acknowledged: invalidate the entry in every tier
    /// or, where the caller passes what was written, replace it. `written` is the document as
    /// stored (write-through); `deleted_at` the version a delete took the document to (a
    /// tombstone then fences out every older put).
    pub(crate) async fn after_write(
        &self,
        meta: &'static EntityMeta,
        tenant: &TenantId,
        id: &Bson,
        written: Option<&Document>,
        deleted_at: Option<u64>,
    ) {
        let Some(spec) = meta.cache.as_ref() else {
            return;
        };
        let identity = keys::identity(meta);
        let c = self.counters_of(&identity);
        let tag = keys::tag(tenant, &identity, id);
        self.local.invalidate(&identity, &tag);
        let (db, mut conn) = self.redis_for(meta);
        let k = keys::entry(&self.prefix, &tag);
        let gen_ttl = self.settings.generation_ttl.as_millis() as u64;
        let message = keys::message(&identity, &tag);
        let put = match (
            written.and_then(|d| entry::from_document(meta, d)),
            deleted_at,
        ) {
            (Some(through), _) => Some(through),
            (None, Some(version)) => Some((version, entry::tombstone(version))),
            (None, None) => None,
        };
        let r = match put {
            Some((version, value)) => {
                let delay = self.put_delay_ms.swap(0, Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                self.call(
                    scripts::WRITE_THROUGH
                        .key(&k.data)
                        .key(&k.generation)
                        .arg(gen_ttl)
                        .arg(self.channel_for(spec))
                        .arg(&message)
                        .arg(version)
                        .arg(value)
                        .arg(entry::ttl_ms(spec))
                        .invoke_async::<i64>(&mut conn),
                )
                .await
                .map(|set| {
                    bump(if set == 1 { &c.sets } else { &c.fenced_puts });
                })
            }
            None => self
                .call(
                    scripts::INVALIDATE
                        .key(&k.data)
                        .key(&k.generation)
                        .arg(gen_ttl)
                        .arg(self.channel_for(spec))
                        .arg(&message)
                        .invoke_async::<i64>(&mut conn),
                )
                .await
                .map(|_| {
                    bump(&c.invalidations);
                    telemetry::cache_invalidations(meta.name, 1);
                }),
        };
        if let Err(fault) = r {
            if let Fault::Failed(e) = &fault {
                bump(&c.errors);
                tracing::warn!(entity = meta.name, error = %e, "cache not invalidated; the entity's entries will be cleared when Redis answers again");
            }
            self.mark_dirty(&identity, db);
        }
    }

    /// Drops the entry of one entity from every tier.
    pub async fn invalidate<E: Entity>(&self, tenant: &TenantId, id: &E::Id) -> Result<()> {
        let id = document::id_to_bson::<E>(id)?;
        self.after_write(E::META, tenant, &id, None, None).await;
        Ok(())
    }

    /// Drops every cache entry whose key matches the `SCAN` glob `pattern` (relative to
    /// `redis.key_prefix`; e.g. `{acme:caas_auth.users:User:*` for one tenant's users) in the
    /// cache database of MongoDB database `database`, and empties the in-process tiers.
    /// Returns how many entries were dropped.
    pub async fn invalidate_pattern(&self, database: &str, pattern: &str) -> Result<u64> {
        let mut conn = self.conn.redis_cache_for(database);
        let full = format!("{}{pattern}", self.prefix);
        let n = self
            .delete_matching(&mut conn, &full)
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Redis,
                operation: "cache invalidation by pattern",
                after: self.settings.op_timeout,
            })?;
        self.local.clear_all();
        Ok(n)
    }

    /// How many entries of `E` Redis holds in `tenant` (or, with `None`, in every tenant),
    /// counted with `SCAN` (never `KEYS`): for operators, e.g. before and after an
    /// invalidation. The in-process tier is not counted.
    pub async fn entry_count<E: Entity>(&self, tenant: Option<&TenantId>) -> Result<u64> {
        let identity = keys::identity(E::META);
        let (_, mut conn) = self.redis_for(E::META);
        let pattern = keys::pattern(&self.prefix, tenant, &identity);
        // SCAN may return a key twice: count distinct data keys.
        let mut found_keys: HashSet<String> = HashSet::new();
        let scan = conn.scan_each(&pattern, None, |found| {
            found_keys.extend(
                found
                    .into_iter()
                    .filter(|k| !k.ends_with(":load") && !k.ends_with(":gen")),
            );
            async { Ok(()) }
        });
        let bound = self.settings.op_timeout * 20;
        self.guarded(bound, scan)
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Redis,
                operation: "cache entry count",
                after: bound,
            })?;
        Ok(found_keys.len() as u64)
    }

    /// Drops every cached entry of `tenant` for the entity known to the cache as `identity`
    /// (`<database>.<collection>:<Entity>`) in the cache database of MongoDB database
    /// `database`, as writes invalidate (generations bumped, other instances' in-process tiers
    /// told). For restores, which know entities by the names an archive records.
    pub(crate) async fn invalidate_identity(
        &self,
        database: &str,
        identity: &str,
        tenant: &TenantId,
    ) -> Result<u64> {
        self.local.clear(identity);
        let mut conn = self.conn.redis_cache_for(database);
        let pattern = keys::pattern(&self.prefix, Some(tenant), identity);
        self.delete_matching(&mut conn, &pattern)
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Redis,
                operation: "cache invalidation of restored tenant",
                after: self.settings.op_timeout,
            })
    }

    /// Deletes every key of `tenant` for entity `meta`: entries, generations and loader locks
    /// (erasure leaves nothing of the tenant, not even the generation fences), and empties the
    /// entity's in-process tier. Returns (entries, keys) deleted.
    pub(crate) async fn purge_tenant(
        &self,
        meta: &EntityMeta,
        tenant: &TenantId,
    ) -> Result<(u64, u64)> {
        let identity = keys::identity(meta);
        self.local.clear(&identity);
        let (_, conn) = self.redis_for(meta);
        let pattern = keys::pattern(&self.prefix, Some(tenant), &identity);
        let (entries, all) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut pages = conn.clone();
        let scan = pages.scan_each(&pattern, None, |found| {
            let mut conn = conn.clone();
            let (entries, all) = (&entries, &all);
            async move {
                let data = found
                    .iter()
                    .filter(|k| !k.ends_with(":gen") && !k.ends_with(":load"))
                    .count() as u64;
                // One key per DEL: on a cluster, keys of different entries are in different
                // slots.
                for key in &found {
                    let n: u64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
                    all.fetch_add(n, Ordering::Relaxed);
                }
                entries.fetch_add(data, Ordering::Relaxed);
                Ok(())
            }
        });
        tokio::time::timeout(self.settings.op_timeout * 20, scan)
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Redis,
                operation: "erase cache entries",
                after: self.settings.op_timeout * 20,
            })?
            .map_err(|source| Error::Redis {
                operation: "erase cache entries (SCAN/DEL)",
                source,
            })?;
        Ok((entries.load(Ordering::Relaxed), all.load(Ordering::Relaxed)))
    }

    /// Drops every cached entry of `E` in `tenant` (or, with `None`, in every tenant), found
    /// with `SCAN`. Returns how many entries were dropped.
    pub async fn invalidate_all<E: Entity>(&self, tenant: Option<&TenantId>) -> Result<u64> {
        let identity = keys::identity(E::META);
        self.local.clear(&identity);
        let (db, mut conn) = self.redis_for(E::META);
        let pattern = keys::pattern(&self.prefix, tenant, &identity);
        let n = self
            .delete_matching(&mut conn, &pattern)
            .await
            .map_err(|f| {
                self.mark_dirty(&identity, db);
                match f {
                    Fault::Skipped => Error::Timeout {
                        component: Component::Redis,
                        operation: "cache invalidation (breaker open)",
                        after: self.settings.breaker_cooldown,
                    },
                    Fault::Failed(_) => Error::Timeout {
                        component: Component::Redis,
                        operation: "cache invalidation",
                        after: self.settings.op_timeout,
                    },
                }
            })?;
        self.counters_of(&identity)
            .invalidations
            .fetch_add(n, Ordering::Relaxed);
        telemetry::cache_invalidations(E::META.name, n);
        Ok(n)
    }
}
