//! What operators call: reading records, the backlog, parked records and their redrive, and
//! the periodic cleanup of published and abandoned records.

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};

use super::record::{millis, record_from_doc, EventState, OutboxLag, OutboxRecord};
use super::store::{cutoff, OutboxStore};
use crate::error::{Error, Result};

impl OutboxStore {
    /// Every event recorded for a write that happened (`ready`, `published` or `parked`, the
    /// published archive included), oldest first: what a test asserts a call published
    /// ([`Storage::test_events`](crate::Storage::test_events)). Events of writes that did not
    /// happen (`abandoned`) or are not yet known to have (`prepared`) are left out.
    pub async fn recorded_events(&self) -> Result<Vec<OutboxRecord>> {
        let states =
            [EventState::Ready, EventState::Published, EventState::Parked].map(EventState::as_str);
        let sort = doc! { "created_at": 1, "_id": 1 };
        let mut docs = self
            .find_docs(
                "read recorded events",
                doc! { "state": { "$in": states.to_vec() } },
                Some(sort.clone()),
                None,
                None,
            )
            .await?;
        let options = mongodb::options::FindOptions::builder().sort(sort).build();
        docs.extend(
            self.retrying("read published events", || {
                self.archive.find_all(Document::new(), options.clone())
            })
            .await?,
        );
        let mut records = docs
            .iter()
            .map(record_from_doc)
            .collect::<Result<Vec<_>>>()?;
        records.sort_by(|a, b| {
            (a.created_at, &a.envelope.event_id).cmp(&(b.created_at, &b.envelope.event_id))
        });
        Ok(records)
    }

    /// One record by event id, pending or published.
    pub async fn get(&self, event_id: &str) -> Result<Option<OutboxRecord>> {
        let found = self
            .bounded(
                "read outbox record",
                self.records.find_one(doc! { "_id": event_id }, None),
            )
            .await?;
        let found = match found {
            Some(d) => Some(d),
            None => {
                self.bounded(
                    "read published outbox record",
                    self.archive.find_one(doc! { "_id": event_id }, None),
                )
                .await?
            }
        };
        found.as_ref().map(record_from_doc).transpose()
    }

    /// Events not yet published and not given up on (`prepared + ready`).
    pub async fn pending_count(&self) -> Result<u64> {
        let count = |state: EventState| {
            self.bounded(
                "count outbox records",
                self.records
                    .count(doc! { "state": state.as_str() }, None, None),
            )
        };
        let (ready, prepared) =
            tokio::try_join!(count(EventState::Ready), count(EventState::Prepared))?;
        Ok(ready + prepared)
    }

    /// Age of the oldest `prepared` or `ready` record.
    pub async fn oldest_pending_age(&self) -> Result<Option<Duration>> {
        Ok(self.lag().await?.oldest_pending_age())
    }

    /// Counts by state and the oldest pending age.
    pub async fn lag(&self) -> Result<OutboxLag> {
        let count = |state: EventState| {
            self.bounded(
                "count outbox records",
                self.records
                    .count(doc! { "state": state.as_str() }, None, None),
            )
        };
        let oldest = |state: EventState| async move {
            let docs = self
                .find_docs(
                    "read oldest outbox record",
                    doc! { "state": state.as_str() },
                    Some(doc! { "created_at": 1 }),
                    Some(1),
                    Some(doc! { "created_at": 1 }),
                )
                .await?;
            Ok::<_, Error>(docs.first().map(|d| millis(d.get("created_at"))))
        };
        let (ready, prepared, parked, o1, o2) = tokio::try_join!(
            count(EventState::Ready),
            count(EventState::Prepared),
            count(EventState::Parked),
            oldest(EventState::Ready),
            oldest(EventState::Prepared),
        )?;
        let now = DateTime::now().timestamp_millis();
        let oldest = match (o1, o2) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(OutboxLag {
            pending: ready + prepared,
            ready,
            prepared,
            parked,
            oldest_pending_age_ms: oldest.map(|t| u64::try_from(now - t).unwrap_or(0)),
        })
    }

    /// Parked records, oldest first, at most `limit`.
    pub async fn parked(&self, limit: usize) -> Result<Vec<OutboxRecord>> {
        let docs = self
            .find_docs(
                "list parked outbox records",
                doc! { "state": EventState::Parked.as_str() },
                Some(doc! { "created_at": 1, "_id": 1 }),
                Some(i64::try_from(limit).unwrap_or(i64::MAX)),
                None,
            )
            .await?;
        docs.iter().map(record_from_doc).collect()
    }

    /// `parked -> ready` with the attempts reset, so the relay tries again. Returns whether
    /// the record was parked.
    pub async fn redrive(&self, event_id: &str) -> Result<bool> {
        let now = DateTime::now();
        let r = self
            .bounded(
                "redrive outbox record",
                self.coll.update_one(
                    doc! { "_id": event_id, "state": EventState::Parked.as_str() },
                    doc! { "$set": {
                        "state": EventState::Ready.as_str(), "attempts": 0_i64,
                        "next_attempt_at": now, "updated_at": now, "last_error": Bson::Null,
                        "ambiguous": false,
                    } },
                ),
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// `parked -> abandoned`: the operator gives up on delivering this event. The later
    /// revisions of its aggregate, held behind it to keep the aggregate's order, go out on the
    /// next pass. Returns whether the record was parked.
    pub async fn discard(&self, event_id: &str) -> Result<bool> {
        let now = DateTime::now();
        let r = self
            .bounded(
                "discard outbox record",
                self.coll.update_one(
                    doc! { "_id": event_id, "state": EventState::Parked.as_str() },
                    doc! { "$set": {
                        "state": EventState::Abandoned.as_str(), "updated_at": now,
                        "discarded_at": now,
                    } },
                ),
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Deletes `published` records delivered more than `older_than` ago; returns how many.
    /// (FerretDB has no TTL indexes; run this periodically.)
    pub async fn cleanup_published(&self, older_than: Duration) -> Result<u64> {
        let r = self
            .bounded(
                "clean up published outbox records",
                self.published
                    .delete_many(doc! { "published_at": { "$lt": cutoff(older_than) } }),
            )
            .await?;
        Ok(r.deleted_count)
    }

    /// Deletes `abandoned` records created more than `older_than` ago; returns how many.
    pub async fn cleanup_abandoned(&self, older_than: Duration) -> Result<u64> {
        self.cleanup(EventState::Abandoned, "created_at", older_than)
            .await
    }

    /// Deletes the records in `state` whose `field` is more than `older_than` old.
    async fn cleanup(&self, state: EventState, field: &str, older_than: Duration) -> Result<u64> {
        let r = self
            .bounded(
                "clean up outbox records",
                self.coll.delete_many(
                    doc! { "state": state.as_str(), field: { "$lt": cutoff(older_than) } },
                ),
            )
            .await?;
        Ok(r.deleted_count)
    }
}
