//! The executor: [`Repository<E>`], which every generated repository delegates to.
//!
//! - `writes.rs`: the typed write calls, each one encode, one `Pipeline::write` call, one
//!   decode. The pipeline (`pipeline.rs`) is the one function every write goes through; its
//!   steps live in `versions.rs` (version transitions and claims), `events.rs` and
//!   `transaction.rs` (outbox records with the write), `apply.rs` (the driver call).
//! - `reads.rs`: by id (through the cache), causal reads, counts; `query.rs`, `filter.rs`,
//!   `page.rs`: the typed query builder and keyset paging.
//! - `queue.rs`: the `queue_*` calls, and the pipeline the write-behind flusher applies with.
//! - `admin.rs`: reads across tenants, loudly named.
//!
//! Generated code adds only types: `UserRepository` derefs to `Repository<User>`.

mod admin;
mod apply;
mod events;
mod filter;
mod page;
mod patch;
pub(crate) mod pipeline;
mod query;
mod queue;
mod reads;
mod transaction;
pub(crate) mod upgrade;
mod versions;
mod writes;

use std::marker::PhantomData;

use mongodb::bson::{Bson, Document};

use crate::consistency::Consistency;
use crate::document;
use crate::entity::{Entity, EntityMeta};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tenant::TenantId;

pub use admin::UnscopedAdmin;
pub use filter::{Field, FieldPath, Filter, Sort};
pub use page::{Cursor, Page, PageRequest};
pub use patch::{patch_document, Patch, PatchWriter};
pub use query::Query;
pub use versions::CLAIM_LEASE;
pub use writes::{InsertManyReport, Upserted};

use pipeline::Pipeline;

/// The generic repository of entity `E`: tenant-scoped CRUD, queries and paging.
///
/// Obtain one through the generated type (`UserRepository::new(&storage)`, which derefs to
/// `Repository<User>`) or directly with [`Repository::new`].
pub struct Repository<E: Entity> {
    storage: Storage,
    pipeline: Pipeline,
    _entity: PhantomData<fn() -> E>,
}

impl<E: Entity> Clone for Repository<E> {
    fn clone(&self) -> Self {
        Repository {
            storage: self.storage.clone(),
            pipeline: self.pipeline.clone(),
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

impl<E: Entity> Repository<E> {
    /// The repository of `E` on `storage`'s pools, with `E`'s consistency model applied to
    /// every call.
    pub fn new(storage: &Storage) -> Self {
        let pipeline = Pipeline::new(
            E::META,
            E::META.consistency,
            storage.connections(),
            storage.cache_handle(),
            Some(storage.queue_handle()),
        );
        storage.register(E::META);
        if E::META.outbox.is_none() {
            storage
                .write_behind()
                .register(E::META, queue::applier(&pipeline));
        }
        Self::from_pipeline(storage.clone(), pipeline)
    }

    /// [`new`](Self::new), failing with an [`Error::Config`] that names
    /// the entity and the topic when `E`'s `outbox(topic = ...)` is not declared in
    /// `kafka.topics` and `kafka.undeclared_topics = "error"` (the default). `new` makes the
    /// repository anyway, and each write that records an event then fails with that error.
    pub fn try_new(storage: &Storage) -> crate::Result<Self> {
        if let Some(outbox) = &E::META.outbox {
            storage
                .connections()
                .check_topic(&format!("entity {}", E::META.name), outbox.topic)?;
        }
        Ok(Self::new(storage))
    }

    fn from_pipeline(storage: Storage, pipeline: Pipeline) -> Self {
        Repository {
            storage,
            pipeline,
            _entity: PhantomData,
        }
    }

    /// This repository with another consistency model for the calls made through it, e.g. a
    /// `strong` read of an `eventual` entity, or a direct (unqueued) insert:
    /// `audit.with_consistency(Consistency::Strong).insert(&t, &entry)`.
    pub fn with_consistency(&self, consistency: Consistency) -> Self {
        Self::from_pipeline(
            self.storage.clone(),
            self.pipeline.with_consistency(consistency),
        )
    }

    /// The consistency model calls through this repository follow.
    pub fn consistency(&self) -> Consistency {
        self.pipeline.consistency()
    }

    /// The storage handle.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The static description of `E`.
    pub fn meta(&self) -> &'static EntityMeta {
        E::META
    }

    // ---- shared pieces -------------------------------------------------------------------

    pub(crate) fn docs(&self) -> &crate::backend::Coll {
        self.pipeline.docs()
    }

    /// `{tenant: t, [_deleted_at: null]}`: the scope every call starts from.
    pub(crate) fn tenant_filter(&self, tenant: &TenantId) -> Document {
        self.pipeline.tenant_filter(tenant, false)
    }

    /// `{_id: <tenant>:<id>}`: see [`Pipeline::key_filter`].
    pub(crate) fn key_filter(&self, tenant: &TenantId, id: &E::Id) -> Result<Document> {
        Ok(self
            .pipeline
            .key_filter(tenant, &document::id_to_bson::<E>(id)?))
    }

    /// The tenant scope AND a user filter, which may not name the tenant field.
    pub(crate) fn scoped(&self, tenant: &TenantId, user: Document) -> Result<Document> {
        if document::mentions_field(&user, E::META.tenant_field) {
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
            return Ok(mongodb::bson::doc! { "$and": [scope, user] });
        }
        let mut d = scope;
        d.extend(user);
        Ok(d)
    }

    pub(crate) fn not_found(&self, id: &E::Id) -> Error {
        match document::id_to_bson::<E>(id) {
            Ok(id) => self.pipeline.not_found(&id),
            Err(e) => e,
        }
    }

    pub(crate) fn op(&self, what: &str) -> String {
        self.pipeline.op(what)
    }

    /// Bounds one driver call by `mongodb.socket_timeout` (the driver has no socket timeout).
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        f: impl std::future::IntoFuture<Output = T>,
    ) -> Result<T> {
        self.pipeline.bounded(operation, f).await
    }

    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Runs read `f` as one repository call: its span, trace context and metrics (writes get
    /// theirs from the pipeline).
    pub(crate) fn observed<'f, T: 'f>(
        &self,
        operation: &'static str,
        tenant: &TenantId,
        f: impl std::future::Future<Output = Result<T>> + 'f,
    ) -> impl std::future::Future<Output = Result<T>> + 'f {
        crate::telemetry::spans::repository_call(
            E::META,
            operation,
            tenant,
            self.pipeline.consistency(),
            f,
        )
    }
}

/// The id of `entity` as stored.
fn id_of<E: Entity>(entity: &E) -> Result<Bson> {
    document::id_to_bson::<E>(entity.id())
}
