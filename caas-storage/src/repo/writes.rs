//! The typed write calls of [`Repository`]: each encodes once, makes one
//! [`Pipeline::write`](super::pipeline::Pipeline::write) call and decodes what it returns. No
//! call writes any other way.

use mongodb::bson::Document;

use crate::document;
use crate::entity::{Entity, Mutable};
use crate::error::{Error, Result};
use crate::outbox::EventEnvelope;
use crate::repo::pipeline::{Intent, Outcome, Write};
use crate::repo::{id_of, Patch, PatchWriter, Repository};
use crate::tenant::TenantId;

/// What [`Repository::insert_many`] did: the batch is unordered, so some documents can fail
/// (duplicates) while the rest are written.
#[derive(Debug)]
pub struct InsertManyReport {
    /// How many documents were written (or, for `eventual` entities, queued).
    pub inserted: usize,
    /// The documents that were not, by position in the input, with why.
    pub failed: Vec<(usize, Error)>,
}

/// Whether [`Repository::upsert`] inserted or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// No document had this id in this tenant; one was inserted.
    Inserted,
    /// An existing document was replaced.
    Replaced,
}

impl<E: Entity> Repository<E> {
    /// Inserts one entity. Its tenant field must equal `tenant`. A unique index violation is
    /// [`Error::DuplicateKey`]. Declared `created_at` and `updated_at` fields are stored as the
    /// time of the write.
    ///
    /// Under the `eventual` model the insert is queued (see `docs/consistency.md`):
    /// acknowledged once durable in the queue, applied to MongoDB in a batch shortly after; a
    /// duplicate is then dropped when applied rather than reported here.
    pub async fn insert(&self, tenant: &TenantId, entity: &E) -> Result<()> {
        self.insert_with(tenant, entity, &[]).await
    }

    /// Inserts one entity and records `events` (custom events of this aggregate) atomically
    /// with it, besides the entity's own insert event. Never queued. The entity must declare
    /// an `outbox(...)`.
    pub async fn insert_with_events(
        &self,
        tenant: &TenantId,
        entity: &E,
        events: &[EventEnvelope],
    ) -> Result<()> {
        self.pipeline().outbox()?;
        self.insert_with(tenant, entity, events).await
    }

    async fn insert_with(
        &self,
        tenant: &TenantId,
        entity: &E,
        events: &[EventEnvelope],
    ) -> Result<()> {
        let doc = document::encode(tenant, entity)?;
        let mut w = Write::new(
            "insert",
            tenant,
            Intent::Insert(vec![doc]),
            self.pipeline().now(),
        );
        w.extra_events = events;
        match self.pipeline().write(w).await? {
            Outcome::Inserted(mut results) => results.pop().unwrap_or(Ok(())),
            _ => Ok(()),
        }
    }

    /// Inserts many entities in one unordered batch. Every entity must belong to `tenant`, or
    /// nothing is written. Documents rejected by the server (duplicates) are reported in
    /// [`InsertManyReport::failed`]; the others are written, each with its events.
    pub async fn insert_many(&self, tenant: &TenantId, entities: &[E]) -> Result<InsertManyReport> {
        if entities.is_empty() {
            return Ok(InsertManyReport {
                inserted: 0,
                failed: Vec::new(),
            });
        }
        let docs = entities
            .iter()
            .map(|e| document::encode(tenant, e))
            .collect::<Result<Vec<_>>>()?;
        let n = docs.len();
        let outcome = self
            .pipeline()
            .write(Write::new(
                "insert_many",
                tenant,
                Intent::Insert(docs),
                self.pipeline().now(),
            ))
            .await?;
        let failed: Vec<(usize, Error)> = match outcome {
            Outcome::Inserted(results) => results
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| r.err().map(|e| (i, e)))
                .collect(),
            _ => Vec::new(),
        };
        Ok(InsertManyReport {
            inserted: n - failed.len(),
            failed,
        })
    }

    // The calls below change or remove stored entities: each needs `E: Mutable`, which
    // `append_only` entities are not, so calling one on them is a compile error.

    /// Applies `patch` to the entity with this id and returns it as it is afterwards, or `None`
    /// if there is none. The version field, if any, is incremented. Unconditional: use
    /// [`update_checked`](Self::update_checked) to fail when someone else wrote first.
    pub async fn update<P: Patch<Entity = E>>(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        patch: P,
    ) -> Result<Option<E>>
    where
        E: Mutable,
    {
        let set = patch_set(&patch)?;
        if E::META.version_field.is_none() && E::META.updated_at_field.is_none() && set.is_empty() {
            return self.find_by_id(tenant, id).await;
        }
        self.patch(tenant, "update", id, set, None).await
    }

    /// Optimistic locking: applies `patch` only if the stored version is `expected_version`,
    /// and returns the entity afterwards (version `expected_version + 1`). Otherwise
    /// [`Error::VersionConflict`] (someone else wrote first) or [`Error::NotFound`].
    pub async fn update_checked<P: Patch<Entity = E>>(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        expected_version: u64,
        patch: P,
    ) -> Result<E>
    where
        E: Mutable,
    {
        require_version::<E>("update_checked")?;
        let set = patch_set(&patch)?;
        self.patch(tenant, "update_checked", id, set, Some(expected_version))
            .await?
            .ok_or_else(|| self.not_found(id))
    }

    async fn patch(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        id: &E::Id,
        set: Document,
        expected: Option<u64>,
    ) -> Result<Option<E>> {
        let intent = Intent::Patch {
            id: document::id_to_bson::<E>(id)?,
            set,
            expected,
        };
        match self
            .pipeline()
            .write(Write::new(operation, tenant, intent, self.pipeline().now()))
            .await?
        {
            Outcome::Patched(after) => after
                .map(|d| crate::schema::decode_doc(d, false).map(|read| read.entity))
                .transpose(),
            _ => Ok(None),
        }
    }

    /// Replaces the stored entity with `entity`. With a version field this is optimistic: it
    /// succeeds only if the stored version equals `entity`'s, and then sets `entity`'s version
    /// (and `updated_at`) to the new one; otherwise [`Error::VersionConflict`]. Without one,
    /// [`Error::NotFound`] if there is nothing to replace.
    pub async fn replace(&self, tenant: &TenantId, entity: &mut E) -> Result<()>
    where
        E: Mutable,
    {
        let intent = Intent::Replace {
            id: id_of(entity)?,
            doc: document::encode(tenant, entity)?,
            expected: entity.version(),
        };
        let w = Write::new("replace", tenant, intent, self.pipeline().now());
        let at = w.at;
        if let Outcome::Replaced(Some(version)) = self.pipeline().write(w).await? {
            entity.set_version(version);
        }
        entity.set_updated_at(at);
        Ok(())
    }

    /// Inserts `entity`, or replaces the one with its id whatever its version (the stored
    /// version moves on by one; an existing document keeps its `created_at`).
    pub async fn upsert(&self, tenant: &TenantId, entity: &E) -> Result<Upserted>
    where
        E: Mutable,
    {
        let intent = Intent::Upsert {
            id: id_of(entity)?,
            doc: document::encode(tenant, entity)?,
        };
        match self
            .pipeline()
            .write(Write::new("upsert", tenant, intent, self.pipeline().now()))
            .await?
        {
            Outcome::Upserted { inserted: true } => Ok(Upserted::Inserted),
            _ => Ok(Upserted::Replaced),
        }
    }

    /// Deletes the entity with this id: soft (hidden, kept with `_deleted_at`) when the entity
    /// declares `soft_delete`, otherwise removed. Returns whether there was one.
    pub async fn delete(&self, tenant: &TenantId, id: &E::Id) -> Result<bool>
    where
        E: Mutable,
    {
        self.delete_one(tenant, "delete", id, false).await
    }

    /// Removes the document with this id for good, soft-deleted or not.
    pub async fn purge(&self, tenant: &TenantId, id: &E::Id) -> Result<bool>
    where
        E: Mutable,
    {
        self.delete_one(tenant, "purge", id, true).await
    }

    async fn delete_one(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        id: &E::Id,
        purge: bool,
    ) -> Result<bool> {
        let intent = Intent::Delete {
            id: document::id_to_bson::<E>(id)?,
            purge,
        };
        match self
            .pipeline()
            .write(Write::new(operation, tenant, intent, self.pipeline().now()))
            .await?
        {
            Outcome::Deleted(n) => Ok(n > 0),
            _ => Ok(false),
        }
    }

    /// Deletes every entity of `tenant` that `filter` (already scoped) matches; see
    /// [`Query::delete`](crate::repo::Query::delete).
    pub(crate) async fn delete_matching(&self, tenant: &TenantId, filter: Document) -> Result<u64> {
        match self
            .pipeline()
            .write(Write::new(
                "delete many",
                tenant,
                Intent::DeleteMatching { filter },
                self.pipeline().now(),
            ))
            .await?
        {
            Outcome::Deleted(n) => Ok(n),
            _ => Ok(0),
        }
    }
}

/// A patch's `$set` document.
pub(crate) fn patch_set<E: Entity, P: Patch<Entity = E>>(patch: &P) -> Result<Document> {
    let mut w = PatchWriter::new(E::META);
    patch.write(&mut w)?;
    Ok(w.into_document())
}

pub(crate) fn require_version<E: Entity>(op: &'static str) -> Result<()> {
    if E::META.version_field.is_none() {
        return Err(Error::Unsupported {
            feature: op,
            server: format!(
                "(entity {} has no #[repository(version)] field, so this)",
                E::META.name
            ),
        });
    }
    Ok(())
}
