//! Rules across attributes (exactly one id and tenant, what each role allows, timestamps, index
//! keys, finder names, cache and consistency), and resolution of the input into the [`Model`]
//! the generator works from.
//!
//! Every rule reports into the [`Ctxt`] at the token it is about and the checks go on, so one
//! compile reports every mistake. A model is still produced whenever the struct can take an
//! `Entity` impl (a non-generic struct with named fields), holding only the parts that passed,
//! even without an id or tenant field: the generated API then exists and user code that uses it
//! does not add errors of its own.

use proc_macro2::Span;
use quote::ToTokens;
use syn::Type;

use super::ast::{Container, Field};
use super::attr::{self, CacheStrategy, Consistency, Direction, Slot, Spanned};
use super::case::snake_case_type_name;
use super::ctxt::Ctxt;
use super::model::{CacheModel, Finder, FinderKind, IndexModel, Model, OutboxModel, StepModel};
use super::suggest;

/// Integer types a version field may have.
const VERSION_TYPES: &[&str] = &[
    "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
];

/// Methods of `Repository<E>` a finder must not hide through `Deref`.
const RESERVED_METHODS: &[&str] = &["find_by_id", "find_by_id_with_secrets"];

/// Checks `cont`, reporting into `cx`; returns the model when the struct can be generated from
/// (every non-generic struct with named fields, whatever else was reported).
pub fn check<'a>(cx: &Ctxt, cont: &'a Container<'a>) -> Option<Model<'a>> {
    let attrs = &cont.attrs;
    let anchor = attrs.repository_span.unwrap_or_else(|| cont.ident.span());
    for (slot, key, example) in [
        (&attrs.database, "database", "database = \"caas_auth\""),
        (&attrs.collection, "collection", "collection = \"users\""),
    ] {
        if !slot.is_written() && !attrs.misspelled.contains(&key) {
            cx.error_at(
                anchor,
                format!("missing `{key}`: add `{example}` to the struct's #[repository(...)]"),
            );
        }
    }
    let consistency = attrs
        .consistency
        .value()
        .copied()
        .unwrap_or(Consistency::Strong);
    // The model the rules that depend on it are checked against: none when the one written was
    // rejected (reported), rather than the `strong` default the user did not mean.
    let rules_consistency = match attrs.consistency {
        Slot::Invalid(_) => None,
        Slot::Absent | Slot::Given(_) => Some(consistency),
    };
    check_write_behind(cx, cont, rules_consistency);
    check_append_only(cx, cont);
    let schema_steps = schema_chain(cx, cont);

    let fields = cont.fields.as_deref()?;
    check_not_stored(cx, fields);
    let id = role(cx, cont, fields, |a| &a.id, "id");
    let tenant = role(cx, cont, fields, |a| &a.tenant, "tenant");
    let tenant_is_string = tenant.is_none_or(|t| is_string(t.ty));
    if let Some(t) = tenant {
        if !tenant_is_string {
            cx.error_spanned_by(
                t.ty,
                format!(
                    "the tenant field must be a `String` (tenant ids are strings); found `{}`",
                    type_text(t.ty)
                ),
            );
        }
        if id.is_some_and(|i| std::ptr::eq(i, t)) {
            cx.error_at(
                t.attrs.tenant.span().unwrap_or_else(|| t.ident.span()),
                format!(
                    "`{}` cannot be both the id and the tenant field: the tenant is stored next \
                     to the id, in a field of its own",
                    t.name()
                ),
            );
        }
    }
    let version = version_field(cx, fields, id, tenant);
    let created_at = timestamp_field(cx, fields, Timestamp::CreatedAt);
    let updated_at = timestamp_field(cx, fields, Timestamp::UpdatedAt);
    check_cache_fencing(cx, cont, fields, rules_consistency);
    check_local_tier(cx, cont, rules_consistency);
    check_outbox(cx, cont, fields, rules_consistency);
    check_serde_container(cx, cont);
    let secrets = secret_fields(cx, cont, fields, [id, tenant, version], rules_consistency);
    let indexes = indexes(cx, cont, fields, id, tenant);
    let finders = finders(cx, &indexes);

    if !cont.supported {
        return None;
    }
    Some(Model {
        ident: cont.ident,
        vis: cont.vis,
        root: match attrs.krate.value() {
            Some(path) => path.to_token_stream(),
            None => quote::quote!(::caas_storage),
        },
        database: attrs.database.value().cloned().unwrap_or_default(),
        collection: attrs.collection.value().cloned().unwrap_or_default(),
        consistency,
        schema_version: attrs.schema_version.value().copied().unwrap_or(1),
        schema_steps,
        soft_delete: attrs.soft_delete.is_written(),
        append_only: attrs.append_only.is_written(),
        cache: cache_model(&attrs.cache),
        outbox: outbox_model(cont, &attrs.outbox),
        fields: fields.iter().filter(|f| f.is_stored()).collect(),
        id,
        tenant,
        tenant_is_string,
        version,
        created_at,
        updated_at,
        secrets,
        indexes: indexes.into_iter().map(|(_, ix)| ix).collect(),
        finders,
        queueable: !attrs.outbox.is_written()
            && !fields.iter().any(|f| f.attrs.secret.is_written()),
    })
}

/// The schema chain: one `#[migrate(from = K, ...)]` for each K in 1..schema_version, declared
/// in order. A step beyond the version, a duplicate, a step out of order and a gap are errors
/// (at the step's `from`, or for a gap at `schema_version`). Returns the steps that passed,
/// ordered by `from`.
fn schema_chain(cx: &Ctxt, cont: &Container) -> Vec<StepModel> {
    let attrs = &cont.attrs;
    // A rejected `schema_version` is reported already: the chain cannot be judged against it.
    let current = match &attrs.schema_version {
        Slot::Invalid(_) => None,
        Slot::Absent => Some(1),
        Slot::Given(v) => Some(v.value),
    };
    let mut steps: Vec<StepModel> = Vec::new();
    let mut complete = true;
    let mut previous: Option<u32> = None;
    for m in &attrs.migrations {
        let Some(from) = m.from.get() else {
            // Missing or rejected `from` (reported): the gaps it may fill are unknown.
            complete = false;
            continue;
        };
        let v = from.value;
        if let Some(current) = current {
            if v >= current {
                let fix = match &attrs.schema_version {
                    Slot::Given(_) => {
                        format!("raise `schema_version` to {}, or remove this step", v + 1)
                    }
                    _ => format!(
                        "declare `schema_version = {}` in #[repository(...)] (the default is 1)",
                        v + 1
                    ),
                };
                cx.error_at(
                    from.span,
                    format!(
                        "the step {v} -> {} goes beyond `schema_version = {current}`: {fix}",
                        v + 1
                    ),
                );
                continue;
            }
        }
        if let Some(first) = steps.iter().find(|s| s.from == v) {
            cx.error_at(
                from.span,
                format!(
                    "duplicate step from version {v}: `{}` already takes documents from {v} to {}; \
                     each version has one step",
                    first.name,
                    v + 1
                ),
            );
            continue;
        }
        if let Some(p) = previous.filter(|p| *p > v) {
            cx.error_at(
                from.span,
                format!(
                    "steps are declared in order, oldest first: `from = {v}` comes before \
                     `from = {p}`"
                ),
            );
        }
        previous = Some(previous.map_or(v, |p| p.max(v)));
        let Some(up) = m.up.get() else {
            continue; // missing (reported): the version is covered, nothing to generate
        };
        let name = attr::path_text(&up.value);
        steps.push(StepModel {
            from: v,
            checksum: fnv1a(&format!(
                "{}:{v}->{}:{name}",
                super::ast::unraw(cont.ident),
                v + 1
            )),
            up: up.value.clone(),
            down: m.down.value().cloned(),
            name,
        });
    }
    if let (Some(current), true) = (current, complete) {
        let missing: Vec<String> = (1..current)
            .filter(|v| {
                !steps.iter().any(|s| s.from == *v)
                    && !attrs
                        .migrations
                        .iter()
                        .any(|m| m.from.value() == Some(v) && m.up.get().is_none())
            })
            .map(|v| format!("{v} -> {}", v + 1))
            .collect();
        if !missing.is_empty() {
            let span = attrs
                .schema_version
                .span()
                .unwrap_or_else(|| cont.ident.span());
            let first = missing[0].split(' ').next().unwrap_or("1").to_owned();
            cx.error_at(
                span,
                format!(
                    "`schema_version = {current}` needs a step from every older version; missing: \
                     {} (add e.g. `#[migrate(from = {first}, up = v{first}_to_v{})]`)",
                    missing.join(", "),
                    first.parse::<u32>().unwrap_or(1) + 1
                ),
            );
        }
    }
    steps.sort_by_key(|s| s.from);
    steps
}

/// FNV-1a (64 bits) as 16 hex digits: the runtime's `migrations::checksum`.
fn fnv1a(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `append_only` entities are never deleted, so `soft_delete` on one is a contradiction.
fn check_append_only(cx: &Ctxt, cont: &Container) {
    let attrs = &cont.attrs;
    if let (true, Some(span)) = (attrs.append_only.is_written(), attrs.soft_delete.span()) {
        cx.error_at(
            span,
            "`soft_delete` contradicts `append_only`: entries of an append-only entity are never \
             deleted, softly or otherwise; remove one of the two",
        );
    }
}

/// `strategy = write_behind` needs `consistency = eventual` (not checked when the model
/// written was rejected).
fn check_write_behind(cx: &Ctxt, cont: &Container, consistency: Option<Consistency>) {
    let Some(cache) = cont.attrs.cache.value() else {
        return;
    };
    let Some(strategy) = cache.strategy.get() else {
        return;
    };
    let Some(consistency) = consistency else {
        return;
    };
    if strategy.value == CacheStrategy::WriteBehind && consistency != Consistency::Eventual {
        cx.error_at(
            strategy.span,
            format!(
                "strategy = write_behind acknowledges a write before the database has it; only \
                 `consistency = eventual` entities allow it, and this one is `{}`",
                consistency.as_str()
            ),
        );
    }
}

/// Cache puts are fenced by version: caching a `strong` or `read_your_writes` entity needs a
/// version field whatever the strategy (a loader's put must not overwrite a newer write), and so
/// does every strategy that puts written documents, `write_through` and `write_behind`, on any
/// consistency model (without a version the runtime can only invalidate, so a write-behind write
/// would not be readable from the cache before the flush). One error per entity: at `cache` for
/// `strong` and `read_your_writes`, else at the strategy. `consistency` is `None` when the
/// model written was rejected: then only the strategy's own need is checked.
fn check_cache_fencing(
    cx: &Ctxt,
    cont: &Container,
    fields: &[Field],
    consistency: Option<Consistency>,
) {
    let Slot::Given(cache) = &cont.attrs.cache else {
        return;
    };
    if fields.iter().any(|f| f.attrs.version.is_written()) {
        return;
    }
    if let Some(consistency @ (Consistency::Strong | Consistency::ReadYourWrites)) = consistency {
        let default_note = if cont.attrs.consistency.is_written() {
            ""
        } else {
            " (`strong` is the default consistency)"
        };
        cx.error_at(
            cache.span,
            format!(
                "cache on a `{}` entity needs a #[repository(version)] field so cache puts can be \
                 fenced{default_note}",
                consistency.as_str()
            ),
        );
        return;
    }
    let Some(strategy) = cache.value.strategy.get() else {
        return;
    };
    let why = match strategy.value {
        CacheStrategy::CacheAside => return,
        CacheStrategy::WriteThrough => {
            "write-through puts are fenced by version: without one every write only invalidates \
             the cache entry, as `cache_aside` (the default) does"
        }
        CacheStrategy::WriteBehind => {
            "write-behind puts are fenced by version: without one a queued write is not put into \
             the cache, so it is not readable before the flush"
        }
    };
    cx.error_at(
        strategy.span,
        format!(
            "strategy = {} needs a #[repository(version)] field, because {why}",
            strategy.value.as_str()
        ),
    );
}

/// A `strong` read must see every acknowledged write on every instance; an in-process copy on
/// another instance can lag the invalidation that reaches it by pub/sub.
fn check_local_tier(cx: &Ctxt, cont: &Container, consistency: Option<Consistency>) {
    let Some(local) = cont.attrs.cache.value().and_then(|c| c.local.get()) else {
        return;
    };
    if consistency == Some(Consistency::Strong) {
        cx.error_at(
            local.span,
            "an in-process tier (`local(...)`) cannot serve a `strong` entity: another instance's \
             copy can outlive a write; use the Redis tier alone, or `read_your_writes`",
        );
    }
}

/// Outbox events are ordered and reconciled by the entity's version, and are recorded with a
/// direct write (never a queued one).
fn check_outbox(cx: &Ctxt, cont: &Container, fields: &[Field], consistency: Option<Consistency>) {
    let Slot::Given(outbox) = &cont.attrs.outbox else {
        return;
    };
    if !fields.iter().any(|f| f.attrs.version.is_written()) {
        cx.error_at(
            outbox.span,
            "outbox(...) needs a #[repository(version)] field: events of one aggregate are \
             ordered by it, and after a crash the version tells whether a write happened",
        );
    }
    if consistency == Some(Consistency::Eventual) {
        cx.error_at(
            outbox.span,
            "outbox(...) on an `eventual` entity: its writes are queued and applied later, so \
             no event could be recorded atomically with them; use `causal` (or another \
             model) for entities that publish events",
        );
    }
}

/// Serde options on the struct that stored documents cannot satisfy.
fn check_serde_container(cx: &Ctxt, cont: &Container) {
    if let Some(span) = cont.attrs.deny_unknown_fields {
        cx.error_at(
            span,
            "#[serde(deny_unknown_fields)] cannot read stored documents: they carry the \
             framework fields `_id`, `_schema_version` and `_deleted_at`; remove it",
        );
    }
}

/// Field attributes on fields serde does not store.
fn check_not_stored(cx: &Ctxt, fields: &[Field]) {
    for f in fields {
        let Some(reason) = f.attrs.not_stored else {
            continue;
        };
        let a = &f.attrs;
        let roles = [
            (&a.id, "id"),
            (&a.tenant, "tenant"),
            (&a.version, "version"),
            (&a.secret, "secret"),
            (&a.index, "index"),
            (&a.unique, "unique"),
        ];
        for (slot, key) in roles {
            if let Some(span) = slot.span() {
                cx.error_at(
                    span,
                    format!(
                        "`{key}` on `{}`, which serde does not store ({}): only stored fields \
                         can be the id, the tenant, the version, secret or indexed",
                        f.name(),
                        reason.as_str()
                    ),
                );
            }
        }
        for ts in [Timestamp::CreatedAt, Timestamp::UpdatedAt] {
            if let Some(span) = ts.slot(a).span() {
                cx.error_at(
                    span,
                    format!(
                        "`{}` on `{}`, which serde does not store ({}): the runtime writes the \
                         time {} into the stored document, so the field must be stored",
                        ts.key(),
                        f.name(),
                        reason.as_str(),
                        ts.when()
                    ),
                );
            }
        }
    }
}

/// The one field marked `key` (`id` or `tenant`).
fn role<'a>(
    cx: &Ctxt,
    cont: &Container,
    fields: &'a [Field<'a>],
    slot: fn(&attr::Field) -> &Slot<()>,
    key: &str,
) -> Option<&'a Field<'a>> {
    let mut chosen: Option<&'a Field<'a>> = None;
    for f in fields {
        let Some(span) = slot(&f.attrs).span() else {
            continue;
        };
        match chosen {
            None => chosen = Some(f),
            Some(first) => cx.error_at(
                span,
                format!(
                    "duplicate {key} field: `{}` is already the {key} field; an entity has \
                     exactly one",
                    first.name()
                ),
            ),
        }
    }
    let misspelled = fields.iter().any(|f| f.attrs.misspelled.contains(&key));
    if chosen.is_none() && !misspelled {
        cx.error_spanned_by(
            cont.ident,
            format!(
                "missing {key} field: mark the {} field with #[repository({key})] (or #[{key}])",
                if key == "id" { "id" } else { "tenant id" }
            ),
        );
    }
    chosen
}

fn version_field<'a>(
    cx: &Ctxt,
    fields: &'a [Field<'a>],
    id: Option<&Field>,
    tenant: Option<&Field>,
) -> Option<&'a Field<'a>> {
    let mut chosen: Option<&'a Field<'a>> = None;
    let mut valid = true;
    for f in fields {
        let Some(span) = f.attrs.version.span() else {
            continue;
        };
        if let Some(first) = chosen {
            cx.error_at(
                span,
                format!(
                    "duplicate version field: `{}` is already the version field; an entity has \
                     at most one",
                    first.name()
                ),
            );
            continue;
        }
        chosen = Some(f);
        for (other, what) in [(id, "id"), (tenant, "tenant")] {
            if other.is_some_and(|o| std::ptr::eq(o, f)) {
                cx.error_at(
                    span,
                    format!(
                        "the version field cannot also be the {what} field: the version changes \
                         on every write"
                    ),
                );
                valid = false;
            }
        }
        if !is_integer(f.ty) {
            cx.error_spanned_by(
                f.ty,
                format!(
                    "the version field must be an integer ({}); found `{}`",
                    VERSION_TYPES.join(", "),
                    type_text(f.ty)
                ),
            );
            valid = false;
        }
        valid &= f.is_stored();
    }
    chosen.filter(|_| valid)
}

/// The two timestamp roles.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timestamp {
    /// `#[repository(created_at)]`: set when a document is inserted.
    CreatedAt,
    /// `#[repository(updated_at)]`: set by every write.
    UpdatedAt,
}

impl Timestamp {
    fn key(self) -> &'static str {
        match self {
            Timestamp::CreatedAt => "created_at",
            Timestamp::UpdatedAt => "updated_at",
        }
    }

    /// `a created_at` or `an updated_at`, for messages.
    fn a_key(self) -> &'static str {
        match self {
            Timestamp::CreatedAt => "a `created_at`",
            Timestamp::UpdatedAt => "an `updated_at`",
        }
    }

    /// When the runtime sets it, completing "the time ...".
    fn when(self) -> &'static str {
        match self {
            Timestamp::CreatedAt => "of the insert",
            Timestamp::UpdatedAt => "of every write",
        }
    }

    fn slot(self, attrs: &attr::Field) -> &Slot<()> {
        match self {
            Timestamp::CreatedAt => &attrs.created_at,
            Timestamp::UpdatedAt => &attrs.updated_at,
        }
    }
}

/// The one field marked `ts` (at most one), when it is valid: stored, of type `DateTime` or
/// `Option<DateTime>`, with no other role and not also the other timestamp.
fn timestamp_field<'a>(cx: &Ctxt, fields: &'a [Field<'a>], ts: Timestamp) -> Option<&'a Field<'a>> {
    let key = ts.key();
    let mut chosen: Option<&'a Field<'a>> = None;
    let mut valid = true;
    for f in fields {
        let Some(span) = ts.slot(&f.attrs).span() else {
            continue;
        };
        if let Some(first) = chosen {
            cx.error_at(
                span,
                format!(
                    "duplicate `{key}` field: the field `{}` is already marked \
                     #[repository({key})]; an entity has at most one `{key}` field",
                    first.name()
                ),
            );
            continue;
        }
        chosen = Some(f);
        let a = &f.attrs;
        // On the id, tenant or version field the fix is another field, not another type.
        let mut misplaced = false;
        for (slot, role, holds) in [
            (&a.id, "id", "the caller chooses the id"),
            (&a.tenant, "tenant", "it holds the tenant id"),
            (&a.version, "version", "it holds the version number"),
        ] {
            if slot.is_written() {
                cx.error_at(
                    span,
                    format!(
                        "the {role} field cannot also be the `{key}` field: {holds}, and the \
                         runtime writes the time {} into `{key}`; give each a field of its own",
                        ts.when()
                    ),
                );
                misplaced = true;
            }
        }
        if a.secret.is_written() {
            cx.error_at(
                span,
                format!(
                    "{} field cannot be secret: reads leave secret fields out, and the time {} \
                     that the runtime keeps in it is there to be read",
                    ts.a_key(),
                    ts.when()
                ),
            );
            valid = false;
        }
        if ts == Timestamp::UpdatedAt && a.created_at.is_written() {
            cx.error_at(
                span,
                format!(
                    "`{}` cannot be both the `created_at` and the `updated_at` field: \
                     `created_at` keeps the time of the insert and `updated_at` the time of the \
                     last write; give each a field of its own",
                    f.name()
                ),
            );
        }
        if a.created_at.is_written() && a.updated_at.is_written() {
            valid = false;
        }
        if !misplaced && !is_timestamp_type(f.ty) {
            cx.error_spanned_by(
                f.ty,
                format!(
                    "{} field must be `DateTime` (caas_storage::bson::DateTime) or \
                     `Option<DateTime>`: the runtime stores the time {} in it as a BSON date; \
                     found `{}`",
                    ts.a_key(),
                    ts.when(),
                    type_text(f.ty)
                ),
            );
            valid = false;
        }
        valid &= !misplaced && f.is_stored();
    }
    chosen.filter(|_| valid)
}

/// The valid secret fields. A secret field keeps the entity out of the write-behind queue (see
/// [`Model::queueable`]); on an `eventual` entity, whose writes are all queued, it is an error.
fn secret_fields<'a>(
    cx: &Ctxt,
    cont: &Container,
    fields: &'a [Field<'a>],
    roles: [Option<&Field>; 3],
    consistency: Option<Consistency>,
) -> Vec<&'a Field<'a>> {
    let mut secrets = Vec::new();
    for f in fields.iter().filter(|f| f.is_stored()) {
        let Some(span) = f.attrs.secret.span() else {
            continue;
        };
        if consistency == Some(Consistency::Eventual) {
            cx.error_at(
                span,
                format!(
                    "`{}` cannot be secret on an `eventual` entity: eventual writes are queued in \
                     Redis (the write-behind queue holds whole documents) and secret fields must \
                     not leave the database; use another consistency model, or keep the secret \
                     in an entity of its own",
                    f.name()
                ),
            );
        }
        let mut valid = true;
        for (role, what, why) in [
            (roles[0], "id", "every read needs the id"),
            (roles[1], "tenant", "every read is scoped by the tenant"),
            (
                roles[2],
                "version",
                "every versioned write needs the version",
            ),
        ] {
            if role.is_some_and(|r| std::ptr::eq(r, f)) {
                cx.error_at(
                    span,
                    format!(
                        "the {what} field cannot be secret: reads leave secret fields out, and \
                         {why}"
                    ),
                );
                valid = false;
            }
        }
        if valid && !is_option(f.ty) && !f.attrs.serde_default && !cont.attrs.serde_default {
            cx.error_at(
                span,
                format!(
                    "secret field `{}` must be an `Option<_>` or have #[serde(default)]: reads \
                     leave secret fields out, so it must deserialize without a value",
                    f.name()
                ),
            );
            valid = false;
        }
        if valid {
            secrets.push(f);
        }
    }
    secrets
}

/// Why the secret field `f` cannot be a key of a unique index, and `fix`.
fn secret_unique_key(f: &Field, fix: &str) -> String {
    format!(
        "`{}` is secret, so it cannot be a key of a unique index: MongoDB's duplicate-key error \
         quotes the key values (`dup key: {{ ... }}`), which would carry the secret into errors \
         and logs, and a unique index lets callers probe which values exist; {fix}",
        f.name()
    )
}

/// An index declaration with its keys resolved to fields.
struct Decl<'a> {
    span: Span,
    keys: Vec<(&'a Field<'a>, Direction)>,
    unique: bool,
    ttl_ms: Option<u64>,
    name: Option<Spanned<String>>,
}

/// Resolves and checks every index; returns them with the span of their declaration.
fn indexes<'a>(
    cx: &Ctxt,
    cont: &Container,
    fields: &'a [Field<'a>],
    id: Option<&'a Field<'a>>,
    tenant: Option<&'a Field<'a>>,
) -> Vec<(Span, IndexModel<'a>)> {
    let mut decls: Vec<Decl<'a>> = Vec::new();
    for index in &cont.attrs.indexes {
        if let Some(decl) = struct_index(cx, cont, fields, tenant, index) {
            decls.push(decl);
        }
    }
    for f in fields.iter().filter(|f| f.is_stored()) {
        let a = &f.attrs;
        let mut shorthand = a.unique.span().map(|s| (s, true));
        if let Some(index_span) = a.index.span() {
            if shorthand.is_some() {
                cx.error_at(
                    index_span,
                    "`index` and `unique` on the same field declare its index twice: `unique` \
                     alone is enough",
                );
            } else {
                shorthand = Some((index_span, false));
            }
        }
        let Some((span, unique)) = shorthand else {
            continue;
        };
        if tenant.is_some_and(|t| std::ptr::eq(t, f)) {
            cx.error_at(
                span,
                "the tenant field is the first key of every index already; it needs no index of \
                 its own",
            );
            continue;
        }
        if unique && a.secret.is_written() {
            cx.error_at(
                span,
                secret_unique_key(
                    f,
                    "write `index` instead of `unique`, or leave the index out",
                ),
            );
        }
        decls.push(Decl {
            span,
            keys: vec![(f, Direction::Asc)],
            unique,
            ttl_ms: None,
            name: None,
        });
    }

    let mut out: Vec<(Span, IndexModel<'a>)> = Vec::new();
    let primary = match (id, tenant) {
        (Some(i), Some(t)) => Some((t, i, format!("{}_1_{}_1", t.stored_name, i.stored_name))),
        _ => None,
    };
    for decl in decls {
        let mut keys: Vec<(String, Direction)> = Vec::new();
        if decl.ttl_ms.is_none() {
            if let Some(t) = tenant {
                keys.push((t.stored_name.clone(), Direction::Asc));
            }
        }
        keys.extend(decl.keys.iter().map(|(f, d)| (f.stored_name.clone(), *d)));

        if let Some((t, i, _)) = &primary {
            let only_id = decl.keys.len() == 1
                && std::ptr::eq(decl.keys[0].0, *i)
                && decl.keys[0].1 == Direction::Asc;
            if decl.ttl_ms.is_none() && only_id {
                cx.error_at(
                    decl.span,
                    format!(
                        "this index repeats the unique ({}, {}) index the runtime creates for \
                         every entity: remove it",
                        t.stored_name, i.stored_name
                    ),
                );
                continue;
            }
        }
        if let Some((_, earlier)) = out.iter().find(|(_, ix)| ix.keys == keys) {
            cx.error_at(
                decl.span,
                format!(
                    "duplicate index: index `{}` has the same keys ({})",
                    earlier.name,
                    keys.iter()
                        .map(|(k, d)| key_text(k, *d))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            continue;
        }
        let name = match &decl.name {
            Some(n) => n.value.clone(),
            None => default_index_name(&keys),
        };
        let name_span = decl.name.as_ref().map_or(decl.span, |n| n.span);
        if let Some((_, _, primary_name)) = &primary {
            if &name == primary_name {
                cx.error_at(
                    name_span,
                    format!(
                        "index name `{name}` is taken by the unique (tenant, id) index the \
                         runtime creates for every entity"
                    ),
                );
                continue;
            }
        }
        if out.iter().any(|(_, ix)| ix.name == name) {
            let fix = if decl.name.is_some() {
                "index names are unique within a collection"
            } else {
                "give one of them a `name = \"...\"`"
            };
            cx.error_at(
                name_span,
                format!(
                    "another index of `{}` is already named `{name}`: {fix}",
                    cont.ident
                ),
            );
            continue;
        }
        out.push((
            decl.span,
            IndexModel {
                name,
                keys,
                fields: decl.keys,
                unique: decl.unique,
                ttl_ms: decl.ttl_ms,
            },
        ));
    }
    out
}

/// Resolves one `#[index(...)]`; `None` when it is unusable (errors reported).
fn struct_index<'a>(
    cx: &Ctxt,
    cont: &Container,
    fields: &'a [Field<'a>],
    tenant: Option<&'a Field<'a>>,
    index: &attr::Index,
) -> Option<Decl<'a>> {
    let keys_slot = index.keys.get()?;
    let mut keys: Vec<(&'a Field<'a>, Direction)> = Vec::new();
    let mut valid = true;
    for key in &keys_slot.value {
        let Some(f) = resolve_key(cx, cont, fields, tenant, key) else {
            valid = false;
            continue;
        };
        if keys.iter().any(|(k, _)| std::ptr::eq(*k, f)) {
            cx.error_spanned_by(
                &key.ident,
                format!("`{}` is listed twice in keys(...)", f.name()),
            );
            valid = false;
            continue;
        }
        if is_list(f.ty) {
            if let Some((other, _)) = keys.iter().find(|(k, _)| is_list(k.ty)) {
                // The index stays in the model; the error fails the build.
                cx.error_spanned_by(
                    &key.ident,
                    format!(
                        "`{}` and `{}` are both lists: an index holds at most one list field \
                         (MongoDB refuses every document where both are arrays: \
                         \"cannot index parallel arrays\"); index them separately",
                        other.name(),
                        f.name()
                    ),
                );
            }
        }
        if index.unique.is_written() && f.attrs.secret.is_written() {
            // The index stays in the model (its finder still resolves); the error fails the build.
            cx.error_spanned_by(
                &key.ident,
                secret_unique_key(f, "drop `unique`, or leave it out of keys(...)"),
            );
        }
        keys.push((f, key.direction));
    }
    let ttl = index.ttl.get();
    if ttl.is_some() {
        if keys_slot.value.len() > 1 {
            cx.error_at(
                keys_slot.span,
                format!(
                    "a TTL index has exactly one key, the date field documents expire by; found \
                     {} keys",
                    keys_slot.value.len()
                ),
            );
            valid = false;
        }
        if let Some(unique) = index.unique.span() {
            cx.error_at(
                unique,
                "a TTL index cannot be unique: declare the unique index separately",
            );
            valid = false;
        }
    }
    let rejected = matches!(index.ttl, Slot::Invalid(_))
        || matches!(index.name, Slot::Invalid(_))
        || matches!(index.unique, Slot::Invalid(_));
    if !valid || rejected {
        return None;
    }
    Some(Decl {
        span: index.span,
        keys,
        unique: index.unique.is_written(),
        ttl_ms: ttl.map(|t| t.value),
        name: index.name.get().cloned(),
    })
}

fn resolve_key<'a>(
    cx: &Ctxt,
    cont: &Container,
    fields: &'a [Field<'a>],
    tenant: Option<&'a Field<'a>>,
    key: &attr::IndexKey,
) -> Option<&'a Field<'a>> {
    let wanted = super::ast::unraw(&key.ident);
    let Some(f) = fields.iter().find(|f| f.name() == wanted) else {
        let message = match fields
            .iter()
            .find(|f| f.is_stored() && f.stored_name == wanted)
        {
            Some(f) => format!(
                "no field named `{wanted}`: index keys name Rust fields, and `{wanted}` is the \
                 stored name of `{}`; write `{}`",
                f.name(),
                f.name()
            ),
            None => {
                let names: Vec<String> = fields
                    .iter()
                    .filter(|f| f.is_stored())
                    .map(Field::name)
                    .collect();
                format!(
                    "no field `{wanted}` in `{}`{}",
                    cont.ident,
                    suggest::did_you_mean(&wanted, names.iter().map(String::as_str))
                )
            }
        };
        cx.error_spanned_by(&key.ident, message);
        return None;
    };
    if let Some(reason) = f.attrs.not_stored {
        cx.error_spanned_by(
            &key.ident,
            format!(
                "`{wanted}` is not stored ({}), so it cannot be indexed",
                reason.as_str()
            ),
        );
        return None;
    }
    if tenant.is_some_and(|t| std::ptr::eq(t, f)) {
        cx.error_spanned_by(
            &key.ident,
            format!(
                "`{wanted}` is the tenant field, which is prepended to every index automatically: \
                 remove it from keys(...)"
            ),
        );
        return None;
    }
    Some(f)
}

/// The finder methods of the indexes, checking their names do not collide.
fn finders<'a>(cx: &Ctxt, indexes: &[(Span, IndexModel<'a>)]) -> Vec<Finder<'a>> {
    let mut out: Vec<Finder<'a>> = Vec::new();
    for (span, ix) in indexes {
        if ix.ttl_ms.is_some() || ix.fields.iter().any(|(f, _)| !f.is_typed()) {
            continue;
        }
        let (kind, prefix) = if ix.unique {
            (FinderKind::Find, "find_by_")
        } else {
            (FinderKind::List, "list_by_")
        };
        let (eq, sort): (Vec<&'a Field<'a>>, _) = match (kind, ix.fields.split_last()) {
            (FinderKind::List, Some((last, rest))) if !rest.is_empty() => {
                (rest.iter().map(|(f, _)| *f).collect(), Some(*last))
            }
            _ => (ix.fields.iter().map(|(f, _)| *f).collect(), None),
        };
        let method = format!(
            "{prefix}{}",
            eq.iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join("_and_")
        );
        if RESERVED_METHODS.contains(&method.as_str()) {
            cx.error_at(
                *span,
                format!(
                    "this index would generate `{method}`, which would hide \
                     `Repository::{method}`: declare it with other keys, or without `unique`"
                ),
            );
            continue;
        }
        if let Some(other) = out.iter().find(|f| f.method == method) {
            let earlier = indexes.iter().find(|(_, i)| i.name == other.index);
            let serves = earlier.is_some_and(|(_, e)| {
                e.fields.len() >= eq.len()
                    && e.fields
                        .iter()
                        .zip(&eq)
                        .all(|((a, _), b)| std::ptr::eq(*a, *b))
            });
            let hint = if serves {
                format!(
                    "; that index also serves queries on {}, so this one can go",
                    eq.iter()
                        .map(|f| format!("`{}`", f.name()))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            } else {
                "; remove one of the two indexes".to_owned()
            };
            cx.error_at(
                *span,
                format!(
                    "this index would generate the finder `{method}`, which index `{}` already \
                     generates{hint}",
                    other.index
                ),
            );
            continue;
        }
        out.push(Finder {
            method,
            kind,
            eq,
            sort,
            index: ix.name.clone(),
        });
    }
    out
}

fn cache_model(slot: &Slot<attr::Cache>) -> Option<CacheModel> {
    let cache = slot.value()?;
    let local = match &cache.local {
        Slot::Given(l) => Some((*l.value.ttl.value()?, *l.value.capacity.value()?)),
        Slot::Absent | Slot::Invalid(_) => None,
    };
    Some(CacheModel {
        ttl_ms: *cache.ttl.value()?,
        jitter_ms: cache.jitter.value().copied().unwrap_or(0),
        strategy: cache
            .strategy
            .value()
            .copied()
            .unwrap_or(CacheStrategy::CacheAside),
        local,
    })
}

fn outbox_model(cont: &Container, slot: &Slot<attr::Outbox>) -> Option<OutboxModel> {
    let outbox = slot.value()?;
    let topic = outbox.topic.value()?.clone();
    let any_written = [&outbox.insert, &outbox.update, &outbox.delete]
        .iter()
        .any(|s| s.is_written());
    if !any_written {
        let base = snake_case_type_name(&super::ast::unraw(cont.ident));
        return Some(OutboxModel {
            topic,
            insert: Some(format!("{base}.created")),
            update: Some(format!("{base}.updated")),
            delete: Some(format!("{base}.deleted")),
        });
    }
    Some(OutboxModel {
        topic,
        insert: outbox.insert.value().cloned(),
        update: outbox.update.value().cloned(),
        delete: outbox.delete.value().cloned(),
    })
}

/// MongoDB's default index name: `tenant_id_1_created_at_-1`.
fn default_index_name(keys: &[(String, Direction)]) -> String {
    keys.iter()
        .map(|(k, d)| format!("{k}_{}", if *d == Direction::Asc { 1 } else { -1 }))
        .collect::<Vec<_>>()
        .join("_")
}

fn key_text(key: &str, d: Direction) -> String {
    match d {
        Direction::Asc => key.to_owned(),
        Direction::Desc => format!("{key} desc"),
    }
}

/// The last path segment of `ty` and its generic arguments, when `ty` is a plain path.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

fn is_string(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == "String" && s.arguments.is_none())
}

fn is_integer(ty: &Type) -> bool {
    last_segment(ty)
        .is_some_and(|s| s.arguments.is_none() && VERSION_TYPES.iter().any(|t| s.ident == t))
}

/// `DateTime` by any path (`bson::DateTime`, `caas_storage::bson::DateTime`), without generic
/// arguments: chrono's `DateTime<Utc>` is not a BSON date.
fn is_datetime(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == "DateTime" && s.arguments.is_none())
}

/// `DateTime` or `Option<DateTime>`, as [`is_datetime`] reads `DateTime`.
fn is_timestamp_type(ty: &Type) -> bool {
    if is_datetime(ty) {
        return true;
    }
    let Some(segment) = last_segment(ty).filter(|s| s.ident == "Option") else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &segment.arguments else {
        return false;
    };
    match args.args.first() {
        Some(syn::GenericArgument::Type(inner)) if args.args.len() == 1 => is_datetime(inner),
        _ => false,
    }
}

/// Whether `ty` is stored as a BSON array: a standard sequence or set (`Vec`, `VecDeque`,
/// `LinkedList`, `HashSet`, `BTreeSet`, `BinaryHeap`, `IndexSet`), a fixed-size array, or one of
/// these in an `Option`. Read off the syntax: a type alias for a list is not seen as one.
pub(crate) fn is_list(ty: &Type) -> bool {
    const LISTS: [&str; 7] = [
        "Vec",
        "VecDeque",
        "LinkedList",
        "HashSet",
        "BTreeSet",
        "BinaryHeap",
        "IndexSet",
    ];
    match ty {
        Type::Array(_) => return true,
        Type::Group(g) => return is_list(&g.elem),
        Type::Paren(p) => return is_list(&p.elem),
        _ => {}
    }
    let Some(segment) = last_segment(ty) else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &segment.arguments else {
        return false;
    };
    if LISTS.iter().any(|l| segment.ident == l) {
        return true;
    }
    match args.args.first() {
        Some(syn::GenericArgument::Type(inner)) if segment.ident == "Option" => is_list(inner),
        _ => false,
    }
}

fn is_option(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|s| {
        s.ident == "Option" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
    })
}

/// A type as a user would write it (`Option<String>`, not `Option < String >`).
fn type_text(ty: &Type) -> String {
    let raw = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        if c == ' ' {
            let next = chars.peek().copied();
            let glue_after = matches!(prev, Some('<' | ':' | '&' | '('));
            let glue_before = matches!(next, Some('<' | '>' | ':' | ',' | ')'));
            if glue_after || glue_before {
                continue;
            }
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_recognized_by_their_type() {
        let list = |ty: Type| is_list(&ty);
        assert!(list(syn::parse_quote!(Vec<String>)));
        assert!(list(syn::parse_quote!(std::collections::BTreeSet<u32>)));
        assert!(list(syn::parse_quote!(Option<HashSet<String>>)));
        assert!(list(syn::parse_quote!([u8; 4])));
        assert!(!list(syn::parse_quote!(String)));
        assert!(!list(syn::parse_quote!(Option<String>)));
        assert!(!list(syn::parse_quote!(HashMap<String, u64>)));
    }

    #[test]
    fn type_text_reads_naturally() {
        let ty: Type = syn::parse_quote!(Option<std::collections::HashMap<String, u64>>);
        assert_eq!(
            type_text(&ty),
            "Option<std::collections::HashMap<String, u64>>"
        );
        let ty: Type = syn::parse_quote!(&'static str);
        assert_eq!(type_text(&ty), "&'static str");
    }

    #[test]
    fn type_predicates() {
        assert!(is_string(&syn::parse_quote!(String)));
        assert!(is_string(&syn::parse_quote!(std::string::String)));
        assert!(!is_string(&syn::parse_quote!(&str)));
        assert!(is_integer(&syn::parse_quote!(u64)));
        assert!(is_integer(&syn::parse_quote!(core::primitive::i32)));
        assert!(!is_integer(&syn::parse_quote!(f64)));
        assert!(is_option(&syn::parse_quote!(Option<String>)));
        assert!(!is_option(&syn::parse_quote!(String)));
    }

    #[test]
    fn timestamp_types() {
        for ok in [
            quote::quote!(DateTime),
            quote::quote!(bson::DateTime),
            quote::quote!(caas_storage::bson::DateTime),
            quote::quote!(::caas_storage::bson::DateTime),
            quote::quote!(Option<DateTime>),
            quote::quote!(std::option::Option<bson::DateTime>),
        ] {
            let ty: Type = syn::parse2(ok.clone()).unwrap();
            assert!(is_timestamp_type(&ty), "{ok}");
        }
        for bad in [
            quote::quote!(chrono::DateTime<Utc>),
            quote::quote!(DateTime<Utc>),
            quote::quote!(Option<DateTime<Utc>>),
            quote::quote!(Option<Option<DateTime>>),
            quote::quote!(String),
            quote::quote!(i64),
            quote::quote!(Option<String>),
            quote::quote!(Vec<DateTime>),
            quote::quote!(&'static DateTime),
        ] {
            let ty: Type = syn::parse2(bad.clone()).unwrap();
            assert!(!is_timestamp_type(&ty), "{bad}");
        }
    }

    #[test]
    fn step_checksums_match_the_runtime() {
        // caas-storage's `migrations::checksum` is the same function.
        assert_eq!(fnv1a(""), "cbf29ce484222325");
        assert_eq!(fnv1a("a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn default_index_names_follow_mongodb() {
        let keys = vec![
            ("tenant_id".to_owned(), Direction::Asc),
            ("status".to_owned(), Direction::Asc),
            ("created_at".to_owned(), Direction::Desc),
        ];
        assert_eq!(
            default_index_name(&keys),
            "tenant_id_1_status_1_created_at_-1"
        );
    }
}
