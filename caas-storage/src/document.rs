//! Stored documents: entity <-> BSON, the framework's reserved field names and side
//! collections, the one rendering of ids as text, and the projections reads use.
//!
//! Everything here is shared by the executor (`repo/`), the cache and the write-behind queue,
//! which is why it lives below all of them.

use std::time::Duration;

use mongodb::bson::{Bson, Document};

use crate::entity::{Entity, EntityMeta};
use crate::error::{Error, Result};
use crate::tenant::TenantId;

/// Framework field: the schema version a document was written with.
pub const SCHEMA_VERSION_FIELD: &str = "_schema_version";
/// Framework field: when a soft-deleted document was deleted.
pub const DELETED_AT_FIELD: &str = "_deleted_at";
/// Framework field: the outbox op (id of the first event) of the write that produced the
/// document's current version, so reconciliation can tell rival writers apart.
pub const OP_FIELD: &str = "_outbox_op";

/// Framework field: the incarnation of a document of an entity with an outbox, set when the
/// document is created and kept by every write until it is deleted. A document deleted and
/// created again under the same id is a new incarnation, so its events (whose revisions start
/// again) are never taken for the old one's. Its text order is creation order.
pub const INCARNATION_FIELD: &str = "_incarnation";

/// Framework field: the queue position (see [`queue_position`]) of the last write-behind
/// entry applied to the document. A queued write applies only to a document at an earlier
/// position, so a batch applied again (its flusher died before removing it from the queue)
/// changes nothing.
pub const QUEUE_POSITION_FIELD: &str = "_queue_pos";

/// Every field name the framework writes into documents (besides `_id`).
pub const RESERVED_FIELDS: [&str; 5] = [
    SCHEMA_VERSION_FIELD,
    DELETED_AT_FIELD,
    OP_FIELD,
    INCARNATION_FIELD,
    QUEUE_POSITION_FIELD,
];

/// A Redis stream entry id (`<ms>-<seq>`) as a position whose text order is queue order
/// (both parts zero-padded); `None` for anything else.
pub(crate) fn queue_position(stream_id: &str) -> Option<String> {
    let (ms, seq) = stream_id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some(format!("{ms:020}-{seq:020}"))
}

/// `{<queue position>: missing or before pos}`: what a queued write at `pos` may change.
pub(crate) fn not_applied(pos: &str) -> Document {
    mongodb::bson::doc! { "$or": [
        { QUEUE_POSITION_FIELD: { "$exists": false } },
        { QUEUE_POSITION_FIELD: { "$lt": pos } },
    ] }
}

/// How long a claim of a crashed writer blocks its version transition (see `repo/versions.rs`
/// for the claim protocol, taken where conditional updates are not atomic). Driver calls made
/// under a claim are bounded by a third of it, and a claim whose write timed out is kept until
/// it expires, so a write still running on the server lands before anyone else can claim.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// The collection holding the version claims of an entity's documents, next to its own.
pub(crate) fn claims_collection(meta: &EntityMeta) -> String {
    format!("{}__version_claims", meta.collection)
}

/// A fresh incarnation: 16 hex digits of `now_ms` (the server's clock, as the write sees it)
/// then 16 random ones. Text order is creation order, to the millisecond, so a later
/// incarnation of an aggregate sorts after an earlier one.
pub(crate) fn new_incarnation(now_ms: i64) -> String {
    let random = uuid::Uuid::now_v7().as_u128() as u64;
    format!("{:016x}{random:016x}", u64::try_from(now_ms).unwrap_or(0))
}

/// The stored incarnation of `doc`, if it has one.
pub(crate) fn incarnation_of(doc: &Document) -> Option<String> {
    doc.get_str(INCARNATION_FIELD).ok().map(str::to_owned)
}

/// The stored document of `entity`: its serde form plus `_schema_version` (the entity's
/// `schema_version`). The entity's tenant must be `tenant`. Decoding, which upgrades documents
/// stored at older versions first, is `schema.rs`'s.
pub(crate) fn encode<E: Entity>(tenant: &TenantId, entity: &E) -> Result<Document> {
    if entity.tenant() != tenant.as_str() {
        return Err(Error::TenantMismatch {
            entity: E::META.name,
            expected: tenant.as_str().to_owned(),
            found: entity.tenant().to_owned(),
        });
    }
    let mut doc = mongodb::bson::to_document(entity).map_err(|e| Error::Codec {
        entity: E::META.name,
        direction: "encode",
        message: e.to_string(),
    })?;
    doc.insert(SCHEMA_VERSION_FIELD, schema_stamp(E::META.schema_version));
    Ok(doc)
}

/// A schema version as `_schema_version` stores it (`schema.rs` reads it back).
pub(crate) fn schema_stamp(version: u32) -> Bson {
    Bson::Int64(i64::from(version))
}

/// Removes `_id`, the framework fields and (unless `with_secrets`) the secret fields.
pub(crate) fn strip(meta: &EntityMeta, doc: &mut Document, with_secrets: bool) {
    doc.remove("_id");
    for field in RESERVED_FIELDS {
        doc.remove(field);
    }
    if !with_secrets {
        for field in meta.secret_fields {
            doc.remove(*field);
        }
    }
}

/// What reads leave out: the secret fields, unless asked for. `None` when there is nothing to
/// leave out (the framework fields are ignored when decoding, so they need no projection, and
/// a read without one is the cheapest).
pub(crate) fn projection(meta: &EntityMeta, with_secrets: bool) -> Option<Document> {
    if with_secrets || meta.secret_fields.is_empty() {
        return None;
    }
    Some(
        meta.secret_fields
            .iter()
            .map(|f| ((*f).to_owned(), Bson::Int32(0)))
            .collect(),
    )
}

/// An id as stored.
pub(crate) fn id_to_bson<E: Entity>(id: &E::Id) -> Result<Bson> {
    mongodb::bson::to_bson(id).map_err(|e| Error::Codec {
        entity: E::META.name,
        direction: "encode",
        message: format!("id: {e}"),
    })
}

/// An id as text, the one rendering used in cache keys, event aggregate ids and the
/// write-behind queue: strings as they are, other ids as relaxed extended JSON.
pub(crate) fn id_as_text(id: &Bson) -> String {
    match id {
        Bson::String(s) => s.clone(),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// The `_id` of an entity's document: `<tenant>:<id as text>` ([`id_as_text`]). Tenant ids
/// hold no `:` and an entity has one id type, so the key is collision-free within a
/// collection. Every by-id operation filters on it: a scalar `_id` is the one filter every
/// server answers from its primary key (FerretDB pushes down nothing else), and the tenant in
/// the key keeps the scope.
pub(crate) fn storage_key(tenant: &str, id: &Bson) -> String {
    format!("{tenant}:{}", id_as_text(id))
}

/// An id as errors show it: relaxed extended JSON (strings quoted).
pub(crate) fn id_for_errors(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

/// A stored integer field (a version) as `u64`: missing or negative is 0.
pub(crate) fn stored_u64(doc: &Document, field: &str) -> u64 {
    match doc.get(field) {
        Some(Bson::Int32(i)) => u64::try_from(*i).unwrap_or(0),
        Some(Bson::Int64(i)) => u64::try_from(*i).unwrap_or(0),
        Some(Bson::Double(f)) if *f > 0.0 => *f as u64,
        _ => 0,
    }
}

/// A version as stored: BSON int64 (serde writes every integer type that fits that way or as
/// int32; MongoDB compares numbers across both).
pub(crate) fn version_bson(v: u64) -> Bson {
    Bson::Int64(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Whether `field` appears as a key anywhere in `filter` (also inside `$or`, `$and`, ...).
pub(crate) fn mentions_field(filter: &Document, field: &str) -> bool {
    fn walk(b: &Bson, field: &str) -> bool {
        match b {
            Bson::Document(d) => mentions_field(d, field),
            Bson::Array(a) => a.iter().any(|b| walk(b, field)),
            _ => false,
        }
    }
    filter
        .iter()
        .any(|(k, v)| k == field || k.split('.').next() == Some(field) || walk(v, field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn finds_the_tenant_field_wherever_it_hides() {
        assert!(mentions_field(&doc! { "tenant_id": "x" }, "tenant_id"));
        assert!(mentions_field(
            &doc! { "$or": [ { "a": 1 }, { "tenant_id": { "$ne": "x" } } ] },
            "tenant_id"
        ));
        assert!(mentions_field(&doc! { "tenant_id.x": 1 }, "tenant_id"));
        assert!(!mentions_field(
            &doc! { "tenant": 1, "x_tenant_id": 2 },
            "tenant_id"
        ));
    }

    #[test]
    fn ids_render_once_for_keys_and_twice_quoted_for_errors() {
        assert_eq!(id_as_text(&Bson::String("u:1".into())), "u:1");
        assert_eq!(id_as_text(&Bson::Int64(7)), "7");
        assert_eq!(storage_key("acme", &Bson::String("u:1".into())), "acme:u:1");
        assert_eq!(storage_key("acme", &Bson::Int64(7)), "acme:7");
        let (a, b) = (
            queue_position("9-1").unwrap(),
            queue_position("10-0").unwrap(),
        );
        assert!(a < b, "{a} sorts before {b}");
        assert_eq!(queue_position("x-1"), None);
        assert_eq!(id_for_errors(&Bson::String("u1".into())), "\"u1\"");
        assert_eq!(stored_u64(&doc! { "v": 3_i32 }, "v"), 3);
        assert_eq!(stored_u64(&doc! { "v": -3_i64 }, "v"), 0);
        assert_eq!(stored_u64(&doc! {}, "v"), 0);
    }
}
