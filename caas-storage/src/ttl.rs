//! Expiry of documents where the server has no TTL indexes.
//!
//! An entity declares a TTL index with `#[index(keys(expires_at), ttl = "30d")]`. Where the
//! server has TTL indexes (MongoDB), `sync_indexes` and the migrator's index plan create the
//! real index and the server deletes expired documents; nothing here runs. Where it has none
//! (FerretDB: `capabilities().ttl_indexes` is false), a background task of every
//! [`Storage`](crate::Storage) does the server's job: every `ttl.interval`, under a lease in
//! Redis (one instance at a time does the work), it deletes, for each entity a repository was
//! made for that declares a TTL index, up to `ttl.batch_size` documents whose date is older
//! than the TTL by the server's clock, and drops their cache entries.
//!
//! Like MongoDB's TTL monitor, the sweeper deletes documents outright, soft-delete entity or
//! not, without moving versions or recording outbox events: expiry is not a business change.
//! Documents whose field is not a date never expire. A document whose date moves forward
//! between the sweeper's read and its delete is kept (the delete repeats the condition).
//! What it deleted is in [`Storage::health`](crate::Storage::health) (component `ttl`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use serde::Serialize;

use crate::cache::CacheLayer;
use crate::config::TtlConfig;
use crate::connection::{lease, Connections};
use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::tenant::TenantId;

/// What one sweep deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TtlReport {
    /// Documents deleted, in total.
    pub deleted: u64,
    /// Documents deleted per entity (`database.collection:Entity`).
    pub by_entity: BTreeMap<String, u64>,
    /// Whether the server has TTL indexes (then the sweep does nothing: the indexes expire
    /// documents).
    pub server_has_ttl_indexes: bool,
}

/// What the sweeper of one `Storage` handle did since it was made, for the health report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TtlStats {
    /// `ttl_index` where the server expires documents itself, `sweeper` where this task does,
    /// `off` where it would but `ttl.sweeper` is false.
    pub mode: &'static str,
    /// Entities with a TTL index that repositories were made for on this handle.
    pub entities: Vec<String>,
    /// Documents this handle's sweeps deleted.
    pub deleted_total: u64,
    /// Sweeps this handle ran (those of other instances, which held the lease, not counted).
    pub runs: u64,
    /// Documents the last sweep of this handle deleted.
    pub last_run_deleted: u64,
    /// When that sweep ran (RFC 3339), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<String>,
}

/// The TTL sweeper of one `Storage` handle.
pub(crate) struct TtlSweeper {
    conn: Connections,
    cache: Arc<CacheLayer>,
    settings: TtlConfig,
    entities: Mutex<BTreeMap<String, &'static EntityMeta>>,
    deleted_total: AtomicU64,
    runs: AtomicU64,
    last_run: Mutex<Option<(DateTime, u64)>>,
}

impl TtlSweeper {
    pub(crate) fn new(conn: Connections, cache: Arc<CacheLayer>) -> Self {
        TtlSweeper {
            settings: conn.config().ttl.clone(),
            conn,
            cache,
            entities: Mutex::default(),
            deleted_total: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            last_run: Mutex::new(None),
        }
    }

    /// Expires the documents of `meta`, if it declares a TTL index.
    pub(crate) fn watch_entity(&self, meta: &'static EntityMeta) {
        if meta.ttl_indexes().next().is_some() {
            self.entities
                .lock()
                .expect("ttl entities")
                .insert(identity(meta), meta);
        }
    }

    fn snapshot(&self) -> Vec<&'static EntityMeta> {
        self.entities
            .lock()
            .expect("ttl entities")
            .values()
            .copied()
            .collect()
    }

    /// One sweep now, whoever holds the lease (for operators and tests). Does nothing where
    /// the server has TTL indexes.
    pub(crate) async fn run(&self) -> Result<TtlReport> {
        let mut report = TtlReport {
            server_has_ttl_indexes: self.conn.capabilities().ttl_indexes,
            ..TtlReport::default()
        };
        if report.server_has_ttl_indexes {
            return Ok(report);
        }
        for meta in self.snapshot() {
            let mut n = 0;
            for (field, ttl) in meta.ttl_indexes() {
                n += self.sweep(meta, field, ttl).await?;
            }
            report.deleted += n;
            report.by_entity.insert(identity(meta), n);
        }
        self.deleted_total
            .fetch_add(report.deleted, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
        *self.last_run.lock().expect("ttl last run") = Some((DateTime::now(), report.deleted));
        Ok(report)
    }

    /// Deletes up to `ttl.batch_size` documents of `meta` whose `field` is older than `ttl`.
    async fn sweep(&self, meta: &'static EntityMeta, field: &str, ttl: Duration) -> Result<u64> {
        let coll = self
            .conn
            .database(meta.database)
            .collection::<Document>(meta.collection);
        let now = self.conn.server_now().timestamp_millis();
        let cutoff =
            DateTime::from_millis(now - i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2));
        let expired = doc! { field: { "$lt": cutoff } };
        let op = |what: &str| format!("ttl sweep: {what} {}.{}", meta.database, meta.collection);
        let bound = self.conn.config().mongodb.socket_timeout;
        let found: Vec<Document> = crate::error::bounded_mongo(
            bound,
            "ttl sweep: find expired documents",
            (meta.database, meta.collection),
            async {
                coll.find(expired.clone())
                    .projection(doc! { "_id": 1, meta.tenant_field: 1, meta.id_field: 1 })
                    .limit(i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX))
                    .await?
                    .try_collect()
                    .await
            },
        )
        .await?;
        if found.is_empty() {
            return Ok(0);
        }
        let keys: Vec<Bson> = found.iter().filter_map(|d| d.get("_id").cloned()).collect();
        let mut filter = expired;
        filter.insert("_id", doc! { "$in": keys });
        let deleted = coll
            .delete_many(filter)
            .await
            .map_err(|e| Error::mongo(op("delete expired documents in"), e))?
            .deleted_count;
        if meta.cache.is_some() {
            for d in &found {
                let tenant = d
                    .get_str(meta.tenant_field)
                    .ok()
                    .and_then(|t| TenantId::new(t).ok());
                if let (Some(tenant), Some(id)) = (tenant, d.get(meta.id_field)) {
                    self.cache.after_write(meta, &tenant, id, None, None).await;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(
                entity = meta.name,
                field,
                deleted,
                "ttl sweep deleted expired documents"
            );
        }
        Ok(deleted)
    }

    /// What this handle's sweeper did so far.
    pub(crate) fn stats(&self) -> TtlStats {
        let last = *self.last_run.lock().expect("ttl last run");
        TtlStats {
            mode: if self.conn.capabilities().ttl_indexes {
                "ttl_index"
            } else if self.settings.sweeper {
                "sweeper"
            } else {
                "off"
            },
            entities: self
                .entities
                .lock()
                .expect("ttl entities")
                .keys()
                .cloned()
                .collect(),
            deleted_total: self.deleted_total.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            last_run_deleted: last.map_or(0, |(_, n)| n),
            last_run_at: last.and_then(|(at, _)| at.try_to_rfc3339_string().ok()),
        }
    }

    /// The background task: a sweep every `ttl.interval` by the instance holding the lease,
    /// where the server has no TTL indexes.
    pub(crate) async fn run_forever(self: Arc<Self>) {
        if self.conn.capabilities().ttl_indexes {
            return;
        }
        let lease_key = format!("{}caas:ttl:lease", self.conn.config().redis.key_prefix);
        let token = uuid::Uuid::now_v7().simple().to_string();
        loop {
            tokio::time::sleep(self.settings.interval).await;
            if self.snapshot().is_empty() || !self.take_lease(&lease_key, &token).await {
                continue;
            }
            if let Err(e) = self.run().await {
                tracing::warn!(error = %e, "ttl sweep failed; retried at the next interval");
            }
        }
    }

    /// One instance per interval (see [`lease::take_for_interval`]).
    async fn take_lease(&self, key: &str, token: &str) -> bool {
        lease::take_for_interval(&self.conn, key, token, self.settings.interval).await
    }
}

fn identity(meta: &EntityMeta) -> String {
    format!("{}.{}:{}", meta.database, meta.collection, meta.name)
}
