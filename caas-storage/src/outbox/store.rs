//! [`OutboxStore`]: the `caas_outbox` collection of one database, and the write-side protocol
//! (prepare, commit, abandon; or insert as ready inside a transaction).
//!
//! A stored record is the envelope's fields plus `topic`, `state`, the `write` descriptor used
//! by reconciliation, the `shard` (stable hash of the aggregate), and the delivery bookkeeping
//! (`attempts`, `next_attempt_at`, `last_error`, `created_at`, `published_at`). `_id` is the
//! event id. The payload is stored as JSON text, so any key (with `.` or a leading `$`, which
//! FerretDB refuses in documents) and any number round-trips exactly.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{self, doc, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use crate::capabilities::ServerProduct;
use crate::error::{duplicate_key_message, Error, Result};
use crate::outbox::envelope::{rfc3339_millis, EventEnvelope};
use crate::storage::Storage;

/// The outbox collection, one per database.
pub const OUTBOX_COLLECTION: &str = "caas_outbox";

/// Where published records are moved, one per database. Keeping them out of
/// [`OUTBOX_COLLECTION`] keeps the relay's working set small: FerretDB evaluates every query by
/// scanning the collection, so a growing tail of published records would slow every pass.
pub const PUBLISHED_COLLECTION: &str = "caas_outbox_published";

/// Default number of shards events are spread over (writers and relays must agree).
pub const DEFAULT_SHARD_COUNT: u32 = 16;

/// Default age after which a `prepared` record is reconciled against its entity document. Must
/// exceed the longest time a writer can take between preparing and committing.
pub const DEFAULT_RECONCILE_AFTER: Duration = Duration::from_secs(120);

/// Default bound on each MongoDB operation of the outbox.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent single-document updates issued by one call on MongoDB. FerretDB serializes
/// writes in SQLite, where concurrent updates only add lock contention (measured: 30
/// concurrent updates take 2-4x as long as the same 30 in sequence), so there it is 1.
const UPDATE_CONCURRENCY: usize = 16;

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
    /// Delivery failed `max_attempts` times; waits for [`OutboxStore::redrive`].
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

fn aggregate_key(tenant: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{tenant}\u{1f}{aggregate_type}\u{1f}{aggregate_id}")
}

fn fnv1a(bytes: &[u8]) -> u32 {
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
    pub revision: i64,
    pub state: EventState,
    pub created_at: i64,
    pub next_attempt_at: i64,
    /// Parked by reconciliation as undecidable (so not known to have happened).
    pub ambiguous: bool,
}

impl Head {
    /// Known to have happened: ready, published, or parked after delivery failures.
    fn committed(&self) -> bool {
        self.state.committed() && !self.ambiguous
    }
}

pub(crate) const HEAD_FIELDS: [&str; 8] = [
    "_id",
    "agg",
    "op",
    "revision",
    "state",
    "created_at",
    "next_attempt_at",
    "ambiguous",
];

fn head_projection() -> Document {
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
            revision: int(d.get("revision")).unwrap_or(0),
            state: state_of(d)?,
            created_at: millis(d.get("created_at")),
            next_attempt_at: millis(d.get("next_attempt_at")),
            ambiguous: d.get_bool("ambiguous").unwrap_or(false),
        })
    }
}

/// The outbox of one database.
///
/// Cheap to clone. Writers call [`prepare`](Self::prepare), then
/// [`commit`](Self::commit) or [`abandon`](Self::abandon) (or, inside a MongoDB transaction,
/// [`insert_ready_in`](Self::insert_ready_in)); the [`OutboxRelay`](super::OutboxRelay)
/// publishes; the rest is administration.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    database: String,
    db: Database,
    coll: Collection<Document>,
    published: Collection<Document>,
    shard_count: u32,
    reconcile_after: Duration,
    op_timeout: Duration,
    update_concurrency: usize,
}

impl OutboxStore {
    /// The outbox of MongoDB database `database`, with [`DEFAULT_SHARD_COUNT`] shards and
    /// [`DEFAULT_RECONCILE_AFTER`].
    pub fn new(storage: &Storage, database: &str) -> Self {
        let db = storage.database(database);
        OutboxStore {
            database: database.to_owned(),
            coll: db.collection(OUTBOX_COLLECTION),
            published: db.collection(PUBLISHED_COLLECTION),
            db,
            shard_count: DEFAULT_SHARD_COUNT,
            reconcile_after: DEFAULT_RECONCILE_AFTER,
            op_timeout: DEFAULT_OP_TIMEOUT,
            update_concurrency: if storage.capabilities().product == ServerProduct::Ferretdb {
                1
            } else {
                UPDATE_CONCURRENCY
            },
        }
    }

    /// Sets the number of shards records are assigned to (at least 1). Every writer and relay
    /// of this outbox must use the same number.
    pub fn with_shard_count(mut self, shard_count: u32) -> Self {
        self.shard_count = shard_count.max(1);
        self
    }

    /// Sets how old a `prepared` record must be before reconciliation decides it.
    pub fn with_reconcile_after(mut self, after: Duration) -> Self {
        self.reconcile_after = after;
        self
    }

    /// Sets the bound on each MongoDB operation (default 10 s).
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The database this outbox lives in.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// The raw outbox collection (for inspection; writing to it bypasses the protocol).
    pub fn collection(&self) -> &Collection<Document> {
        &self.coll
    }

    /// The raw collection of published records ([`PUBLISHED_COLLECTION`]).
    pub fn published_collection(&self) -> &Collection<Document> {
        &self.published
    }

    /// Creates the indexes the relay and reconciliation use, if missing: `(state, shard,
    /// created_at)`, `(agg, revision)` and `(op)` on the outbox; `(agg, revision)`, `(op)` and
    /// `(published_at)` on the published records. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let models = [
            (
                doc! { "state": 1, "shard": 1, "created_at": 1 },
                "state_1_shard_1_created_at_1",
            ),
            (doc! { "agg": 1, "revision": 1 }, "agg_1_revision_1"),
            (doc! { "op": 1 }, "op_1"),
        ]
        .into_iter()
        .map(|(keys, name)| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        })
        .collect::<Vec<_>>();
        self.bounded("create outbox indexes", self.coll.create_indexes(models))
            .await?;
        let archive = [
            (doc! { "agg": 1, "revision": 1 }, "agg_1_revision_1"),
            (doc! { "op": 1 }, "op_1"),
            (doc! { "published_at": 1 }, "published_at_1"),
        ]
        .into_iter()
        .map(|(keys, name)| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        })
        .collect::<Vec<_>>();
        self.bounded(
            "create published outbox indexes",
            self.published.create_indexes(archive),
        )
        .await
        .map(drop)
    }

    /// Records events in state `prepared`: the first step of the transaction-free protocol,
    /// before the entity write. Call it once per entity write with all the events of that
    /// write. Retrying after a timeout is safe (records already inserted are kept).
    pub async fn prepare(&self, records: &[PendingEvent]) -> Result<()> {
        self.insert(records, EventState::Prepared, None).await
    }

    /// `prepared -> ready`: the entity write happened. Records already decided (by
    /// reconciliation) are left as they are.
    pub async fn commit(&self, event_ids: &[String]) -> Result<()> {
        self.transition(event_ids, EventState::Prepared, EventState::Ready)
            .await
            .map(drop)
    }

    /// `prepared -> abandoned`: the entity write did not happen (it failed or matched
    /// nothing). Leave records `prepared` instead when the outcome is unknown (a timeout):
    /// reconciliation decides them.
    pub async fn abandon(&self, event_ids: &[String]) -> Result<()> {
        self.transition(event_ids, EventState::Prepared, EventState::Abandoned)
            .await
            .map(drop)
    }

    /// Inserts records directly as `ready` inside the caller's MongoDB transaction (servers
    /// with [`transactions`](crate::Capabilities::transactions)): they commit or abort with
    /// the entity write.
    pub async fn insert_ready_in(
        &self,
        session: &mut ClientSession,
        records: &[PendingEvent],
    ) -> Result<()> {
        self.insert(records, EventState::Ready, Some(session)).await
    }

    /// Inserts records directly as `ready`, outside any transaction: for events that belong
    /// to no entity write, or whose write is already known to have happened.
    pub async fn insert_ready(&self, records: &[PendingEvent]) -> Result<()> {
        self.insert(records, EventState::Ready, None).await
    }

    async fn insert(
        &self,
        records: &[PendingEvent],
        state: EventState,
        session: Option<&mut ClientSession>,
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        // Events of one write share an op id: the id of the first of them in this call.
        let mut ops: HashMap<String, String> = HashMap::new();
        let mut docs = Vec::with_capacity(records.len());
        for r in records {
            let key = write_key(&r.write);
            let op = ops
                .entry(key)
                .or_insert_with(|| r.envelope.event_id.clone())
                .clone();
            docs.push(self.record_doc(r, state, &op, now)?);
        }
        let result = match session {
            Some(s) => {
                self.bounded(
                    "insert outbox records",
                    self.coll.insert_many(docs).session(s),
                )
                .await
            }
            None => {
                self.retrying("insert outbox records", || {
                    self.coll.insert_many(docs.iter()).ordered(false)
                })
                .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            // Only our own retry can collide with a fresh UUID v7: the record is there.
            Err(Error::Mongo { source, .. }) if only_duplicates(&source) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn record_doc(
        &self,
        r: &PendingEvent,
        state: EventState,
        op: &str,
        now: DateTime,
    ) -> Result<Document> {
        let e = &r.envelope;
        let payload = serde_json::to_string(&e.payload).map_err(|err| Error::Codec {
            entity: "EventEnvelope",
            direction: "encode",
            message: err.to_string(),
        })?;
        let write = bson::to_bson(&r.write).map_err(|err| Error::Codec {
            entity: "WriteRef",
            direction: "encode",
            message: err.to_string(),
        })?;
        let agg = aggregate_key(&e.tenant, &e.aggregate_type, &e.aggregate_id);
        let hash = fnv1a(agg.as_bytes());
        Ok(doc! {
            "_id": &e.event_id,
            "event_type": &e.event_type,
            "aggregate_type": &e.aggregate_type,
            "aggregate_id": &e.aggregate_id,
            "tenant": &e.tenant,
            "schema_version": i64::from(e.schema_version),
            "occurred_at": &e.occurred_at,
            "revision": i64::try_from(e.revision).unwrap_or(i64::MAX),
            "payload": payload,
            "correlation_id": e.correlation_id.clone().map_or(Bson::Null, Bson::String),
            "causation_id": e.causation_id.clone().map_or(Bson::Null, Bson::String),
            "topic": &r.topic,
            "state": state.as_str(),
            "write": write,
            "op": op,
            "agg": agg,
            "shard": i64::from(hash % self.shard_count),
            "hash": i64::from(hash),
            "attempts": 0_i64,
            "next_attempt_at": now,
            "last_error": Bson::Null,
            "created_at": now,
            "updated_at": now,
            "published_at": Bson::Null,
        })
    }

    /// Moves each record in `from` to `to`; returns how many moved.
    async fn transition(&self, ids: &[String], from: EventState, to: EventState) -> Result<u64> {
        let now = DateTime::now();
        let set =
            doc! { "$set": { "state": to.as_str(), "updated_at": now, "next_attempt_at": now } };
        match ids {
            [] => Ok(0),
            [id] => {
                self.update_one_matched(
                    "update outbox state",
                    doc! { "_id": id, "state": from.as_str() },
                    set,
                )
                .await
            }
            // One command; the state equality narrows what the server scans.
            _ => self
                .retrying("update outbox state", || {
                    self.coll.update_many(
                        doc! { "state": from.as_str(), "_id": { "$in": ids } },
                        set.clone(),
                    )
                })
                .await
                .map(|r| r.matched_count),
        }
    }

    /// `ready -> published` for delivered records, given their full documents as read: copied
    /// to [`PUBLISHED_COLLECTION`], then deleted from the outbox. Two batched statements; a
    /// per-document update costs FerretDB one SQLite transaction each (about 15 ms measured).
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

    async fn update_one_matched(
        &self,
        operation: &'static str,
        filter: Document,
        update: Document,
    ) -> Result<u64> {
        self.retrying(operation, || {
            self.coll.update_one(filter.clone(), update.clone())
        })
        .await
        .map(|r| r.matched_count)
    }

    /// One record by event id, pending or published.
    pub async fn get(&self, event_id: &str) -> Result<Option<OutboxRecord>> {
        let found = self
            .bounded(
                "read outbox record",
                self.coll.find_one(doc! { "_id": event_id }),
            )
            .await?;
        let found = match found {
            Some(d) => Some(d),
            None => {
                self.bounded(
                    "read published outbox record",
                    self.published.find_one(doc! { "_id": event_id }),
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
                self.coll.count_documents(doc! { "state": state.as_str() }),
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
                self.coll.count_documents(doc! { "state": state.as_str() }),
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
        for h in prepared.iter().filter(|h| h.created_at < cutoff) {
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

        // 2. Versioned entities: one writer per revision transition (the version claim).
        let mut ambiguous = false;
        if write.revision_field.is_some() {
            let others = self
                .heads_everywhere("read aggregate outbox", doc! { "agg": &h.agg })
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
        if let Some(decided) = self.decided_by_op_stamp(&write, &h.op).await? {
            return Ok(decided);
        }

        // 4. The entity document itself.
        let happened = self.write_happened(&write).await?;
        Ok(match (happened, ambiguous) {
            (false, _) => Decision::Abandoned,
            (true, false) => Decision::Ready,
            (true, true) => Decision::Parked(ambiguous_reason(h)),
        })
    }

    /// `Ready`/`Abandoned` when the document is at exactly the write's revision and carries
    /// the op stamp of the write that produced it; `None` when that does not decide it.
    async fn decided_by_op_stamp(&self, w: &WriteRef, op: &str) -> Result<Option<Decision>> {
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
                coll.find_one(filter)
                    .projection(doc! { "_id": 0, field.as_str(): 1, "_outbox_op": 1 }),
            )
            .await?
        else {
            return Ok(None);
        };
        let revision = match found.get(field.as_str()) {
            Some(Bson::Int32(i)) => i64::from(*i),
            Some(Bson::Int64(i)) => *i,
            _ => return Ok(None),
        };
        match found.get_str("_outbox_op") {
            Ok(stamp) if revision == w.revision => Ok(Some(if stamp == op {
                Decision::Ready
            } else {
                Decision::Abandoned
            })),
            _ => Ok(None),
        }
    }

    /// Reads the entity document named by `w` and tells whether the write is reflected.
    async fn write_happened(&self, w: &WriteRef) -> Result<bool> {
        let coll = self.db.collection::<Document>(&w.collection);
        let mut projection = doc! { "_id": 0, "_deleted_at": 1 };
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
        let deleted = |d: &Document| !matches!(d.get("_deleted_at"), None | Some(Bson::Null));
        Ok(match (w.kind, found) {
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

    /// Prepared records, optionally only of some shards.
    pub(crate) async fn prepared_heads(&self, shards: Option<Bson>) -> Result<Vec<Head>> {
        let mut filter = doc! { "state": EventState::Prepared.as_str() };
        if let Some(s) = shards {
            filter.insert("shard", s);
        }
        self.heads("read prepared outbox records", filter).await
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

    pub(crate) async fn find_docs(
        &self,
        operation: &'static str,
        filter: Document,
        sort: Option<Document>,
        limit: Option<i64>,
        projection: Option<Document>,
    ) -> Result<Vec<Document>> {
        let coll = &self.coll;
        let fut = async move {
            let mut find = coll.find(filter);
            if let Some(s) = sort {
                find = find.sort(s);
            }
            if let Some(l) = limit {
                find = find.limit(l);
            }
            if let Some(p) = projection {
                find = find.projection(p);
            }
            find.await?.try_collect::<Vec<Document>>().await
        };
        self.bounded(operation, fut).await
    }

    /// [`bounded`](Self::bounded), retried up to twice after a connection-level failure (I/O
    /// error, pool cleared): only for calls that are idempotent.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        operation: &'static str,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: IntoFuture<Output = mongodb::error::Result<T>>,
    {
        let mut attempt = 0_u64;
        loop {
            match self.bounded(operation, call()).await {
                Err(e @ Error::Mongo { .. }) if e.is_transient() && attempt < 2 => {
                    attempt += 1;
                    tracing::debug!(database = %self.database, operation, error = %e, "retrying an outbox write");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                r => return r,
            }
        }
    }

    /// Runs a driver call within the operation bound, with the outbox named in errors.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T> {
        crate::error::bounded_mongo(
            self.op_timeout,
            operation,
            (&self.database, OUTBOX_COLLECTION),
            fut,
        )
        .await
    }
}

fn ambiguous_reason(h: &Head) -> String {
    format!(
        "ambiguous reconciliation: several writers prepared revision {} of {} and the document \
         reached it; redrive the right one, leave the others parked",
        h.revision,
        h.agg.replace('\u{1f}', "/")
    )
}

fn cutoff(older_than: Duration) -> DateTime {
    DateTime::from_millis(
        DateTime::now().timestamp_millis()
            - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2),
    )
}

enum Decision {
    Ready,
    Abandoned,
    Parked(String),
    Later,
}

/// Identity of an entity write, to group the events of one write.
fn write_key(w: &WriteRef) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{:?}",
        w.collection, w.tenant, w.id, w.revision, w.kind
    )
}

fn only_duplicates(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w.code == 11000))
        }
        _ => duplicate_key_message(e).is_some(),
    }
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

fn state_of(d: &Document) -> Result<EventState> {
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
