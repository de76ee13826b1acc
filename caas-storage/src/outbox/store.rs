//! [`OutboxStore`]: the `caas_outbox` collection of one database (and its published archive,
//! [`PUBLISHED_COLLECTION`]), its settings and indexes, and the low-level operations the rest
//! of the outbox is built from: inserting records, moving them between states, reading them,
//! and bounding and retrying every driver call.
//!
//! What the store does for each caller lives next door: [`recording`](super::recording) for
//! writers, [`relay_reads`](super::relay_reads) for the relay, [`reconcile`](super::reconcile)
//! for deciding stale `prepared` records, [`admin`](super::admin) for operators.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::Duration;

use mongodb::bson::{self, doc, Bson, DateTime, Document};
use mongodb::{Collection, Database};

use crate::backend::{Coll, Session};

use super::record::{
    aggregate_key, fnv1a, write_key, EventState, PendingEvent, DEFAULT_RECONCILE_AFTER,
    DEFAULT_SHARD_COUNT, OUTBOX_COLLECTION, PUBLISHED_COLLECTION, TRACEPARENT_FIELD,
};
use crate::capabilities::ServerProduct;
use crate::connection::Connections;
use crate::error::{duplicate_key_message, Error, Result};
use crate::index::create_missing;

/// Default bound on each MongoDB operation of the outbox.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent single-document updates issued by one call on MongoDB. FerretDB serializes
/// writes in SQLite, where concurrent updates only add lock contention (measured: 30
/// concurrent updates take 2-4x as long as the same 30 in sequence), so there it is 1.
const UPDATE_CONCURRENCY: usize = 16;

/// The outbox of one database.
///
/// Cheap to clone. Writers call [`prepare`](Self::prepare), then
/// [`commit`](Self::commit) or [`abandon`](Self::abandon) (or, inside a MongoDB transaction,
/// [`insert_ready_in`](Self::insert_ready_in)); the [`OutboxRelay`](super::OutboxRelay)
/// publishes; the rest is administration.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    pub(super) database: String,
    pub(super) db: Database,
    pub(super) coll: Collection<Document>,
    /// The same collection on the document backend: what writers record and settle with
    /// (in memory too).
    pub(super) records: Coll,
    /// The published archive on the document backend.
    pub(super) archive: Coll,
    pub(super) published: Collection<Document>,
    shard_count: u32,
    pub(super) reconcile_after: Duration,
    op_timeout: Duration,
    pub(super) update_concurrency: usize,
}

impl OutboxStore {
    /// The outbox of MongoDB database `database`, with [`DEFAULT_SHARD_COUNT`] shards and
    /// [`DEFAULT_RECONCILE_AFTER`].
    pub(crate) fn new(conn: &Connections, database: &str) -> Self {
        let db = conn.database(database);
        OutboxStore {
            database: database.to_owned(),
            coll: db.collection(OUTBOX_COLLECTION),
            records: conn.collection(database, OUTBOX_COLLECTION, Default::default()),
            archive: conn.collection(database, PUBLISHED_COLLECTION, Default::default()),
            published: db.collection(PUBLISHED_COLLECTION),
            db,
            shard_count: DEFAULT_SHARD_COUNT,
            reconcile_after: DEFAULT_RECONCILE_AFTER,
            op_timeout: DEFAULT_OP_TIMEOUT,
            update_concurrency: if conn.capabilities().product == ServerProduct::Ferretdb {
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
        let outbox = [
            (
                doc! { "state": 1, "shard": 1, "created_at": 1 },
                "state_1_shard_1_created_at_1",
            ),
            (doc! { "agg": 1, "revision": 1 }, "agg_1_revision_1"),
            (doc! { "op": 1 }, "op_1"),
        ];
        self.bounded("create outbox indexes", create_missing(&self.coll, &outbox))
            .await?;
        let archive = [
            (doc! { "agg": 1, "revision": 1 }, "agg_1_revision_1"),
            (doc! { "op": 1 }, "op_1"),
            (doc! { "published_at": 1 }, "published_at_1"),
        ];
        self.bounded(
            "create published outbox indexes",
            create_missing(&self.published, &archive),
        )
        .await
        .map(drop)
    }

    /// Inserts `records` in `state`, inside `session`'s transaction if given (not retried
    /// there), else unordered and retried; a duplicate id means an earlier attempt inserted it.
    pub(super) async fn insert(
        &self,
        records: &[PendingEvent],
        state: EventState,
        session: Option<&mut Session>,
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let docs = self.record_docs(records, state)?;
        let result = match session {
            Some(s) => {
                self.bounded(
                    "insert outbox records",
                    self.records.insert_many(&docs, true, Some(s)),
                )
                .await
            }
            None => {
                self.retrying("insert outbox records", || {
                    self.records.insert_many(&docs, false, None)
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

    /// Inserts `records` as `ready` inside the caller's own driver session (MongoDB only).
    pub(super) async fn insert_in_driver_session(
        &self,
        records: &[PendingEvent],
        session: &mut mongodb::ClientSession,
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let docs = self.record_docs(records, EventState::Ready)?;
        self.bounded(
            "insert outbox records",
            self.coll.insert_many(docs).session(session),
        )
        .await
        .map(drop)
    }

    /// The documents of `records` in `state`. Events of one write share an op id: the id of
    /// the first of them in this call.
    fn record_docs(&self, records: &[PendingEvent], state: EventState) -> Result<Vec<Document>> {
        let now = DateTime::now();
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
        Ok(docs)
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
        let mut record = doc! {
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
        };
        if let Some(inc) = &e.incarnation {
            record.insert("inc", inc.as_str());
        }
        // The recording call's trace, which the relay sends on as the `traceparent` header.
        if let Some(trace) = crate::trace::TraceContext::current() {
            record.insert(TRACEPARENT_FIELD, trace.traceparent());
        }
        Ok(record)
    }

    /// Moves each record in `from` to `to`; returns how many moved.
    pub(super) async fn transition(
        &self,
        ids: &[String],
        from: EventState,
        to: EventState,
    ) -> Result<u64> {
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
                    self.records.update(
                        doc! { "state": from.as_str(), "_id": { "$in": ids } },
                        set.clone(),
                        true,
                        false,
                        None,
                    )
                })
                .await
                .map(|r| r.matched),
        }
    }

    /// One single-document update, retried; returns how many matched (0 or 1).
    pub(super) async fn update_one_matched(
        &self,
        operation: &'static str,
        filter: Document,
        update: Document,
    ) -> Result<u64> {
        self.retrying(operation, || {
            self.records
                .update(filter.clone(), update.clone(), false, false, None)
        })
        .await
        .map(|r| r.matched)
    }

    /// The outbox records matching `filter`, optionally sorted, limited and projected.
    pub(super) async fn find_docs(
        &self,
        operation: &'static str,
        filter: Document,
        sort: Option<Document>,
        limit: Option<i64>,
        projection: Option<Document>,
    ) -> Result<Vec<Document>> {
        // A read is safe to repeat: retried after a connection-level failure (a pool the
        // driver cleared, say).
        let options = mongodb::options::FindOptions::builder()
            .sort(sort)
            .limit(limit)
            .projection(projection)
            .build();
        self.retrying(operation, || {
            self.records.find_all(filter.clone(), options.clone())
        })
        .await
    }

    /// [`bounded`](Self::bounded), retried up to twice after a connection-level failure (I/O
    /// error, pool cleared): only for calls that are idempotent.
    pub(super) async fn retrying<T, F, Fut>(
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
    pub(super) async fn bounded<T>(
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

/// The time `older_than` ago.
pub(super) fn cutoff(older_than: Duration) -> DateTime {
    DateTime::from_millis(
        DateTime::now().timestamp_millis()
            - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2),
    )
}

/// Whether a write failed only on duplicate ids.
pub(super) fn only_duplicates(e: &mongodb::error::Error) -> bool {
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
