//! Query filter evaluation (`find` filters) with MongoDB's array and null semantics.
//!
//! A filter is first compiled ([`Filter::new`]), which validates every operator, then
//! matched against documents; [`matches()`] does both in one call.

use super::compare::{cmp_bson, is_nan, is_number, type_bracket, values_equal};
use super::error::{EvalError, EvalResult};
use super::path::{lookup, LeafArrays};
use mongodb::bson::{Bson, Document};
use std::cmp::Ordering;

/// A compiled query filter: parse once, match many documents.
#[derive(Debug, Clone)]
pub struct Filter {
    exprs: Vec<Expr>,
}

/// A compiled operator expression (such as `{$gte: 5}` or `{$in: [1, 2]}`) evaluated against
/// standalone values, as `$pull` does with array elements. An array value is traversed like
/// an array field in a query.
#[derive(Debug, Clone)]
pub struct ValueFilter {
    pred: Pred,
}

#[derive(Debug, Clone)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Nor(Vec<Expr>),
    Field(String, Pred),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeSel {
    Code(i32),
    Number,
}

#[derive(Debug, Clone)]
enum Pred {
    Cmp(CmpOp, Bson),
    In(Vec<Bson>),
    Not(Box<Pred>),
    AllOf(Vec<Pred>),
    Exists,
    Size(usize),
    ElemMatchDoc(Vec<Expr>),
    ElemMatchValue(Vec<Pred>),
    All(Vec<Pred>),
    Type(Vec<TypeSel>),
}

/// Whether `doc` matches the query `filter` (MongoDB `find` semantics for the supported
/// operators). Errors on malformed or unsupported filters, whatever the document.
#[cfg(test)]
pub fn matches(doc: &Document, filter: &Document) -> EvalResult<bool> {
    Ok(Filter::new(filter)?.matches(doc))
}

impl Filter {
    /// Compiles and validates a query filter.
    pub fn new(filter: &Document) -> EvalResult<Self> {
        Ok(Filter {
            exprs: parse_filter(filter)?,
        })
    }

    /// Whether `doc` matches this filter.
    pub fn matches(&self, doc: &Document) -> bool {
        self.exprs.iter().all(|e| eval_expr(doc, e))
    }
}

impl ValueFilter {
    /// Compiles an operator document whose keys all start with `$` (e.g. `{$gt: 1, $lt: 9}`).
    pub fn new(ops: &Document) -> EvalResult<Self> {
        Ok(ValueFilter {
            pred: Pred::AllOf(parse_operators(ops)?),
        })
    }

    /// Whether `value` satisfies every operator.
    pub fn matches(&self, value: &Bson) -> bool {
        eval_pred(&Source::Value(value), &self.pred)
    }
}

/// Whether a document's first key makes it an operator expression rather than a literal
/// (DBRef-style `{$ref, $id}` documents are literals).
pub fn is_operator_document(d: &Document) -> bool {
    match d.keys().next() {
        Some(k) => k.starts_with('$') && !matches!(k.as_str(), "$ref" | "$id" | "$db"),
        None => false,
    }
}

/// Whether a document is an operator expression that applies to a value (`{$gt: 1}`), as
/// opposed to a literal or a sub-filter whose first key is a top-level operator (`{$or: ..}`).
/// This decides the form of `$elemMatch` and of `$pull` conditions.
pub fn is_field_operator_document(d: &Document) -> bool {
    is_operator_document(d)
        && !matches!(
            d.keys().next().map(String::as_str),
            Some("$and" | "$or" | "$nor" | "$alwaysTrue" | "$alwaysFalse" | "$comment")
                | Some("$where" | "$expr" | "$text" | "$jsonSchema")
        )
}

/// MongoDB truthiness as used by `$exists`: false, 0, null and undefined are false.
fn truthy(b: &Bson) -> bool {
    match b {
        Bson::Boolean(v) => *v,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(f) => *f != 0.0,
        Bson::Null | Bson::Undefined => false,
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

fn parse_filter(filter: &Document) -> EvalResult<Vec<Expr>> {
    let mut out = Vec::new();
    for (key, value) in filter {
        match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let list = parse_logical(value)?;
                out.push(match key.as_str() {
                    "$and" => Expr::And(list),
                    "$or" => Expr::Or(list),
                    _ => Expr::Nor(list),
                });
            }
            "$comment" => {}
            "$alwaysTrue" => out.push(Expr::And(vec![])),
            "$alwaysFalse" => out.push(Expr::Or(vec![])),
            "$expr" | "$where" | "$text" | "$jsonSchema" | "$sampleRate" => {
                return Err(EvalError::Unsupported(format!("{key} is not supported")));
            }
            k if k.starts_with('$') => {
                return Err(EvalError::Unsupported(format!(
                    "unknown top level operator: {k}"
                )));
            }
            _ => out.push(Expr::Field(key.clone(), parse_field_value(value)?)),
        }
    }
    Ok(out)
}

fn parse_logical(value: &Bson) -> EvalResult<Vec<Expr>> {
    let items = match value {
        Bson::Array(items) if !items.is_empty() => items,
        _ => {
            return Err(EvalError::BadValue(
                "$and/$or/$nor must be a nonempty array".into(),
            ))
        }
    };
    items
        .iter()
        .map(|item| match item {
            Bson::Document(d) => Ok(Expr::And(parse_filter(d)?)),
            _ => Err(EvalError::BadValue(
                "$or/$and/$nor entries need to be full objects".into(),
            )),
        })
        .collect()
}

fn parse_field_value(value: &Bson) -> EvalResult<Pred> {
    match value {
        Bson::Document(d) if is_operator_document(d) => Ok(Pred::AllOf(parse_operators(d)?)),
        Bson::RegularExpression(_) => Err(regex_unsupported()),
        _ => Ok(Pred::Cmp(CmpOp::Eq, check_operand(value)?)),
    }
}

fn regex_unsupported() -> EvalError {
    EvalError::Unsupported("$regex is not supported (no regular expression engine)".into())
}

fn check_operand(value: &Bson) -> EvalResult<Bson> {
    match value {
        Bson::Undefined => Err(EvalError::BadValue("cannot compare to undefined".into())),
        _ => Ok(value.clone()),
    }
}

fn parse_operators(ops: &Document) -> EvalResult<Vec<Pred>> {
    ops.iter()
        .map(|(op, arg)| parse_operator(op, arg))
        .collect()
}

fn parse_operator(op: &str, arg: &Bson) -> EvalResult<Pred> {
    let cmp = |c| Ok(Pred::Cmp(c, check_operand(arg)?));
    match op {
        "$eq" => cmp(CmpOp::Eq),
        "$ne" => Ok(Pred::Not(Box::new(Pred::Cmp(
            CmpOp::Eq,
            check_operand(arg)?,
        )))),
        "$gt" => cmp(CmpOp::Gt),
        "$gte" => cmp(CmpOp::Gte),
        "$lt" => cmp(CmpOp::Lt),
        "$lte" => cmp(CmpOp::Lte),
        "$in" => Ok(Pred::In(parse_in_list(op, arg)?)),
        "$nin" => Ok(Pred::Not(Box::new(Pred::In(parse_in_list(op, arg)?)))),
        // `$exists: false` is the negation of `$exists: true` over the whole path.
        "$exists" if truthy(arg) => Ok(Pred::Exists),
        "$exists" => Ok(Pred::Not(Box::new(Pred::Exists))),
        "$not" => match arg {
            Bson::Document(d) if d.is_empty() => {
                Err(EvalError::BadValue("$not cannot be empty".into()))
            }
            Bson::Document(d) => Ok(Pred::Not(Box::new(Pred::AllOf(parse_operators(d)?)))),
            Bson::RegularExpression(_) => Err(regex_unsupported()),
            _ => Err(EvalError::BadValue(
                "$not needs a regex or a document".into(),
            )),
        },
        "$size" => parse_size(arg).map(Pred::Size),
        "$elemMatch" => parse_elem_match(arg),
        "$all" => parse_all(arg),
        "$type" => parse_types(arg).map(Pred::Type),
        "$regex" | "$options" => Err(regex_unsupported()),
        "$mod" | "$bitsAllSet" | "$bitsAllClear" | "$bitsAnySet" | "$bitsAnyClear"
        | "$geoWithin" | "$geoIntersects" | "$near" | "$nearSphere" | "$within" | "$where"
        | "$expr" | "$text" | "$jsonSchema" => {
            Err(EvalError::Unsupported(format!("{op} is not supported")))
        }
        _ => Err(EvalError::Unsupported(format!("unknown operator: {op}"))),
    }
}

fn parse_in_list(op: &str, arg: &Bson) -> EvalResult<Vec<Bson>> {
    let Bson::Array(items) = arg else {
        return Err(EvalError::BadValue(format!("{op} needs an array")));
    };
    items
        .iter()
        .map(|item| match item {
            Bson::RegularExpression(_) => Err(regex_unsupported()),
            Bson::Undefined => Err(EvalError::BadValue(
                "InMatchExpression equality cannot be undefined".into(),
            )),
            Bson::Document(d) if is_operator_document(d) => {
                Err(EvalError::BadValue("cannot nest $ under $in".into()))
            }
            _ => Ok(item.clone()),
        })
        .collect()
}

fn parse_size(arg: &Bson) -> EvalResult<usize> {
    let n = match arg {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 2_147_483_648.0 => *f as i64,
        Bson::Double(_) => return Err(EvalError::BadValue("$size must be a whole number".into())),
        _ => return Err(EvalError::BadValue("$size needs a number".into())),
    };
    usize::try_from(n).map_err(|_| EvalError::BadValue("$size may not be negative".into()))
}

fn parse_elem_match(arg: &Bson) -> EvalResult<Pred> {
    let Bson::Document(d) = arg else {
        return Err(EvalError::BadValue("$elemMatch needs an Object".into()));
    };
    // Value form when the first key is a field operator; logical operators such as $and
    // introduce the document (sub-filter) form, as in MongoDB's parser.
    if is_field_operator_document(d) {
        Ok(Pred::ElemMatchValue(parse_operators(d)?))
    } else {
        Ok(Pred::ElemMatchDoc(parse_filter(d)?))
    }
}

fn parse_all(arg: &Bson) -> EvalResult<Pred> {
    let Bson::Array(items) = arg else {
        return Err(EvalError::BadValue("$all needs an array".into()));
    };
    let preds = items
        .iter()
        .map(|item| match item {
            Bson::Document(d) if d.keys().next().map(String::as_str) == Some("$elemMatch") => {
                match d.get("$elemMatch") {
                    Some(inner) if d.len() == 1 => parse_elem_match(inner),
                    _ => Err(EvalError::BadValue(
                        "$elemMatch must be alone in $all".into(),
                    )),
                }
            }
            Bson::Document(d) if is_operator_document(d) => {
                Err(EvalError::BadValue("no $ expressions in $all".into()))
            }
            Bson::RegularExpression(_) => Err(regex_unsupported()),
            _ => Ok(Pred::Cmp(CmpOp::Eq, check_operand(item)?)),
        })
        .collect::<EvalResult<Vec<_>>>()?;
    Ok(Pred::All(preds))
}

fn parse_types(arg: &Bson) -> EvalResult<Vec<TypeSel>> {
    match arg {
        Bson::Array(items) if items.is_empty() => Err(EvalError::BadValue(
            "$type must match at least one type".into(),
        )),
        Bson::Array(items) => items.iter().map(parse_type).collect(),
        _ => Ok(vec![parse_type(arg)?]),
    }
}

fn parse_type(arg: &Bson) -> EvalResult<TypeSel> {
    const ALIASES: [(&str, i32); 21] = [
        ("double", 1),
        ("string", 2),
        ("object", 3),
        ("array", 4),
        ("binData", 5),
        ("undefined", 6),
        ("objectId", 7),
        ("bool", 8),
        ("date", 9),
        ("null", 10),
        ("regex", 11),
        ("dbPointer", 12),
        ("javascript", 13),
        ("symbol", 14),
        ("javascriptWithScope", 15),
        ("int", 16),
        ("timestamp", 17),
        ("long", 18),
        ("decimal", 19),
        ("minKey", -1),
        ("maxKey", 127),
    ];
    let code = match arg {
        Bson::String(s) if s == "number" => return Ok(TypeSel::Number),
        Bson::String(s) => {
            return ALIASES
                .iter()
                .find(|(name, _)| name == s)
                .map(|(_, code)| TypeSel::Code(*code))
                .ok_or_else(|| EvalError::BadValue(format!("Unknown type name alias: {s}")));
        }
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 1e9 => *f as i64,
        _ => {
            return Err(EvalError::BadValue(format!(
                "type must be represented as a number or a string, got {arg}"
            )))
        }
    };
    if ALIASES.iter().any(|(_, c)| i64::from(*c) == code) {
        Ok(TypeSel::Code(code as i32))
    } else {
        Err(EvalError::BadValue(format!(
            "Invalid numerical type code: {code}"
        )))
    }
}

fn type_code(b: &Bson) -> i32 {
    match b {
        Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::Undefined => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Null => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::Symbol(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::Int32(_) => 16,
        Bson::Timestamp(_) => 17,
        Bson::Int64(_) => 18,
        Bson::Decimal128(_) => 19,
        Bson::MinKey => -1,
        Bson::MaxKey => 127,
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation

fn eval_expr(doc: &Document, expr: &Expr) -> bool {
    match expr {
        Expr::And(list) => list.iter().all(|e| eval_expr(doc, e)),
        Expr::Or(list) => list.iter().any(|e| eval_expr(doc, e)),
        Expr::Nor(list) => !list.iter().any(|e| eval_expr(doc, e)),
        Expr::Field(path, pred) => eval_pred(&Source::Doc(doc, path), pred),
    }
}

/// Where a predicate's candidate values come from: a path in a document, or a bare value
/// (treated as the value of a field).
enum Source<'a> {
    Doc(&'a Document, &'a str),
    Value(&'a Bson),
}

impl<'a> Source<'a> {
    fn candidates(&self, leaf: LeafArrays) -> Vec<Option<&'a Bson>> {
        match self {
            Source::Doc(doc, path) => lookup(doc, path, leaf),
            Source::Value(value) => {
                let mut out = Vec::new();
                if let (LeafArrays::Traverse, Bson::Array(items)) = (leaf, value) {
                    out.extend(items.iter().map(Some));
                }
                out.push(Some(*value));
                out
            }
        }
    }
}

/// Path-level evaluation: negations and conjunctions apply to the whole path, the other
/// predicates match if any candidate value matches.
fn eval_pred(src: &Source, pred: &Pred) -> bool {
    match pred {
        Pred::Not(inner) => !eval_pred(src, inner),
        Pred::AllOf(list) => list.iter().all(|p| eval_pred(src, p)),
        Pred::All(list) => !list.is_empty() && list.iter().all(|p| eval_pred(src, p)),
        Pred::Size(_) | Pred::ElemMatchDoc(_) | Pred::ElemMatchValue(_) => src
            .candidates(LeafArrays::Whole)
            .into_iter()
            .any(|v| eval_single(v, pred)),
        _ => src
            .candidates(LeafArrays::Traverse)
            .into_iter()
            .any(|v| eval_single(v, pred)),
    }
}

/// Evaluation against one candidate value (`None` = missing).
fn eval_single(v: Option<&Bson>, pred: &Pred) -> bool {
    match pred {
        Pred::Cmp(op, rhs) => compare_single(v, *op, rhs),
        Pred::In(list) => {
            let lhs = v.unwrap_or(&Bson::Null);
            list.iter().any(|x| values_equal(lhs, x))
        }
        Pred::Not(inner) => !eval_single(v, inner),
        Pred::AllOf(list) => list.iter().all(|p| eval_single(v, p)),
        Pred::All(list) => !list.is_empty() && list.iter().all(|p| eval_single(v, p)),
        Pred::Exists => v.is_some(),
        Pred::Size(n) => matches!(v, Some(Bson::Array(items)) if items.len() == *n),
        Pred::ElemMatchDoc(exprs) => match v {
            Some(Bson::Array(items)) => items.iter().any(|item| match item {
                Bson::Document(d) => exprs.iter().all(|e| eval_expr(d, e)),
                // Arrays are matched as documents keyed "0", "1", ... like in MongoDB.
                Bson::Array(inner) => {
                    let d: Document = inner
                        .iter()
                        .enumerate()
                        .map(|(i, x)| (i.to_string(), x.clone()))
                        .collect();
                    exprs.iter().all(|e| eval_expr(&d, e))
                }
                _ => false,
            }),
            _ => false,
        },
        Pred::ElemMatchValue(preds) => match v {
            Some(Bson::Array(items)) => items
                .iter()
                .any(|item| preds.iter().all(|p| eval_single(Some(item), p))),
            _ => false,
        },
        Pred::Type(sels) => match v {
            Some(value) => sels.iter().any(|sel| match sel {
                TypeSel::Number => is_number(value),
                TypeSel::Code(code) => type_code(value) == *code,
            }),
            None => false,
        },
    }
}

/// MongoDB's `ComparisonMatchExpression` on one value: only values of the operand's type
/// bracket compare, except that MinKey/MaxKey operands bound everything; a missing value
/// compares as null; NaN only satisfies `$eq`/`$gte`/`$lte` against NaN.
fn compare_single(v: Option<&Bson>, op: CmpOp, rhs: &Bson) -> bool {
    let lhs = v.unwrap_or(&Bson::Null);
    if type_bracket(lhs) != type_bracket(rhs) {
        return match rhs {
            Bson::MinKey => matches!(op, CmpOp::Gt | CmpOp::Gte),
            Bson::MaxKey => matches!(op, CmpOp::Lt | CmpOp::Lte),
            _ => false,
        };
    }
    if op != CmpOp::Eq && (is_nan(lhs) || is_nan(rhs)) {
        return matches!(op, CmpOp::Gte | CmpOp::Lte) && is_nan(lhs) && is_nan(rhs);
    }
    let ord = cmp_bson(lhs, rhs);
    match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Gte => ord != Ordering::Less,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Lte => ord != Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Bson};

    fn m(doc: Document, filter: Document) -> bool {
        matches(&doc, &filter).unwrap()
    }

    fn err(filter: Document) -> EvalError {
        matches(&doc! {}, &filter).unwrap_err()
    }

    #[test]
    fn implicit_equality_and_top_level_and() {
        assert!(m(doc! {"a": 1, "b": "x"}, doc! {"a": 1, "b": "x"}));
        assert!(!m(doc! {"a": 1, "b": "y"}, doc! {"a": 1, "b": "x"}));
        assert!(m(doc! {"a": 1}, doc! {"a": 1.0}));
        assert!(!m(doc! {"a": 1}, doc! {"a": "1"}));
        assert!(m(doc! {"a": 1}, doc! {}));
    }

    #[test]
    fn dotted_paths_reach_nested_fields() {
        let d = doc! {"a": {"b": {"c": 3}}};
        assert!(m(d.clone(), doc! {"a.b.c": 3}));
        assert!(!m(d.clone(), doc! {"a.b.c": 4}));
        assert!(m(d, doc! {"a.b": {"c": 3}}));
    }

    #[test]
    fn literal_document_equality_is_exact_and_ordered() {
        let d = doc! {"a": {"x": 1, "y": 2}};
        assert!(m(d.clone(), doc! {"a": {"x": 1, "y": 2}}));
        // Embedded document equality requires the same field order (MongoDB docs).
        assert!(!m(d.clone(), doc! {"a": {"y": 2, "x": 1}}));
        assert!(!m(d, doc! {"a": {"x": 1}}));
        assert!(m(doc! {"a": {}}, doc! {"a": {}}));
    }

    #[test]
    fn equality_matches_array_elements_and_whole_arrays() {
        let d = doc! {"a": [1, 5, [7, 8]]};
        assert!(m(d.clone(), doc! {"a": 5}));
        assert!(m(d.clone(), doc! {"a": [7, 8]}));
        assert!(m(d.clone(), doc! {"a": [1, 5, [7, 8]]}));
        // Only one level of nesting is unwound.
        assert!(!m(d.clone(), doc! {"a": 7}));
        assert!(!m(d, doc! {"a": [5, 1, [7, 8]]}));
    }

    #[test]
    fn paths_fan_out_through_arrays_of_documents() {
        let d = doc! {"a": [{"b": 1}, {"b": [2, 3]}]};
        assert!(m(d.clone(), doc! {"a.b": 1}));
        assert!(m(d.clone(), doc! {"a.b": 3}));
        assert!(m(d.clone(), doc! {"a.b": [2, 3]}));
        assert!(m(d.clone(), doc! {"a.1.b": 2}));
        assert!(!m(d.clone(), doc! {"a.0.b": 2}));
        assert!(m(d, doc! {"a.b": {"$gt": 2}}));
    }

    #[test]
    fn null_equality_matches_missing_and_null() {
        assert!(m(doc! {"a": Bson::Null}, doc! {"a": Bson::Null}));
        assert!(m(doc! {"b": 1}, doc! {"a": Bson::Null}));
        assert!(m(doc! {"a": Bson::Undefined}, doc! {"a": Bson::Null}));
        assert!(!m(doc! {"a": 0}, doc! {"a": Bson::Null}));
        assert!(m(doc! {"a": [1, Bson::Null]}, doc! {"a": Bson::Null}));
        // An empty array is neither null nor missing.
        assert!(!m(doc! {"a": []}, doc! {"a": Bson::Null}));
        // A scalar in the path counts as missing.
        assert!(m(doc! {"a": 5}, doc! {"a.b": Bson::Null}));
        // An array element lacking the field counts as missing ...
        assert!(m(
            doc! {"a": [{"b": 1}, {"c": 1}]},
            doc! {"a.b": Bson::Null}
        ));
        // ... but scalar elements yield nothing (MongoDB's element iterator).
        assert!(!m(doc! {"a": [1, 2]}, doc! {"a.b": Bson::Null}));
    }

    #[test]
    fn ne_null_requires_a_non_null_value() {
        assert!(m(doc! {"a": 1}, doc! {"a": {"$ne": Bson::Null}}));
        assert!(!m(doc! {}, doc! {"a": {"$ne": Bson::Null}}));
        assert!(!m(doc! {"a": Bson::Null}, doc! {"a": {"$ne": Bson::Null}}));
        assert!(!m(
            doc! {"a": [1, Bson::Null]},
            doc! {"a": {"$ne": Bson::Null}}
        ));
    }

    #[test]
    fn eq_and_ne_operators() {
        assert!(m(doc! {"a": 2}, doc! {"a": {"$eq": 2}}));
        assert!(m(doc! {"a": [1, 2]}, doc! {"a": {"$eq": 2}}));
        assert!(m(doc! {"a": 3}, doc! {"a": {"$ne": 2}}));
        assert!(m(doc! {}, doc! {"a": {"$ne": 2}}));
        // $ne is the negation of $eq over the whole array.
        assert!(!m(doc! {"a": [1, 2]}, doc! {"a": {"$ne": 2}}));
        assert!(m(doc! {"a": [1, 3]}, doc! {"a": {"$ne": 2}}));
        // $eq with an operator-looking document compares literally.
        assert!(m(doc! {"a": {"b": 1}}, doc! {"a": {"$eq": {"b": 1}}}));
    }

    #[test]
    fn range_operators_stay_in_type_bracket() {
        assert!(m(doc! {"a": 6}, doc! {"a": {"$gt": 5}}));
        assert!(m(doc! {"a": 5.5}, doc! {"a": {"$gt": 5_i64}}));
        assert!(m(doc! {"a": 5}, doc! {"a": {"$gte": 5}}));
        assert!(!m(doc! {"a": 5}, doc! {"a": {"$lt": 5}}));
        assert!(m(doc! {"a": 4}, doc! {"a": {"$lte": 5, "$gt": 3}}));
        // Strings are greater than numbers in sort order, but $gt does not cross types.
        assert!(!m(doc! {"a": "x"}, doc! {"a": {"$gt": 5}}));
        assert!(!m(doc! {"a": 5}, doc! {"a": {"$lt": "x"}}));
        assert!(!m(doc! {}, doc! {"a": {"$lt": 5}}));
        assert!(m(doc! {"a": "b"}, doc! {"a": {"$gt": "a"}}));
    }

    #[test]
    fn range_operators_match_any_array_element() {
        let d = doc! {"a": [1, 10]};
        assert!(m(d.clone(), doc! {"a": {"$gt": 5}}));
        assert!(m(d.clone(), doc! {"a": {"$lt": 5}}));
        // Each condition may be met by a different element (use $elemMatch to require one).
        assert!(m(d.clone(), doc! {"a": {"$gt": 5, "$lt": 8}}));
        assert!(!m(d, doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 8}}}));
    }

    #[test]
    fn null_bracket_comparisons() {
        assert!(m(doc! {}, doc! {"a": {"$gte": Bson::Null}}));
        assert!(m(doc! {"a": Bson::Null}, doc! {"a": {"$lte": Bson::Null}}));
        assert!(!m(doc! {}, doc! {"a": {"$gt": Bson::Null}}));
        assert!(!m(doc! {"a": Bson::Null}, doc! {"a": {"$lt": Bson::Null}}));
        assert!(!m(doc! {"a": 1}, doc! {"a": {"$gte": Bson::Null}}));
    }

    #[test]
    fn minkey_and_maxkey_operands_bound_every_type() {
        assert!(m(doc! {"a": "s"}, doc! {"a": {"$gt": Bson::MinKey}}));
        assert!(m(doc! {"a": 1}, doc! {"a": {"$lt": Bson::MaxKey}}));
        assert!(!m(doc! {"a": 1}, doc! {"a": {"$gt": Bson::MaxKey}}));
        assert!(m(
            doc! {"a": Bson::MaxKey},
            doc! {"a": {"$gte": Bson::MaxKey}}
        ));
    }

    #[test]
    fn nan_only_matches_nan() {
        let nan = doc! {"a": f64::NAN};
        assert!(m(nan.clone(), doc! {"a": f64::NAN}));
        assert!(m(nan.clone(), doc! {"a": {"$gte": f64::NAN}}));
        assert!(!m(nan.clone(), doc! {"a": {"$lt": 0}}));
        assert!(!m(doc! {"a": 1}, doc! {"a": {"$gt": f64::NAN}}));
    }

    #[test]
    fn in_and_nin() {
        assert!(m(doc! {"a": 2}, doc! {"a": {"$in": [1, 2]}}));
        assert!(!m(doc! {"a": 3}, doc! {"a": {"$in": [1, 2]}}));
        assert!(m(doc! {"a": [3, 2]}, doc! {"a": {"$in": [1, 2]}}));
        assert!(m(doc! {"a": [1, 2]}, doc! {"a": {"$in": [[1, 2]]}}));
        assert!(!m(doc! {"a": 1}, doc! {"a": {"$in": []}}));
        assert!(m(doc! {}, doc! {"a": {"$in": [Bson::Null, 5]}}));
        assert!(m(doc! {"a": 3}, doc! {"a": {"$nin": [1, 2]}}));
        assert!(m(doc! {}, doc! {"a": {"$nin": [1, 2]}}));
        assert!(!m(doc! {"a": [3, 2]}, doc! {"a": {"$nin": [1, 2]}}));
        assert!(!m(doc! {}, doc! {"a": {"$nin": [Bson::Null]}}));
    }

    #[test]
    fn exists() {
        assert!(m(doc! {"a": Bson::Null}, doc! {"a": {"$exists": true}}));
        assert!(!m(doc! {}, doc! {"a": {"$exists": true}}));
        assert!(m(doc! {}, doc! {"a": {"$exists": false}}));
        assert!(m(doc! {"a": 1}, doc! {"a": {"$exists": 1}}));
        assert!(m(doc! {"a": [{"b": 1}]}, doc! {"a.b": {"$exists": true}}));
        assert!(m(doc! {"a": [1, 2]}, doc! {"a.b": {"$exists": false}}));
        assert!(!m(
            doc! {"a": [{"c": 1}, {"b": 1}]},
            doc! {"a.b": {"$exists": false}}
        ));
    }

    #[test]
    fn not_negates_operator_expression() {
        assert!(m(doc! {"a": 3}, doc! {"a": {"$not": {"$gt": 5}}}));
        assert!(!m(doc! {"a": 7}, doc! {"a": {"$not": {"$gt": 5}}}));
        // $not also matches documents without the field and values of other types.
        assert!(m(doc! {}, doc! {"a": {"$not": {"$gt": 5}}}));
        assert!(m(doc! {"a": "x"}, doc! {"a": {"$not": {"$gt": 5}}}));
        assert!(!m(doc! {"a": [1, 7]}, doc! {"a": {"$not": {"$gt": 5}}}));
    }

    #[test]
    fn size_matches_leaf_array_length_only() {
        assert!(m(doc! {"a": [1, 2]}, doc! {"a": {"$size": 2}}));
        assert!(!m(doc! {"a": [1, 2]}, doc! {"a": {"$size": 1}}));
        assert!(m(doc! {"a": []}, doc! {"a": {"$size": 0}}));
        assert!(!m(doc! {"a": 1}, doc! {"a": {"$size": 1}}));
        assert!(!m(doc! {"a": [[1, 2]]}, doc! {"a": {"$size": 2}}));
        assert!(m(doc! {"a": [{"b": [1, 2]}]}, doc! {"a.b": {"$size": 2}}));
        assert!(m(doc! {"a": [1]}, doc! {"a": {"$size": 1.0}}));
    }

    #[test]
    fn elem_match_value_form() {
        let d = doc! {"a": [1, 6, 12]};
        assert!(m(
            d.clone(),
            doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 10}}}
        ));
        assert!(!m(d.clone(), doc! {"a": {"$elemMatch": {"$gt": 12}}}));
        assert!(m(d, doc! {"a": {"$elemMatch": {"$not": {"$gt": 5}}}}));
        assert!(!m(doc! {"a": 6}, doc! {"a": {"$elemMatch": {"$gt": 5}}}));
    }

    #[test]
    fn elem_match_document_form() {
        let d = doc! {"r": [{"p": "x", "s": 8}, {"p": "y", "s": 9}]};
        assert!(m(
            d.clone(),
            doc! {"r": {"$elemMatch": {"p": "y", "s": {"$gte": 9}}}}
        ));
        // Both conditions must hold on the same element.
        assert!(!m(
            d.clone(),
            doc! {"r": {"$elemMatch": {"p": "x", "s": 9}}}
        ));
        assert!(m(d.clone(), doc! {"r.p": "x", "r.s": 9}));
        assert!(m(
            d.clone(),
            doc! {"r": {"$elemMatch": {"$or": [{"s": 1}, {"p": "y"}]}}}
        ));
        assert!(!m(doc! {"r": [1, 2]}, doc! {"r": {"$elemMatch": {}}}));
        assert!(m(d, doc! {"r": {"$elemMatch": {}}}));
    }

    #[test]
    fn all_operator() {
        let d = doc! {"t": ["a", "b", "c"]};
        assert!(m(d.clone(), doc! {"t": {"$all": ["a", "c"]}}));
        assert!(!m(d.clone(), doc! {"t": {"$all": ["a", "z"]}}));
        assert!(!m(d, doc! {"t": {"$all": []}}));
        assert!(m(doc! {"t": "a"}, doc! {"t": {"$all": ["a"]}}));
        assert!(m(doc! {"t": [1, 2]}, doc! {"t": {"$all": [[1, 2]]}}));
        let q = doc! {"t": {"$all": [{"$elemMatch": {"x": 1}}, {"$elemMatch": {"y": 2}}]}};
        assert!(m(doc! {"t": [{"x": 1}, {"y": 2}]}, q.clone()));
        assert!(!m(doc! {"t": [{"x": 1}]}, q));
    }

    #[test]
    fn type_operator_aliases_codes_and_arrays() {
        assert!(m(doc! {"a": "s"}, doc! {"a": {"$type": "string"}}));
        assert!(m(doc! {"a": 1}, doc! {"a": {"$type": "int"}}));
        assert!(m(doc! {"a": 1_i64}, doc! {"a": {"$type": "long"}}));
        assert!(m(doc! {"a": 1.5}, doc! {"a": {"$type": 1}}));
        assert!(m(doc! {"a": 1_i64}, doc! {"a": {"$type": "number"}}));
        assert!(m(doc! {"a": {"b": 1}}, doc! {"a": {"$type": "object"}}));
        assert!(m(
            doc! {"a": true},
            doc! {"a": {"$type": ["string", "bool"]}}
        ));
        assert!(m(doc! {"a": Bson::Null}, doc! {"a": {"$type": "null"}}));
        assert!(!m(doc! {}, doc! {"a": {"$type": "null"}}));
        // An array field matches "array" and also the types of its elements.
        assert!(m(doc! {"a": []}, doc! {"a": {"$type": "array"}}));
        assert!(m(doc! {"a": ["s"]}, doc! {"a": {"$type": "string"}}));
        let oid = mongodb::bson::oid::ObjectId::new();
        assert!(m(doc! {"a": oid}, doc! {"a": {"$type": "objectId"}}));
        let now = mongodb::bson::DateTime::now();
        assert!(m(doc! {"a": now}, doc! {"a": {"$type": "date"}}));
    }

    #[test]
    fn logical_operators() {
        let d = doc! {"a": 1, "b": 2};
        assert!(m(d.clone(), doc! {"$or": [{"a": 5}, {"b": 2}]}));
        assert!(!m(d.clone(), doc! {"$or": [{"a": 5}, {"b": 5}]}));
        assert!(m(d.clone(), doc! {"$and": [{"a": 1}, {"b": {"$gt": 1}}]}));
        assert!(!m(d.clone(), doc! {"$and": [{"a": 1}, {"b": 3}]}));
        assert!(m(d.clone(), doc! {"$nor": [{"a": 5}, {"b": 5}]}));
        assert!(!m(d.clone(), doc! {"$nor": [{"a": 1}]}));
        assert!(m(
            d,
            doc! {"$or": [{"$and": [{"a": 1}, {"b": 2}]}], "$comment": "hi"}
        ));
    }

    #[test]
    fn malformed_filters_are_errors() {
        assert!(matches!(err(doc! {"$or": []}), EvalError::BadValue(_)));
        assert!(matches!(
            err(doc! {"$and": {"a": 1}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(err(doc! {"$nor": [1]}), EvalError::BadValue(_)));
        assert!(matches!(
            err(doc! {"a": {"$in": 5}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$all": 5}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$size": -1}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$size": 1.5}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$size": "1"}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$not": 5}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$type": "str"}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$type": 99}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            err(doc! {"a": {"$elemMatch": 1}}),
            EvalError::BadValue(_)
        ));
        // Errors do not depend on the document: even a missing field reports them.
        assert!(matches(&doc! {"a": [1]}, &doc! {"x.y": {"$in": 1}}).is_err());
    }

    #[test]
    fn unknown_and_unsupported_operators() {
        assert_eq!(
            err(doc! {"a": {"$foo": 1}}),
            EvalError::Unsupported("unknown operator: $foo".into())
        );
        assert_eq!(
            err(doc! {"$foo": 1}),
            EvalError::Unsupported("unknown top level operator: $foo".into())
        );
        assert!(matches!(
            err(doc! {"a": {"$regex": "^x"}}),
            EvalError::Unsupported(_)
        ));
        let re = mongodb::bson::Regex {
            pattern: "x".into(),
            options: String::new(),
        };
        assert!(matches!(err(doc! {"a": re}), EvalError::Unsupported(_)));
        assert!(matches!(
            err(doc! {"a": {"$mod": [2, 0]}}),
            EvalError::Unsupported(_)
        ));
        assert!(matches!(
            err(doc! {"$where": "1"}),
            EvalError::Unsupported(_)
        ));
    }

    #[test]
    fn value_filter_traverses_arrays() {
        let f = ValueFilter::new(&doc! {"$gte": 6}).unwrap();
        assert!(f.matches(&Bson::Int32(6)));
        assert!(!f.matches(&Bson::Int32(5)));
        assert!(f.matches(&Bson::Array(vec![1.into(), 7.into()])));
        assert!(ValueFilter::new(&doc! {"$bad": 1}).is_err());
        let compiled = Filter::new(&doc! {"a": {"$in": [1, 2]}}).unwrap();
        assert!(compiled.matches(&doc! {"a": 2}) && !compiled.matches(&doc! {"a": 3}));
    }

    #[test]
    fn elem_match_on_nested_paths_and_nested_arrays() {
        assert!(m(
            doc! {"a": [{"b": [0, 2]}]},
            doc! {"a.b": {"$elemMatch": {"$gt": 1}}}
        ));
        assert!(!m(
            doc! {"a": [{"b": [0, 1]}]},
            doc! {"a.b": {"$elemMatch": {"$gt": 1}}}
        ));
        // Array elements are matched as documents keyed by position.
        assert!(m(
            doc! {"a": [[1, 2]]},
            doc! {"a": {"$elemMatch": {"0": 1}}}
        ));
        assert!(m(
            doc! {"a": [[1], [5, 6]]},
            doc! {"a": {"$elemMatch": {"$size": 2}}}
        ));
    }

    #[test]
    fn dbref_like_documents_are_literals() {
        let r = doc! {"$ref": "c", "$id": 1};
        assert!(m(doc! {"a": r.clone()}, doc! {"a": r}));
        assert!(is_operator_document(&doc! {"$gt": 1}));
        assert!(!is_operator_document(&doc! {"$id": 1}));
        assert!(!is_field_operator_document(&doc! {"$or": []}));
    }
}
