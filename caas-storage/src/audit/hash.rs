//! The chain's hash: SHA-256 over a canonical, versioned encoding of an entry's fields.
//!
//! The encoding (documented in `docs/audit.md`, re-implemented by `docs/audit_verify.py`):
//! the line `caas-audit-v1\n`, then for each field, in this order, its UTF-8 bytes' length in
//! decimal, `:`, the bytes and `\n`:
//!
//! 1. tenant
//! 2. sequence (decimal, no padding)
//! 3. audit id
//! 4. action
//! 5. actor
//! 6. target
//! 7. details (the stored canonical JSON text)
//! 8. created_at (milliseconds since the Unix epoch, decimal)
//! 9. previous hash (64 lowercase hex digits; 64 zeros for sequence 1)
//!
//! Length prefixes make the encoding unambiguous whatever the fields contain.

use sha2::{Digest, Sha256};

/// The previous hash of a chain's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The first line of the encoding: names its version, so that a change of encoding can never
/// verify against the old one.
const ENCODING: &[u8] = b"caas-audit-v1\n";

/// The fields the hash covers, borrowed.
pub(crate) struct Hashed<'a> {
    pub tenant: &'a str,
    pub sequence: u64,
    pub audit_id: &'a str,
    pub action: &'a str,
    pub actor: &'a str,
    pub target: &'a str,
    pub details: &'a str,
    pub created_at_ms: i64,
    pub previous_hash: &'a str,
}

impl Hashed<'_> {
    /// The canonical encoding.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let sequence = self.sequence.to_string();
        let created_at = self.created_at_ms.to_string();
        let fields: [&str; 9] = [
            self.tenant,
            &sequence,
            self.audit_id,
            self.action,
            self.actor,
            self.target,
            self.details,
            &created_at,
            self.previous_hash,
        ];
        let mut out = ENCODING.to_vec();
        for f in fields {
            out.extend_from_slice(f.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(f.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Lowercase hex SHA-256 of the canonical encoding.
    pub(crate) fn hash(&self) -> String {
        crate::hex::encode(&Sha256::digest(self.encode()))
    }
}

/// `value` as canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant
/// whitespace, strings and numbers as `serde_json` writes them. The audit log stores this text,
/// so verifiers hash the stored text and never re-serialize.
pub(crate) fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(previous_hash: &str) -> Hashed<'_> {
        Hashed {
            tenant: "t1",
            sequence: 1,
            audit_id: "a",
            action: "user.login",
            actor: "u1",
            target: "session:9",
            details: "{}",
            created_at_ms: 1_700_000_000_000,
            previous_hash,
        }
    }

    #[test]
    fn the_encoding_is_length_prefixed_and_versioned() {
        let e = sample(GENESIS_HASH).encode();
        let text = String::from_utf8(e).unwrap();
        assert!(text.starts_with("caas-audit-v1\n2:t1\n1:1\n1:a\n10:user.login\n"));
        assert!(text.ends_with(&format!("13:1700000000000\n64:{GENESIS_HASH}\n")));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = sample(GENESIS_HASH).hash();
        assert_eq!(base.len(), 64);
        let mut moved = sample(GENESIS_HASH);
        moved.sequence = 2;
        assert_ne!(moved.hash(), base);
        // A byte moved from one field to the next: the length prefixes tell them apart.
        let mut shifted = sample(GENESIS_HASH);
        shifted.action = "user.logi";
        shifted.actor = "nu1";
        assert_ne!(shifted.hash(), base);
        let other = "1".repeat(64);
        assert_ne!(sample(&other).hash(), base);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": {"d": [true, null, "x"], "c": 2.5}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":2.5,"d":[true,null,"x"]},"b":1}"#
        );
    }
}
