//! The flusher: one task per stream that applies queued writes, in order, through the
//! pipeline the entity registered.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use mongodb::bson::Document;

use super::entry::{self, Entry, Op};
use super::{redis_err, Shared};
use crate::connection::{lease, RedisConnection};
use crate::document;
use crate::error::{Error, Result};
use crate::tenant::TenantId;

/// Applies the stream `key` until the queue handle is dropped (which aborts the task).
pub(crate) async fn run(shared: Arc<Shared>, key: String) {
    let mut sampled: Option<std::time::Instant> = None;
    loop {
        if sampled.is_none_or(|t| t.elapsed() >= BACKLOG_SAMPLE_INTERVAL) {
            sampled = Some(std::time::Instant::now());
            sample_backlog(&shared, &key).await;
        }
        let pause = match round(&shared, &key).await {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => shared.settings.flush_interval,
            Err(e) => {
                tracing::warn!(stream = %key, error = %e, "write-behind flush failed; retrying");
                shared.settings.retry_backoff
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// How often the flusher samples its queue's length (`caas_write_behind_backlog`).
const BACKLOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Sets `caas_write_behind_backlog` of the entities queued in stream `key` to its length.
async fn sample_backlog(shared: &Shared, key: &str) {
    let entities = shared.entities_of(key);
    if entities.is_empty() {
        return;
    }
    let Ok(mut conn) = shared.conn() else { return };
    let mut xlen = redis::cmd("XLEN");
    xlen.arg(key);
    let bound = shared.conn.config().redis.response_timeout;
    let len = tokio::time::timeout(bound, xlen.query_async::<u64>(&mut conn)).await;
    if let Ok(Ok(len)) = len {
        for entity in entities {
            crate::telemetry::metrics::write_behind_backlog(entity, len);
        }
    }
}

/// One stream entry as read.
struct Read {
    id: String,
    raw: Option<Vec<u8>>,
    entry: Result<Entry>,
}

/// One round: take the lease, read a batch from the head of the stream, apply it in order,
/// delete what was applied. Returns how many entries were applied (or set aside).
///
/// Rounds of one stream run one at a time in this process (a lock), and across processes
/// under the stream's lease, which a heartbeat keeps while the round runs. Every apply and
/// the final `XDEL` check that the lease is still this round's: a flusher that lost it (it
/// stalled past the lease, and another took over) stops before applying anything more.
pub(crate) async fn round(shared: &Shared, key: &str) -> Result<usize> {
    let Some((database, collection)) = namespace_of(&shared.prefix, key) else {
        return Ok(0);
    };
    let lock = shared.round_lock(key);
    let _one_at_a_time = lock.lock().await;
    let mut conn = shared.conn()?;
    let ttl = shared.settings.lease_ttl;
    if !hold_lease(&mut conn, key, &shared.token, ttl).await? {
        return Ok(0);
    }
    let lease = Heartbeat::start(conn.clone(), key, &shared.token, ttl);
    let batch: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(shared.settings.batch_size)
        .query_async(&mut conn)
        .await
        .map_err(redis_err("write-behind read (XRANGE)"))?;
    let entries: Vec<Read> = batch
        .ids
        .iter()
        .map(|sid| {
            let raw: Option<Vec<u8>> = sid
                .map
                .get("e")
                .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok());
            let entry = entry::decode(raw.as_deref(), database, collection);
            Read {
                id: sid.id.clone(),
                raw,
                entry,
            }
        })
        .collect();

    let mut done: Vec<String> = Vec::new();
    let mut outcome: Result<()> = Ok(());
    let mut i = 0;
    while i < entries.len() {
        if lease.lost() {
            break;
        }
        let read = &entries[i];
        let entry = match &read.entry {
            Ok(e) => e,
            Err(e) => {
                // Not an entry this framework wrote: set it aside, never apply it.
                dead_letter(&mut conn, key, read, e, shared.settings.max_dead_letters).await?;
                done.push(read.id.clone());
                i += 1;
                continue;
            }
        };
        let Some(applier) = shared.applier(key, &entry.entity) else {
            tracing::debug!(stream = key, entity = %entry.entity, "write-behind: no repository of this entity registered here; leaving its writes queued");
            break;
        };
        if let Op::Insert(_) = entry.op {
            // The run of inserts of this entity from here goes as batches, one per tenant.
            let end = entries[i..]
                .iter()
                .position(|r| !is_insert_of(r, &entry.entity))
                .map_or(entries.len(), |p| i + p);
            let mut run = &entries[i..end];
            let mut results = apply_inserts(applier.as_ref(), run).await;
            if run.len() > 1 && matches!(&results, Err(e) if !e.is_transient()) {
                // Refused as a whole for good: one entry at a time, to find the one it refuses.
                run = &entries[i..=i];
                results = apply_inserts(applier.as_ref(), run).await;
            }
            let per_entry = match results {
                Ok(r) => r,
                Err(e) if run.len() == 1 && !e.is_transient() => vec![Err(e)],
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            let mut held = false;
            for (read, r) in run.iter().zip(per_entry) {
                match r {
                    Ok(()) => done.push(read.id.clone()),
                    Err(e) if settled_for_good(&mut conn, key, read, &e, shared).await? => {
                        done.push(read.id.clone());
                    }
                    Err(_) => held = true,
                }
            }
            if held {
                // Later entries may depend on a held insert: wait for it.
                break;
            }
            i += run.len();
            continue;
        }
        let Some(position) = document::queue_position(&read.id) else {
            // Redis made every id of this stream: never without a position.
            break;
        };
        match applier
            .apply(&entry.tenant, entry.op.clone(), &position)
            .await
        {
            Ok(()) => done.push(read.id.clone()),
            Err(e) if settled_for_good(&mut conn, key, read, &e, shared).await? => {
                done.push(read.id.clone());
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        i += 1;
    }
    if !done.is_empty() {
        shared
            .conn
            .fault(crate::connection::FaultPoint::QueueAfterApply)?;
        // Deleted only while the lease is still this round's.
        let mut ack = ACK.key(key);
        ack.key(owner_key(key)).arg(&shared.token);
        for id in &done {
            ack.arg(id);
        }
        let acked: i64 = ack
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("write-behind ack (XDEL)"))?;
        if acked < 0 {
            tracing::warn!(stream = key, "write-behind: lost the stream's lease during a round; the next holder applies what this round did not acknowledge");
        }
        let mut attempts = shared.attempts.lock().expect("attempts");
        if let Some(stream) = attempts.get_mut(key) {
            for id in &done {
                stream.remove(id);
            }
        }
    }
    // Attempts are counted for entries still at the head of the queue only: entries another
    // flusher applied or set aside are forgotten, so the map stays as small as a batch.
    {
        let in_batch: std::collections::HashSet<&str> =
            entries.iter().map(|r| r.id.as_str()).collect();
        let mut attempts = shared.attempts.lock().expect("attempts");
        if let Some(stream) = attempts.get_mut(key) {
            stream.retain(|id, _| in_batch.contains(id.as_str()));
            if stream.is_empty() {
                attempts.remove(key);
            }
        }
    }
    match outcome {
        Err(e) if done.is_empty() => Err(e),
        _ => Ok(done.len()),
    }
}

/// `(database, collection)` of a stream key `{prefix}caas:wb:<database>.<collection>`.
fn namespace_of<'k>(prefix: &str, key: &'k str) -> Option<(&'k str, &'k str)> {
    key.strip_prefix(prefix)?
        .strip_prefix("caas:wb:")?
        .split_once('.')
}

fn is_insert_of(read: &Read, entity: &str) -> bool {
    matches!(&read.entry, Ok(e) if e.entity == entity && matches!(e.op, Op::Insert(_)))
}

/// Inserts a run, one batch per tenant (order across tenants does not matter for inserts of
/// distinct documents); one result per entry of the run.
async fn apply_inserts(applier: &dyn super::Apply, run: &[Read]) -> Result<Vec<Result<()>>> {
    let mut by_tenant: Vec<(TenantId, Vec<usize>, Vec<Document>)> = Vec::new();
    for (i, read) in run.iter().enumerate() {
        let Ok(Entry {
            tenant,
            op: Op::Insert(doc),
            ..
        }) = &read.entry
        else {
            continue;
        };
        let mut doc = doc.clone();
        if let Some(position) = document::queue_position(&read.id) {
            doc.insert(document::QUEUE_POSITION_FIELD, position);
        }
        match by_tenant.iter_mut().find(|(t, _, _)| t == tenant) {
            Some((_, positions, docs)) => {
                positions.push(i);
                docs.push(doc);
            }
            None => by_tenant.push((tenant.clone(), vec![i], vec![doc])),
        }
    }
    let mut results: Vec<Option<Result<()>>> = run.iter().map(|_| None).collect();
    for (tenant, positions, docs) in by_tenant {
        let per_doc = applier.insert(&tenant, docs).await?;
        for (p, r) in positions.into_iter().zip(per_doc) {
            results[p] = Some(r);
        }
    }
    Ok(results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
}

/// Whether a failed entry is done with: a permanent error seen `max_attempts` times moves it to
/// the dead letters. Transient errors never do.
async fn settled_for_good(
    conn: &mut RedisConnection,
    key: &str,
    read: &Read,
    error: &Error,
    shared: &Shared,
) -> Result<bool> {
    if error.is_transient() || !give_up(shared, key, &read.id) {
        return Ok(false);
    }
    dead_letter(conn, key, read, error, shared.settings.max_dead_letters).await?;
    Ok(true)
}

fn give_up(shared: &Shared, key: &str, id: &str) -> bool {
    let max_attempts = shared.settings.max_attempts;
    let mut attempts = shared.attempts.lock().expect("attempts");
    let n = attempts
        .entry(key.to_owned())
        .or_default()
        .entry(id.to_owned())
        .or_insert(0);
    *n += 1;
    *n >= max_attempts
}

async fn dead_letter(
    conn: &mut RedisConnection,
    key: &str,
    read: &Read,
    error: &Error,
    max_dead_letters: u64,
) -> Result<()> {
    tracing::error!(stream = key, entry = %read.id, error = %error, "write-behind entry moved to the dead-letter stream");
    redis::cmd("XADD")
        .arg(format!("{key}:dead"))
        .arg("MAXLEN")
        .arg("=")
        .arg(max_dead_letters)
        .arg("*")
        .arg("e")
        .arg(read.raw.clone().unwrap_or_default())
        .arg("source_id")
        .arg(&read.id)
        .arg("error")
        .arg(error.to_string())
        .query_async::<String>(conn)
        .await
        .map_err(redis_err("write-behind dead letter (XADD)"))?;
    Ok(())
}

/// Deletes applied entries if the caller still holds the stream's lease; -1 if it does not.
///
/// KEYS: the stream, its lease. ARGV: the holder's token, then the entry ids.
pub(crate) static ACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
return redis.call('XDEL', KEYS[1], unpack(ids))
",
    )
});

/// Keeps a round's lease alive while the round runs (renewing it every third of its TTL),
/// and says when it was lost.
struct Heartbeat {
    lost: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn start(mut conn: RedisConnection, key: &str, token: &str, ttl: Duration) -> Self {
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, key, token) = (lost.clone(), key.to_owned(), token.to_owned());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match hold_lease(&mut conn, &key, &token, ttl).await {
                    Ok(true) => {}
                    // Lost, or Redis cannot say: stop applying either way.
                    _ => {
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        Heartbeat { lost, task }
    }

    fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The key of a stream's lease. The acknowledging script reads it with the stream, so on a
/// Redis Cluster both must hash to one slot: the lease key carries the stream key as its hash
/// tag, or the stream key's own tag when it has one. (A stream key holding braces that make
/// no tag, from a database or collection name with `{` or `}`, cannot be matched: such a
/// queue works on a single Redis, not on a cluster.)
fn owner_key(stream: &str) -> String {
    let tag = stream
        .find('{')
        .and_then(|open| stream[open + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if tag || stream.contains(['{', '}']) {
        format!("{stream}:owner")
    } else {
        format!("{{{stream}}}:owner")
    }
}

/// Gives up this handle's lease of stream `key`, once no round of this handle runs on it, so
/// another instance takes the stream at its next tick instead of when the lease expires.
pub(crate) async fn release(shared: &Shared, key: &str) -> Result<()> {
    let lock = shared.round_lock(key);
    let _one_at_a_time = lock.lock().await;
    let mut conn = shared.conn()?;
    lease::release(&mut conn, &owner_key(key), &shared.token)
        .await
        .map_err(redis_err("write-behind lease release"))
}

/// Takes or renews the stream's lease: one flusher per stream keeps writes in order.
async fn hold_lease(
    conn: &mut RedisConnection,
    key: &str,
    token: &str,
    ttl: Duration,
) -> Result<bool> {
    lease::hold(conn, &owner_key(key), token, ttl)
        .await
        .map_err(redis_err("write-behind lease"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_hashes_with_its_stream() {
        assert_eq!(owner_key("caas:wb:db.c"), "{caas:wb:db.c}:owner");
        assert_eq!(owner_key("{svc}caas:wb:db.c"), "{svc}caas:wb:db.c:owner");
    }

    #[test]
    fn stream_keys_name_their_namespace() {
        assert_eq!(
            namespace_of("svc:", "svc:caas:wb:caas_audit.entries.v2"),
            Some(("caas_audit", "entries.v2"))
        );
        assert_eq!(namespace_of("svc:", "other:caas:wb:a.b"), None);
    }
}
