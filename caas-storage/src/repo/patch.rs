//! Partial updates through the generated `{Name}Patch` types.
//!
//! `#[derive(Repository)]` generates, for an entity `User`, a `UserPatch` struct with one
//! `Option` per stored field except the id, tenant and version fields (which the repository
//! manages). Only the fields that are `Some` become `$set`.

use mongodb::bson::Document;
use serde::Serialize;

use crate::document::RESERVED_FIELDS;
use crate::entity::{Entity, EntityMeta};
use crate::error::{Error, Result};

/// A partial update of entity [`Patch::Entity`]. Implemented by the generated patch types.
pub trait Patch: Send + Sync {
    /// The entity this patch updates.
    type Entity: Entity;

    /// Writes the set fields into `w`.
    fn write(&self, w: &mut PatchWriter) -> Result<()>;
}

/// Collects the `$set` document of a [`Patch`].
#[derive(Debug)]
pub struct PatchWriter {
    meta: &'static EntityMeta,
    set: Document,
}

impl PatchWriter {
    pub(crate) fn new(meta: &'static EntityMeta) -> Self {
        PatchWriter {
            meta,
            set: Document::new(),
        }
    }

    /// Sets `field` to `value` when it is `Some`. Fields the repository manages (the id, the
    /// tenant, the version, the timestamps and the framework's `_` fields) and update
    /// operators (`$`) are refused: a patch changes the entity's own data only.
    pub fn set<T: Serialize>(&mut self, field: &'static str, value: &Option<T>) -> Result<()> {
        if let Some(why) = self.refused(field) {
            return Err(Error::Codec {
                entity: self.meta.name,
                direction: "encode",
                message: format!("patch field `{field}`: {why}"),
            });
        }
        if let Some(v) = value {
            let b = mongodb::bson::to_bson(v).map_err(|e| Error::Codec {
                entity: self.meta.name,
                direction: "encode",
                message: format!("patch field `{field}`: {e}"),
            })?;
            self.set.insert(field, b);
        }
        Ok(())
    }

    /// Why `field` may not be patched, if it may not.
    fn refused(&self, field: &str) -> Option<&'static str> {
        let m = self.meta;
        let top = field.split('.').next().unwrap_or_default();
        if field.is_empty() || field.contains('$') {
            Some("not a field name (update operators are not allowed)")
        } else if top.starts_with('_') || RESERVED_FIELDS.contains(&top) {
            Some("a framework field")
        } else if [Some(m.id_field), Some(m.tenant_field), m.version_field].contains(&Some(top)) {
            Some("the id, tenant and version are managed by the repository")
        } else if [m.created_at_field, m.updated_at_field].contains(&Some(top)) {
            Some("timestamps are managed by the repository")
        } else {
            None
        }
    }

    pub(crate) fn into_document(self) -> Document {
        self.set
    }
}

/// Renders a patch's `$set` document (for tests and logging).
pub fn patch_document<P: Patch>(patch: &P) -> Result<Document> {
    let mut w = PatchWriter::new(P::Entity::META);
    patch.write(&mut w)?;
    Ok(w.into_document())
}
