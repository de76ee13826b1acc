//! The checked model the code generator works from: every name resolved, every default
//! applied, and only the parts that passed the checks (the id and tenant fields included: a
//! model without them generates a placeholder API that never builds, since their absence is
//! reported).

use proc_macro2::TokenStream;
use syn::{Ident, Visibility};

use super::ast::Field;
use super::attr::{CacheStrategy, Consistency, Direction};

/// One entity, ready to generate.
pub struct Model<'a> {
    /// The struct's name.
    pub ident: &'a Ident,
    /// The struct's visibility, shared by the generated types.
    pub vis: &'a Visibility,
    /// The path of the caas-storage crate (`::caas_storage` unless `crate = "..."`).
    pub root: TokenStream,
    /// MongoDB database.
    pub database: String,
    /// MongoDB collection.
    pub collection: String,
    /// Consistency model.
    pub consistency: Consistency,
    /// Schema version.
    pub schema_version: u32,
    /// The steps from each older version, ordered by `from`.
    pub schema_steps: Vec<StepModel>,
    /// Whether deletes are soft.
    pub soft_delete: bool,
    /// Whether the entity is `append_only` (no `Mutable` impl: inserted and read only).
    pub append_only: bool,
    /// Cache policy.
    pub cache: Option<CacheModel>,
    /// Outbox policy.
    pub outbox: Option<OutboxModel>,
    /// Stored fields, in declaration order.
    pub fields: Vec<&'a Field<'a>>,
    /// The id field; `None` when there is none (reported): the generated code is then a
    /// placeholder with `()` ids, which the reported error keeps from ever being built.
    pub id: Option<&'a Field<'a>>,
    /// The tenant field; `None` when there is none (reported), as for `id`.
    pub tenant: Option<&'a Field<'a>>,
    /// Whether the tenant field has the required type `String` (true without a tenant field).
    pub tenant_is_string: bool,
    /// The version field, if any (and valid).
    pub version: Option<&'a Field<'a>>,
    /// The `created_at` field, if any (and valid).
    pub created_at: Option<&'a Field<'a>>,
    /// The `updated_at` field, if any (and valid).
    pub updated_at: Option<&'a Field<'a>>,
    /// Secret fields.
    pub secrets: Vec<&'a Field<'a>>,
    /// Declared indexes, struct-level first, then field-level, in order.
    pub indexes: Vec<IndexModel<'a>>,
    /// Finder methods of the repository type.
    pub finders: Vec<Finder<'a>>,
    /// Whether writes may be queued (`Queueable`): no `outbox(...)` and no `secret` field was
    /// written, valid or not (an entity meant to have an outbox or a secret is not queueable
    /// even while the attribute is rejected). Queued writes cannot record events atomically,
    /// and the queue keeps whole documents in Redis, where secret fields must not go.
    pub queueable: bool,
}

impl Model<'_> {
    /// `#root::__private_{major}_{minor}_{patch}`, the path every generated reference to the
    /// runtime goes through (see [`private_module`]).
    pub fn private(&self) -> TokenStream {
        let root = &self.root;
        let module = private_module();
        quote::quote!(#root::#module)
    }

    /// The entity's name without a `r#` prefix.
    pub fn name(&self) -> String {
        super::ast::unraw(self.ident)
    }
}

/// The runtime's hidden module for this release, `__private_0_1_0` for 0.1.0, as serde names
/// its `__private{patch}`: the derive and the runtime are released together with `=` version
/// pins, and a derive of one release cannot compile against the runtime of another.
pub fn private_module() -> Ident {
    Ident::new(
        &private_module_name(env!("CARGO_PKG_VERSION")),
        proc_macro2::Span::call_site(),
    )
}

/// `__private_` and the version with every character that cannot be in an identifier turned
/// into `_`: `0.1.0` -> `__private_0_1_0`, `0.2.0-rc.1` -> `__private_0_2_0_rc_1`.
fn private_module_name(version: &str) -> String {
    let version: String = version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__private_{version}")
}

/// One `#[migrate(...)]` that passed the checks.
pub struct StepModel {
    /// The version it upgrades from.
    pub from: u32,
    /// The upgrade function.
    pub up: syn::Path,
    /// The downgrade function, if any.
    pub down: Option<syn::Path>,
    /// `up` as written, for errors and the ledger.
    pub name: String,
    /// FNV-1a of `Entity:from->to:up`, as the ledger records it.
    pub checksum: String,
}

/// `cache(...)`, defaults applied.
pub struct CacheModel {
    /// Redis entry TTL, milliseconds.
    pub ttl_ms: u64,
    /// Extra random TTL, milliseconds.
    pub jitter_ms: u64,
    /// Write strategy.
    pub strategy: CacheStrategy,
    /// In-process tier: TTL in milliseconds and capacity.
    pub local: Option<(u64, u64)>,
}

/// `outbox(...)`, defaults applied.
pub struct OutboxModel {
    /// Kafka topic.
    pub topic: String,
    /// Event type of inserts.
    pub insert: Option<String>,
    /// Event type of updates and replaces.
    pub update: Option<String>,
    /// Event type of deletes.
    pub delete: Option<String>,
}

/// One index, tenant key prepended where it applies.
pub struct IndexModel<'a> {
    /// Explicit or MongoDB-default name.
    pub name: String,
    /// Stored names and directions of every key, tenant first where it applies.
    pub keys: Vec<(String, Direction)>,
    /// The declared keys (without the tenant).
    pub fields: Vec<(&'a Field<'a>, Direction)>,
    /// Unique index.
    pub unique: bool,
    /// TTL, milliseconds.
    pub ttl_ms: Option<u64>,
}

/// What a finder returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinderKind {
    /// `find_by_...`: at most one entity (unique index).
    Find,
    /// `list_by_...`: a page of entities.
    List,
}

/// One generated finder method.
pub struct Finder<'a> {
    /// Method name, e.g. `find_by_email`.
    pub method: String,
    /// What it returns.
    pub kind: FinderKind,
    /// Fields compared for equality, in order.
    pub eq: Vec<&'a Field<'a>>,
    /// Sort key of a list finder over a compound index.
    pub sort: Option<(&'a Field<'a>, Direction)>,
    /// Name of the index it is generated from.
    pub index: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_module_is_named_per_release() {
        assert_eq!(private_module_name("0.1.0"), "__private_0_1_0");
        assert_eq!(private_module_name("1.22.333"), "__private_1_22_333");
        assert_eq!(private_module_name("0.2.0-rc.1"), "__private_0_2_0_rc_1");
        assert_eq!(
            private_module().to_string(),
            private_module_name(env!("CARGO_PKG_VERSION"))
        );
    }
}
