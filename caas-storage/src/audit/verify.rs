//! Verification: walk a chain in sequence order, recompute every hash, check every link, and
//! name the first entry where the chain breaks.

use std::ops::{Bound, RangeBounds};

use futures::TryStreamExt;
use mongodb::bson::doc;
use serde::Serialize;

use super::checkpoint::Checkpoint;
use super::entry::{entry_key, AuditEntry};
use super::hash::GENESIS_HASH;
use super::AuditLog;
use crate::error::Result;
use crate::tenant::TenantId;

/// How a chain breaks at an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum BreakKind {
    /// The entry's fields no longer hash to its stored hash: a field was changed.
    Altered,
    /// There is no entry at this sequence, though later ones exist (an entry was deleted), or
    /// the chain ends before a published checkpoint (its tail was cut).
    Missing,
    /// The entry's `previous_hash` is not the hash of the entry before it: entries were
    /// reordered, replaced, or the entry was re-hashed after one before it changed.
    LinkMismatch,
    /// The entry is stored under another key than its tenant and sequence give (moved).
    Misplaced,
    /// The stored document is not an audit entry any more.
    Unreadable,
    /// The entry's hash differs from the one a checkpoint published for this sequence: the
    /// chain from here back was rewritten consistently.
    CheckpointMismatch {
        /// The hash the checkpoint published.
        published: String,
    },
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The sequence where the chain breaks.
    pub sequence: u64,
    /// The entry found there, if any.
    pub audit_id: Option<String>,
    /// How it breaks.
    pub kind: BreakKind,
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The tenant.
    pub tenant: String,
    /// Entries checked (up to the first break).
    pub checked: u64,
    /// The last intact entry's sequence and hash (`None` if none was).
    pub last_intact: Option<(u64, String)>,
    /// The first broken link, if the chain breaks in the range.
    pub broken: Option<BrokenLink>,
}

impl Verification {
    /// Whether the range verified with no broken link.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

impl AuditLog {
    /// Verifies `range` (sequences, e.g. `..` for the whole chain) of `tenant`'s chain: every
    /// entry's hash is recomputed, every link checked, positions must be consecutive, and
    /// the entries a stored checkpoint covers must still have the hashes it recorded. Returns
    /// the first broken link, if any. A chain rewritten consistently together with its stored
    /// checkpoints passes this; check it against a checkpoint read from Kafka with
    /// [`verify_against`](Self::verify_against).
    pub async fn verify(
        &self,
        tenant: &TenantId,
        range: impl RangeBounds<u64>,
    ) -> Result<Verification> {
        let (start, end) = bounds(&range);
        let mut report = self.walk_chain(tenant.as_str(), start, end).await?;
        if report.broken.is_none() {
            if let Some(cp) = self.latest_stored_checkpoint(tenant.as_str()).await? {
                if (start..=end).contains(&cp.sequence) {
                    report.broken = self.check_checkpoint(tenant.as_str(), &cp).await?;
                }
            }
        }
        Ok(report)
    }

    /// Verifies `tenant`'s whole chain and that it still holds `checkpoint` (as published to
    /// Kafka): the entry at the checkpoint's sequence exists and has the published hash.
    pub async fn verify_against(
        &self,
        tenant: &TenantId,
        checkpoint: &Checkpoint,
    ) -> Result<Verification> {
        let mut report = self.walk_chain(tenant.as_str(), 1, u64::MAX).await?;
        if report.broken.is_none() {
            report.broken = self.check_checkpoint(tenant.as_str(), checkpoint).await?;
        }
        Ok(report)
    }

    /// The stored entries of `tenant`'s chain in `range`, in sequence order, as they are
    /// (unverified): e.g. to export a chain as JSON lines for `docs/audit_verify.py`.
    pub async fn entries(
        &self,
        tenant: &TenantId,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<AuditEntry>> {
        let (start, end) = bounds(&range);
        let inner = &self.inner;
        let docs: Vec<mongodb::bson::Document> = self
            .bounded(
                "read an audit chain",
                &inner.options.collection,
                inner
                    .entries
                    .find(range_filter(tenant.as_str(), start, end))
                    .sort(doc! { "sequence": 1 }),
            )
            .await?
            .try_collect()
            .await
            .map_err(|e| crate::error::Error::mongo("read an audit chain", e))?;
        docs.iter().map(AuditEntry::from_document).collect()
    }

    async fn check_checkpoint(&self, tenant: &str, cp: &Checkpoint) -> Result<Option<BrokenLink>> {
        Ok(match self.entry_at(tenant, cp.sequence).await? {
            None => Some(BrokenLink {
                sequence: cp.sequence,
                audit_id: None,
                kind: BreakKind::Missing,
            }),
            Some(e) if e.hash != cp.hash => Some(BrokenLink {
                sequence: cp.sequence,
                audit_id: Some(e.audit_id),
                kind: BreakKind::CheckpointMismatch {
                    published: cp.hash.clone(),
                },
            }),
            Some(_) => None,
        })
    }

    async fn walk_chain(&self, tenant: &str, start: u64, end: u64) -> Result<Verification> {
        let mut report = Verification {
            tenant: tenant.to_owned(),
            checked: 0,
            last_intact: None,
            broken: None,
        };
        if start > end {
            return Ok(report);
        }
        let mut expected = start;
        let mut previous = if start == 1 {
            GENESIS_HASH.to_owned()
        } else {
            match self.entry_at(tenant, start - 1).await? {
                Some(e) => e.hash,
                None => {
                    report.broken = Some(BrokenLink {
                        sequence: start - 1,
                        audit_id: None,
                        kind: BreakKind::Missing,
                    });
                    return Ok(report);
                }
            }
        };
        let inner = &self.inner;
        let mut cursor = self
            .bounded(
                "read an audit chain",
                &inner.options.collection,
                inner
                    .entries
                    .find(range_filter(tenant, start, end))
                    .sort(doc! { "sequence": 1 }),
            )
            .await?;
        let collection = inner.options.collection.clone();
        while let Some(d) = cursor.try_next().await.map_err(|e| {
            crate::error::Error::mongo(format!("read an audit chain ({collection})"), e)
        })? {
            let entry = match AuditEntry::from_document(&d) {
                Ok(e) => e,
                Err(_) => {
                    report.broken = Some(BrokenLink {
                        sequence: expected,
                        audit_id: d.get_str("audit_id").ok().map(str::to_owned),
                        kind: BreakKind::Unreadable,
                    });
                    return Ok(report);
                }
            };
            let broken = |kind| BrokenLink {
                sequence: expected,
                audit_id: Some(entry.audit_id.clone()),
                kind,
            };
            let kind = if entry.sequence != expected {
                // Sorted by sequence and unique: a higher one means `expected` is gone.
                Some(BreakKind::Missing)
            } else if d.get_str("_id").ok() != Some(entry_key(tenant, entry.sequence).as_str()) {
                Some(BreakKind::Misplaced)
            } else if entry.computed_hash() != entry.hash {
                Some(BreakKind::Altered)
            } else if entry.previous_hash != previous {
                Some(BreakKind::LinkMismatch)
            } else {
                None
            };
            if let Some(kind) = kind {
                let mut link = broken(kind);
                if link.kind == BreakKind::Missing {
                    link.audit_id = None;
                }
                report.broken = Some(link);
                return Ok(report);
            }
            report.checked += 1;
            previous = entry.hash.clone();
            report.last_intact = Some((entry.sequence, entry.hash));
            expected += 1;
        }
        Ok(report)
    }
}

/// `range` as inclusive sequences, from 1.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s.max(1),
        Bound::Excluded(&s) => s.saturating_add(1).max(1),
        Bound::Unbounded => 1,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => e.saturating_sub(1),
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

fn range_filter(tenant: &str, start: u64, end: u64) -> mongodb::bson::Document {
    let lower = i64::try_from(start).unwrap_or(i64::MAX);
    let upper = i64::try_from(end).unwrap_or(i64::MAX);
    doc! { "tenant": tenant, "sequence": { "$gte": lower, "$lte": upper } }
}
