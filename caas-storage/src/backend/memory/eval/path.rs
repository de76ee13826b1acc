//! Dotted-path helpers: query-style lookup with MongoDB's array traversal, exact lookup,
//! and the set/remove primitives used by update operators.

use super::error::{EvalError, EvalResult};
use mongodb::bson::{Bson, Document};

/// Largest array index an update may create by padding an array with nulls. MongoDB bounds
/// arrays only by the 16 MiB document limit, which a padded array of nulls passes near here.
pub const MAX_PAD_INDEX: usize = 1_500_000;

/// What a query-style lookup yields for an array found at the end of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafArrays {
    /// Yield the array itself only (used by `$size`, `$elemMatch` and [`get_path`]).
    Whole,
    /// Yield each element, then the array itself (used by equality, comparisons, `$in`,
    /// `$type`, `$exists`).
    Traverse,
}

/// Parses a path component as an array index: ASCII digits in canonical form
/// (`"0"`, `"12"`, not `"01"` or `"+1"`), as MongoDB matches them against array positions.
pub fn array_index(component: &str) -> Option<usize> {
    let canonical = !component.is_empty()
        && component.bytes().all(|c| c.is_ascii_digit())
        && (component == "0" || !component.starts_with('0'));
    if canonical {
        component.parse().ok()
    } else {
        None
    }
}

/// A dotted path's first field, and the rest of the path if there is more.
pub fn split_head(path: &str) -> (&str, Option<&str>) {
    match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    }
}

/// Query-style lookup of a dotted path, mirroring MongoDB's element iterator.
///
/// Each entry is one candidate: `Some(value)` for a value found, `None` where the path is
/// missing (a field absent in a document, or a scalar in the way), which queries treat like
/// null. A non-final array fans out: each document element is searched for the rest of the
/// path, and a numeric component also selects the element at that index. Scalar elements of
/// a non-final array yield nothing (so `{"a.b": null}` does not match `{a: [1, 2]}`).
pub fn lookup<'a>(doc: &'a Document, path: &str, leaf: LeafArrays) -> Vec<Option<&'a Bson>> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    walk_doc(doc, &parts, leaf, &mut out);
    out
}

fn walk_doc<'a>(
    doc: &'a Document,
    parts: &[&str],
    leaf: LeafArrays,
    out: &mut Vec<Option<&'a Bson>>,
) {
    let mut current = doc;
    for (i, part) in parts.iter().enumerate() {
        let rest = &parts[i + 1..];
        match current.get(part) {
            None => return out.push(None),
            Some(value) if rest.is_empty() => {
                if let (LeafArrays::Traverse, Bson::Array(items)) = (leaf, value) {
                    out.extend(items.iter().map(Some));
                }
                return out.push(Some(value));
            }
            Some(Bson::Document(sub)) => current = sub,
            Some(Bson::Array(items)) => return walk_array(items, rest, leaf, out),
            Some(_) => return out.push(None),
        }
    }
}

/// Traverses an array with a non-empty remaining path.
fn walk_array<'a>(
    items: &'a [Bson],
    rest: &[&str],
    leaf: LeafArrays,
    out: &mut Vec<Option<&'a Bson>>,
) {
    let index = array_index(rest[0]);
    for (i, item) in items.iter().enumerate() {
        let at_offset = index == Some(i);
        match item {
            Bson::Document(sub) => {
                walk_doc(sub, rest, leaf, out);
                if at_offset {
                    if rest.len() == 1 {
                        out.push(Some(item));
                    } else {
                        walk_doc(sub, &rest[1..], leaf, out);
                    }
                }
            }
            _ if at_offset => {
                if rest.len() == 1 {
                    // An explicitly indexed element is yielded as is, even if it is an array.
                    out.push(Some(item));
                } else if let Bson::Array(inner) = item {
                    walk_array(inner, &rest[1..], leaf, out);
                }
            }
            _ => {}
        }
    }
}

/// The values a query path reaches, with MongoDB's array traversal (see [`lookup`]); arrays
/// at the end of the path are returned whole and missing branches are omitted.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Vec<&'a Bson> {
    lookup(doc, path, LeafArrays::Whole)
        .into_iter()
        .flatten()
        .collect()
}

/// The single value at a dotted path without array fan-out: documents are entered by field
/// name and arrays only by numeric index.
pub fn get_path_exact<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut current = doc.get(parts.next()?)?;
    for part in parts {
        current = match current {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(a) => a.get(array_index(part)?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Mutable variant of [`get_path_exact`].
pub fn get_path_exact_mut<'a>(doc: &'a mut Document, path: &str) -> Option<&'a mut Bson> {
    let mut parts = path.split('.');
    let mut current = doc.get_mut(parts.next()?)?;
    for part in parts {
        current = match current {
            Bson::Document(d) => d.get_mut(part)?,
            Bson::Array(a) => a.get_mut(array_index(part)?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn cannot_create(field: &str, parent_key: &str, parent: &Bson) -> EvalError {
    EvalError::BadValue(format!(
        "Cannot create field '{field}' in element {{{parent_key}: {parent}}}"
    ))
}

/// Sets the value at a dotted path the way `$set` does: missing intermediate fields become
/// documents, numeric components index arrays (padding with nulls past the end), an existing
/// field keeps its position. Fails when a scalar is in the way or a non-numeric component
/// meets an array.
pub fn set_path(doc: &mut Document, path: &str, value: Bson) -> EvalResult<()> {
    let parts: Vec<&str> = path.split('.').collect();
    set_in_doc(doc, &parts, value)
}

fn set_in_doc(doc: &mut Document, parts: &[&str], value: Bson) -> EvalResult<()> {
    let key = parts[0];
    if parts.len() == 1 {
        doc.insert(key, value);
        return Ok(());
    }
    if !doc.contains_key(key) {
        doc.insert(key, Document::new());
    }
    match doc.get_mut(key) {
        Some(child) => set_in_value(child, key, &parts[1..], value),
        None => Err(EvalError::BadValue(format!("Cannot create field '{key}'"))),
    }
}

fn set_in_value(target: &mut Bson, key: &str, parts: &[&str], value: Bson) -> EvalResult<()> {
    let next = parts[0];
    match target {
        Bson::Document(d) => set_in_doc(d, parts, value),
        Bson::Array(items) => {
            let Some(index) = array_index(next) else {
                return Err(cannot_create(next, key, &Bson::Array(items.clone())));
            };
            if index >= items.len() {
                if index > MAX_PAD_INDEX {
                    return Err(EvalError::BadValue(format!(
                        "Array index {index} in path component '{key}.{next}' is too large"
                    )));
                }
                items.resize(index, Bson::Null);
                if parts.len() == 1 {
                    items.push(value);
                    return Ok(());
                }
                items.push(Document::new().into());
            } else if parts.len() == 1 {
                items[index] = value;
                return Ok(());
            }
            set_in_value(&mut items[index], next, &parts[1..], value)
        }
        other => Err(cannot_create(next, key, other)),
    }
}

/// Removes the value at a dotted path the way `$unset` does and returns it: a document field
/// is removed (the others keep their order), an array element addressed by index is replaced
/// with null (arrays never shrink). Returns `None`, changing nothing, if the path is absent.
pub fn remove_path(doc: &mut Document, path: &str) -> Option<Bson> {
    let (parent, last) = match path.rsplit_once('.') {
        None => return doc.remove(path),
        Some(split) => split,
    };
    match get_path_exact_mut(doc, parent)? {
        Bson::Document(d) => d.remove(last),
        Bson::Array(items) => {
            let slot = items.get_mut(array_index(last)?)?;
            Some(std::mem::replace(slot, Bson::Null))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{bson, doc};

    fn vals(doc: &Document, path: &str, leaf: LeafArrays) -> Vec<Option<Bson>> {
        lookup(doc, path, leaf)
            .into_iter()
            .map(|v| v.cloned())
            .collect()
    }

    #[test]
    fn lookup_plain_nested_and_missing() {
        let d = doc! {"a": {"b": 1}, "c": 5};
        assert_eq!(vals(&d, "a.b", LeafArrays::Traverse), vec![Some(bson!(1))]);
        assert_eq!(vals(&d, "x", LeafArrays::Traverse), vec![None]);
        // A scalar in the way counts as missing.
        assert_eq!(vals(&d, "c.d", LeafArrays::Traverse), vec![None]);
    }

    #[test]
    fn lookup_leaf_array_traverse_yields_elements_then_array() {
        let d = doc! {"a": [1, [2]]};
        assert_eq!(
            vals(&d, "a", LeafArrays::Traverse),
            vec![Some(bson!(1)), Some(bson!([2])), Some(bson!([1, [2]]))]
        );
        assert_eq!(
            vals(&d, "a", LeafArrays::Whole),
            vec![Some(bson!([1, [2]]))]
        );
    }

    #[test]
    fn lookup_fans_out_through_arrays_of_documents() {
        let d = doc! {"a": [{"b": 1}, {"c": 2}, 3, {"b": [4, 5]}]};
        assert_eq!(
            vals(&d, "a.b", LeafArrays::Traverse),
            vec![
                Some(bson!(1)),
                None,
                Some(bson!(4)),
                Some(bson!(5)),
                Some(bson!([4, 5]))
            ]
        );
        // Scalars inside a traversed array yield nothing at all.
        assert!(vals(&doc! {"a": [1, 2]}, "a.b", LeafArrays::Traverse).is_empty());
    }

    #[test]
    fn lookup_numeric_components_index_arrays() {
        let d = doc! {"a": [[1, 2], {"b": 7}, 9]};
        // The indexed element is yielded unexpanded; the document element is also searched
        // for a field named "0" and reports it missing (as MongoDB's iterator does).
        assert_eq!(
            vals(&d, "a.0", LeafArrays::Traverse),
            vec![Some(bson!([1, 2])), None]
        );
        assert_eq!(
            vals(&d, "a.1.b", LeafArrays::Traverse),
            vec![None, Some(bson!(7))]
        );
        assert_eq!(
            vals(&d, "a.0.1", LeafArrays::Traverse),
            vec![Some(bson!(2)), None]
        );
        assert_eq!(get_path(&d, "a.2"), vec![&bson!(9)]);
        assert_eq!(array_index("01"), None);
        assert_eq!(array_index("10"), Some(10));
    }

    #[test]
    fn get_path_exact_does_not_fan_out() {
        let d = doc! {"a": [{"b": 1}, {"b": 2}]};
        assert_eq!(get_path_exact(&d, "a.b"), None);
        assert_eq!(get_path_exact(&d, "a.1.b"), Some(&bson!(2)));
        assert_eq!(get_path(&d, "a.b"), vec![&bson!(1), &bson!(2)]);
    }

    #[test]
    fn set_path_creates_documents_and_pads_arrays() {
        let mut d = doc! {"x": 1, "arr": [1]};
        set_path(&mut d, "a.b.c", bson!(1)).unwrap();
        set_path(&mut d, "arr.3", bson!("z")).unwrap();
        set_path(&mut d, "x", bson!(2)).unwrap();
        assert_eq!(
            d,
            doc! {"x": 2, "arr": [1, null, null, "z"], "a": {"b": {"c": 1}}}
        );
        assert_eq!(d.keys().next().map(String::as_str), Some("x"));
        // A missing intermediate is created as a document even for a numeric component.
        let mut e = doc! {};
        set_path(&mut e, "a.0", bson!(1)).unwrap();
        assert_eq!(e, doc! {"a": {"0": 1}});
    }

    #[test]
    fn set_path_rejects_scalar_intermediate_and_named_array_field() {
        let mut d = doc! {"a": 5, "b": [{"c": 1}]};
        let err = set_path(&mut d, "a.x", bson!(1)).unwrap_err();
        assert_eq!(
            err,
            EvalError::BadValue("Cannot create field 'x' in element {a: 5}".into())
        );
        assert!(set_path(&mut d, "b.c", bson!(1)).is_err());
        assert!(set_path(&mut d, "b.5000000", bson!(1)).is_err());
        assert_eq!(d, doc! {"a": 5, "b": [{"c": 1}]});
    }

    #[test]
    fn remove_path_removes_fields_and_nulls_array_slots() {
        let mut d = doc! {"a": {"b": 1, "c": 2}, "l": [1, 2, 3]};
        assert_eq!(remove_path(&mut d, "a.b"), Some(bson!(1)));
        assert_eq!(remove_path(&mut d, "l.1"), Some(bson!(2)));
        assert_eq!(remove_path(&mut d, "a.zz"), None);
        assert_eq!(remove_path(&mut d, "l.x"), None);
        assert_eq!(d, doc! {"a": {"c": 2}, "l": [1, null, 3]});
    }
}
