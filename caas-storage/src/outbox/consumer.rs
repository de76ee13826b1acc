//! For the consumers of outbox events: parse a Kafka message back into an [`EventEnvelope`],
//! and drop redeliveries with a [`Deduplicator`].
//!
//! The relay delivers at least once: after a relay crash, or a lost acknowledgement, an event
//! can arrive twice (same `event_id`). A consumer that handles each event id once per consumer
//! group turns that into effectively-once handling.

use std::future::IntoFuture;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use rdkafka::message::{Headers, Message};

use super::envelope::EventEnvelope;
use crate::connection::Connections;
use crate::error::{duplicate_key_message, Component, Error, Result};

/// The collection consumed event ids are recorded in.
pub const CONSUMED_COLLECTION: &str = "caas_consumed_events";

/// Default bound on each MongoDB operation of the deduplicator.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The event in a Kafka message (an `OwnedMessage` or a `BorrowedMessage`) produced by the
/// relay: its value is the envelope JSON.
pub fn envelope_from_message<M: Message>(message: &M) -> Result<EventEnvelope> {
    let bytes = message.payload().ok_or_else(|| Error::Codec {
        entity: "EventEnvelope",
        direction: "decode",
        message: format!(
            "message at {}/{}@{} has no value",
            message.topic(),
            message.partition(),
            message.offset()
        ),
    })?;
    EventEnvelope::from_json(bytes)
}

/// The value of header `name` as text, if present and UTF-8 (e.g. `event_id`, `event_type`,
/// `tenant`).
pub fn header_value<M: Message>(message: &M, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// Remembers which event ids a consumer group has handled, in `caas_consumed_events` of a
/// database: `{_id: "<group>:<event_id>", group, event_id, at}`. Unique `_id` inserts decide,
/// so two consumers racing on the same redelivered event cannot both see it as new (on MongoDB
/// and on FerretDB).
#[derive(Debug, Clone)]
pub struct Deduplicator {
    coll: Collection<Document>,
    database: String,
    op_timeout: Duration,
}

impl Deduplicator {
    /// Records in `database`.
    pub(crate) fn new(conn: &Connections, database: &str) -> Self {
        Deduplicator {
            coll: conn.database(database).collection(CONSUMED_COLLECTION),
            database: database.to_owned(),
            op_timeout: OP_TIMEOUT,
        }
    }

    /// Sets the bound on each MongoDB operation.
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// `true` the first time `consumer_group` presents `event_id`, `false` for every
    /// redelivery. Call it before handling; if handling then fails, call
    /// [`forget`](Self::forget) so the redelivery is handled.
    pub async fn first_time(&self, consumer_group: &str, event_id: &str) -> Result<bool> {
        let key = format!("{consumer_group}:{event_id}");
        let insert = self.coll.insert_one(doc! {
            "_id": &key, "group": consumer_group, "event_id": event_id, "at": DateTime::now(),
        });
        match tokio::time::timeout(self.op_timeout, insert.into_future()).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if duplicate_key_message(&e).is_some() => Ok(false),
            Ok(Err(e)) => Err(Error::mongo(
                format!(
                    "record consumed event ({}.{CONSUMED_COLLECTION})",
                    self.database
                ),
                e,
            )),
            Err(_) => Err(self.timeout("record consumed event")),
        }
    }

    /// [`first_time`](Self::first_time) for an envelope.
    pub async fn first_time_envelope(
        &self,
        consumer_group: &str,
        envelope: &EventEnvelope,
    ) -> Result<bool> {
        self.first_time(consumer_group, &envelope.event_id).await
    }

    /// Forgets that `consumer_group` handled `event_id` (its handling failed after
    /// [`first_time`](Self::first_time) said yes).
    pub async fn forget(&self, consumer_group: &str, event_id: &str) -> Result<()> {
        let key = format!("{consumer_group}:{event_id}");
        match tokio::time::timeout(
            self.op_timeout,
            self.coll.delete_one(doc! { "_id": key }).into_future(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::mongo(
                format!(
                    "forget consumed event ({}.{CONSUMED_COLLECTION})",
                    self.database
                ),
                e,
            )),
            Err(_) => Err(self.timeout("forget consumed event")),
        }
    }

    /// Deletes records older than `older_than` (longer than any redelivery can come late);
    /// returns how many. FerretDB has no TTL indexes, so run it periodically.
    pub async fn cleanup(&self, older_than: Duration) -> Result<u64> {
        let cutoff = DateTime::from_millis(
            DateTime::now().timestamp_millis()
                - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2),
        );
        let delete = self.coll.delete_many(doc! { "at": { "$lt": cutoff } });
        match tokio::time::timeout(self.op_timeout, delete.into_future()).await {
            Ok(Ok(r)) => Ok(r.deleted_count),
            Ok(Err(e)) => Err(Error::mongo(
                format!(
                    "clean up consumed events ({}.{CONSUMED_COLLECTION})",
                    self.database
                ),
                e,
            )),
            Err(_) => Err(self.timeout("clean up consumed events")),
        }
    }

    fn timeout(&self, operation: &'static str) -> Error {
        Error::Timeout {
            component: Component::Mongodb,
            operation,
            after: self.op_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    #[test]
    fn messages_parse_back_into_envelopes() {
        let e = EventEnvelope::new(
            "user.created",
            "User",
            "u1",
            "t1",
            serde_json::json!({"a": 1}),
        );
        let headers = OwnedHeaders::new().insert(Header {
            key: "event_id",
            value: Some(e.event_id.as_str()),
        });
        let m = OwnedMessage::new(
            Some(e.to_json().unwrap()),
            Some(b"u1".to_vec()),
            "users".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        );
        assert_eq!(envelope_from_message(&m).unwrap(), e);
        assert_eq!(
            header_value(&m, "event_id").as_deref(),
            Some(e.event_id.as_str())
        );
        assert_eq!(header_value(&m, "nope"), None);
        let empty = OwnedMessage::new(
            None,
            None,
            "users".into(),
            Timestamp::NotAvailable,
            0,
            8,
            None,
        );
        let err = envelope_from_message(&empty).unwrap_err().to_string();
        assert!(err.contains("users/0@8"), "{err}");
    }
}
