//! The hash-chained audit log: per tenant, append-only, linear under any number of concurrent
//! appenders, verifiable, with checkpoints published to Kafka through the outbox.
//!
//! - [`hash`]: the canonical encoding and SHA-256 (what `docs/audit_verify.py` re-implements).
//! - [`entry`]: what is appended and what is stored.
//! - `append`: how entries get their place. Each entry's `_id` is `<tenant>:<sequence>`, and
//!   `(tenant, sequence)` has a unique index, so the server refuses a second entry at a taken
//!   position: an append that loses the race reads the winner, moves to the next position and
//!   tries again (bounded, with jitter). Appends of one tenant on one handle queue behind each
//!   other; tenants never contend.
//! - `verify`: walks a chain and names the first broken link.
//! - `checkpoint`: records each tenant's head and publishes it (`platform.audit` by default),
//!   so a tail rewritten consistently is still caught against what was published.
//!
//! See `docs/audit.md`.

mod append;
mod checkpoint;
pub mod entry;
pub mod hash;
mod queue;
mod verify;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::Document;
use mongodb::Collection;

pub use checkpoint::{AuditStatus, AuditTask, Checkpoint, CHECKPOINT_EVENT};
pub use entry::{AuditEntry, NewAuditEntry};
pub use hash::GENESIS_HASH;
pub use queue::QUEUE_MARK_COLLECTION;
pub use verify::{BreakKind, BrokenLink, Verification};

use crate::connection::Connections;
use crate::error::{Error, Result};
use crate::outbox::OutboxStore;

/// Where and how an [`AuditLog`] keeps its chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// MongoDB database of the log, its checkpoints and its outbox. A relay must drain it for
    /// checkpoints to reach Kafka.
    pub database: String,
    /// Collection of the entries (default `audit_log`).
    pub collection: String,
    /// Collection of the checkpoints (default `audit_checkpoints`).
    pub checkpoint_collection: String,
    /// Kafka topic of the checkpoints (default `platform.audit`).
    pub topic: String,
    /// Most attempts of one append that keeps losing races to other handles (default 64).
    pub max_attempts: u32,
    /// Bound on each MongoDB call (default 10 s).
    pub op_timeout: Duration,
}

impl AuditOptions {
    /// Defaults, in MongoDB database `database`.
    pub fn for_database(database: impl Into<String>) -> Self {
        AuditOptions {
            database: database.into(),
            collection: "audit_log".into(),
            checkpoint_collection: "audit_checkpoints".into(),
            topic: "platform.audit".into(),
            max_attempts: 64,
            op_timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: &str| {
            Err(Error::Config {
                key: format!("audit.{key}"),
                reason: message.to_owned(),
            })
        };
        for (key, value) in [
            ("database", &self.database),
            ("collection", &self.collection),
            ("checkpoint_collection", &self.checkpoint_collection),
            ("topic", &self.topic),
        ] {
            if value.is_empty() {
                return bad(key, "must not be empty");
            }
        }
        if self.collection == self.checkpoint_collection {
            return bad(
                "checkpoint_collection",
                "must differ from `collection`: checkpoints are not entries",
            );
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.op_timeout.is_zero() {
            return bad("op_timeout", "must be more than zero");
        }
        Ok(())
    }
}

/// The audit log: append, verify, checkpoint. Cheap to clone; clones share the per-tenant
/// heads, so appends through clones of one handle never race each other.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    options: AuditOptions,
    entries: Collection<Document>,
    checkpoints: Collection<Document>,
    /// The queue drainers' marks ([`QUEUE_MARK_COLLECTION`]).
    marks: Collection<Document>,
    conn: Connections,
    outbox: OutboxStore,
    /// The head each tenant's chain had when this handle last appended or read it; the lock
    /// queues this handle's appends of one tenant.
    heads: Mutex<HashMap<String, Arc<append::Slot>>>,
    /// Appends waiting for or holding their tenant's lock.
    backlog: AtomicUsize,
    /// Set once the unique (tenant, sequence) index exists.
    index_ready: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    pub(crate) fn new(conn: &Connections, options: AuditOptions) -> Result<Self> {
        options.validate()?;
        conn.check_topic(
            &format!(
                "audit log {}.{} (its checkpoint events)",
                options.database, options.collection
            ),
            &options.topic,
        )?;
        let db = conn.database(&options.database);
        Ok(AuditLog {
            inner: Arc::new(Inner {
                entries: db.collection(&options.collection),
                checkpoints: db.collection(&options.checkpoint_collection),
                marks: db.collection(QUEUE_MARK_COLLECTION),
                conn: conn.clone(),
                outbox: OutboxStore::new(conn, &options.database),
                options,
                heads: Mutex::new(HashMap::new()),
                backlog: AtomicUsize::new(0),
                index_ready: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &AuditOptions {
        &self.inner.options
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        collection: &str,
        call: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T> {
        crate::error::bounded_mongo(
            self.inner.options.op_timeout,
            operation,
            (&self.inner.options.database, collection),
            call,
        )
        .await
    }
}
