//! The write pipeline: every write of every repository goes through [`Pipeline::write`], in
//! the same fixed steps.
//!
//! 1. **Scope and encode.** The typed layer encodes the entity once; here every document is
//!    checked against the tenant and id it is written for, the schema version is stamped (a
//!    patch too: it applies only to a document at the version it was written for, and an
//!    older document is rewritten at the current version first, `upgrade.rs`), and declared
//!    timestamps (`created_at`, `updated_at`) are kept current.
//! 2. **Version transition** ([`versions`](super::versions)). A versioned document moves from
//!    the version it is at (given by the caller, or read) to the next, under a claim where the
//!    server's conditional updates are not atomic. Calls that do not name a version follow the
//!    latest one, retrying past concurrent writers.
//! 3. **Events** ([`events`](super::events)). The write's outbox records are recorded with
//!    it: in its transaction, or by the transaction-free protocol.
//! 4. **Apply** ([`apply`](super::apply)), direct, or queued: inserts of `eventual` entities
//!    and the `queue_*` calls go to the write-behind queue, whose flusher later hands each
//!    write back to this same pipeline to apply.
//! 5. **Cache**: the entries of what was written are invalidated (or, write-through, replaced)
//!    before the call returns; a write whose outcome is unknown invalidates too.
//! 6. **Observe** ([`telemetry::spans`](crate::telemetry)): one `caas_storage.repository`
//!    span per write (info level, OpenTelemetry database fields), run as the call's
//!    [`TraceContext`](crate::trace::TraceContext) (which the events of step 3 carry to Kafka),
//!    and the repository metrics with its outcome and duration.
//!
//! The pipeline is type-free (documents and the entity's static [`EntityMeta`]): the typed
//! repository encodes and decodes around it, and the write-behind flusher drives it with the
//! documents it queued.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::CollectionOptions;

use crate::backend::Coll;
use crate::cache::CacheLayer;
use crate::connection::Connections;
use crate::consistency::Consistency;
use crate::document::{
    self, DELETED_AT_FIELD, INCARNATION_FIELD, QUEUE_POSITION_FIELD, SCHEMA_VERSION_FIELD,
};
use crate::entity::{CacheStrategy, EntityMeta};
use crate::error::{Component, Error, Result};
use crate::outbox::{EventEnvelope, OutboxStore, WriteKind};
use crate::repo::apply::{RawOutcome, RawWrite};
use crate::repo::events::{self, EventSpec};
use crate::repo::versions::{self, Claim};
use crate::schema;
use crate::telemetry::spans;
use crate::tenant::TenantId;
use crate::write_behind::{Op, WriteBehind};

/// How many times a write that follows the latest version tries past concurrent writers.
const ATTEMPTS: u32 = 32;

/// What a write does, before the version transition decides its exact form.
#[derive(Debug, Clone)]
pub(crate) enum Intent {
    /// New documents: one, or a batch.
    Insert(Vec<Document>),
    /// `$set` on one document. `expected`: the version it must be at; `None` follows the
    /// latest.
    Patch {
        id: Bson,
        set: Document,
        expected: Option<u64>,
    },
    /// The whole document. `expected` as for patches; entities without a version field give
    /// `None` and must have a document to replace.
    Replace {
        id: Bson,
        doc: Document,
        expected: Option<u64>,
    },
    /// Insert, or replace whatever version is stored.
    Upsert { id: Bson, doc: Document },
    /// Delete (soft where the entity declares it); `purge` removes the document for good,
    /// soft-deleted or not.
    Delete { id: Bson, purge: bool },
    /// Delete every document `filter` matches (already scoped to the tenant).
    DeleteMatching { filter: Document },
}

impl Intent {
    fn id(&self) -> Option<&Bson> {
        match self {
            Intent::Patch { id, .. }
            | Intent::Replace { id, .. }
            | Intent::Upsert { id, .. }
            | Intent::Delete { id, .. } => Some(id),
            Intent::Insert(_) | Intent::DeleteMatching { .. } => None,
        }
    }
}

/// Where a write is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// As the consistency model says: inserts of `eventual` entities are queued, everything
    /// else is applied now.
    ByModel,
    /// Through the write-behind queue (the `queue_*` calls).
    Queue,
}

/// One write.
#[derive(Debug)]
pub(crate) struct Write<'a> {
    /// The call's name, for errors and spans (`insert`, `update_checked`, ...).
    pub operation: &'static str,
    /// The tenant every document of the write belongs to.
    pub tenant: &'a TenantId,
    /// What to write.
    pub intent: Intent,
    /// Events the caller adds to the write's own.
    pub extra_events: &'a [EventEnvelope],
    /// Where it is applied.
    pub route: Route,
    /// The write's time: what declared timestamps are set to ([`Pipeline::now`] when the call
    /// made it).
    pub at: DateTime,
    /// For a queued write being applied: its queue position ([`document::queue_position`]).
    /// The write then changes only documents at an earlier position, and records its own.
    pub queued_at: Option<String>,
}

impl<'a> Write<'a> {
    /// A write routed by the model, with no extra events, timed `at` ([`Pipeline::now`]).
    pub(crate) fn new(
        operation: &'static str,
        tenant: &'a TenantId,
        intent: Intent,
        at: DateTime,
    ) -> Self {
        Write {
            operation,
            tenant,
            intent,
            extra_events: &[],
            route: Route::ByModel,
            at,
            queued_at: None,
        }
    }
}

/// A write's context, once its intent is taken apart.
struct Call<'a> {
    operation: &'static str,
    tenant: &'a TenantId,
    extra_events: &'a [EventEnvelope],
    at: DateTime,
    queued_at: Option<String>,
}

/// What a write did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// One result per inserted document, in order.
    Inserted(Vec<Result<()>>),
    /// The document after a patch (secret fields included), or `None` when none matched.
    Patched(Option<Document>),
    /// A replace happened; the version the document is at now, for versioned entities.
    Replaced(Option<u64>),
    /// An upsert happened; whether it inserted.
    Upserted { inserted: bool },
    /// How many documents a delete removed (or soft-deleted).
    Deleted(u64),
    /// Acknowledged by the write-behind queue; applied later.
    Queued,
}

/// What the cache step needs to know of one written document.
struct Effect {
    id: Bson,
    /// The document as stored, when known.
    written: Option<Document>,
    /// The version a delete took the document to.
    deleted_at: Option<u64>,
}

/// The executor of one entity's writes under one consistency model. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pipeline {
    meta: &'static EntityMeta,
    consistency: Consistency,
    conn: Connections,
    docs: Coll,
    cache: Arc<CacheLayer>,
    /// The write-behind queue; `None` in the pipeline the flusher applies queued writes with.
    queue: Option<Arc<WriteBehind>>,
    outbox: Option<OutboxStore>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("entity", &self.meta.name)
            .field("consistency", &self.consistency)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// The pipeline of `meta`'s writes under `consistency`.
    pub(crate) fn new(
        meta: &'static EntityMeta,
        consistency: Consistency,
        conn: &Connections,
        cache: Arc<CacheLayer>,
        queue: Option<Arc<WriteBehind>>,
    ) -> Self {
        let options = CollectionOptions::builder()
            .write_concern(consistency.write_concern())
            .read_concern(consistency.read_concern())
            .selection_criteria(consistency.read_preference())
            .build();
        let docs = conn.collection(meta.database, meta.collection, options);
        if let Some(memory) = conn.memory() {
            memory.declare_indexes(&conn.database_name(meta.database), meta);
        }
        Pipeline {
            meta,
            consistency,
            docs,
            cache,
            queue,
            outbox: meta
                .outbox
                .is_some()
                .then(|| OutboxStore::new(conn, meta.database)),
            conn: conn.clone(),
        }
    }

    /// The same pipeline under another consistency model.
    pub(crate) fn with_consistency(&self, consistency: Consistency) -> Self {
        Pipeline::new(
            self.meta,
            consistency,
            &self.conn,
            self.cache.clone(),
            self.queue.clone(),
        )
    }

    /// The same pipeline without a queue: every write applied now (for the flusher).
    pub(crate) fn direct_only(&self) -> Self {
        let mut p = self.clone();
        p.queue = None;
        p
    }

    pub(crate) fn meta(&self) -> &'static EntityMeta {
        self.meta
    }

    pub(crate) fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// Now, by the runtime's clock (which tests move in memory): the time writes are stamped
    /// with.
    pub(crate) fn now(&self) -> DateTime {
        DateTime::from_millis(self.conn().clock().now_ms())
    }

    pub(crate) fn conn(&self) -> &Connections {
        &self.conn
    }

    pub(crate) fn cache(&self) -> &CacheLayer {
        &self.cache
    }

    pub(crate) fn docs(&self) -> &Coll {
        &self.docs
    }

    pub(crate) fn outbox(&self) -> Result<&OutboxStore> {
        self.outbox.as_ref().ok_or_else(|| Error::Unsupported {
            feature: "outbox events",
            server: format!(
                "(entity {} declares no outbox(...), so this)",
                self.meta.name
            ),
        })
    }

    /// The one write function. See the module docs for its steps.
    pub(crate) async fn write(&self, w: Write<'_>) -> Result<Outcome> {
        let (operation, tenant) = (w.operation, w.tenant);
        let steps = async move {
            let queued = self.routes_to_queue(&w);
            let (result, effects) = match self.scope(w) {
                Err(e) => (Err(e), Vec::new()),
                Ok(w) if queued => self.enqueue(w).await,
                Ok(w) => self.direct(w).await,
            };
            self.after_write(tenant, &result, effects, queued).await;
            result
        };
        // Step 6: the call's span, trace context and metrics around steps 1 to 5.
        spans::repository_call_classified(
            self.meta,
            operation,
            tenant,
            self.consistency,
            steps,
            |r| match r {
                Err(e) => Some(e.kind()),
                // A single insert's refusal is the call's error (`insert` returns it).
                Ok(Outcome::Inserted(results)) if operation == "insert" => results
                    .iter()
                    .find_map(|r| r.as_ref().err().map(Error::kind)),
                Ok(_) => None,
            },
        )
        .await
    }

    /// Step 4's routing: whether this write goes through the write-behind queue.
    fn routes_to_queue(&self, w: &Write<'_>) -> bool {
        self.queue.is_some()
            && match w.route {
                Route::Queue => true,
                Route::ByModel => {
                    self.consistency == Consistency::Eventual
                        && matches!(w.intent, Intent::Insert(_))
                }
            }
    }

    /// Step 1: every document belongs to the tenant and id it is written for; the schema
    /// version and the declared timestamps are stamped. A document or patch that carries a
    /// schema version keeps it: it was encoded by a process (say, one that queued it) with
    /// that version of the entity.
    fn scope<'a>(&self, mut w: Write<'a>) -> Result<Write<'a>> {
        let m = self.meta;
        let at = w.at;
        let check = |doc: &mut Document, id: Option<&Bson>| -> Result<()> {
            match doc.get(m.tenant_field) {
                Some(Bson::String(t)) if t == w.tenant.as_str() => {}
                found => {
                    return Err(Error::TenantMismatch {
                        entity: m.name,
                        expected: w.tenant.as_str().to_owned(),
                        found: found.map(ToString::to_string).unwrap_or_default(),
                    })
                }
            }
            match (id, doc.get(m.id_field)) {
                (_, None | Some(Bson::Null)) => {
                    return Err(Error::Codec {
                        entity: m.name,
                        direction: "encode",
                        message: format!("the document has no `{}` (its id)", m.id_field),
                    })
                }
                (Some(id), Some(found)) if found != id => {
                    return Err(Error::Codec {
                        entity: m.name,
                        direction: "encode",
                        message: format!(
                            "the document's `{}` is {} but the write is for {}",
                            m.id_field,
                            document::id_for_errors(found),
                            document::id_for_errors(id)
                        ),
                    })
                }
                _ => {}
            }
            // The key every by-id operation filters on, derived here and nowhere else (a
            // queued document's `_id` is recomputed too).
            let key = document::storage_key(
                w.tenant.as_str(),
                doc.get(m.id_field).unwrap_or(&Bson::Null),
            );
            doc.insert("_id", key);
            if !doc.contains_key(SCHEMA_VERSION_FIELD) {
                doc.insert(SCHEMA_VERSION_FIELD, schema::stamp(m.schema_version));
            }
            if let Some(u) = m.updated_at_field {
                doc.insert(u, at);
            }
            Ok(())
        };
        match &mut w.intent {
            Intent::Insert(docs) => {
                for doc in docs.iter_mut() {
                    check(doc, None)?;
                    if let Some(c) = m.created_at_field {
                        doc.insert(c, at);
                    }
                }
            }
            Intent::Replace { id, doc, .. } | Intent::Upsert { id, doc } => {
                let id = id.clone();
                check(doc, Some(&id))?;
            }
            Intent::Patch { set, .. } => {
                if !set.contains_key(SCHEMA_VERSION_FIELD) {
                    set.insert(SCHEMA_VERSION_FIELD, schema::stamp(m.schema_version));
                }
                if let Some(u) = m.updated_at_field {
                    set.insert(u, at);
                }
            }
            Intent::Delete { .. } | Intent::DeleteMatching { .. } => {}
        }
        if let Some(pos) = &w.queued_at {
            match &mut w.intent {
                Intent::Insert(docs) => {
                    for doc in docs.iter_mut() {
                        doc.insert(QUEUE_POSITION_FIELD, pos.as_str());
                    }
                }
                Intent::Replace { doc, .. } | Intent::Upsert { doc, .. } => {
                    doc.insert(QUEUE_POSITION_FIELD, pos.as_str());
                }
                Intent::Patch { set, .. } => {
                    set.insert(QUEUE_POSITION_FIELD, pos.as_str());
                }
                Intent::Delete { .. } | Intent::DeleteMatching { .. } => {}
            }
        }
        Ok(w)
    }

    /// Step 4, queued: the queue acknowledges; the flusher applies through this pipeline later.
    async fn enqueue(&self, w: Write<'_>) -> (Result<Outcome>, Vec<Effect>) {
        let Some(queue) = &self.queue else {
            return (Err(self.unsupported("queued writes")), Vec::new());
        };
        if self.meta.outbox.is_some() || !w.extra_events.is_empty() {
            // The queue cannot record events atomically with the write.
            return (
                Err(self.unsupported("queued writes of an entity with an outbox")),
                Vec::new(),
            );
        }
        if !self.meta.secret_fields.is_empty() {
            // The queue holds whole documents in Redis; secret fields do not leave MongoDB.
            return (
                Err(self.unsupported("queued writes of an entity with secret fields")),
                Vec::new(),
            );
        }
        let (ops, effects) = match w.intent {
            Intent::Insert(docs) => {
                let puts = self.puts_written();
                let effects = docs
                    .iter()
                    .map(|d| Effect {
                        id: d.get(self.meta.id_field).cloned().unwrap_or(Bson::Null),
                        written: puts.then(|| d.clone()),
                        deleted_at: None,
                    })
                    .collect();
                (docs.into_iter().map(Op::Insert).collect(), effects)
            }
            Intent::Patch {
                id,
                set,
                expected: None,
            } => (
                vec![Op::Update {
                    id: id.clone(),
                    set,
                }],
                vec![invalidate(id)],
            ),
            // Its new version is only known when applied: invalidate, never put.
            Intent::Upsert { id, doc } => (
                vec![Op::Upsert {
                    id: id.clone(),
                    doc,
                }],
                vec![invalidate(id)],
            ),
            Intent::Delete { id, purge: false } => {
                (vec![Op::Delete { id: id.clone() }], vec![invalidate(id)])
            }
            _ => {
                return (
                    Err(self.unsupported("this write through the queue")),
                    Vec::new(),
                )
            }
        };
        let r = queue.enqueue(self.meta, w.tenant, &ops).await;
        let effects = if r.is_ok() { effects } else { Vec::new() };
        (r.map(|()| Outcome::Queued), effects)
    }

    /// Steps 2 to 4, applied now.
    async fn direct(&self, w: Write<'_>) -> (Result<Outcome>, Vec<Effect>) {
        let call = Call {
            operation: w.operation,
            tenant: w.tenant,
            extra_events: w.extra_events,
            at: w.at,
            queued_at: w.queued_at.clone(),
        };
        match w.intent {
            Intent::Insert(docs) => self.insert(&call, docs).await,
            Intent::DeleteMatching { filter } => self.delete_matching(&call, filter).await,
            intent => self.single(&call, intent).await,
        }
    }

    async fn insert(&self, call: &Call<'_>, docs: Vec<Document>) -> (Result<Outcome>, Vec<Effect>) {
        let (operation, tenant, extra) = (call.operation, call.tenant, call.extra_events);
        let m = self.meta;
        let mut docs = docs;
        for d in &mut docs {
            self.stamp_new_incarnation(d);
        }
        let ids: Vec<Bson> = docs
            .iter()
            .map(|d| d.get(m.id_field).cloned().unwrap_or(Bson::Null))
            .collect();
        // Inserts create the document at the version it carries.
        let groups: Vec<_> = docs
            .iter()
            .zip(&ids)
            .map(|(d, id)| {
                events::records(
                    m,
                    tenant,
                    EventSpec {
                        id,
                        kind: WriteKind::Insert,
                        revision: m.version_field.map_or(0, |vf| document::stored_u64(d, vf)),
                        incarnation: d.get_str(INCARNATION_FIELD).ok(),
                        payload: d,
                        extra,
                        at: call.at,
                    },
                )
            })
            .collect();
        // The cache step needs the documents only where it may put them.
        let written: Vec<Option<Document>> = if self.puts_written() {
            docs.iter().cloned().map(Some).collect()
        } else {
            vec![None; docs.len()]
        };
        let r = self
            .record_and_apply(operation, groups, RawWrite::Insert(docs))
            .await;
        match r {
            Ok(RawOutcome::Inserted(results)) => {
                let effects = ids
                    .into_iter()
                    .zip(written)
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|((id, written), _)| Effect {
                        id,
                        written,
                        deleted_at: None,
                    })
                    .collect();
                (Ok(Outcome::Inserted(results)), effects)
            }
            Ok(_) => (Ok(Outcome::Inserted(Vec::new())), Vec::new()),
            Err(e) => (Err(e), ids.into_iter().map(invalidate).collect()),
        }
    }

    /// A write of one document: steps 2 to 4, again from step 2 while it follows the latest
    /// version and loses to a concurrent writer.
    async fn single(&self, w: &Call<'_>, intent: Intent) -> (Result<Outcome>, Vec<Effect>) {
        let id = intent.id().cloned().unwrap_or(Bson::Null);
        let follows_latest = self.meta.version_field.is_some()
            && match &intent {
                Intent::Patch { expected, .. } | Intent::Replace { expected, .. } => {
                    expected.is_none()
                }
                _ => true,
            };
        let mut last = None;
        let mut duplicate_retried = false;
        for attempt in 0..ATTEMPTS {
            // 2. The version transition.
            let plan = match self.plan(w, &intent).await {
                Ok(Step::Done(outcome)) => return (Ok(outcome), Vec::new()),
                Ok(Step::Write(plan)) => *plan,
                // Another writer holds the claim on this transition.
                Err(e @ Error::VersionConflict { .. }) if follows_latest => {
                    last = Some(e);
                    versions::backoff(attempt).await;
                    continue;
                }
                Err(e) => return (Err(e), Vec::new()),
            };
            // 3 and 4. The events, recorded with the write as it is applied.
            let groups = vec![match &plan.event {
                Some((kind, payload)) => events::records(
                    self.meta,
                    w.tenant,
                    EventSpec {
                        id: &id,
                        kind: *kind,
                        revision: plan.next,
                        incarnation: plan.incarnation.as_deref(),
                        payload,
                        extra: w.extra_events,
                        at: w.at,
                    },
                ),
                None => Vec::new(),
            }];
            let r = self.record_and_apply(w.operation, groups, plan.raw).await;
            if let Some(claim) = plan.claim {
                match &r {
                    // The write may still be running on the server: keep the claim until it
                    // expires, so nobody else moves the version meanwhile.
                    Err(Error::Timeout { .. } | Error::Mongo { .. }) => claim.keep(),
                    _ => claim.release().await,
                }
            }
            let lost = match r {
                Ok(raw) if raw.happened(0) => {
                    let written = match raw {
                        RawOutcome::Updated(Some(after)) => Some(after),
                        _ => plan.written,
                    };
                    let outcome = plan.shape.outcome(written.clone(), plan.next);
                    // A delete of a versioned document leaves a tombstone at its version.
                    let deleted_at = (plan.shape == Shape::Deleted && plan.expected.is_some())
                        .then_some(plan.next);
                    return (
                        Ok(outcome),
                        vec![Effect {
                            id,
                            written,
                            deleted_at,
                        }],
                    );
                }
                Ok(_) => {
                    // A patch of a document at another schema version? An older one is
                    // rewritten at the current version first, and the patch tried again.
                    if let Some(stamp) = plan.schema_guard {
                        match self.patch_schema_check(w.tenant, &id, stamp).await {
                            Ok(true) => {
                                versions::backoff(attempt).await;
                                continue;
                            }
                            Ok(false) => {}
                            Err(e) => return (Err(e), Vec::new()),
                        }
                    }
                    // Without a version in the filter the document is not there; with one,
                    // read why.
                    match match plan.expected {
                        None => self.not_found(&id),
                        expected => self.diagnose(w.tenant, &id, expected).await,
                    } {
                        e @ Error::VersionConflict { .. } if follows_latest => e,
                        Error::NotFound { .. } if plan.shape.absent_is_ok() => {
                            return (Ok(plan.shape.absent()), Vec::new())
                        }
                        e => return (Err(e), Vec::new()),
                    }
                }
                Err(e @ Error::VersionConflict { .. }) if follows_latest => e,
                // A concurrent upsert inserted first: replace it (once: a duplicate on another
                // unique index would fail every time).
                Err(e @ Error::DuplicateKey { .. })
                    if plan.shape.inserts() && !std::mem::replace(&mut duplicate_retried, true) =>
                {
                    e
                }
                Err(e) => return (Err(e), vec![invalidate(id)]),
            };
            last = Some(lost);
            versions::backoff(attempt).await;
        }
        (
            Err(last.unwrap_or_else(|| self.unsupported("this write"))),
            Vec::new(),
        )
    }

    /// Step 2: what the write is, at the version the document is at.
    async fn plan(&self, w: &Call<'_>, intent: &Intent) -> Result<Step> {
        let m = self.meta;
        let tenant = w.tenant;
        let Some(vf) = m.version_field else {
            if let Some(pos) = &w.queued_at {
                if let Some(now) = self.current(tenant, intent_id(intent), false).await? {
                    if applied(&now, pos) {
                        return Ok(Step::Done(already_applied(intent)));
                    }
                }
            }
            return Ok(Step::Write(Box::new(
                self.plan_unversioned(tenant, intent, w.at, w.queued_at.as_deref())
                    .await?,
            )));
        };
        // One round trip: a patch that names no version, of an entity that records no event,
        // where single-document updates are atomic: the version moves by `$inc` in the update.
        if let Intent::Patch {
            id,
            set,
            expected: None,
        } = intent
        {
            if m.outbox.is_none()
                && w.queued_at.is_none()
                && self.conn().capabilities().atomic_conditional_updates
            {
                let update = doc! { "$set": set.clone(), "$inc": { vf: 1_i64 } };
                let mut filter = self.id_filter(tenant, id, false);
                let schema_guard = patch_guard(&mut filter, set);
                return Ok(Step::Write(Box::new(Plan {
                    raw: RawWrite::Update { filter, update },
                    event: None,
                    written: None,
                    next: 0, // known from the document the update returns
                    expected: None,
                    incarnation: None,
                    claim: None,
                    shape: Shape::Patched,
                    schema_guard,
                })));
            }
        }
        // Where the document is now: named by the caller, or read.
        let (id, expected) = match intent {
            Intent::Patch { id, expected, .. } | Intent::Replace { id, expected, .. } => {
                (id, *expected)
            }
            Intent::Upsert { id, .. } | Intent::Delete { id, .. } => (id, None),
            // Inserts and query deletes have their own paths.
            Intent::Insert(_) | Intent::DeleteMatching { .. } => {
                return Err(self.unsupported("this write as a single-document write"))
            }
        };
        let purge = matches!(intent, Intent::Delete { purge: true, .. });
        let current = match expected {
            // The caller names the version; an outbox still needs the incarnation it is of.
            Some(v) if m.outbox.is_none() => Some(versions::Current {
                version: v,
                deleted: false,
                created_at: None,
                incarnation: None,
                queued: None,
            }),
            Some(v) => match self.current(tenant, id, purge).await? {
                Some(c) if c.version != v => {
                    return Err(Error::VersionConflict {
                        entity: m.name,
                        id: document::id_for_errors(id),
                        expected: v,
                        actual: Some(c.version),
                    })
                }
                c => c,
            },
            None => self.current(tenant, id, purge).await?,
        };
        let Some(current) = current else {
            return match intent {
                Intent::Upsert { doc, .. } => {
                    let mut doc = doc.clone();
                    if let Some(c) = m.created_at_field {
                        doc.insert(c, w.at);
                    }
                    self.stamp_new_incarnation(&mut doc);
                    Ok(Step::Write(Box::new(Plan {
                        next: document::stored_u64(&doc, vf),
                        event: Some((WriteKind::Insert, doc.clone())),
                        incarnation: document::incarnation_of(&doc),
                        raw: RawWrite::Insert(vec![doc.clone()]),
                        written: Some(doc),
                        expected: None,
                        claim: None,
                        shape: Shape::UpsertInsert,
                        schema_guard: None,
                    })))
                }
                Intent::Patch { .. } => Ok(Step::Done(Outcome::Patched(None))),
                Intent::Delete { .. } => Ok(Step::Done(Outcome::Deleted(0))),
                _ => Err(self.not_found(id)),
            };
        };
        if let Some(pos) = &w.queued_at {
            if applied(&current, pos) {
                return Ok(Step::Done(already_applied(intent)));
            }
        }
        let from = current.version;
        if i64::try_from(from).is_err() {
            // No stored version can be this (they are int64).
            return Err(self.diagnose(tenant, id, Some(from)).await);
        }
        let next = from + 1;
        let incarnation = current.incarnation.clone();
        let claim = self.claim(tenant, id, incarnation.as_deref(), from).await?;
        let filter = match &claim {
            // Conditional updates are atomic: the filter decides. Only the version and the
            // incarnation read: never one created since under the same id.
            None => {
                let mut filter = self.id_filter(tenant, id, purge);
                filter.insert(vf, document::version_bson(from));
                if let Some(i) = &incarnation {
                    filter.insert(INCARNATION_FIELD, i.as_str());
                }
                if let Some(pos) = &w.queued_at {
                    filter.extend(document::not_applied(pos));
                }
                filter
            }
            // They are not (FerretDB): the claim decides. Now that nobody else can move the
            // document from `from`, it is read once more by `_id` and written by `_id` alone,
            // the one filter such a server answers from its key (a version in the filter would
            // be checked by reading and writing back anyway, not atomically).
            Some(_) => match self.current(tenant, id, purge).await {
                Ok(Some(now)) if w.queued_at.as_deref().is_some_and(|p| applied(&now, p)) => {
                    if let Some(claim) = claim {
                        claim.release().await;
                    }
                    return Ok(Step::Done(already_applied(intent)));
                }
                Ok(Some(now)) if now.version == from && now.incarnation == incarnation => {
                    self.key_filter(tenant, id)
                }
                moved => {
                    if let Some(claim) = claim {
                        claim.release().await;
                    }
                    return match moved {
                        Err(e) => Err(e),
                        Ok(None) => match intent {
                            Intent::Patch { .. } => Ok(Step::Done(Outcome::Patched(None))),
                            Intent::Delete { .. } => Ok(Step::Done(Outcome::Deleted(0))),
                            Intent::Replace { .. } => Err(self.not_found(id)),
                            _ => Err(self.conflict(id, from, None)),
                        },
                        Ok(Some(now)) => Err(self.conflict(id, from, Some(now.version))),
                    };
                }
            },
        };
        let plan = |raw, event, written, shape, claim| Plan {
            raw,
            event,
            written,
            next,
            expected: Some(from),
            incarnation: incarnation.clone(),
            claim,
            shape,
            schema_guard: None,
        };
        Ok(Step::Write(Box::new(match intent {
            Intent::Patch { set, .. } => {
                let mut set = set.clone();
                set.insert(vf, document::version_bson(next));
                let mut filter = filter;
                let guard = patch_guard(&mut filter, &set);
                let update = doc! { "$set": set.clone() };
                Plan {
                    schema_guard: guard,
                    ..plan(
                        RawWrite::Update { filter, update },
                        Some((WriteKind::Update, set)),
                        None,
                        Shape::Patched,
                        claim,
                    )
                }
            }
            Intent::Replace { doc, .. } | Intent::Upsert { doc, .. } => {
                let mut doc = doc.clone();
                self.keep_unloaded_secrets(tenant, id, &mut doc).await?;
                doc.insert(vf, document::version_bson(next));
                if let Some(i) = &incarnation {
                    // A whole-document write keeps the incarnation.
                    doc.insert(INCARNATION_FIELD, i.as_str());
                }
                if let (Some(c), Some(stored)) = (m.created_at_field, &current.created_at) {
                    // An upsert of an existing document keeps when it was created.
                    if matches!(intent, Intent::Upsert { .. }) {
                        doc.insert(c, stored.clone());
                    }
                }
                let shape = if matches!(intent, Intent::Upsert { .. }) {
                    Shape::UpsertReplace
                } else {
                    Shape::Replaced
                };
                plan(
                    RawWrite::Replace {
                        filter,
                        doc: doc.clone(),
                        upsert: false,
                    },
                    Some((WriteKind::Update, doc.clone())),
                    Some(doc),
                    shape,
                    claim,
                )
            }
            Intent::Delete { purge, .. } => {
                // A purge of a document already soft-deleted records no second delete event.
                let event = (!current.deleted).then(|| (WriteKind::Delete, Document::new()));
                let raw = if m.soft_delete && !purge {
                    let mut set = doc! { DELETED_AT_FIELD: w.at, vf: document::version_bson(next) };
                    if let Some(u) = m.updated_at_field {
                        set.insert(u, w.at);
                    }
                    if let Some(pos) = &w.queued_at {
                        set.insert(QUEUE_POSITION_FIELD, pos.as_str());
                    }
                    RawWrite::Update {
                        filter,
                        update: doc! { "$set": set },
                    }
                } else {
                    RawWrite::Delete { filter }
                };
                plan(raw, event, None, Shape::Deleted, claim)
            }
            Intent::Insert(_) | Intent::DeleteMatching { .. } => {
                return Err(self.unsupported("this write as a single-document write"))
            }
        })))
    }

    /// Step 2 for entities without a version field: no transition, no claim, no events (an
    /// outbox needs a version field).
    async fn plan_unversioned(
        &self,
        tenant: &TenantId,
        intent: &Intent,
        at: DateTime,
        queued_at: Option<&str>,
    ) -> Result<Plan> {
        let m = self.meta;
        let id_filter = |id: &Bson, include_deleted: bool| {
            let mut filter = self.id_filter(tenant, id, include_deleted);
            if let Some(pos) = queued_at {
                filter.extend(document::not_applied(pos));
            }
            filter
        };
        let plan = |raw, written, shape| Plan {
            raw,
            event: None,
            written,
            next: 0,
            expected: None,
            incarnation: None,
            claim: None,
            shape,
            schema_guard: None,
        };
        Ok(match intent {
            Intent::Patch { id, set, .. } => {
                let mut filter = id_filter(id, false);
                let guard = patch_guard(&mut filter, set);
                Plan {
                    schema_guard: guard,
                    ..plan(
                        RawWrite::Update {
                            filter,
                            update: doc! { "$set": set.clone() },
                        },
                        None,
                        Shape::Patched,
                    )
                }
            }
            Intent::Replace { id, doc, .. } | Intent::Upsert { id, doc } => {
                let mut doc = doc.clone();
                self.keep_unloaded_secrets(tenant, id, &mut doc).await?;
                let upsert = matches!(intent, Intent::Upsert { .. });
                plan(
                    RawWrite::Replace {
                        filter: id_filter(id, false),
                        doc: doc.clone(),
                        upsert,
                    },
                    Some(doc),
                    if upsert {
                        Shape::UpsertUnversioned
                    } else {
                        Shape::Replaced
                    },
                )
            }
            Intent::Delete { id, purge } => {
                let filter = id_filter(id, *purge);
                let raw = if m.soft_delete && !purge {
                    let mut set = doc! { DELETED_AT_FIELD: at };
                    if let Some(u) = m.updated_at_field {
                        set.insert(u, at);
                    }
                    if let Some(pos) = queued_at {
                        set.insert(QUEUE_POSITION_FIELD, pos);
                    }
                    RawWrite::Update {
                        filter,
                        update: doc! { "$set": set },
                    }
                } else {
                    RawWrite::Delete { filter }
                };
                plan(raw, None, Shape::Deleted)
            }
            Intent::Insert(_) | Intent::DeleteMatching { .. } => {
                return Err(self.unsupported("this write as a single-document write"))
            }
        })
    }

    /// Gives a document about to be created its incarnation, if the entity has an outbox.
    fn stamp_new_incarnation(&self, doc: &mut Document) {
        if self.meta.outbox.is_some() {
            let now = self.conn().server_now().timestamp_millis();
            doc.insert(INCARNATION_FIELD, document::new_incarnation(now));
        }
    }

    /// Secret fields a whole-document write does not set (absent, null or empty: reads leave
    /// them out, so `get -> modify -> replace` would otherwise erase them) keep their stored
    /// values. Reads them only when there is one to keep.
    async fn keep_unloaded_secrets(
        &self,
        tenant: &TenantId,
        id: &Bson,
        doc: &mut Document,
    ) -> Result<()> {
        let unset: Vec<&str> = self
            .meta
            .secret_fields
            .iter()
            .copied()
            .filter(|f| match doc.get(*f) {
                None | Some(Bson::Null) => true,
                Some(Bson::String(s)) => s.is_empty(),
                Some(Bson::Binary(b)) => b.bytes.is_empty(),
                Some(_) => false,
            })
            .collect();
        if unset.is_empty() {
            return Ok(());
        }
        let mut projection = doc! { "_id": 0 };
        for f in &unset {
            projection.insert(*f, 1);
        }
        let stored = self
            .bounded(
                "read secret fields",
                self.docs
                    .find_one(self.id_filter(tenant, id, true), Some(projection)),
            )
            .await?
            .map_err(|e| Error::mongo(self.op("read secret fields"), e))?;
        if let Some(stored) = stored {
            for f in unset {
                if let Some(v) = stored.get(f) {
                    doc.insert(f, v.clone());
                }
            }
        }
        Ok(())
    }

    /// Deletes every document `filter` matches. One delete per document where each has a
    /// version to move or an event to record; otherwise one command for all.
    async fn delete_matching(
        &self,
        call: &Call<'_>,
        filter: Document,
    ) -> (Result<Outcome>, Vec<Effect>) {
        let m = self.meta;
        let at = call.at;
        let ids = match self.ids_matching(filter.clone()).await {
            Ok(ids) if ids.is_empty() => return (Ok(Outcome::Deleted(0)), Vec::new()),
            Ok(ids) => ids,
            Err(e) => return (Err(e), Vec::new()),
        };
        if m.outbox.is_some() || (m.version_field.is_some() && m.soft_delete) {
            let mut n = 0;
            let mut effects = Vec::new();
            for id in ids {
                let intent = Intent::Delete { id, purge: false };
                let (r, e) = self.single(call, intent).await;
                effects.extend(e);
                match r {
                    Ok(Outcome::Deleted(k)) => n += k,
                    Ok(_) => {}
                    Err(err) => return (Err(err), effects),
                }
            }
            return (Ok(Outcome::Deleted(n)), effects);
        }
        let filter = doc! { "$and": [filter, { m.id_field: { "$in": ids.clone() } }] };
        let raw = if m.soft_delete {
            let mut set = doc! { DELETED_AT_FIELD: at };
            if let Some(u) = m.updated_at_field {
                set.insert(u, at);
            }
            RawWrite::UpdateMany {
                filter,
                update: doc! { "$set": set },
            }
        } else {
            RawWrite::DeleteMany { filter }
        };
        let effects = ids.into_iter().map(invalidate).collect();
        match self.exec("delete many", &raw, None).await {
            Ok(RawOutcome::Matched { count, .. }) => (Ok(Outcome::Deleted(count)), effects),
            Ok(_) => (Ok(Outcome::Deleted(0)), effects),
            Err(e) => (Err(e), effects),
        }
    }

    async fn ids_matching(&self, filter: Document) -> Result<Vec<Bson>> {
        let id_field = self.meta.id_field;
        let options = mongodb::options::FindOptions::builder()
            .projection(doc! { "_id": 0, id_field: 1 })
            .build();
        let docs: Vec<Document> = self
            .bounded("delete many (ids)", self.docs.find_all(filter, options))
            .await?
            .map_err(|e| Error::mongo(self.op("delete many"), e))?;
        Ok(docs
            .into_iter()
            .filter_map(|mut d| d.remove(id_field))
            .collect())
    }

    /// Whether the cache step may put written documents (a strategy other than cache-aside).
    fn puts_written(&self) -> bool {
        self.meta
            .cache
            .is_some_and(|c| c.strategy != CacheStrategy::CacheAside)
    }

    /// Step 5: keep the cache right. A write that happened (or may have: a timeout, a driver
    /// error) invalidates its entries or, where the strategy puts written values, replaces
    /// them; errors raised before anything was sent leave the cache alone.
    async fn after_write(
        &self,
        tenant: &TenantId,
        result: &Result<Outcome>,
        effects: Vec<Effect>,
        queued: bool,
    ) {
        let Some(spec) = self.meta.cache.as_ref() else {
            return;
        };
        let touched = match result {
            Ok(_) => true,
            Err(e) => matches!(e, Error::Timeout { .. } | Error::Mongo { .. }),
        };
        if !touched {
            return;
        }
        // Queued writes are put only by `write_behind` (their documents are not stored yet);
        // applied writes by any strategy that puts written values.
        let puts = match spec.strategy {
            CacheStrategy::CacheAside => false,
            CacheStrategy::WriteThrough => !queued,
            CacheStrategy::WriteBehind => true,
        } && result.is_ok();
        for effect in effects {
            let written = effect.written.as_ref().filter(|_| puts);
            let deleted_at = effect.deleted_at.filter(|_| puts);
            self.cache
                .after_write(self.meta, tenant, &effect.id, written, deleted_at)
                .await;
        }
    }

    // ---- shared pieces -----------------------------------------------------------------

    /// `{tenant: t, [_deleted_at: null]}`: the scope every call starts from.
    pub(crate) fn tenant_filter(&self, tenant: &TenantId, include_deleted: bool) -> Document {
        let mut d = doc! { self.meta.tenant_field: tenant.as_str() };
        if self.meta.soft_delete && !include_deleted {
            d.insert(DELETED_AT_FIELD, Bson::Null);
        }
        d
    }

    /// `{_id: <tenant>:<id>}` (see [`document::storage_key`]), plus `{_deleted_at: null}` for
    /// soft-deleting entities unless `include_deleted`: the filter of writes by id.
    pub(crate) fn id_filter(
        &self,
        tenant: &TenantId,
        id: &Bson,
        include_deleted: bool,
    ) -> Document {
        let mut d = self.key_filter(tenant, id);
        if self.meta.soft_delete && !include_deleted {
            d.insert(DELETED_AT_FIELD, Bson::Null);
        }
        d
    }

    /// `{_id: <tenant>:<id>}` alone: the filter of reads by id, which every server answers from
    /// its primary key. Readers check `_deleted_at` themselves (FerretDB answers a filter with
    /// any other field by scanning the collection).
    pub(crate) fn key_filter(&self, tenant: &TenantId, id: &Bson) -> Document {
        doc! { "_id": document::storage_key(tenant.as_str(), id) }
    }

    /// The bound on one driver call of a write: `mongodb.socket_timeout`, and at most a third
    /// of [`CLAIM_LEASE`](super::versions::CLAIM_LEASE) where writes hold version claims, so a
    /// write ends well within its claim.
    pub(crate) fn write_bound(&self) -> Duration {
        let socket = self.conn.config().mongodb.socket_timeout;
        if self.conn.capabilities().atomic_conditional_updates {
            socket
        } else {
            socket.min(super::versions::CLAIM_LEASE / 3)
        }
    }

    /// A version conflict on this entity.
    pub(crate) fn conflict(&self, id: &Bson, expected: u64, actual: Option<u64>) -> Error {
        Error::VersionConflict {
            entity: self.meta.name,
            id: document::id_for_errors(id),
            expected,
            actual,
        }
    }

    pub(crate) fn not_found(&self, id: &Bson) -> Error {
        Error::NotFound {
            entity: self.meta.name,
            id: document::id_for_errors(id),
        }
    }

    fn unsupported(&self, feature: &'static str) -> Error {
        Error::Unsupported {
            feature,
            server: format!(
                "(entity {} with consistency {}, so this)",
                self.meta.name,
                self.consistency.as_str()
            ),
        }
    }

    pub(crate) fn op(&self, what: &str) -> String {
        format!("{what} {}.{}", self.meta.database, self.meta.collection)
    }

    /// Bounds each attempt of a read by `mongodb.socket_timeout` and sends it again after a
    /// transient fault, as the retry policy says (`connection/retry.rs`).
    pub(crate) async fn read_retried<T, F>(
        &self,
        operation: &'static str,
        call: impl FnMut() -> F,
    ) -> Result<mongodb::error::Result<T>>
    where
        F: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        let config = self.conn.config();
        config
            .retry
            .run(
                crate::connection::retry::Retry::Read,
                operation,
                config.mongodb.socket_timeout,
                call,
            )
            .await
    }

    /// Bounds one driver call by `mongodb.socket_timeout` (the driver has no socket timeout).
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        f: impl std::future::IntoFuture<Output = T>,
    ) -> Result<T> {
        let after: Duration = self.conn.config().mongodb.socket_timeout;
        tokio::time::timeout(after, f.into_future())
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Mongodb,
                operation,
                after,
            })
    }
}

/// Step 2's result: a write to make, or nothing to do (the document is not there).
enum Step {
    Write(Box<Plan>),
    Done(Outcome),
}

/// One planned single-document write.
struct Plan {
    raw: RawWrite,
    /// The event kind and body, when the write records one.
    event: Option<(WriteKind, Document)>,
    /// The document as it will be stored, when the write knows it whole.
    written: Option<Document>,
    /// The version the write moves the document to.
    next: u64,
    /// The version the write's filter requires, if any.
    expected: Option<u64>,
    /// The incarnation the write is to (entities with an outbox).
    incarnation: Option<String>,
    claim: Option<Claim>,
    shape: Shape,
    /// The schema version a patch is written for (its filter requires it).
    schema_guard: Option<u32>,
}

/// Which call's outcome a single-document write produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Patched,
    Replaced,
    UpsertInsert,
    UpsertReplace,
    UpsertUnversioned,
    Deleted,
}

impl Shape {
    fn outcome(self, written: Option<Document>, next: u64) -> Outcome {
        match self {
            Shape::Patched => Outcome::Patched(written),
            Shape::Replaced => Outcome::Replaced(Some(next)),
            Shape::UpsertInsert => Outcome::Upserted { inserted: true },
            Shape::UpsertReplace => Outcome::Upserted { inserted: false },
            Shape::UpsertUnversioned => Outcome::Upserted { inserted: false },
            Shape::Deleted => Outcome::Deleted(1),
        }
    }

    /// Whether the write may insert (and so meet a concurrent insert of the same id).
    fn inserts(self) -> bool {
        matches!(self, Shape::UpsertInsert | Shape::UpsertUnversioned)
    }

    /// Whether a write that found no document is a normal outcome (patch: `None`; delete:
    /// `false`) rather than [`Error::NotFound`].
    fn absent_is_ok(self) -> bool {
        matches!(self, Shape::Patched | Shape::Deleted)
    }

    fn absent(self) -> Outcome {
        match self {
            Shape::Deleted => Outcome::Deleted(0),
            _ => Outcome::Patched(None),
        }
    }
}

/// A patch applies only to a document at the schema version it was written for (the stamp in
/// its `$set`): older documents are rewritten first, newer ones refused, so a patch never mixes
/// fields of two versions in one document. Returns the version required.
fn patch_guard(filter: &mut Document, set: &Document) -> Option<u32> {
    let stamp = schema::stamp_of(set)?;
    filter.insert(SCHEMA_VERSION_FIELD, schema::at_version(stamp));
    Some(stamp)
}

/// Whether a queued write at `pos` is already reflected in the document.
fn applied(current: &versions::Current, pos: &str) -> bool {
    current.queued.as_deref().is_some_and(|at| at >= pos)
}

/// What a queued write already applied returns when applied again: what it did the first
/// time, as far as the flusher cares (it only needs to know it is done).
fn already_applied(intent: &Intent) -> Outcome {
    match intent {
        Intent::Patch { .. } => Outcome::Patched(None),
        Intent::Upsert { .. } => Outcome::Upserted { inserted: false },
        Intent::Replace { .. } => Outcome::Replaced(None),
        Intent::Delete { .. } | Intent::DeleteMatching { .. } => Outcome::Deleted(0),
        Intent::Insert(_) => Outcome::Inserted(Vec::new()),
    }
}

/// The id a single-document intent names.
fn intent_id(intent: &Intent) -> &Bson {
    intent.id().unwrap_or(&Bson::Null)
}

fn invalidate(id: Bson) -> Effect {
    Effect {
        id,
        written: None,
        deleted_at: None,
    }
}
