//! Attribute parsing: `#[repository(...)]`, `#[index(...)]`, `#[migrate(...)]`, `#[id]`,
//! `#[tenant]` and the parts
//! of `#[serde(...)]` that decide stored names, into a typed model with the span of every value.
//!
//! Errors local to one attribute (unknown or repeated keys, values of the wrong kind, malformed
//! durations, empty names, a group missing its required key) are reported here, and parsing goes
//! on with the next key so that every mistake is reported at once. Rules that relate several
//! attributes to each other live in [`check`](super::check).

use std::fmt::Display;

use proc_macro2::{Span, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, Expr, Ident, Lit, LitStr, Meta, Token};

use super::case::RenameRule;
use super::ctxt::Ctxt;
use super::duration;
use super::suggest;

/// Keys of the struct-level `#[repository(...)]`.
pub const STRUCT_KEYS: &[&str] = &[
    "database",
    "collection",
    "consistency",
    "cache",
    "schema_version",
    "outbox",
    "soft_delete",
    "append_only",
    "crate",
];
/// Keys of the field-level `#[repository(...)]`.
pub const FIELD_KEYS: &[&str] = &[
    "id",
    "tenant",
    "secret",
    "version",
    "created_at",
    "updated_at",
    "index",
    "unique",
];
/// Keys of `cache(...)`.
pub const CACHE_KEYS: &[&str] = &["ttl", "jitter", "strategy", "local"];
/// Keys of `cache(local(...))`.
pub const LOCAL_KEYS: &[&str] = &["ttl", "capacity"];
/// Keys of `outbox(...)`.
pub const OUTBOX_KEYS: &[&str] = &["topic", "insert", "update", "delete"];
/// Keys of `#[index(...)]`.
pub const INDEX_KEYS: &[&str] = &["keys", "unique", "ttl", "name"];
/// Keys of `#[migrate(...)]`.
pub const MIGRATE_KEYS: &[&str] = &["from", "up", "down"];

/// A parsed value and the span of the tokens it came from.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

/// One key of an attribute: not written, written but rejected (already reported), or written
/// with a usable value.
#[derive(Debug, Clone, Default)]
pub enum Slot<T> {
    /// The key was not written.
    #[default]
    Absent,
    /// The key was written (at this span) but its value was rejected; the error is reported.
    Invalid(Span),
    /// The key was written with this value.
    Given(Spanned<T>),
}

impl<T> Slot<T> {
    /// The value, if the key was written with a usable one.
    pub fn get(&self) -> Option<&Spanned<T>> {
        match self {
            Slot::Given(v) => Some(v),
            Slot::Absent | Slot::Invalid(_) => None,
        }
    }

    /// The value itself, if usable.
    pub fn value(&self) -> Option<&T> {
        self.get().map(|s| &s.value)
    }

    /// Whether the key was written at all (usable or not).
    pub fn is_written(&self) -> bool {
        !matches!(self, Slot::Absent)
    }

    /// Where the key was written, usable or not.
    pub fn span(&self) -> Option<Span> {
        match self {
            Slot::Absent => None,
            Slot::Invalid(span) => Some(*span),
            Slot::Given(v) => Some(v.span),
        }
    }

    /// Records the key written at `key`: `value` is `None` when its value was rejected. A key
    /// written twice is an error at its second occurrence.
    fn record(&mut self, cx: &Ctxt, key: &syn::Path, within: &str, value: Option<Spanned<T>>) {
        if self.is_written() {
            cx.error_spanned_by(key, format!("duplicate `{}` in {within}", path_text(key)));
            return;
        }
        *self = match value {
            Some(v) => Slot::Given(v),
            None => Slot::Invalid(span_of(key)),
        };
    }
}

/// The consistency models of `consistency = ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// `strong` (the default).
    Strong,
    /// `eventual`.
    Eventual,
    /// `causal`.
    Causal,
    /// `read_your_writes`.
    ReadYourWrites,
}

impl Consistency {
    const ALL: &'static [(&'static str, Consistency)] = &[
        ("strong", Consistency::Strong),
        ("eventual", Consistency::Eventual),
        ("causal", Consistency::Causal),
        ("read_your_writes", Consistency::ReadYourWrites),
    ];

    /// The attribute spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("strong", |(name, _)| name)
    }
}

/// The write strategies of `cache(strategy = ...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStrategy {
    /// `cache_aside` (the default).
    CacheAside,
    /// `write_through`.
    WriteThrough,
    /// `write_behind`.
    WriteBehind,
}

impl CacheStrategy {
    const ALL: &'static [(&'static str, CacheStrategy)] = &[
        ("cache_aside", CacheStrategy::CacheAside),
        ("write_through", CacheStrategy::WriteThrough),
        ("write_behind", CacheStrategy::WriteBehind),
    ];

    /// The attribute spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("cache_aside", |(name, _)| name)
    }
}

/// Index key direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `asc` (the default).
    Asc,
    /// `desc`.
    Desc,
}

/// `cache(...)`.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// `ttl = "30m"` (required), in milliseconds.
    pub ttl: Slot<u64>,
    /// `jitter = "1m"`, in milliseconds.
    pub jitter: Slot<u64>,
    /// `strategy = write_through`.
    pub strategy: Slot<CacheStrategy>,
    /// `local(...)`.
    pub local: Slot<LocalCache>,
    /// Keys suggested for misspelled ones: not reported missing as well.
    pub misspelled: Vec<&'static str>,
}

/// `cache(local(...))`.
#[derive(Debug, Clone, Default)]
pub struct LocalCache {
    /// `ttl = "5s"` (required), in milliseconds.
    pub ttl: Slot<u64>,
    /// `capacity = 10_000` (required).
    pub capacity: Slot<u64>,
    /// Keys suggested for misspelled ones: not reported missing as well.
    pub misspelled: Vec<&'static str>,
}

/// `outbox(...)`.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// `topic = "platform.events"` (required).
    pub topic: Slot<String>,
    /// `insert = "user.created"`.
    pub insert: Slot<String>,
    /// `update = "user.updated"`.
    pub update: Slot<String>,
    /// `delete = "user.deleted"`.
    pub delete: Slot<String>,
    /// Keys suggested for misspelled ones: not reported missing as well.
    pub misspelled: Vec<&'static str>,
}

/// One key of `keys(...)`: a Rust field name and a direction.
#[derive(Debug, Clone)]
pub struct IndexKey {
    /// The field as written.
    pub ident: Ident,
    /// `asc` unless `desc` follows the name.
    pub direction: Direction,
}

/// A struct-level `#[index(...)]`.
#[derive(Debug, Clone)]
pub struct Index {
    /// The `index` path of the attribute, where index-wide errors point.
    pub span: Span,
    /// `keys(...)` (required, non-empty).
    pub keys: Slot<Vec<IndexKey>>,
    /// `unique`.
    pub unique: Slot<()>,
    /// `ttl = "30d"`, in milliseconds.
    pub ttl: Slot<u64>,
    /// `name = "custom"`.
    pub name: Slot<String>,
    /// Keys suggested for misspelled ones: not reported missing as well.
    pub misspelled: Vec<&'static str>,
}

/// A struct-level `#[migrate(...)]`: the schema step `from -> from + 1`.
#[derive(Debug, Clone)]
pub struct Migrate {
    /// `from = 1` (required, at least 1).
    pub from: Slot<u32>,
    /// `up = v1_to_v2` (required): the function doing the step.
    pub up: Slot<syn::Path>,
    /// `down = v2_to_v1`: the function undoing it.
    pub down: Slot<syn::Path>,
    /// Keys suggested for misspelled ones: not reported missing as well.
    pub misspelled: Vec<&'static str>,
}

/// Everything written on the struct.
#[derive(Debug, Default)]
pub struct Container {
    /// Span of the first struct-level `#[repository]` path, where "missing key" errors point.
    pub repository_span: Option<Span>,
    /// `database = "..."` (required).
    pub database: Slot<String>,
    /// `collection = "..."` (required).
    pub collection: Slot<String>,
    /// `consistency = strong`.
    pub consistency: Slot<Consistency>,
    /// `cache(...)`.
    pub cache: Slot<Cache>,
    /// `schema_version = 2`.
    pub schema_version: Slot<u32>,
    /// `outbox(...)`.
    pub outbox: Slot<Outbox>,
    /// `soft_delete`.
    pub soft_delete: Slot<()>,
    /// `append_only`.
    pub append_only: Slot<()>,
    /// `crate = "path"`.
    pub krate: Slot<syn::Path>,
    /// Every `#[index(...)]`, in order.
    pub indexes: Vec<Index>,
    /// Every `#[migrate(...)]`, in order.
    pub migrations: Vec<Migrate>,
    /// `#[serde(rename_all = "...")]`.
    pub rename_all: RenameRule,
    /// `#[serde(default)]` on the struct.
    pub serde_default: bool,
    /// Where `#[serde(deny_unknown_fields)]` is, if the struct has it.
    pub deny_unknown_fields: Option<Span>,
    /// Keys suggested for misspelled ones: not reported missing as well.
    pub misspelled: Vec<&'static str>,
}

/// Why serde does not store a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// `#[serde(skip)]`.
    Skip,
    /// `#[serde(skip_serializing)]`.
    SkipSerializing,
    /// `#[serde(flatten)]`.
    Flatten,
}

impl NotStored {
    /// The serde attribute, as written.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Skip => "#[serde(skip)]",
            NotStored::SkipSerializing => "#[serde(skip_serializing)]",
            NotStored::Flatten => "#[serde(flatten)]",
        }
    }
}

/// Everything written on one field.
#[derive(Debug, Default)]
pub struct Field {
    /// `#[repository(id)]` or `#[id]`.
    pub id: Slot<()>,
    /// `#[repository(tenant)]` or `#[tenant]`.
    pub tenant: Slot<()>,
    /// `#[repository(secret)]`.
    pub secret: Slot<()>,
    /// `#[repository(version)]`.
    pub version: Slot<()>,
    /// `#[repository(created_at)]`.
    pub created_at: Slot<()>,
    /// `#[repository(updated_at)]`.
    pub updated_at: Slot<()>,
    /// `#[repository(index)]`.
    pub index: Slot<()>,
    /// `#[repository(unique)]`.
    pub unique: Slot<()>,
    /// `#[serde(rename = "...")]` (the serialized name).
    pub rename: Option<String>,
    /// `#[serde(skip)]`, `#[serde(skip_serializing)]` or `#[serde(flatten)]`.
    pub not_stored: Option<NotStored>,
    /// `#[serde(default)]` on the field.
    pub serde_default: bool,
    /// `#[serde(with = "...")]` or `#[serde(serialize_with = "...")]`: the stored form is not the
    /// field type's own, so typed filters and patches cannot serialize values of the field.
    pub custom_serialize: bool,
    /// Keys suggested for misspelled ones: not reported missing as well.
    pub misspelled: Vec<&'static str>,
}

// ---- struct level ------------------------------------------------------------------------

/// Parses the attributes of the struct.
pub fn parse_container(cx: &Ctxt, attrs: &[Attribute]) -> Container {
    let mut c = Container::default();
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("repository") {
            c.repository_span.get_or_insert_with(|| span_of(path));
            if let Some(()) = require_list(
                cx,
                attr,
                "expected #[repository(database = \"...\", collection = \"...\", ...)]",
            ) {
                if let Err(e) = attr.parse_nested_meta(|meta| container_key(cx, &mut c, &meta)) {
                    cx.syn_error(e);
                }
            }
        } else if path.is_ident("index") {
            if let Some(index) = parse_index(cx, attr) {
                c.indexes.push(index);
            }
        } else if path.is_ident("migrate") {
            if let Some(step) = parse_migrate(cx, attr) {
                c.migrations.push(step);
            }
        } else if path.is_ident("id") || path.is_ident("tenant") {
            let key = path_text(path);
            cx.error_spanned_by(
                attr,
                format!(
                    "#[{key}] is a field attribute: put it on the {key} field, not on the struct"
                ),
            );
        } else if path.is_ident("serde") {
            serde_container(&mut c, attr);
        }
    }
    c
}

fn container_key(cx: &Ctxt, c: &mut Container, meta: &ParseNestedMeta) -> syn::Result<()> {
    const WITHIN: &str = "#[repository(...)]";
    let key = path_text(&meta.path);
    match key.as_str() {
        "database" => {
            let v = string_value(cx, meta, "database = \"caas_auth\"")?
                .and_then(|s| validate(cx, s, check_database));
            c.database.record(cx, &meta.path, WITHIN, v);
        }
        "collection" => {
            let v = string_value(cx, meta, "collection = \"users\"")?
                .and_then(|s| validate(cx, s, check_collection));
            c.collection.record(cx, &meta.path, WITHIN, v);
        }
        "consistency" => {
            let v = choice_value(
                cx,
                meta,
                "consistency model",
                Consistency::ALL,
                "consistency = strong",
            )?;
            c.consistency.record(cx, &meta.path, WITHIN, v);
        }
        "cache" => {
            let v = group(cx, meta, "cache(ttl = \"30m\")", |cx, meta| {
                let mut cache = Cache::default();
                meta.parse_nested_meta(|m| cache_key(cx, &mut cache, &m))?;
                if !cache.ttl.is_written() && !cache.misspelled.contains(&"ttl") {
                    cx.error_spanned_by(
                        &meta.path,
                        "cache(...) needs `ttl`, how long a Redis entry lives, e.g. \
                         `cache(ttl = \"30m\")`",
                    );
                }
                Ok(cache)
            })?;
            c.cache.record(cx, &meta.path, WITHIN, v);
        }
        "schema_version" => {
            let v = int_value::<u32>(cx, meta, "schema_version = 2")?.and_then(|n| {
                if n.value == 0 {
                    cx.error_at(
                        n.span,
                        "schema_version starts at 1: write `schema_version = 1` or more",
                    );
                    None
                } else {
                    Some(n)
                }
            });
            c.schema_version.record(cx, &meta.path, WITHIN, v);
        }
        "outbox" => {
            let v = group(
                cx,
                meta,
                "outbox(topic = \"platform.events\")",
                |cx, meta| {
                    let mut outbox = Outbox::default();
                    meta.parse_nested_meta(|m| outbox_key(cx, &mut outbox, &m))?;
                    if !outbox.topic.is_written() && !outbox.misspelled.contains(&"topic") {
                        let events_given = [&outbox.insert, &outbox.update, &outbox.delete]
                            .iter()
                            .any(|s| s.is_written());
                        let why = if events_given {
                            "outbox event types need a `topic` to be published to"
                        } else {
                            "outbox(...) needs `topic`"
                        };
                        cx.error_spanned_by(
                            &meta.path,
                            format!("{why}, e.g. `outbox(topic = \"platform.events\")`"),
                        );
                    }
                    Ok(outbox)
                },
            )?;
            c.outbox.record(cx, &meta.path, WITHIN, v);
        }
        "soft_delete" => {
            let v = flag(cx, meta)?;
            c.soft_delete.record(cx, &meta.path, WITHIN, v);
        }
        "append_only" => {
            let v = flag(cx, meta)?;
            c.append_only.record(cx, &meta.path, WITHIN, v);
        }
        "crate" => {
            let v = string_value(cx, meta, "crate = \"caas_storage\"")?.and_then(|s| {
                match syn::parse_str::<syn::Path>(&s.value) {
                    Ok(path) => Some(Spanned {
                        value: path,
                        span: s.span,
                    }),
                    Err(_) => {
                        cx.error_at(
                            s.span,
                            format!(
                                "`crate` takes the path of the caas-storage crate, e.g. \
                                 `crate = \"caas_storage\"`; `{}` is not a path",
                                s.value
                            ),
                        );
                        None
                    }
                }
            });
            c.krate.record(cx, &meta.path, WITHIN, v);
        }
        _ if FIELD_KEYS.contains(&key.as_str()) => {
            let hint = if key == "index" || key == "unique" {
                format!(
                    "; struct-level indexes are declared with #[index(keys(...){})]",
                    if key == "unique" { ", unique" } else { "" }
                )
            } else {
                String::new()
            };
            cx.error_spanned_by(
                &meta.path,
                format!(
                    "`{key}` is a field attribute: put #[repository({key})] on the field, not on \
                     the struct{hint}"
                ),
            );
            skip_rest(meta.input)?;
        }
        _ => {
            c.misspelled
                .extend(unknown_key(cx, meta, &key, WITHIN, STRUCT_KEYS)?);
        }
    }
    Ok(())
}

fn cache_key(cx: &Ctxt, cache: &mut Cache, meta: &ParseNestedMeta) -> syn::Result<()> {
    const WITHIN: &str = "cache(...)";
    let key = path_text(&meta.path);
    match key.as_str() {
        "ttl" => {
            let v = duration_value(cx, meta, "ttl", false)?;
            cache.ttl.record(cx, &meta.path, WITHIN, v);
        }
        "jitter" => {
            let v = duration_value(cx, meta, "jitter", true)?;
            cache.jitter.record(cx, &meta.path, WITHIN, v);
        }
        "strategy" => {
            let v = choice_value(
                cx,
                meta,
                "cache strategy",
                CacheStrategy::ALL,
                "strategy = write_through",
            )?;
            cache.strategy.record(cx, &meta.path, WITHIN, v);
        }
        "local" => {
            let v = group(
                cx,
                meta,
                "local(ttl = \"5s\", capacity = 10_000)",
                |cx, meta| {
                    let mut local = LocalCache::default();
                    meta.parse_nested_meta(|m| local_key(cx, &mut local, &m))?;
                    for (written, key) in [
                        (local.ttl.is_written(), "ttl"),
                        (local.capacity.is_written(), "capacity"),
                    ] {
                        if !written && !local.misspelled.contains(&key) {
                            cx.error_spanned_by(
                                &meta.path,
                                format!(
                                    "local(...) needs `{key}`, e.g. `local(ttl = \"5s\", \
                                     capacity = 10_000)`"
                                ),
                            );
                        }
                    }
                    Ok(local)
                },
            )?;
            cache.local.record(cx, &meta.path, WITHIN, v);
        }
        _ => cache
            .misspelled
            .extend(unknown_key(cx, meta, &key, WITHIN, CACHE_KEYS)?),
    }
    Ok(())
}

fn local_key(cx: &Ctxt, local: &mut LocalCache, meta: &ParseNestedMeta) -> syn::Result<()> {
    const WITHIN: &str = "local(...)";
    let key = path_text(&meta.path);
    match key.as_str() {
        "ttl" => {
            let v = duration_value(cx, meta, "ttl", false)?;
            local.ttl.record(cx, &meta.path, WITHIN, v);
        }
        "capacity" => {
            let v = int_value::<u64>(cx, meta, "capacity = 10_000")?.and_then(|n| {
                if n.value == 0 {
                    cx.error_at(
                        n.span,
                        "local(capacity = 0) could hold nothing: give at least 1 entry, or leave \
                         out local(...)",
                    );
                    None
                } else {
                    Some(n)
                }
            });
            local.capacity.record(cx, &meta.path, WITHIN, v);
        }
        _ => local
            .misspelled
            .extend(unknown_key(cx, meta, &key, WITHIN, LOCAL_KEYS)?),
    }
    Ok(())
}

fn outbox_key(cx: &Ctxt, outbox: &mut Outbox, meta: &ParseNestedMeta) -> syn::Result<()> {
    const WITHIN: &str = "outbox(...)";
    let key = path_text(&meta.path);
    let slot = match key.as_str() {
        "topic" => {
            let v = string_value(cx, meta, "topic = \"platform.events\"")?
                .and_then(|s| validate(cx, s, check_topic));
            outbox.topic.record(cx, &meta.path, WITHIN, v);
            return Ok(());
        }
        "insert" => &mut outbox.insert,
        "update" => &mut outbox.update,
        "delete" => &mut outbox.delete,
        _ => {
            let s = unknown_key(cx, meta, &key, WITHIN, OUTBOX_KEYS)?;
            outbox.misspelled.extend(s);
            return Ok(());
        }
    };
    let example = format!("{key} = \"user.{key}d\"");
    let v = string_value(cx, meta, &example)?.and_then(|s| {
        validate(cx, s, |v| {
            if v.is_empty() {
                Err(format!(
                    "the `{key}` event type is empty: name it, e.g. `{example}`, or leave it out \
                     so {key}s record no event"
                ))
            } else {
                Ok(())
            }
        })
    });
    slot.record(cx, &meta.path, WITHIN, v);
    Ok(())
}

/// Parses one `#[index(...)]`.
fn parse_index(cx: &Ctxt, attr: &Attribute) -> Option<Index> {
    require_list(
        cx,
        attr,
        "expected #[index(keys(field, ...), ...)], e.g. `#[index(keys(email), unique)]`",
    )?;
    let mut index = Index {
        span: span_of(attr.path()),
        keys: Slot::Absent,
        unique: Slot::Absent,
        ttl: Slot::Absent,
        name: Slot::Absent,
        misspelled: Vec::new(),
    };
    if let Err(e) = attr.parse_nested_meta(|meta| index_key(cx, &mut index, &meta)) {
        cx.syn_error(e);
        return None;
    }
    if !index.keys.is_written() && !index.misspelled.contains(&"keys") {
        cx.error_spanned_by(
            attr.path(),
            "#[index(...)] needs `keys(...)`, the fields it covers, e.g. \
             `#[index(keys(status, created_at desc))]`",
        );
    }
    Some(index)
}

fn index_key(cx: &Ctxt, index: &mut Index, meta: &ParseNestedMeta) -> syn::Result<()> {
    const WITHIN: &str = "#[index(...)]";
    let key = path_text(&meta.path);
    match key.as_str() {
        "keys" => {
            let v = group(cx, meta, "keys(email)", |cx, meta| {
                let content;
                syn::parenthesized!(content in meta.input);
                let keys = index_keys(cx, &content)?;
                if keys.is_empty() {
                    cx.error_spanned_by(
                        &meta.path,
                        "keys() is empty: list the fields of the index, e.g. `keys(email)` or \
                         `keys(status, created_at desc)`",
                    );
                }
                Ok(keys)
            })?
            .filter(|keys| !keys.value.is_empty());
            index.keys.record(cx, &meta.path, WITHIN, v);
        }
        "unique" => {
            let v = flag(cx, meta)?;
            index.unique.record(cx, &meta.path, WITHIN, v);
        }
        "ttl" => {
            let v = duration_value(cx, meta, "ttl", false)?;
            index.ttl.record(cx, &meta.path, WITHIN, v);
        }
        "name" => {
            let v = string_value(cx, meta, "name = \"by_status\"")?.and_then(|s| {
                validate(cx, s, |v| {
                    if v.is_empty() {
                        Err("the index name is empty: name it, or leave `name` out for \
                             MongoDB's default name"
                            .to_owned())
                    } else {
                        Ok(())
                    }
                })
            });
            index.name.record(cx, &meta.path, WITHIN, v);
        }
        _ => index
            .misspelled
            .extend(unknown_key(cx, meta, &key, WITHIN, INDEX_KEYS)?),
    }
    Ok(())
}

/// Parses one `#[migrate(...)]`.
fn parse_migrate(cx: &Ctxt, attr: &Attribute) -> Option<Migrate> {
    const EXAMPLE: &str = "#[migrate(from = 1, up = v1_to_v2)]";
    require_list(
        cx,
        attr,
        &format!("expected #[migrate(from = ..., up = ..., down = ...)], e.g. `{EXAMPLE}`"),
    )?;
    let mut step = Migrate {
        from: Slot::Absent,
        up: Slot::Absent,
        down: Slot::Absent,
        misspelled: Vec::new(),
    };
    if let Err(e) = attr.parse_nested_meta(|meta| migrate_key(cx, &mut step, &meta)) {
        cx.syn_error(e);
        return None;
    }
    for (written, key, what) in [
        (
            step.from.is_written(),
            "from",
            "the schema version the step upgrades from",
        ),
        (
            step.up.is_written(),
            "up",
            "the function that upgrades a stored document",
        ),
    ] {
        if !written && !step.misspelled.contains(&key) {
            cx.error_spanned_by(
                attr.path(),
                format!("#[migrate(...)] needs `{key}`, {what}, e.g. `{EXAMPLE}`"),
            );
        }
    }
    Some(step)
}

fn migrate_key(cx: &Ctxt, step: &mut Migrate, meta: &ParseNestedMeta) -> syn::Result<()> {
    const WITHIN: &str = "#[migrate(...)]";
    let key = path_text(&meta.path);
    match key.as_str() {
        "from" => {
            let v = int_value::<u32>(cx, meta, "from = 1")?.and_then(|n| {
                if n.value == 0 {
                    cx.error_at(
                        n.span,
                        "schema versions start at 1: the first step is `from = 1` (1 -> 2)",
                    );
                    None
                } else {
                    Some(n)
                }
            });
            step.from.record(cx, &meta.path, WITHIN, v);
        }
        "up" | "down" => {
            let example = if key == "up" {
                "up = v1_to_v2"
            } else {
                "down = v2_to_v1"
            };
            let v = expr_value(cx, meta, example)?.and_then(|expr| match expr {
                Expr::Path(p) if p.qself.is_none() => Some(Spanned {
                    span: span_of(&p.path),
                    value: p.path,
                }),
                other => {
                    cx.error_spanned_by(
                        &other,
                        format!(
                            "`{key}` names a function `fn(&mut Document) -> StepResult`, found \
                             {}: write `{example}`",
                            describe(&other)
                        ),
                    );
                    None
                }
            });
            let slot = if key == "up" {
                &mut step.up
            } else {
                &mut step.down
            };
            slot.record(cx, &meta.path, WITHIN, v);
        }
        _ => step
            .misspelled
            .extend(unknown_key(cx, meta, &key, WITHIN, MIGRATE_KEYS)?),
    }
    Ok(())
}

/// `a, b desc, c asc` inside `keys(...)`.
fn index_keys(cx: &Ctxt, input: ParseStream) -> syn::Result<Vec<IndexKey>> {
    let mut keys = Vec::new();
    while !input.is_empty() {
        let ident: Ident = input.parse()?;
        let mut direction = Direction::Asc;
        if input.peek(Ident) {
            let dir: Ident = input.parse()?;
            if dir == "asc" {
                direction = Direction::Asc;
            } else if dir == "desc" {
                direction = Direction::Desc;
            } else {
                cx.error_spanned_by(
                    &dir,
                    format!(
                        "unknown direction `{dir}` for `{ident}`: write `{ident} asc` or \
                         `{ident} desc` (ascending is the default)"
                    ),
                );
            }
        }
        keys.push(IndexKey { ident, direction });
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(keys)
}

// ---- field level -------------------------------------------------------------------------

/// Parses the attributes of one field.
pub fn parse_field(cx: &Ctxt, field: &syn::Field) -> Field {
    let mut f = Field::default();
    for attr in &field.attrs {
        let path = attr.path();
        if path.is_ident("repository") {
            if let Some(()) = require_list(
                cx,
                attr,
                &format!(
                    "expected #[repository(...)] with one or more of: {}",
                    FIELD_KEYS.join(", ")
                ),
            ) {
                if let Err(e) = attr.parse_nested_meta(|meta| field_key(cx, &mut f, &meta)) {
                    cx.syn_error(e);
                }
            }
        } else if path.is_ident("id") || path.is_ident("tenant") {
            let key = path_text(path);
            if let Meta::Path(_) = &attr.meta {
                let slot = if key == "id" {
                    &mut f.id
                } else {
                    &mut f.tenant
                };
                slot.record(
                    cx,
                    path,
                    "this field's attributes",
                    Some(Spanned {
                        value: (),
                        span: span_of(path),
                    }),
                );
            } else {
                cx.error_spanned_by(
                    &attr.meta,
                    format!("#[{key}] takes no arguments: write #[{key}]"),
                );
            }
        } else if path.is_ident("index") {
            cx.error_spanned_by(
                attr,
                "#[index(...)] is a struct-level attribute; on a field write \
                 #[repository(index)], or #[repository(unique)] for a unique index",
            );
        } else if path.is_ident("migrate") {
            cx.error_spanned_by(
                attr,
                "#[migrate(...)] is a struct-level attribute: put the schema steps on the \
                 struct, next to `schema_version`",
            );
        } else if path.is_ident("serde") {
            serde_field(&mut f, attr);
        }
    }
    f
}

fn field_key(cx: &Ctxt, f: &mut Field, meta: &ParseNestedMeta) -> syn::Result<()> {
    const WITHIN: &str = "this field's attributes";
    let key = path_text(&meta.path);
    let slot = match key.as_str() {
        "id" => &mut f.id,
        "tenant" => &mut f.tenant,
        "secret" => &mut f.secret,
        "version" => &mut f.version,
        "created_at" => &mut f.created_at,
        "updated_at" => &mut f.updated_at,
        "index" => &mut f.index,
        "unique" => &mut f.unique,
        _ if STRUCT_KEYS.contains(&key.as_str()) => {
            cx.error_spanned_by(
                &meta.path,
                format!(
                    "`{key}` is a struct-level key: put it in the #[repository(...)] on the \
                     struct; on a field the keys are: {}",
                    FIELD_KEYS.join(", ")
                ),
            );
            return skip_rest(meta.input);
        }
        _ => {
            let s = unknown_key(cx, meta, &key, "a field's #[repository(...)]", FIELD_KEYS)?;
            f.misspelled.extend(s);
            return Ok(());
        }
    };
    let v = flag(cx, meta)?;
    slot.record(cx, &meta.path, WITHIN, v);
    Ok(())
}

// ---- serde -------------------------------------------------------------------------------

/// The parts of a struct's `#[serde(...)]` that decide stored names. Malformed serde attributes
/// are serde's to report; they are ignored here.
fn serde_container(c: &mut Container, attr: &Attribute) {
    let _ignored = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("rename_all") {
            if let Some(rule) = serialize_name(&meta)?.and_then(|s| RenameRule::from_name(&s)) {
                c.rename_all = rule;
            }
        } else {
            if meta.path.is_ident("default") {
                c.serde_default = true;
            }
            if meta.path.is_ident("deny_unknown_fields") {
                c.deny_unknown_fields = Some(span_of(&meta.path));
            }
            skip_rest(meta.input)?;
        }
        Ok(())
    });
}

/// The parts of a field's `#[serde(...)]` that decide whether and how it is stored.
fn serde_field(f: &mut Field, attr: &Attribute) {
    let _ignored = attr.parse_nested_meta(|meta| {
        let key = path_text(&meta.path);
        match key.as_str() {
            "rename" => {
                if let Some(name) = serialize_name(&meta)? {
                    f.rename = Some(name);
                }
                return Ok(());
            }
            "skip" => f.not_stored = Some(NotStored::Skip),
            "skip_serializing" => {
                f.not_stored.get_or_insert(NotStored::SkipSerializing);
            }
            "flatten" => f.not_stored = Some(NotStored::Flatten),
            "default" => f.serde_default = true,
            "with" | "serialize_with" => f.custom_serialize = true,
            _ => {}
        }
        skip_rest(meta.input)
    });
}

/// `= "x"` or `(serialize = "x", deserialize = "y")`: the serialized name.
fn serialize_name(meta: &ParseNestedMeta) -> syn::Result<Option<String>> {
    if meta.input.peek(Token![=]) {
        let s: LitStr = meta.value()?.parse()?;
        return Ok(Some(s.value()));
    }
    let mut name = None;
    if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|m| {
            if m.path.is_ident("serialize") {
                let s: LitStr = m.value()?.parse()?;
                name = Some(s.value());
                Ok(())
            } else {
                skip_rest(m.input)
            }
        })?;
    }
    Ok(name)
}

// ---- values ------------------------------------------------------------------------------

/// `#[name(...)]` is required: reports `message` at the attribute otherwise.
fn require_list(cx: &Ctxt, attr: &Attribute, message: &str) -> Option<()> {
    match &attr.meta {
        Meta::List(_) => Some(()),
        Meta::Path(_) | Meta::NameValue(_) => {
            cx.error_spanned_by(attr, message);
            None
        }
    }
}

/// Reports an unknown key with a suggestion and the accepted keys, and skips its value.
/// Returns the suggestion, so that the key it stands for is not also reported missing.
fn unknown_key(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    key: &str,
    within: &str,
    accepted: &'static [&'static str],
) -> syn::Result<Option<&'static str>> {
    let suggestion = suggest::closest(key, accepted.iter().copied());
    let hint = suggestion
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    cx.error_spanned_by(
        &meta.path,
        format!(
            "unknown key `{key}` in {within}{hint} (accepted keys: {})",
            accepted.join(", ")
        ),
    );
    skip_rest(meta.input)?;
    Ok(suggestion)
}

/// A flag key (`unique`, `soft_delete`, `id`, ...): nothing may follow it.
fn flag(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<Spanned<()>>> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(Some(Spanned {
            value: (),
            span: span_of(&meta.path),
        }));
    }
    let key = path_text(&meta.path);
    cx.error_spanned_by(
        &meta.path,
        format!("`{key}` is a flag and takes no value: write just `{key}`"),
    );
    skip_rest(meta.input)?;
    Ok(None)
}

/// A parenthesized group `key(...)`, parsed by `parse`.
fn group<T>(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    example: &str,
    parse: impl FnOnce(&Ctxt, &ParseNestedMeta) -> syn::Result<T>,
) -> syn::Result<Option<Spanned<T>>> {
    let span = span_of(&meta.path);
    if !meta.input.peek(syn::token::Paren) {
        let key = path_text(&meta.path);
        cx.error_spanned_by(
            &meta.path,
            format!("`{key}` takes a list in parentheses, e.g. `{example}`"),
        );
        skip_rest(meta.input)?;
        return Ok(None);
    }
    let value = parse(cx, meta)?;
    Ok(Some(Spanned { value, span }))
}

/// The expression after `key =`; reports `key` without `=` (expected `example`).
fn expr_value(cx: &Ctxt, meta: &ParseNestedMeta, example: &str) -> syn::Result<Option<Expr>> {
    if !meta.input.peek(Token![=]) {
        let key = path_text(&meta.path);
        cx.error_spanned_by(
            &meta.path,
            format!("`{key}` takes a value: write `{example}`"),
        );
        skip_rest(meta.input)?;
        return Ok(None);
    }
    let mut expr: Expr = meta.value()?.parse()?;
    // `macro_rules!` hands `$x:literal` and `$x:expr` over wrapped in invisible groups.
    while let Expr::Group(g) = expr {
        expr = *g.expr;
    }
    Ok(Some(expr))
}

fn string_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    example: &str,
) -> syn::Result<Option<Spanned<String>>> {
    let Some(expr) = expr_value(cx, meta, example)? else {
        return Ok(None);
    };
    if let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(s), ..
    }) = &expr
    {
        return Ok(Some(Spanned {
            value: s.value(),
            span: s.span(),
        }));
    }
    wrong_kind(cx, meta, &expr, "a string", example);
    Ok(None)
}

fn int_value<N>(cx: &Ctxt, meta: &ParseNestedMeta, example: &str) -> syn::Result<Option<Spanned<N>>>
where
    N: std::str::FromStr,
    N::Err: Display,
{
    let Some(expr) = expr_value(cx, meta, example)? else {
        return Ok(None);
    };
    if let Expr::Lit(syn::ExprLit {
        lit: Lit::Int(i), ..
    }) = &expr
    {
        return match i.base10_parse::<N>() {
            Ok(value) => Ok(Some(Spanned {
                value,
                span: i.span(),
            })),
            Err(e) => {
                cx.error_at(i.span(), format!("{e}: write e.g. `{example}`"));
                Ok(None)
            }
        };
    }
    wrong_kind(cx, meta, &expr, "a non-negative integer", example);
    Ok(None)
}

fn duration_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    key: &str,
    zero_ok: bool,
) -> syn::Result<Option<Spanned<u64>>> {
    let example = format!("{key} = \"30m\"");
    let Some(s) = string_value(cx, meta, &example)? else {
        return Ok(None);
    };
    match duration::parse_millis(&s.value) {
        Ok(0) if !zero_ok => {
            cx.error_at(
                s.span,
                format!("`{key}` must be longer than zero, e.g. `{key} = \"30m\"`"),
            );
            Ok(None)
        }
        Ok(ms) => Ok(Some(Spanned {
            value: ms,
            span: s.span,
        })),
        Err(why) => {
            cx.error_at(
                s.span,
                format!(
                    "invalid duration for `{key}`: {why}; {}",
                    duration::ACCEPTED
                ),
            );
            Ok(None)
        }
    }
}

/// One of a fixed set of identifiers, e.g. `consistency = eventual`.
fn choice_value<T: Copy>(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    what: &str,
    choices: &[(&'static str, T)],
    example: &str,
) -> syn::Result<Option<Spanned<T>>> {
    let Some(expr) = expr_value(cx, meta, example)? else {
        return Ok(None);
    };
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let accepted = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match &expr {
        Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
            let ident = p
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if let Some((_, value)) = choices.iter().find(|(n, _)| *n == ident) {
                return Ok(Some(Spanned {
                    value: *value,
                    span: span_of(&expr),
                }));
            }
            cx.error_spanned_by(
                &expr,
                format!(
                    "unknown {what} `{ident}`{} (accepted: {accepted})",
                    suggest::did_you_mean(&ident, names.iter().copied())
                ),
            );
        }
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            // Suggest what the identifier form would: the choice itself, else the nearest one.
            let key = path_text(&meta.path);
            let text = s.value();
            let fix = if names.contains(&text.as_str()) {
                format!(": write `{key} = {text}`")
            } else {
                match suggest::closest(&text, names.iter().copied()) {
                    Some(nearest) => {
                        format!(", and `{text}` is not a {what}; did you mean `{key} = {nearest}`?")
                    }
                    None => format!(", and `{text}` is not a {what}"),
                }
            };
            cx.error_spanned_by(
                &expr,
                format!("`{key}` takes an identifier, not a string{fix} (accepted: {accepted})"),
            );
        }
        _ => {
            cx.error_spanned_by(&expr, format!("expected a {what} (accepted: {accepted})"));
        }
    }
    Ok(None)
}

fn wrong_kind(cx: &Ctxt, meta: &ParseNestedMeta, expr: &Expr, expected: &str, example: &str) {
    let key = path_text(&meta.path);
    cx.error_spanned_by(
        expr,
        format!(
            "`{key}` takes {expected}, found {}: write `{example}`",
            describe(expr)
        ),
    );
}

fn describe(expr: &Expr) -> &'static str {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(_) => "a string",
            Lit::Int(_) => "an integer",
            Lit::Float(_) => "a float",
            Lit::Bool(_) => "a boolean",
            Lit::Char(_) => "a character",
            _ => "a literal",
        },
        Expr::Path(_) => "an identifier",
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => "a negative number",
        _ => "an expression",
    }
}

/// Applies `check` to a string value, reporting its error at the value.
fn validate(
    cx: &Ctxt,
    s: Spanned<String>,
    check: impl FnOnce(&str) -> Result<(), String>,
) -> Option<Spanned<String>> {
    match check(&s.value) {
        Ok(()) => Some(s),
        Err(message) => {
            cx.error_at(s.span, message);
            None
        }
    }
}

fn check_database(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the database name is empty: write e.g. `database = \"caas_auth\"`".to_owned());
    }
    if let Some(bad) = name.chars().find(|c| "/\\. \"$\0".contains(*c)) {
        return Err(format!(
            "MongoDB database names cannot contain `{bad}`: use letters, digits, `_` or `-`"
        ));
    }
    if name.len() > 63 {
        return Err("MongoDB database names are at most 63 bytes long".to_owned());
    }
    Ok(())
}

fn check_collection(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the collection name is empty: write e.g. `collection = \"users\"`".to_owned());
    }
    if name.contains('$') {
        return Err("MongoDB collection names cannot contain `$`".to_owned());
    }
    if name.contains('\0') {
        return Err("MongoDB collection names cannot contain a NUL character".to_owned());
    }
    if name.starts_with("system.") {
        return Err("collection names starting with `system.` are reserved by MongoDB".to_owned());
    }
    Ok(())
}

fn check_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(
            "the outbox topic is empty: name the Kafka topic, e.g. `topic = \"platform.events\"`"
                .to_owned(),
        );
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "Kafka topic names cannot contain `{bad}`: use letters, digits, `.`, `_` and `-`"
        ));
    }
    if name.len() > 249 {
        return Err("Kafka topic names are at most 249 characters long".to_owned());
    }
    Ok(())
}

// ---- helpers -----------------------------------------------------------------------------

/// Skips the value of the current key: every token up to the next top-level `,`.
fn skip_rest(input: ParseStream) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// A path as written, e.g. `database` or `a::b`.
pub fn path_text(path: &syn::Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let joined = segments.join("::");
    if path.leading_colon.is_some() {
        format!("::{joined}")
    } else {
        joined
    }
}

/// The span of the first token of `tokens`.
fn span_of<T: quote::ToTokens>(tokens: &T) -> Span {
    tokens
        .to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}
