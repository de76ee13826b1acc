//! The apply step: one write, as the driver takes it, run with or without the session of a
//! transaction. The only place the executor writes entity documents to MongoDB.

use std::time::Duration;

use mongodb::bson::Document;

use crate::backend::{Coll, Session};
use crate::config::RetryConfig;
use crate::connection::retry::Retry;
use crate::document::OP_FIELD;
use crate::entity::EntityMeta;
use crate::error::{classify_write, Component, Error, Result, DUPLICATE_KEY};

/// A write, as the driver takes it.
#[derive(Debug, Clone)]
pub(crate) enum RawWrite {
    /// One document (`insertOne`) or several (`insertMany`, unordered).
    Insert(Vec<Document>),
    /// `findAndModify` returning the document after the update.
    Update { filter: Document, update: Document },
    /// `updateMany` (soft deletes of entities without versions).
    UpdateMany { filter: Document, update: Document },
    /// `replaceOne`, inserting when nothing matches if `upsert`.
    Replace {
        filter: Document,
        doc: Document,
        upsert: bool,
    },
    /// `deleteOne`.
    Delete { filter: Document },
    /// `deleteMany`.
    DeleteMany { filter: Document },
}

/// What a [`RawWrite`] did.
#[derive(Debug)]
pub(crate) enum RawOutcome {
    /// One result per inserted document, in order: `Ok` if it was written.
    Inserted(Vec<Result<()>>),
    /// The document after the update (secret fields included), if one matched.
    Updated(Option<Document>),
    /// How many documents matched (replaced, updated or deleted), and whether an upsert
    /// inserted.
    Matched { count: u64, upserted: bool },
}

impl RawOutcome {
    /// Whether the write took effect on the document of position `i` (inserts) or at all.
    pub(crate) fn happened(&self, i: usize) -> bool {
        match self {
            RawOutcome::Inserted(r) => r.get(i).is_some_and(Result::is_ok),
            RawOutcome::Updated(d) => d.is_some(),
            RawOutcome::Matched { count, upserted } => *count > 0 || *upserted,
        }
    }
}

impl RawWrite {
    /// Stamps the documents this write produces with the outbox op of their events, so
    /// reconciliation can tell rival writers apart. `ops[i]` belongs to document `i` of an
    /// insert; other writes take `ops[0]`.
    pub(crate) fn stamp(&mut self, ops: &[Option<String>]) {
        let first = ops.first().cloned().flatten();
        match self {
            RawWrite::Insert(docs) => {
                for (doc, op) in docs.iter_mut().zip(ops) {
                    if let Some(op) = op {
                        doc.insert(OP_FIELD, op.as_str());
                    }
                }
            }
            RawWrite::Replace { doc, .. } => {
                if let Some(op) = first {
                    doc.insert(OP_FIELD, op);
                }
            }
            RawWrite::Update { update, .. } => {
                if let (Some(op), Ok(set)) = (first, update.get_document_mut("$set")) {
                    set.insert(OP_FIELD, op);
                }
            }
            RawWrite::UpdateMany { .. } | RawWrite::Delete { .. } | RawWrite::DeleteMany { .. } => {
            }
        }
    }

    /// Leaves out the inserted documents whose position is not in `keep`.
    pub(crate) fn retain_inserts(&mut self, keep: &[usize]) {
        if let RawWrite::Insert(docs) = self {
            let mut i = 0;
            docs.retain(|_| {
                let k = keep.contains(&i);
                i += 1;
                k
            });
        }
    }
}

/// Runs `write` on `docs`, bounded by `bound`, in `session`'s transaction when given.
pub(crate) async fn exec(
    meta: &'static EntityMeta,
    docs: &Coll,
    operation: &'static str,
    bound: Duration,
    retry: &RetryConfig,
    write: &RawWrite,
    session: Option<&mut Session>,
) -> Result<RawOutcome> {
    let what = || format!("{operation} {}.{}", meta.database, meta.collection);
    let classify = |e| classify_write(meta.name, what(), e);
    let timeout = |_| Error::Timeout {
        component: Component::Mongodb,
        operation,
        after: bound,
    };
    // Outside a transaction a write is sent again when the driver proves it never left
    // (`connection/retry.rs`); inside one, the transaction is the unit that is retried.
    macro_rules! run {
        (|$s:ident| $action:expr) => {
            match session {
                None => {
                    retry
                        .run(Retry::Unsent, operation, bound, || {
                            let $s: Option<&mut Session> = None;
                            $action
                        })
                        .await?
                }
                Some(s) => {
                    let $s = Some(s);
                    tokio::time::timeout(bound, $action)
                        .await
                        .map_err(timeout)?
                }
            }
        };
    }
    match write {
        RawWrite::Insert(batch) if batch.len() == 1 && session.is_none() => {
            match insert_one(docs, operation, bound, retry, &batch[0]).await? {
                Ok(()) => Ok(RawOutcome::Inserted(vec![Ok(())])),
                Err(e) => match classify(e) {
                    e @ Error::DuplicateKey { .. } => Ok(RawOutcome::Inserted(vec![Err(e)])),
                    e => Err(e),
                },
            }
        }
        RawWrite::Insert(batch) if batch.len() == 1 => {
            match run!(|s| docs.insert_one(&batch[0], s)) {
                Ok(()) => Ok(RawOutcome::Inserted(vec![Ok(())])),
                Err(e) => match classify(e) {
                    e @ Error::DuplicateKey { .. } => Ok(RawOutcome::Inserted(vec![Err(e)])),
                    e => Err(e),
                },
            }
        }
        RawWrite::Insert(batch) => {
            let n = batch.len();
            match run!(|s| docs.insert_many(batch, false, s)) {
                Ok(()) => Ok(RawOutcome::Inserted((0..n).map(|_| Ok(())).collect())),
                Err(e) => insert_many_report(meta, n, e),
            }
        }
        RawWrite::Update { filter, update } => {
            run!(|s| docs.find_one_and_update(filter.clone(), update.clone(), true, s))
                .map(RawOutcome::Updated)
                .map_err(classify)
        }
        RawWrite::UpdateMany { filter, update } => {
            run!(|s| docs.update(filter.clone(), update.clone(), true, false, s))
                .map(|r| RawOutcome::Matched {
                    count: r.modified,
                    upserted: false,
                })
                .map_err(classify)
        }
        RawWrite::Replace {
            filter,
            doc,
            upsert,
        } => run!(|s| docs.replace(filter.clone(), doc, *upsert, s))
            .map(|r| RawOutcome::Matched {
                count: r.matched,
                upserted: r.upserted_id.is_some(),
            })
            .map_err(classify),
        RawWrite::Delete { filter } => run!(|s| docs.delete(filter.clone(), false, s))
            .map(|r| RawOutcome::Matched {
                count: r,
                upserted: false,
            })
            .map_err(classify),
        RawWrite::DeleteMany { filter } => run!(|s| docs.delete(filter.clone(), true, s))
            .map(|r| RawOutcome::Matched {
                count: r,
                upserted: false,
            })
            .map_err(classify),
    }
}

/// One document's insert outside a transaction. Sent again after any transient fault, even one
/// that leaves open whether it landed (a connection the server closed while it ran: a stale
/// pooled connection after a restart): an insert cannot apply twice, because its `_id` is
/// unique. A duplicate key on the resend then means it landed if the stored document is the
/// one sent, and the call succeeds; another document under that `_id` (or a clash on another
/// unique key) is the duplicate it says. Only transaction-free: in a transaction, the
/// transaction is what is retried.
async fn insert_one(
    docs: &Coll,
    operation: &'static str,
    bound: Duration,
    retry: &RetryConfig,
    doc: &Document,
) -> Result<mongodb::error::Result<()>> {
    let first = retry
        .run(Retry::Unsent, operation, bound, || {
            docs.insert_one(doc, None)
        })
        .await?;
    let Err(e) = &first else {
        return Ok(first);
    };
    // Faults that prove it never left were sent again above; with retries off
    // (`retry.max_attempts = 1`) nothing is.
    if retry.max_attempts < 2 || !Retry::Read.allows(e) || crate::connection::retry::unsent(e) {
        return Ok(first);
    }
    tracing::debug!(
        target: "caas_storage::retry", operation, error = %e,
        "an insert may have landed; sending it again"
    );
    metrics::counter!("caas_retries_total", "component" => "mongodb").increment(1);
    let again = retry
        .run(Retry::Read, operation, bound, || docs.insert_one(doc, None))
        .await?;
    resolve_resend(docs, operation, bound, retry, doc, again).await
}

/// The outcome of an insert sent again after it may have landed (see [`insert_one`]).
async fn resolve_resend(
    docs: &Coll,
    operation: &'static str,
    bound: Duration,
    retry: &RetryConfig,
    doc: &Document,
    again: mongodb::error::Result<()>,
) -> Result<mongodb::error::Result<()>> {
    let Err(e) = &again else {
        return Ok(again);
    };
    let duplicate = crate::error::duplicate_key_message(e).is_some();
    let Some(id) = doc.get("_id").filter(|_| duplicate) else {
        return Ok(again);
    };
    let stored = retry
        .run(Retry::Read, operation, bound, || {
            docs.find_one(mongodb::bson::doc! { "_id": id.clone() }, None)
        })
        .await?;
    match stored {
        // The first send landed: this call's document is the one stored.
        Ok(Some(stored)) if stored == *doc => Ok(Ok(())),
        _ => Ok(again),
    }
}

/// The per-document report of an unordered `insertMany` that some documents failed, or the
/// error itself when it is not such a report (a fault: nothing can be said per document).
fn insert_many_report(
    meta: &'static EntityMeta,
    n: usize,
    e: mongodb::error::Error,
) -> std::result::Result<RawOutcome, Error> {
    let mongodb::error::ErrorKind::InsertMany(m) = e.kind.as_ref() else {
        return Err(classify_write(
            meta.name,
            format!("insert_many {}.{}", meta.database, meta.collection),
            e,
        ));
    };
    if m.write_concern_error.is_some() {
        return Err(Error::mongo(
            format!("insert_many {}.{}", meta.database, meta.collection),
            e,
        ));
    }
    let mut results: Vec<Result<()>> = (0..n).map(|_| Ok(())).collect();
    for w in m.write_errors.iter().flatten() {
        let err = if w.code == DUPLICATE_KEY {
            Error::DuplicateKey {
                entity: meta.name,
                index: None,
                message: crate::redact::duplicate_key_message(&w.message),
            }
        } else {
            Error::Rejected {
                entity: meta.name,
                position: w.index,
                code: w.code,
                message: w.message.clone(),
            }
        };
        if let Some(slot) = results.get_mut(w.index) {
            *slot = Err(err);
        }
    }
    Ok(RawOutcome::Inserted(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryStore;
    use mongodb::bson::doc;
    use std::sync::Arc;

    /// An insert sent again after it may have landed: a duplicate `_id` holding the document
    /// sent is this call's own first send (success); another document there is the duplicate.
    #[tokio::test]
    async fn a_resent_insert_that_finds_its_own_document_succeeds() {
        let docs = Coll::new(Arc::new(MemoryStore::default().collection("db", "c")));
        let (bound, retry) = (Duration::from_secs(5), RetryConfig::default());
        let mine = doc! { "_id": "t1:a", "tenant_id": "t1", "id": "a", "text": "mine" };
        // The first send landed; the resend collides with it.
        docs.insert_one(&mine, None).await.unwrap();
        let again = docs.insert_one(&mine, None).await;
        assert!(again.is_err());
        let outcome = resolve_resend(&docs, "insert", bound, &retry, &mine, again).await;
        assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");

        // Another caller's document under the same `_id`: the duplicate stands.
        let theirs = doc! { "_id": "t1:a", "tenant_id": "t1", "id": "a", "text": "theirs" };
        let again = docs.insert_one(&theirs, None).await;
        let outcome = resolve_resend(&docs, "insert", bound, &retry, &theirs, again).await;
        let Ok(Err(e)) = outcome else {
            panic!("the duplicate stands: {outcome:?}");
        };
        assert!(matches!(
            classify_write("", String::new(), e),
            Error::DuplicateKey { .. }
        ));
    }
}
