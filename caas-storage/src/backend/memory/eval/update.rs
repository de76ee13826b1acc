//! Update operators (`$set`, `$inc`, `$push`, ...) and the seed document of an upsert.
//!
//! Like MongoDB 5.0+, the whole update is validated before anything is applied, fields are
//! updated in lexicographic path order (numeric components in numeric order), and a failed
//! update leaves the document untouched.

use super::compare::{
    cmp_bson, identical, identical_documents, is_number, type_name, values_equal,
};
use super::error::{EvalError, EvalResult};
use super::filter::{is_field_operator_document, is_operator_document, Filter, ValueFilter};
use super::path::{array_index, get_path_exact, remove_path, set_path};
use super::sort::{cmp_by, validate_sort};
use mongodb::bson::{Bson, DateTime, Document, Timestamp};
use std::cmp::Ordering;

/// One field update, validated.
enum Action {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Arith { mul: bool, operand: Bson },
    MinMax { max: bool, value: Bson },
    Push(PushSpec),
    AddToSet(Vec<Bson>),
    Pull(PullCond),
    PullAll(Vec<Bson>),
    Pop { first: bool },
    Rename(String),
    CurrentDate { timestamp: bool },
}

struct FieldUpdate {
    op: &'static str,
    path: String,
    action: Action,
}

#[derive(Default)]
struct PushSpec {
    each: Vec<Bson>,
    position: Option<i64>,
    slice: Option<i64>,
    sort: Option<PushSort>,
}

enum PushSort {
    Whole { descending: bool },
    Fields(Document),
}

enum PullCond {
    Equal(Bson),
    Doc(Filter),
    Value(ValueFilter),
}

fn bad(msg: impl Into<String>) -> EvalError {
    EvalError::BadValue(msg.into())
}

/// Applies an update document made of `$` operators to `doc` and returns whether the
/// document changed (MongoDB's `nModified`: setting a field to an identical value is no
/// change). `inserting` is true when the document is being created by an upsert, which
/// enables `$setOnInsert`. `now` is the time `$currentDate` sets (one per operation, as on a
/// server). On error the document is left unchanged.
pub fn apply_update(
    doc: &mut Document,
    update: &Document,
    inserting: bool,
    now: DateTime,
) -> EvalResult<bool> {
    let mut updates = parse_update(update)?;
    check_conflicts(&updates)?;
    updates.sort_by(|a, b| cmp_paths(order_path(a), order_path(b)));

    let mut work = doc.clone();
    for u in &updates {
        apply_one(&mut work, u, inserting, now)?;
    }
    if let Some(old_id) = doc.get("_id") {
        if !work
            .get("_id")
            .is_some_and(|new_id| identical(old_id, new_id))
        {
            return Err(bad(
                "Performing an update on the path '_id' would modify the immutable field '_id'",
            ));
        }
    } else if inserting
        && work.contains_key("_id")
        && work.keys().next().map(String::as_str) != Some("_id")
    {
        // MongoDB stores `_id` first.
        if let Some(id) = work.remove("_id") {
            let mut reordered = Document::new();
            reordered.insert("_id", id);
            reordered.extend(work);
            work = reordered;
        }
    }
    if identical_documents(doc, &work) {
        return Ok(false);
    }
    *doc = work;
    Ok(true)
}

/// The document an upsert starts from when no document matches `filter`: its equality
/// conditions (top-level `field: value` and `field: {$eq: value}`, also inside top-level
/// `$and`), with dotted paths expanded into embedded documents and `_id` first. Other
/// operators, `$or` and regular expressions contribute nothing; conflicting paths are
/// skipped.
pub fn upsert_seed(filter: &Document) -> Document {
    let mut seed = Document::new();
    collect_equalities(filter, &mut seed);
    if let Some(id) = seed.remove("_id") {
        let mut out = Document::new();
        out.insert("_id", id);
        out.extend(seed);
        return out;
    }
    seed
}

fn collect_equalities(filter: &Document, seed: &mut Document) {
    for (key, value) in filter {
        if key == "$and" {
            if let Bson::Array(items) = value {
                for item in items {
                    if let Bson::Document(d) = item {
                        collect_equalities(d, seed);
                    }
                }
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let eq = match value {
            Bson::Document(d) if is_operator_document(d) => match d.get("$eq") {
                Some(v) => v.clone(),
                None => continue,
            },
            Bson::RegularExpression(_) => continue,
            other => other.clone(),
        };
        // Best effort: a path blocked by an earlier equality is skipped.
        let _ = set_path(seed, key, eq);
    }
}

// ---------------------------------------------------------------------------------------
// Parsing and validation

fn parse_update(update: &Document) -> EvalResult<Vec<FieldUpdate>> {
    if !update.keys().any(|k| k.starts_with('$')) {
        return Err(bad("Update document requires atomic operators"));
    }
    let mut out = Vec::new();
    for (op_name, arg) in update {
        let op: &'static str = match op_name.as_str() {
            "$set" => "$set",
            "$setOnInsert" => "$setOnInsert",
            "$unset" => "$unset",
            "$inc" => "$inc",
            "$mul" => "$mul",
            "$min" => "$min",
            "$max" => "$max",
            "$push" => "$push",
            "$addToSet" => "$addToSet",
            "$pull" => "$pull",
            "$pullAll" => "$pullAll",
            "$pop" => "$pop",
            "$rename" => "$rename",
            "$currentDate" => "$currentDate",
            "$bit" => return Err(EvalError::Unsupported("$bit is not supported".into())),
            _ => {
                return Err(bad(format!(
                    "Unknown modifier: {op_name}. Expected a valid update modifier or \
                     pipeline-style update specified as an array"
                )))
            }
        };
        let Bson::Document(fields) = arg else {
            return Err(bad(format!(
                "Modifiers operate on fields but we found type {} instead. For example: \
                 {{$mod: {{<field>: ...}}}} not {{{op}: {arg}}}",
                type_name(arg)
            )));
        };
        for (path, value) in fields {
            validate_path(path)?;
            let action = parse_action(op, path, value)?;
            out.push(FieldUpdate {
                op,
                path: path.clone(),
                action,
            });
        }
    }
    Ok(out)
}

fn validate_path(path: &str) -> EvalResult<()> {
    if path.is_empty() {
        return Err(bad("An empty update path is not valid."));
    }
    for part in path.split('.') {
        if part.is_empty() {
            return Err(bad(format!(
                "The update path '{path}' contains an empty field name, which is not allowed."
            )));
        }
        if part == "$" || part.starts_with("$[") {
            return Err(EvalError::Unsupported(format!(
                "positional update operators are not supported: '{path}'"
            )));
        }
        if part.starts_with('$') {
            return Err(bad(format!(
                "The dollar ($) prefixed field '{part}' in '{path}' is not valid for storage."
            )));
        }
    }
    Ok(())
}

fn parse_action(op: &str, path: &str, value: &Bson) -> EvalResult<Action> {
    Ok(match op {
        "$set" => Action::Set(value.clone()),
        "$setOnInsert" => Action::SetOnInsert(value.clone()),
        "$unset" => Action::Unset,
        "$inc" | "$mul" => {
            let verb = if op == "$inc" {
                "increment"
            } else {
                "multiply"
            };
            if !is_number(value) {
                return Err(bad(format!(
                    "Cannot {verb} with non-numeric argument: {{{path}: {value}}}"
                )));
            }
            if matches!(value, Bson::Decimal128(_)) {
                return Err(EvalError::Unsupported(format!(
                    "{op} with a Decimal128 is not supported"
                )));
            }
            Action::Arith {
                mul: op == "$mul",
                operand: value.clone(),
            }
        }
        "$min" | "$max" => Action::MinMax {
            max: op == "$max",
            value: value.clone(),
        },
        "$push" => Action::Push(parse_push(value)?),
        "$addToSet" => Action::AddToSet(parse_add_to_set(value)?),
        "$pull" => Action::Pull(match value {
            Bson::Document(d) if is_field_operator_document(d) => {
                PullCond::Value(ValueFilter::new(d)?)
            }
            Bson::Document(d) => PullCond::Doc(Filter::new(d)?),
            Bson::RegularExpression(_) => {
                return Err(EvalError::Unsupported(
                    "$pull with a regex is not supported".into(),
                ))
            }
            other => PullCond::Equal(other.clone()),
        }),
        "$pullAll" => match value {
            Bson::Array(items) => Action::PullAll(items.clone()),
            other => {
                return Err(bad(format!(
                    "$pullAll requires an array argument but was given a {}",
                    type_name(other)
                )))
            }
        },
        "$pop" => match as_int(value) {
            Some(1) => Action::Pop { first: false },
            Some(-1) => Action::Pop { first: true },
            _ if is_number(value) => {
                return Err(bad(format!("$pop expects 1 or -1, found: {value}")))
            }
            _ => return Err(bad(format!("Expected a number in: {path}: {value}"))),
        },
        "$rename" => {
            let Bson::String(dest) = value else {
                return Err(bad(format!(
                    "The 'to' field for $rename must be a string: {path}: {value}"
                )));
            };
            validate_path(dest)?;
            if dest == path {
                return Err(bad(format!(
                    "The source and target field for $rename must differ: {path}: \"{dest}\""
                )));
            }
            if is_prefix(path, dest) || is_prefix(dest, path) {
                return Err(bad(format!(
                    "The source and target field for $rename must not be on the same path: \
                     {path}: \"{dest}\""
                )));
            }
            Action::Rename(dest.clone())
        }
        "$currentDate" => match value {
            Bson::Boolean(_) => Action::CurrentDate { timestamp: false },
            Bson::Document(d) if d.len() == 1 && d.get_str("$type") == Ok("date") => {
                Action::CurrentDate { timestamp: false }
            }
            Bson::Document(d) if d.len() == 1 && d.get_str("$type") == Ok("timestamp") => {
                Action::CurrentDate { timestamp: true }
            }
            _ => {
                return Err(bad(format!(
                    "{path} is not valid type for $currentDate. Please use a boolean ('true') \
                     or a $type expression ({{$type: 'timestamp/date'}})."
                )))
            }
        },
        _ => return Err(EvalError::Unsupported(format!("{op} is not supported"))),
    })
}

/// An integral number as i64 (whole doubles included).
fn as_int(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Some(*f as i64),
        _ => None,
    }
}

fn parse_push(value: &Bson) -> EvalResult<PushSpec> {
    let Bson::Document(d) = value else {
        return Ok(PushSpec {
            each: vec![value.clone()],
            ..PushSpec::default()
        });
    };
    if !d.contains_key("$each") {
        return Ok(PushSpec {
            each: vec![value.clone()],
            ..PushSpec::default()
        });
    }
    let mut spec = PushSpec::default();
    for (key, v) in d {
        match key.as_str() {
            "$each" => match v {
                Bson::Array(items) => spec.each = items.clone(),
                other => {
                    return Err(bad(format!(
                        "The argument to $each in $push must be an array but it was of type: {}",
                        type_name(other)
                    )))
                }
            },
            "$slice" => {
                spec.slice = Some(as_int(v).ok_or_else(|| {
                    bad(format!(
                        "The value for $slice must be an integer value but was given type: {}",
                        type_name(v)
                    ))
                })?)
            }
            "$position" => {
                spec.position = Some(as_int(v).ok_or_else(|| {
                    bad(format!(
                        "The value for $position must be an integer value, not of type: {}",
                        type_name(v)
                    ))
                })?)
            }
            "$sort" => spec.sort = Some(parse_push_sort(v)?),
            other => return Err(bad(format!("Unrecognized clause in $push: {other}"))),
        }
    }
    Ok(spec)
}

fn parse_push_sort(v: &Bson) -> EvalResult<PushSort> {
    let invalid =
        || {
            bad("The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort \
             embedded fields")
        };
    match v {
        Bson::Document(d) if d.is_empty() => Err(bad(
            "The $sort pattern is empty when it should be a set of fields.",
        )),
        Bson::Document(d) => {
            if d.keys().any(|k| k.is_empty() || k.starts_with('$')) {
                return Err(invalid());
            }
            validate_sort(d).map_err(|_| invalid())?;
            Ok(PushSort::Fields(d.clone()))
        }
        _ => match as_int(v) {
            Some(1) => Ok(PushSort::Whole { descending: false }),
            Some(-1) => Ok(PushSort::Whole { descending: true }),
            _ => Err(invalid()),
        },
    }
}

fn parse_add_to_set(value: &Bson) -> EvalResult<Vec<Bson>> {
    match value {
        Bson::Document(d) if d.keys().next().map(String::as_str) == Some("$each") => {
            if d.len() != 1 {
                return Err(bad(format!(
                    "Found unexpected fields after $each in $addToSet: {d}"
                )));
            }
            match d.get("$each") {
                Some(Bson::Array(items)) => Ok(items.clone()),
                other => Err(bad(format!(
                    "The argument to $each in $addToSet must be an array but it was of type {}",
                    other.map(type_name).unwrap_or("missing")
                ))),
            }
        }
        other => Ok(vec![other.clone()]),
    }
}

/// Whether `prefix` is a strict path prefix of `path` (`a` of `a.b`, not of `ab`).
fn is_prefix(prefix: &str, path: &str) -> bool {
    path.len() > prefix.len() && path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'.'
}

fn touched_paths(u: &FieldUpdate) -> Vec<&str> {
    match &u.action {
        Action::Rename(dest) => vec![u.path.as_str(), dest.as_str()],
        _ => vec![u.path.as_str()],
    }
}

fn order_path(u: &FieldUpdate) -> &str {
    match &u.action {
        Action::Rename(dest) => dest,
        _ => &u.path,
    }
}

fn check_conflicts(updates: &[FieldUpdate]) -> EvalResult<()> {
    let mut seen: Vec<&str> = Vec::new();
    for path in updates.iter().flat_map(touched_paths) {
        for earlier in &seen {
            let at = if path == *earlier || is_prefix(earlier, path) {
                Some(*earlier)
            } else if is_prefix(path, earlier) {
                Some(path)
            } else {
                None
            };
            if let Some(at) = at {
                return Err(bad(format!(
                    "Updating the path '{path}' would create a conflict at '{at}'"
                )));
            }
        }
        seen.push(path);
    }
    Ok(())
}

/// Field-name order of MongoDB 5.0+ updates: component-wise, numeric components
/// numerically, others bytewise.
fn cmp_paths(a: &str, b: &str) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (array_index(x), array_index(y)) {
                    (Some(i), Some(j)) => i.cmp(&j),
                    _ => x.as_bytes().cmp(y.as_bytes()),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Application

fn last_component(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

fn describe_doc(doc: &Document) -> String {
    match doc.get("_id") {
        Some(id) => format!("{{_id: {id}}}"),
        None => "{}".to_string(),
    }
}

/// The current array at `path` (empty if missing), or an error built by `not_array`.
fn current_array(
    doc: &Document,
    path: &str,
    not_array: impl FnOnce(&Bson) -> EvalError,
) -> EvalResult<Option<Vec<Bson>>> {
    match get_path_exact(doc, path) {
        None => Ok(None),
        Some(Bson::Array(items)) => Ok(Some(items.clone())),
        Some(other) => Err(not_array(other)),
    }
}

fn apply_one(
    doc: &mut Document,
    u: &FieldUpdate,
    inserting: bool,
    now: DateTime,
) -> EvalResult<()> {
    let path = u.path.as_str();
    match &u.action {
        Action::Set(v) => set_path(doc, path, v.clone()),
        Action::SetOnInsert(v) if inserting => set_path(doc, path, v.clone()),
        Action::SetOnInsert(_) => Ok(()),
        Action::Unset => {
            remove_path(doc, path);
            Ok(())
        }
        Action::Arith { mul, operand } => {
            let new = match get_path_exact(doc, path) {
                None if *mul => zero_like(operand),
                None => operand.clone(),
                Some(current) if is_number(current) => arith(current, operand, *mul, u.op, doc)?,
                Some(current) => {
                    return Err(bad(format!(
                        "Cannot apply {} to a value of non-numeric type. {} has the field '{}' \
                         of non-numeric type {}",
                        u.op,
                        describe_doc(doc),
                        last_component(path),
                        type_name(current)
                    )))
                }
            };
            set_path(doc, path, new)
        }
        Action::MinMax { max, value } => {
            let replace = match get_path_exact(doc, path) {
                None => true,
                Some(current) => {
                    let ord = cmp_bson(value, current);
                    if *max {
                        ord == Ordering::Greater
                    } else {
                        ord == Ordering::Less
                    }
                }
            };
            if replace {
                set_path(doc, path, value.clone())
            } else {
                Ok(())
            }
        }
        Action::Push(spec) => {
            let items = current_array(doc, path, |other| {
                bad(format!(
                    "The field '{}' must be an array but is of type {} in document {}",
                    last_component(path),
                    type_name(other),
                    describe_doc(doc)
                ))
            })?;
            set_path(
                doc,
                path,
                Bson::Array(push(items.unwrap_or_default(), spec)),
            )
        }
        Action::AddToSet(values) => {
            let mut items = current_array(doc, path, |other| {
                bad(format!(
                    "Cannot apply $addToSet to non-array field. Field named '{}' has non-array \
                     type {}",
                    last_component(path),
                    type_name(other)
                ))
            })?
            .unwrap_or_default();
            for v in values {
                if !items.iter().any(|x| values_equal(x, v)) {
                    items.push(v.clone());
                }
            }
            set_path(doc, path, Bson::Array(items))
        }
        Action::Pull(cond) => {
            let not_array = |_: &Bson| bad("Cannot apply $pull to a non-array value");
            let Some(mut items) = current_array(doc, path, not_array)? else {
                return Ok(());
            };
            items.retain(|x| {
                let pulled = match (cond, x) {
                    (PullCond::Equal(v), _) => values_equal(x, v),
                    // A sub-filter only applies to document elements.
                    (PullCond::Doc(f), Bson::Document(d)) => f.matches(d),
                    (PullCond::Doc(_), _) => false,
                    (PullCond::Value(f), _) => f.matches(x),
                };
                !pulled
            });
            set_path(doc, path, Bson::Array(items))
        }
        Action::PullAll(values) => {
            let not_array = |_: &Bson| bad("Cannot apply $pull to a non-array value");
            let Some(mut items) = current_array(doc, path, not_array)? else {
                return Ok(());
            };
            items.retain(|x| !values.iter().any(|v| values_equal(x, v)));
            set_path(doc, path, Bson::Array(items))
        }
        Action::Pop { first } => {
            let Some(mut items) = current_array(doc, path, |other| {
                bad(format!(
                    "Path '{path}' contains an element of non-array type '{}'",
                    type_name(other)
                ))
            })?
            else {
                return Ok(());
            };
            if items.is_empty() {
                return Ok(());
            }
            if *first {
                items.remove(0);
            } else {
                items.pop();
            }
            set_path(doc, path, Bson::Array(items))
        }
        Action::Rename(dest) => {
            check_no_array(doc, path, "source")?;
            let Some(value) = get_path_exact(doc, path).cloned() else {
                return Ok(());
            };
            check_no_array(doc, dest, "destination")?;
            // MongoDB: an $unset of both names, then a $set of the new name.
            remove_path(doc, path);
            remove_path(doc, dest);
            set_path(doc, dest, value)
        }
        Action::CurrentDate { timestamp } => {
            let value = if *timestamp {
                let secs = now.timestamp_millis().div_euclid(1000);
                Bson::Timestamp(Timestamp {
                    time: u32::try_from(secs).unwrap_or(u32::MAX),
                    increment: 1,
                })
            } else {
                Bson::DateTime(now)
            };
            set_path(doc, path, value)
        }
    }
}

/// `$rename` may not go through arrays.
fn check_no_array(doc: &Document, path: &str, which: &str) -> EvalResult<()> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut current = doc;
    for (i, part) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
        match current.get(part) {
            Some(Bson::Document(d)) => current = d,
            Some(Bson::Array(_)) => {
                return Err(bad(format!(
                    "The {which} field cannot be an array element, '{path}' has an array field \
                     called '{}'",
                    parts[..=i].join(".")
                )))
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

fn push(mut items: Vec<Bson>, spec: &PushSpec) -> Vec<Bson> {
    let len = items.len();
    let pos = match spec.position {
        None => len,
        Some(p) if p < 0 => {
            len.saturating_sub(usize::try_from(p.unsigned_abs()).unwrap_or(usize::MAX))
        }
        Some(p) => usize::try_from(p).unwrap_or(usize::MAX).min(len),
    };
    items.splice(pos..pos, spec.each.iter().cloned());
    match &spec.sort {
        None => {}
        Some(PushSort::Whole { descending }) => items.sort_by(|a, b| {
            let ord = cmp_bson(a, b);
            if *descending {
                ord.reverse()
            } else {
                ord
            }
        }),
        Some(PushSort::Fields(sort)) => {
            // Non-document elements sort as documents without the fields.
            let empty = Document::new();
            items.sort_by(|a, b| cmp_by(doc_or(a, &empty), doc_or(b, &empty), sort));
        }
    }
    if let Some(n) = spec.slice {
        let keep = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
        if n >= 0 {
            items.truncate(keep);
        } else if keep < items.len() {
            items.drain(..items.len() - keep);
        }
    }
    items
}

fn doc_or<'a>(value: &'a Bson, fallback: &'a Document) -> &'a Document {
    match value {
        Bson::Document(d) => d,
        _ => fallback,
    }
}

fn zero_like(operand: &Bson) -> Bson {
    match operand {
        Bson::Int32(_) => Bson::Int32(0),
        Bson::Int64(_) => Bson::Int64(0),
        _ => Bson::Double(0.0),
    }
}

fn to_f64(b: &Bson) -> f64 {
    match b {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(f) => *f,
        _ => f64::NAN,
    }
}

/// `$inc`/`$mul` arithmetic with MongoDB's type promotion: int32 op int32 stays int32 unless
/// it overflows (then int64); int64 overflow is an error; any double makes a double.
fn arith(current: &Bson, operand: &Bson, mul: bool, op: &str, doc: &Document) -> EvalResult<Bson> {
    let overflow = || {
        bad(format!(
            "Failed to apply {op} operations to current value ({current}) for document {}",
            describe_doc(doc)
        ))
    };
    match (current, operand) {
        (Bson::Decimal128(_), _) | (_, Bson::Decimal128(_)) => Err(EvalError::Unsupported(
            format!("{op} on a Decimal128 value is not supported"),
        )),
        (Bson::Double(_), _) | (_, Bson::Double(_)) => {
            let (x, y) = (to_f64(current), to_f64(operand));
            Ok(Bson::Double(if mul { x * y } else { x + y }))
        }
        (Bson::Int32(x), Bson::Int32(y)) => {
            let small = if mul {
                x.checked_mul(*y)
            } else {
                x.checked_add(*y)
            };
            Ok(match small {
                Some(v) => Bson::Int32(v),
                None => {
                    let (x, y) = (i64::from(*x), i64::from(*y));
                    Bson::Int64(if mul { x * y } else { x + y })
                }
            })
        }
        _ => {
            let x = to_i64(current).ok_or_else(overflow)?;
            let y = to_i64(operand).ok_or_else(overflow)?;
            let v = if mul {
                x.checked_mul(y)
            } else {
                x.checked_add(y)
            };
            v.map(Bson::Int64).ok_or_else(overflow)
        }
    }
}

fn to_i64(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{bson, doc};

    /// Applies `update` to `doc` and returns the result and the changed flag.
    fn up(mut doc: Document, update: Document) -> (Document, bool) {
        let changed = apply_update(&mut doc, &update, false, DateTime::now()).unwrap();
        (doc, changed)
    }

    fn up_err(doc: Document, update: Document) -> EvalError {
        let mut d = doc.clone();
        let err = apply_update(&mut d, &update, false, DateTime::now()).unwrap_err();
        assert_eq!(d, doc, "a failed update must not modify the document");
        err
    }

    fn bad_msg(e: EvalError) -> String {
        match e {
            EvalError::BadValue(m) => m,
            other => panic!("expected BadValue, got {other:?}"),
        }
    }

    #[test]
    fn update_needs_operators() {
        let e = up_err(doc! {"a": 1}, doc! {"a": 2});
        assert!(bad_msg(e).contains("atomic operators"));
        assert!(matches!(up_err(doc! {}, doc! {}), EvalError::BadValue(_)));
        let e = up_err(doc! {}, doc! {"$set": {"a": 1}, "b": 1});
        assert!(bad_msg(e).starts_with("Unknown modifier: b"));
        let e = up_err(doc! {}, doc! {"$foo": {"a": 1}});
        assert!(bad_msg(e).starts_with("Unknown modifier: $foo"));
        assert!(
            bad_msg(up_err(doc! {}, doc! {"$set": 5})).starts_with("Modifiers operate on fields")
        );
        assert!(matches!(
            up_err(doc! {}, doc! {"$bit": {"a": {"and": 1}}}),
            EvalError::Unsupported(_)
        ));
        // An empty operator document is a no-op (MongoDB 5.0+).
        assert_eq!(up(doc! {"a": 1}, doc! {"$set": {}}), (doc! {"a": 1}, false));
    }

    #[test]
    fn set_creates_and_replaces_fields() {
        let (d, changed) = up(doc! {"_id": 1, "a": 1}, doc! {"$set": {"a": 2, "b.c": "x"}});
        assert!(changed);
        assert_eq!(d, doc! {"_id": 1, "a": 2, "b": {"c": "x"}});
        let (d, _) = up(doc! {"l": [1, 2]}, doc! {"$set": {"l.1": 9, "l.3": 7}});
        assert_eq!(d, doc! {"l": [1, 9, Bson::Null, 7]});
    }

    #[test]
    fn set_to_identical_value_is_not_a_change() {
        assert_eq!(
            up(doc! {"a": 1}, doc! {"$set": {"a": 1}}),
            (doc! {"a": 1}, false)
        );
        // A different numeric type is a change.
        let (d, changed) = up(doc! {"a": 1}, doc! {"$set": {"a": 1.0}});
        assert!(changed);
        assert_eq!(d.get("a"), Some(&Bson::Double(1.0)));
    }

    #[test]
    fn new_fields_are_added_in_lexicographic_order() {
        // MongoDB 5.0+: update operators process fields in lexicographic order.
        let (d, _) = up(
            doc! {"m": 0},
            doc! {"$set": {"z": 1, "b": 1}, "$inc": {"a": 1}},
        );
        assert_eq!(d.keys().collect::<Vec<_>>(), vec!["m", "a", "b", "z"]);
    }

    #[test]
    fn set_through_scalar_fails_atomically() {
        let e = up_err(doc! {"a": 5, "b": 1}, doc! {"$set": {"b": 2, "a.x": 1}});
        assert_eq!(bad_msg(e), "Cannot create field 'x' in element {a: 5}");
        let e = up_err(doc! {"a": [{"b": 1}]}, doc! {"$set": {"a.b": 2}});
        assert!(bad_msg(e).starts_with("Cannot create field 'b'"));
    }

    #[test]
    fn unset_removes_fields_and_nulls_array_elements() {
        let (d, changed) = up(
            doc! {"a": 1, "b": {"c": 1, "d": 2}},
            doc! {"$unset": {"a": "", "b.c": 1}},
        );
        assert!(changed);
        assert_eq!(d, doc! {"b": {"d": 2}});
        let (d, _) = up(doc! {"l": [1, 2, 3]}, doc! {"$unset": {"l.1": ""}});
        assert_eq!(d, doc! {"l": [1, Bson::Null, 3]});
        assert_eq!(
            up(doc! {"a": 1}, doc! {"$unset": {"zz": "", "a.b": ""}}),
            (doc! {"a": 1}, false)
        );
    }

    #[test]
    fn inc_type_promotion_and_missing_fields() {
        let (d, _) = up(
            doc! {"a": 1, "b": 1_i64, "c": 1.5},
            doc! {"$inc": {"a": 2, "b": 2, "c": 1, "n": 5}},
        );
        assert_eq!(d, doc! {"a": 3, "b": 3_i64, "c": 2.5, "n": 5});
        assert_eq!(d.get("a"), Some(&Bson::Int32(3)));
        let (d, _) = up(doc! {"a": 1}, doc! {"$inc": {"a": 0.5}});
        assert_eq!(d.get("a"), Some(&Bson::Double(1.5)));
        // int32 overflow is promoted to int64.
        let (d, _) = up(doc! {"a": i32::MAX}, doc! {"$inc": {"a": 1}});
        assert_eq!(d.get("a"), Some(&Bson::Int64(i64::from(i32::MAX) + 1)));
        let e = up_err(doc! {"_id": 1, "a": i64::MAX}, doc! {"$inc": {"a": 1}});
        assert!(bad_msg(e).starts_with("Failed to apply $inc operations"));
        let (d, changed) = up(doc! {"a": 1}, doc! {"$inc": {"a": 0}});
        assert!(!changed && d == doc! {"a": 1});
    }

    #[test]
    fn inc_rejects_non_numeric_values() {
        let e = up_err(doc! {"_id": 1, "a": "x"}, doc! {"$inc": {"a": 1}});
        let msg = bad_msg(e);
        assert!(
            msg.starts_with("Cannot apply $inc to a value of non-numeric type"),
            "{msg}"
        );
        assert!(msg.contains("'a'") && msg.contains("string"), "{msg}");
        let e = up_err(doc! {"a": 1}, doc! {"$inc": {"a": "1"}});
        assert!(bad_msg(e).starts_with("Cannot increment with non-numeric argument"));
    }

    #[test]
    fn mul_multiplies_and_creates_typed_zero() {
        let (d, _) = up(
            doc! {"a": 3, "b": 2.0},
            doc! {"$mul": {"a": 4, "b": 3, "c": 5_i64, "e": 2.5}},
        );
        assert_eq!(d, doc! {"a": 12, "b": 6.0, "c": 0_i64, "e": 0.0});
        assert_eq!(d.get("c"), Some(&Bson::Int64(0)));
        let (d, _) = up(doc! {"a": 100_000}, doc! {"$mul": {"a": 100_000}});
        assert_eq!(d.get("a"), Some(&Bson::Int64(10_000_000_000)));
    }

    #[test]
    fn min_and_max() {
        let d = doc! {"lo": 5, "hi": 5};
        let (d, changed) = up(d, doc! {"$min": {"lo": 3, "hi": 3}, "$max": {"new": 1}});
        assert!(changed);
        assert_eq!(d, doc! {"lo": 3, "hi": 3, "new": 1});
        let (d, changed) = up(d, doc! {"$max": {"lo": 1, "hi": 10}});
        assert!(changed);
        assert_eq!(d, doc! {"lo": 3, "hi": 10, "new": 1});
        assert!(!up(d.clone(), doc! {"$min": {"lo": 3.0}}).1);
        // Comparison follows BSON order across types: null < numbers < strings.
        let (d, _) = up(doc! {"a": 5}, doc! {"$max": {"a": "s"}});
        assert_eq!(d, doc! {"a": "s"});
    }

    #[test]
    fn push_values_and_each() {
        let (d, _) = up(doc! {"a": [1]}, doc! {"$push": {"a": 2, "n": {"x": 1}}});
        assert_eq!(d, doc! {"a": [1, 2], "n": [{"x": 1}]});
        let (d, _) = up(doc! {"a": [1]}, doc! {"$push": {"a": [2, 3]}});
        assert_eq!(d, doc! {"a": [1, [2, 3]]});
        let (d, _) = up(doc! {"a": [1]}, doc! {"$push": {"a": {"$each": [2, 3]}}});
        assert_eq!(d, doc! {"a": [1, 2, 3]});
        let e = up_err(doc! {"a": 1}, doc! {"$push": {"a": 2}});
        assert!(bad_msg(e).contains("must be an array but is of type int"));
    }

    #[test]
    fn push_modifiers_position_sort_slice() {
        let (d, _) = up(
            doc! {"a": [1, 2]},
            doc! {"$push": {"a": {"$each": [9], "$position": 1}}},
        );
        assert_eq!(d, doc! {"a": [1, 9, 2]});
        let (d, _) = up(
            doc! {"a": [1, 2]},
            doc! {"$push": {"a": {"$each": [9], "$position": -1}}},
        );
        assert_eq!(d, doc! {"a": [1, 9, 2]});
        let u = doc! {"$push": {"a": {"$each": [5, 0], "$sort": -1, "$slice": 3}}};
        assert_eq!(up(doc! {"a": [3, 1]}, u).0, doc! {"a": [5, 3, 1]});
        let u = doc! {"$push": {"a": {"$each": [], "$slice": -1}}};
        assert_eq!(up(doc! {"a": [3, 1]}, u).0, doc! {"a": [1]});
        let u = doc! {"$push": {"s": {"$each": [{"v": 2}], "$sort": {"v": 1}}}};
        assert_eq!(
            up(doc! {"s": [{"v": 3}, {"v": 1}]}, u).0,
            doc! {"s": [{"v": 1}, {"v": 2}, {"v": 3}]}
        );
        assert!(bad_msg(up_err(doc! {}, doc! {"$push": {"a": {"$each": 1}}})).contains("$each"));
        let e = up_err(doc! {}, doc! {"$push": {"a": {"$each": [], "$bad": 1}}});
        assert!(bad_msg(e).contains("Unrecognized clause in $push: $bad"));
        assert!(matches!(
            up_err(doc! {}, doc! {"$push": {"a": {"$each": [], "$sort": 2}}}),
            EvalError::BadValue(_)
        ));
    }

    #[test]
    fn add_to_set_skips_existing_values() {
        let (d, changed) = up(doc! {"a": [1, "x"]}, doc! {"$addToSet": {"a": 1.0}});
        assert!(!changed && d == doc! {"a": [1, "x"]});
        let (d, _) = up(
            doc! {"a": [1]},
            doc! {"$addToSet": {"a": {"$each": [2, 1, 2, 3]}, "b": 4}},
        );
        assert_eq!(d, doc! {"a": [1, 2, 3], "b": [4]});
        // A document value is added as a whole and compared with field order.
        let (d, _) = up(
            doc! {"a": [{"x": 1, "y": 2}]},
            doc! {"$addToSet": {"a": {"y": 2, "x": 1}}},
        );
        assert_eq!(d, doc! {"a": [{"x": 1, "y": 2}, {"y": 2, "x": 1}]});
        let e = up_err(doc! {"a": 1}, doc! {"$addToSet": {"a": 2}});
        assert!(bad_msg(e).starts_with("Cannot apply $addToSet to non-array field"));
    }

    #[test]
    fn pull_by_value_condition_and_subfilter() {
        let (d, _) = up(doc! {"a": [1, 2, 1.0, 3]}, doc! {"$pull": {"a": 1}});
        assert_eq!(d, doc! {"a": [2, 3]});
        let (d, _) = up(
            doc! {"a": [1, 6, 8, "x"]},
            doc! {"$pull": {"a": {"$gte": 6}}},
        );
        assert_eq!(d, doc! {"a": [1, "x"]});
        let (d, _) = up(
            doc! {"a": [1, 2, 3]},
            doc! {"$pull": {"a": {"$in": [1, 3]}}},
        );
        assert_eq!(d, doc! {"a": [2]});
        // A non-operator document is a query on document elements, not an exact match.
        let u = doc! {"$pull": {"r": {"s": 8, "i": "b"}}};
        let (d, _) = up(
            doc! {"r": [{"s": 8, "i": "b", "z": 1}, {"s": 8, "i": "c"}, 8]},
            u,
        );
        assert_eq!(d, doc! {"r": [{"s": 8, "i": "c"}, 8]});
        let u = doc! {"$pull": {"r": {"$or": [{"s": 1}, {"s": 2}]}}};
        assert_eq!(
            up(doc! {"r": [{"s": 1}, {"s": 2}, {"s": 3}]}, u).0,
            doc! {"r": [{"s": 3}]}
        );
        // An array value removes equal arrays only.
        assert_eq!(
            up(doc! {"a": [[1, 2], 1]}, doc! {"$pull": {"a": [1, 2]}}).0,
            doc! {"a": [1]}
        );
        assert_eq!(
            up(doc! {"b": 1}, doc! {"$pull": {"a": 1}}),
            (doc! {"b": 1}, false)
        );
        assert!(bad_msg(up_err(doc! {"a": 1}, doc! {"$pull": {"a": 1}})).contains("non-array"));
        assert!(matches!(
            up_err(doc! {}, doc! {"$pull": {"a": {"$foo": 1}}}),
            EvalError::Unsupported(_)
        ));
    }

    #[test]
    fn pull_all_and_pop() {
        let (d, _) = up(doc! {"a": [1, 2, 3, 2]}, doc! {"$pullAll": {"a": [2, 3]}});
        assert_eq!(d, doc! {"a": [1]});
        assert!(matches!(
            up_err(doc! {}, doc! {"$pullAll": {"a": 1}}),
            EvalError::BadValue(_)
        ));
        let (d, _) = up(
            doc! {"a": [1, 2, 3], "b": [1, 2, 3]},
            doc! {"$pop": {"a": 1, "b": -1}},
        );
        assert_eq!(d, doc! {"a": [1, 2], "b": [2, 3]});
        assert_eq!(
            up(doc! {"a": []}, doc! {"$pop": {"a": 1, "z": 1}}),
            (doc! {"a": []}, false)
        );
        let e = up_err(doc! {"a": [1]}, doc! {"$pop": {"a": 2}});
        assert_eq!(bad_msg(e), "$pop expects 1 or -1, found: 2");
        assert!(matches!(
            up_err(doc! {"a": 1}, doc! {"$pop": {"a": 1}}),
            EvalError::BadValue(_)
        ));
    }

    #[test]
    fn rename_moves_values() {
        let (d, _) = up(
            doc! {"a": 1, "b": 2, "c": {"d": 3}},
            doc! {"$rename": {"a": "z", "c.d": "c.e"}},
        );
        assert_eq!(d, doc! {"b": 2, "c": {"e": 3}, "z": 1});
        // An existing target is overwritten and moves to the end.
        let (d, _) = up(doc! {"a": 1, "b": 2, "c": 3}, doc! {"$rename": {"a": "b"}});
        assert_eq!(d, doc! {"c": 3, "b": 1});
        assert_eq!(d.keys().collect::<Vec<_>>(), vec!["c", "b"]);
        assert_eq!(
            up(doc! {"x": 1}, doc! {"$rename": {"a": "b"}}),
            (doc! {"x": 1}, false)
        );
        assert!(matches!(
            up_err(doc! {"a": 1}, doc! {"$rename": {"a": 5}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            up_err(doc! {"a": 1}, doc! {"$rename": {"a": "a"}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            up_err(doc! {"a": 1}, doc! {"$rename": {"a": "a.b"}}),
            EvalError::BadValue(_)
        ));
        let e = up_err(doc! {"a": [{"b": 1}]}, doc! {"$rename": {"a.0.b": "c"}});
        assert!(bad_msg(e).contains("array"));
    }

    #[test]
    fn current_date_sets_the_time_it_is_given_as_date_or_timestamp() {
        // The operation's time, as the storage's clock gives it (a test clock may be a day on).
        let now = DateTime::from_millis(1_900_000_123_456);
        let mut d = doc! {};
        let update = doc! {"$currentDate": {"a": true, "b": {"$type": "timestamp"}}};
        assert!(apply_update(&mut d, &update, false, now).unwrap());
        assert_eq!(d.get_datetime("a").unwrap(), &now);
        assert_eq!(d.get_timestamp("b").unwrap().time, 1_900_000_123);
        assert!(matches!(
            up_err(doc! {}, doc! {"$currentDate": {"a": {"$type": "x"}}}),
            EvalError::BadValue(_)
        ));
    }

    #[test]
    fn set_on_insert_only_when_inserting() {
        let u = doc! {"$set": {"a": 1}, "$setOnInsert": {"b": 2}};
        assert_eq!(up(doc! {}, u.clone()).0, doc! {"a": 1});
        let mut d = doc! {};
        assert!(apply_update(&mut d, &u, true, DateTime::now()).unwrap());
        assert_eq!(d, doc! {"a": 1, "b": 2});
        // When inserting, a newly set `_id` goes first.
        let mut d = doc! {"x": 1};
        apply_update(
            &mut d,
            &doc! {"$setOnInsert": {"_id": 7}},
            true,
            DateTime::now(),
        )
        .unwrap();
        assert_eq!(d.keys().next().map(String::as_str), Some("_id"));
    }

    #[test]
    fn id_is_immutable() {
        let msg = "Performing an update on the path '_id' would modify the immutable field '_id'";
        assert_eq!(
            bad_msg(up_err(doc! {"_id": 1}, doc! {"$set": {"_id": 2}})),
            msg
        );
        assert_eq!(
            bad_msg(up_err(doc! {"_id": 1}, doc! {"$unset": {"_id": ""}})),
            msg
        );
        assert_eq!(
            bad_msg(up_err(doc! {"_id": {"a": 1}}, doc! {"$set": {"_id.a": 2}})),
            msg
        );
        assert_eq!(
            bad_msg(up_err(doc! {"_id": 1}, doc! {"$rename": {"_id": "x"}})),
            msg
        );
        assert_eq!(
            up(doc! {"_id": 1}, doc! {"$set": {"_id": 1}}),
            (doc! {"_id": 1}, false)
        );
    }

    #[test]
    fn conflicting_paths_are_rejected() {
        let e = up_err(doc! {}, doc! {"$set": {"a": 1}, "$inc": {"a": 1}});
        assert_eq!(
            bad_msg(e),
            "Updating the path 'a' would create a conflict at 'a'"
        );
        let e = up_err(doc! {}, doc! {"$set": {"a.b": 1}, "$unset": {"a": 1}});
        assert_eq!(
            bad_msg(e),
            "Updating the path 'a' would create a conflict at 'a'"
        );
        let e = up_err(doc! {}, doc! {"$set": {"a": 1, "a.b.c": 1}});
        assert_eq!(
            bad_msg(e),
            "Updating the path 'a.b.c' would create a conflict at 'a'"
        );
        assert!(matches!(
            up_err(
                doc! {"a": 1},
                doc! {"$rename": {"a": "b"}, "$set": {"b": 1}}
            ),
            EvalError::BadValue(_)
        ));
        // Sibling paths sharing a name prefix do not conflict.
        assert_eq!(
            up(doc! {}, doc! {"$set": {"a": 1, "ab": 2}}).0,
            doc! {"a": 1, "ab": 2}
        );
    }

    #[test]
    fn invalid_and_positional_paths() {
        assert!(matches!(
            up_err(doc! {}, doc! {"$set": {"": 1}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            up_err(doc! {}, doc! {"$set": {"a..b": 1}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            up_err(doc! {}, doc! {"$set": {"$a": 1}}),
            EvalError::BadValue(_)
        ));
        assert!(matches!(
            up_err(doc! {"a": [1]}, doc! {"$set": {"a.$": 1}}),
            EvalError::Unsupported(_)
        ));
        assert!(matches!(
            up_err(doc! {"a": [1]}, doc! {"$inc": {"a.$[]": 1}}),
            EvalError::Unsupported(_)
        ));
    }

    #[test]
    fn upsert_seed_collects_equalities() {
        let f = doc! {
            "a": 1,
            "b.c": "x",
            "d": {"$eq": 5},
            "e": {"$gt": 1},
            "$and": [{"f": true}, {"g": {"$in": [1]}}],
            "$or": [{"h": 1}],
            "_id": 9,
            "lit": {"k": 1},
        };
        let seed = upsert_seed(&f);
        assert_eq!(
            seed,
            doc! {"_id": 9, "a": 1, "b": {"c": "x"}, "d": 5, "f": true, "lit": {"k": 1}}
        );
        assert_eq!(seed.keys().next().map(String::as_str), Some("_id"));
        assert_eq!(
            upsert_seed(&doc! {"a.b": 1, "a.c": 2}),
            doc! {"a": {"b": 1, "c": 2}}
        );
        assert_eq!(upsert_seed(&doc! {}), doc! {});
        // Seed then update, as an upsert does.
        let mut d = upsert_seed(&doc! {"k": "v", "n": {"$lt": 3}});
        apply_update(
            &mut d,
            &doc! {"$inc": {"n": 1}, "$setOnInsert": {"c": bson!([])}},
            true,
            DateTime::now(),
        )
        .unwrap();
        assert_eq!(d, doc! {"k": "v", "c": [], "n": 1});
    }

    #[test]
    fn operators_reach_array_elements_by_index() {
        let d = doc! {"a": [{"n": 1}, {"n": 2}]};
        let (d, _) = up(d, doc! {"$inc": {"a.1.n": 5}, "$set": {"a.0.m": "x"}});
        assert_eq!(d, doc! {"a": [{"n": 1, "m": "x"}, {"n": 7}]});
        let (d, _) = up(doc! {"a": [[1], [2]]}, doc! {"$push": {"a.1": 3}});
        assert_eq!(d, doc! {"a": [[1], [2, 3]]});
    }
}
