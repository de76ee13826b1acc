//! The cache: an optional in-process tier, then Redis, then MongoDB, declared per entity with
//! `cache(...)`.
//!
//! What it guarantees (details and the choice per consistency model in `docs/caching.md`):
//! - **No stale-set race.** Every write bumps the entry's generation in Redis before it is
//!   acknowledged; a put after a miss succeeds only if the generation is the one read before
//!   the load (the `PUT_IF_UNCHANGED` script in `cache/scripts.rs`). Write-through puts are fenced by version.
//! - **One loader per hot miss.** The first miss takes a short lock; the others wait for its
//!   value (bounded by `cache.stampede_wait`) and load themselves only if it does not come.
//! - **Redis never fails a request.** Errors and timeouts (`cache.op_timeout`) send the call
//!   to MongoDB; a circuit breaker skips Redis while it is down. Writes made while Redis could
//!   not be told are remembered, and their entity's entries are cleared when Redis is back,
//!   before Redis serves that entity again.
//! - Entries that do not decode are misses, deleted and counted.
//! - Secret fields are never cached.

mod breaker;
mod entry;
mod keys;
mod listener;
mod local;
mod metrics;
mod scripts;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document};

use crate::config::CacheConfig;
use crate::connection::{Connections, RedisConnection};
use crate::document;
use crate::entity::{CacheSpec, Entity, EntityMeta};
use crate::error::{Component, Error, Result};
use crate::tenant::TenantId;

use breaker::{Breaker, Permit};
use keys::EntryKeys;
use metrics::{bump, Counters};

pub use metrics::CacheMetrics;

/// The cache of one `Storage` handle: tiers, breaker, metrics. Reach it with
/// `Storage::cache`; repositories use it on their own.
pub struct CacheLayer {
    conn: Connections,
    prefix: String,
    settings: CacheConfig,
    breaker: Breaker,
    counters: Mutex<HashMap<&'static str, Arc<Counters>>>,
    /// Entities with writes Redis was not told about; their entries are cleared when Redis is
    /// back, and Redis is not read for them until then.
    dirty: Mutex<HashSet<(&'static str, u8)>>,
    local: Arc<local::Registry>,
    listener: Mutex<Option<tokio::task::AbortHandle>>,
    /// Fault injection: a pause between loading from MongoDB and putting into Redis.
    load_delay_ms: AtomicU64,
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
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            settings,
            counters: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            local: Arc::new(local::Registry::default()),
            listener: Mutex::new(None),
            load_delay_ms: AtomicU64::new(0),
            conn,
        }
    }

    /// Counters per entity type, since this handle was created.
    pub fn metrics(&self) -> BTreeMap<String, CacheMetrics> {
        self.counters
            .lock()
            .expect("cache counters")
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.snapshot()))
            .collect()
    }

    /// Counters of entity `E`.
    pub fn metrics_of<E: Entity>(&self) -> CacheMetrics {
        self.counters_of(E::META.name).snapshot()
    }

    /// Fault injection for tests: pause this long after each load from MongoDB, before the
    /// put into Redis, to widen the window in which a concurrent write can race the put.
    #[cfg(feature = "testing")]
    pub fn inject_load_delay(&self, delay: Duration) {
        self.load_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the breaker currently keeps calls away from Redis.
    pub fn is_bypassing_redis(&self) -> bool {
        self.breaker.is_open()
    }

    fn counters_of(&self, entity: &'static str) -> Arc<Counters> {
        self.counters
            .lock()
            .expect("cache counters")
            .entry(entity)
            .or_default()
            .clone()
    }

    fn channel_for(&self, spec: &CacheSpec) -> &str {
        if spec.local.is_some() {
            &self.settings.invalidation_channel
        } else {
            ""
        }
    }

    /// Runs one Redis call under the breaker and the op timeout.
    async fn call<T, F>(&self, f: F) -> std::result::Result<T, Fault>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if self.breaker.permit() == Permit::Skip {
            return Err(Fault::Skipped);
        }
        match tokio::time::timeout(self.settings.op_timeout, f).await {
            Ok(Ok(v)) => {
                if self.breaker.success() {
                    tracing::info!("Redis is back; cache calls resume");
                }
                Ok(v)
            }
            Ok(Err(e)) => {
                self.breaker.failure();
                Err(Fault::Failed(e.to_string()))
            }
            Err(_) => {
                self.breaker.failure();
                Err(Fault::Failed(format!(
                    "no answer within {:?}",
                    self.settings.op_timeout
                )))
            }
        }
    }

    fn local_tier<E: Entity>(&self, spec: &CacheSpec) -> Option<Arc<dyn local::LocalTier>> {
        let l = spec.local.as_ref()?;
        let tier = self.local.tier::<E>(l);
        let mut listener = self.listener.lock().expect("listener lock");
        if listener.is_none() {
            *listener = Some(listener::spawn(
                self.conn.redis_pubsub().clone(),
                self.settings.invalidation_channel.clone(),
                Arc::downgrade(&self.local),
            ));
        }
        Some(tier)
    }

    /// Clears `E`'s entries if writes happened while Redis was unreachable. Returns whether
    /// Redis may be read for `E`.
    async fn ensure_clean(&self, meta: &EntityMeta, conn: &mut RedisConnection, db: u8) -> bool {
        let key = (meta.name, db);
        if !self.dirty.lock().expect("dirty set").contains(&key) {
            return true;
        }
        let pattern = keys::pattern(&self.prefix, None, meta.name);
        match self.delete_matching(conn, &pattern).await {
            Ok(n) => {
                self.dirty.lock().expect("dirty set").remove(&key);
                tracing::info!(
                    entity = meta.name,
                    entries = n,
                    "cleared cache entries that may have gone stale while Redis was unreachable"
                );
                true
            }
            Err(_) => false,
        }
    }

    fn mark_dirty(&self, meta: &EntityMeta, db: u8) {
        self.dirty
            .lock()
            .expect("dirty set")
            .insert((meta.name, db));
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

    /// SCANs (never KEYS) for `pattern` and deletes what it finds, with its generation keys.
    async fn delete_matching(
        &self,
        conn: &mut RedisConnection,
        pattern: &str,
    ) -> std::result::Result<u64, Fault> {
        let found = match self.breaker.permit() {
            Permit::Skip => return Err(Fault::Skipped),
            _ => match tokio::time::timeout(
                self.settings.op_timeout * 20,
                conn.scan_match(pattern, None),
            )
            .await
            {
                Ok(Ok(keys)) => keys,
                Ok(Err(e)) => {
                    self.breaker.failure();
                    return Err(Fault::Failed(e.to_string()));
                }
                Err(_) => {
                    self.breaker.failure();
                    return Err(Fault::Failed("SCAN timed out".into()));
                }
            },
        };
        let mut deleted = 0;
        {
            let data_keys: HashSet<&str> = found
                .iter()
                .filter(|k| !k.ends_with(":load"))
                .map(|k| k.strip_suffix(":gen").unwrap_or(k))
                .collect();
            for data in data_keys {
                let Some(tag) = keys::tag_of(&self.prefix, data) else {
                    continue;
                };
                let dropped: i64 = self
                    .call(
                        scripts::INVALIDATE
                            .key(data)
                            .key(format!("{data}:gen"))
                            .arg(self.settings.generation_ttl.as_millis() as u64)
                            .arg(&self.settings.invalidation_channel)
                            .arg(tag)
                            .invoke_async(conn),
                    )
                    .await?;
                deleted += dropped.unsigned_abs();
            }
        }
        Ok(deleted)
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
        let spec = E::META
            .cache
            .as_ref()
            .expect("read runs for cached entities");
        let c = self.counters_of(E::META.name);
        let tag = keys::tag(tenant, E::META.name, id);
        let local = self.local_tier::<E>(spec);
        if let Some(tier) = &local {
            if let Some(hit) = local::typed::<E>(tier).get(&tag) {
                bump(&c.local_hits);
                return Ok(Some(clone_of(&hit)));
            }
            bump(&c.local_misses);
        }

        let (db, mut conn) = self.redis_for(E::META);
        if !self.ensure_clean(E::META, &mut conn, db).await {
            bump(&c.bypassed);
            return self.load_counted(&c, load).await;
        }
        let k = keys::entry(&self.prefix, &tag);
        match self.get_entry::<E>(&mut conn, &k, &c).await {
            Err(_) => {
                bump(&c.bypassed);
                return self.load_counted(&c, load).await;
            }
            Ok(Some(e)) => {
                bump(&c.redis_hits);
                return Ok(Some(self.fill_local(&local, &tag, e)));
            }
            Ok(None) => bump(&c.redis_misses),
        }

        // Miss. Read the generation before loading: a write after this point changes it and
        // fences our put.
        let generation: Option<String> = match self
            .call(redis::cmd("GET").arg(&k.generation).query_async(&mut conn))
            .await
        {
            Ok(g) => g,
            Err(_) => return self.load_counted(&c, load).await,
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
                        return Ok(Some(self.fill_local(&local, &tag, e)));
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
                        Ok(_) => bump(&c.fenced_puts),
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
        match loaded {
            Ok(Some(e)) => Ok(Some(self.fill_local(&local, &tag, e))),
            other => other,
        }
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
            Some(e) => Ok(Some(e)),
            None => {
                bump(&c.decode_errors);
                let _ = self
                    .call(redis::cmd("DEL").arg(&k.data).query_async::<i64>(conn))
                    .await;
                Ok(None)
            }
        }
    }

    fn fill_local<E: Entity>(
        &self,
        local: &Option<Arc<dyn local::LocalTier>>,
        tag: &str,
        e: E,
    ) -> E {
        if let (Some(tier), Some(copy)) = (local, e.local_cache_clone()) {
            local::typed::<E>(tier).insert(tag.to_owned(), Arc::new(copy));
        }
        e
    }

    async fn load_counted<E, F, Fut>(&self, c: &Counters, load: F) -> Result<Option<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<E>>>,
    {
        let started = Instant::now();
        let r = load().await;
        bump(&c.db_loads);
        c.load_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// After a write to MongoDB, before it is acknowledged: invalidate (or, write-through,
    /// replace) the entry in every tier. `written` is the document as stored, when known and
    /// the entity's strategy puts written values (the caller decides).
    pub(crate) async fn after_write(
        &self,
        meta: &'static EntityMeta,
        tenant: &TenantId,
        id: &Bson,
        written: Option<&Document>,
    ) {
        let Some(spec) = meta.cache.as_ref() else {
            return;
        };
        let c = self.counters_of(meta.name);
        let tag = keys::tag(tenant, meta.name, id);
        if spec.local.is_some() {
            if let Some(tier) = self.local.get(meta.name) {
                tier.invalidate(&tag);
            }
        }
        let (db, mut conn) = self.redis_for(meta);
        let k = keys::entry(&self.prefix, &tag);
        let gen_ttl = self.settings.generation_ttl.as_millis() as u64;
        let r = match written.and_then(|d| entry::from_document(meta, d)) {
            Some((version, value)) => self
                .call(
                    scripts::WRITE_THROUGH
                        .key(&k.data)
                        .key(&k.generation)
                        .arg(gen_ttl)
                        .arg(self.channel_for(spec))
                        .arg(&tag)
                        .arg(version)
                        .arg(value)
                        .arg(entry::ttl_ms(spec))
                        .invoke_async::<i64>(&mut conn),
                )
                .await
                .map(|set| {
                    bump(if set == 1 { &c.sets } else { &c.fenced_puts });
                }),
            None => self
                .call(
                    scripts::INVALIDATE
                        .key(&k.data)
                        .key(&k.generation)
                        .arg(gen_ttl)
                        .arg(self.channel_for(spec))
                        .arg(&tag)
                        .invoke_async::<i64>(&mut conn),
                )
                .await
                .map(|_| bump(&c.invalidations)),
        };
        if let Err(fault) = r {
            if let Fault::Failed(e) = &fault {
                bump(&c.errors);
                tracing::warn!(entity = meta.name, error = %e, "cache not invalidated; the entity's entries will be cleared when Redis answers again");
            }
            self.mark_dirty(meta, db);
        }
    }

    /// Drops the entry of one entity from every tier.
    pub async fn invalidate<E: Entity>(&self, tenant: &TenantId, id: &E::Id) -> Result<()> {
        let id = document::id_to_bson::<E>(id)?;
        self.after_write(E::META, tenant, &id, None).await;
        Ok(())
    }

    /// Drops every cache entry whose key matches the `SCAN` glob `pattern` (relative to
    /// `redis.key_prefix`; e.g. `{acme:User:*` for one tenant's users) in the cache database
    /// of MongoDB database `database`. Returns how many entries were dropped.
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

    /// Drops every cached entry of `E` in `tenant` (or, with `None`, in every tenant), found
    /// with `SCAN`. Returns how many entries were dropped.
    pub async fn invalidate_all<E: Entity>(&self, tenant: Option<&TenantId>) -> Result<u64> {
        if let Some(spec) = E::META.cache.as_ref() {
            if let Some(tier) = self.local_tier::<E>(spec) {
                tier.clear();
            }
        }
        let (db, mut conn) = self.redis_for(E::META);
        let pattern = keys::pattern(&self.prefix, tenant, E::META.name);
        let n = self
            .delete_matching(&mut conn, &pattern)
            .await
            .map_err(|f| {
                self.mark_dirty(E::META, db);
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
        self.counters_of(E::META.name)
            .invalidations
            .fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

fn clone_of<E: Entity>(shared: &Arc<E>) -> E {
    shared
        .local_cache_clone()
        .expect("only entities that can be cloned get an in-process tier")
}
