//! Shard leases: how relays split an outbox between them without per-event claims.
//!
//! A lease is a document `{_id: "<database>:<shard>", kind: "shard", owner, until}` in
//! `caas_outbox_leases` of the outbox's database. It is taken by inserting it: the unique `_id`
//! lets exactly one relay win, on MongoDB and on FerretDB alike (FerretDB's conditional
//! updates are read-modify-write without a row lock, so "update where owner = x" could let two
//! relays win; unique inserts cannot). The owner renews it every third of the TTL; a relay
//! publishes a shard only while its lease has more than a third of the TTL left.
//!
//! An expired lease is taken over by deleting exactly the expired document (`{_id, owner,
//! until}`) and inserting a new one. On FerretDB that delete is itself read-then-delete: if two
//! relays race for the same expired lease, the slower one's delete can remove the winner's
//! fresh lease and insert its own, so for a moment both believe they hold the shard. The taker
//! re-reads its lease shortly after taking it over and renewal checks the owner, which closes
//! the window within one renewal; what leaks through is a duplicate publish (at-least-once),
//! never a lost event.
//!
//! Relays also keep a membership heartbeat `{_id: "relay:<instance>", kind: "member", until}`.
//! Each relay holds at most `ceil(shards / live relays)` shards and releases the excess between
//! batches, so a second relay gets its share within one renewal period.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::UpdateOptions;
use mongodb::Collection;

use crate::error::{duplicate_key_message, Component, Error, Result};
use crate::outbox::envelope::now_millis;
use crate::outbox::store::millis;
use crate::storage::Storage;

/// The lease collection, one per outbox database.
pub const LEASE_COLLECTION: &str = "caas_outbox_leases";

/// How long a relay waits after taking over an expired lease before checking it still holds
/// it (see the module docs).
const TAKEOVER_SETTLE: Duration = Duration::from_millis(100);

/// The leases one relay holds on one outbox database.
pub(crate) struct ShardLeases {
    coll: Collection<Document>,
    database: String,
    instance: String,
    shard_count: u32,
    ttl: Duration,
    op_timeout: Duration,
    /// Shard -> lease expiry (ms since the epoch) as last written by us.
    held: BTreeMap<u32, i64>,
    last_maintained: Option<Instant>,
}

impl ShardLeases {
    pub(crate) fn new(
        storage: &Storage,
        database: &str,
        instance: &str,
        shard_count: u32,
        ttl: Duration,
        op_timeout: Duration,
    ) -> Self {
        ShardLeases {
            coll: storage.database(database).collection(LEASE_COLLECTION),
            database: database.to_owned(),
            instance: instance.to_owned(),
            shard_count: shard_count.max(1),
            ttl: ttl.max(Duration::from_millis(300)),
            op_timeout,
            held: BTreeMap::new(),
            last_maintained: None,
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn key(&self, shard: u32) -> String {
        format!("{}:{shard}", self.database)
    }

    fn member_key(&self) -> String {
        format!("relay:{}", self.instance)
    }

    /// Whether a third of the TTL has passed since the last [`maintain`](Self::maintain).
    pub(crate) fn due(&self) -> bool {
        self.last_maintained
            .is_none_or(|t| t.elapsed() >= self.ttl / 3)
    }

    /// Shards held with more than a third of the TTL left, in order.
    pub(crate) fn owned(&self) -> Vec<u32> {
        let now = now_millis();
        let margin = self.ttl_ms() / 3;
        self.held
            .iter()
            .filter(|(_, until)| **until - now > margin)
            .map(|(s, _)| *s)
            .collect()
    }

    /// How many shards are held (valid or not).
    pub(crate) fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Heartbeat, renew held leases, release the excess over the fair share, take free or
    /// expired shards up to it.
    pub(crate) async fn maintain(&mut self) -> Result<()> {
        self.last_maintained = Some(Instant::now());
        let now = now_millis();
        let until = now + self.ttl_ms();
        let until_dt = DateTime::from_millis(until);

        // Heartbeat: only this relay writes its member document.
        self.bounded(
            "relay heartbeat",
            self.coll
                .update_one(
                    doc! { "_id": self.member_key() },
                    doc! { "$set": { "kind": "member", "owner": &self.instance, "until": until_dt } },
                )
                .with_options(UpdateOptions::builder().upsert(true).build()),
        )
        .await?;

        // Renew.
        let shards: Vec<u32> = self.held.keys().copied().collect();
        for s in shards {
            let r = self
                .bounded(
                    "renew shard lease",
                    self.coll.update_one(
                        doc! { "_id": self.key(s), "owner": &self.instance },
                        doc! { "$set": { "until": until_dt } },
                    ),
                )
                .await;
            match r {
                Ok(r) if r.matched_count == 1 => {
                    self.held.insert(s, until);
                }
                Ok(_) => {
                    tracing::warn!(database = %self.database, shard = s, instance = %self.instance, "lost an outbox shard lease to another relay");
                    self.held.remove(&s);
                }
                Err(e) => {
                    // Keep the old expiry: `owned` stops publishing the shard before it runs out.
                    tracing::warn!(database = %self.database, shard = s, error = %e, "could not renew an outbox shard lease");
                }
            }
        }

        // The whole picture: leases and members of this database.
        let docs: Vec<Document> = self
            .bounded("read shard leases", async {
                self.coll.find(doc! {}).await?.try_collect().await
            })
            .await?;
        let mut live_members = 0_u32;
        let mut leases: BTreeMap<u32, Document> = BTreeMap::new();
        let mut dead_members = Vec::new();
        for d in docs {
            let exp = millis(d.get("until"));
            match d.get_str("kind") {
                Ok("member") => {
                    if exp > now {
                        live_members += 1;
                    } else if now - exp > 10 * self.ttl_ms() {
                        dead_members.push(d);
                    }
                }
                _ => {
                    let shard = d
                        .get_str("_id")
                        .ok()
                        .and_then(|id| id.rsplit_once(':'))
                        .and_then(|(_, s)| s.parse::<u32>().ok());
                    if let Some(s) = shard {
                        leases.insert(s, d);
                    }
                }
            }
        }
        for d in dead_members {
            let _ = self
                .bounded(
                    "forget a dead relay",
                    self.coll.delete_one(doc! {
                        "_id": d.get("_id").cloned().unwrap_or(Bson::Null),
                        "until": d.get("until").cloned().unwrap_or(Bson::Null),
                    }),
                )
                .await;
        }
        let fair = self.shard_count.div_ceil(live_members.max(1)) as usize;

        if self.held.len() > fair {
            let excess: Vec<u32> = self.held.keys().rev().take(self.held.len() - fair).copied().collect();
            for s in excess {
                self.release(s).await;
            }
            return Ok(());
        }

        // Take free or expired shards, starting at a point that depends on the instance so
        // relays starting together do not all race for shard 0.
        let start = crate::outbox::store::shard_of(&self.instance, "", "", self.shard_count);
        for i in 0..self.shard_count {
            if self.held.len() >= fair {
                break;
            }
            let s = (start + i) % self.shard_count;
            if self.held.contains_key(&s) {
                continue;
            }
            let existing = leases.get(&s);
            if let Some(d) = existing {
                if millis(d.get("until")) > now {
                    continue;
                }
            }
            if let Err(e) = self.acquire(s, existing, until).await {
                tracing::warn!(database = %self.database, shard = s, error = %e, "could not take an outbox shard lease");
            }
        }
        Ok(())
    }

    async fn acquire(&mut self, shard: u32, expired: Option<&Document>, until: i64) -> Result<()> {
        let key = self.key(shard);
        if let Some(d) = expired {
            self.bounded(
                "expire shard lease",
                self.coll.delete_one(doc! {
                    "_id": &key,
                    "owner": d.get("owner").cloned().unwrap_or(Bson::Null),
                    "until": d.get("until").cloned().unwrap_or(Bson::Null),
                }),
            )
            .await?;
        }
        let inserted = tokio::time::timeout(
            self.op_timeout,
            self.coll.insert_one(doc! {
                "_id": &key, "kind": "shard", "owner": &self.instance,
                "until": DateTime::from_millis(until), "since": DateTime::now(),
            }),
        )
        .await;
        match inserted {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if duplicate_key_message(&e).is_some() => return Ok(()),
            Ok(Err(e)) => return Err(Error::mongo(format!("take shard lease {key}"), e)),
            Err(_) => {
                return Err(Error::Timeout {
                    component: Component::Mongodb,
                    operation: "take shard lease",
                    after: self.op_timeout,
                })
            }
        }
        if expired.is_some() {
            // Close the FerretDB takeover race (module docs) before publishing anything.
            tokio::time::sleep(TAKEOVER_SETTLE).await;
            let now_held = self
                .bounded("check shard lease", self.coll.find_one(doc! { "_id": &key }))
                .await?
                .is_some_and(|d| d.get_str("owner") == Ok(self.instance.as_str()));
            if !now_held {
                tracing::warn!(database = %self.database, shard, "lost a shard lease takeover race");
                return Ok(());
            }
            tracing::info!(database = %self.database, shard, instance = %self.instance, "took over an expired outbox shard lease");
        }
        self.held.insert(shard, until);
        Ok(())
    }

    async fn release(&mut self, shard: u32) {
        self.held.remove(&shard);
        let key = self.key(shard);
        if let Err(e) = self
            .bounded(
                "release shard lease",
                self.coll.delete_one(doc! { "_id": &key, "owner": &self.instance }),
            )
            .await
        {
            tracing::warn!(lease = %key, error = %e, "could not release an outbox shard lease; it expires by itself");
        }
    }

    /// Releases every lease and the membership (clean shutdown).
    pub(crate) async fn release_all(&mut self) {
        let shards: Vec<u32> = self.held.keys().copied().collect();
        for s in shards {
            self.release(s).await;
        }
        let _ = self
            .bounded(
                "leave relay membership",
                self.coll.delete_one(doc! { "_id": self.member_key() }),
            )
            .await;
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.op_timeout, fut.into_future()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::mongo(
                format!("{operation} ({}.{LEASE_COLLECTION})", self.database),
                e,
            )),
            Err(_) => Err(Error::Timeout {
                component: Component::Mongodb,
                operation,
                after: self.op_timeout,
            }),
        }
    }
}
