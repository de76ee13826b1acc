//! Shard leases: how relays split an outbox between them without per-event claims.
//!
//! A lease is a document `{_id: "<database>:<shard>", kind: "shard", owner, until, since}` in
//! `caas_outbox_leases` of the outbox's database. It is taken by inserting it: the unique `_id`
//! lets exactly one relay win, on MongoDB and on FerretDB alike. (FerretDB's conditional
//! updates are read-modify-write without a row lock; measured: 8 concurrent `findAndModify
//! {owner: null}` on one document all "won" in most rounds. Unique inserts admitted exactly one
//! every time.)
//!
//! Renewal: every relay keeps one heartbeat document `{_id: "relay:<instance>", kind:
//! "member", owner, until}`, written only by itself every third of the TTL. A lease is valid
//! while its owner's heartbeat is; renewing every lease a relay holds is therefore one write,
//! not one per shard (on FerretDB each update is its own SQLite transaction, about 15 ms
//! measured). The `until` stored in a lease is the owner's heartbeat expiry when it took it,
//! for operators to read. A relay publishes only while its own heartbeat has more than a third
//! of the TTL left, and re-reads every lease at each renewal, dropping shards it no longer owns.
//!
//! Takeover: a lease whose owner's heartbeat has expired (or is gone) is deleted exactly
//! (`{_id, owner}`) and inserted anew. On FerretDB that delete is itself read-then-delete: if
//! two relays race for the same expired lease, the slower one's delete can remove the winner's
//! fresh lease and insert its own, so for a moment both believe they hold the shard. The taker
//! re-reads its lease shortly after taking it over and every renewal re-reads all leases, which
//! closes the window within one renewal; what leaks through is a duplicate publish
//! (at-least-once), never a lost event.
//!
//! Balance: each relay holds at most `ceil(shards / live relays)` shards (live = unexpired
//! heartbeats) and releases the excess between batches, so a relay that joins gets its share
//! within one renewal period.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Collection;

use super::envelope::now_millis;
use super::record::{millis, shard_of};
use crate::connection::Connections;
use crate::error::{duplicate_key_message, Component, Error, Result};

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
    held: BTreeSet<u32>,
    /// Our heartbeat's expiry (ms since the epoch) as last written.
    heartbeat_until: i64,
    last_maintained: Option<Instant>,
}

impl ShardLeases {
    pub(crate) fn new(
        conn: &Connections,
        database: &str,
        instance: &str,
        shard_count: u32,
        ttl: Duration,
        op_timeout: Duration,
    ) -> Self {
        ShardLeases {
            coll: conn.database(database).collection(LEASE_COLLECTION),
            database: database.to_owned(),
            instance: instance.to_owned(),
            shard_count: shard_count.max(1),
            ttl: ttl.max(Duration::from_millis(300)),
            op_timeout,
            held: BTreeSet::new(),
            heartbeat_until: 0,
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

    /// The shards this relay may publish now: those held, while the heartbeat has more than a
    /// third of the TTL left.
    pub(crate) fn owned(&self) -> Vec<u32> {
        if self.heartbeat_until - now_millis() <= self.ttl_ms() / 3 {
            return Vec::new();
        }
        self.held.iter().copied().collect()
    }

    /// How many shards are held.
    pub(crate) fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Heartbeat, re-read the leases, release the excess over the fair share, take free or
    /// expired shards up to it.
    pub(crate) async fn maintain(&mut self) -> Result<()> {
        self.last_maintained = Some(Instant::now());
        self.heartbeat().await?;
        let now = now_millis();
        let until = self.heartbeat_until;

        let docs: Vec<Document> = self
            .bounded("read shard leases", async {
                self.coll.find(doc! {}).await?.try_collect().await
            })
            .await?;
        let mut heartbeats: HashMap<String, i64> = HashMap::new();
        let mut leases: BTreeMap<u32, Document> = BTreeMap::new();
        let mut dead = Vec::new();
        for d in docs {
            match d.get_str("kind") {
                Ok("member") => {
                    let exp = millis(d.get("until"));
                    if now - exp > 10 * self.ttl_ms() {
                        dead.push(d);
                    } else if let Ok(owner) = d.get_str("owner") {
                        heartbeats.insert(owner.to_owned(), exp);
                    }
                }
                _ => {
                    let shard = d
                        .get_str("_id")
                        .ok()
                        .and_then(|id| id.rsplit_once(':'))
                        .and_then(|(_, s)| s.parse::<u32>().ok());
                    if let Some(s) = shard.filter(|s| *s < self.shard_count) {
                        leases.insert(s, d);
                    }
                }
            }
        }
        for d in dead {
            // Heartbeats expired long ago: relays that died without leaving.
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

        // What we hold is what the leases say.
        let mine: BTreeSet<u32> = leases
            .iter()
            .filter(|(_, d)| d.get_str("owner") == Ok(self.instance.as_str()))
            .map(|(s, _)| *s)
            .collect();
        for lost in self.held.difference(&mine) {
            tracing::warn!(database = %self.database, shard = lost, instance = %self.instance, "lost an outbox shard lease to another relay");
        }
        self.held = mine;

        let live = heartbeats.values().filter(|exp| **exp > now).count().max(1) as u32;
        let fair = self.shard_count.div_ceil(live) as usize;
        if self.held.len() > fair {
            let excess: Vec<u32> = self
                .held
                .iter()
                .rev()
                .take(self.held.len() - fair)
                .copied()
                .collect();
            for s in excess {
                self.release(s).await;
            }
            return Ok(());
        }

        // Take free or expired shards, starting at a point that depends on the instance so
        // relays starting together do not all race for shard 0.
        let start = shard_of(&self.instance, "", "", self.shard_count);
        let mut taken_over = Vec::new();
        for i in 0..self.shard_count {
            if self.held.len() + taken_over.len() >= fair {
                break;
            }
            let s = (start + i) % self.shard_count;
            if self.held.contains(&s) {
                continue;
            }
            let expired_owner = match leases.get(&s) {
                None => None,
                Some(d) => {
                    let owner = d.get_str("owner").unwrap_or_default();
                    if heartbeats.get(owner).is_some_and(|exp| *exp > now) {
                        continue;
                    }
                    Some(owner.to_owned())
                }
            };
            match self.acquire(s, expired_owner.as_deref(), until).await {
                Ok(false) => {}
                Ok(true) if expired_owner.is_some() => taken_over.push((s, expired_owner)),
                Ok(true) => {
                    self.held.insert(s);
                }
                Err(e) => {
                    tracing::warn!(database = %self.database, shard = s, error = %e, "could not take an outbox shard lease")
                }
            }
        }
        if !taken_over.is_empty() {
            // Close the FerretDB takeover race (module docs) before publishing anything: wait,
            // then keep only the leases that still name us.
            tokio::time::sleep(TAKEOVER_SETTLE).await;
            let keys: Vec<String> = taken_over.iter().map(|(s, _)| self.key(*s)).collect();
            let docs: Vec<Document> = self
                .bounded("check shard leases", async {
                    self.coll
                        .find(doc! { "owner": &self.instance, "kind": "shard" })
                        .await?
                        .try_collect()
                        .await
                })
                .await?;
            let ours: BTreeSet<&str> = docs.iter().filter_map(|d| d.get_str("_id").ok()).collect();
            for ((s, previous), key) in taken_over.into_iter().zip(&keys) {
                if ours.contains(key.as_str()) {
                    tracing::info!(database = %self.database, shard = s, instance = %self.instance, previous = previous.as_deref().unwrap_or(""), "took over an expired outbox shard lease");
                    self.held.insert(s);
                } else {
                    tracing::warn!(database = %self.database, shard = s, "lost a shard lease takeover race");
                }
            }
        }
        if self.heartbeat_until - now_millis() < self.ttl_ms() * 5 / 6 {
            // Maintenance was slow: renew before publishing on a short heartbeat.
            self.heartbeat().await?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let until = now_millis() + self.ttl_ms();
        self.bounded(
            "relay heartbeat",
            self.coll
                .update_one(
                    doc! { "_id": self.member_key() },
                    doc! { "$set": {
                        "kind": "member", "owner": &self.instance,
                        "until": DateTime::from_millis(until),
                    } },
                )
                .upsert(true),
        )
        .await?;
        self.heartbeat_until = until;
        Ok(())
    }

    /// Inserts the lease (after deleting the expired one); whether it was inserted.
    async fn acquire(
        &mut self,
        shard: u32,
        expired_owner: Option<&str>,
        until: i64,
    ) -> Result<bool> {
        let key = self.key(shard);
        if let Some(owner) = expired_owner {
            self.bounded(
                "expire shard lease",
                self.coll.delete_one(doc! { "_id": &key, "owner": owner }),
            )
            .await?;
        }
        let inserted = tokio::time::timeout(
            self.op_timeout,
            self.coll
                .insert_one(doc! {
                    "_id": &key, "kind": "shard", "owner": &self.instance,
                    "until": DateTime::from_millis(until), "since": DateTime::now(),
                })
                .into_future(),
        )
        .await;
        match inserted {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if duplicate_key_message(&e).is_some() => Ok(false),
            Ok(Err(e)) => Err(Error::mongo(format!("take shard lease {key}"), e)),
            Err(_) => Err(Error::Timeout {
                component: Component::Mongodb,
                operation: "take shard lease",
                after: self.op_timeout,
            }),
        }
    }

    async fn release(&mut self, shard: u32) {
        self.held.remove(&shard);
        let key = self.key(shard);
        if let Err(e) = self
            .bounded(
                "release shard lease",
                self.coll
                    .delete_one(doc! { "_id": &key, "owner": &self.instance }),
            )
            .await
        {
            tracing::warn!(lease = %key, error = %e, "could not release an outbox shard lease; it expires with the heartbeat");
        }
    }

    /// Releases every lease and the heartbeat (clean shutdown).
    pub(crate) async fn release_all(&mut self) {
        let shards: Vec<u32> = self.held.iter().copied().collect();
        for s in shards {
            self.release(s).await;
        }
        self.heartbeat_until = 0;
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
        crate::error::bounded_mongo(
            self.op_timeout,
            operation,
            (&self.database, LEASE_COLLECTION),
            fut,
        )
        .await
    }
}
