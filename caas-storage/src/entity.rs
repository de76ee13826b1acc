//! The [`Entity`] trait that `#[derive(Repository)]` implements, and the static descriptions it
//! is made of.
//!
//! Everything here is data: names, index specs, policies. Behaviour lives in the executor
//! ([`Repository`](crate::repo::Repository)), which reads these constants; the generated code
//! only fills them in.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::consistency::Consistency;
use crate::index::{IndexSpec, IndexTarget};

/// A struct stored by caas-storage. Implemented by `#[derive(Repository)]`; implementing it by
/// hand is possible but the derive checks the rules below at compile time.
///
/// Rules the derive enforces: exactly one id field and one tenant field (`String`); index keys
/// name existing fields; the version field is an integer; secret fields can be left out of a
/// read (`Option` or `#[serde(default)]`).
pub trait Entity: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The id type (the type of the `#[repository(id)]` field).
    type Id: Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static;

    /// Static description of the entity.
    const META: &'static EntityMeta;

    /// The id of this value.
    fn id(&self) -> &Self::Id;

    /// The tenant this value belongs to.
    fn tenant(&self) -> &str;

    /// The optimistic-locking version, when the entity has a `#[repository(version)]` field.
    fn version(&self) -> Option<u64> {
        None
    }

    /// Sets the version field (no-op without one). Used after a versioned write.
    fn set_version(&mut self, _version: u64) {}

    /// Sets the `updated_at` field (no-op without one). Used after a write that stamped it.
    fn set_updated_at(&mut self, _at: crate::bson::DateTime) {}

    /// A copy for the in-process cache tier. The derive implements it (with `Clone`) for
    /// entities that declare `cache(local(...))`; `None` keeps the entity out of that tier.
    fn local_cache_clone(&self) -> Option<Self> {
        None
    }
}

/// An entity whose writes may go through the write-behind queue: `queue_update`, `queue_upsert`,
/// `queue_delete`, and every insert of an `eventual` entity. `#[derive(Repository)]` implements
/// it for every entity without an `outbox(...)` and without `secret` fields: queued writes
/// cannot record events atomically with the write, and the queue keeps whole documents in Redis
/// streams, where secret fields must never go (they must not leave the database).
#[diagnostic::on_unimplemented(
    message = "writes of `{Self}` cannot be queued: `{Self}` is not `Queueable`",
    label = "needs `{Self}: Queueable`",
    note = "`#[derive(Repository)]` implements `Queueable` only for entities without \
            `outbox(...)` and without `secret` fields: a queued write cannot record its event \
            atomically, and the queue keeps whole documents in Redis, where secret fields must \
            not go",
    note = "write directly instead (`update`, `upsert`, `delete`), which records the event and \
            keeps secret fields in the database"
)]
pub trait Queueable: Entity {}

/// An entity whose stored documents may be changed or removed: `update`, `update_checked`,
/// `replace`, `upsert`, `delete`, `purge`, `Query::delete` and the `queue_*` writes.
/// `#[derive(Repository)]` implements it for every entity not declared `append_only`; an
/// append-only entity (an audit trail, a ledger) can only be inserted and read.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is `append_only`: its documents cannot be changed or removed",
    label = "`{Self}` is not `Mutable`",
    note = "`#[repository(append_only)]` entities get only inserts and reads; `update`, \
            `update_checked`, `replace`, `upsert`, `delete`, `purge`, `Query::delete` and the \
            `queue_*` writes need `Mutable`",
    note = "record a change as a new entry instead, or remove `append_only` if entries must change"
)]
pub trait Mutable: Entity {}

/// Everything the executor needs to know about an entity type, built at compile time.
#[derive(Debug)]
pub struct EntityMeta {
    /// The Rust type name, e.g. `User`; used in errors, cache keys and event types.
    pub name: &'static str,
    /// MongoDB database.
    pub database: &'static str,
    /// MongoDB collection.
    pub collection: &'static str,
    /// Stored name of the id field.
    pub id_field: &'static str,
    /// Stored name of the tenant field.
    pub tenant_field: &'static str,
    /// Stored name of the version field, if any.
    pub version_field: Option<&'static str>,
    /// Stored name of the `created_at` field, if any: set when a document is inserted.
    pub created_at_field: Option<&'static str>,
    /// Stored name of the `updated_at` field, if any: set by every write.
    pub updated_at_field: Option<&'static str>,
    /// Stored names of every field, in declaration order.
    pub fields: &'static [&'static str],
    /// Stored names of `secret` fields: left out of default projections, caches and events.
    pub secret_fields: &'static [&'static str],
    /// Declared indexes (the tenant key already prepended where it applies).
    pub indexes: &'static [IndexSpec],
    /// Schema version written into every document (`_schema_version`).
    pub schema_version: u32,
    /// The steps that take a stored document from each older version to the next, in order:
    /// `schema_steps[k]` goes from version `k + 1` to `k + 2` (the derive checks the chain is
    /// complete: one step from each version below `schema_version`). Reads run documents
    /// stored at an older version through them before decoding; `Storage::migrate` rewrites
    /// stored documents with them.
    pub schema_steps: &'static [SchemaStep],
    /// Declared consistency model.
    pub consistency: Consistency,
    /// Whether deletes are soft (`_deleted_at` set, document kept and hidden from reads).
    pub soft_delete: bool,
    /// Whether the entity is `append_only`: inserted and read, never changed or removed (it is
    /// then not [`Mutable`]).
    pub append_only: bool,
    /// Cache policy, if the entity is cached.
    pub cache: Option<CacheSpec>,
    /// Outbox policy, if writes record events.
    pub outbox: Option<OutboxSpec>,
}

impl EntityMeta {
    /// The unique index every entity gets on (tenant, id).
    pub fn primary_index_name(&self) -> String {
        self.index_target().primary_name()
    }

    /// The indexes its collection should have.
    pub(crate) fn index_target(&self) -> IndexTarget<'_> {
        IndexTarget {
            entity: self.name,
            database: self.database,
            collection: self.collection,
            tenant_field: self.tenant_field,
            id_field: self.id_field,
            indexes: self.indexes,
        }
    }

    /// Whether `field` is a stored field of this entity.
    pub fn has_field(&self, field: &str) -> bool {
        self.fields.contains(&field)
    }

    /// The step from version `from` to `from + 1`, if the chain has one.
    pub fn schema_step(&self, from: u32) -> Option<&'static SchemaStep> {
        self.schema_steps.iter().find(|s| s.from == from)
    }

    /// The TTL indexes: (field, documents expire this long after its date).
    pub fn ttl_indexes(&self) -> impl Iterator<Item = (&'static str, Duration)> + '_ {
        self.indexes
            .iter()
            .filter_map(|ix| match (ix.ttl, ix.keys) {
                (Some(ttl), [key]) => Some((key.field, ttl)),
                _ => None,
            })
    }
}

/// What a schema step returns: `Err` with any error (`?` works on BSON access errors, and a
/// string becomes one with `.into()`), reported as
/// [`Error::SchemaStep`](crate::Error::SchemaStep) with the entity, the id and the versions.
pub type StepResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A schema step: changes a stored document (its fields as stored, without `_id` and the
/// framework's `_` fields, which the runtime keeps) from one version to the next, in place.
///
/// Steps run on every read of an older document, so they must be pure functions of the
/// document: no I/O, no clock, the same output for the same input. A step may see a document
/// without its secret fields (reads that leave them out upgrade what they read), so it must not
/// fail when a secret field is absent.
pub type StepFn = fn(&mut crate::bson::Document) -> StepResult;

/// One step of an entity's schema chain, `from -> from + 1`, declared with
/// `#[migrate(from = 1, up = v1_to_v2, down = v2_to_v1)]` next to `schema_version`.
#[derive(Debug, Clone, Copy)]
pub struct SchemaStep {
    /// The version the step upgrades from; it upgrades to `from + 1`.
    pub from: u32,
    /// The upgrade.
    pub up: StepFn,
    /// The way back (`to -> from`), if declared: used by rollbacks.
    pub down: Option<StepFn>,
    /// The step as written in the attribute, e.g. `profile_v1_to_v2` (errors and the ledger
    /// name it).
    pub name: &'static str,
    /// What the migration ledger records for the step: a hash of the entity, the versions and
    /// the function named. An applied step whose checksum changes is refused by
    /// `Storage::migrate`.
    pub checksum: &'static str,
}

impl SchemaStep {
    /// The version the step upgrades to.
    pub fn to(&self) -> u32 {
        self.from + 1
    }
}

/// `f` as a [`StepFn`]: what the derive wraps each step in, so a function with another
/// signature is a type error at the attribute that names it.
#[doc(hidden)]
pub const fn step_fn(f: StepFn) -> StepFn {
    f
}

/// How a cached entity is written to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheStrategy {
    /// Read through the cache, load on miss, invalidate on write (the default).
    CacheAside,
    /// Writes update the cache together with the database.
    WriteThrough,
    /// Writes are acknowledged once durably queued and applied to the database in batches.
    WriteBehind,
}

/// The `cache(...)` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSpec {
    /// Time to live of a Redis entry.
    pub ttl: Duration,
    /// Random extra TTL, up to this much, so entries written together do not expire together.
    pub jitter: Duration,
    /// Write strategy.
    pub strategy: CacheStrategy,
    /// The optional in-process tier.
    pub local: Option<LocalCacheSpec>,
}

/// The in-process cache tier: `cache(local(ttl = "5s", capacity = 10_000))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCacheSpec {
    /// Time to live of an in-process entry.
    pub ttl: Duration,
    /// Most entries held.
    pub capacity: u64,
}

/// The `outbox(...)` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSpec {
    /// Kafka topic the relay publishes to.
    pub topic: &'static str,
    /// Event type recorded on insert, if inserts record events.
    pub insert: Option<&'static str>,
    /// Event type recorded on update and replace, if they record events.
    pub update: Option<&'static str>,
    /// Event type recorded on delete, if deletes record events.
    pub delete: Option<&'static str>,
}
