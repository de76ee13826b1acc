//! Static index descriptions, built by the derive.

use std::time::Duration;

use mongodb::bson::{Bson, Document};

/// Ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortDirection {
    /// Ascending (`1`).
    Asc,
    /// Descending (`-1`).
    Desc,
}

impl SortDirection {
    /// `1` or `-1`, as MongoDB writes index keys and sorts.
    pub fn as_i32(self) -> i32 {
        match self {
            SortDirection::Asc => 1,
            SortDirection::Desc => -1,
        }
    }
}

/// One key of an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexKey {
    /// Stored field name.
    pub field: &'static str,
    /// Direction.
    pub direction: SortDirection,
    /// The field holds a list (stored as an array): the index is multikey, one entry per
    /// element. The derive sets it from the field's type.
    pub list: bool,
}

impl IndexKey {
    /// An ascending key.
    pub const fn asc(field: &'static str) -> Self {
        IndexKey {
            field,
            direction: SortDirection::Asc,
            list: false,
        }
    }

    /// A descending key.
    pub const fn desc(field: &'static str) -> Self {
        IndexKey {
            field,
            direction: SortDirection::Desc,
            list: false,
        }
    }

    /// This key, marked as holding a list (its `list` field).
    pub const fn list(self) -> Self {
        IndexKey { list: true, ..self }
    }
}

/// An index as declared on an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexSpec {
    /// Index name; by default MongoDB's own naming (`tenant_id_1_email_1`).
    pub name: &'static str,
    /// Keys in order, the tenant key first where it applies.
    pub keys: &'static [IndexKey],
    /// Unique index.
    pub unique: bool,
    /// Documents expire this long after the date in the (single) key field.
    pub ttl: Option<Duration>,
}

impl IndexSpec {
    /// The key document, e.g. `{ tenant_id: 1, email: 1 }`.
    pub fn key_document(&self) -> Document {
        self.keys
            .iter()
            .map(|k| (k.field.to_owned(), Bson::Int32(k.direction.as_i32())))
            .collect()
    }

    /// MongoDB's default name for these keys.
    pub fn default_name(keys: &[IndexKey]) -> String {
        keys.iter()
            .map(|k| format!("{}_{}", k.field, k.direction.as_i32()))
            .collect::<Vec<_>>()
            .join("_")
    }
}
