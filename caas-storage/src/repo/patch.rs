//! Partial updates through the generated `{Name}Patch` types.
//!
//! `#[derive(Repository)]` generates, for an entity `User`, a `UserPatch` struct with one
//! `Option` per stored field except the id, tenant and version fields (which the repository
//! manages). Only the fields that are `Some` become `$set`.

use mongodb::bson::Document;
use serde::Serialize;

use crate::entity::Entity;
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
    entity: &'static str,
    set: Document,
}

impl PatchWriter {
    pub(crate) fn new(entity: &'static str) -> Self {
        PatchWriter {
            entity,
            set: Document::new(),
        }
    }

    /// Sets `field` to `value` when it is `Some`.
    pub fn set<T: Serialize>(&mut self, field: &'static str, value: &Option<T>) -> Result<()> {
        if let Some(v) = value {
            let b = mongodb::bson::to_bson(v).map_err(|e| Error::Codec {
                entity: self.entity,
                direction: "encode",
                message: format!("patch field `{field}`: {e}"),
            })?;
            self.set.insert(field, b);
        }
        Ok(())
    }

    pub(crate) fn into_document(self) -> Document {
        self.set
    }
}

/// Renders a patch's `$set` document (for tests and logging).
pub fn patch_document<P: Patch>(patch: &P) -> Result<Document> {
    let mut w = PatchWriter::new(P::Entity::META.name);
    patch.write(&mut w)?;
    Ok(w.into_document())
}
