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

/// Most entries one turn appends for the waiting callers (one `insert_many`).
const GROUP_LIMIT: usize = 256;

/// Turns one call waits for before it gives up (each turn stores at least part of its
/// entries unless the servers fail).
const GROUP_RETRIES: u32 = 8;

/// One tenant's state on one handle: the head as last seen, whose lock is the tenant's turn,
/// and the callers waiting for it.
#[derive(Default)]
pub(crate) struct Slot {
    head: tokio::sync::Mutex<Option<Head>>,
    waiting: std::sync::Mutex<Vec<Waiter>>,
    next_waiter: std::sync::atomic::AtomicU64,
}

/// A caller waiting for its tenant's turn: its entries, and where the turn that appends them
/// sends what was stored (a prefix of them, if that turn failed part-way).
struct Waiter {
    id: u64,
    pending: Vec<Pending>,
    reply: tokio::sync::oneshot::Sender<Vec<AuditEntry>>,
}

/// The waiting callers one turn serves: `own` first, then the others in arrival order while
/// the group stays within [`GROUP_LIMIT`] entries; the rest keep waiting.
fn take_group(slot: &Slot, own: u64) -> Vec<Waiter> {
    let mut waiting = slot.waiting.lock().unwrap_or_else(|p| p.into_inner());
    let mut group = Vec::new();
    if let Some(i) = waiting.iter().position(|w| w.id == own) {
        group.push(waiting.remove(i));
    }
    let mut size: usize = group.iter().map(|w| w.pending.len()).sum();
    let mut rest = Vec::new();
    for w in waiting.drain(..) {
        if size + w.pending.len() <= GROUP_LIMIT {
            size += w.pending.len();
            group.push(w);
        } else {
            rest.push(w);
        }
    }
    *waiting = rest;
    group
}

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
    ///
    /// Group commit: appends of one tenant on one handle wait for the tenant's turn in a list;
    /// whoever gets the turn appends every waiting entry (up to [`GROUP_LIMIT`]) in one
    /// ordered `insert_many` and hands each caller its entries. So concurrent appenders on one
    /// handle cost one round trip per group, not one each, and race other handles less.
    pub(crate) async fn append_pending(
        &self,
        tenant: &TenantId,
        mut pending: Vec<Pending>,
    ) -> Result<Vec<AuditEntry>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_index().await?;
        let inner = &self.inner;
        inner.backlog.fetch_add(1, Ordering::Relaxed);
        let _counted = InBacklog(&inner.backlog);
        let slot = self.head_slot(tenant.as_str());
        let mut done: Vec<AuditEntry> = Vec::with_capacity(pending.len());
        for _ in 0..GROUP_RETRIES {
            let id = slot.next_waiter.fetch_add(1, Ordering::Relaxed);
            let (reply, mut answer) = tokio::sync::oneshot::channel();
            slot.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Waiter {
                    id,
                    pending: pending.clone(),
                    reply,
                });
            let mut head = slot.head.lock().await;
            // Served by the group of an earlier turn?
            let served = answer.try_recv().ok();
            let stored = match served {
                Some(stored) => stored,
                None => {
                    // This turn is ours: take the waiting list, ours first.
                    let group = take_group(&slot, id);
                    let all: Vec<Pending> = group
                        .iter()
                        .flat_map(|w| w.pending.iter().cloned())
                        .collect();
                    let (stored, error) = self.append_locked(tenant, &mut head, &all).await;
                    let mut stored = stored.into_iter();
                    let mut mine = Vec::new();
                    for w in group {
                        let part: Vec<AuditEntry> = stored.by_ref().take(w.pending.len()).collect();
                        if w.id == id {
                            mine = part;
                        } else {
                            let _ = w.reply.send(part);
                        }
                    }
                    if let Some(e) = error {
                        if mine.len() < pending.len() {
                            return Err(e);
                        }
                    }
                    mine
                }
            };
            drop(head);
            let n = stored.len();
            done.extend(stored);
            if n == pending.len() {
                return Ok(done);
            }
            // A group that failed part-way stored a prefix of ours: append the rest ourselves.
            pending.drain(..n);
        }
        Err(Error::Contention {
            what: format!("the audit chain of tenant {tenant}"),
            attempts: GROUP_RETRIES,
        })
    }

    /// Appends `pending` after `head` (the tenant's turn is held), moving past entries other
    /// handles store meanwhile. Returns what was stored, in order, and the error that stopped
    /// it, if any.
    async fn append_locked(
        &self,
        tenant: &TenantId,
        head: &mut Option<Head>,
        pending: &[Pending],
    ) -> (Vec<AuditEntry>, Option<Error>) {
        let inner = &self.inner;
        let mut stored: Vec<AuditEntry> = Vec::with_capacity(pending.len());
        let mut lost = 0u32;
        while stored.len() < pending.len() {
            let start = match head.clone() {
                Some(h) => h,
                None => match self.read_head(tenant.as_str()).await {
                    Ok(h) => h,
                    Err(e) => return (stored, Some(e)),
                },
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
                    let at = if kept > 0 {
                        Head::of(&batch[kept - 1])
                    } else {
                        start
                    };
                    stored.extend(batch.into_iter().take(kept));
                    match self.advance(tenant.as_str(), at).await {
                        Ok(at) => *head = Some(at),
                        Err(e) => {
                            *head = None;
                            return (stored, Some(e));
                        }
                    }
                    lost += 1;
                    if lost >= inner.options.max_attempts {
                        *head = None;
                        let e = Error::Contention {
                            what: format!("the audit chain of tenant {tenant}"),
                            attempts: lost,
                        };
                        return (stored, Some(e));
                    }
                    tokio::time::sleep(jitter(lost)).await;
                }
                Err(e) => {
                    // Unknown outcome: read the head again next time.
                    *head = None;
                    return (stored, Some(e));
                }
            }
        }
        (stored, None)
    }

    /// The per-tenant slot of this handle.
    fn head_slot(&self, tenant: &str) -> Arc<Slot> {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(heads.entry(tenant.to_owned()).or_default())
    }

    /// The head as the server has it (found from the genesis by [`advance`](Self::advance)).
    pub(crate) async fn read_head(&self, tenant: &str) -> Result<Head> {
        self.advance(tenant, Head::genesis()).await
    }

    /// The chain's head at or after `at` (a stored entry, or the genesis), found with point
    /// reads by `_id` only: probe `at + 1, + 2, + 4, ...` until a position is free, then
    /// bisect. About 2 log2(n) reads for n entries past `at`, whatever the collection's size:
    /// FerretDB answers an exact `_id` filter from its key but scans for anything else, so a
    /// sorted query for the highest sequence would cost a scan of the collection. Positions are
    /// contiguous (entries are never removed), so the first free position ends the chain.
    pub(crate) async fn advance(&self, tenant: &str, mut at: Head) -> Result<Head> {
        let mut step = 1u64;
        let free = loop {
            match self.entry_at(tenant, at.sequence + step).await? {
                Some(e) => {
                    at = Head::of(&e);
                    step = step.saturating_mul(2);
                }
                None => break at.sequence + step,
            }
        };
        let mut free = free;
        while free - at.sequence > 1 {
            let mid = at.sequence + (free - at.sequence) / 2;
            match self.entry_at(tenant, mid).await? {
                Some(e) => at = Head::of(&e),
                None => free = mid,
            }
        }
        Ok(at)
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
