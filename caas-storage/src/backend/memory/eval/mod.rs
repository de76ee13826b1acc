//! MongoDB's query language evaluated over documents in memory, as pure functions: BSON
//! comparison order (`compare`), dotted paths with array traversal (`path`), filters
//! (`filter`), update operators (`update`), projections (`project`) and sorts (`sort`).
//!
//! Unsupported (refused with [`error::EvalError::Unsupported`], never silently ignored):
//! regular expressions, `$where`/`$expr`/`$text`/geo operators, positional update paths,
//! projection expressions.

pub(crate) mod compare;
pub(crate) mod error;
pub(crate) mod filter;
pub(crate) mod path;
pub(crate) mod project;
pub(crate) mod sort;
pub(crate) mod update;
