//! Appending: each entry takes the next position of its tenant's chain, or, when another
//! handle took it first, reads the winner and moves on.
//!
//! Why this cannot fork: an entry's `_id` is `<tenant>:<sequence>` (and `(tenant, sequence)`
//! is unique besides), so at most one entry exists per position, and an entry is only ever
//! written with the hash of the entry the server holds at the position before it (read from
//! the server or written by this handle, and never changed afterwards). FerretDB's unique
//! inserts are atomic, so this needs no conditional update and no transaction.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::entry::{entry_key, AuditEntry, NewAuditEntry, Pending};
use super::hash::GENESIS_HASH;
use super::AuditLog;
use crate::error::{duplicate_key_message, Error, Result};
use crate::tenant::TenantId;

/// Where a tenant's chain ends: the last sequence (0 for an empty chain) and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub sequence: u64,
    pub hash: String,
}

impl Head {
    fn genesis() -> Self {
        Head {
            sequence: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }

    fn of(entry: &AuditEntry) -> Self {
        Head {
            sequence: entry.sequence,
            hash: entry.hash.clone(),
        }
    }
}

/// How many positions an append walks forward by `_id` after losing a race before it asks the
/// server for the head instead (a cheap point read per step; the head query sorts).
const WALK_STEPS: u32 = 8;

/// Counts an append in the backlog while it lives.
struct InBacklog<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InBacklog<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AuditLog {
    /// Appends one entry to `tenant`'s chain and returns it as stored (with its sequence and
    /// hashes). Linear whatever the number of concurrent appenders, on any number of handles.
    ///
    /// A timeout leaves it unknown whether the entry was stored; appending it again may then
    /// store it twice (under two sequences), never fork the chain.
    pub async fn append(&self, tenant: &TenantId, entry: NewAuditEntry) -> Result<AuditEntry> {
        let mut stored = self.append_many(tenant, vec![entry]).await?;
        stored.pop().ok_or_else(|| Error::Codec {
            entity: "AuditEntry",
            direction: "encode",
            message: "the append stored nothing".into(),
        })
    }

    /// Appends `entries`, in order, at consecutive positions of `tenant`'s chain: one ordered
    /// `insert_many` per batch when no other handle appends to the tenant meanwhile. When one
    /// does, the entries already stored keep their places and the rest move after the winner's.
    pub async fn append_many(
        &self,
        tenant: &TenantId,
        entries: Vec<NewAuditEntry>,
    ) -> Result<Vec<AuditEntry>> {
        self.append_pending(tenant, entries.into_iter().map(Pending::new).collect())
            .await
    }

    /// Appends entries whose ids and times are fixed already (fresh, or from the queue).
    pub(crate) async fn append_pending(
        &self,
        tenant: &TenantId,
        pending: Vec<Pending>,
    ) -> Result<Vec<AuditEntry>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_index().await?;
        let inner = &self.inner;
        inner.backlog.fetch_add(1, Ordering::Relaxed);
        let _counted = InBacklog(&inner.backlog);
        let slot = self.head_slot(tenant.as_str());
        let mut head = slot.lock().await;
        let mut stored: Vec<AuditEntry> = Vec::with_capacity(pending.len());
        let mut lost = 0u32;
        while stored.len() < pending.len() {
            let start = match head.clone() {
                Some(h) => h,
                None => self.read_head(tenant.as_str()).await?,
            };
            let batch = chain(tenant.as_str(), &start, &pending[stored.len()..]);
            let docs: Vec<Document> = batch.iter().map(AuditEntry::to_document).collect();
            let result = self
                .bounded(
                    "append audit entries",
                    &inner.options.collection,
                    inner.entries.insert_many(docs).ordered(true),
                )
                .await;
            match result {
                Ok(_) => {
                    *head = batch.last().map(Head::of);
                    stored.extend(batch);
                }
                Err(Error::Mongo { source, .. }) if duplicate_key_message(&source).is_some() => {
                    // Ordered: everything before the first refused entry is stored.
                    let kept = first_refused(&source).unwrap_or(0);
                    let mut at = if kept > 0 {
                        Head::of(&batch[kept - 1])
                    } else {
                        start
                    };
                    stored.extend(batch.into_iter().take(kept));
                    at = self.walk(tenant.as_str(), at).await?;
                    *head = Some(at);
                    lost += 1;
                    if lost >= inner.options.max_attempts {
                        *head = None;
                        return Err(Error::Contention {
                            what: format!("the audit chain of tenant {tenant}"),
                            attempts: lost,
                        });
                    }
                    tokio::time::sleep(jitter(lost)).await;
                }
                Err(e) => {
                    // Unknown outcome: read the head again next time.
                    *head = None;
                    return Err(e);
                }
            }
        }
        Ok(stored)
    }

    /// The per-tenant head slot of this handle.
    fn head_slot(&self, tenant: &str) -> Arc<tokio::sync::Mutex<Option<Head>>> {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(heads.entry(tenant.to_owned()).or_default())
    }

    /// The head as the server has it: the entry with the highest sequence.
    pub(crate) async fn read_head(&self, tenant: &str) -> Result<Head> {
        let inner = &self.inner;
        let last = self
            .bounded(
                "read the audit chain's head",
                &inner.options.collection,
                inner
                    .entries
                    .find_one(doc! { "tenant": tenant })
                    .sort(doc! { "sequence": -1 }),
            )
            .await?;
        match last {
            Some(d) => Ok(Head::of(&AuditEntry::from_document(&d)?)),
            None => Ok(Head::genesis()),
        }
    }

    /// After losing the position after `at`: follow the entries other handles stored, by
    /// `_id`, up to [`WALK_STEPS`] of them, then ask for the head.
    async fn walk(&self, tenant: &str, mut at: Head) -> Result<Head> {
        for _ in 0..WALK_STEPS {
            match self.entry_at(tenant, at.sequence + 1).await? {
                Some(next) => at = Head::of(&next),
                None => return Ok(at),
            }
        }
        self.read_head(tenant).await
    }

    /// The stored entry at `sequence` of `tenant`'s chain, by `_id`.
    pub(crate) async fn entry_at(&self, tenant: &str, sequence: u64) -> Result<Option<AuditEntry>> {
        let inner = &self.inner;
        self.bounded(
            "read an audit entry",
            &inner.options.collection,
            inner
                .entries
                .find_one(doc! { "_id": entry_key(tenant, sequence) }),
        )
        .await?
        .map(|d| AuditEntry::from_document(&d))
        .transpose()
    }

    /// The unique `(tenant, sequence)` index, once per handle.
    async fn ensure_index(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .index_ready
            .get_or_try_init(|| async {
                let model = IndexModel::builder()
                    .keys(doc! { "tenant": 1, "sequence": 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("tenant_sequence".to_owned())
                            .build(),
                    )
                    .build();
                self.bounded(
                    "create the audit log's index",
                    &inner.options.collection,
                    inner.entries.create_index(model),
                )
                .await
                .map(drop)
            })
            .await
            .map(drop)
    }
}

/// `pending` placed after `start`, each linked to the one before.
fn chain(tenant: &str, start: &Head, pending: &[Pending]) -> Vec<AuditEntry> {
    let mut out: Vec<AuditEntry> = Vec::with_capacity(pending.len());
    for (i, p) in pending.iter().enumerate() {
        let (sequence, previous) = match out.last() {
            Some(prev) => (prev.sequence + 1, prev.hash.as_str()),
            None => (start.sequence + 1, start.hash.as_str()),
        };
        debug_assert_eq!(sequence, start.sequence + 1 + i as u64);
        let entry = p.at(tenant, sequence, previous);
        out.push(entry);
    }
    out
}

/// The position of the first document an ordered `insert_many` refused.
fn first_refused(e: &mongodb::error::Error) -> Option<usize> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(m) => {
            m.write_errors.iter().flatten().map(|w| w.index).min()
        }
        _ => Some(0),
    }
}

/// A random pause after the `lost`-th lost race, growing to at most 20 ms, so that two handles
/// appending to one tenant stop meeting at the same position.
fn jitter(lost: u32) -> Duration {
    let ceiling = u64::from(lost.min(20)) + 1;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    Duration::from_micros((nanos / 7 % ceiling) * 1000)
}
