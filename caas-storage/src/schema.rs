//! Schema versions of stored documents: the version a document carries, running it through its
//! entity's chain of steps, and decoding it into the entity afterwards.
//!
//! Every write stamps `_schema_version` with the version of the code that encoded the document
//! (the entity's `schema_version`; a queued write keeps the stamp of the process that queued
//! it). A document without a stamp (written before versions existed, or by hand) is at
//! version 1. Reads, wherever the document comes from (MongoDB or a Redis cache entry; the
//! in-process tier holds values decoded this way), run an older document through the steps
//! `#[migrate(...)]` declares before deserializing it, and refuse a document stamped with a
//! version newer than the entity's ([`Error::FutureSchemaVersion`]) instead of decoding it as
//! the older shape.
//!
//! Steps see the document's own fields: `_id` and the framework's fields (`_outbox_op`,
//! `_incarnation`, `_deleted_at`) are set aside while they run and put back after, so a step
//! cannot lose them. This module lives below `cache/`, `repo/` and `migrations/`, which all
//! decode stored documents; writing upgraded documents back is the executor's
//! (`repo/upgrade.rs`).

use mongodb::bson::{Bson, Document, RawBsonRef, RawDocument};

use crate::document::{self, RESERVED_FIELDS, SCHEMA_VERSION_FIELD};
use crate::entity::{Entity, EntityMeta};
use crate::error::{Error, Result};

/// The version of a document that carries no `_schema_version`.
pub(crate) const UNSTAMPED: u32 = 1;

/// The stamp of `doc`, if it has one (a positive integer).
pub(crate) fn stamp_of(doc: &Document) -> Option<u32> {
    match doc.get(SCHEMA_VERSION_FIELD)? {
        Bson::Int32(v) => u32::try_from(*v).ok(),
        Bson::Int64(v) => u32::try_from(*v).ok(),
        Bson::Double(v) if v.fract() == 0.0 && *v >= 0.0 && *v <= f64::from(u32::MAX) => {
            Some(*v as u32)
        }
        _ => None,
    }
}

/// The stamp of a document as read from the wire, without parsing the rest of it.
pub(crate) fn raw_stamp_of(raw: &RawDocument) -> Option<u32> {
    match raw.get(SCHEMA_VERSION_FIELD).ok()?? {
        RawBsonRef::Int32(v) => u32::try_from(v).ok(),
        RawBsonRef::Int64(v) => u32::try_from(v).ok(),
        RawBsonRef::Double(v) if v.fract() == 0.0 && v >= 0.0 && v <= f64::from(u32::MAX) => {
            Some(v as u32)
        }
        _ => None,
    }
}

/// The version `doc` is at: its stamp, or 1.
pub(crate) fn version_of(doc: &Document) -> u32 {
    stamp_of(doc).unwrap_or(UNSTAMPED)
}

/// A stamp as stored.
pub(crate) fn stamp(version: u32) -> Bson {
    document::schema_stamp(version)
}

/// The filter condition that matches documents at exactly `version` (unstamped ones count as
/// version 1).
pub(crate) fn at_version(version: u32) -> Bson {
    if version == UNSTAMPED {
        // `$in` with null also matches documents without the field.
        Bson::Document(mongodb::bson::doc! { "$in": [stamp(version), Bson::Null] })
    } else {
        stamp(version)
    }
}

/// [`Error::FutureSchemaVersion`] for `doc` of `meta`, stored at `stored`.
pub(crate) fn future(meta: &EntityMeta, id: Option<&Bson>, stored: u32) -> Error {
    Error::FutureSchemaVersion {
        entity: meta.name,
        id: id.map_or_else(|| "(without an id)".to_owned(), document::id_for_errors),
        stored,
        supported: meta.schema_version,
    }
}

/// Runs `doc` through `meta`'s steps to version `to` (up, or down through the declared down
/// steps) and stamps it. Returns the version it was at, or `None` when it was at `to` already.
/// A document newer than `meta` declares is [`Error::FutureSchemaVersion`].
pub(crate) fn convert(meta: &EntityMeta, doc: &mut Document, to: u32) -> Result<Option<u32>> {
    let from = version_of(doc);
    if from == to {
        return Ok(None);
    }
    let id = doc.get(meta.id_field).cloned();
    if from > meta.schema_version {
        return Err(future(meta, id.as_ref(), from));
    }
    if to > meta.schema_version || to == 0 {
        return Err(Error::Migration {
            step: format!("{} schema", meta.name),
            reason: format!(
                "cannot convert to version {to}: the entity declares versions 1 to {}",
                meta.schema_version
            ),
        });
    }
    // The framework's fields stay out of the steps' reach.
    let mut kept = Vec::new();
    for field in std::iter::once("_id").chain(RESERVED_FIELDS) {
        if let Some(v) = doc.remove(field) {
            kept.push((field, v));
        }
    }
    let ran = if from < to {
        (from..to).try_for_each(|v| run(meta, doc, id.as_ref(), v, true))
    } else {
        (to..from)
            .rev()
            .try_for_each(|v| run(meta, doc, id.as_ref(), v, false))
    };
    for (field, v) in kept {
        doc.insert(field, v);
    }
    ran?;
    doc.insert(SCHEMA_VERSION_FIELD, stamp(to));
    Ok(Some(from))
}

/// Runs the step from `v` to `v + 1` (`up`) or back.
fn run(meta: &EntityMeta, doc: &mut Document, id: Option<&Bson>, v: u32, up: bool) -> Result<()> {
    let id_text = || id.map_or_else(|| "(without an id)".to_owned(), document::id_for_errors);
    let step = meta.schema_step(v).ok_or_else(|| Error::Migration {
        step: format!("{} schema", meta.name),
        reason: format!("the chain has no step from version {v} to {}", v + 1),
    })?;
    let (f, from, to) = if up {
        (Some(step.up), v, v + 1)
    } else {
        (step.down, v + 1, v)
    };
    let Some(f) = f else {
        return Err(Error::Migration {
            step: step.name.to_owned(),
            reason: format!(
                "{} {}: the step {} -> {} declares no `down`, so documents cannot be rolled back \
                 past it",
                meta.name,
                id_text(),
                v,
                v + 1
            ),
        });
    };
    f(doc).map_err(|e| Error::SchemaStep {
        entity: meta.name,
        id: id_text(),
        from,
        to,
        step: step.name,
        message: e.to_string(),
    })
}

/// An entity read from a stored document, and the version the document was at when it was
/// older than the entity's.
pub(crate) struct Read<E> {
    /// The entity.
    pub entity: E,
    /// The version the stored document was at, when it was upgraded on the way.
    pub upgraded_from: Option<u32>,
}

/// Decodes a document as read from MongoDB (with the projection
/// [`document::projection`] gives for `with_secrets`), upgrading it first when it is older.
/// A current document is deserialized straight from its bytes, as the driver would.
pub(crate) fn decode_raw<E: Entity>(raw: &RawDocument, with_secrets: bool) -> Result<Read<E>> {
    let meta = E::META;
    let version = raw_stamp_of(raw).unwrap_or(UNSTAMPED);
    if version == meta.schema_version {
        let entity = mongodb::bson::from_slice(raw.as_bytes()).map_err(|e| codec(meta, e))?;
        return Ok(Read {
            entity,
            upgraded_from: None,
        });
    }
    if version > meta.schema_version {
        let id = raw
            .get(meta.id_field)
            .ok()
            .flatten()
            .and_then(|b| Bson::try_from(b).ok());
        return Err(future(meta, id.as_ref(), version));
    }
    let doc = Document::try_from(raw).map_err(|e| codec(meta, e))?;
    decode_doc(doc, with_secrets)
}

/// Decodes a stored document, upgrading it first when it is older; `_id`, the framework's
/// fields and (unless `with_secrets`) the secret fields are left out.
pub(crate) fn decode_doc<E: Entity>(mut doc: Document, with_secrets: bool) -> Result<Read<E>> {
    let meta = E::META;
    let upgraded_from = convert(meta, &mut doc, meta.schema_version)?;
    document::strip(meta, &mut doc, with_secrets);
    let entity = mongodb::bson::from_document(doc).map_err(|e| codec(meta, e))?;
    Ok(Read {
        entity,
        upgraded_from,
    })
}

fn codec(meta: &EntityMeta, e: impl std::fmt::Display) -> Error {
    Error::Codec {
        entity: meta.name,
        direction: "decode",
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::Consistency;
    use crate::entity::{SchemaStep, StepResult};
    use mongodb::bson::doc;

    fn rename(doc: &mut Document) -> StepResult {
        let name = doc.remove("name").ok_or("no name")?;
        doc.insert("full_name", name);
        Ok(())
    }
    fn unrename(doc: &mut Document) -> StepResult {
        let name = doc.remove("full_name").ok_or("no full_name")?;
        doc.insert("name", name);
        Ok(())
    }
    fn add_tags(doc: &mut Document) -> StepResult {
        doc.insert("tags", Vec::<Bson>::new());
        // A step that tries to touch framework fields does not see them.
        assert!(!doc.contains_key("_id") && !doc.contains_key("_outbox_op"));
        doc.insert("_id", "overwritten?");
        Ok(())
    }

    static STEPS: [SchemaStep; 2] = [
        SchemaStep {
            from: 1,
            up: rename,
            down: Some(unrename),
            name: "rename",
            checksum: "1",
        },
        SchemaStep {
            from: 2,
            up: add_tags,
            down: None,
            name: "add_tags",
            checksum: "2",
        },
    ];

    static META: EntityMeta = EntityMeta {
        name: "Person",
        database: "db",
        collection: "people",
        id_field: "person_id",
        tenant_field: "tenant_id",
        version_field: None,
        created_at_field: None,
        updated_at_field: None,
        fields: &["person_id", "tenant_id", "full_name", "tags"],
        secret_fields: &[],
        indexes: &[],
        schema_version: 3,
        schema_steps: &STEPS,
        consistency: Consistency::Strong,
        soft_delete: false,
        append_only: false,
        cache: None,
        outbox: None,
    };

    #[test]
    fn old_documents_go_up_the_chain_and_keep_framework_fields() {
        let mut d = doc! { "_id": 7, "person_id": "p1", "name": "Ada", "_outbox_op": "op" };
        assert_eq!(convert(&META, &mut d, 3).unwrap(), Some(1));
        assert_eq!(d.get_str("full_name").unwrap(), "Ada");
        assert_eq!(d.get_array("tags").unwrap().len(), 0);
        assert_eq!(d.get_i32("_id").unwrap(), 7);
        assert_eq!(d.get_str("_outbox_op").unwrap(), "op");
        assert_eq!(version_of(&d), 3);
        assert_eq!(convert(&META, &mut d, 3).unwrap(), None);
    }

    #[test]
    fn future_documents_and_failing_steps_name_entity_id_and_versions() {
        let mut d = doc! { "person_id": "p1", "_schema_version": 4_i64 };
        let e = convert(&META, &mut d, 3).unwrap_err();
        assert_eq!(
            e.to_string().split(':').next().unwrap(),
            "Person \"p1\"",
            "{e}"
        );
        assert!(
            matches!(
                e,
                Error::FutureSchemaVersion {
                    stored: 4,
                    supported: 3,
                    ..
                }
            ),
            "{e}"
        );
        let mut d = doc! { "person_id": "p2" };
        let e = convert(&META, &mut d, 3).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::SchemaStep {
                    from: 1,
                    to: 2,
                    step: "rename",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("no name"), "{e}");
    }

    #[test]
    fn down_steps_roll_back_and_a_missing_one_is_an_error() {
        let mut d = doc! { "person_id": "p1", "full_name": "Ada", "_schema_version": 2_i32 };
        assert_eq!(convert(&META, &mut d, 1).unwrap(), Some(2));
        assert_eq!(d.get_str("name").unwrap(), "Ada");
        assert_eq!(version_of(&d), 1);
        let mut d =
            doc! { "person_id": "p1", "full_name": "Ada", "tags": [], "_schema_version": 3 };
        let e = convert(&META, &mut d, 1).unwrap_err();
        assert!(e.to_string().contains("no `down`"), "{e}");
    }
}
