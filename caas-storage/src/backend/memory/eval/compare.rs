//! MongoDB's BSON comparison order across and within types.
//!
//! See <https://www.mongodb.com/docs/manual/reference/bson-type-comparison-order/>.

use mongodb::bson::{Bson, Document};
use std::cmp::Ordering;

/// Type bracket of `MinKey`.
pub const BRACKET_MIN_KEY: u8 = 0;
/// Type bracket of `Null` and `Undefined` (a missing field compares as null).
pub const BRACKET_NULL: u8 = 5;
/// Type bracket of all numeric types.
pub const BRACKET_NUMBER: u8 = 10;
/// Type bracket of `MaxKey`.
pub const BRACKET_MAX_KEY: u8 = 127;

/// The canonical type bracket of a value: values of different brackets compare by bracket;
/// values of one bracket compare by value. Numbers share one bracket, as do String and Symbol,
/// and Null and Undefined. The numbers follow MongoDB's `canonicalizeBSONType` (MinKey shifted
/// from -1 to 0).
pub fn type_bracket(b: &Bson) -> u8 {
    match b {
        Bson::MinKey => BRACKET_MIN_KEY,
        Bson::Null | Bson::Undefined => BRACKET_NULL,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => BRACKET_NUMBER,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => BRACKET_MAX_KEY,
    }
}

/// MongoDB's alias name of a value's BSON type, as used by `$type` and in error messages
/// (`"double"`, `"string"`, `"object"`, `"array"`, `"int"`, `"long"`, ...).
pub fn type_name(b: &Bson) -> &'static str {
    match b {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// A numeric value widened for comparison.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn as_num(b: &Bson) -> Option<Num> {
    match b {
        Bson::Int32(i) => Some(Num::Int(i64::from(*i))),
        Bson::Int64(i) => Some(Num::Int(*i)),
        Bson::Double(f) => Some(Num::Float(*f)),
        // Decimal128 has no arithmetic in the bson crate: compare through its f64 value
        // (exact for the common cases, approximate beyond f64 precision).
        Bson::Decimal128(d) => Some(Num::Float(d.to_string().parse().unwrap_or(f64::NAN))),
        _ => None,
    }
}

/// Compares two doubles with NaN equal to itself and smaller than every other number.
fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Exact comparison of an integer with a double (no rounding of large integers).
fn cmp_i64_f64(i: i64, f: f64) -> Ordering {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    // `t` is integral and within i64 range, so the cast is exact.
    match i.cmp(&(t as i64)) {
        Ordering::Equal if f > t => Ordering::Less,
        Ordering::Equal if f < t => Ordering::Greater,
        other => other,
    }
}

fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => cmp_f64(x, y),
        (Num::Int(x), Num::Float(y)) => cmp_i64_f64(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_i64_f64(y, x).reverse(),
    }
}

/// Compares two documents the way MongoDB compares embedded documents: pair by pair in
/// order, first by the values' type brackets, then by field name, then by value; a document
/// that runs out of fields first is smaller.
pub fn cmp_documents(a: &Document, b: &Document) -> Ordering {
    let mut ia = a.iter();
    let mut ib = b.iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let ord = type_bracket(va)
                    .cmp(&type_bracket(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| cmp_bson(va, vb));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

fn cmp_arrays(a: &[Bson], b: &[Bson]) -> Ordering {
    for (x, y) in a.iter().zip(b.iter()) {
        let ord = cmp_bson(x, y);
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

/// Total order over BSON values following MongoDB's comparison/sort order:
/// MinKey < Null = Undefined < numbers < String/Symbol < Document < Array < Binary <
/// ObjectId < Boolean < DateTime < Timestamp < RegularExpression < DbPointer < JavaScript
/// < JavaScript with scope < MaxKey. Numbers compare numerically across Int32, Int64, Double
/// and Decimal128 (NaN equals NaN and is below every other number); strings compare by bytes;
/// binary data by length, then subtype, then bytes.
pub fn cmp_bson(a: &Bson, b: &Bson) -> Ordering {
    let (ta, tb) = (type_bracket(a), type_bracket(b));
    if ta != tb {
        return ta.cmp(&tb);
    }
    match (a, b) {
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Bson::Document(x), Bson::Document(y)) => cmp_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => cmp_arrays(x, y),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .as_bytes()
            .cmp(y.pattern.as_bytes())
            .then_with(|| x.options.as_bytes().cmp(y.options.as_bytes())),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .as_bytes()
            .cmp(y.code.as_bytes())
            .then_with(|| cmp_documents(&x.scope, &y.scope)),
        (Bson::DbPointer(x), Bson::DbPointer(y)) => {
            // The bson crate keeps DbPointer fields private; order by their debug form.
            format!("{x:?}").cmp(&format!("{y:?}"))
        }
        _ => match (as_num(a), as_num(b)) {
            (Some(x), Some(y)) => cmp_num(x, y),
            // MinKey, MaxKey, Null and Undefined: one value per bracket.
            _ => Ordering::Equal,
        },
    }
}

/// Whether two values are equal under MongoDB's query equality: same type bracket and equal
/// value, so `Int32(1)`, `Int64(1)` and `Double(1.0)` are equal, and so are Null and Undefined.
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    type_bracket(a) == type_bracket(b) && cmp_bson(a, b) == Ordering::Equal
}

/// Whether a value is numeric (Int32, Int64, Double or Decimal128).
pub fn is_number(b: &Bson) -> bool {
    type_bracket(b) == BRACKET_NUMBER
}

/// Whether a value is a double or decimal NaN.
pub fn is_nan(b: &Bson) -> bool {
    matches!(as_num(b), Some(Num::Float(f)) if f.is_nan())
}

/// Strict identity: same types, same field order and same values (doubles by bit pattern).
/// This is what decides whether an update modified a document.
pub fn identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::Document(x), Bson::Document(y)) => identical_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
        }
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code == y.code && identical_documents(&x.scope, &y.scope)
        }
        _ => a == b,
    }
}

/// [`identical`] for documents: same keys in the same order with identical values.
pub fn identical_documents(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{
        doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Timestamp,
    };

    fn lt(a: Bson, b: Bson) {
        assert_eq!(cmp_bson(&a, &b), Ordering::Less, "{a:?} < {b:?}");
        assert_eq!(cmp_bson(&b, &a), Ordering::Greater, "{b:?} > {a:?}");
    }

    #[test]
    fn cross_type_order_follows_mongodb() {
        let ordered = vec![
            Bson::MinKey,
            Bson::Null,
            Bson::Int32(1_000_000),
            Bson::String(String::new()),
            Bson::Document(doc! {}),
            Bson::Array(vec![]),
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::DateTime(DateTime::from_millis(i64::MIN)),
            Bson::Timestamp(Timestamp {
                time: 0,
                increment: 0,
            }),
            Bson::RegularExpression(mongodb::bson::Regex {
                pattern: String::new(),
                options: String::new(),
            }),
            Bson::JavaScriptCode(String::new()),
            Bson::MaxKey,
        ];
        for pair in ordered.windows(2) {
            lt(pair[0].clone(), pair[1].clone());
        }
    }

    #[test]
    fn numbers_compare_across_types() {
        assert!(values_equal(&Bson::Int32(5), &Bson::Int64(5)));
        assert!(values_equal(&Bson::Int32(5), &Bson::Double(5.0)));
        let dec: Decimal128 = "5".parse().unwrap();
        assert!(values_equal(&Bson::Decimal128(dec), &Bson::Int32(5)));
        lt(Bson::Int64(4), Bson::Double(4.5));
        lt(Bson::Double(-1.5), Bson::Int32(-1));
        // 2^53 + 1 is not representable as a double: comparison must still be exact.
        lt(
            Bson::Double(9_007_199_254_740_992.0),
            Bson::Int64(9_007_199_254_740_993),
        );
        lt(Bson::Int64(i64::MAX), Bson::Double(f64::INFINITY));
        lt(Bson::Double(f64::NEG_INFINITY), Bson::Int64(i64::MIN));
        assert!(!values_equal(&Bson::Int32(1), &Bson::Boolean(true)));
        assert!(!values_equal(&Bson::Int32(1), &Bson::String("1".into())));
    }

    #[test]
    fn nan_is_smallest_number_and_equals_itself() {
        lt(Bson::Double(f64::NAN), Bson::Double(f64::NEG_INFINITY));
        lt(Bson::Double(f64::NAN), Bson::Int64(i64::MIN));
        lt(Bson::Null, Bson::Double(f64::NAN));
        assert!(values_equal(
            &Bson::Double(f64::NAN),
            &Bson::Double(f64::NAN)
        ));
        assert!(is_nan(&Bson::Double(f64::NAN)) && !is_nan(&Bson::Int32(0)));
    }

    #[test]
    fn null_and_undefined_are_equal() {
        assert!(values_equal(&Bson::Null, &Bson::Undefined));
        lt(Bson::MinKey, Bson::Undefined);
    }

    #[test]
    fn strings_compare_bytewise_and_symbols_alike() {
        lt(Bson::String("B".into()), Bson::String("a".into()));
        lt(Bson::String("a".into()), Bson::String("ab".into()));
        assert!(values_equal(
            &Bson::Symbol("x".into()),
            &Bson::String("x".into())
        ));
    }

    #[test]
    fn documents_compare_pairwise_type_then_name_then_value() {
        lt(Bson::Document(doc! {"a": 1}), Bson::Document(doc! {"a": 2}));
        lt(Bson::Document(doc! {"a": 1}), Bson::Document(doc! {"b": 0}));
        lt(
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 1}),
        );
        // The field type is compared before the field name (MongoDB docs, "Objects").
        lt(
            Bson::Document(doc! {"z": 1}),
            Bson::Document(doc! {"a": "x"}),
        );
        // Field order matters.
        assert!(!values_equal(
            &Bson::Document(doc! {"a": 1, "b": 2}),
            &Bson::Document(doc! {"b": 2, "a": 1})
        ));
        assert!(values_equal(
            &Bson::Document(doc! {"a": 1}),
            &Bson::Document(doc! {"a": 1.0})
        ));
    }

    #[test]
    fn arrays_compare_elementwise_then_length() {
        lt(
            Bson::Array(vec![1.into(), 2.into()]),
            Bson::Array(vec![1.into(), 3.into()]),
        );
        lt(
            Bson::Array(vec![1.into()]),
            Bson::Array(vec![1.into(), 0.into()]),
        );
        lt(Bson::Array(vec![5.into()]), Bson::Array(vec!["a".into()]));
    }

    #[test]
    fn binary_compares_length_then_subtype_then_bytes() {
        let bin = |st: BinarySubtype, bytes: Vec<u8>| Bson::Binary(Binary { subtype: st, bytes });
        lt(
            bin(BinarySubtype::UserDefined(0x80), vec![9]),
            bin(BinarySubtype::Generic, vec![0, 0]),
        );
        lt(
            bin(BinarySubtype::Generic, vec![9]),
            bin(BinarySubtype::Function, vec![0]),
        );
        lt(
            bin(BinarySubtype::Generic, vec![1]),
            bin(BinarySubtype::Generic, vec![2]),
        );
    }

    #[test]
    fn scalar_types_order_within_bracket() {
        lt(Bson::Boolean(false), Bson::Boolean(true));
        lt(
            Bson::DateTime(DateTime::from_millis(-1)),
            Bson::DateTime(DateTime::from_millis(0)),
        );
        lt(
            Bson::Timestamp(Timestamp {
                time: 1,
                increment: 9,
            }),
            Bson::Timestamp(Timestamp {
                time: 2,
                increment: 0,
            }),
        );
        lt(
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::ObjectId(ObjectId::from_bytes([1; 12])),
        );
    }

    #[test]
    fn identical_is_strict_about_types_and_order() {
        assert!(!identical(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(identical(&Bson::Double(f64::NAN), &Bson::Double(f64::NAN)));
        assert!(!identical_documents(
            &doc! {"a": 1, "b": 2},
            &doc! {"b": 2, "a": 1}
        ));
        assert!(identical_documents(
            &doc! {"a": [1, {"b": 2}]},
            &doc! {"a": [1, {"b": 2}]}
        ));
        assert_eq!(type_name(&Bson::Int64(1)), "long");
    }

    #[test]
    fn decimal128_compares_with_other_numbers() {
        let d = |s: &str| Bson::Decimal128(s.parse::<Decimal128>().unwrap());
        lt(Bson::Int32(1), d("1.5"));
        lt(d("1.05E+3"), Bson::Double(1051.0));
        lt(d("NaN"), Bson::Int32(i32::MIN));
        assert!(values_equal(&d("2.50"), &Bson::Double(2.5)));
    }
}
