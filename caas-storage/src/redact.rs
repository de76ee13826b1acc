//! Keeping credentials and secret values out of text: connection strings with their passwords
//! masked, the Kafka properties that hold secrets, MongoDB commands reduced to their shape, and
//! duplicate-key messages without the key's values.
//!
//! Everything the runtime prints (its `Debug` output, serialized configuration, error strings
//! and log lines) goes through here where it could carry one; `tests/tests/secrets.rs` scans
//! all of them for planted values.

use mongodb::bson::{Bson, Document};

/// What replaces a hidden value.
pub(crate) const MASK: &str = "***";

/// `url` with the password of its user info masked: `redis://:***@cache:6379/`,
/// `mongodb://app:***@db-1,db-2/`. Text that is not a URL comes back unchanged.
pub(crate) fn url(url: &str) -> String {
    match password_span(url) {
        Some((start, end)) => format!("{}{MASK}{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

/// The password in `url`'s user info, if it has one.
pub(crate) fn password(url: &str) -> Option<&str> {
    password_span(url).map(|(start, end)| &url[start..end])
}

/// Byte range of the password in `scheme://user:password@host...`.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let after_scheme = url.find("://")? + 3;
    let rest = &url[after_scheme..];
    // The user info ends at the last `@` before the path (passwords may contain `@`).
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let colon = rest[..at].find(':')?;
    let (start, end) = (after_scheme + colon + 1, after_scheme + at);
    (start < end).then_some((start, end))
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, ...).
pub(crate) fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "ssl.key",
        "oauthbearer.config",
        "keystore",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `text` with every one of `secrets` (non-empty) masked.
pub(crate) fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s, MASK);
        }
    }
    out
}

/// A command or filter with every value replaced by its BSON type name: what a log line may
/// show of a document without showing the data (`{ email: "string", age: { $gt: "int32" } }`).
pub(crate) fn shape(doc: &Document) -> Document {
    doc.iter().map(|(k, v)| (k.clone(), shape_of(v))).collect()
}

fn shape_of(v: &Bson) -> Bson {
    match v {
        Bson::Document(d) => Bson::Document(shape(d)),
        Bson::Array(a) => Bson::Array(a.iter().take(3).map(shape_of).collect()),
        other => Bson::String(format!("{:?}", other.element_type()).to_ascii_lowercase()),
    }
}

/// A duplicate-key message without the duplicated values: MongoDB appends `dup key: { email:
/// "a@example.com" }`, which would put personal data (or a secret) into error strings.
pub(crate) fn duplicate_key_message(message: &str) -> String {
    match message.find(" dup key:") {
        Some(i) => format!("{} dup key: {{ {MASK} }}", &message[..i]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn urls_lose_their_passwords_and_nothing_else() {
        assert_eq!(url("redis://:pw@cache:6379/1"), "redis://:***@cache:6379/1");
        assert_eq!(
            url("mongodb://app:p@ss:w@db-1:27017,db-2/?replicaSet=rs"),
            "mongodb://app:***@db-1:27017,db-2/?replicaSet=rs"
        );
        assert_eq!(url("rediss://user:s3cret@h/"), "rediss://user:***@h/");
        assert_eq!(url("redis://cache:6379/"), "redis://cache:6379/");
        assert_eq!(url("mongodb://app@db/"), "mongodb://app@db/");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(password("redis://:pw@cache/"), Some("pw"));
    }

    #[test]
    fn secret_properties_commands_and_duplicates() {
        assert!(is_secret_property("sasl.password"));
        assert!(is_secret_property("ssl.key.pem"));
        assert!(is_secret_property("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_property("security.protocol"));
        assert!(!is_secret_property("sasl.username"));
        let s = shape(&doc! { "insert": "users", "documents": [ { "email": "a@b", "n": 3 } ] });
        assert_eq!(
            s,
            doc! { "insert": "string", "documents": [ { "email": "string", "n": "int32" } ] }
        );
        assert_eq!(
            duplicate_key_message(
                "E11000 duplicate key error collection: a.users index: email_1 dup key: { email: \"x@y\" }"
            ),
            "E11000 duplicate key error collection: a.users index: email_1 dup key: { *** }"
        );
        assert_eq!(scrub("a pw b pw", ["pw", ""]), "a *** b ***");
    }
}
