//! Write-behind: the durable queue behind `eventual` entities.
//!
//! A queued write is acknowledged once Redis has appended it to the entity's stream
//! (`XADD {prefix}caas:wb:<database>.<collection>`); a flusher applies the stream to MongoDB in
//! batches (runs of inserts as one unordered `insertMany`) and deletes entries only after they
//! are applied. So an acknowledged write survives the death of the process that made it: the
//! next flusher (any instance, any later process) applies it. Durability against the death of
//! *Redis* is Redis's: run it with AOF (`appendonly yes`, `appendfsync everysec` or `always`).
//!
//! One flusher per stream at a time (a lease in Redis), so each entity's writes apply in the
//! order they were acknowledged. Every queued operation is idempotent when re-applied after a
//! crash (a re-inserted document that already exists counts as applied). A database fault stops
//! the batch at the failing entry, which is retried with backoff and never dropped; an entry the
//! database rejects for good (a permanent error) is retried `max_attempts` times and then moved
//! to the stream's dead-letter stream `...:dead` with the error.
//!
//! The flusher needs no entity type: each entry carries the namespace and field names it
//! applies to, so a process that restarts drains what an earlier one queued, by
//! [`WriteBehind::resume`] (called at connect unless `write_behind.resume_on_connect = false`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::connection::RedisConnection;
use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;

use crate::config::WriteBehindConfig;
use crate::entity::Entity;
use crate::error::{duplicate_key_message, Component, Error, Result};
use crate::repo::DELETED_AT_FIELD;
use crate::storage::Storage;
use crate::tenant::TenantId;

/// One queued operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Insert this document.
    Insert(Document),
    /// `$set` these fields on the document with this id.
    Update { id: Bson, set: Document },
    /// Replace or insert the document with this id.
    Upsert { id: Bson, doc: Document },
    /// Delete (or soft-delete) the document with this id.
    Delete { id: Bson },
}

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

/// The write-behind queues of one [`Storage`] handle. Reach it with
/// [`Storage::write_behind`].
pub struct WriteBehind {
    prefix: String,
    settings: WriteBehindConfig,
    flushers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    token: String,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("prefix", &self.prefix)
            .field("flushers", &self.flushers.lock().expect("flushers").len())
            .finish()
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        for (_, h) in self.flushers.lock().expect("flushers").drain() {
            h.abort();
        }
    }
}

/// Appends every entry, or none when they would take the queue past its bound (then returns
/// minus the current length).
///
/// KEYS: the stream. ARGV: the bound, then one encoded entry per write.
static APPEND: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
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

fn redis_err(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |source| Error::Redis { operation, source }
}

impl WriteBehind {
    pub(crate) fn new(prefix: String, settings: WriteBehindConfig) -> Self {
        WriteBehind {
            prefix,
            settings,
            flushers: Mutex::new(HashMap::new()),
            token: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7()),
        }
    }

    /// Appends `ops` of entity `E` to its stream; returns once Redis acknowledged them.
    pub(crate) async fn enqueue<E: Entity>(
        &self,
        storage: &Storage,
        tenant: &TenantId,
        ops: Vec<Op>,
    ) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let key = stream_key(&self.prefix, E::META.database, E::META.collection);
        let mut append = APPEND.key(&key);
        append.arg(self.settings.max_pending);
        for op in &ops {
            let mut entry = doc! {
                "entity": E::META.name,
                "cached": E::META.cache.is_some(),
                "db": E::META.database,
                "coll": E::META.collection,
                "tenant_field": E::META.tenant_field,
                "tenant": tenant.as_str(),
                "id_field": E::META.id_field,
                "soft_delete": E::META.soft_delete,
            };
            match op {
                Op::Insert(d) => {
                    entry.insert("op", "insert");
                    entry.insert("doc", d.clone());
                }
                Op::Update { id, set } => {
                    entry.insert("op", "update");
                    entry.insert("id", id.clone());
                    entry.insert("set", set.clone());
                }
                Op::Upsert { id, doc } => {
                    entry.insert("op", "upsert");
                    entry.insert("id", id.clone());
                    entry.insert("doc", doc.clone());
                }
                Op::Delete { id } => {
                    entry.insert("op", "delete");
                    entry.insert("id", id.clone());
                }
            }
            let mut bytes = Vec::new();
            entry.to_writer(&mut bytes).map_err(|e| Error::Codec {
                entity: E::META.name,
                direction: "encode",
                message: e.to_string(),
            })?;
            append.arg(bytes);
        }
        let mut conn = self.conn(storage)?;
        let bound = self.settings.enqueue_timeout;
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
                queue: format!("{}.{}", E::META.database, E::META.collection),
                pending: pending.unsigned_abs(),
                max: self.settings.max_pending,
            });
        }
        if self.settings.start_flusher {
            self.ensure_flusher(storage, key);
        }
        Ok(())
    }

    fn conn(&self, storage: &Storage) -> Result<RedisConnection> {
        storage.redis(storage.config().redis.databases.write_behind)
    }

    fn ensure_flusher(&self, storage: &Storage, key: String) {
        let mut flushers = self.flushers.lock().expect("flushers");
        if flushers.get(&key).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let storage = storage.downgrade();
        let (settings, token) = (self.settings.clone(), self.token.clone());
        let task = tokio::spawn({
            let key = key.clone();
            async move {
                loop {
                    let Some(s) = storage.upgrade() else { return };
                    let applied = flush_round(&s, &key, &settings, &token).await;
                    drop(s);
                    let pause = match applied {
                        Ok(n) if n > 0 => Duration::ZERO,
                        Ok(_) => settings.flush_interval,
                        Err(e) => {
                            tracing::warn!(stream = %key, error = %e, "write-behind flush failed; retrying");
                            settings.retry_backoff
                        }
                    };
                    tokio::time::sleep(pause).await;
                }
            }
        });
        flushers.insert(key, task.abort_handle());
    }

    /// Every queue stream (with `dead`, the dead-letter streams too), found with `SCAN`.
    async fn queues(&self, storage: &Storage, dead: bool) -> Result<Vec<String>> {
        let mut conn = self.conn(storage)?;
        let pattern = format!("{}caas:wb:*", self.prefix);
        let mut found = conn
            .scan_match(&pattern, Some("stream"))
            .await
            .map_err(redis_err("write-behind (SCAN queues)"))?;
        found.retain(|k| dead || !k.ends_with(":dead"));
        Ok(found)
    }

    /// Starts flushers for every queue that holds entries (left by this or an earlier
    /// process). Returns the streams found.
    pub async fn resume(&self, storage: &Storage) -> Result<Vec<String>> {
        let found = self.queues(storage, false).await?;
        if self.settings.start_flusher {
            for key in &found {
                self.ensure_flusher(storage, key.clone());
            }
        }
        Ok(found)
    }

    /// Applies everything queued for `E` now, in this task, and returns when its queue is
    /// empty (or `timeout` passed). For shutdown and tests.
    pub async fn flush<E: Entity>(&self, storage: &Storage, timeout: Duration) -> Result<()> {
        let key = stream_key(&self.prefix, E::META.database, E::META.collection);
        self.flush_key(storage, &key, timeout).await
    }

    /// Applies every queue of this handle's Redis now; see [`flush`](Self::flush).
    pub async fn flush_all(&self, storage: &Storage, timeout: Duration) -> Result<()> {
        for key in self.queues(storage, false).await? {
            self.flush_key(storage, &key, timeout).await?;
        }
        Ok(())
    }

    async fn flush_key(&self, storage: &Storage, key: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut conn = self.conn(storage)?;
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
            match flush_round(storage, key, &self.settings, &self.token).await {
                Ok(n) if n > 0 => {}
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Pending writes and their age, per queue.
    pub async fn lag(&self, storage: &Storage) -> Result<Vec<QueueLag>> {
        let keys = self.queues(storage, true).await?;
        let mut conn = self.conn(storage)?;
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

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// Takes or renews the stream's lease: one flusher per stream keeps writes in order.
async fn hold_lease(
    conn: &mut RedisConnection,
    key: &str,
    token: &str,
    ttl: Duration,
) -> Result<bool> {
    static LEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
        )
    });
    let held: i64 = LEASE
        .key(format!("{key}:owner"))
        .arg(token)
        .arg(ttl.as_millis() as u64)
        .invoke_async(conn)
        .await
        .map_err(redis_err("write-behind lease"))?;
    Ok(held == 1)
}

/// Attempts per entry id (in this process): for moving permanently failing entries aside.
static ATTEMPTS: std::sync::LazyLock<Mutex<HashMap<String, u32>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// One round: take the lease, read a batch from the head of the stream, apply it in order,
/// delete what was applied. Returns how many entries were applied.
async fn flush_round(
    storage: &Storage,
    key: &str,
    settings: &WriteBehindConfig,
    token: &str,
) -> Result<usize> {
    let mut conn = storage.redis(storage.config().redis.databases.write_behind)?;
    if !hold_lease(&mut conn, key, token, settings.lease_ttl).await? {
        return Ok(0);
    }
    let batch: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(settings.batch_size)
        .query_async(&mut conn)
        .await
        .map_err(redis_err("write-behind read (XRANGE)"))?;
    if batch.ids.is_empty() {
        return Ok(0);
    }
    let mut entries = Vec::with_capacity(batch.ids.len());
    for sid in &batch.ids {
        let raw: Option<Vec<u8>> = sid
            .map
            .get("e")
            .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok());
        let parsed = raw.and_then(|b| Document::from_reader(b.as_slice()).ok());
        entries.push((sid.id.clone(), parsed));
    }

    let mut applied: Vec<String> = Vec::new();
    let mut i = 0;
    let mut outcome: Result<()> = Ok(());
    // Past this index, entries go one by one (after a batch the database refused for good,
    // to find and set aside the entry it refuses).
    let mut singly_until = 0;
    while i < entries.len() {
        // A run of inserts goes as one unordered insertMany.
        let run_end = entries[i..]
            .iter()
            .position(|(_, e)| !is_insert(e.as_ref()))
            .map_or(entries.len(), |p| i + p);
        if run_end > i + 1 && i >= singly_until {
            let run = &entries[i..run_end];
            match apply_inserts(storage, run).await {
                Ok(()) => {
                    applied.extend(run.iter().map(|(id, _)| id.clone()));
                    i = run_end;
                    continue;
                }
                Err(e) if e.is_transient() => {
                    outcome = Err(e);
                    break;
                }
                Err(_) => singly_until = run_end,
            }
        }
        let (id, entry) = &entries[i];
        let r = match entry {
            None => Err(Error::Codec {
                entity: "write-behind entry",
                direction: "decode",
                message: "not a caas-storage queue entry".into(),
            }),
            Some(e) => {
                let r = apply_one(storage, e).await;
                if r.is_ok() {
                    invalidate_applied(storage, e).await;
                }
                r
            }
        };
        match r {
            Ok(()) => applied.push(id.clone()),
            Err(e) if !e.is_transient() && give_up(id, settings.max_attempts) => {
                dead_letter(&mut conn, key, id, entry.as_ref(), &e).await?;
                applied.push(id.clone());
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        i += 1;
    }
    if !applied.is_empty() {
        let mut del = redis::cmd("XDEL");
        del.arg(key);
        for id in &applied {
            del.arg(id);
        }
        del.query_async::<i64>(&mut conn)
            .await
            .map_err(redis_err("write-behind ack (XDEL)"))?;
        let mut attempts = ATTEMPTS.lock().expect("attempts");
        for id in &applied {
            attempts.remove(id);
        }
    }
    outcome.map(|()| applied.len()).or_else(|e| {
        if applied.is_empty() {
            Err(e)
        } else {
            Ok(applied.len())
        }
    })
}

fn give_up(id: &str, max_attempts: u32) -> bool {
    let mut attempts = ATTEMPTS.lock().expect("attempts");
    let n = attempts.entry(id.to_owned()).or_insert(0);
    *n += 1;
    *n >= max_attempts
}

async fn dead_letter(
    conn: &mut RedisConnection,
    key: &str,
    id: &str,
    entry: Option<&Document>,
    error: &Error,
) -> Result<()> {
    let mut bytes = Vec::new();
    if let Some(e) = entry {
        let _ = e.to_writer(&mut bytes);
    }
    tracing::error!(stream = key, entry = id, error = %error, "write-behind entry moved to the dead-letter stream");
    redis::cmd("XADD")
        .arg(format!("{key}:dead"))
        .arg("*")
        .arg("e")
        .arg(bytes)
        .arg("source_id")
        .arg(id)
        .arg("error")
        .arg(error.to_string())
        .query_async::<String>(conn)
        .await
        .map_err(redis_err("write-behind dead letter (XADD)"))?;
    Ok(())
}

/// A cached entity's entry may have been re-filled from MongoDB between the enqueue and the
/// apply; drop it now that the write is in.
async fn invalidate_applied(storage: &Storage, e: &Document) {
    if !e.get_bool("cached").unwrap_or(false) {
        return;
    }
    let (Ok(entity), Ok(db), Ok(tenant), Some(id)) = (
        e.get_str("entity"),
        e.get_str("db"),
        e.get_str("tenant"),
        e.get("id"),
    ) else {
        return;
    };
    let tag = format!("{tenant}:{entity}:{}", crate::repo::codec::id_as_text(id));
    storage.cache().invalidate_tag(storage, db, &tag).await;
}

/// Queued writes apply with the `eventual` model's write concern.
fn eventual_collection(storage: &Storage, db: &str, coll: &str) -> mongodb::Collection<Document> {
    storage.database(db).collection_with_options(
        coll,
        mongodb::options::CollectionOptions::builder()
            .write_concern(crate::consistency::Consistency::Eventual.write_concern())
            .build(),
    )
}

fn is_insert(e: Option<&Document>) -> bool {
    e.is_some_and(|d| d.get_str("op") == Ok("insert"))
}

fn namespace(e: &Document) -> Result<(String, String)> {
    let bad = |what: &str| Error::Codec {
        entity: "write-behind entry",
        direction: "decode",
        message: format!("missing {what}"),
    };
    Ok((
        e.get_str("db").map_err(|_| bad("db"))?.to_owned(),
        e.get_str("coll").map_err(|_| bad("coll"))?.to_owned(),
    ))
}

/// Re-applying an insert after a crash is harmless only if the unique (tenant, id) index
/// rejects the second copy: make sure it exists before the first insert into a namespace.
/// If it cannot be built (say, the collection already holds duplicates), writes still apply
/// and the problem is logged: holding writes back would not repair the data.
async fn ensure_primary_index(storage: &Storage, e: &Document) {
    if let Err(err) = try_primary_index(storage, e).await {
        tracing::error!(error = %err, "write-behind: the unique (tenant, id) index is missing and cannot be built; re-applied inserts after a crash may duplicate documents");
    }
}

async fn try_primary_index(storage: &Storage, e: &Document) -> Result<()> {
    static DONE: std::sync::LazyLock<Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    let (db, coll) = namespace(e)?;
    let tenant_field = e.get_str("tenant_field").unwrap_or("tenant_id");
    let id_field = e.get_str("id_field").unwrap_or("id");
    let key = format!("{:?}/{db}.{coll}", storage.config().mongodb.uri);
    if !DONE.lock().expect("index memo").insert(key) {
        return Ok(());
    }
    let model = mongodb::IndexModel::builder()
        .keys(doc! { tenant_field: 1, id_field: 1 })
        .options(
            mongodb::options::IndexOptions::builder()
                .unique(true)
                .name(format!("{tenant_field}_1_{id_field}_1"))
                .build(),
        )
        .build();
    storage
        .database(&db)
        .collection::<Document>(&coll)
        .create_index(model)
        .await
        .map_err(|err| Error::mongo(format!("write-behind createIndexes {db}.{coll}"), err))?;
    Ok(())
}

async fn apply_inserts(storage: &Storage, run: &[(String, Option<Document>)]) -> Result<()> {
    // Group by namespace, keeping order within each.
    let mut groups: Vec<((String, String), Vec<Document>)> = Vec::new();
    for (_, e) in run {
        let e = e.as_ref().expect("runs hold decoded inserts");
        ensure_primary_index(storage, e).await;
        let ns = namespace(e)?;
        let doc = e.get_document("doc").cloned().unwrap_or_default();
        match groups.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, docs)) => docs.push(doc),
            None => groups.push((ns, vec![doc])),
        }
    }
    for ((db, coll), docs) in groups {
        let c = eventual_collection(storage, &db, &coll);
        let op = format!("write-behind insertMany {db}.{coll}");
        if let Err(e) = c.insert_many(docs).ordered(false).await {
            // Re-applied after a crash: documents already there are applied, not failures.
            let only_duplicates = match e.kind.as_ref() {
                mongodb::error::ErrorKind::InsertMany(m) => {
                    m.write_concern_error.is_none()
                        && m.write_errors
                            .iter()
                            .flatten()
                            .all(|w| w.code == crate::error::DUPLICATE_KEY)
                }
                _ => false,
            };
            if !only_duplicates {
                return Err(Error::mongo(op, e));
            }
        }
    }
    Ok(())
}

async fn apply_one(storage: &Storage, e: &Document) -> Result<()> {
    let (db, coll) = namespace(e)?;
    let c = eventual_collection(storage, &db, &coll);
    let tenant_field = e.get_str("tenant_field").unwrap_or("tenant_id");
    let id_field = e.get_str("id_field").unwrap_or("id");
    let mut filter = doc! { tenant_field: e.get_str("tenant").unwrap_or_default() };
    if let Some(id) = e.get("id") {
        filter.insert(id_field, id.clone());
    }
    let soft = e.get_bool("soft_delete").unwrap_or(false);
    let op_name = e.get_str("op").unwrap_or_default();
    let op = format!("write-behind {op_name} {db}.{coll}");
    let r = match op_name {
        "insert" => {
            ensure_primary_index(storage, e).await;
            let doc = e.get_document("doc").cloned().unwrap_or_default();
            match c.insert_one(doc).await {
                Err(err) if duplicate_key_message(&err).is_some() => Ok(()),
                other => other.map(drop),
            }
        }
        "update" => {
            if soft {
                filter.insert(DELETED_AT_FIELD, Bson::Null);
            }
            let set = e.get_document("set").cloned().unwrap_or_default();
            c.update_one(filter, doc! { "$set": set }).await.map(drop)
        }
        "upsert" => {
            let doc = e.get_document("doc").cloned().unwrap_or_default();
            c.replace_one(filter, doc).upsert(true).await.map(drop)
        }
        "delete" if soft => {
            filter.insert(DELETED_AT_FIELD, Bson::Null);
            c.update_one(
                filter,
                doc! { "$set": { DELETED_AT_FIELD: mongodb::bson::DateTime::now() } },
            )
            .await
            .map(drop)
        }
        "delete" => c.delete_one(filter).await.map(drop),
        other => {
            return Err(Error::Codec {
                entity: "write-behind entry",
                direction: "decode",
                message: format!("unknown operation {other:?}"),
            })
        }
    };
    r.map_err(|err| Error::mongo(op, err))
}
