//! The migration ledger: `_caas_migrations` in the database `migrations.database` names, one
//! document per applied step.
//!
//! ```text
//! { _id: "schema:app.profiles:Profile:1->2", kind: "schema", checksum, applied_at, host,
//!   token, documents }
//! { _id: "indexes:app.profiles:Profile@<checksum>", kind: "indexes", checksum, ..., plan }
//! { _id: "data:2024-06-split-addresses", kind: "data", order, checksum, ... }
//! { _id: "progress:schema:app.profiles:Profile:3", kind: "progress", rewritten, by_version,
//!   token, updated_at }             (how far an unfinished run got; not a step)
//! { _id: "rollback:<step>:<token>", kind: "rollback", ... }   (history of rollbacks)
//! ```
//!
//! A step is recorded by inserting its document: the unique `_id` means a step is recorded
//! once, whoever tries. Only the holder of the migration lock writes here; every record carries
//! its fencing token. A recorded step whose declared checksum differs is refused
//! ([`Error::MigrationChecksum`]) before anything runs.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{CollectionOptions, WriteConcern};
use mongodb::Collection;

use crate::connection::Connections;
use crate::error::{duplicate_key_message, Error, Result};

/// The ledger's collection.
pub const LEDGER_COLLECTION: &str = "_caas_migrations";

/// A checksum as the ledger records it: FNV-1a (64 bits) of `text`, as 16 hex digits. Data
/// migrations may use it for theirs, e.g. `checksum(include_str!("split_addresses.rs"))`, so
/// that editing an applied migration is caught.
pub fn checksum(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One recorded step.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub checksum: String,
    pub applied_at: String,
    pub host: String,
}

/// The ledger of one database.
#[derive(Clone)]
pub(crate) struct Ledger {
    coll: Collection<Document>,
    database: String,
    bound: std::time::Duration,
    conn: Connections,
}

impl Ledger {
    pub(crate) fn new(conn: &Connections) -> Self {
        let database = conn.config().migrations.database.clone();
        let options = CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        Ledger {
            coll: conn
                .database(&database)
                .collection_with_options(LEDGER_COLLECTION, options),
            bound: conn.config().mongodb.socket_timeout,
            database,
            conn: conn.clone(),
        }
    }

    /// The database it lives in.
    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    async fn call<T>(
        &self,
        what: &'static str,
        f: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T> {
        crate::error::bounded_mongo(self.bound, what, (&self.database, LEDGER_COLLECTION), f).await
    }

    /// Every applied step, by name.
    pub(crate) async fn applied(&self) -> Result<BTreeMap<String, Record>> {
        let docs: Vec<Document> = self
            .call("read the migration ledger", async {
                self.coll
                    .find(doc! { "kind": { "$in": ["schema", "indexes", "data"] } })
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                let name = d.get_str("_id").ok()?.to_owned();
                Some((
                    name,
                    Record {
                        checksum: d.get_str("checksum").unwrap_or_default().to_owned(),
                        applied_at: d
                            .get_datetime("applied_at")
                            .ok()
                            .and_then(|t| t.try_to_rfc3339_string().ok())
                            .unwrap_or_default(),
                        host: d.get_str("host").unwrap_or_default().to_owned(),
                    },
                ))
            })
            .collect())
    }

    /// Records an applied step. `Ok(false)` if it was recorded already.
    pub(crate) async fn record(
        &self,
        name: &str,
        kind: &str,
        checksum: &str,
        host: &str,
        token: i64,
        details: Document,
    ) -> Result<bool> {
        let mut record = doc! {
            "_id": name, "kind": kind, "checksum": checksum,
            "applied_at": self.conn.server_now(), "host": host, "token": token,
        };
        record.extend(details);
        match self.coll.insert_one(record).await {
            Ok(_) => Ok(true),
            Err(e) if duplicate_key_message(&e).is_some() => Ok(false),
            Err(e) => Err(Error::mongo(
                format!("record {name} ({}.{LEDGER_COLLECTION})", self.database),
                e,
            )),
        }
    }

    /// Forgets an applied step (it was rolled back), keeping a history record.
    pub(crate) async fn forget(&self, name: &str, host: &str, token: i64) -> Result<()> {
        let old = self
            .call(
                "read a ledger record",
                self.coll.find_one(doc! { "_id": name }),
            )
            .await?;
        let Some(old) = old else { return Ok(()) };
        let history = doc! {
            "_id": format!("rollback:{name}:{token}"), "kind": "rollback", "step": name,
            "rolled_back_at": self.conn.server_now(), "host": host, "token": token,
            "record": old,
        };
        if let Err(e) = self.coll.insert_one(history).await {
            if duplicate_key_message(&e).is_none() {
                return Err(Error::mongo("record a rollback", e));
            }
        }
        self.call(
            "forget a rolled-back step",
            self.coll.delete_one(doc! { "_id": name }),
        )
        .await?;
        Ok(())
    }

    /// The progress document `name`, if any.
    pub(crate) async fn progress(&self, name: &str) -> Result<Option<Document>> {
        self.call(
            "read migration progress",
            self.coll.find_one(doc! { "_id": name, "kind": "progress" }),
        )
        .await
    }

    /// Saves the progress document `name` (only the lock holder writes it).
    pub(crate) async fn save_progress(
        &self,
        name: &str,
        token: i64,
        mut state: Document,
    ) -> Result<()> {
        state.insert("kind", "progress");
        state.insert("token", token);
        state.insert("updated_at", self.conn.server_now());
        self.call(
            "save migration progress",
            self.coll
                .replace_one(doc! { "_id": name }, state)
                .upsert(true),
        )
        .await?;
        Ok(())
    }

    /// Deletes the progress document `name`.
    pub(crate) async fn clear_progress(&self, name: &str) -> Result<()> {
        self.call(
            "clear migration progress",
            self.coll
                .delete_one(doc! { "_id": name, "kind": "progress" }),
        )
        .await?;
        Ok(())
    }
}

/// The checksum check: `declared` against what the ledger recorded for `name`, if anything.
pub(crate) fn verify(
    applied: &BTreeMap<String, Record>,
    name: &str,
    declared: &str,
) -> Result<bool> {
    match applied.get(name) {
        None => Ok(false),
        Some(r) if r.checksum == declared => Ok(true),
        Some(r) => Err(Error::MigrationChecksum {
            step: name.to_owned(),
            recorded: r.checksum.clone(),
            declared: declared.to_owned(),
            applied_at: r.applied_at.clone(),
            host: r.host.clone(),
        }),
    }
}

/// This process, as ledger records and the lock name it: `<host>:<pid>`.
pub(crate) fn host() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{name}:{}", std::process::id())
}

/// Counts per version as BSON (`{"1": n, ...}`), for progress documents.
pub(crate) fn counts_to_bson(counts: &BTreeMap<u32, u64>) -> Document {
    counts
        .iter()
        .map(|(v, n)| {
            (
                v.to_string(),
                Bson::Int64(i64::try_from(*n).unwrap_or(i64::MAX)),
            )
        })
        .collect()
}

/// The inverse of [`counts_to_bson`].
pub(crate) fn counts_from_bson(doc: Option<&Document>) -> BTreeMap<u32, u64> {
    doc.into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let n = match v {
                Bson::Int64(n) => u64::try_from(*n).ok()?,
                Bson::Int32(n) => u64::try_from(*n).ok()?,
                _ => return None,
            };
            Some((k.parse().ok()?, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_stable_fnv1a() {
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_eq!(checksum("a"), "af63dc4c8601ec8c");
        assert_ne!(
            checksum("Profile:1->2:v1_to_v2"),
            checksum("Profile:1->2:v1_to_v3")
        );
    }

    #[test]
    fn a_changed_checksum_names_the_step() {
        let mut applied = BTreeMap::new();
        applied.insert(
            "schema:a.b:P:1->2".to_owned(),
            Record {
                checksum: "aa".into(),
                applied_at: "2026-01-01T00:00:00Z".into(),
                host: "h:1".into(),
            },
        );
        assert!(verify(&applied, "schema:a.b:P:1->2", "aa").unwrap());
        assert!(!verify(&applied, "schema:a.b:P:2->3", "bb").unwrap());
        let e = verify(&applied, "schema:a.b:P:1->2", "bb").unwrap_err();
        assert!(e.to_string().contains("schema:a.b:P:1->2"), "{e}");
        assert!(e.to_string().contains("recorded") || e.to_string().contains("applied"));
    }
}
