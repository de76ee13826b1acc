//! What the relay calls: the reads a drain pass decides on (prepared records, the window of
//! ready records, the light [`Head`] views) and the writes that record its outcome (marking
//! delivered records published, recording delivery failures).

use futures::StreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};

use super::record::{head_projection, EventState, Head};
use super::store::{only_duplicates, OutboxStore};
use crate::error::{Error, Result};

impl OutboxStore {
    /// Prepared records, optionally only of some shards.
    pub(crate) async fn prepared_heads(&self, shards: Option<Bson>) -> Result<Vec<Head>> {
        let mut filter = doc! { "state": EventState::Prepared.as_str() };
        if let Some(s) = shards {
            filter.insert("shard", s);
        }
        self.heads("read prepared outbox records", filter).await
    }

    /// Parked records, optionally only of some shards: each holds back the later revisions
    /// of its aggregate until it is redriven or discarded.
    pub(crate) async fn parked_heads(&self, shards: Option<Bson>) -> Result<Vec<Head>> {
        let mut filter = doc! { "state": EventState::Parked.as_str() };
        if let Some(s) = shards {
            filter.insert("shard", s);
        }
        self.heads("read parked outbox records", filter).await
    }

    /// Up to `limit` ready records (full documents), oldest first.
    pub(crate) async fn ready_window(
        &self,
        shards: Option<Bson>,
        limit: usize,
    ) -> Result<Vec<Document>> {
        let mut filter = doc! { "state": EventState::Ready.as_str() };
        if let Some(s) = shards {
            filter.insert("shard", s);
        }
        self.find_docs(
            "read ready outbox records",
            filter,
            Some(doc! { "created_at": 1, "_id": 1 }),
            Some(i64::try_from(limit).unwrap_or(i64::MAX)),
            None,
        )
        .await
    }

    /// Light views of the ready records created at or after `since` (ms).
    pub(crate) async fn ready_heads_since(
        &self,
        shards: Option<Bson>,
        since: i64,
    ) -> Result<Vec<Head>> {
        let mut filter = doc! {
            "state": EventState::Ready.as_str(),
            "created_at": { "$gte": DateTime::from_millis(since) },
        };
        if let Some(s) = shards {
            filter.insert("shard", s);
        }
        self.heads("read ready outbox records", filter).await
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

    /// `ready -> published` for delivered records, given their full documents as read: copied
    /// to [`PUBLISHED_COLLECTION`](super::PUBLISHED_COLLECTION), then deleted from the outbox.
    /// Two batched statements; a per-document update costs FerretDB one SQLite transaction each
    /// (about 15 ms measured).
    /// A crash between the two leaves the records `ready` as well: they are published again
    /// (at-least-once), never lost.
    pub(crate) async fn mark_published(&self, docs: Vec<Document>, relay: &str) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
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
