//! Version transitions: reading the version a document is at, claiming the move to the next
//! one where the server's conditional updates are not atomic, and telling why a
//! version-filtered write matched nothing.
//!
//! On MongoDB a single-document write with `{version: n}` in its filter is atomic, so the
//! filter alone decides the winner. FerretDB v1 applies updates as read, modify, write back
//! without a row lock: two writers that both read version `n` can both "win". Where the
//! capabilities say conditional updates are not atomic, a writer first claims the transition
//! `n -> n+1` by inserting `{_id: "<tenant>␟<id>␟<n+1>"}` into `<collection>__version_claims`.
//! Unique `_id` inserts are enforced by the storage engine, so only one writer gets the claim;
//! the loser reports a conflict. The claim is deleted after the write (the version filter then
//! keeps stale writers out); a claim left by a crashed writer expires after [`CLAIM_LEASE`].
//! The capability is the one branch here: it decides whether a claim is taken, nothing else.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};

use crate::backend::Coll;

pub use crate::document::CLAIM_LEASE;
use crate::document::{self, DELETED_AT_FIELD, INCARNATION_FIELD, QUEUE_POSITION_FIELD};
use crate::error::{duplicate_key_message, Error, Result};
use crate::repo::pipeline::Pipeline;
use crate::tenant::TenantId;

/// What a document is at, as far as a write needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    /// Its version (0 for entities without a version field).
    pub version: u64,
    /// Whether it is soft-deleted.
    pub deleted: bool,
    /// Its `created_at` value, if the entity declares one.
    pub created_at: Option<Bson>,
    /// Its incarnation (entities with an outbox; `None` for documents stored before
    /// incarnations existed).
    pub incarnation: Option<String>,
    /// The queue position of the last queued write applied to it.
    pub queued: Option<String>,
}

impl Pipeline {
    /// The document with this id as a write sees it, or `None`. `include_deleted` also finds
    /// soft-deleted documents (for purge).
    pub(crate) async fn current(
        &self,
        tenant: &TenantId,
        id: &Bson,
        include_deleted: bool,
    ) -> Result<Option<Current>> {
        let meta = self.meta();
        let mut projection =
            doc! { "_id": 0, DELETED_AT_FIELD: 1, INCARNATION_FIELD: 1, QUEUE_POSITION_FIELD: 1 };
        if let Some(vf) = meta.version_field {
            projection.insert(vf, 1);
        }
        if let Some(c) = meta.created_at_field {
            projection.insert(c, 1);
        }
        let filter = self.key_filter(tenant, id);
        let found = self
            .read_retried("read version", || {
                self.docs()
                    .find_one(filter.clone(), Some(projection.clone()))
            })
            .await?
            .map_err(|e| Error::mongo(self.op("read version"), e))?;
        let deleted = |d: &Document| !matches!(d.get(DELETED_AT_FIELD), None | Some(Bson::Null));
        let found = found.filter(|d| include_deleted || !deleted(d));
        Ok(found.map(|d| Current {
            version: meta
                .version_field
                .map_or(0, |vf| document::stored_u64(&d, vf)),
            deleted: deleted(&d),
            created_at: meta.created_at_field.and_then(|c| d.get(c).cloned()),
            incarnation: document::incarnation_of(&d),
            queued: d.get_str(QUEUE_POSITION_FIELD).ok().map(str::to_owned),
        }))
    }

    /// Why a write filtered on version `expected` (or on the id alone, when `None`) matched
    /// nothing: [`Error::NotFound`] or [`Error::VersionConflict`].
    pub(crate) async fn diagnose(
        &self,
        tenant: &TenantId,
        id: &Bson,
        expected: Option<u64>,
    ) -> Error {
        match (self.current(tenant, id, false).await, expected) {
            (Ok(None), _) | (Ok(Some(_)), None) => self.not_found(id),
            (Ok(Some(c)), Some(expected)) => Error::VersionConflict {
                entity: self.meta().name,
                id: document::id_for_errors(id),
                expected,
                actual: Some(c.version),
            },
            (Err(e), _) => e,
        }
    }

    /// The exclusive right to move the document from version `from` to the next, or `None`
    /// where the server's conditional updates are atomic and the version filter suffices.
    ///
    /// A claim is a unique insert of `<tenant>␟<id>␟[<incarnation>␟]<version>␟<generation>`. A claim older
    /// than [`CLAIM_LEASE`] (by the server's clock) belonged to a writer that died; it is taken
    /// over by inserting the next generation, never by deleting it, so exactly one of the
    /// writers racing for the takeover wins (a delete-then-insert takeover is a
    /// read-modify-write, which FerretDB does not make atomic).
    pub(crate) async fn claim(
        &self,
        tenant: &TenantId,
        id: &Bson,
        incarnation: Option<&str>,
        from: u64,
    ) -> Result<Option<Claim>> {
        if self.conn().capabilities().atomic_conditional_updates {
            return Ok(None);
        }
        let meta = self.meta();
        let coll = self.conn().collection(
            meta.database,
            &document::claims_collection(meta),
            Default::default(),
        );
        // Per incarnation: a claim kept by a writer of a deleted document does not hold up
        // the document created again under its id.
        let base = format!(
            "{tenant}\u{1f}{}\u{1f}{}{}",
            document::id_as_text(id),
            incarnation.map_or(String::new(), |i| format!("{i}\u{1f}")),
            from + 1
        );
        let conflict = || Error::VersionConflict {
            entity: meta.name,
            id: document::id_for_errors(id),
            expected: from,
            actual: None,
        };
        let owner = uuid::Uuid::now_v7().simple().to_string();
        let lease = i64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(i64::MAX);
        let mut generation = 0_u32;
        // A released claim makes its generation free again; a bounded number of tries.
        for _ in 0..8 {
            let key = format!("{base}\u{1f}{generation}");
            let claim = doc! {
                "_id": &key, "base": &base, "gen": i64::from(generation), "owner": &owner,
                "at": self.conn().server_now(),
            };
            match self
                .bounded("claim version", coll.insert_one(&claim, None))
                .await?
            {
                Ok(_) => {
                    return Ok(Some(Claim {
                        coll,
                        base,
                        generation,
                        key,
                    }))
                }
                Err(e) if duplicate_key_message(&e).is_some() => {
                    let held = self
                        .bounded("read claim", coll.find_one(doc! { "_id": &key }, None))
                        .await?
                        .map_err(|e| Error::mongo(self.op("read version claim"), e))?;
                    let Some(held) = held else {
                        continue; // released meanwhile: this generation is free
                    };
                    let at = held
                        .get_datetime("at")
                        .map_or(i64::MAX, |at| at.timestamp_millis());
                    if self
                        .conn()
                        .server_now()
                        .timestamp_millis()
                        .saturating_sub(at)
                        <= lease
                    {
                        return Err(conflict());
                    }
                    // Its holder is gone: race for the next generation.
                    generation += 1;
                }
                Err(e) => return Err(Error::mongo(self.op("claim version"), e)),
            }
        }
        Err(conflict())
    }
}

/// The exclusive right to move one document from one version to the next.
#[derive(Debug)]
pub(crate) struct Claim {
    coll: Coll,
    base: String,
    generation: u32,
    key: String,
}

impl Claim {
    /// Gives the transition back after a write whose outcome is known (the version filter
    /// keeps stale writers out from here), with the stale claims of dead writers before it.
    /// After a write whose outcome is unknown (a timeout), [`keep`](Self::keep) it instead.
    pub(crate) async fn release(self) {
        // This generation and the ones before it (their holders are gone); never a later one,
        // which would be a writer that took over from this one.
        let r = self
            .coll
            .delete(
                doc! { "base": &self.base, "gen": { "$lte": i64::from(self.generation) } },
                true,
                None,
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(claim = %self.key, error = %e, "could not release a version claim; it expires by itself");
        }
    }

    /// Keeps the claim until it expires: the write it covered may still be running on the
    /// server, and no other writer may move the document's version until that write landed.
    pub(crate) fn keep(self) {
        tracing::debug!(claim = %self.key, "keeping a version claim until it expires: the write's outcome is unknown");
    }
}

/// A short, jittered pause before trying again after losing a race.
pub(crate) async fn backoff(attempt: u32) {
    let base = 2_u64.saturating_pow(attempt.min(6));
    let jitter = u64::from(std::process::id() ^ attempt.wrapping_mul(2_654_435_761)) % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}
