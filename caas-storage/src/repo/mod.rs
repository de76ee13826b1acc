//! The executor: [`Repository<E>`], which every generated repository delegates to.
//!
//! Every call follows one flow: scope (the tenant goes into the filter, the document, the key),
//! policy (the entity's consistency model picks concerns and read preference), store (MongoDB,
//! with the server's capabilities choosing between the MongoDB path and its fallback). Generated
//! code adds only types: `UserRepository` derefs to `Repository<User>`.

pub(crate) mod codec;
mod events;
mod filter;
mod page;
mod patch;
mod query;
mod versioned;
mod write;

use std::marker::PhantomData;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{CollectionOptions, ReturnDocument};
use mongodb::Collection;

use crate::consistency::Consistency;
use crate::entity::{Entity, EntityMeta};
use crate::error::{classify_write, Component, Error, Result};
use crate::storage::Storage;
use crate::tenant::TenantId;
use crate::write_behind::Op;

pub use filter::{Field, FieldPath, Filter, Sort};
pub use page::{Cursor, Page, PageRequest};
pub use patch::{patch_document, Patch, PatchWriter};
pub use query::Query;

/// Framework field: the schema version a document was written with.
pub const SCHEMA_VERSION_FIELD: &str = "_schema_version";
/// Framework field: when a soft-deleted document was deleted.
pub const DELETED_AT_FIELD: &str = "_deleted_at";

/// The generic repository of entity `E`: tenant-scoped CRUD, queries and paging.
///
/// Obtain one through the generated type (`UserRepository::new(&storage)`, which derefs to
/// `Repository<User>`) or directly with [`Repository::new`].
pub struct Repository<E: Entity> {
    storage: Storage,
    consistency: Consistency,
    docs: Collection<Document>,
    typed: Collection<E>,
    _entity: PhantomData<fn() -> E>,
}

impl<E: Entity> Clone for Repository<E> {
    fn clone(&self) -> Self {
        Repository {
            storage: self.storage.clone(),
            consistency: self.consistency,
            docs: self.docs.clone(),
            typed: self.typed.clone(),
            _entity: PhantomData,
        }
    }
}

impl<E: Entity> std::fmt::Debug for Repository<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Repository<{}>({}.{})",
            E::META.name,
            E::META.database,
            E::META.collection
        )
    }
}

/// What [`Repository::insert_many`] did: the batch is unordered, so some documents can fail
/// (duplicates) while the rest are written.
#[derive(Debug)]
pub struct InsertManyReport {
    /// How many documents were written.
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
    /// The repository of `E` on `storage`'s pools, with `E`'s consistency model applied to
    /// every call.
    pub fn new(storage: &Storage) -> Self {
        Self::with_model(storage, E::META.consistency)
    }

    /// This repository with another consistency model for the calls made through it, e.g. a
    /// `strong` read of an `eventual` entity, or a direct (unqueued) write:
    /// `audit.with_consistency(Consistency::Strong).insert(&t, &entry)`.
    pub fn with_consistency(&self, consistency: Consistency) -> Self {
        Self::with_model(&self.storage, consistency)
    }

    /// The consistency model calls through this repository follow.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    fn with_model(storage: &Storage, c: Consistency) -> Self {
        if E::META.outbox.is_some() {
            storage.note_outbox_database(E::META.database);
        }
        let options = CollectionOptions::builder()
            .write_concern(c.write_concern())
            .read_concern(c.read_concern())
            .selection_criteria(c.read_preference())
            .build();
        let db = storage.database(E::META.database);
        Repository {
            storage: storage.clone(),
            consistency: c,
            docs: db.collection_with_options(E::META.collection, options.clone()),
            typed: db.collection_with_options(E::META.collection, options),
            _entity: PhantomData,
        }
    }

    /// The storage handle.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The static description of `E`.
    pub fn meta(&self) -> &'static EntityMeta {
        E::META
    }

    /// Inserts one entity. Its tenant field must equal `tenant`. A unique index violation is
    /// [`Error::DuplicateKey`].
    ///
    /// Under the `eventual` model the insert is queued (see [`write_behind`](crate::write_behind)):
    /// acknowledged once durable in the queue, applied to MongoDB in a batch shortly after; a
    /// duplicate is then dropped by the flusher rather than reported here.
    pub async fn insert(&self, tenant: &TenantId, entity: &E) -> Result<()> {
        let doc = codec::encode(tenant, entity)?;
        if self.queued() {
            self.storage
                .write_behind()
                .enqueue::<E>(&self.storage, tenant, vec![Op::Insert(doc)])
                .await?;
            self.after_queued(tenant, entity.id(), Some(entity)).await;
            return Ok(());
        }
        self.insert_direct(tenant, entity, &[]).await
    }

    /// Inserts one entity and records `events` (custom events of this aggregate) atomically
    /// with it, besides the entity's own insert event. Never queued. The entity must declare
    /// an `outbox(...)`.
    pub async fn insert_with_events(
        &self,
        tenant: &TenantId,
        entity: &E,
        events: &[crate::outbox::EventEnvelope],
    ) -> Result<()> {
        if E::META.outbox.is_none() {
            return Err(Error::Unsupported {
                feature: "insert_with_events",
                server: format!("(entity {} declares no outbox(...), so this)", E::META.name),
            });
        }
        self.insert_direct(tenant, entity, events).await
    }

    pub(crate) async fn insert_direct(
        &self,
        tenant: &TenantId,
        entity: &E,
        extra: &[crate::outbox::EventEnvelope],
    ) -> Result<()> {
        let doc = codec::encode(tenant, entity)?;
        let events = events::WriteEvents {
            kind: crate::outbox::WriteKind::Insert,
            revision: entity.version().unwrap_or(0),
            payload: events::payload::<E>(&doc),
            extra,
        };
        let r = write::run(
            self,
            "insert",
            tenant,
            entity.id(),
            write::RawWrite::Insert(doc),
            events,
        )
        .await
        .map(drop);
        self.after_write(tenant, entity.id(), &r, Some(entity))
            .await;
        r
    }

    /// Inserts many entities in one unordered batch. Every entity must belong to `tenant`, or
    /// nothing is written. Documents rejected by the server (duplicates) are reported in
    /// [`InsertManyReport::failed`]; the others are written.
    pub async fn insert_many(&self, tenant: &TenantId, entities: &[E]) -> Result<InsertManyReport> {
        if entities.is_empty() {
            return Ok(InsertManyReport {
                inserted: 0,
                failed: Vec::new(),
            });
        }
        let docs = entities
            .iter()
            .map(|e| codec::encode(tenant, e))
            .collect::<Result<Vec<_>>>()?;
        let n = docs.len();
        if self.queued() {
            self.storage
                .write_behind()
                .enqueue::<E>(
                    &self.storage,
                    tenant,
                    docs.into_iter().map(Op::Insert).collect(),
                )
                .await?;
            for e in entities {
                self.after_queued(tenant, e.id(), Some(e)).await;
            }
            return Ok(InsertManyReport {
                inserted: n,
                failed: Vec::new(),
            });
        }
        // Events first (outbox-first protocol), settled by what the batch did.
        let events: Vec<Vec<crate::outbox::PendingEvent>> = if E::META.outbox.is_some() {
            entities
                .iter()
                .zip(&docs)
                .map(|(e, d)| {
                    let ev = events::WriteEvents {
                        kind: crate::outbox::WriteKind::Insert,
                        revision: e.version().unwrap_or(0),
                        payload: events::payload::<E>(d),
                        extra: &[],
                    };
                    events::pending::<E>(tenant, e.id(), ev).map(Option::unwrap_or_default)
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let store = crate::outbox::OutboxStore::new(&self.storage, E::META.database);
        let all: Vec<crate::outbox::PendingEvent> = events.iter().flatten().cloned().collect();
        if !all.is_empty() {
            store.prepare(&all).await?;
        }
        let report = self.insert_many_docs(docs, n).await;
        if let Ok(r) = &report {
            let ids = |keep: bool| -> Vec<String> {
                events
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| r.failed.iter().any(|(f, _)| f == i) != keep)
                    .flat_map(|(_, evs)| evs.iter().map(|p| p.envelope.event_id.clone()))
                    .collect()
            };
            let (done, failed) = (ids(true), ids(false));
            if !done.is_empty() {
                if let Err(e) = store.commit(&done).await {
                    tracing::warn!(error = %e, "could not commit outbox events; reconciliation will");
                }
            }
            if !failed.is_empty() {
                if let Err(e) = store.abandon(&failed).await {
                    tracing::warn!(error = %e, "could not abandon outbox events; reconciliation will");
                }
            }
        }
        if E::META.cache.is_some() {
            for e in entities {
                self.storage
                    .cache()
                    .after_write::<E>(&self.storage, tenant, e.id(), None)
                    .await;
            }
        }
        report
    }

    async fn insert_many_docs(&self, docs: Vec<Document>, n: usize) -> Result<InsertManyReport> {
        let outcome = self
            .bounded("insert_many", self.docs.insert_many(docs).ordered(false))
            .await;
        match outcome? {
            Ok(r) => Ok(InsertManyReport {
                inserted: r.inserted_ids.len(),
                failed: Vec::new(),
            }),
            Err(e) => {
                let failed: Vec<(usize, Error)> = match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
                        m.write_errors
                            .iter()
                            .flatten()
                            .map(|w| {
                                let err = if w.code == crate::error::DUPLICATE_KEY {
                                    Error::DuplicateKey {
                                        entity: E::META.name,
                                        index: None,
                                        message: w.message.clone(),
                                    }
                                } else {
                                    Error::Rejected {
                                        entity: E::META.name,
                                        position: w.index,
                                        code: w.code,
                                        message: w.message.clone(),
                                    }
                                };
                                (w.index, err)
                            })
                            .collect()
                    }
                    _ => return Err(classify_write(E::META.name, self.op("insert_many"), e)),
                };
                Ok(InsertManyReport {
                    inserted: n - failed.len(),
                    failed,
                })
            }
        }
    }

    /// The entity with this id in this tenant (secret fields left out), or `None`.
    pub async fn find_by_id(&self, tenant: &TenantId, id: &E::Id) -> Result<Option<E>> {
        if E::META.cache.is_some() {
            return self
                .storage
                .cache()
                .read(&self.storage, tenant, id, || self.load_by_id(tenant, id))
                .await;
        }
        self.load_by_id(tenant, id).await
    }

    async fn load_by_id(&self, tenant: &TenantId, id: &E::Id) -> Result<Option<E>> {
        let mut find = self.typed.find_one(self.id_filter(tenant, id)?);
        if let Some(p) = codec::projection(E::META, false) {
            find = find.projection(p);
        }
        self.bounded("find_by_id", find)
            .await?
            .map_err(|e| Error::mongo(self.op("find_by_id"), e))
    }

    /// Like [`find_by_id`](Self::find_by_id), with secret fields included (e.g. to check a
    /// password hash). Never cached.
    pub async fn find_by_id_with_secrets(
        &self,
        tenant: &TenantId,
        id: &E::Id,
    ) -> Result<Option<E>> {
        let filter = self.id_filter(tenant, id)?;
        self.bounded("find_by_id_with_secrets", self.typed.find_one(filter))
            .await?
            .map_err(|e| Error::mongo(self.op("find_by_id_with_secrets"), e))
    }

    /// The entity with this id, at least as new as `token` requires (see
    /// [`CausalToken`](crate::consistency::CausalToken)): a read that comes back older is
    /// repeated against the primary (majority read concern, no cache) until the version is
    /// there, or fails with [`Error::Timeout`] after `mongodb.causal_wait`.
    pub async fn find_by_id_after(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        token: &crate::consistency::CausalToken,
    ) -> Result<Option<E>> {
        let Some(required) = token.required::<E>(tenant, id) else {
            return self.find_by_id(tenant, id).await;
        };
        if let Some(e) = self.find_by_id(tenant, id).await? {
            if e.version().unwrap_or(0) >= required {
                return Ok(Some(e));
            }
        }
        let primary = self.with_consistency(Consistency::Strong);
        let wait = self.storage.config().mongodb.causal_wait;
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(e) = primary.load_by_id(tenant, id).await? {
                if e.version().unwrap_or(0) >= required {
                    // The cache tiers held something older: drop it.
                    self.storage
                        .cache()
                        .after_write::<E>(&self.storage, tenant, id, None)
                        .await;
                    return Ok(Some(e));
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    component: Component::Mongodb,
                    operation: "causal read (waiting for the version the token requires)",
                    after: wait,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A token requiring at least `entity`'s version, to hand to later requests.
    pub fn causal_token(&self, tenant: &TenantId, entity: &E) -> crate::consistency::CausalToken {
        crate::consistency::CausalToken::of(tenant, entity)
    }

    /// The entity with this id, or [`Error::NotFound`].
    pub async fn get(&self, tenant: &TenantId, id: &E::Id) -> Result<E> {
        self.find_by_id(tenant, id)
            .await?
            .ok_or_else(|| self.not_found(id))
    }

    /// Whether an entity with this id exists in this tenant.
    pub async fn exists(&self, tenant: &TenantId, id: &E::Id) -> Result<bool> {
        let filter = self.id_filter(tenant, id)?;
        let n = self
            .bounded("exists", self.docs.count_documents(filter).limit(1))
            .await?
            .map_err(|e| Error::mongo(self.op("exists"), e))?;
        Ok(n > 0)
    }

    /// How many entities of this tenant match `filter`.
    pub async fn count(&self, tenant: &TenantId, filter: Filter<E>) -> Result<u64> {
        self.query(tenant).filter(filter).count().await
    }

    /// A query over this tenant's entities.
    pub fn query(&self, tenant: &TenantId) -> Query<'_, E> {
        Query::new(self, tenant.clone())
    }

    /// Applies `patch` to the entity with this id and returns it as it is afterwards, or `None`
    /// if there is none. The version field, if any, is incremented. Unconditional: use
    /// [`update_checked`](Self::update_checked) to fail when someone else wrote first.
    pub async fn update<P: Patch<Entity = E>>(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        patch: P,
    ) -> Result<Option<E>> {
        let set = self.patch_set(&patch)?;
        if E::META.version_field.is_none() && set.is_empty() {
            return self.find_by_id(tenant, id).await;
        }
        let r = if E::META.version_field.is_some() {
            versioned::update_latest(self, tenant, id, set).await
        } else {
            let filter = self.id_filter(tenant, id)?;
            self.find_one_and_update_public("update", filter, doc! { "$set": set })
                .await
        };
        let written = r.as_ref().ok().and_then(Option::as_ref);
        self.after_write(tenant, id, &r, written).await;
        r
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
    ) -> Result<E> {
        self.require_version("update_checked")?;
        let set = self.patch_set(&patch)?;
        let r = versioned::update_at(self, tenant, id, expected_version, set).await;
        self.after_write(tenant, id, &r, r.as_ref().ok()).await;
        r
    }

    /// Replaces the stored entity with `entity`. With a version field this is optimistic: it
    /// succeeds only if the stored version equals `entity`'s, and then sets `entity`'s version
    /// to the new one; otherwise [`Error::VersionConflict`]. Without one, [`Error::NotFound`]
    /// if there is nothing to replace.
    pub async fn replace(&self, tenant: &TenantId, entity: &mut E) -> Result<()> {
        let r = if E::META.version_field.is_some() {
            versioned::replace(self, tenant, entity).await
        } else {
            self.replace_unversioned(tenant, entity).await
        };
        self.after_write(tenant, entity.id(), &r, Some(&*entity))
            .await;
        r
    }

    async fn replace_unversioned(&self, tenant: &TenantId, entity: &E) -> Result<()> {
        let doc = codec::encode(tenant, entity)?;
        let filter = self.id_filter(tenant, entity.id())?;
        let r = self
            .bounded("replace", self.docs.replace_one(filter, doc))
            .await?
            .map_err(|e| classify_write(E::META.name, self.op("replace"), e))?;
        if r.matched_count == 0 {
            return Err(self.not_found(entity.id()));
        }
        Ok(())
    }

    /// Inserts `entity`, or replaces the one with its id, without a version check.
    pub async fn upsert(&self, tenant: &TenantId, entity: &E) -> Result<Upserted> {
        let r = if E::META.outbox.is_some() {
            versioned::upsert_latest(self, tenant, entity).await
        } else {
            self.upsert_inner(tenant, entity).await
        };
        self.after_write(tenant, entity.id(), &r, Some(entity))
            .await;
        r
    }

    async fn upsert_inner(&self, tenant: &TenantId, entity: &E) -> Result<Upserted> {
        let doc = codec::encode(tenant, entity)?;
        let filter = self.id_filter(tenant, entity.id())?;
        // Two concurrent upserts of a new id can both try to insert; the unique (tenant, id)
        // index lets one win and the other, retried, replaces.
        for attempt in 0..2 {
            let r = self
                .bounded(
                    "upsert",
                    self.docs
                        .replace_one(filter.clone(), doc.clone())
                        .upsert(true),
                )
                .await?;
            match r {
                Ok(r) if r.upserted_id.is_some() => return Ok(Upserted::Inserted),
                Ok(_) => return Ok(Upserted::Replaced),
                Err(e) if attempt == 0 && crate::error::duplicate_key_message(&e).is_some() => {
                    continue
                }
                Err(e) => return Err(classify_write(E::META.name, self.op("upsert"), e)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Deletes the entity with this id: soft (hidden, kept with `_deleted_at`) when the entity
    /// declares `soft_delete`, otherwise removed. Returns whether there was one.
    pub async fn delete(&self, tenant: &TenantId, id: &E::Id) -> Result<bool> {
        let r = if E::META.outbox.is_some() {
            versioned::delete_latest(self, tenant, id).await
        } else {
            self.delete_inner(tenant, id).await
        };
        self.after_write(tenant, id, &r, None).await;
        r
    }

    async fn delete_inner(&self, tenant: &TenantId, id: &E::Id) -> Result<bool> {
        let filter = self.id_filter(tenant, id)?;
        if E::META.soft_delete {
            let r = self
                .bounded(
                    "delete",
                    self.docs.update_one(
                        filter,
                        doc! { "$set": { DELETED_AT_FIELD: mongodb::bson::DateTime::now() } },
                    ),
                )
                .await?
                .map_err(|e| Error::mongo(self.op("soft delete"), e))?;
            return Ok(r.matched_count > 0);
        }
        let r = self
            .bounded("delete", self.docs.delete_one(filter))
            .await?
            .map_err(|e| Error::mongo(self.op("delete"), e))?;
        Ok(r.deleted_count > 0)
    }

    /// Removes the document with this id for good, soft-deleted or not.
    pub async fn purge(&self, tenant: &TenantId, id: &E::Id) -> Result<bool> {
        let mut filter = self.id_filter(tenant, id)?;
        filter.remove(DELETED_AT_FIELD);
        let r = self
            .bounded("purge", self.docs.delete_one(filter))
            .await
            .and_then(|r| r.map_err(|e| Error::mongo(self.op("purge"), e)))
            .map(|r| r.deleted_count > 0);
        self.after_write(tenant, id, &r, None).await;
        r
    }

    /// Cross-tenant reads for operators and migrations. Loudly named on purpose: nothing a
    /// tenant-facing request does should need it.
    pub fn unscoped_admin_across_all_tenants(&self) -> UnscopedAdmin<'_, E> {
        UnscopedAdmin { repo: self }
    }

    /// Queues a patch (any model; the default for `eventual` entities' updates is direct,
    /// since [`update`](Self::update) returns the result). Applied in queue order after the
    /// writes queued before it; the version field is not touched.
    pub async fn queue_update<P: Patch<Entity = E>>(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        patch: P,
    ) -> Result<()>
    where
        E: crate::entity::Queueable,
    {
        let set = self.patch_set(&patch)?;
        let op = Op::Update {
            id: codec::id_to_bson::<E>(id)?,
            set,
        };
        self.storage
            .write_behind()
            .enqueue::<E>(&self.storage, tenant, vec![op])
            .await?;
        self.after_queued(tenant, id, None).await;
        Ok(())
    }

    /// Queues an insert-or-replace of `entity`.
    pub async fn queue_upsert(&self, tenant: &TenantId, entity: &E) -> Result<()>
    where
        E: crate::entity::Queueable,
    {
        let op = Op::Upsert {
            id: codec::id_to_bson::<E>(entity.id())?,
            doc: codec::encode(tenant, entity)?,
        };
        self.storage
            .write_behind()
            .enqueue::<E>(&self.storage, tenant, vec![op])
            .await?;
        self.after_queued(tenant, entity.id(), Some(entity)).await;
        Ok(())
    }

    /// Queues a delete (soft where the entity declares it).
    pub async fn queue_delete(&self, tenant: &TenantId, id: &E::Id) -> Result<()>
    where
        E: crate::entity::Queueable,
    {
        let op = Op::Delete {
            id: codec::id_to_bson::<E>(id)?,
        };
        self.storage
            .write_behind()
            .enqueue::<E>(&self.storage, tenant, vec![op])
            .await?;
        self.after_queued(tenant, id, None).await;
        Ok(())
    }

    // ---- shared pieces -------------------------------------------------------------------

    /// Whether writes through this repository go through the write-behind queue.
    fn queued(&self) -> bool {
        self.consistency == Consistency::Eventual
    }

    /// After a write was queued: a `write_behind` cache puts the new value now; any other
    /// cache drops the entry (the flusher drops it again once the write is applied).
    async fn after_queued(&self, tenant: &TenantId, id: &E::Id, written: Option<&E>) {
        let Some(spec) = E::META.cache.as_ref() else {
            return;
        };
        let written =
            written.filter(|_| spec.strategy == crate::entity::CacheStrategy::WriteBehind);
        self.storage
            .cache()
            .after_write::<E>(&self.storage, tenant, id, written)
            .await;
    }

    /// Keeps the cache right after a write attempt: on success (and when the outcome is
    /// unknown: a timeout or a driver error) the entry is invalidated, or written through.
    /// Errors raised before anything was sent (tenant mismatch, conflicts, duplicates) leave
    /// the cache alone.
    pub(crate) async fn after_write<T>(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        outcome: &Result<T>,
        written: Option<&E>,
    ) {
        if E::META.cache.is_none() {
            return;
        }
        let touched = match outcome {
            Ok(_) => true,
            Err(e) => matches!(e, Error::Timeout { .. } | Error::Mongo { .. }),
        };
        if touched {
            let written = if outcome.is_ok() { written } else { None };
            self.storage
                .cache()
                .after_write::<E>(&self.storage, tenant, id, written)
                .await;
        }
    }

    /// `findAndModify` returning the document after the update, secret fields left out: by
    /// projection where the server supports it there, else stripped here.
    pub(crate) async fn find_one_and_update_public(
        &self,
        operation: &'static str,
        filter: Document,
        update: Document,
    ) -> Result<Option<E>> {
        let classify = |e| classify_write(E::META.name, self.op(operation), e);
        let projection = codec::projection(E::META, false);
        if projection.is_none() || self.storage.capabilities().find_and_modify_projection {
            let mut modify = self
                .typed
                .find_one_and_update(filter, update)
                .return_document(ReturnDocument::After);
            if let Some(p) = projection {
                modify = modify.projection(p);
            }
            return self.bounded(operation, modify).await?.map_err(classify);
        }
        let doc = self
            .bounded(
                operation,
                self.docs
                    .find_one_and_update(filter, update)
                    .return_document(ReturnDocument::After),
            )
            .await?
            .map_err(classify)?;
        doc.map(|d| codec::decode_projected(d, false)).transpose()
    }

    pub(crate) fn docs(&self) -> &Collection<Document> {
        &self.docs
    }

    pub(crate) fn typed(&self) -> &Collection<E> {
        &self.typed
    }

    /// `{tenant: t, [_deleted_at: null]}`: the scope every call starts from.
    pub(crate) fn tenant_filter(&self, tenant: &TenantId) -> Document {
        let mut d = doc! { E::META.tenant_field: tenant.as_str() };
        if E::META.soft_delete {
            d.insert(DELETED_AT_FIELD, Bson::Null);
        }
        d
    }

    pub(crate) fn id_filter(&self, tenant: &TenantId, id: &E::Id) -> Result<Document> {
        let mut d = self.tenant_filter(tenant);
        d.insert(E::META.id_field, codec::id_to_bson::<E>(id)?);
        Ok(d)
    }

    /// The tenant scope AND a user filter, which may not name the tenant field.
    pub(crate) fn scoped(&self, tenant: &TenantId, user: Document) -> Result<Document> {
        if codec::mentions_field(&user, E::META.tenant_field) {
            return Err(Error::TenantFilter {
                entity: E::META.name,
                field: E::META.tenant_field,
            });
        }
        let scope = self.tenant_filter(tenant);
        if user.is_empty() {
            return Ok(scope);
        }
        if user.keys().any(|k| scope.contains_key(k)) {
            return Ok(doc! { "$and": [scope, user] });
        }
        let mut d = scope;
        d.extend(user);
        Ok(d)
    }

    fn patch_set<P: Patch<Entity = E>>(&self, patch: &P) -> Result<Document> {
        let mut w = PatchWriter::new(E::META.name);
        patch.write(&mut w)?;
        Ok(w.into_document())
    }

    fn require_version(&self, op: &'static str) -> Result<()> {
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

    pub(crate) fn not_found(&self, id: &E::Id) -> Error {
        Error::NotFound {
            entity: E::META.name,
            id: codec::id_text::<E>(id),
        }
    }

    pub(crate) fn op(&self, what: &str) -> String {
        format!("{what} {}.{}", E::META.database, E::META.collection)
    }

    /// Bounds one driver call by `mongodb.socket_timeout` (the driver has no socket timeout).
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        f: impl std::future::IntoFuture<Output = T>,
    ) -> Result<T> {
        let after = self.storage.config().mongodb.socket_timeout;
        tokio::time::timeout(after, f.into_future())
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Mongodb,
                operation,
                after,
            })
    }
}

/// Reads across tenants: see [`Repository::unscoped_admin_across_all_tenants`].
#[derive(Debug)]
pub struct UnscopedAdmin<'r, E: Entity> {
    repo: &'r Repository<E>,
}

impl<E: Entity> UnscopedAdmin<'_, E> {
    /// Entities of every tenant matching `filter` (secret fields left out).
    pub async fn find(&self, filter: Filter<E>) -> Result<Vec<E>> {
        use futures::TryStreamExt;
        let mut f = filter.into_document()?;
        if E::META.soft_delete {
            f.insert(DELETED_AT_FIELD, Bson::Null);
        }
        let r = self.repo;
        let mut find = r.typed.find(f);
        if let Some(p) = codec::projection(E::META, false) {
            find = find.projection(p);
        }
        let cursor = r
            .bounded("unscoped find", find)
            .await?
            .map_err(|e| Error::mongo(r.op("unscoped find"), e))?;
        r.bounded("unscoped find", cursor.try_collect())
            .await?
            .map_err(|e| Error::mongo(r.op("unscoped find"), e))
    }

    /// How many entities all tenants hold.
    pub async fn count_all(&self) -> Result<u64> {
        let r = self.repo;
        let f = if E::META.soft_delete {
            doc! { DELETED_AT_FIELD: Bson::Null }
        } else {
            Document::new()
        };
        r.bounded("unscoped count", r.docs.count_documents(f))
            .await?
            .map_err(|e| Error::mongo(r.op("unscoped count"), e))
    }

    /// The tenants that have at least one entity.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        let r = self.repo;
        let values = r
            .bounded(
                "distinct tenants",
                r.docs.distinct(E::META.tenant_field, doc! {}),
            )
            .await?
            .map_err(|e| Error::mongo(r.op("distinct tenants"), e))?;
        let mut out: Vec<String> = values
            .into_iter()
            .filter_map(|b| b.as_str().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }
}
