//! One queued write as it travels through the Redis stream, and the checks an entry passes
//! before it is applied.
//!
//! An entry names its entity and namespace and carries the tenant and the operation; the
//! flusher applies it only through the pipeline the entity registered in this process, so
//! the field names, the version rules and the cache policy come from the entity, never from
//! Redis.

use mongodb::bson::{doc, Bson, Document};

use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::tenant::TenantId;

/// One queued operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Insert this document.
    Insert(Document),
    /// Apply this `$set` to the document with this id (the version moves on, as for a direct
    /// update).
    Update {
        /// The document's id.
        id: Bson,
        /// The fields to set.
        set: Document,
    },
    /// Replace the document with this id, or insert it.
    Upsert {
        /// The document's id.
        id: Bson,
        /// The whole new document.
        doc: Document,
    },
    /// Delete (or soft-delete) the document with this id.
    Delete {
        /// The document's id.
        id: Bson,
    },
}

impl Op {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Insert(_) => "insert",
            Op::Update { .. } => "update",
            Op::Upsert { .. } => "upsert",
            Op::Delete { .. } => "delete",
        }
    }
}

/// A decoded, checked entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The entity's name (`EntityMeta::name`).
    pub entity: String,
    /// The tenant the write belongs to.
    pub tenant: TenantId,
    /// What to do.
    pub op: Op,
}

/// The stream entry of `op` for `meta` in `tenant`.
pub(crate) fn encode(meta: &EntityMeta, tenant: &TenantId, op: &Op) -> Result<Vec<u8>> {
    let mut entry = doc! {
        "entity": meta.name,
        "db": meta.database,
        "coll": meta.collection,
        "tenant": tenant.as_str(),
        "op": op.name(),
    };
    match op {
        Op::Insert(d) => {
            entry.insert("doc", d.clone());
        }
        Op::Update { id, set } => {
            entry.insert("id", id.clone());
            entry.insert("set", set.clone());
        }
        Op::Upsert { id, doc } => {
            entry.insert("id", id.clone());
            entry.insert("doc", doc.clone());
        }
        Op::Delete { id } => {
            entry.insert("id", id.clone());
        }
    }
    let mut bytes = Vec::new();
    entry.to_writer(&mut bytes).map_err(|e| Error::Codec {
        entity: meta.name,
        direction: "encode",
        message: e.to_string(),
    })?;
    Ok(bytes)
}

/// Decodes an entry read from the stream of `database.collection`, refusing anything this
/// framework would not have written there: another namespace, a missing or empty id, a bad
/// tenant, an unknown operation.
pub(crate) fn decode(raw: Option<&[u8]>, database: &str, collection: &str) -> Result<Entry> {
    let bad = |message: String| Error::Codec {
        entity: "write-behind entry",
        direction: "decode",
        message,
    };
    let raw = raw.ok_or_else(|| bad("the stream entry has no `e` field".into()))?;
    let e = Document::from_reader(raw).map_err(|err| bad(format!("not BSON: {err}")))?;
    let text = |key: &str| {
        e.get_str(key)
            .map_err(|_| bad(format!("`{key}` missing or not a string")))
    };
    let (db, coll) = (text("db")?, text("coll")?);
    if db != database || coll != collection {
        return Err(bad(format!(
            "entry for {db}.{coll} found in the queue of {database}.{collection}"
        )));
    }
    let tenant = TenantId::new(text("tenant")?).map_err(|err| bad(err.to_string()))?;
    let id = || match e.get("id") {
        None | Some(Bson::Null) => Err(bad("`id` missing".into())),
        Some(Bson::String(s)) if s.is_empty() => Err(bad("`id` is empty".into())),
        Some(id) => Ok(id.clone()),
    };
    let document = |key: &str| {
        e.get_document(key)
            .cloned()
            .map_err(|_| bad(format!("`{key}` missing or not a document")))
    };
    let op = match text("op")? {
        "insert" => Op::Insert(document("doc")?),
        "update" => Op::Update {
            id: id()?,
            set: document("set")?,
        },
        "upsert" => Op::Upsert {
            id: id()?,
            doc: document("doc")?,
        },
        "delete" => Op::Delete { id: id()? },
        other => return Err(bad(format!("unknown operation {other:?}"))),
    };
    Ok(Entry {
        entity: text("entity")?.to_owned(),
        tenant,
        op,
    })
}
