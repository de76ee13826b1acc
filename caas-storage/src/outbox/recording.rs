//! What writers call: recording the events of an entity write and settling them with the
//! write's outcome.
//!
//! On a server with transactions the events are inserted as `ready` inside the write's
//! transaction and commit or abort with it ([`OutboxStore::insert_ready_in`], or
//! [`OutboxStore::record`] with a session). Without transactions (FerretDB, a standalone
//! mongod) they follow the transaction-free protocol: [`prepare`](OutboxStore::prepare) before
//! the write, then [`commit`](OutboxStore::commit) or [`abandon`](OutboxStore::abandon) after
//! it ([`OutboxStore::settle`] picks by [`Verdict`]); what a crash leaves `prepared` is decided
//! by reconciliation.

use crate::backend::Session;
use mongodb::bson::{doc, Bson, DateTime};

use super::record::{EventState, PendingEvent};
use super::store::OutboxStore;
use crate::error::Result;

/// How an entity write that recorded its events `prepared` turned out, as its writer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The write happened: its events become `ready`, and rival `prepared` events of the same
    /// aggregate and revision are abandoned.
    Happened,
    /// The write definitely did not happen (it failed or matched nothing): its events are
    /// `abandoned`.
    DidNot,
    /// Nobody knows (a timeout, a dropped connection): its events stay `prepared` and
    /// reconciliation decides them.
    Unknown,
}

impl OutboxStore {
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
        session: &mut mongodb::ClientSession,
        records: &[PendingEvent],
    ) -> Result<()> {
        self.insert_in_driver_session(records, session).await
    }

    /// Inserts records directly as `ready`, outside any transaction: for events that belong
    /// to no entity write, or whose write is already known to have happened.
    pub async fn insert_ready(&self, records: &[PendingEvent]) -> Result<()> {
        self.insert(records, EventState::Ready, None).await
    }

    /// Records the events of one entity write. With `session` (the write's MongoDB
    /// transaction) they are inserted as `ready` inside it, as
    /// [`insert_ready_in`](Self::insert_ready_in) does, and commit or abort with the write.
    /// Without, they are inserted as `prepared`, as [`prepare`](Self::prepare) does, before the
    /// write; [`settle`](Self::settle) them with its outcome afterwards.
    pub(crate) async fn record(
        &self,
        records: &[PendingEvent],
        session: Option<&mut Session>,
    ) -> Result<()> {
        match session {
            Some(session) => self.insert(records, EventState::Ready, Some(session)).await,
            None => self.insert(records, EventState::Prepared, None).await,
        }
    }

    /// Settles the events one write [`record`](Self::record)ed as `prepared`, by the write's
    /// outcome: [`Happened`](Verdict::Happened) commits them and abandons the rival prepared
    /// events of the same aggregate and revision, [`DidNot`](Verdict::DidNot) abandons them,
    /// [`Unknown`](Verdict::Unknown) leaves them for reconciliation. Failures are logged, not
    /// returned: reconciliation decides whatever is left `prepared`. (Events recorded inside a
    /// transaction need no settling: the transaction decided them.)
    pub(crate) async fn settle(&self, records: &[PendingEvent], verdict: Verdict) {
        let Some(first) = records.first() else {
            return;
        };
        let ids: Vec<String> = records
            .iter()
            .map(|r| r.envelope.event_id.clone())
            .collect();
        let settled = match verdict {
            Verdict::Happened => {
                let r = self.commit(&ids).await;
                self.abandon_rivals(first, &ids).await;
                r
            }
            Verdict::DidNot => self.abandon(&ids).await,
            Verdict::Unknown => return,
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, events = ?ids, "could not settle outbox events; reconciliation will");
        }
    }

    /// The write of `ids` took the aggregate of `first` to its revision, so any other
    /// `prepared` events for the same incarnation and revision belong to a writer that stopped before writing
    /// (its claim expired, or it failed): that write can no longer happen (versions only grow;
    /// a second insert of the id fails on the unique index). Deciding them now keeps
    /// reconciliation, which only sees that the document reached the revision, from publishing
    /// them.
    async fn abandon_rivals(&self, first: &PendingEvent, ids: &[String]) {
        let e = &first.envelope;
        let (tenant, aggregate_type, aggregate_id) =
            (&e.tenant, &e.aggregate_type, &e.aggregate_id);
        let revision = i64::try_from(e.revision).unwrap_or(i64::MAX);
        let r = self
            .records
            .update(
                doc! {
                    "tenant": tenant,
                    "aggregate_type": aggregate_type,
                    "aggregate_id": aggregate_id,
                    "inc": e.incarnation.clone().map_or(Bson::Null, Bson::String),
                    "revision": revision,
                    "state": EventState::Prepared.as_str(),
                    "_id": { "$nin": ids },
                },
                doc! { "$set": {
                    "state": EventState::Abandoned.as_str(),
                    "updated_at": DateTime::now(),
                } },
                true,
                false,
                None,
            )
            .await;
        match r {
            Ok(r) if r.modified > 0 => tracing::info!(
                aggregate = %aggregate_id, revision, abandoned = r.modified,
                "abandoned outbox events of a writer that stopped before its write"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not abandon rival outbox events; reconciliation will decide them")
            }
        }
    }
}
