//! Sorting documents by a MongoDB sort specification (`{field: 1, other: -1}`).

use super::compare::cmp_bson;
use super::error::{EvalError, EvalResult};
use super::path::{lookup, LeafArrays};
use mongodb::bson::{Bson, Document};
use std::cmp::Ordering;

/// Sort key of one document for one field. `EmptyArray` sorts below null and missing
/// (MongoDB docs, "Comparison/Sort Order": an empty array is less than null).
#[derive(Clone, Copy)]
enum Key<'a> {
    EmptyArray,
    Value(&'a Bson),
}

fn cmp_keys(a: Key, b: Key) -> Ordering {
    match (a, b) {
        (Key::EmptyArray, Key::EmptyArray) => Ordering::Equal,
        (Key::EmptyArray, Key::Value(Bson::MinKey)) => Ordering::Greater,
        (Key::EmptyArray, Key::Value(_)) => Ordering::Less,
        (Key::Value(_), Key::EmptyArray) => cmp_keys(b, a).reverse(),
        (Key::Value(x), Key::Value(y)) => cmp_bson(x, y),
    }
}

/// The sort key: the smallest candidate ascending, the largest descending. Arrays contribute
/// their elements (not themselves); missing values sort as null.
fn sort_key<'a>(doc: &'a Document, path: &str, descending: bool) -> Key<'a> {
    let mut keys = Vec::new();
    for candidate in lookup(doc, path, LeafArrays::Whole) {
        match candidate {
            None => keys.push(Key::Value(&Bson::Null)),
            Some(Bson::Array(items)) if items.is_empty() => keys.push(Key::EmptyArray),
            Some(Bson::Array(items)) => keys.extend(items.iter().map(Key::Value)),
            Some(value) => keys.push(Key::Value(value)),
        }
    }
    let pick = keys.into_iter().reduce(|best, k| {
        let ord = cmp_keys(k, best);
        let better = if descending {
            ord == Ordering::Greater
        } else {
            ord == Ordering::Less
        };
        if better {
            k
        } else {
            best
        }
    });
    pick.unwrap_or(Key::Value(&Bson::Null))
}

/// Parses a sort direction: 1 ascending, -1 descending (any numeric type).
fn direction(value: &Bson) -> EvalResult<bool> {
    let n = match value {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(f) => *f,
        Bson::Document(d) if d.contains_key("$meta") => {
            return Err(EvalError::Unsupported("$meta sort is not supported".into()))
        }
        _ => f64::NAN,
    };
    if n == 1.0 {
        Ok(false)
    } else if n == -1.0 {
        Ok(true)
    } else {
        Err(EvalError::BadValue(
            "$sort key ordering must be 1 (for ascending) or -1 (for descending)".into(),
        ))
    }
}

/// Checks a sort specification: every value must be 1 or -1.
pub fn validate_sort(sort: &Document) -> EvalResult<()> {
    sort.values().try_for_each(|v| direction(v).map(|_| ()))
}

/// Compares two documents by a sort specification, field by field; invalid directions are
/// treated as ascending (call [`validate_sort`] first to reject them).
pub fn cmp_by(a: &Document, b: &Document, sort: &Document) -> Ordering {
    for (path, dir) in sort {
        let descending = direction(dir).unwrap_or(false);
        let ord = cmp_keys(sort_key(a, path, descending), sort_key(b, path, descending));
        let ord = if descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// Stably sorts documents by a sort specification (MongoDB `sort()` semantics: missing
/// fields as null, arrays by their smallest element ascending / largest descending).
pub fn sort_docs(docs: &mut [Document], sort: &Document) -> EvalResult<()> {
    validate_sort(sort)?;
    docs.sort_by(|a, b| cmp_by(a, b, sort));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn ids(docs: &[Document]) -> Vec<i32> {
        docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
    }

    #[test]
    fn ascending_descending_and_secondary_keys() {
        let mut docs = vec![
            doc! {"_id": 1, "a": 2, "b": 1},
            doc! {"_id": 2, "a": 1, "b": 5},
            doc! {"_id": 3, "a": 2, "b": 3},
        ];
        sort_docs(&mut docs, &doc! {"a": 1, "b": -1}).unwrap();
        assert_eq!(ids(&docs), vec![2, 3, 1]);
        sort_docs(&mut docs, &doc! {"a": -1_i64}).unwrap();
        assert_eq!(ids(&docs), vec![3, 1, 2]);
    }

    #[test]
    fn sort_is_stable_and_empty_spec_keeps_order() {
        let mut docs = vec![
            doc! {"_id": 1, "a": 1},
            doc! {"_id": 2, "a": 0},
            doc! {"_id": 3, "a": 1},
        ];
        sort_docs(&mut docs, &doc! {}).unwrap();
        assert_eq!(ids(&docs), vec![1, 2, 3]);
        sort_docs(&mut docs, &doc! {"a": -1}).unwrap();
        assert_eq!(ids(&docs), vec![1, 3, 2]);
    }

    #[test]
    fn missing_sorts_as_null_and_types_follow_bson_order() {
        let mut docs = vec![
            doc! {"_id": 1, "a": "s"},
            doc! {"_id": 2},
            doc! {"_id": 3, "a": 10},
            doc! {"_id": 4, "a": Bson::Null},
            doc! {"_id": 5, "a": 2.5},
        ];
        sort_docs(&mut docs, &doc! {"a": 1}).unwrap();
        assert_eq!(ids(&docs), vec![2, 4, 5, 3, 1]);
    }

    #[test]
    fn arrays_sort_by_min_ascending_and_max_descending() {
        // Example from MongoDB's DOCS-2760: [] < missing < [0, 1] < 1 = [1] ascending.
        let docs = vec![
            doc! {"_id": 1},
            doc! {"_id": 2, "a": 1},
            doc! {"_id": 3, "a": []},
            doc! {"_id": 4, "a": [1]},
            doc! {"_id": 5, "a": [0, 1]},
        ];
        let mut asc = docs.clone();
        sort_docs(&mut asc, &doc! {"a": 1}).unwrap();
        assert_eq!(ids(&asc), vec![3, 1, 5, 2, 4]);
        let mut desc = docs;
        sort_docs(&mut desc, &doc! {"a": -1}).unwrap();
        assert_eq!(ids(&desc), vec![2, 4, 5, 1, 3]);
    }

    #[test]
    fn dotted_sort_paths_through_arrays() {
        let mut docs = vec![
            doc! {"_id": 1, "a": [{"b": 5}, {"b": 9}]},
            doc! {"_id": 2, "a": {"b": 7}},
        ];
        sort_docs(&mut docs, &doc! {"a.b": 1}).unwrap();
        assert_eq!(ids(&docs), vec![1, 2]);
        sort_docs(&mut docs, &doc! {"a.b": -1}).unwrap();
        assert_eq!(ids(&docs), vec![1, 2]);
        assert_eq!(
            cmp_by(
                &doc! {"a": {"b": 8}},
                &doc! {"a": [{"b": 5}, {"b": 9}]},
                &doc! {"a.b": -1}
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn invalid_directions_are_rejected() {
        let mut docs = vec![doc! {"a": 1}];
        assert!(matches!(
            sort_docs(&mut docs, &doc! {"a": 2}),
            Err(EvalError::BadValue(_))
        ));
        assert!(matches!(
            sort_docs(&mut docs, &doc! {"a": "asc"}),
            Err(EvalError::BadValue(_))
        ));
        let meta = doc! {"a": {"$meta": "textScore"}};
        assert!(matches!(
            sort_docs(&mut docs, &meta),
            Err(EvalError::Unsupported(_))
        ));
        assert!(sort_docs(&mut docs, &doc! {"a": -1.0}).is_ok());
    }

    #[test]
    fn cmp_by_uses_bson_type_order_inside_arrays() {
        let spec = doc! {"a": 1};
        // Ascending uses the smallest element: a number is below any string.
        let mixed = doc! {"a": ["z", 100]};
        assert_eq!(cmp_by(&mixed, &doc! {"a": 50}, &spec), Ordering::Greater);
        assert_eq!(cmp_by(&mixed, &doc! {"a": "a"}, &spec), Ordering::Less);
        // Descending uses the largest element: the string.
        let desc = doc! {"a": -1};
        assert_eq!(cmp_by(&mixed, &doc! {"a": "a"}, &desc), Ordering::Less);
        assert_eq!(
            cmp_by(&doc! {}, &doc! {"a": Bson::Null}, &spec),
            Ordering::Equal
        );
    }
}
