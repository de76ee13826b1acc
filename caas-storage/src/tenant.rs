//! [`TenantId`]: the tenant every repository call is scoped to.
//!
//! A tenant id is validated once, when it is made, so that everything downstream (filters,
//! inserted documents, cache keys, outbox headers) can use it without escaping. Generated
//! repositories take `&TenantId` in every call; there is no scoped call without one.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest tenant id accepted, in bytes.
pub const MAX_TENANT_LEN: usize = 128;

/// A validated tenant id: 1 to 128 bytes of ASCII letters, digits, `_`, `-` and `.`.
///
/// Those characters keep tenant ids safe inside cache keys (`{tenant}:{entity}:{id}`), Kafka
/// headers and log lines. Cloning is cheap.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates `id`.
    pub fn new(id: impl AsRef<str>) -> Result<Self> {
        let id = id.as_ref();
        let reason = if id.is_empty() {
            Some("it is empty")
        } else if id.len() > MAX_TENANT_LEN {
            Some("it is longer than 128 bytes")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            Some("only ASCII letters, digits, `_`, `-` and `.` are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidTenant {
                value: crate::error::echo(id),
                reason,
            }),
            None => Ok(TenantId(Arc::from(id))),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({:?})", &*self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TenantId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TenantId::new(s)
    }
}

impl Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_safe_ids_and_rejects_the_rest() {
        for ok in ["tenant_123", "acme-corp", "a.b", "X"] {
            assert_eq!(TenantId::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a:b", "a b", "a*", "t\n", "ünï", &"x".repeat(129)] {
            assert!(
                matches!(TenantId::new(bad), Err(Error::InvalidTenant { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(serde_json::from_str::<TenantId>("\"a:b\"").is_err());
    }

    #[test]
    fn errors_echo_a_bounded_prefix_of_the_input() {
        let long = "x:".repeat(512);
        let text = TenantId::new(&long).unwrap_err().to_string();
        assert!(text.len() < 200, "{} bytes: {text}", text.len());
        assert!(text.contains("1024 bytes"), "{text}");
        let text = TenantId::new("a b").unwrap_err().to_string();
        assert!(
            text.contains("\"a b\""),
            "short input is shown whole: {text}"
        );
        assert_eq!(
            serde_json::from_str::<TenantId>("\"t1\"").unwrap(),
            TenantId::new("t1").unwrap()
        );
    }
}
