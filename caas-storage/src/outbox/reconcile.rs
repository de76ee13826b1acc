//! Reconciliation: deciding the `prepared` records a crash (or an unknown outcome) left
//! behind, by what the other records of the write and of the aggregate say and, failing that,
//! by the entity document itself. The rules are described in `docs/outbox.md`.

use futures::TryStreamExt;
use mongodb::bson::{self, doc, Bson, DateTime, Document};

use super::record::{
    head_projection, int, state_of, EventState, Head, ReconcileReport, WriteKind, WriteRef,
};
use super::store::OutboxStore;
use crate::document::{DELETED_AT_FIELD, INCARNATION_FIELD, OP_FIELD};
use crate::error::{Error, Result};

impl OutboxStore {
    /// Decides every `prepared` record older than the reconcile age (relative to `now`): the
    /// write happened -> `ready`, it did not -> `abandoned`. See `docs/outbox.md` for the rules.
    /// The relay runs this for the shards it holds; calling it elsewhere is safe too.
    pub async fn reconcile(&self, now: DateTime) -> Result<ReconcileReport> {
        let prepared = self.prepared_heads(None).await?;
        self.reconcile_heads(&prepared, now).await
    }

    /// Reconciles the stale ones among `prepared` (records of the shards the caller holds).
    pub(crate) async fn reconcile_heads(
        &self,
        prepared: &[Head],
        now: DateTime,
    ) -> Result<ReconcileReport> {
        let cutoff = now.timestamp_millis()
            - i64::try_from(self.reconcile_after.as_millis()).unwrap_or(i64::MAX / 2);
        let mut report = ReconcileReport::default();
        // Later events of an aggregate first: a later one found to have happened decides the
        // earlier ones of its incarnation (rule 2).
        let mut stale: Vec<&Head> = prepared.iter().filter(|h| h.created_at < cutoff).collect();
        stale.sort_by(|a, b| b.position().cmp(&a.position()));
        for h in stale {
            let Some(doc) = self
                .bounded(
                    "read outbox record",
                    self.coll.find_one(doc! { "_id": &h.id }),
                )
                .await?
            else {
                continue;
            };
            if state_of(&doc)? != EventState::Prepared {
                continue;
            }
            report.checked += 1;
            let decision = self.decide(h, &doc, cutoff).await?;
            let (to, reason) = match decision {
                Decision::Ready => (EventState::Ready, None),
                Decision::Abandoned => (EventState::Abandoned, None),
                Decision::Parked(reason) => (EventState::Parked, Some(reason)),
                Decision::Later => {
                    report.deferred += 1;
                    continue;
                }
            };
            let now = DateTime::now();
            let mut set = doc! { "state": to.as_str(), "updated_at": now, "next_attempt_at": now };
            if let Some(reason) = &reason {
                set.insert("last_error", reason.as_str());
                set.insert("ambiguous", true);
            }
            let moved = self
                .bounded(
                    "reconcile outbox record",
                    self.coll.update_one(
                        doc! { "_id": &h.id, "state": EventState::Prepared.as_str() },
                        doc! { "$set": set },
                    ),
                )
                .await?
                .matched_count;
            if moved == 0 {
                continue;
            }
            match to {
                EventState::Ready => report.ready += 1,
                EventState::Abandoned => report.abandoned += 1,
                _ => report.parked += 1,
            }
            tracing::info!(
                database = %self.database, event_id = %h.id, state = to.as_str(),
                reason = reason.as_deref().unwrap_or(""),
                "reconciled a prepared outbox record"
            );
        }
        Ok(report)
    }

    /// Whether the write of stale prepared record `h` happened.
    async fn decide(&self, h: &Head, doc: &Document, cutoff: i64) -> Result<Decision> {
        let write: WriteRef = match doc.get_document("write") {
            Ok(w) => bson::from_document(w.clone()).map_err(|e| Error::Codec {
                entity: "WriteRef",
                direction: "decode",
                message: e.to_string(),
            })?,
            // Nothing to check against; it was recorded without a write.
            Err(_) => return Ok(Decision::Ready),
        };

        // 1. Other events of the same write: one already decided decides this one (a crash
        //    between their commits or abandons).
        let siblings = self
            .heads_everywhere("read outbox op", doc! { "op": &h.op })
            .await?;
        let siblings = siblings.iter().filter(|s| s.id != h.id);
        let mut sibling_abandoned = false;
        for s in siblings {
            if s.committed() {
                return Ok(Decision::Ready);
            }
            if s.ambiguous {
                return Ok(Decision::Parked(ambiguous_reason(h)));
            }
            sibling_abandoned |= s.state == EventState::Abandoned;
        }
        if sibling_abandoned {
            return Ok(Decision::Abandoned);
        }

        // 2. Versioned entities: one writer per revision transition (the version claim), within
        //    one incarnation (a document deleted and created again starts again at 0).
        let mut ambiguous = false;
        if write.revision_field.is_some() {
            let others = self
                // Only this revision and later ones decide (history before it does not).
                .heads_everywhere(
                    "read aggregate outbox",
                    doc! {
                        "agg": &h.agg, "inc": h.inc_filter(), "revision": { "$gte": h.revision },
                    },
                )
                .await?;
            let mut later_committed = false;
            for o in others.iter().filter(|o| o.op != h.op) {
                if o.revision == h.revision {
                    if o.committed() {
                        // Another writer's write produced this revision.
                        return Ok(Decision::Abandoned);
                    }
                    if o.state == EventState::Prepared {
                        if o.created_at >= cutoff {
                            return Ok(Decision::Later);
                        }
                        ambiguous = true;
                    }
                    ambiguous |= o.ambiguous;
                } else if o.revision > h.revision && o.committed() {
                    later_committed = true;
                }
            }
            if later_committed && !ambiguous {
                // Someone wrote on top of this revision, which only this write produced.
                return Ok(Decision::Ready);
            }
        }

        // 3. The document names the op of the write that produced its current revision
        //    (`_outbox_op`): at exactly this revision, that settles it, rivals or not.
        if let Some(decided) = self.decided_by_op_stamp(&write, h).await? {
            return Ok(decided);
        }

        // 4. The entity document itself.
        let happened = self.write_happened(&write, &h.inc).await?;
        Ok(match (happened, ambiguous) {
            (false, _) => Decision::Abandoned,
            (true, false) => Decision::Ready,
            (true, true) => Decision::Parked(ambiguous_reason(h)),
        })
    }

    /// `Ready`/`Abandoned` when the document is at exactly the write's revision and carries
    /// the op stamp of the write that produced it; `None` when that does not decide it.
    async fn decided_by_op_stamp(&self, w: &WriteRef, h: &Head) -> Result<Option<Decision>> {
        let Some(field) = &w.revision_field else {
            return Ok(None);
        };
        if w.kind == WriteKind::Delete && !w.soft_delete {
            return Ok(None);
        }
        let coll = self.db.collection::<Document>(&w.collection);
        let filter = doc! { w.tenant_field.as_str(): &w.tenant, w.id_field.as_str(): w.id.clone() };
        let Some(found) = self
            .bounded(
                "read entity for reconciliation",
                coll.find_one(filter).projection(
                    doc! { "_id": 0, field.as_str(): 1, OP_FIELD: 1, INCARNATION_FIELD: 1 },
                ),
            )
            .await?
        else {
            return Ok(None);
        };
        if !same_incarnation(&found, &h.inc) {
            return Ok(None);
        }
        let revision = match found.get(field.as_str()) {
            Some(Bson::Int32(i)) => i64::from(*i),
            Some(Bson::Int64(i)) => *i,
            _ => return Ok(None),
        };
        match found.get_str(OP_FIELD) {
            Ok(stamp) if revision == w.revision => Ok(Some(if stamp == h.op {
                Decision::Ready
            } else {
                Decision::Abandoned
            })),
            _ => Ok(None),
        }
    }

    /// Reads the entity document named by `w` and tells whether the write (of incarnation
    /// `inc`, "" when unknown) is reflected.
    async fn write_happened(&self, w: &WriteRef, inc: &str) -> Result<bool> {
        let coll = self.db.collection::<Document>(&w.collection);
        let mut projection = doc! { "_id": 0, DELETED_AT_FIELD: 1, INCARNATION_FIELD: 1 };
        if let Some(f) = &w.revision_field {
            projection.insert(f.as_str(), 1);
        }
        let found = self
            .bounded(
                "read entity for reconciliation",
                coll.find_one(
                    doc! { w.tenant_field.as_str(): &w.tenant, w.id_field.as_str(): w.id.clone() },
                )
                .projection(projection),
            )
            .await?;
        let revision = |d: &Document| {
            w.revision_field
                .as_ref()
                .map(|f| int(d.get(f)).unwrap_or(0))
        };
        let deleted = |d: &Document| !matches!(d.get(DELETED_AT_FIELD), None | Some(Bson::Null));
        Ok(match (w.kind, found) {
            // Another incarnation is there: this one's insert or update never took effect (had
            // it, the delete that ended the incarnation would have decided it under rule 2),
            // and this one's delete did (the incarnation is gone).
            (WriteKind::Insert | WriteKind::Update, Some(d)) if !same_incarnation(&d, inc) => false,
            (WriteKind::Delete, Some(d)) if !same_incarnation(&d, inc) => true,
            (WriteKind::Insert | WriteKind::Update, None) => false,
            (WriteKind::Insert | WriteKind::Update, Some(d)) => match revision(&d) {
                // Reaching the revision means passing through it, deleted since or not.
                Some(rev) => rev >= w.revision,
                None => !deleted(&d),
            },
            (WriteKind::Delete, None) => true,
            (WriteKind::Delete, Some(d)) if w.soft_delete && deleted(&d) => true,
            // Present again with an older revision: deleted, then created anew.
            (WriteKind::Delete, Some(d)) => revision(&d).is_some_and(|rev| rev < w.revision - 1),
        })
    }

    /// Light views of pending and published records matching `filter`.
    async fn heads_everywhere(
        &self,
        operation: &'static str,
        filter: Document,
    ) -> Result<Vec<Head>> {
        let published = async {
            self.bounded(operation, async {
                self.published
                    .find(filter.clone())
                    .projection(head_projection())
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await
            })
            .await
        };
        let (mut heads, published) =
            tokio::try_join!(self.heads(operation, filter.clone()), published)?;
        for d in &published {
            heads.push(Head::from_doc(d)?);
        }
        Ok(heads)
    }
}

/// Whether `doc` is the incarnation `inc` names. Records written before incarnations existed
/// (`inc` empty) name no incarnation: any document is theirs, as it was then.
fn same_incarnation(doc: &Document, inc: &str) -> bool {
    inc.is_empty() || doc.get_str(INCARNATION_FIELD).is_ok_and(|d| d == inc)
}

/// Why a record was parked as undecidable (its `last_error`).
fn ambiguous_reason(h: &Head) -> String {
    format!(
        "ambiguous reconciliation: several writers prepared revision {} of {} and the document \
         reached it; redrive the right one, leave the others parked",
        h.revision,
        h.agg.replace('\u{1f}', "/")
    )
}

/// What reconciliation decides for a stale prepared record.
enum Decision {
    /// The write happened.
    Ready,
    /// The write did not happen.
    Abandoned,
    /// Undecidable; parked for an operator with this reason.
    Parked(String),
    /// A competing writer's record is still fresh: decide in a later pass.
    Later,
}
