//! Keyset paging: [`PageRequest`] in, [`Page`] out, an opaque [`Cursor`] between them.
//!
//! A page is sorted by the query's sort keys plus the id (so the order is total), and the
//! cursor holds the sort values of the last item: the next page starts strictly after it, so
//! concurrent inserts and deletes never make a page repeat or skip an unchanged item (unlike
//! `skip`, which [`Query::skip`](crate::repo::Query::skip) still offers).

use std::fmt;

use mongodb::bson::{Bson, Document};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the next page starts; opaque, safe to hand to clients and take back: a cursor that
/// does not decode to the sort values of a page (scalars, one per sort key) is refused.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(String);

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Cursor {
    /// Parses a cursor that came back from a client.
    pub fn parse(text: &str) -> Result<Self> {
        let c = Cursor(text.to_owned());
        c.values()?;
        Ok(c)
    }

    pub(crate) fn from_values(values: Vec<Bson>) -> Self {
        let mut bytes = Vec::new();
        let doc: Document = [("v".to_owned(), Bson::Array(values))]
            .into_iter()
            .collect();
        doc.to_writer(&mut bytes)
            .expect("writing BSON to a Vec cannot fail");
        Cursor(crate::hex::encode(&bytes))
    }

    pub(crate) fn values(&self) -> Result<Vec<Bson>> {
        let bad = || Error::Codec {
            entity: "Cursor",
            direction: "decode",
            message: "not a cursor issued by caas-storage".into(),
        };
        let bytes = crate::hex::decode(&self.0).ok_or_else(bad)?;
        let doc = Document::from_reader(bytes.as_slice()).map_err(|_| bad())?;
        match doc.get("v") {
            // Sort values are scalars: a document here would be read as an operator.
            Some(Bson::Array(a)) if a.iter().all(is_sort_value) => Ok(a.clone()),
            _ => Err(bad()),
        }
    }
}

/// Whether `v` can be the value of a sort key in a cursor this crate issues.
fn is_sort_value(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Null
            | Bson::Boolean(_)
            | Bson::Int32(_)
            | Bson::Int64(_)
            | Bson::Double(_)
            | Bson::String(_)
            | Bson::DateTime(_)
            | Bson::ObjectId(_)
            | Bson::Timestamp(_)
            | Bson::Decimal128(_)
            | Bson::Binary(_)
    )
}

/// How much to fetch and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Most items on the page (at least 1).
    pub limit: u32,
    /// Start after this cursor; `None` for the first page.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        PageRequest { limit, after: None }
    }

    /// The page of `limit` items after `cursor`.
    pub fn after(limit: u32, cursor: Cursor) -> Self {
        PageRequest {
            limit,
            after: Some(cursor),
        }
    }
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<E> {
    /// The items, in order.
    pub items: Vec<E>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

impl<E> Page<E> {
    /// The request for the following page, if there is one.
    pub fn next_request(&self, limit: u32) -> Option<PageRequest> {
        self.next.clone().map(|c| PageRequest::after(limit, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor::from_values(vec![Bson::String("active".into()), Bson::Int64(7)]);
        let back = Cursor::parse(&c.to_string()).unwrap();
        assert_eq!(
            back.values().unwrap(),
            vec![Bson::String("active".into()), Bson::Int64(7)]
        );
        for bad in ["", "zz", "abc", "00"] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }
}
