//! Rewriting stored documents at another schema version: what a read that upgrades writes back
//! (when `migrations.write_back_on_read` is on), what a patch of an older document does first,
//! and what the batch migrator does to every document (`Storage::migrate`).
//!
//! A rewrite is not a business change: the entity's version does not move, no outbox event is
//! recorded and `updated_at` is left alone; the document's cache entries are dropped. It is a
//! replace by `_id` filtered on what was read (the `_schema_version` stamp and the version
//! field), so a document changed since is left alone ([`Rewrite::Changed`]) for the caller to
//! read again. Where conditional updates are not atomic (FerretDB), the rewrite first claims the
//! document's next version transition as every writer does (`versions.rs`), so no other write
//! can land between its check and its replace; it then reads the document by `_id`, checks it
//! is still as read, and replaces it by `_id` (the one filter FerretDB looks up by key rather
//! than by scanning the collection). Entities without a version field have no claims: on such
//! servers a write racing a rewrite of the same document within milliseconds can be lost
//! (`docs/migrations.md`).

use mongodb::bson::{doc, Bson, Document};

use crate::document::{self, SCHEMA_VERSION_FIELD};
use crate::error::{Error, Result};
use crate::repo::apply::{self, RawOutcome, RawWrite};
use crate::repo::pipeline::Pipeline;
use crate::schema;
use crate::tenant::TenantId;

/// What [`Pipeline::rewrite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Rewritten at the target version; the document was at `from`.
    Rewritten { from: u32 },
    /// Already at the target version: nothing written.
    Current,
    /// Changed since it was read (or being changed by a writer holding its claim): nothing
    /// written.
    Changed,
}

impl Pipeline {
    /// Rewrites `stored` (a whole document as read, `_id` included) at schema version `to`.
    pub(crate) async fn rewrite(&self, mut stored: Document, to: u32) -> Result<Rewrite> {
        let m = self.meta();
        let codec = |message: String| Error::Codec {
            entity: m.name,
            direction: "decode",
            message,
        };
        let key = stored
            .get("_id")
            .cloned()
            .ok_or_else(|| codec("a stored document without `_id`".into()))?;
        // The filter: the document as it was read.
        let mut filter = doc! { "_id": key };
        filter.insert(
            SCHEMA_VERSION_FIELD,
            stored
                .get(SCHEMA_VERSION_FIELD)
                .cloned()
                .unwrap_or_else(|| Bson::Document(doc! { "$exists": false })),
        );
        let read_version = m.version_field.map(|vf| {
            let value = stored
                .get(vf)
                .cloned()
                .unwrap_or_else(|| Bson::Document(doc! { "$exists": false }));
            (vf, value, document::stored_u64(&stored, vf))
        });
        if schema::version_of(&stored) == to {
            return Ok(Rewrite::Current);
        }
        // The tenant and id as stored: the claim is taken before the steps run, so a document
        // another writer holds costs no step runs (they run once per document rewritten).
        let tenant = match stored.get(m.tenant_field) {
            Some(Bson::String(t)) => TenantId::new(t.as_str())?,
            _ => {
                return Err(codec(format!(
                    "the stored document has no tenant `{}`",
                    m.tenant_field
                )))
            }
        };
        let id = match stored.get(m.id_field) {
            None | Some(Bson::Null) => {
                return Err(codec(format!(
                    "the stored document has no id `{}`",
                    m.id_field
                )))
            }
            Some(id) => id.clone(),
        };
        let claim = match &read_version {
            Some((_, _, version)) => {
                let incarnation = document::incarnation_of(&stored);
                match self
                    .claim(&tenant, &id, incarnation.as_deref(), *version)
                    .await
                {
                    Ok(claim) => claim,
                    // A writer is moving this document on: it is not ours to rewrite now.
                    Err(Error::VersionConflict { .. }) => return Ok(Rewrite::Changed),
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let from = match schema::convert(m, &mut stored, to) {
            Ok(Some(from)) => from,
            converted => {
                if let Some(claim) = claim {
                    claim.release().await;
                }
                return converted.map(|_| Rewrite::Current);
            }
        };
        if let Some((vf, value, _)) = read_version {
            filter.insert(vf, value);
        }
        if !self.conn().capabilities().atomic_conditional_updates {
            // The server would check the filter by reading the document and writing it back
            // without a lock (and, on FerretDB, by scanning the collection: only an `_id`
            // alone is looked up by key). Under the claim no other writer moves the document,
            // so read it by `_id`, check it is as it was, and replace it by `_id`.
            let key = filter.get("_id").cloned().unwrap_or(Bson::Null);
            let now = self
                .bounded(
                    "read for a schema rewrite",
                    self.docs().find_one(doc! { "_id": &key }, None),
                )
                .await?
                .map_err(|e| Error::mongo(self.op("read for a schema rewrite"), e))?;
            let unchanged = now.is_some_and(|now| {
                filter.iter().all(|(k, expected)| match expected {
                    Bson::Document(d) if d.contains_key("$exists") => now.get(k).is_none(),
                    expected => now.get(k) == Some(expected),
                })
            });
            if !unchanged {
                if let Some(claim) = claim {
                    claim.release().await;
                }
                return Ok(Rewrite::Changed);
            }
            filter = doc! { "_id": key };
        }
        let write = RawWrite::Replace {
            filter,
            doc: stored,
            upsert: false,
        };
        // Under a claim the write must end well within the claim's lease; without one the
        // socket timeout bounds it (FerretDB can take seconds to rewrite a document that grew,
        // in a large collection under load).
        let bound = if claim.is_some() {
            self.write_bound()
        } else {
            self.conn().config().mongodb.socket_timeout
        };
        let r = apply::exec(
            m,
            self.docs(),
            "schema rewrite",
            bound,
            &self.conn().config().retry,
            &write,
            None,
        )
        .await;
        if let Some(claim) = claim {
            match &r {
                Err(Error::Timeout { .. } | Error::Mongo { .. }) => claim.keep(),
                _ => claim.release().await,
            }
        }
        let rewritten = match &r {
            Ok(RawOutcome::Matched { count, .. }) => *count > 0,
            Ok(_) => false,
            // The outcome is unknown: drop the entries anyway.
            Err(_) => true,
        };
        if rewritten {
            self.cache().after_write(m, &tenant, &id, None, None).await;
        }
        r?;
        Ok(if rewritten {
            Rewrite::Rewritten { from }
        } else {
            Rewrite::Changed
        })
    }

    /// Reads the whole document with `_id` = `key` and rewrites it at the current version, if
    /// it is older. For reads that upgraded what they read (which may have been a projection).
    pub(crate) async fn upgrade_stored(&self, key: &Bson) -> Result<Rewrite> {
        let stored = self
            .bounded(
                "read for a schema rewrite",
                self.docs().find_one(doc! { "_id": key }, None),
            )
            .await?
            .map_err(|e| Error::mongo(self.op("read for a schema rewrite"), e))?;
        match stored {
            None => Ok(Rewrite::Changed),
            Some(stored) => self.rewrite(stored, self.meta().schema_version).await,
        }
    }

    /// Writes back documents a read upgraded, if `migrations.write_back_on_read` says so.
    /// Failures are logged, never returned: the read itself succeeded.
    pub(crate) async fn write_back(&self, keys: Vec<Bson>) {
        // Append-only documents are never changed: they are upgraded on every read instead.
        if keys.is_empty()
            || self.meta().append_only
            || !self.conn().config().migrations.write_back_on_read
        {
            return;
        }
        for key in keys {
            if let Err(e) = self.upgrade_stored(&key).await {
                tracing::warn!(entity = self.meta().name, error = %e, "could not write back a document upgraded on read; it is upgraded again at the next read");
            }
        }
    }

    /// Why a patch written at schema version `stamp` matched nothing, as far as the schema is
    /// concerned: the stored document with this id is at an older version (rewritten now, so
    /// the caller tries again: `Ok(true)`), or at a newer one ([`Error::FutureSchemaVersion`]);
    /// `Ok(false)` when the schema is not why (no document, or one at `stamp`).
    pub(crate) async fn patch_schema_check(
        &self,
        tenant: &TenantId,
        id: &Bson,
        stamp: u32,
    ) -> Result<bool> {
        let filter = self.id_filter(tenant, id, false);
        let found = self
            .bounded(
                "read schema version",
                self.docs()
                    .find_one(filter, Some(doc! { "_id": 1, SCHEMA_VERSION_FIELD: 1 })),
            )
            .await?
            .map_err(|e| Error::mongo(self.op("read schema version"), e))?;
        let Some(found) = found else {
            return Ok(false);
        };
        let stored = schema::version_of(&found);
        if stored == stamp {
            return Ok(false);
        }
        if stored > stamp {
            return Err(Error::FutureSchemaVersion {
                entity: self.meta().name,
                id: document::id_for_errors(id),
                stored,
                supported: stamp,
            });
        }
        let key = found.get("_id").cloned().unwrap_or(Bson::Null);
        self.upgrade_stored(&key).await?;
        Ok(true)
    }
}
