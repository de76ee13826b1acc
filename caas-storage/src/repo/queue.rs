//! The write-behind side of the executor: the explicit `queue_*` calls, and the pipeline the
//! flusher applies queued writes with (registered with the queue when a repository is made).
//!
//! Entities with an outbox or with secret fields are not [`Queueable`]: the queue cannot record
//! events atomically with the write, and it holds whole documents in Redis, where secret fields
//! must not go. The `queue_*` calls do not compile for them, and an insert through
//! `with_consistency(Consistency::Eventual)` fails with [`Error::Unsupported`], writing nothing.

use std::sync::Arc;

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use tokio::sync::OnceCell;

use crate::consistency::Consistency;
use crate::document::{self, QUEUE_POSITION_FIELD};
use crate::entity::{Mutable, Queueable};
use crate::error::{Error, Result};
use crate::repo::pipeline::{Intent, Outcome, Pipeline, Route, Write};
use crate::repo::writes::patch_set;
use crate::repo::{id_of, Patch, Repository};
use crate::tenant::TenantId;
use crate::write_behind::{Apply, Op};

impl<E: Queueable> Repository<E> {
    /// Queues a patch (any model; the default for `eventual` entities' updates is direct,
    /// since [`update`](Self::update) returns the result). Applied in queue order after the
    /// writes queued before it, as [`update`](Self::update) would apply it: the version moves
    /// on and `updated_at` is set.
    pub async fn queue_update<P: Patch<Entity = E>>(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        patch: P,
    ) -> Result<()>
    where
        E: Mutable,
    {
        let intent = Intent::Patch {
            id: document::id_to_bson::<E>(id)?,
            set: patch_set(&patch)?,
            expected: None,
        };
        self.queue(tenant, "queue_update", intent).await
    }

    /// Queues an insert-or-replace of `entity`, applied as [`upsert`](Self::upsert) would.
    pub async fn queue_upsert(&self, tenant: &TenantId, entity: &E) -> Result<()>
    where
        E: Mutable,
    {
        let intent = Intent::Upsert {
            id: id_of(entity)?,
            doc: document::encode(tenant, entity)?,
        };
        self.queue(tenant, "queue_upsert", intent).await
    }

    /// Queues a delete (soft where the entity declares it), applied as
    /// [`delete`](Self::delete) would.
    pub async fn queue_delete(&self, tenant: &TenantId, id: &E::Id) -> Result<()>
    where
        E: Mutable,
    {
        let intent = Intent::Delete {
            id: document::id_to_bson::<E>(id)?,
            purge: false,
        };
        self.queue(tenant, "queue_delete", intent).await
    }

    async fn queue(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        intent: Intent,
    ) -> Result<()> {
        let mut w = Write::new(operation, tenant, intent, self.pipeline().now());
        w.route = Route::Queue;
        self.pipeline().write(w).await.map(drop)
    }
}

/// The pipeline queued writes of `pipeline`'s entity are applied with: the same steps, applied
/// now, with the `eventual` model's concerns.
pub(crate) fn applier(pipeline: &Pipeline) -> Arc<dyn Apply> {
    Arc::new(QueueApplier {
        pipeline: pipeline
            .with_consistency(Consistency::Eventual)
            .direct_only(),
        primary_index: OnceCell::new(),
    })
}

struct QueueApplier {
    pipeline: Pipeline,
    /// Set once the unique (tenant, id) index is known to exist.
    primary_index: OnceCell<()>,
}

#[async_trait]
impl Apply for QueueApplier {
    async fn insert(&self, tenant: &TenantId, docs: Vec<Document>) -> Result<Vec<Result<()>>> {
        self.ensure_primary_index().await;
        let positions: Vec<(Option<Bson>, Option<Bson>)> = docs
            .iter()
            .map(|d| {
                (
                    d.get(self.pipeline.meta().id_field).cloned(),
                    d.get(QUEUE_POSITION_FIELD).cloned(),
                )
            })
            .collect();
        let outcome = self
            .pipeline
            .write(Write::new(
                "apply queued insert",
                tenant,
                Intent::Insert(docs),
                self.pipeline.now(),
            ))
            .await?;
        let Outcome::Inserted(results) = outcome else {
            return Ok(Vec::new());
        };
        // Re-applied after a crash, the insert finds its own document there: applied, not a
        // failure. Any other duplicate (another document holding a unique key) is the write's
        // refusal, dead-lettered like any other; FerretDB does not say which index refused it,
        // so the stored document's queue position tells the two apart.
        let mut out = Vec::with_capacity(results.len());
        for (result, (id, position)) in results.into_iter().zip(positions) {
            out.push(match result {
                Err(e @ Error::DuplicateKey { .. }) => {
                    match self.already_applied(tenant, id, position).await? {
                        true => Ok(()),
                        false => Err(e),
                    }
                }
                other => other,
            });
        }
        Ok(out)
    }

    async fn apply(&self, tenant: &TenantId, op: Op, position: &str) -> Result<()> {
        let (operation, intent) = match op {
            Op::Insert(mut doc) => {
                doc.insert(QUEUE_POSITION_FIELD, position);
                return self
                    .insert(tenant, vec![doc])
                    .await?
                    .pop()
                    .unwrap_or(Ok(()));
            }
            Op::Update { id, set } => (
                "apply queued update",
                Intent::Patch {
                    id,
                    set,
                    expected: None,
                },
            ),
            Op::Upsert { id, doc } => ("apply queued upsert", Intent::Upsert { id, doc }),
            Op::Delete { id } => ("apply queued delete", Intent::Delete { id, purge: false }),
        };
        // A missing document is applied: nothing to update or delete.
        let mut write = Write::new(operation, tenant, intent, self.pipeline.now());
        write.queued_at = Some(position.to_owned());
        self.pipeline.write(write).await.map(drop)
    }
}

impl QueueApplier {
    /// Whether the document with `id` in `tenant` is this queued insert, already applied: it
    /// is there and carries the insert's queue position or a later one (a queued write after
    /// the insert, applied too before the crash). Positions order as text.
    async fn already_applied(
        &self,
        tenant: &TenantId,
        id: Option<Bson>,
        position: Option<Bson>,
    ) -> Result<bool> {
        let (Some(id), Some(position)) = (id, position) else {
            return Ok(false);
        };
        let filter = self.pipeline.key_filter(tenant, &id);
        let stored = self
            .pipeline
            .read_retried("read back a queued insert", || {
                self.pipeline
                    .docs()
                    .find_one(filter.clone(), Some(doc! { QUEUE_POSITION_FIELD: 1 }))
            })
            .await?
            .map_err(|e| Error::mongo(self.pipeline.op("read back a queued insert"), e))?;
        let (Some(stored), Bson::String(mine)) = (stored, &position) else {
            return Ok(false);
        };
        Ok(stored
            .get_str(QUEUE_POSITION_FIELD)
            .is_ok_and(|theirs| theirs >= mine.as_str()))
    }

    /// Re-applying an insert after a crash is harmless only if the unique (tenant, id) index
    /// rejects the second copy: make sure it exists before the first insert. If it cannot be
    /// built (say, the collection already holds duplicates), writes still apply and the
    /// problem is logged, and building it is tried again on the next insert.
    async fn ensure_primary_index(&self) {
        let m = self.pipeline.meta();
        let built = self
            .primary_index
            .get_or_try_init(|| async {
                let model = IndexModel::builder()
                    .keys(doc! { m.tenant_field: 1, m.id_field: 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name(m.primary_index_name())
                            .build(),
                    )
                    .build();
                self.pipeline
                    .bounded(
                        "create the (tenant, id) index",
                        self.pipeline.docs().create_index(model),
                    )
                    .await?
                    .map(drop)
                    .map_err(|e| Error::mongo(self.pipeline.op("createIndexes"), e))
            })
            .await;
        if let Err(e) = built {
            tracing::error!(error = %e, entity = m.name, "write-behind: the unique (tenant, id) index is missing and cannot be built; re-applied inserts after a crash may duplicate documents");
        }
    }
}
