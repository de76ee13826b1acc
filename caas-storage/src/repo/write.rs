//! Single-document writes with their outbox events: the one place a repository write reaches
//! MongoDB when the entity records events.
//!
//! On a server with multi-document transactions (a replica set) the events are inserted as
//! `ready` and the write is made in one transaction, retried on `TransientTransactionError`
//! and re-committed on `UnknownTransactionCommitResult`. Elsewhere the outbox-first protocol of
//! [`events`](super::events) applies. Either way: the events are stored if and only if the
//! write is.

use mongodb::bson::Document;
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::ReturnDocument;
use mongodb::ClientSession;

use crate::connection::FaultPoint;
use crate::entity::Entity;
use crate::error::{classify_write, Error, Result};
use crate::outbox::OutboxStore;
use crate::repo::events::{pending, Recording, WriteEvents};
use crate::repo::Repository;
use crate::tenant::TenantId;

/// A write, as the driver takes it.
pub(crate) enum RawWrite {
    Insert(Document),
    /// `findAndModify` returning the document after the update.
    Update {
        filter: Document,
        update: Document,
    },
    Replace {
        filter: Document,
        doc: Document,
    },
    Delete {
        filter: Document,
    },
}

/// Framework field: the outbox op (id of the first event) of the write that produced the
/// document's current version, so reconciliation can tell rival writers apart.
pub(crate) const OP_FIELD: &str = "_outbox_op";

impl RawWrite {
    fn stamp(&mut self, op: &str) {
        match self {
            RawWrite::Insert(doc) | RawWrite::Replace { doc, .. } => {
                doc.insert(OP_FIELD, op);
            }
            RawWrite::Update { update, .. } => {
                if let Ok(set) = update.get_document_mut("$set") {
                    set.insert(OP_FIELD, op);
                }
            }
            RawWrite::Delete { .. } => {}
        }
    }
}

/// What a [`RawWrite`] did.
pub(crate) enum Outcome {
    Inserted,
    /// The document after the update (secret fields included), if one matched.
    Updated(Option<Document>),
    /// How many documents matched a replace or a delete.
    Matched(u64),
}

impl Outcome {
    fn happened(&self) -> bool {
        match self {
            Outcome::Inserted => true,
            Outcome::Updated(d) => d.is_some(),
            Outcome::Matched(n) => *n > 0,
        }
    }
}

/// Runs `write`, recording `events` atomically with it.
pub(crate) async fn run<E: Entity>(
    repo: &Repository<E>,
    operation: &'static str,
    tenant: &TenantId,
    id: &E::Id,
    mut write: RawWrite,
    events: WriteEvents<'_>,
) -> Result<Outcome> {
    if repo.storage().capabilities().transactions {
        if let Some(records) = pending::<E>(tenant, id, events)? {
            write.stamp(&records[0].envelope.event_id);
            return transactional(repo, operation, &records, &write).await;
        }
        return exec(repo, operation, &write, None).await;
    }
    let recording = Recording::prepare(repo, tenant, id, events).await?;
    if let Some(r) = &recording {
        write.stamp(r.op());
    }
    if recording.is_some() {
        repo.storage().fault(FaultPoint::OutboxAfterPrepare)?;
    }
    let outcome = exec(repo, operation, &write, None).await;
    if recording.is_some() {
        repo.storage().fault(FaultPoint::OutboxAfterWrite)?;
    }
    if let Some(r) = recording {
        r.settle(&outcome, Outcome::happened).await;
    }
    outcome
}

async fn transactional<E: Entity>(
    repo: &Repository<E>,
    operation: &'static str,
    records: &[crate::outbox::PendingEvent],
    write: &RawWrite,
) -> Result<Outcome> {
    let store = OutboxStore::new(repo.storage(), E::META.database);
    let mut session = repo
        .storage()
        .mongo()
        .start_session()
        .await
        .map_err(|e| Error::mongo("start session", e))?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        session
            .start_transaction()
            .write_concern(repo.consistency().write_concern())
            .await
            .map_err(|e| Error::mongo("start transaction", e))?;
        let body = async {
            store.insert_ready_in(&mut session, records).await?;
            exec(repo, operation, write, Some(&mut session)).await
        }
        .await;
        let outcome = match body {
            Ok(o) => o,
            Err(e) => {
                let _ = session.abort_transaction().await;
                if attempts < 5 && has_label(&e, TRANSIENT_TRANSACTION_ERROR) {
                    continue;
                }
                return Err(e);
            }
        };
        if !outcome.happened() {
            // Nothing was written, so no event may be either.
            let _ = session.abort_transaction().await;
            return Ok(outcome);
        }
        loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(outcome),
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempts < 5 => {
                    attempts += 1;
                }
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && attempts < 5 => break,
                Err(e) => return Err(Error::mongo("commit transaction", e)),
            }
        }
    }
}

fn has_label(e: &Error, label: &str) -> bool {
    matches!(e, Error::Mongo { source, .. } if source.contains_label(label))
}

async fn exec<E: Entity>(
    repo: &Repository<E>,
    operation: &'static str,
    write: &RawWrite,
    session: Option<&mut ClientSession>,
) -> Result<Outcome> {
    let classify = |e| classify_write(E::META.name, repo.op(operation), e);
    let docs = repo.docs();
    let r = match (write, session) {
        (RawWrite::Insert(d), None) => repo
            .bounded(operation, docs.insert_one(d.clone()))
            .await?
            .map(|_| Outcome::Inserted),
        (RawWrite::Insert(d), Some(s)) => repo
            .bounded(operation, docs.insert_one(d.clone()).session(s))
            .await?
            .map(|_| Outcome::Inserted),
        (RawWrite::Update { filter, update }, s) => {
            let modify = docs
                .find_one_and_update(filter.clone(), update.clone())
                .return_document(ReturnDocument::After);
            match s {
                None => repo.bounded(operation, modify).await?,
                Some(s) => repo.bounded(operation, modify.session(s)).await?,
            }
            .map(Outcome::Updated)
        }
        (RawWrite::Replace { filter, doc }, s) => {
            let replace = docs.replace_one(filter.clone(), doc.clone());
            match s {
                None => repo.bounded(operation, replace).await?,
                Some(s) => repo.bounded(operation, replace.session(s)).await?,
            }
            .map(|r| Outcome::Matched(r.matched_count))
        }
        (RawWrite::Delete { filter }, s) => {
            let delete = docs.delete_one(filter.clone());
            match s {
                None => repo.bounded(operation, delete).await?,
                Some(s) => repo.bounded(operation, delete.session(s)).await?,
            }
            .map(|r| Outcome::Matched(r.deleted_count))
        }
    };
    r.map_err(classify)
}
