//! The migration lock: one holder at a time across every process of a fleet, with a lease, a
//! heartbeat and a fencing token, built on unique inserts (as version claims are, `repo/versions.rs`).
//!
//! The lock is a sequence of generation documents `{_id: "lock:<generation>", gen, owner,
//! host, acquired_at, heartbeat_at, released}` in `_caas_migration_lock` of the ledger's
//! database. Taking the lock is inserting the next generation: the unique `_id` lets exactly
//! one of any number of racing processes win it, on MongoDB and on FerretDB alike (whose
//! conditional updates are not atomic, so a "set owner where owner is null" could have several
//! winners). The next generation may be inserted only when the latest one is released or its
//! lease has expired: its `heartbeat_at`, which only its holder writes (every third of
//! `migrations.lock_lease`), is older than the lease by the server's clock. So:
//!
//! - N processes starting together: one inserts generation g+1; the others get a duplicate
//!   key, read the latest generation, find it live, and wait (polling), then take the next one
//!   when it is released and re-read the ledger (which then says everything is applied).
//! - A holder that died stops heartbeating; after the lease another process inserts the next
//!   generation: a takeover, as safe as the first acquisition (never delete-then-insert).
//! - The generation is the fencing token: strictly increasing, recorded with everything the
//!   holder writes to the ledger. A holder checks before each batch of writes
//!   ([`Held::ensure`]) that its generation is still the latest and its heartbeat current; a
//!   holder that was paused past its lease finds out there and stops.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::{CollectionOptions, WriteConcern};
use mongodb::Collection;

use crate::connection::Connections;
use crate::error::{duplicate_key_message, Error, Result};

/// The lock's collection, in the ledger's database.
pub const LOCK_COLLECTION: &str = "_caas_migration_lock";

/// Generations kept behind the latest (older ones are deleted by the holder).
const KEPT_GENERATIONS: i64 = 16;

/// Takes the lock.
pub(crate) struct Lock {
    conn: Connections,
    coll: Collection<Document>,
    database: String,
    lease: Duration,
    owner: String,
    host: String,
}

/// The lock, held. Dropping it stops the heartbeat without releasing (as if the process died:
/// the lease then expires); [`release`](Self::release) gives it back.
pub(crate) struct Held {
    lock: Lock,
    generation: i64,
    key: String,
    state: Arc<HeartbeatState>,
    heartbeat: tokio::task::JoinHandle<()>,
}

struct HeartbeatState {
    /// When the last heartbeat succeeded, as milliseconds since `started`.
    last_ok_ms: AtomicI64,
    started: Instant,
    lost: AtomicBool,
}

impl Lock {
    pub(crate) fn new(conn: &Connections, host: &str) -> Self {
        let settings = &conn.config().migrations;
        let options = CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        Lock {
            coll: conn
                .database(&settings.database)
                .collection_with_options(LOCK_COLLECTION, options),
            database: settings.database.clone(),
            lease: settings.lock_lease,
            owner: uuid::Uuid::now_v7().simple().to_string(),
            host: host.to_owned(),
            conn: conn.clone(),
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::MigrationLock {
            database: self.database.clone(),
            reason: reason.into(),
        }
    }

    fn mongo(&self, what: &str, e: mongodb::error::Error) -> Error {
        Error::mongo(format!("{what} ({}.{LOCK_COLLECTION})", self.database), e)
    }

    async fn latest(&self) -> Result<Option<Document>> {
        let bound = self.conn.config().mongodb.socket_timeout;
        crate::error::bounded_mongo(
            bound,
            "read the migration lock",
            (&self.database, LOCK_COLLECTION),
            self.coll.find_one(doc! {}).sort(doc! { "gen": -1 }),
        )
        .await
    }

    /// Takes the lock, waiting up to `wait` while another process holds it. Returns the lock
    /// held and how long it waited.
    pub(crate) async fn acquire(self, wait: Duration) -> Result<(Held, Duration)> {
        let started = Instant::now();
        let poll = (self.lease / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let now = self.conn.server_now().timestamp_millis();
            let next = match self.latest().await? {
                None => 1,
                Some(l) => {
                    let generation = l.get_i64("gen").unwrap_or(0);
                    let released = l.get_bool("released").unwrap_or(false);
                    let beat = l
                        .get_datetime("heartbeat_at")
                        .map_or(0, |d| d.timestamp_millis());
                    if released || now.saturating_sub(beat) > self.lease_ms() {
                        if !released {
                            tracing::warn!(
                                database = %self.database,
                                generation,
                                holder = l.get_str("host").unwrap_or(""),
                                "taking over the migration lock: its holder stopped renewing it"
                            );
                        }
                        generation + 1
                    } else {
                        if started.elapsed() >= wait {
                            return Err(self.error(format!(
                                "held by {} (generation {generation}) for longer than \
                                 migrations.lock_wait ({wait:?})",
                                l.get_str("host").unwrap_or("another process")
                            )));
                        }
                        tokio::time::sleep(poll).await;
                        continue;
                    }
                }
            };
            let key = format!("lock:{next:020}");
            let at = DateTime::from_millis(now);
            let inserted = self
                .coll
                .insert_one(doc! {
                    "_id": &key, "gen": next, "owner": &self.owner, "host": &self.host,
                    "acquired_at": at, "heartbeat_at": at, "released": false,
                })
                .await;
            match inserted {
                Ok(_) => {
                    let waited = started.elapsed();
                    return Ok((self.held(next, key).await, waited));
                }
                // Another process took this generation first.
                Err(e) if duplicate_key_message(&e).is_some() => {
                    tokio::time::sleep(poll.min(Duration::from_millis(100))).await;
                }
                Err(e) => return Err(self.mongo("take the migration lock", e)),
            }
        }
    }

    async fn held(self, generation: i64, key: String) -> Held {
        // Older generations are history.
        let _ = self
            .coll
            .delete_many(doc! { "gen": { "$lt": generation - KEPT_GENERATIONS } })
            .await;
        let state = Arc::new(HeartbeatState {
            last_ok_ms: AtomicI64::new(0),
            started: Instant::now(),
            lost: AtomicBool::new(false),
        });
        let heartbeat = tokio::spawn(heartbeat(
            self.coll.clone(),
            self.conn.clone(),
            key.clone(),
            self.owner.clone(),
            generation,
            self.lease,
            state.clone(),
        ));
        tracing::info!(database = %self.database, generation, "took the migration lock");
        Held {
            lock: self,
            generation,
            key,
            state,
            heartbeat,
        }
    }
}

/// Renews `key` every third of the lease while its generation is the latest.
async fn heartbeat(
    coll: Collection<Document>,
    conn: Connections,
    key: String,
    owner: String,
    generation: i64,
    lease: Duration,
    state: Arc<HeartbeatState>,
) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = coll
            .update_one(
                doc! { "_id": &key, "owner": &owner, "released": false },
                doc! { "$set": { "heartbeat_at": conn.server_now() } },
            )
            .await;
        let superseded = coll
            .find_one(doc! { "gen": { "$gt": generation } })
            .await
            .map(|d| d.is_some());
        match (renewed, superseded) {
            (Ok(r), Ok(false)) if r.matched_count == 1 => {
                let ms = i64::try_from(state.started.elapsed().as_millis()).unwrap_or(i64::MAX);
                state.last_ok_ms.store(ms, Ordering::Relaxed);
            }
            (Ok(_), Ok(_)) => {
                tracing::error!(
                    generation,
                    "lost the migration lock: another process took it over"
                );
                state.lost.store(true, Ordering::Relaxed);
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(generation, error = %e, "could not renew the migration lock; trying again");
            }
        }
    }
}

impl Held {
    /// The fencing token: this holder's generation, larger than any before it.
    pub(crate) fn token(&self) -> i64 {
        self.generation
    }

    /// Fails unless this holder still holds the lock: its heartbeat renewed within two thirds
    /// of the lease (so nobody can have taken it over), and no later generation exists. Called
    /// before every batch of writes.
    pub(crate) async fn ensure(&self) -> Result<()> {
        let lock = &self.lock;
        if self.state.lost.load(Ordering::Relaxed) {
            return Err(lock.error(format!(
                "generation {} was taken over by another process",
                self.generation
            )));
        }
        let since_ok = self.state.started.elapsed().as_millis() as i64
            - self.state.last_ok_ms.load(Ordering::Relaxed);
        if since_ok > lock.lease_ms() * 2 / 3 {
            return Err(lock.error(format!(
                "generation {}: not renewed for {since_ok} ms of a {:?} lease; stopping before \
                 another process can take it over",
                self.generation, lock.lease
            )));
        }
        match lock.latest().await? {
            Some(l) if l.get_i64("gen").unwrap_or(0) == self.generation => Ok(()),
            _ => {
                self.state.lost.store(true, Ordering::Relaxed);
                Err(lock.error(format!(
                    "generation {} was taken over by another process",
                    self.generation
                )))
            }
        }
    }

    /// Gives the lock back.
    pub(crate) async fn release(self) {
        self.heartbeat.abort();
        let r = self
            .lock
            .coll
            .update_one(
                doc! { "_id": &self.key, "owner": &self.lock.owner },
                doc! { "$set": { "released": true, "released_at": self.lock.conn.server_now() } },
            )
            .await;
        match r {
            Ok(_) => {
                tracing::info!(database = %self.lock.database, generation = self.generation, "released the migration lock");
            }
            Err(e) => {
                tracing::warn!(generation = self.generation, error = %e, "could not release the migration lock; it expires with its lease");
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Not released: as if this process died; the lease expires.
        self.heartbeat.abort();
    }
}
