//! The outbox's record types and the pure helpers around them: what a writer records
//! ([`PendingEvent`], [`WriteRef`]), what a stored record is ([`OutboxRecord`], [`EventState`]),
//! the reports ([`OutboxLag`], [`ReconcileReport`]), the shard hash ([`shard_of`]), the light
//! [`Head`] view the relay and reconciliation decide on, and decoding a stored document.
//!
//! A stored record is the envelope's fields plus `topic`, `state`, the `write` descriptor used
//! by reconciliation, the `shard` (stable hash of the aggregate), and the delivery bookkeeping
//! (`attempts`, `next_attempt_at`, `last_error`, `created_at`, `published_at`). `_id` is the
//! event id. The payload is stored as JSON text, so any key (with `.` or a leading `$`, which
//! FerretDB refuses in documents) and any number round-trips exactly.

use std::time::Duration;

use mongodb::bson::{self, Bson, DateTime, Document};
use serde::{Deserialize, Serialize};

use super::envelope::{rfc3339_millis, EventEnvelope};
use crate::error::{Error, Result};

/// The outbox collection, one per database.
pub const OUTBOX_COLLECTION: &str = "caas_outbox";

/// Where published records are moved, one per database. Keeping them out of
/// [`OUTBOX_COLLECTION`] keeps the relay's working set small: FerretDB evaluates every query by
/// scanning the collection, so a growing tail of published records would slow every pass.
pub const PUBLISHED_COLLECTION: &str = "caas_outbox_published";

/// The field of a stored record holding the W3C `traceparent` of the call that recorded it
/// (see [`trace`](crate::trace)); the relay sends it as the Kafka header of the same name.
pub const TRACEPARENT_FIELD: &str = "traceparent";

/// Default number of shards events are spread over (writers and relays must agree).
pub const DEFAULT_SHARD_COUNT: u32 = 16;

/// Default age after which a `prepared` record is reconciled against its entity document. Must
/// exceed the longest time a writer can take between preparing and committing.
pub const DEFAULT_RECONCILE_AFTER: Duration = Duration::from_secs(120);

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// Recorded before its entity write; not yet known to have happened.
    Prepared,
    /// Its write happened; waiting to be published.
    Ready,
    /// Delivered to Kafka.
    Published,
    /// Delivery failed `max_attempts` times; waits for
    /// [`OutboxStore::redrive`](super::OutboxStore::redrive).
    Parked,
    /// Its write did not happen; never published.
    Abandoned,
}

impl EventState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Prepared => "prepared",
            EventState::Ready => "ready",
            EventState::Published => "published",
            EventState::Parked => "parked",
            EventState::Abandoned => "abandoned",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "prepared" => EventState::Prepared,
            "ready" => EventState::Ready,
            "published" => EventState::Published,
            "parked" => EventState::Parked,
            "abandoned" => EventState::Abandoned,
            _ => return None,
        })
    }

    /// Whether the record's write is known to have happened (ready, published or parked).
    fn committed(self) -> bool {
        matches!(
            self,
            EventState::Ready | EventState::Published | EventState::Parked
        )
    }
}

/// What kind of entity write caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    /// A new document.
    Insert,
    /// An update or replace of an existing document.
    Update,
    /// A delete (hard or soft).
    Delete,
}

/// The entity write an event belongs to: enough to find the document and tell, after a crash,
/// whether the write happened. All fields name the stored document in the outbox's database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteRef {
    /// The entity's collection.
    pub collection: String,
    /// Stored name of the tenant field.
    pub tenant_field: String,
    /// The tenant (value of the tenant field).
    pub tenant: String,
    /// Stored name of the id field.
    pub id_field: String,
    /// The id, as stored.
    pub id: Bson,
    /// Stored name of the version field; `None` for unversioned entities (reconciliation then
    /// checks only existence, which is exact for inserts and deletes but not for updates).
    pub revision_field: Option<String>,
    /// The revision the write moves the document to (for a delete: the last stored revision
    /// plus one). Equals the envelope's `revision`.
    pub revision: i64,
    /// Insert, update or delete.
    pub kind: WriteKind,
    /// Whether deletes of this entity are soft (`_deleted_at` set, document kept).
    pub soft_delete: bool,
}

/// An event to record: the envelope, the topic it goes to and the write that causes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    /// The event.
    pub envelope: EventEnvelope,
    /// Kafka topic.
    pub topic: String,
    /// The entity write.
    pub write: WriteRef,
}

/// A stored outbox record, as the admin calls return it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxRecord {
    /// The event.
    pub envelope: EventEnvelope,
    /// Kafka topic.
    pub topic: String,
    /// Current state.
    pub state: EventState,
    /// The write it belongs to (absent for events recorded without one).
    pub write: Option<WriteRef>,
    /// The shard (see [`shard_of`]).
    pub shard: u32,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Not published before this time (backoff after a failure).
    pub next_attempt_at: DateTime,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
    /// When the record was written.
    pub created_at: DateTime,
    /// When it was delivered.
    pub published_at: Option<DateTime>,
}

/// Backlog of one or more outboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxLag {
    /// Events not yet published and not given up on: `prepared + ready`.
    pub pending: u64,
    /// Events whose write happened, waiting for the relay.
    pub ready: u64,
    /// Events whose write is in flight (or crashed, until reconciled).
    pub prepared: u64,
    /// Events that exhausted their delivery attempts.
    pub parked: u64,
    /// Age of the oldest pending event, in milliseconds.
    pub oldest_pending_age_ms: Option<u64>,
}

impl OutboxLag {
    /// Adds another outbox's lag (counts summed, oldest age the maximum).
    pub fn merge(&mut self, other: &OutboxLag) {
        self.pending += other.pending;
        self.ready += other.ready;
        self.prepared += other.prepared;
        self.parked += other.parked;
        self.oldest_pending_age_ms = match (self.oldest_pending_age_ms, other.oldest_pending_age_ms)
        {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// The oldest pending age as a `Duration`.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending_age_ms.map(Duration::from_millis)
    }
}

/// What one reconciliation pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Stale `prepared` records examined.
    pub checked: u64,
    /// Found to have happened: now `ready`.
    pub ready: u64,
    /// Found not to have happened: now `abandoned`.
    pub abandoned: u64,
    /// Could not be decided (two writers prepared the same revision and the document reached
    /// it): now `parked` for an operator, with the reason in `last_error`.
    pub parked: u64,
    /// Left for a later pass (a competing writer's record is still fresh).
    pub deferred: u64,
}

impl ReconcileReport {
    /// Adds another report's counts.
    pub fn merge(&mut self, o: &ReconcileReport) {
        self.checked += o.checked;
        self.ready += o.ready;
        self.abandoned += o.abandoned;
        self.parked += o.parked;
        self.deferred += o.deferred;
    }
}

/// The shard of an aggregate: FNV-1a (32 bit) of `tenant ␟ aggregate_type ␟ aggregate_id`,
/// modulo `shard_count`. Stable across processes, platforms and releases.
pub fn shard_of(tenant: &str, aggregate_type: &str, aggregate_id: &str, shard_count: u32) -> u32 {
    fnv1a(aggregate_key(tenant, aggregate_type, aggregate_id).as_bytes()) % shard_count.max(1)
}

/// The aggregate's identity in records (`agg`): `tenant ␟ aggregate_type ␟ aggregate_id`.
pub(super) fn aggregate_key(tenant: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{tenant}\u{1f}{aggregate_type}\u{1f}{aggregate_id}")
}

/// FNV-1a, 32 bit.
pub(super) fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The light view of a record the relay and reconciliation decide on.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub id: String,
    pub agg: String,
    pub op: String,
    /// The aggregate's incarnation ("" for records written before incarnations existed).
    pub inc: String,
    pub revision: i64,
    pub state: EventState,
    pub created_at: i64,
    pub next_attempt_at: i64,
    /// Parked by reconciliation as undecidable (so not known to have happened).
    pub ambiguous: bool,
}

impl Head {
    /// Known to have happened: ready, published, or parked after delivery failures.
    pub(super) fn committed(&self) -> bool {
        self.state.committed() && !self.ambiguous
    }

    /// Where the event stands among its aggregate's events: incarnation, then revision.
    pub(super) fn position(&self) -> (&str, i64) {
        (&self.inc, self.revision)
    }

    /// A filter on this record's incarnation (records without one have no `inc` field).
    pub(super) fn inc_filter(&self) -> Bson {
        if self.inc.is_empty() {
            Bson::Null
        } else {
            Bson::String(self.inc.clone())
        }
    }
}

pub(crate) const HEAD_FIELDS: [&str; 9] = [
    "_id",
    "agg",
    "op",
    "inc",
    "revision",
    "state",
    "created_at",
    "next_attempt_at",
    "ambiguous",
];

/// Projection of the [`HEAD_FIELDS`].
pub(super) fn head_projection() -> Document {
    HEAD_FIELDS
        .iter()
        .map(|f| (f.to_string(), Bson::Int32(1)))
        .collect()
}

impl Head {
    pub(crate) fn from_doc(d: &Document) -> Result<Head> {
        Ok(Head {
            id: req_str(d, "_id")?.to_owned(),
            agg: d.get_str("agg").unwrap_or_default().to_owned(),
            op: d.get_str("op").unwrap_or_default().to_owned(),
            inc: d.get_str("inc").unwrap_or_default().to_owned(),
            revision: int(d.get("revision")).unwrap_or(0),
            state: state_of(d)?,
            created_at: millis(d.get("created_at")),
            next_attempt_at: millis(d.get("next_attempt_at")),
            ambiguous: d.get_bool("ambiguous").unwrap_or(false),
        })
    }
}

/// Identity of an entity write, to group the events of one write.
pub(super) fn write_key(w: &WriteRef) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{:?}",
        w.collection, w.tenant, w.id, w.revision, w.kind
    )
}

pub(crate) fn int(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

pub(crate) fn millis(b: Option<&Bson>) -> i64 {
    match b {
        Some(Bson::DateTime(d)) => d.timestamp_millis(),
        _ => 0,
    }
}

fn req_str<'a>(d: &'a Document, key: &str) -> Result<&'a str> {
    d.get_str(key)
        .map_err(|_| codec_err(format!("field `{key}` missing or not a string")))
}

fn codec_err(message: String) -> Error {
    Error::Codec {
        entity: "OutboxRecord",
        direction: "decode",
        message,
    }
}

pub(super) fn state_of(d: &Document) -> Result<EventState> {
    let s = req_str(d, "state")?;
    EventState::parse(s).ok_or_else(|| codec_err(format!("unknown state {s:?}")))
}

fn opt_str(d: &Document, key: &str) -> Option<String> {
    d.get_str(key).ok().map(str::to_owned)
}

/// A full stored record as an [`OutboxRecord`].
pub(crate) fn record_from_doc(d: &Document) -> Result<OutboxRecord> {
    let payload = match d.get_str("payload") {
        Ok(text) => serde_json::from_str(text)
            .map_err(|e| codec_err(format!("payload is not JSON: {e}")))?,
        Err(_) => serde_json::Value::Null,
    };
    let created_at = DateTime::from_millis(millis(d.get("created_at")));
    let envelope = EventEnvelope {
        event_id: req_str(d, "_id")?.to_owned(),
        event_type: req_str(d, "event_type")?.to_owned(),
        aggregate_type: req_str(d, "aggregate_type")?.to_owned(),
        aggregate_id: req_str(d, "aggregate_id")?.to_owned(),
        tenant: req_str(d, "tenant")?.to_owned(),
        schema_version: u32::try_from(int(d.get("schema_version")).unwrap_or(1)).unwrap_or(1),
        occurred_at: opt_str(d, "occurred_at")
            .unwrap_or_else(|| rfc3339_millis(created_at.timestamp_millis())),
        revision: u64::try_from(int(d.get("revision")).unwrap_or(0)).unwrap_or(0),
        incarnation: opt_str(d, "inc"),
        payload,
        correlation_id: opt_str(d, "correlation_id"),
        causation_id: opt_str(d, "causation_id"),
    };
    let write = match d.get_document("write") {
        Ok(w) => Some(bson::from_document(w.clone()).map_err(|e| codec_err(e.to_string()))?),
        Err(_) => None,
    };
    Ok(OutboxRecord {
        envelope,
        topic: req_str(d, "topic")?.to_owned(),
        state: state_of(d)?,
        write,
        shard: u32::try_from(int(d.get("shard")).unwrap_or(0)).unwrap_or(0),
        attempts: u32::try_from(int(d.get("attempts")).unwrap_or(0)).unwrap_or(0),
        next_attempt_at: DateTime::from_millis(millis(d.get("next_attempt_at"))),
        last_error: opt_str(d, "last_error"),
        created_at,
        published_at: match d.get("published_at") {
            Some(Bson::DateTime(t)) => Some(*t),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn shards_are_stable_fnv1a() {
        // FNV-1a 32 reference values.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
        let s = shard_of("t1", "User", "u1", 16);
        assert!(s < 16);
        assert_eq!(s, shard_of("t1", "User", "u1", 16));
        assert_eq!(shard_of("t1", "User", "u1", 0), 0);
    }

    #[test]
    fn records_round_trip() {
        let store_doc = {
            let e = EventEnvelope::new(
                "user.created",
                "User",
                "u1",
                "t1",
                serde_json::json!({"a.b": 1, "$x": [1, 2], "big": u64::MAX}),
            )
            .with_revision(3)
            .with_causation_id("c");
            let p = PendingEvent {
                envelope: e,
                topic: "users".into(),
                write: WriteRef {
                    collection: "users".into(),
                    tenant_field: "tenant_id".into(),
                    tenant: "t1".into(),
                    id_field: "user_id".into(),
                    id: Bson::String("u1".into()),
                    revision_field: Some("version".into()),
                    revision: 3,
                    kind: WriteKind::Update,
                    soft_delete: false,
                },
            };
            let payload = serde_json::to_string(&p.envelope.payload).unwrap();
            let agg = aggregate_key("t1", "User", "u1");
            (
                p.clone(),
                doc! {
                    "_id": &p.envelope.event_id, "event_type": "user.created",
                    "aggregate_type": "User", "aggregate_id": "u1", "tenant": "t1",
                    "schema_version": 1_i64, "occurred_at": &p.envelope.occurred_at,
                    "revision": 3_i64, "payload": payload, "correlation_id": Bson::Null,
                    "causation_id": "c", "topic": "users", "state": "ready",
                    "write": bson::to_bson(&p.write).unwrap(), "op": "x", "agg": agg,
                    "shard": 3_i64, "attempts": 2_i32, "next_attempt_at": DateTime::now(),
                    "last_error": "boom", "created_at": DateTime::now(), "published_at": Bson::Null,
                },
            )
        };
        let (p, d) = store_doc;
        let r = record_from_doc(&d).unwrap();
        assert_eq!(r.envelope, p.envelope);
        assert_eq!(r.write.as_ref(), Some(&p.write));
        assert_eq!(r.attempts, 2);
        assert_eq!(r.state, EventState::Ready);
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        let h = Head::from_doc(&d).unwrap();
        assert_eq!(h.revision, 3);
    }
}
