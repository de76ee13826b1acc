//! The events step: which outbox records a write carries, and recording them with the write.
//!
//! With multi-document transactions (a replica set) the records are inserted as `ready` in the
//! write's transaction. Without (FerretDB, a standalone mongod) the outbox-first protocol
//! applies: while the writer holds the version transition, the records are inserted as
//! `prepared`, the write stamps the document with its op id, and the records are then settled
//! `ready` if the write happened, `abandoned` if it definitely did not, and left `prepared` for
//! the relay's reconciliation when nobody knows (a timeout, a crash). Either way the events are
//! stored if and only if the write is. The two paths share the records, the fault points and
//! the apply step; they differ in what decides the events: the commit of the transaction
//! ([`transaction`](super::transaction)), or the settle step here.

use crate::backend::Session;
use mongodb::bson::{Bson, Document};

use crate::connection::FaultPoint;
use crate::document;
use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::outbox::{
    payload_from_document, EventEnvelope, PendingEvent, Verdict, WriteKind, WriteRef,
};
use crate::repo::apply::{self, RawOutcome, RawWrite};
use crate::repo::pipeline::Pipeline;
use crate::telemetry::spans;
use crate::tenant::TenantId;
use tracing::Instrument;

/// What one document's write carries into its events.
pub(crate) struct EventSpec<'a> {
    pub id: &'a Bson,
    pub kind: WriteKind,
    /// The revision the write moves the document to.
    pub revision: u64,
    /// The document's incarnation (`None` for documents stored before incarnations existed).
    pub incarnation: Option<&'a str>,
    /// The event body (the entity, or what changed), secret fields not yet removed.
    pub payload: &'a Document,
    /// Events the caller adds to the same atomic unit.
    pub extra: &'a [EventEnvelope],
    /// The write's time: the entity's event occurred then (as its `updated_at` says).
    pub at: mongodb::bson::DateTime,
}

/// The outbox records of one document's write: none when the entity records no event for this
/// kind of write and the caller adds none.
pub(crate) fn records(
    meta: &'static EntityMeta,
    tenant: &TenantId,
    spec: EventSpec<'_>,
) -> Vec<PendingEvent> {
    let Some(outbox) = meta.outbox.as_ref() else {
        return Vec::new();
    };
    let event_type = match spec.kind {
        WriteKind::Insert => outbox.insert,
        WriteKind::Update => outbox.update,
        WriteKind::Delete => outbox.delete,
    };
    let aggregate_id = document::id_as_text(spec.id);
    let write = WriteRef {
        collection: meta.collection.to_owned(),
        tenant_field: meta.tenant_field.to_owned(),
        tenant: tenant.as_str().to_owned(),
        id_field: meta.id_field.to_owned(),
        id: spec.id.clone(),
        revision_field: meta.version_field.map(str::to_owned),
        revision: i64::try_from(spec.revision).unwrap_or(i64::MAX),
        kind: spec.kind,
        soft_delete: meta.soft_delete,
    };
    let mut out = Vec::with_capacity(1 + spec.extra.len());
    if let Some(t) = event_type {
        out.push(
            EventEnvelope::new(
                t,
                meta.name,
                aggregate_id.clone(),
                tenant.as_str(),
                payload_from_document(spec.payload, meta.secret_fields),
            )
            .with_schema_version(meta.schema_version)
            .with_revision(spec.revision)
            .with_incarnation(spec.incarnation.map(str::to_owned))
            .at_millis(spec.at.timestamp_millis()),
        );
    }
    for custom in spec.extra {
        let mut e = custom.clone();
        // Custom events belong to this aggregate and this write.
        e.aggregate_type = meta.name.to_owned();
        e.aggregate_id.clone_from(&aggregate_id);
        e.tenant = tenant.as_str().to_owned();
        e.revision = spec.revision;
        e.incarnation = spec.incarnation.map(str::to_owned);
        out.push(e);
    }
    out.into_iter()
        .map(|envelope| PendingEvent {
            envelope,
            topic: outbox.topic.to_owned(),
            write: write.clone(),
        })
        .collect()
}

impl Pipeline {
    /// Steps 3 and 4 of the pipeline: records `groups[i]` (the events of document `i` of an
    /// insert, or of the one document of any other write) atomically with `write`, and
    /// applies it.
    pub(crate) async fn record_and_apply(
        &self,
        operation: &'static str,
        groups: Vec<Vec<PendingEvent>>,
        mut write: RawWrite,
    ) -> Result<RawOutcome> {
        if groups.iter().all(Vec::is_empty) {
            return self.exec(operation, &write, None).await;
        }
        // Every event goes to a declared topic (kafka.undeclared_topics), checked before
        // anything is written.
        for r in groups.iter().flatten() {
            self.conn()
                .check_topic(&format!("entity {}", self.meta().name), &r.topic)?;
        }
        let ops: Vec<Option<String>> = groups
            .iter()
            .map(|g| g.first().map(|r| r.envelope.event_id.clone()))
            .collect();
        write.stamp(&ops);
        if self.conn().capabilities().transactions {
            return super::transaction::record_and_apply(self, operation, groups, write).await;
        }
        // Without transactions: recorded `prepared`, written, then settled by the outcome.
        let outbox = self.outbox()?;
        let all: Vec<PendingEvent> = groups.iter().flatten().cloned().collect();
        outbox.record(&all, None).await?;
        self.conn().fault(FaultPoint::OutboxAfterPrepare)?;
        let outcome = self.exec(operation, &write, None).await;
        self.conn().fault(FaultPoint::OutboxAfterWrite)?;
        for (i, group) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
            let verdict = match &outcome {
                Ok(o) if o.happened(i) => Verdict::Happened,
                Ok(_) | Err(Error::DuplicateKey { .. }) => Verdict::DidNot,
                Err(_) => Verdict::Unknown,
            };
            outbox.settle(group, verdict).await;
        }
        outcome
    }

    /// Runs the apply step on this pipeline's collection.
    pub(crate) async fn exec(
        &self,
        operation: &'static str,
        write: &RawWrite,
        session: Option<&mut Session>,
    ) -> Result<RawOutcome> {
        let command = match write {
            RawWrite::Insert(_) => "insert",
            RawWrite::Update { .. } => "findAndModify",
            RawWrite::UpdateMany { .. } | RawWrite::Replace { .. } => "update",
            RawWrite::Delete { .. } | RawWrite::DeleteMany { .. } => "delete",
        };
        apply::exec(
            self.meta(),
            self.docs(),
            operation,
            self.write_bound(),
            &self.conn().config().retry,
            write,
            session,
        )
        .instrument(spans::mongodb(command))
        .await
    }
}
