//! Error type shared by all evaluation functions.

use std::fmt;

/// An error raised while evaluating a filter, update, projection or sort specification.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// The specification uses a MongoDB feature this library does not implement
    /// (or an operator MongoDB does not know, for query operators).
    Unsupported(String),
    /// The specification or the document is invalid, as MongoDB would reject it.
    BadValue(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Unsupported(msg) | EvalError::BadValue(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for EvalError {}

/// Result alias used throughout the crate.
pub type EvalResult<T> = Result<T, EvalError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_bare_message() {
        let e = EvalError::Unsupported("unknown operator: $foo".into());
        assert_eq!(e.to_string(), "unknown operator: $foo");
        let e = EvalError::BadValue("Cannot apply $inc to a value of non-numeric type".into());
        assert_eq!(
            e.to_string(),
            "Cannot apply $inc to a value of non-numeric type"
        );
    }
}
