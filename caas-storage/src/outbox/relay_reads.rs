//! What the relay calls: the reads a drain pass decides on (prepared records, the window of
//! ready records, the light [`Head`] views) and the writes that record its outcome (marking
//! delivered records published, recording delivery failures).

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, DateTime, Document};

use super::record::{head_projection, millis, EventState, Head};
use super::store::{only_duplicates, OutboxStore};
use crate::error::{Error, Result};

/// What [`OutboxStore::pending_window`] read.
#[derive(Debug, Default)]
pub(crate) struct PendingWindow {
    /// `prepared` records read (light views).
    pub prepared: Vec<Head>,
    /// `parked` records read (light views).
    pub parked: Vec<Head>,
    /// Up to the limit of `ready` records, oldest first (full documents).
    pub window: Vec<Document>,
    /// Records of any pending state after the window, within the clock-skew horizon.
    pub beyond: Vec<Head>,
    /// Whether pending records exist after the window (the pass did not see every one).
    pub truncated: bool,
}

impl OutboxStore {
    /// Prepared records, optionally only of some shards.
    pub(crate) async fn prepared_heads(&self, shards: Option<Bson>) -> Result<Vec<Head>> {
        let mut filter = doc! { "state": EventState::Prepared.as_str() };
        if let Some(s) = shards {
            filter.insert("shard", s);
        }
        self.heads("read prepared outbox records", filter).await
    }

    /// The records a drain pass decides on, in one read: pending records (`prepared`,
    /// `parked`, `ready`) oldest first (`created_at`, `_id`), until `limit` ready ones were
    /// seen, and then on while they were created within `skew_ms` of the last of those (an
    /// earlier revision stamped by a slower clock can only be there). One query, so one
    /// collection scan on a server that scans (FerretDB) instead of one per state; records
    /// past the horizon are not read.
    pub(crate) async fn pending_window(
        &self,
        shards: Option<Bson>,
        limit: usize,
        skew_ms: i64,
    ) -> Result<PendingWindow> {
        let mut filter = doc! { "state": { "$in": [
            EventState::Prepared.as_str(),
            EventState::Parked.as_str(),
            EventState::Ready.as_str(),
        ] } };
        if let Some(s) = shards {
            filter.insert("shard", s);
        }
        let ready_state = EventState::Ready.as_str();
        // A read is safe to repeat: retried after a connection-level failure.
        let (others, ready, beyond, truncated) = self
            .retrying("read pending outbox records", || {
                let (coll, filter) = (&self.coll, filter.clone());
                async move {
                    let mut cursor = coll
                        .find(filter)
                        .sort(doc! { "created_at": 1, "_id": 1 })
                        .batch_size(u32::try_from(limit).unwrap_or(u32::MAX).saturating_add(16))
                        .await?;
                    let (mut others, mut ready, mut beyond) = (Vec::new(), Vec::new(), Vec::new());
                    let mut horizon = None;
                    let mut truncated = false;
                    while let Some(d) = cursor.try_next().await? {
                        if ready.len() < limit {
                            if d.get_str("state") == Ok(ready_state) {
                                ready.push(d);
                            } else {
                                others.push(d);
                            }
                            continue;
                        }
                        let h = *horizon.get_or_insert_with(|| {
                            ready
                                .last()
                                .map_or(0, |l: &Document| millis(l.get("created_at")))
                                .saturating_add(skew_ms)
                        });
                        truncated = true;
                        if millis(d.get("created_at")) > h {
                            break;
                        }
                        beyond.push(d);
                    }
                    Ok::<_, mongodb::error::Error>((others, ready, beyond, truncated))
                }
            })
            .await?;
        let mut w = PendingWindow {
            window: ready,
            truncated,
            ..PendingWindow::default()
        };
        for d in &others {
            let h = Head::from_doc(d)?;
            match h.state {
                EventState::Prepared => w.prepared.push(h),
                _ => w.parked.push(h),
            }
        }
        for d in &beyond {
            w.beyond.push(Head::from_doc(d)?);
        }
        Ok(w)
    }

    /// Light views of records matching `filter`.
    pub(crate) async fn heads(
        &self,
        operation: &'static str,
        filter: Document,
    ) -> Result<Vec<Head>> {
        let docs = self
            .find_docs(operation, filter, None, None, Some(head_projection()))
            .await?;
        docs.iter().map(Head::from_doc).collect()
    }

    /// `ready -> published` for delivered records, given their full documents as read: with
    /// `archive`, copied to [`PUBLISHED_COLLECTION`](super::PUBLISHED_COLLECTION) (one
    /// `insert_many`), then deleted from the outbox (one `delete_many`); without, only
    /// deleted. Batched statements: a per-document update costs FerretDB one SQLite
    /// transaction each (about 15 ms measured).
    /// A crash between the two leaves the records `ready` as well: they are published again
    /// (at-least-once), never lost.
    pub(crate) async fn mark_published(
        &self,
        docs: Vec<Document>,
        relay: &str,
        archive: bool,
    ) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        if !archive {
            return self
                .retrying("remove published records from the outbox", || {
                    self.coll.delete_many(
                        doc! { "state": EventState::Ready.as_str(), "_id": { "$in": ids.clone() } },
                    )
                })
                .await
                .map(drop);
        }
        let copies: Vec<Document> = docs
            .into_iter()
            .map(|mut d| {
                d.insert("state", EventState::Published.as_str());
                d.insert("published_at", now);
                d.insert("published_by", relay);
                d.insert("updated_at", now);
                d
            })
            .collect();
        match self
            .retrying("archive published outbox records", || {
                self.published.insert_many(copies.iter()).ordered(false)
            })
            .await
        {
            Ok(_) => {}
            // Archived by an earlier attempt that crashed before the delete.
            Err(Error::Mongo { source, .. }) if only_duplicates(&source) => {}
            Err(e) => return Err(e),
        }
        self.retrying("remove published records from the outbox", || {
            self.coll.delete_many(
                doc! { "state": EventState::Ready.as_str(), "_id": { "$in": ids.clone() } },
            )
        })
        .await
        .map(drop)
    }

    /// Runs single-document updates (by `_id`, which FerretDB pushes down to SQL),
    /// concurrently; returns how many matched.
    pub(crate) async fn update_each(
        &self,
        operation: &'static str,
        updates: impl IntoIterator<Item = (Document, Document)>,
    ) -> Result<u64> {
        let calls: Vec<_> = updates
            .into_iter()
            .map(|(filter, update)| self.update_one_matched(operation, filter, update))
            .collect();
        let results: Vec<Result<u64>> = futures::stream::iter(calls)
            .buffer_unordered(self.update_concurrency)
            .collect()
            .await;
        let mut n = 0;
        for r in results {
            n += r?;
        }
        Ok(n)
    }
}
