//! Cache key layout.
//!
//! An entity's cache identity is its namespace and name, `<database>.<collection>:<Entity>`:
//! two entities with the same struct name in different databases never share entries. One
//! entry is `{prefix}{<tenant>:<identity>:<id>}`, its invalidation generation `...:gen`, its
//! stampede lock `...:load`. The braces are a Redis Cluster hash tag: all keys of one entry live
//! in one slot, so the scripts that touch several of them work on a cluster too.

use mongodb::bson::Bson;

use crate::document;
use crate::entity::EntityMeta;
use crate::tenant::TenantId;

/// Separates the identity from the tag in an invalidation message.
const MESSAGE_SEPARATOR: char = '\u{1f}';

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

/// `<database>.<collection>:<Entity>`: what the cache knows an entity by.
pub(crate) fn identity(meta: &EntityMeta) -> String {
    format!("{}.{}:{}", meta.database, meta.collection, meta.name)
}

/// The tag of one entry, e.g. `tenant_1:caas_auth.users:User:u42` (ids rendered by
/// [`document::id_as_text`]).
pub(crate) fn tag(tenant: &TenantId, identity: &str, id: &Bson) -> String {
    format!("{tenant}:{identity}:{}", document::id_as_text(id))
}

pub(crate) fn entry(prefix: &str, tag: &str) -> EntryKeys {
    let data = format!("{prefix}{{{tag}}}");
    EntryKeys {
        generation: format!("{data}:gen"),
        load: format!("{data}:load"),
        data,
    }
}

/// SCAN pattern of every entry of the entity `identity` in `tenant` (or in every tenant).
pub(crate) fn pattern(prefix: &str, tenant: Option<&TenantId>, identity: &str) -> String {
    let tenant = tenant.map(TenantId::as_str).unwrap_or("*");
    format!(
        "{}{{{tenant}:{}:*",
        glob_escape(prefix),
        glob_escape(identity)
    )
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

/// What a write publishes for other instances' in-process tiers: the identity and the tag.
pub(crate) fn message(identity: &str, tag: &str) -> String {
    format!("{identity}{MESSAGE_SEPARATOR}{tag}")
}

/// `(identity, tag)` of an invalidation message.
pub(crate) fn parse_message(message: &str) -> Option<(&str, &str)> {
    message.split_once(MESSAGE_SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_and_name_the_namespace() {
        let t = TenantId::new("acme").unwrap();
        let tag = tag(&t, "caas_auth.users:User", &Bson::String("u:1".into()));
        let k = entry("svc:", &tag);
        assert_eq!(k.data, "svc:{acme:caas_auth.users:User:u:1}");
        assert_eq!(k.generation, "svc:{acme:caas_auth.users:User:u:1}:gen");
        assert_eq!(k.load, "svc:{acme:caas_auth.users:User:u:1}:load");
        assert_eq!(tag_of("svc:", &k.data), Some(tag.as_str()));
        assert_eq!(tag_of("svc:", &k.generation), None);
        assert_eq!(
            pattern("a*", Some(&t), "caas_auth.users:User"),
            "a\\*{acme:caas_auth.users:User:*"
        );
        assert_eq!(pattern("", None, "d.c:U"), "{*:d.c:U:*");
        let m = message("d.c:U", &tag);
        assert_eq!(parse_message(&m), Some(("d.c:U", tag.as_str())));
    }
}
