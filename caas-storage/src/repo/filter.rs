//! Typed field paths, filters and sorts.
//!
//! The derive generates `User::fields()`, whose methods return [`Field<User, T>`] for each stored
//! field (all but the tenant field, which the repository sets itself). Conditions and sort keys
//! are built from those, so user code never spells a field name in a string and a value of the
//! wrong type does not compile.

use std::fmt;
use std::marker::PhantomData;

use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;

use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::index::SortDirection;

/// A stored field of entity `E` holding values of type `T`.
pub struct Field<E, T> {
    name: &'static str,
    _marker: PhantomData<fn() -> (E, T)>,
}

impl<E, T> Clone for Field<E, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E, T> Copy for Field<E, T> {}

impl<E, T> fmt::Debug for Field<E, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Field({})", self.name)
    }
}

impl<E: Entity, T: Serialize> Field<E, T> {
    /// A field path; called by generated code.
    #[doc(hidden)]
    pub const fn new(name: &'static str) -> Self {
        Field {
            name,
            _marker: PhantomData,
        }
    }

    /// The stored field name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn op(self, op: &'static str, value: impl Into<T>) -> Filter<E> {
        let value = value.into();
        Filter::cond(self.name, to_bson::<E, T>(&value).map(|v| wrap(op, v)))
    }

    /// Equal to `value`.
    pub fn eq(self, value: impl Into<T>) -> Filter<E> {
        let value = value.into();
        Filter::cond(self.name, to_bson::<E, T>(&value))
    }

    /// Not equal to `value`.
    pub fn ne(self, value: impl Into<T>) -> Filter<E> {
        self.op("$ne", value)
    }

    /// Greater than `value`.
    pub fn gt(self, value: impl Into<T>) -> Filter<E> {
        self.op("$gt", value)
    }

    /// Greater than or equal to `value`.
    pub fn gte(self, value: impl Into<T>) -> Filter<E> {
        self.op("$gte", value)
    }

    /// Less than `value`.
    pub fn lt(self, value: impl Into<T>) -> Filter<E> {
        self.op("$lt", value)
    }

    /// Less than or equal to `value`.
    pub fn lte(self, value: impl Into<T>) -> Filter<E> {
        self.op("$lte", value)
    }

    /// Equal to one of `values`.
    pub fn is_in<V: Into<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<E> {
        let values: Vec<T> = values.into_iter().map(Into::into).collect();
        Filter::cond(self.name, to_bson::<E, _>(&values).map(|v| wrap("$in", v)))
    }

    /// Equal to none of `values`.
    pub fn not_in<V: Into<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<E> {
        let values: Vec<T> = values.into_iter().map(Into::into).collect();
        Filter::cond(self.name, to_bson::<E, _>(&values).map(|v| wrap("$nin", v)))
    }

    /// The field is present (`true`) or absent (`false`).
    pub fn exists(self, present: bool) -> Filter<E> {
        Filter::cond(self.name, Ok(wrap("$exists", Bson::Boolean(present))))
    }

    /// Ascending sort on this field.
    pub fn asc(self) -> Sort<E> {
        Sort::new(self.name, SortDirection::Asc)
    }

    /// Descending sort on this field.
    pub fn desc(self) -> Sort<E> {
        Sort::new(self.name, SortDirection::Desc)
    }

    /// This field, type-erased, for projections.
    pub fn path(self) -> FieldPath<E> {
        FieldPath {
            name: self.name,
            _marker: PhantomData,
        }
    }
}

/// A field of `E` of any type, for projections (`query.only([...])`).
pub struct FieldPath<E> {
    pub(crate) name: &'static str,
    _marker: PhantomData<fn() -> E>,
}

impl<E> Clone for FieldPath<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for FieldPath<E> {}

impl<E> fmt::Debug for FieldPath<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({})", self.name)
    }
}

impl<E: Entity, T: Serialize> From<Field<E, T>> for FieldPath<E> {
    fn from(f: Field<E, T>) -> Self {
        f.path()
    }
}

fn wrap(op: &str, value: Bson) -> Bson {
    Bson::Document(doc! { op: value })
}

fn to_bson<E: Entity, T: Serialize + ?Sized>(value: &T) -> Result<Bson> {
    mongodb::bson::to_bson(value).map_err(|e| Error::Codec {
        entity: E::META.name,
        direction: "encode",
        message: format!("filter value: {e}"),
    })
}

/// A condition on entities of type `E`. Combine with [`and`](Filter::and) and
/// [`or`](Filter::or). A value that fails to serialize is reported when the query runs.
pub struct Filter<E> {
    doc: Result<Document>,
    _marker: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for Filter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.doc {
            Ok(d) => write!(f, "Filter({d})"),
            Err(e) => write!(f, "Filter(error: {e})"),
        }
    }
}

impl<E: Entity> Default for Filter<E> {
    fn default() -> Self {
        Filter::all()
    }
}

impl<E: Entity> Filter<E> {
    /// Matches every entity (of the tenant).
    pub fn all() -> Self {
        Filter {
            doc: Ok(Document::new()),
            _marker: PhantomData,
        }
    }

    fn cond(field: &'static str, condition: Result<Bson>) -> Self {
        Filter {
            doc: condition.map(|c| doc! { field: c }),
            _marker: PhantomData,
        }
    }

    /// Both this and `other`.
    pub fn and(self, other: Filter<E>) -> Self {
        let doc = match (self.doc, other.doc) {
            (Ok(a), Ok(b)) => Ok(and_docs(a, b)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        Filter {
            doc,
            _marker: PhantomData,
        }
    }

    /// Either this or `other`.
    pub fn or(self, other: Filter<E>) -> Self {
        let doc = match (self.doc, other.doc) {
            (Ok(a), Ok(b)) => Ok(doc! { "$or": [a, b] }),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        Filter {
            doc,
            _marker: PhantomData,
        }
    }

    /// The filter document (without the tenant condition the repository adds).
    pub fn to_document(&self) -> Result<Document> {
        match &self.doc {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(Error::Codec {
                entity: E::META.name,
                direction: "encode",
                message: e.to_string(),
            }),
        }
    }

    pub(crate) fn into_document(self) -> Result<Document> {
        self.doc
    }

    /// A filter from a raw document, for what the typed builder cannot express. The repository
    /// still adds the tenant condition, and rejects a raw filter that names the tenant field.
    pub fn raw(doc: Document) -> Self {
        Filter {
            doc: Ok(doc),
            _marker: PhantomData,
        }
    }
}

/// Conjunction that keeps top-level equality keys flat (servers push those down) and falls back
/// to `$and` when both sides constrain the same key.
fn and_docs(mut a: Document, b: Document) -> Document {
    if a.is_empty() {
        return b;
    }
    if b.keys().any(|k| a.contains_key(k)) {
        return doc! { "$and": [a, b] };
    }
    a.extend(b);
    a
}

/// A sort key on a field of `E`.
pub struct Sort<E> {
    pub(crate) field: &'static str,
    pub(crate) direction: SortDirection,
    _marker: PhantomData<fn() -> E>,
}

impl<E> Clone for Sort<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Sort<E> {}

impl<E> fmt::Debug for Sort<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sort({} {:?})", self.field, self.direction)
    }
}

impl<E> Sort<E> {
    pub(crate) fn new(field: &'static str, direction: SortDirection) -> Self {
        Sort {
            field,
            direction,
            _marker: PhantomData,
        }
    }
}
