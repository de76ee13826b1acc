//! What the connected MongoDB-wire server can do, detected once at connect.
//!
//! Features that have a MongoDB path and a fallback (transactional outbox, TTL sweeping,
//! version-fenced updates, ...) choose between them from [`Capabilities`], never from a guess
//! about the server. Transactions, TTL indexes and change streams are probed for real on a scratch
//! collection in `mongodb.probe_database`, which is dropped afterwards; the server product comes
//! from `buildInfo` (FerretDB adds `ferretdbVersion`), the topology from `hello`.

use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use serde::Serialize;

use crate::error::{Error, Result};

/// Which server implements the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ServerProduct {
    /// MongoDB itself.
    Mongodb,
    /// FerretDB (MongoDB wire protocol over SQLite or PostgreSQL).
    Ferretdb,
    /// The memory backend of [`Storage::in_memory`](crate::Storage::in_memory).
    Memory,
}

/// How the server is deployed, as `hello` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Topology {
    /// A single server.
    Standalone,
    /// A replica set member (or a server that claims a set name, as FerretDB can).
    ReplicaSet {
        /// The replica set name.
        name: String,
    },
    /// A `mongos` router.
    Sharded,
}

/// What the connected server supports. See the module docs for how each is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The server product.
    pub product: ServerProduct,
    /// The MongoDB version the server reports (FerretDB reports the version it emulates).
    pub version: String,
    /// FerretDB's own version, when the server is FerretDB.
    pub ferretdb_version: Option<String>,
    /// Deployment topology.
    pub topology: Topology,
    /// `maxWireVersion` from `hello`.
    pub max_wire_version: i32,
    /// Multi-document transactions that really commit and abort.
    pub transactions: bool,
    /// TTL indexes (`expireAfterSeconds`).
    pub ttl_indexes: bool,
    /// Change streams.
    pub change_streams: bool,
    /// Causally consistent sessions (the server returns `operationTime`).
    pub causal_consistency: bool,
    /// Whether `findAndModify` accepts a projection (`fields`). FerretDB v1 does not; the
    /// repository then strips secret and framework fields from the returned document itself.
    pub find_and_modify_projection: bool,
    /// Whether a conditional single-document update is atomic against concurrent writers
    /// (filter checked and document changed in one step). True on MongoDB. FerretDB v1 reads,
    /// modifies and writes back without a row lock, so two "update where version = n" can both
    /// win; features that need it use unique-index claims instead.
    pub atomic_conditional_updates: bool,
    /// Whether a unique index on an array field holds each element, as MongoDB's multikey
    /// indexes do (two documents may not share an element). FerretDB v1 on SQLite indexes the
    /// whole array as one value: two documents may share elements as long as their arrays
    /// differ. [`sync_indexes`](crate::Storage::sync_indexes) reports such an index as
    /// [`IndexChange::Weakened`](crate::index::IndexChange::Weakened) there.
    pub unique_list_elements: bool,
}

impl Capabilities {
    /// What the memory backend does: transactions and atomic conditional updates (writes are
    /// serialized), no TTL indexes or change streams.
    pub(crate) fn in_memory() -> Self {
        Capabilities {
            product: ServerProduct::Memory,
            version: "7.0".into(),
            ferretdb_version: None,
            topology: Topology::Standalone,
            max_wire_version: 21,
            transactions: true,
            ttl_indexes: false,
            change_streams: false,
            causal_consistency: false,
            find_and_modify_projection: false,
            atomic_conditional_updates: true,
            unique_list_elements: true,
        }
    }

    /// A short human description, e.g. `FerretDB 1.24.2 (MongoDB 7.0.42 wire)`.
    pub fn server_description(&self) -> String {
        if self.product == ServerProduct::Memory {
            return "memory backend (MongoDB 7.0 semantics)".into();
        }
        match &self.ferretdb_version {
            Some(v) => format!(
                "FerretDB {} (MongoDB {} wire)",
                v.trim_start_matches('v'),
                self.version
            ),
            None => format!("MongoDB {}", self.version),
        }
    }

    /// Detects the capabilities of the server behind `client`.
    pub async fn detect(client: &Client, probe_database: &str) -> Result<Self> {
        let admin = client.database("admin");
        let hello = admin
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| Error::mongo("hello", e))?;
        let build = admin
            .run_command(doc! { "buildInfo": 1 })
            .await
            .map_err(|e| Error::mongo("buildInfo", e))?;

        let ferretdb_version = build.get_str("ferretdbVersion").ok().map(str::to_owned);
        let product = if ferretdb_version.is_some() {
            ServerProduct::Ferretdb
        } else {
            ServerProduct::Mongodb
        };
        let topology = if hello.get_str("msg") == Ok("isdbgrid") {
            Topology::Sharded
        } else if let Ok(name) = hello.get_str("setName") {
            Topology::ReplicaSet {
                name: name.to_owned(),
            }
        } else {
            Topology::Standalone
        };
        let max_wire_version = int(&hello, "maxWireVersion").unwrap_or(0) as i32;

        let probe = Probe::new(client, probe_database).await?;
        let transactions = probe.transactions().await;
        let ttl_indexes = probe.ttl_index().await;
        let change_streams = probe.change_stream().await;
        let causal_consistency = probe.causal_session().await;
        let find_and_modify_projection = probe.find_and_modify_projection().await;
        let unique_list_elements = probe.unique_list_elements().await;
        probe.finish().await;

        Ok(Capabilities {
            product,
            version: build.get_str("version").unwrap_or("unknown").to_owned(),
            ferretdb_version,
            topology,
            max_wire_version,
            transactions,
            ttl_indexes,
            change_streams,
            causal_consistency,
            find_and_modify_projection,
            atomic_conditional_updates: product == ServerProduct::Mongodb,
            unique_list_elements,
        })
    }
}

fn int(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        mongodb::bson::Bson::Int32(i) => Some(i64::from(*i)),
        mongodb::bson::Bson::Int64(i) => Some(*i),
        mongodb::bson::Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

/// A scratch collection of its own per probe, so concurrent connects do not interfere.
struct Probe {
    coll: mongodb::Collection<Document>,
    client: Client,
}

impl Probe {
    async fn new(client: &Client, database: &str) -> Result<Self> {
        let db = client.database(database);
        let name = format!("caas_capability_probe_{}", ObjectId::new().to_hex());
        db.create_collection(&name)
            .await
            .map_err(|e| Error::mongo(format!("create probe collection {database}.{name}"), e))?;
        Ok(Probe {
            coll: db.collection(&name),
            client: client.clone(),
        })
    }

    /// Inserts in a transaction, aborts, and checks that the insert is gone: a server that
    /// accepts the transaction fields but ignores them is not transactional.
    async fn transactions(&self) -> bool {
        let Ok(mut session) = self.client.start_session().await else {
            return false;
        };
        if session.start_transaction().await.is_err() {
            return false;
        }
        let id = ObjectId::new();
        let inserted = self
            .coll
            .insert_one(doc! { "_id": id })
            .session(&mut session)
            .await
            .is_ok();
        let aborted = session.abort_transaction().await.is_ok();
        let visible = matches!(self.coll.find_one(doc! { "_id": id }).await, Ok(Some(_)));
        inserted && aborted && !visible
    }

    async fn ttl_index(&self) -> bool {
        let model = IndexModel::builder()
            .keys(doc! { "probe_expires_at": 1 })
            .options(
                IndexOptions::builder()
                    .expire_after(std::time::Duration::from_secs(3600))
                    .name("caas_probe_ttl".to_owned())
                    .build(),
            )
            .build();
        self.coll.create_index(model).await.is_ok()
    }

    async fn change_stream(&self) -> bool {
        self.coll.watch().await.is_ok()
    }

    async fn causal_session(&self) -> bool {
        let Ok(mut session) = self.client.start_session().causal_consistency(true).await else {
            return false;
        };
        if self
            .coll
            .find_one(doc! {})
            .session(&mut session)
            .await
            .is_err()
        {
            return false;
        }
        session.operation_time().is_some()
    }

    async fn find_and_modify_projection(&self) -> bool {
        let id = ObjectId::new();
        if self
            .coll
            .insert_one(doc! { "_id": id, "a": 1, "b": 2 })
            .await
            .is_err()
        {
            return false;
        }
        matches!(
            self.coll
                .find_one_and_update(doc! { "_id": id }, doc! { "$set": { "a": 3 } })
                .projection(doc! { "b": 0 })
                .await,
            Ok(Some(d)) if !d.contains_key("b")
        )
    }

    /// Two documents whose arrays share one element, under a unique index on the array: the
    /// second is refused where each element is unique.
    async fn unique_list_elements(&self) -> bool {
        let model = IndexModel::builder()
            .keys(doc! { "probe_tags": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("caas_probe_unique_tags".to_owned())
                    .build(),
            )
            .build();
        if self.coll.create_index(model).await.is_err() {
            return false;
        }
        let first = self
            .coll
            .insert_one(doc! { "probe_tags": ["a", "b"] })
            .await;
        let second = self
            .coll
            .insert_one(doc! { "probe_tags": ["c", "a"] })
            .await;
        first.is_ok() && second.is_err()
    }

    async fn finish(self) {
        let _ = self.coll.drop().await;
    }
}
