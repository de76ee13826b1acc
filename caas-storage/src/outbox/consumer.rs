//! For the consumers of outbox events: parse a Kafka message back into an [`EventEnvelope`],
//! and drop redeliveries with a [`Deduplicator`].
//!
//! The relay delivers at least once: after a relay crash, or a lost acknowledgement, an event
//! can arrive twice (same `event_id`). [`Deduplicator::handle_once`] runs a handler for an
//! event unless its consumer group already handled it, and records it only after the handler
//! succeeded. The guarantee is at-least-once handling with duplicates dropped once recorded:
//! a consumer that dies between the handler's success and the record handles the redelivery
//! again (make handlers idempotent, or record in the handler's own transaction with
//! [`Deduplicator::mark_handled`]); no event is ever dropped unhandled.
//!
//! [`handle_traced`] runs a handler inside the trace the event was recorded in (its
//! `traceparent` header): see [`trace`](crate::trace).

use std::future::{Future, IntoFuture};
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use rdkafka::message::{Headers, Message};

use super::envelope::EventEnvelope;
use crate::connection::Connections;
use crate::error::{duplicate_key_message, Component, Error, Result};
use crate::trace::TraceContext;
use tracing::Instrument;

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

/// The trace context a message carries in its `traceparent` header (set by the relay from
/// the call that recorded the event), if present and valid.
pub fn trace_context<M: Message>(message: &M) -> Option<TraceContext> {
    TraceContext::parse(&header_value(message, "traceparent")?).ok()
}

/// Runs `handler` (the handling of `message`) in the message's trace: inside a
/// `caas_storage.consume` span (info level, with the message's topic, partition, offset and
/// event type, and `trace_id`/`span_id`/`parent_span_id`), as the current
/// [`TraceContext`], a child of the one in its `traceparent` header. Repository calls the
/// handler makes continue the trace, and the events they record carry it on. A message
/// without a valid header is handled in a new trace.
pub async fn handle_traced<M, F>(message: &M, handler: F) -> F::Output
where
    M: Message,
    F: Future,
{
    let (ctx, parent) = match trace_context(message) {
        Some(remote) => (remote.child(), Some(remote.span_id())),
        None => (TraceContext::new_root(), None),
    };
    let event_type = header_value(message, "event_type");
    let span = tracing::info_span!(
        target: "caas_storage::consumer",
        "caas_storage.consume",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation = "process",
        messaging.destination.name = message.topic(),
        messaging.kafka.partition = message.partition(),
        messaging.kafka.offset = message.offset(),
        caas.event_type = event_type.as_deref(),
        trace_id = %ctx.trace_id(),
        span_id = %ctx.span_id(),
        parent_span_id = parent.map(tracing::field::display),
    );
    ctx.scope(handler.instrument(span)).await
}

/// Remembers which event ids a consumer group has handled, in `caas_consumed_events` of a
/// database: `{_id: "<group>:<event_id>", group, event_id, at}`. See the module docs for the
/// guarantee.
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

    /// Runs `handler` for `event_id` unless `consumer_group` already handled it, and records
    /// it only if the handler succeeded. `Ok(None)`: a duplicate, not run; `Ok(Some(r))`: the
    /// handler ran and returned `r` (an `Err` is not recorded, so the redelivery runs it
    /// again). Two consumers handed the same event at once may both run it.
    pub async fn handle_once<F, Fut, T, E>(
        &self,
        consumer_group: &str,
        event_id: &str,
        handler: F,
    ) -> Result<Option<std::result::Result<T, E>>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
    {
        if self.is_handled(consumer_group, event_id).await? {
            return Ok(None);
        }
        let outcome = handler().await;
        if outcome.is_ok() {
            self.mark_handled(consumer_group, event_id).await?;
        }
        Ok(Some(outcome))
    }

    /// Whether `consumer_group` handled `event_id` (recorded by
    /// [`mark_handled`](Self::mark_handled)).
    pub async fn is_handled(&self, consumer_group: &str, event_id: &str) -> Result<bool> {
        let key = format!("{consumer_group}:{event_id}");
        let find = self.coll.find_one(doc! { "_id": &key });
        match tokio::time::timeout(self.op_timeout, find.into_future()).await {
            Ok(Ok(found)) => Ok(found.is_some()),
            Ok(Err(e)) => Err(Error::mongo(
                format!(
                    "read consumed event ({}.{CONSUMED_COLLECTION})",
                    self.database
                ),
                e,
            )),
            Err(_) => Err(self.timeout("read consumed event")),
        }
    }

    /// Records that `consumer_group` handled `event_id`. Call it once the handling
    /// succeeded; recording an event twice is harmless.
    pub async fn mark_handled(&self, consumer_group: &str, event_id: &str) -> Result<()> {
        let key = format!("{consumer_group}:{event_id}");
        let insert = self.coll.insert_one(doc! {
            "_id": &key, "group": consumer_group, "event_id": event_id, "at": DateTime::now(),
        });
        match tokio::time::timeout(self.op_timeout, insert.into_future()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if duplicate_key_message(&e).is_some() => Ok(()),
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
