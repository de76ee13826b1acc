//! Checkpoints: each tenant's head (sequence and hash), recorded in the checkpoint collection
//! and published to Kafka through the outbox (topic `platform.audit` by default). A chain
//! rewritten consistently from some entry on verifies on its own; it no longer holds the hash a
//! checkpoint published for that entry's sequence or a later one.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime};
use serde::{Deserialize, Serialize};

use super::entry::entry_key;
use super::AuditLog;
use crate::error::Result;
use crate::outbox::EventEnvelope;
use crate::outbox::{PendingEvent, WriteKind, WriteRef};
use crate::tenant::TenantId;

/// Event type of a published checkpoint.
pub const CHECKPOINT_EVENT: &str = "audit.checkpoint";

/// A tenant's chain head at one moment, as recorded and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The tenant.
    pub tenant: String,
    /// The head's sequence.
    pub sequence: u64,
    /// The head's hash.
    pub hash: String,
    /// When the checkpoint was taken, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl Checkpoint {
    /// The checkpoint an `audit.checkpoint` event carries (its payload), e.g. as consumed from
    /// Kafka; `None` for any other event.
    pub fn from_event(event: &EventEnvelope) -> Option<Checkpoint> {
        if event.event_type != CHECKPOINT_EVENT {
            return None;
        }
        serde_json::from_value(event.payload.clone()).ok()
    }
}

/// What [`AuditLog::status`] reports (e.g. for a health endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditStatus {
    /// Appends of this handle waiting for or holding their tenant's turn.
    pub backlog: usize,
    /// Entries acknowledged by [`append_queued`](AuditLog::append_queued) and not drained
    /// yet, over all tenants; `None` when Redis could not be read.
    pub queued: Option<u64>,
    /// Age of the newest stored checkpoint of any tenant; `None` if there is none.
    pub last_checkpoint_age: Option<Duration>,
}

/// A background task of the log ([`AuditLog::spawn_checkpoints`],
/// [`AuditLog::spawn_queue_drain`]); dropping it stops the task.
#[derive(Debug)]
pub struct AuditTask {
    pub(crate) handle: tokio::task::JoinHandle<()>,
}

impl Drop for AuditTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl AuditLog {
    /// Records and publishes `tenant`'s current head, unless a checkpoint at that sequence
    /// exists already. Returns the checkpoint (`None` for an empty chain). Idempotent: the
    /// event id is derived from tenant and sequence, so a retry publishes nothing twice.
    pub async fn checkpoint(&self, tenant: &TenantId) -> Result<Option<Checkpoint>> {
        let head = self.read_head(tenant.as_str()).await?;
        if head.sequence == 0 {
            return Ok(None);
        }
        let cp = Checkpoint {
            tenant: tenant.as_str().to_owned(),
            sequence: head.sequence,
            hash: head.hash,
            at_ms: DateTime::now().timestamp_millis(),
        };
        let inner = &self.inner;
        let key = entry_key(&cp.tenant, cp.sequence);
        let sequence = i64::try_from(cp.sequence).unwrap_or(i64::MAX);
        let stored = self
            .bounded(
                "record an audit checkpoint",
                &inner.options.checkpoint_collection,
                inner.checkpoints.insert_one(doc! {
                    "_id": &key,
                    "tenant": &cp.tenant,
                    "sequence": sequence,
                    "hash": &cp.hash,
                    "at": DateTime::from_millis(cp.at_ms),
                }),
            )
            .await;
        match stored {
            Ok(_) => {}
            // Taken at this sequence before (a retry): publish again below, idempotently.
            Err(crate::error::Error::Mongo { source, .. })
                if crate::error::duplicate_key_message(&source).is_some() => {}
            Err(e) => return Err(e),
        }
        let payload = serde_json::to_value(&cp).unwrap_or_default();
        let mut envelope = EventEnvelope::new(
            CHECKPOINT_EVENT,
            "AuditChain",
            cp.tenant.clone(),
            cp.tenant.clone(),
            payload,
        )
        .with_revision(cp.sequence);
        envelope.event_id = format!("audit-checkpoint:{key}");
        let event = PendingEvent {
            envelope,
            topic: inner.options.topic.clone(),
            write: WriteRef {
                collection: inner.options.checkpoint_collection.clone(),
                tenant_field: "tenant".into(),
                tenant: cp.tenant.clone(),
                id_field: "_id".into(),
                id: Bson::String(key),
                revision_field: None,
                revision: sequence,
                kind: WriteKind::Insert,
                soft_delete: false,
            },
        };
        inner.outbox.insert_ready(&[event]).await?;
        Ok(Some(cp))
    }

    /// Checkpoints every tenant whose chain grew since its last checkpoint; returns those
    /// taken.
    pub async fn checkpoint_all(&self) -> Result<Vec<Checkpoint>> {
        let inner = &self.inner;
        let tenants = self
            .bounded(
                "list the audit log's tenants",
                &inner.options.collection,
                inner.entries.distinct("tenant", doc! {}),
            )
            .await?;
        let mut taken = Vec::new();
        for t in tenants {
            let Some(Ok(tenant)) = t.as_str().map(TenantId::new) else {
                continue;
            };
            let last = self.latest_stored_checkpoint(tenant.as_str()).await?;
            let head = self.read_head(tenant.as_str()).await?;
            if last.is_none_or(|c| c.sequence < head.sequence) {
                if let Some(cp) = self.checkpoint(&tenant).await? {
                    taken.push(cp);
                }
            }
        }
        Ok(taken)
    }

    /// Runs [`checkpoint_all`](Self::checkpoint_all) every `every` in the background until the
    /// returned task is dropped. Failures are logged and retried at the next tick.
    pub fn spawn_checkpoints(&self, every: Duration) -> AuditTask {
        let log = self.clone();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = log.checkpoint_all().await {
                    tracing::warn!(error = %e, "audit checkpoints failed; retrying at the next tick");
                }
            }
        });
        AuditTask { handle }
    }

    /// The backlog of appends and the age of the newest checkpoint.
    pub async fn status(&self) -> Result<AuditStatus> {
        let inner = &self.inner;
        let newest = self
            .bounded(
                "read the newest audit checkpoint",
                &inner.options.checkpoint_collection,
                inner.checkpoints.find_one(doc! {}).sort(doc! { "at": -1 }),
            )
            .await?;
        let age = newest
            .and_then(|d| d.get_datetime("at").ok().copied())
            .map(|at| {
                let ms = DateTime::now().timestamp_millis() - at.timestamp_millis();
                Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            });
        Ok(AuditStatus {
            backlog: inner.backlog.load(Ordering::Relaxed),
            queued: self.queued_count().await.ok(),
            last_checkpoint_age: age,
        })
    }

    /// The newest stored checkpoint of `tenant`.
    pub(crate) async fn latest_stored_checkpoint(
        &self,
        tenant: &str,
    ) -> Result<Option<Checkpoint>> {
        let inner = &self.inner;
        let found = self
            .bounded(
                "read an audit checkpoint",
                &inner.options.checkpoint_collection,
                inner
                    .checkpoints
                    .find_one(doc! { "tenant": tenant })
                    .sort(doc! { "sequence": -1 }),
            )
            .await?;
        Ok(found.and_then(|d| {
            Some(Checkpoint {
                tenant: d.get_str("tenant").ok()?.to_owned(),
                sequence: u64::try_from(d.get_i64("sequence").ok()?).ok()?,
                hash: d.get_str("hash").ok()?.to_owned(),
                at_ms: d.get_datetime("at").ok()?.timestamp_millis(),
            })
        }))
    }
}
