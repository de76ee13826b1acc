//! Find projections: inclusion (`{a: 1}`) or exclusion (`{a: 0}`) of (dotted) fields.

use super::error::{EvalError, EvalResult};
use mongodb::bson::{Bson, Document};

/// Projected fields as a tree of path components; `None` marks a projected leaf.
#[derive(Default)]
struct Tree {
    children: Vec<(String, Option<Tree>)>,
}

impl Tree {
    fn get(&self, key: &str) -> Option<&Option<Tree>> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn insert(&mut self, path: &str) -> EvalResult<()> {
        let collision = || EvalError::BadValue(format!("Path collision at {path}"));
        let (head, rest) = super::path::split_head(path);
        let index = self.children.iter().position(|(k, _)| k == head);
        match (index, rest) {
            (None, None) => self.children.push((head.to_string(), None)),
            (None, Some(rest)) => {
                let mut sub = Tree::default();
                sub.insert(rest)?;
                self.children.push((head.to_string(), Some(sub)));
            }
            (Some(i), Some(rest)) => match &mut self.children[i].1 {
                Some(sub) => sub.insert(rest)?,
                None => return Err(collision()),
            },
            (Some(_), None) => return Err(collision()),
        }
        Ok(())
    }
}

/// Reads a projection value: `Some(true)` include, `Some(false)` exclude.
fn flag(field: &str, value: &Bson) -> EvalResult<bool> {
    match value {
        Bson::Boolean(b) => Ok(*b),
        Bson::Int32(i) => Ok(*i != 0),
        Bson::Int64(i) => Ok(*i != 0),
        Bson::Double(f) => Ok(*f != 0.0),
        Bson::Decimal128(d) => Ok(!matches!(d.to_string().as_str(), "0" | "-0")),
        Bson::Document(d) => Err(EvalError::Unsupported(format!(
            "projection operator {} on field '{field}' is not supported",
            d.keys().next().map(String::as_str).unwrap_or("{}")
        ))),
        _ => Err(EvalError::Unsupported(format!(
            "projection expressions are not supported (field '{field}')"
        ))),
    }
}

fn check_path(path: &str) -> EvalResult<()> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(EvalError::BadValue(format!(
            "FieldPath '{path}' is not valid"
        )));
    }
    if path.split('.').any(|c| c.starts_with('$')) {
        return Err(EvalError::Unsupported(format!(
            "positional and $-prefixed projection paths are not supported: '{path}'"
        )));
    }
    Ok(())
}

/// Applies a find projection. Inclusion keeps `_id` plus the listed paths, exclusion drops
/// the listed paths; `_id` is kept unless excluded explicitly and is the only field that may
/// be excluded in an inclusion projection. Through arrays, the projection applies to each
/// element (inclusion drops scalar elements). Result fields keep the document's order.
pub fn project(doc: &Document, projection: &Document) -> EvalResult<Document> {
    let mut inclusion: Option<bool> = None;
    let mut id_flag: Option<bool> = None;
    let mut tree = Tree::default();
    for (path, value) in projection {
        check_path(path)?;
        let include = flag(path, value)?;
        if path == "_id" {
            id_flag = Some(include);
            continue;
        }
        match inclusion {
            Some(mode) if mode != include => {
                return Err(EvalError::BadValue(if mode {
                    format!("Cannot do exclusion on field {path} in inclusion projection")
                } else {
                    format!("Cannot do inclusion on field {path} in exclusion projection")
                }))
            }
            _ => inclusion = Some(include),
        }
        tree.insert(path)?;
    }
    // A projection naming only `_id` follows that flag's mode.
    let inclusion = inclusion.or(id_flag).unwrap_or(false);
    if inclusion {
        if id_flag != Some(false) {
            tree.children.insert(0, ("_id".to_string(), None));
        }
        Ok(include_doc(doc, &tree))
    } else {
        if id_flag == Some(false) {
            tree.children.push(("_id".to_string(), None));
        }
        Ok(exclude_doc(doc, &tree))
    }
}

fn include_doc(doc: &Document, tree: &Tree) -> Document {
    let mut out = Document::new();
    for (key, value) in doc {
        match tree.get(key) {
            None => {}
            Some(None) => {
                out.insert(key.clone(), value.clone());
            }
            Some(Some(sub)) => {
                if let Some(projected) = include_value(value, sub) {
                    out.insert(key.clone(), projected);
                }
            }
        }
    }
    out
}

/// Inclusion of sub-paths inside a value: documents are projected (possibly to `{}`),
/// arrays element-wise, and scalars disappear.
fn include_value(value: &Bson, tree: &Tree) -> Option<Bson> {
    match value {
        Bson::Document(d) => Some(Bson::Document(include_doc(d, tree))),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|item| include_value(item, tree))
                .collect(),
        )),
        _ => None,
    }
}

fn exclude_doc(doc: &Document, tree: &Tree) -> Document {
    let mut out = Document::new();
    for (key, value) in doc {
        match tree.get(key) {
            None => {
                out.insert(key.clone(), value.clone());
            }
            Some(None) => {}
            Some(Some(sub)) => {
                out.insert(key.clone(), exclude_value(value, sub));
            }
        }
    }
    out
}

fn exclude_value(value: &Bson, tree: &Tree) -> Bson {
    match value {
        Bson::Document(d) => Bson::Document(exclude_doc(d, tree)),
        Bson::Array(items) => Bson::Array(items.iter().map(|i| exclude_value(i, tree)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn p(doc: Document, projection: Document) -> Document {
        project(&doc, &projection).unwrap()
    }

    #[test]
    fn inclusion_keeps_id_and_document_order() {
        let d = doc! {"_id": 1, "a": 1, "b": 2, "c": 3};
        let out = p(d.clone(), doc! {"c": 1, "a": true});
        assert_eq!(out, doc! {"_id": 1, "a": 1, "c": 3});
        assert_eq!(out.keys().collect::<Vec<_>>(), vec!["_id", "a", "c"]);
        assert_eq!(p(d.clone(), doc! {"a": 1, "_id": 0}), doc! {"a": 1});
        assert_eq!(p(d, doc! {"_id": 1}), doc! {"_id": 1});
    }

    #[test]
    fn exclusion_removes_fields() {
        let d = doc! {"_id": 1, "a": 1, "b": 2};
        assert_eq!(p(d.clone(), doc! {"a": 0}), doc! {"_id": 1, "b": 2});
        assert_eq!(p(d.clone(), doc! {"_id": 0}), doc! {"a": 1, "b": 2});
        assert_eq!(p(d.clone(), doc! {"a": false, "_id": 0}), doc! {"b": 2});
        // `_id: 1` is allowed in an exclusion projection.
        assert_eq!(
            p(d.clone(), doc! {"a": 0, "_id": 1}),
            doc! {"_id": 1, "b": 2}
        );
        assert_eq!(p(d.clone(), doc! {}), d);
    }

    #[test]
    fn nested_inclusion_and_exclusion() {
        let d = doc! {"_id": 1, "a": {"b": 1, "c": 2}, "x": 5};
        assert_eq!(
            p(d.clone(), doc! {"a.b": 1}),
            doc! {"_id": 1, "a": {"b": 1}}
        );
        assert_eq!(
            p(d.clone(), doc! {"a.b": 0}),
            doc! {"_id": 1, "a": {"c": 2}, "x": 5}
        );
        // Including a sub-field of a document lacking it yields an empty document;
        // a scalar in the way is dropped.
        assert_eq!(
            p(d.clone(), doc! {"a.z": 1, "x.y": 1}),
            doc! {"_id": 1, "a": {}}
        );
        assert_eq!(
            p(d, doc! {"x.y": 0}),
            doc! {"_id": 1, "a": {"b": 1, "c": 2}, "x": 5}
        );
    }

    #[test]
    fn projection_through_arrays_applies_per_element() {
        let d = doc! {"_id": 1, "a": [{"b": 1, "c": 2}, 7, {"c": 3}, [{"b": 4}]]};
        assert_eq!(
            p(d.clone(), doc! {"a.b": 1}),
            doc! {"_id": 1, "a": [{"b": 1}, {}, [{"b": 4}]]}
        );
        assert_eq!(
            p(d, doc! {"a.b": 0}),
            doc! {"_id": 1, "a": [{"c": 2}, 7, {"c": 3}, [{}]]}
        );
    }

    #[test]
    fn mixing_and_collisions_are_errors() {
        let d = doc! {"a": 1, "b": 2};
        assert_eq!(
            project(&d, &doc! {"a": 1, "b": 0}),
            Err(EvalError::BadValue(
                "Cannot do exclusion on field b in inclusion projection".into()
            ))
        );
        assert!(matches!(
            project(&d, &doc! {"a": 0, "b": 1}),
            Err(EvalError::BadValue(_))
        ));
        assert!(matches!(
            project(&d, &doc! {"a": 1, "a.b": 1}),
            Err(EvalError::BadValue(_))
        ));
        assert!(matches!(
            project(&d, &doc! {"a..b": 1}),
            Err(EvalError::BadValue(_))
        ));
        assert!(matches!(
            project(&d, &doc! {"a": "$b"}),
            Err(EvalError::Unsupported(_))
        ));
        let slice = doc! {"a": {"$slice": 1}};
        assert!(matches!(
            project(&d, &slice),
            Err(EvalError::Unsupported(_))
        ));
        assert!(matches!(
            project(&d, &doc! {"a.$": 1}),
            Err(EvalError::Unsupported(_))
        ));
    }

    #[test]
    fn projection_accepts_numeric_and_boolean_flags() {
        let d = doc! {"_id": 1, "a": 1, "b": 2, "c": 3};
        assert_eq!(
            p(d.clone(), doc! {"a": 1.0, "b": true}),
            doc! {"_id": 1, "a": 1, "b": 2}
        );
        assert_eq!(
            p(d.clone(), doc! {"a": 0_i64, "b": false}),
            doc! {"_id": 1, "c": 3}
        );
        assert_eq!(p(d, doc! {"a": 5, "_id": false}), doc! {"a": 1});
    }
}
