//! Recording outbox events with the writes that cause them.
//!
//! Without multi-document transactions (FerretDB, a standalone mongod) the executor follows
//! the outbox-first protocol of [`crate::outbox`]: while it holds the claim on the document's
//! version transition (see [`versioned`](super::versioned)), it records the write's events as
//! `prepared`, then writes, then marks them `ready` if the write happened or `abandoned` if it
//! definitely did not. When the outcome is unknown (a timeout, a dropped connection) the events
//! stay `prepared` and the relay's reconciliation decides them from the document's version.
//! A crash at any point therefore leaves neither an event without its write nor a write without
//! its event. On a server with transactions, [`Recording::in_transaction`] is the other path.

use mongodb::bson::Document;

use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::outbox::{
    payload_from_document, EventEnvelope, OutboxStore, PendingEvent, WriteKind, WriteRef,
};
use crate::repo::{codec, Repository};
use crate::tenant::TenantId;

/// The events of one write, recorded and waiting for the write's outcome.
#[must_use = "settle the recording with the write's outcome"]
pub(crate) struct Recording {
    store: OutboxStore,
    ids: Vec<String>,
    /// (tenant, aggregate type, aggregate id, revision) of the write.
    aggregate: (String, String, String, i64),
}

/// What a write carries into its events.
pub(crate) struct WriteEvents<'a> {
    pub kind: WriteKind,
    /// The revision the write moves the document to.
    pub revision: u64,
    /// The event body (the entity, or what changed), secret fields already removed.
    pub payload: serde_json::Value,
    /// Events the caller adds to the same atomic unit.
    pub extra: &'a [EventEnvelope],
}

impl Recording {
    /// Records `events` as `prepared`. `None` when the entity records no event for this kind
    /// of write and the caller adds none.
    pub(crate) async fn prepare<E: Entity>(
        repo: &Repository<E>,
        tenant: &TenantId,
        id: &E::Id,
        events: WriteEvents<'_>,
    ) -> Result<Option<Recording>> {
        let Some(records) = pending::<E>(tenant, id, events)? else {
            return Ok(None);
        };
        let store = OutboxStore::new(repo.storage(), E::META.database);
        store.prepare(&records).await?;
        let first = &records[0].envelope;
        let aggregate = (
            first.tenant.clone(),
            first.aggregate_type.clone(),
            first.aggregate_id.clone(),
            i64::try_from(first.revision).unwrap_or(i64::MAX),
        );
        Ok(Some(Recording {
            store,
            ids: records.into_iter().map(|r| r.envelope.event_id).collect(),
            aggregate,
        }))
    }

    /// Marks the events by the write's outcome: `ready` if it happened, `abandoned` if it
    /// definitely did not; left `prepared` for reconciliation when nobody knows.
    pub(crate) async fn settle<T>(self, outcome: &Result<T>, happened: impl FnOnce(&T) -> bool) {
        let verdict = match outcome {
            Ok(v) if happened(v) => {
                let r = self.store.commit(&self.ids).await;
                self.abandon_rivals().await;
                r
            }
            Ok(_) => self.store.abandon(&self.ids).await,
            Err(
                Error::VersionConflict { .. }
                | Error::NotFound { .. }
                | Error::DuplicateKey { .. }
                | Error::TenantMismatch { .. }
                | Error::Codec { .. },
            ) => self.store.abandon(&self.ids).await,
            Err(_) => return,
        };
        if let Err(e) = verdict {
            tracing::warn!(error = %e, events = ?self.ids, "could not settle outbox events; reconciliation will");
        }
    }
}

impl Recording {
    /// The op id of this write's events (the first event's id), stamped on the document.
    pub(crate) fn op(&self) -> &str {
        &self.ids[0]
    }

    /// This write took the aggregate to its revision, so any other `prepared` events for the
    /// same revision belong to a writer that stopped before writing (its claim expired, or it
    /// failed): that write can no longer happen (versions only grow; a second insert of the id
    /// fails on the unique index). Deciding them now keeps reconciliation, which only sees
    /// that the document reached the revision, from publishing them.
    async fn abandon_rivals(&self) {
        let (tenant, aggregate_type, aggregate_id, revision) = &self.aggregate;
        let r = self
            .store
            .collection()
            .update_many(
                mongodb::bson::doc! {
                    "tenant": tenant,
                    "aggregate_type": aggregate_type,
                    "aggregate_id": aggregate_id,
                    "revision": revision,
                    "state": "prepared",
                    "_id": { "$nin": &self.ids },
                },
                mongodb::bson::doc! { "$set": {
                    "state": "abandoned",
                    "updated_at": mongodb::bson::DateTime::now(),
                } },
            )
            .await;
        match r {
            Ok(r) if r.modified_count > 0 => tracing::info!(
                aggregate = %aggregate_id, revision, abandoned = r.modified_count,
                "abandoned outbox events of a writer that stopped before its write"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not abandon rival outbox events; reconciliation will decide them")
            }
        }
    }
}

/// Builds the outbox records of one write.
pub(crate) fn pending<E: Entity>(
    tenant: &TenantId,
    id: &E::Id,
    events: WriteEvents<'_>,
) -> Result<Option<Vec<PendingEvent>>> {
    let Some(spec) = E::META.outbox.as_ref() else {
        return Ok(None);
    };
    let event_type = match events.kind {
        WriteKind::Insert => spec.insert,
        WriteKind::Update => spec.update,
        WriteKind::Delete => spec.delete,
    };
    if event_type.is_none() && events.extra.is_empty() {
        return Ok(None);
    }
    let id_bson = codec::id_to_bson::<E>(id)?;
    let aggregate_id = codec::id_as_text(&id_bson);
    let write = WriteRef {
        collection: E::META.collection.to_owned(),
        tenant_field: E::META.tenant_field.to_owned(),
        tenant: tenant.as_str().to_owned(),
        id_field: E::META.id_field.to_owned(),
        id: id_bson,
        revision_field: E::META.version_field.map(str::to_owned),
        revision: i64::try_from(events.revision).unwrap_or(i64::MAX),
        kind: events.kind,
        soft_delete: E::META.soft_delete,
    };
    let mut out = Vec::with_capacity(1 + events.extra.len());
    if let Some(t) = event_type {
        out.push(
            EventEnvelope::new(
                t,
                E::META.name,
                aggregate_id.clone(),
                tenant.as_str(),
                events.payload,
            )
            .with_schema_version(E::META.schema_version)
            .with_revision(events.revision),
        );
    }
    for custom in events.extra {
        let mut e = custom.clone();
        // Custom events belong to this aggregate and this write.
        e.aggregate_type = E::META.name.to_owned();
        e.aggregate_id.clone_from(&aggregate_id);
        e.tenant = tenant.as_str().to_owned();
        e.revision = events.revision;
        out.push(e);
    }
    Ok(Some(
        out.into_iter()
            .map(|envelope| PendingEvent {
                envelope,
                topic: spec.topic.to_owned(),
                write: write.clone(),
            })
            .collect(),
    ))
}

/// An event body from a stored document or a `$set`: secret and framework fields removed.
pub(crate) fn payload<E: Entity>(doc: &Document) -> serde_json::Value {
    payload_from_document(doc, E::META.secret_fields)
}
