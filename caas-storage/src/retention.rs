//! Retention: what the framework writes for itself does not grow without bound.
//!
//! A background task of every [`Storage`](crate::Storage) runs every `retention.interval`,
//! under a lease in Redis (one instance at a time does the work), over the databases of the
//! entities repositories were made for and of the deduplicators made:
//!
//! | what | kept |
//! |---|---|
//! | published outbox events (`caas_outbox_published`) | `retention.published_events` after publication |
//! | abandoned outbox events (`caas_outbox`, state `abandoned`) | `retention.abandoned_events` |
//! | version claims (`<collection>__version_claims`) | twice the claim lease (their holders are gone) |
//! | consumed-event records (`caas_consumed_events`) | `retention.consumed_events` |
//! | write-behind dead letters (Redis streams) | the newest `write_behind.max_dead_letters`, trimmed as they are added |
//!
//! `Retention::sizes` counts what is held, for the health report.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use serde::Serialize;

use crate::config::RetentionConfig;
use crate::connection::{lease, Connections};
use crate::document::{claims_collection, CLAIM_LEASE};
use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::outbox::{OutboxStore, CONSUMED_COLLECTION};

/// What one run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Published outbox events deleted.
    pub published_events: u64,
    /// Abandoned outbox events deleted.
    pub abandoned_events: u64,
    /// Orphaned version claims deleted.
    pub version_claims: u64,
    /// Consumed-event records deleted.
    pub consumed_events: u64,
}

/// What the framework holds for itself now, summed over the databases in use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionSizes {
    /// Published outbox events kept.
    pub published_events: u64,
    /// Abandoned outbox events kept.
    pub abandoned_events: u64,
    /// Version claims held (live and orphaned).
    pub version_claims: u64,
    /// Consumed-event records kept.
    pub consumed_events: u64,
}

/// The retention of one `Storage` handle.
pub(crate) struct Retention {
    conn: Connections,
    settings: RetentionConfig,
    /// Databases whose outboxes and entities to look after, and collections with claims.
    outbox_databases: Mutex<BTreeSet<String>>,
    claim_collections: Mutex<BTreeSet<(String, String)>>,
    consumer_databases: Mutex<BTreeSet<String>>,
}

impl Retention {
    pub(crate) fn new(conn: Connections) -> Self {
        Retention {
            settings: conn.config().retention.clone(),
            conn,
            outbox_databases: Mutex::default(),
            claim_collections: Mutex::default(),
            consumer_databases: Mutex::default(),
        }
    }

    /// Looks after what entities of `meta` leave behind.
    pub(crate) fn watch_entity(&self, meta: &EntityMeta) {
        if meta.outbox.is_some() {
            self.outbox_databases
                .lock()
                .expect("retention")
                .insert(meta.database.to_owned());
        }
        if meta.version_field.is_some() {
            self.claim_collections
                .lock()
                .expect("retention")
                .insert((meta.database.to_owned(), claims_collection(meta)));
        }
    }

    /// Looks after the consumed-event records in `database`.
    pub(crate) fn watch_consumer(&self, database: &str) {
        self.consumer_databases
            .lock()
            .expect("retention")
            .insert(database.to_owned());
    }

    fn snapshot(&self) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
        (
            self.outbox_databases
                .lock()
                .expect("retention")
                .iter()
                .cloned()
                .collect(),
            self.claim_collections
                .lock()
                .expect("retention")
                .iter()
                .cloned()
                .collect(),
            self.consumer_databases
                .lock()
                .expect("retention")
                .iter()
                .cloned()
                .collect(),
        )
    }

    /// One run now, whoever holds the lease (for operators and tests).
    pub(crate) async fn run(&self) -> Result<RetentionReport> {
        let (outboxes, claims, consumers) = self.snapshot();
        let mut report = RetentionReport::default();
        for db in &outboxes {
            let store = OutboxStore::new(&self.conn, db);
            report.published_events += store
                .cleanup_published(self.settings.published_events)
                .await?;
            report.abandoned_events += store
                .cleanup_abandoned(self.settings.abandoned_events)
                .await?;
        }
        let claim_cutoff = before(CLAIM_LEASE * 2);
        for (db, coll) in &claims {
            let r = self
                .conn
                .database(db)
                .collection::<Document>(coll)
                .delete_many(doc! { "at": { "$lt": claim_cutoff } })
                .await
                .map_err(|e| {
                    Error::mongo(format!("retention: delete old claims ({db}.{coll})"), e)
                })?;
            report.version_claims += r.deleted_count;
        }
        let consumed_cutoff = before(self.settings.consumed_events);
        for db in &consumers {
            let r = self
                .conn
                .database(db)
                .collection::<Document>(CONSUMED_COLLECTION)
                .delete_many(doc! { "at": { "$lt": consumed_cutoff } })
                .await
                .map_err(|e| {
                    Error::mongo(format!("retention: delete consumed events ({db})"), e)
                })?;
            report.consumed_events += r.deleted_count;
        }
        Ok(report)
    }

    /// What is held now.
    pub(crate) async fn sizes(&self) -> Result<RetentionSizes> {
        let (outboxes, claims, consumers) = self.snapshot();
        let count = |db: &str, coll: &str, filter: Document| {
            let c = self.conn.database(db).collection::<Document>(coll);
            let (db, coll) = (db.to_owned(), coll.to_owned());
            async move {
                c.count_documents(filter)
                    .await
                    .map_err(|e| Error::mongo(format!("retention: count {db}.{coll}"), e))
            }
        };
        let mut sizes = RetentionSizes::default();
        for db in &outboxes {
            sizes.published_events +=
                count(db, crate::outbox::PUBLISHED_COLLECTION, doc! {}).await?;
            sizes.abandoned_events += count(
                db,
                crate::outbox::OUTBOX_COLLECTION,
                doc! { "state": "abandoned" },
            )
            .await?;
        }
        for (db, coll) in &claims {
            sizes.version_claims += count(db, coll, doc! {}).await?;
        }
        for db in &consumers {
            sizes.consumed_events += count(db, CONSUMED_COLLECTION, doc! {}).await?;
        }
        Ok(sizes)
    }

    /// The background task: a run every `retention.interval`, by the instance holding the
    /// lease.
    pub(crate) async fn run_forever(self: std::sync::Arc<Self>) {
        let lease_key = format!(
            "{}caas:retention:lease",
            self.conn.config().redis.key_prefix
        );
        let token = uuid::Uuid::now_v7().simple().to_string();
        loop {
            tokio::time::sleep(self.settings.interval).await;
            if !self.take_lease(&lease_key, &token).await {
                continue;
            }
            match self.run().await {
                Ok(r) => tracing::info!(report = ?r, "retention run"),
                Err(e) => {
                    tracing::warn!(error = %e, "retention run failed; retried at the next interval")
                }
            }
        }
    }

    /// One instance per interval (see [`lease::take_for_interval`]).
    async fn take_lease(&self, key: &str, token: &str) -> bool {
        lease::take_for_interval(&self.conn, key, token, self.settings.interval).await
    }
}

fn before(age: Duration) -> DateTime {
    DateTime::from_millis(
        DateTime::now().timestamp_millis() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2),
    )
}
