//! What an audit entry holds: [`NewAuditEntry`] (what a caller appends) and [`AuditEntry`] (what
//! is stored: the caller's fields plus tenant, sequence, time and the two hashes).

use mongodb::bson::{doc, DateTime, Document};
use serde::{Deserialize, Serialize};

use super::hash::{canonical_json, Hashed};
use crate::error::{Error, Result};

/// One entry to append: who did what to which target, with details.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// What happened, e.g. `user.password_changed`.
    pub action: String,
    /// Who did it, e.g. a user or service id.
    pub actor: String,
    /// What it was done to, e.g. `user:42`.
    pub target: String,
    /// Anything else worth keeping; stored as canonical JSON text (keys sorted).
    pub details: serde_json::Value,
}

impl NewAuditEntry {
    /// An entry with empty details (`{}`).
    pub fn new(
        action: impl Into<String>,
        actor: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        NewAuditEntry {
            action: action.into(),
            actor: actor.into(),
            target: target.into(),
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the details.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// A stored audit entry: one link of its tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unique id of the entry (UUID v7).
    pub audit_id: String,
    /// The tenant whose chain it belongs to.
    pub tenant: String,
    /// Position in the chain: 1, 2, 3, ... without gaps.
    pub sequence: u64,
    /// What happened.
    pub action: String,
    /// Who did it.
    pub actor: String,
    /// What it was done to.
    pub target: String,
    /// The details as canonical JSON text (the exact bytes the hash covers).
    pub details: String,
    /// When it was appended, in milliseconds since the Unix epoch (the hashed precision).
    pub created_at_ms: i64,
    /// The hash of the entry before it ([`GENESIS_HASH`](super::GENESIS_HASH) for sequence 1).
    pub previous_hash: String,
    /// SHA-256 of this entry's canonical encoding (see `docs/audit.md`).
    pub hash: String,
}

/// An entry's fields before it has a place in the chain: fixed once, so that an append that
/// loses a race keeps its id and time and only moves to the next position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub audit_id: String,
    pub action: String,
    pub actor: String,
    pub target: String,
    pub details: String,
    pub created_at_ms: i64,
}

impl Pending {
    pub(crate) fn new(entry: NewAuditEntry) -> Self {
        Pending {
            audit_id: uuid::Uuid::now_v7().hyphenated().to_string(),
            action: entry.action,
            actor: entry.actor,
            target: entry.target,
            details: canonical_json(&entry.details),
            created_at_ms: DateTime::now().timestamp_millis(),
        }
    }

    /// This entry at `sequence`, after the entry whose hash is `previous_hash`.
    pub(crate) fn at(&self, tenant: &str, sequence: u64, previous_hash: &str) -> AuditEntry {
        let hash = Hashed {
            tenant,
            sequence,
            audit_id: &self.audit_id,
            action: &self.action,
            actor: &self.actor,
            target: &self.target,
            details: &self.details,
            created_at_ms: self.created_at_ms,
            previous_hash,
        }
        .hash();
        AuditEntry {
            audit_id: self.audit_id.clone(),
            tenant: tenant.to_owned(),
            sequence,
            action: self.action.clone(),
            actor: self.actor.clone(),
            target: self.target.clone(),
            details: self.details.clone(),
            created_at_ms: self.created_at_ms,
            previous_hash: previous_hash.to_owned(),
            hash,
        }
    }
}

/// `_id` of the entry at `sequence` of `tenant`'s chain: `<tenant>:<sequence, 20 digits>`, so
/// that the key is unique per position (a second entry at a taken position is refused by the
/// server) and sorts in chain order.
pub(crate) fn entry_key(tenant: &str, sequence: u64) -> String {
    format!("{tenant}:{sequence:020}")
}

impl AuditEntry {
    /// The hash recomputed from the fields (equal to [`hash`](Self::hash) unless the stored
    /// entry was altered).
    pub fn computed_hash(&self) -> String {
        Hashed {
            tenant: &self.tenant,
            sequence: self.sequence,
            audit_id: &self.audit_id,
            action: &self.action,
            actor: &self.actor,
            target: &self.target,
            details: &self.details,
            created_at_ms: self.created_at_ms,
            previous_hash: &self.previous_hash,
        }
        .hash()
    }

    pub(crate) fn to_document(&self) -> Document {
        doc! {
            "_id": entry_key(&self.tenant, self.sequence),
            "audit_id": &self.audit_id,
            "tenant": &self.tenant,
            "sequence": i64::try_from(self.sequence).unwrap_or(i64::MAX),
            "action": &self.action,
            "actor": &self.actor,
            "target": &self.target,
            "details": &self.details,
            "created_at": DateTime::from_millis(self.created_at_ms),
            "previous_hash": &self.previous_hash,
            "hash": &self.hash,
        }
    }

    pub(crate) fn from_document(d: &Document) -> Result<AuditEntry> {
        let bad = |field: &str| Error::Codec {
            entity: "AuditEntry",
            direction: "decode",
            message: format!(
                "stored entry {:?} has no valid `{field}`",
                d.get("_id").map(ToString::to_string).unwrap_or_default()
            ),
        };
        let text = |field: &str| d.get_str(field).map(str::to_owned).map_err(|_| bad(field));
        let sequence = match d.get("sequence") {
            Some(mongodb::bson::Bson::Int64(n)) => u64::try_from(*n).ok(),
            Some(mongodb::bson::Bson::Int32(n)) => u64::try_from(*n).ok(),
            _ => None,
        }
        .ok_or_else(|| bad("sequence"))?;
        Ok(AuditEntry {
            audit_id: text("audit_id")?,
            tenant: text("tenant")?,
            sequence,
            action: text("action")?,
            actor: text("actor")?,
            target: text("target")?,
            details: text("details")?,
            created_at_ms: d
                .get_datetime("created_at")
                .map_err(|_| bad("created_at"))?
                .timestamp_millis(),
            previous_hash: text("previous_hash")?,
            hash: text("hash")?,
        })
    }
}
