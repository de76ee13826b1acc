//! Entity <-> stored document, and the projections reads use.

use mongodb::bson::{Bson, Document};

use crate::entity::{Entity, EntityMeta};
use crate::error::{Error, Result};
use crate::repo::{DELETED_AT_FIELD, SCHEMA_VERSION_FIELD};
use crate::tenant::TenantId;

/// The stored document of `entity`: its serde form plus `_schema_version`. The entity's tenant
/// must be `tenant`.
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
    doc.insert(SCHEMA_VERSION_FIELD, i64::from(E::META.schema_version));
    Ok(doc)
}

/// Decodes a stored document (framework fields are ignored).
pub(crate) fn decode<E: Entity>(doc: Document) -> Result<E> {
    mongodb::bson::from_document(doc).map_err(|e| Error::Codec {
        entity: E::META.name,
        direction: "decode",
        message: e.to_string(),
    })
}

/// Decodes a document read without a projection, leaving out what a projection would have:
/// secret fields (unless `with_secrets`) and framework fields.
pub(crate) fn decode_projected<E: Entity>(mut doc: Document, with_secrets: bool) -> Result<E> {
    for field in stripped(E::META, with_secrets) {
        doc.remove(field);
    }
    decode(doc)
}

/// What reads leave out: the secret fields, unless asked for. `None` when there is nothing to
/// leave out (the framework fields `_id`, `_schema_version` and `_deleted_at` are ignored when
/// decoding, so they need no projection, and a read without one is the cheapest).
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

/// The fields [`decode_projected`] strips from a document read without a projection.
fn stripped(meta: &EntityMeta, with_secrets: bool) -> impl Iterator<Item = &'static str> + '_ {
    ["_id", SCHEMA_VERSION_FIELD, DELETED_AT_FIELD]
        .into_iter()
        .chain(
            meta.secret_fields
                .iter()
                .copied()
                .filter(move |_| !with_secrets),
        )
}

pub(crate) fn id_to_bson<E: Entity>(id: &E::Id) -> Result<Bson> {
    mongodb::bson::to_bson(id).map_err(|e| Error::Codec {
        entity: E::META.name,
        direction: "encode",
        message: format!("id: {e}"),
    })
}

/// An id as text, the one rendering used in cache keys, event aggregate ids and the
/// write-behind flusher: strings as they are, other ids as relaxed extended JSON.
pub(crate) fn id_as_text(id: &Bson) -> String {
    match id {
        Bson::String(s) => s.clone(),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

pub(crate) fn id_text<E: Entity>(id: &E::Id) -> String {
    match mongodb::bson::to_bson(id) {
        Ok(b) => b.into_relaxed_extjson().to_string(),
        Err(_) => format!("{id:?}"),
    }
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
}
