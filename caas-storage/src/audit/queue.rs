//! The durable fast path: [`AuditLog::append_queued`] acknowledges an entry once it is in the
//! tenant's Redis stream, and [`AuditLog::drain_queued`] appends the stream to the chain in
//! order, under a lease, so sequence and hash are still assigned one entry after another.
//!
//! Exactly once across crashes: before applying a batch the drainer records, in the tenant's
//! mark document (`audit_queue_marks`), the last stream id of the batch and the chain's head
//! sequence at that moment. If it dies after appending and before recording the batch as done,
//! the next drainer finds the mark in flight, reads the entries appended after that head, and
//! skips the queued entries whose audit id is already there. The stream entries are deleted
//! only after the mark says done.

use std::collections::HashSet;
use std::time::Duration;

use mongodb::bson::doc;

use super::entry::{NewAuditEntry, Pending};
use super::AuditLog;
use crate::connection::{lease, FaultPoint};
use crate::error::{Component, Error, Result};
use crate::tenant::TenantId;

/// Collection of the per-tenant marks of the queue's drainers.
pub const QUEUE_MARK_COLLECTION: &str = "audit_queue_marks";

/// Most queued entries one drain round appends (one `insert_many`).
const BATCH: usize = 500;

/// How long a drainer's lease on a tenant's stream lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(30);

fn redis_err(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |source| Error::Redis { operation, source }
}

impl AuditLog {
    /// `{prefix}caas:audit:{<database>.<collection>:<tenant>}`: one stream per tenant; its
    /// lease shares the hash tag (one Redis Cluster slot).
    fn stream_key(&self, tenant: &str) -> String {
        let o = &self.inner.options;
        format!(
            "{}caas:audit:{{{}.{}:{tenant}}}",
            self.inner.conn.config().redis.key_prefix,
            o.database,
            o.collection
        )
    }

    /// The set of tenants that ever queued entries (what `drain_all_queued` visits).
    fn tenants_key(&self) -> String {
        let o = &self.inner.options;
        format!(
            "{}caas:audit:{}.{}:tenants",
            self.inner.conn.config().redis.key_prefix,
            o.database,
            o.collection
        )
    }

    fn redis(&self) -> Result<crate::RedisConnection> {
        let conn = &self.inner.conn;
        conn.redis(conn.config().redis.databases.write_behind)
    }

    /// Queues `entry` for `tenant`'s chain and returns its audit id once Redis acknowledged it
    /// (durable as Redis is configured: see `docs/audit.md`). A drain appends it, in queue
    /// order, with its id and time kept.
    pub async fn append_queued(&self, tenant: &TenantId, entry: NewAuditEntry) -> Result<String> {
        let pending = Pending::new(entry);
        let json = serde_json::to_string(&pending).map_err(|e| Error::Codec {
            entity: "AuditEntry",
            direction: "encode",
            message: e.to_string(),
        })?;
        let mut conn = self.redis()?;
        let bound = self.inner.options.op_timeout;
        let call = async {
            redis::cmd("XADD")
                .arg(self.stream_key(tenant.as_str()))
                .arg("*")
                .arg("e")
                .arg(&json)
                .query_async::<String>(&mut conn)
                .await?;
            redis::cmd("SADD")
                .arg(self.tenants_key())
                .arg(tenant.as_str())
                .query_async::<i64>(&mut conn)
                .await
        };
        tokio::time::timeout(bound, call)
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Redis,
                operation: "audit enqueue (XADD)",
                after: bound,
            })?
            .map_err(redis_err("audit enqueue (XADD)"))?;
        Ok(pending.audit_id)
    }

    /// Appends everything queued for `tenant` to its chain, in queue order; returns how many
    /// entries were appended. Returns 0 at once if another drainer holds the tenant's lease.
    pub async fn drain_queued(&self, tenant: &TenantId) -> Result<usize> {
        let key = self.stream_key(tenant.as_str());
        let lease = format!("{key}:lease");
        let token = uuid::Uuid::now_v7().simple().to_string();
        let mut conn = self.redis()?;
        let held = lease::hold(&mut conn, &lease, &token, LEASE_TTL)
            .await
            .map_err(redis_err("audit queue lease"))?;
        if !held {
            return Ok(0);
        }
        let result = self
            .drain_held(tenant, &key, &lease, &token, &mut conn)
            .await;
        let _ = lease::release(&mut conn, &lease, &token).await;
        result
    }

    /// Entries queued and not drained yet, over all tenants.
    pub(crate) async fn queued_count(&self) -> Result<u64> {
        let mut conn = self.redis()?;
        let tenants: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.tenants_key())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("audit queue tenants (SMEMBERS)"))?;
        let mut total = 0;
        for t in tenants {
            let n: u64 = redis::cmd("XLEN")
                .arg(self.stream_key(&t))
                .query_async(&mut conn)
                .await
                .map_err(redis_err("audit queue length (XLEN)"))?;
            total += n;
        }
        Ok(total)
    }

    /// Drains every tenant that ever queued entries; returns how many entries were appended.
    pub async fn drain_all_queued(&self) -> Result<usize> {
        let mut conn = self.redis()?;
        let tenants: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.tenants_key())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("audit queue tenants (SMEMBERS)"))?;
        let mut total = 0;
        for t in tenants {
            if let Ok(tenant) = TenantId::new(&t) {
                total += self.drain_queued(&tenant).await?;
            }
        }
        Ok(total)
    }

    /// Runs [`drain_all_queued`](Self::drain_all_queued) every `every` in the background until
    /// the returned task is dropped. Failures are logged and retried at the next tick.
    pub fn spawn_queue_drain(&self, every: Duration) -> super::AuditTask {
        let log = self.clone();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = log.drain_all_queued().await {
                    tracing::warn!(error = %e, "audit queue drain failed; retrying at the next tick");
                }
            }
        });
        super::AuditTask { handle }
    }

    async fn drain_held(
        &self,
        tenant: &TenantId,
        key: &str,
        lease: &str,
        token: &str,
        conn: &mut crate::RedisConnection,
    ) -> Result<usize> {
        let marks = &self.inner.marks;
        let mark_id = format!("{}.{}", self.inner.options.collection, tenant.as_str());
        let mut applied_total = 0;
        loop {
            let mark = self
                .bounded(
                    "read the audit queue's mark",
                    QUEUE_MARK_COLLECTION,
                    marks.find_one(doc! { "_id": &mark_id }),
                )
                .await?;
            let done_upto = mark
                .as_ref()
                .and_then(|m| m.get_str("done").ok())
                .unwrap_or("0-0")
                .to_owned();
            let in_flight = mark.as_ref().and_then(|m| {
                let upto = m.get_str("upto").ok()?.to_owned();
                let seq = u64::try_from(m.get_i64("head_before").ok()?).ok()?;
                Some((upto, seq))
            });
            let (items, upto) = match &in_flight {
                // A drainer died inside this batch: take exactly its range again.
                Some((upto, _)) => (
                    self.read_range(conn, key, &done_upto, upto).await?,
                    upto.clone(),
                ),
                None => {
                    let items = self.read_after(conn, key, &done_upto).await?;
                    let Some(last) = items.last().map(|(id, _)| id.clone()) else {
                        return Ok(applied_total);
                    };
                    (items, last)
                }
            };
            let skip: HashSet<String> = match &in_flight {
                Some((_, head_before)) => self
                    .entries(tenant, head_before + 1..)
                    .await?
                    .into_iter()
                    .map(|e| e.audit_id)
                    .collect(),
                None => {
                    let head = self.read_head(tenant.as_str()).await?;
                    self.bounded(
                        "record the audit queue's batch",
                        QUEUE_MARK_COLLECTION,
                        marks
                            .replace_one(
                                doc! { "_id": &mark_id },
                                doc! {
                                    "_id": &mark_id,
                                    "done": &done_upto,
                                    "upto": &upto,
                                    "head_before": i64::try_from(head.sequence).unwrap_or(i64::MAX),
                                },
                            )
                            .upsert(true),
                    )
                    .await?;
                    HashSet::new()
                }
            };
            let todo: Vec<Pending> = items
                .iter()
                .map(|(_, p)| p)
                .filter(|p| !skip.contains(&p.audit_id))
                .cloned()
                .collect();
            let n = todo.len();
            self.append_pending(tenant, todo).await?;
            self.inner.conn.fault(FaultPoint::AuditQueueAfterApply)?;
            self.bounded(
                "record the audit queue's batch as done",
                QUEUE_MARK_COLLECTION,
                marks
                    .replace_one(
                        doc! { "_id": &mark_id },
                        doc! { "_id": &mark_id, "done": &upto },
                    )
                    .upsert(true),
            )
            .await?;
            let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
            if !ids.is_empty() {
                redis::cmd("XDEL")
                    .arg(key)
                    .arg(&ids)
                    .query_async::<i64>(conn)
                    .await
                    .map_err(redis_err("audit queue delete (XDEL)"))?;
            }
            applied_total += n;
            let renewed = lease::hold(conn, lease, token, LEASE_TTL)
                .await
                .map_err(redis_err("audit queue lease"))?;
            if !renewed {
                return Ok(applied_total);
            }
        }
    }

    /// Up to [`BATCH`] entries after stream id `after`.
    async fn read_after(
        &self,
        conn: &mut crate::RedisConnection,
        key: &str,
        after: &str,
    ) -> Result<Vec<(String, Pending)>> {
        let raw: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await
            .map_err(redis_err("audit queue read (XRANGE)"))?;
        decode(raw)
    }

    /// The entries after `after` up to `upto`, inclusive.
    async fn read_range(
        &self,
        conn: &mut crate::RedisConnection,
        key: &str,
        after: &str,
        upto: &str,
    ) -> Result<Vec<(String, Pending)>> {
        let raw: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(format!("({after}"))
            .arg(upto)
            .query_async(conn)
            .await
            .map_err(redis_err("audit queue read (XRANGE)"))?;
        decode(raw)
    }
}

fn decode(raw: redis::streams::StreamRangeReply) -> Result<Vec<(String, Pending)>> {
    raw.ids
        .into_iter()
        .map(|item| {
            let json: String = item.get("e").unwrap_or_default();
            let pending: Pending = serde_json::from_str(&json).map_err(|e| Error::Codec {
                entity: "AuditEntry",
                direction: "decode",
                message: format!("queued entry {}: {e}", item.id),
            })?;
            Ok((item.id, pending))
        })
        .collect()
}
