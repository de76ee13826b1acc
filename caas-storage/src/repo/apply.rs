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
