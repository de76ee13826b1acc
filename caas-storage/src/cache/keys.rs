//! Cache key layout.
//!
//! `{prefix}{<tenant>:<Entity>:<id>}` holds the entry; `...:gen` its invalidation generation,
//! `...:load` the stampede lock. The braces are a Redis Cluster hash tag: all keys of one entry
//! live in one slot, so the scripts that touch several of them work on a cluster too.

use mongodb::bson::Bson;

use crate::document;
use crate::tenant::TenantId;

/// The keys of one cached entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryKeys {
    /// The entry itself.
    pub data: String,
    /// Invalidation generation: bumped by every write, checked by every put after a miss.
    pub generation: String,
    /// Stampede lock: held by the one loader of a missing entry.
    pub load: String,
}

/// The tag identifying one entry, e.g. `tenant_1:User:u42` (ids rendered by
/// [`document::id_as_text`]).
pub(crate) fn tag(tenant: &TenantId, entity: &str, id: &Bson) -> String {
    format!("{tenant}:{entity}:{}", document::id_as_text(id))
}

pub(crate) fn entry(prefix: &str, tag: &str) -> EntryKeys {
    let data = format!("{prefix}{{{tag}}}");
    EntryKeys {
        generation: format!("{data}:gen"),
        load: format!("{data}:load"),
        data,
    }
}

/// SCAN pattern of every entry of `entity` in `tenant` (or in every tenant).
pub(crate) fn pattern(prefix: &str, tenant: Option<&TenantId>, entity: &str) -> String {
    let tenant = tenant.map(TenantId::as_str).unwrap_or("*");
    format!("{}{{{tenant}:{entity}:*", glob_escape(prefix))
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The tag of a data key (`{prefix}{tag}`), or `None` for keys of other shapes.
pub(crate) fn tag_of<'k>(prefix: &str, data_key: &'k str) -> Option<&'k str> {
    data_key
        .strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// The entity name inside a tag (`tenant:Entity:id`).
pub(crate) fn entity_of(tag: &str) -> Option<&str> {
    let mut parts = tag.splitn(3, ':');
    parts.next()?;
    parts.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let t = TenantId::new("acme").unwrap();
        let k = entry("svc:", &tag(&t, "User", &Bson::String("u:1".into())));
        assert_eq!(k.data, "svc:{acme:User:u:1}");
        assert_eq!(k.generation, "svc:{acme:User:u:1}:gen");
        assert_eq!(k.load, "svc:{acme:User:u:1}:load");
        assert_eq!(entity_of("acme:User:u:1"), Some("User"));
        assert_eq!(tag_of("svc:", &k.data), Some("acme:User:u:1"));
        assert_eq!(tag_of("svc:", &k.generation), None);
        assert_eq!(pattern("a*", Some(&t), "User"), "a\\*{acme:User:*");
        assert_eq!(pattern("", None, "User"), "{*:User:*");
    }
}
