//! Differential test of the memory backend (`Storage::in_memory`) against FerretDB: random
//! sequences of repository operations over two tenants, a small id space and a small value
//! space (so duplicate keys, version conflicts and not-found happen) run on both backends; every
//! operation's result, the events each operation recorded, and the final state (read through
//! the repository and as stored, framework fields included) must be the same.
//!
//! FerretDB is the reference, except where it deviates from MongoDB 7 (`docs/ferretdb.md`, and
//! `$ne` inside `$elemMatch`, which this test measured, see `item_leaf`): there the memory
//! backend follows MongoDB and this test does not compare the behaviour (each exclusion says
//! so where it is made).
//!
//! The run is bounded and deterministic: `CAAS_DIFF_CASES` cases (default 40) from the seed
//! `CAAS_DIFF_SEED` (default [`DEFAULT_SEED`]). A failing case is shrunk to a minimal sequence
//! and printed; minimal sequences of divergences found so far are kept below as named
//! regression tests. See `docs/testing.md` for the soak command.

use caas_storage_tests as common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use caas_storage::bson::{doc, Bson, Document};
use caas_storage::prelude::*;
use caas_storage::repo::{Field, Sort, Upserted};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// The database of this test's entities (its own, so reading its outbox stays cheap).
const DB: &str = "caas_diff";
/// The collection of [`Item`].
const ITEMS: &str = "test_diff_items";
/// The collection of [`Note`].
const NOTES: &str = "test_diff_notes";
/// The seed of a run without `CAAS_DIFF_SEED`.
const DEFAULT_SEED: u64 = 0xCAA5_D1FF;
/// The cases of a run without `CAAS_DIFF_CASES`.
const DEFAULT_CASES: u32 = 40;
/// The longest generated sequence.
const MAX_OPS: usize = 12;

/// A versioned entity with an outbox, a write-through cache (so the memory Redis tier is
/// compared too), a unique index, a non-unique one, timestamps, an optional field stored as
/// null (`label`), one left out when `None` (`score`) and an array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_diff", collection = "test_diff_items", consistency = strong,
             outbox(topic = "platform.events"),
             cache(ttl = "1m", strategy = write_through))]
#[index(keys(code), unique)]
#[index(keys(rank))]
struct Item {
    #[repository(id)]
    item_id: String,
    #[repository(tenant)]
    tenant_id: String,
    code: String,
    rank: i64,
    label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<i64>,
    tags: Vec<String>,
    #[repository(version)]
    version: u64,
    #[repository(created_at)]
    created_at: Option<DateTime>,
    #[repository(updated_at)]
    updated_at: Option<DateTime>,
}

/// An unversioned entity with soft deletes and a unique index, without an outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_diff", collection = "test_diff_notes", consistency = strong,
             soft_delete)]
#[index(keys(slug), unique)]
struct Note {
    #[repository(id)]
    note_id: String,
    #[repository(tenant)]
    tenant_id: String,
    slug: String,
    n: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extra: Option<String>,
    tags: Vec<String>,
    /// An embedded document (dotted paths, documents compared and sorted as values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Meta>,
}

/// The embedded document of [`Note`]; `flag` is left out when `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    a: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    flag: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// The abstract operations: small integers that name ids and values, mapped to entities per
// case. Tenant `0` and `1` are two fresh tenants of the case.
// ---------------------------------------------------------------------------------------------

/// A comparison of a typed filter.
#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

/// An [`Item`] to write.
#[derive(Debug, Clone)]
struct ItemSpec {
    id: u8,
    code: u8,
    rank: i64,
    label: Option<u8>,
    score: Option<i64>,
    tags: Vec<u8>,
    version: u64,
}

/// An `ItemPatch`.
#[derive(Debug, Clone)]
struct ItemPatchSpec {
    code: Option<u8>,
    rank: Option<i64>,
    label: Option<Option<u8>>,
    score: Option<Option<i64>>,
    tags: Option<Vec<u8>>,
}

/// A [`Note`] to write.
#[derive(Debug, Clone)]
struct NoteSpec {
    id: u8,
    slug: u8,
    n: i64,
    extra: Option<u8>,
    tags: Vec<u8>,
    meta: Option<(i64, Option<bool>)>,
}

/// A `NotePatch`.
#[derive(Debug, Clone)]
struct NotePatchSpec {
    slug: Option<u8>,
    n: Option<i64>,
    extra: Option<Option<u8>>,
    meta: Option<Option<(i64, Option<bool>)>>,
}

/// A field of [`Item`] that `exists` is asked about.
#[derive(Debug, Clone, Copy)]
enum ItemOptional {
    Label,
    Score,
    Tags,
    CreatedAt,
}

/// A field of [`Item`] whose BSON type is asked about.
#[derive(Debug, Clone, Copy)]
enum ItemTyped {
    Rank,
    Label,
    Score,
    Tags,
}

impl ItemTyped {
    fn name(self) -> &'static str {
        match self {
            ItemTyped::Rank => "rank",
            ItemTyped::Label => "label",
            ItemTyped::Score => "score",
            ItemTyped::Tags => "tags",
        }
    }
}

/// A condition on items.
#[derive(Debug, Clone)]
enum ItemCond {
    All,
    Id(Cmp, u8),
    Code(Cmp, u8),
    Rank(Cmp, i64),
    Label(Cmp, Option<u8>),
    Score(Cmp, Option<i64>),
    Version(Cmp, u64),
    /// The whole array, through the typed field.
    Tags(Cmp, Vec<u8>),
    CodeIn(bool, Vec<u8>),
    RankIn(bool, Vec<i64>),
    LabelIn(bool, Vec<Option<u8>>),
    Exists(ItemOptional, bool),
    /// Raw: `{tags: "<tag>"}` (an element).
    TagHas(u8),
    /// Raw: `{tags: {$size: n}}`.
    TagsSize(u8),
    /// Raw: `{tags: {$all: [...]}}`.
    TagsAll(Vec<u8>),
    /// Raw: `{rank: {<op>: n / 2}}` with a double: numbers compare across types.
    RankHalf(Cmp, i8),
    /// Raw: `{<field>: {$type: <alias>}}`.
    TypeIs(ItemTyped, &'static str),
    /// Raw: `{rank: {$not: {$gt: v}}}`.
    RankNotGt(i64),
    /// Raw: `{tags: {<op>: "<tag>"}}` (element-wise).
    TagCmp(Cmp, u8),
    /// Raw: `{tags: {$elemMatch: {<op>: "<tag>"}}}`.
    TagElemMatch(Cmp, u8),
    /// Raw: `{"tags.<i>": "<tag>"}`, or `{"tags.<i>": {$exists: true}}` without a tag.
    TagAt(u8, Option<u8>),
    /// Raw: `{$nor: [inner]}`.
    Nor(Box<ItemCond>),
    And(Box<ItemCond>, Box<ItemCond>),
    Or(Box<ItemCond>, Box<ItemCond>),
}

/// A sort key on items.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ItemKey {
    Id,
    Code,
    Rank,
    Label,
    Score,
    Tags,
    Version,
}

/// A condition on notes.
#[derive(Debug, Clone)]
enum NoteCond {
    All,
    Slug(Cmp, u8),
    N(Cmp, i64),
    Extra(Cmp, Option<u8>),
    ExtraExists(bool),
    TagHas(u8),
    /// Raw: `{"meta.a": {<op>: v}}`.
    MetaA(Cmp, i64),
    /// Raw: `{"meta.flag": <bool or null>}`.
    MetaFlag(Option<bool>),
    /// Typed: the whole embedded document.
    Meta(Cmp, Option<(i64, Option<bool>)>),
    MetaExists(bool),
    And(Box<NoteCond>, Box<NoteCond>),
    Or(Box<NoteCond>, Box<NoteCond>),
}

/// A sort key on notes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NoteKey {
    Id,
    Slug,
    N,
    Extra,
    Tags,
    Meta,
}

/// One repository call. `u8` fields before a spec are the tenant (0 or 1).
#[derive(Debug, Clone)]
enum Op {
    Insert(u8, ItemSpec),
    InsertMany(u8, Vec<ItemSpec>),
    Update(u8, u8, ItemPatchSpec),
    UpdateChecked(u8, u8, u64, ItemPatchSpec),
    Replace(u8, ItemSpec),
    Upsert(u8, ItemSpec),
    Delete(u8, u8),
    QueryDelete(u8, ItemCond),
    FindById(u8, u8),
    Get(u8, u8),
    Exists(u8, u8),
    Count(u8, ItemCond),
    Query {
        tenant: u8,
        cond: ItemCond,
        sort: Vec<(ItemKey, bool)>,
        skip: Option<u8>,
        limit: Option<u8>,
    },
    QueryCount {
        tenant: u8,
        cond: ItemCond,
        skip: Option<u8>,
        limit: Option<u8>,
    },
    Pages {
        tenant: u8,
        cond: ItemCond,
        sort: Vec<(ItemKey, bool)>,
        limit: u8,
    },
    FindByCode(u8, u8),
    ListByRank(u8, i64, u8),
    NoteInsert(u8, NoteSpec),
    NoteInsertMany(u8, Vec<NoteSpec>),
    NoteUpdate(u8, u8, NotePatchSpec),
    NoteReplace(u8, NoteSpec),
    NoteUpsert(u8, NoteSpec),
    NoteDelete(u8, u8),
    NotePurge(u8, u8),
    NoteQueryDelete(u8, NoteCond),
    NoteFind(u8, u8),
    NoteExists(u8, u8),
    NoteCount(u8, NoteCond),
    NoteQuery {
        tenant: u8,
        cond: NoteCond,
        sort: Vec<(NoteKey, bool)>,
        skip: Option<u8>,
        limit: Option<u8>,
    },
    NoteFindBySlug(u8, u8),
    /// `queue_upsert`, then a flush of the queue.
    NoteQueueUpsert(u8, NoteSpec),
    /// `queue_update`, then a flush of the queue.
    NoteQueueUpdate(u8, u8, NotePatchSpec),
    /// `queue_delete`, then a flush of the queue.
    NoteQueueDelete(u8, u8),
}

// ---------------------------------------------------------------------------------------------
// Strategies: small ranges and `prop_oneof!` (which shrinks towards its first arms), so a
// failing sequence shrinks to few, simple operations.
// ---------------------------------------------------------------------------------------------

fn cmp() -> impl Strategy<Value = Cmp> {
    prop_oneof![
        Just(Cmp::Eq),
        Just(Cmp::Ne),
        Just(Cmp::Gt),
        Just(Cmp::Gte),
        Just(Cmp::Lt),
        Just(Cmp::Lte),
    ]
}

fn tenant() -> impl Strategy<Value = u8> {
    0..2u8
}

fn id() -> impl Strategy<Value = u8> {
    0..4u8
}

fn tags() -> impl Strategy<Value = Vec<u8>> {
    vec(0..3u8, 0..3)
}

fn item_spec() -> impl Strategy<Value = ItemSpec> {
    (
        id(),
        0..3u8,
        -1..3i64,
        option::of(0..2u8),
        option::of(0..3i64),
        tags(),
        0..3u64,
    )
        .prop_map(|(id, code, rank, label, score, tags, version)| ItemSpec {
            id,
            code,
            rank,
            label,
            score,
            tags,
            version,
        })
}

fn item_patch() -> impl Strategy<Value = ItemPatchSpec> {
    (
        option::of(0..3u8),
        option::of(-1..3i64),
        option::of(option::of(0..2u8)),
        option::of(option::of(0..3i64)),
        option::of(tags()),
    )
        .prop_map(|(code, rank, label, score, tags)| ItemPatchSpec {
            code,
            rank,
            label,
            score,
            tags,
        })
}

fn meta() -> impl Strategy<Value = (i64, Option<bool>)> {
    (0..3i64, option::of(any::<bool>()))
}

fn note_spec() -> impl Strategy<Value = NoteSpec> {
    (
        id(),
        0..3u8,
        -1..3i64,
        option::of(0..2u8),
        tags(),
        option::of(meta()),
    )
        .prop_map(|(id, slug, n, extra, tags, meta)| NoteSpec {
            id,
            slug,
            n,
            extra,
            tags,
            meta,
        })
}

fn note_patch() -> impl Strategy<Value = NotePatchSpec> {
    (
        option::of(0..3u8),
        option::of(-1..3i64),
        option::of(option::of(0..2u8)),
        option::of(option::of(meta())),
    )
        .prop_map(|(slug, n, extra, meta)| NotePatchSpec {
            slug,
            n,
            extra,
            meta,
        })
}

fn item_leaf() -> impl Strategy<Value = ItemCond> {
    prop_oneof![
        Just(ItemCond::All),
        (cmp(), id()).prop_map(|(c, v)| ItemCond::Id(c, v)),
        (cmp(), 0..3u8).prop_map(|(c, v)| ItemCond::Code(c, v)),
        (cmp(), -1..3i64).prop_map(|(c, v)| ItemCond::Rank(c, v)),
        (cmp(), option::of(0..2u8)).prop_map(|(c, v)| ItemCond::Label(c, v)),
        (cmp(), option::of(0..3i64)).prop_map(|(c, v)| ItemCond::Score(c, v)),
        (cmp(), 0..4u64).prop_map(|(c, v)| ItemCond::Version(c, v)),
        (cmp(), tags()).prop_map(|(c, v)| ItemCond::Tags(c, v)),
        (any::<bool>(), vec(0..3u8, 0..3)).prop_map(|(n, v)| ItemCond::CodeIn(n, v)),
        (any::<bool>(), vec(-1..3i64, 0..3)).prop_map(|(n, v)| ItemCond::RankIn(n, v)),
        (any::<bool>(), vec(option::of(0..2u8), 0..3)).prop_map(|(n, v)| ItemCond::LabelIn(n, v)),
        (
            prop_oneof![
                Just(ItemOptional::Label),
                Just(ItemOptional::Score),
                Just(ItemOptional::Tags),
                Just(ItemOptional::CreatedAt),
            ],
            any::<bool>()
        )
            .prop_map(|(f, p)| ItemCond::Exists(f, p)),
        (0..3u8).prop_map(ItemCond::TagHas),
        (0..3u8).prop_map(ItemCond::TagsSize),
        vec(0..3u8, 0..3).prop_map(ItemCond::TagsAll),
        (cmp(), -2..6i8).prop_map(|(c, v)| ItemCond::RankHalf(c, v)),
        (
            prop_oneof![
                Just(ItemTyped::Rank),
                Just(ItemTyped::Label),
                Just(ItemTyped::Score),
                Just(ItemTyped::Tags),
            ],
            prop_oneof![
                Just("null"),
                Just("string"),
                Just("long"),
                Just("int"),
                Just("double"),
                Just("number"),
                Just("array"),
            ]
        )
            .prop_map(|(f, t)| ItemCond::TypeIs(f, t)),
        (-1..3i64).prop_map(ItemCond::RankNotGt),
        (cmp(), 0..3u8).prop_map(|(c, v)| ItemCond::TagCmp(c, v)),
        // No `$ne` inside `$elemMatch`: FerretDB refuses it (NotImplemented, 238, "$elemMatch:
        // support for $ne not implemented yet") where MongoDB answers, so it is not compared.
        (
            prop_oneof![
                Just(Cmp::Eq),
                Just(Cmp::Gt),
                Just(Cmp::Gte),
                Just(Cmp::Lt),
                Just(Cmp::Lte),
            ],
            0..3u8
        )
            .prop_map(|(c, v)| ItemCond::TagElemMatch(c, v)),
        (0..3u8, option::of(0..3u8)).prop_map(|(i, t)| ItemCond::TagAt(i, t)),
    ]
}

fn item_cond() -> impl Strategy<Value = ItemCond> {
    item_leaf().prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| ItemCond::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| ItemCond::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| ItemCond::Nor(Box::new(a))),
        ]
    })
}

fn item_sort() -> impl Strategy<Value = Vec<(ItemKey, bool)>> {
    let key = prop_oneof![
        Just(ItemKey::Id),
        Just(ItemKey::Code),
        Just(ItemKey::Rank),
        Just(ItemKey::Label),
        Just(ItemKey::Score),
        Just(ItemKey::Tags),
        Just(ItemKey::Version),
    ];
    vec((key, any::<bool>()), 0..3)
}

fn note_cond() -> impl Strategy<Value = NoteCond> {
    let leaf = prop_oneof![
        Just(NoteCond::All),
        (cmp(), 0..3u8).prop_map(|(c, v)| NoteCond::Slug(c, v)),
        (cmp(), -1..3i64).prop_map(|(c, v)| NoteCond::N(c, v)),
        (cmp(), option::of(0..2u8)).prop_map(|(c, v)| NoteCond::Extra(c, v)),
        any::<bool>().prop_map(NoteCond::ExtraExists),
        (0..3u8).prop_map(NoteCond::TagHas),
        (cmp(), 0..3i64).prop_map(|(c, v)| NoteCond::MetaA(c, v)),
        option::of(any::<bool>()).prop_map(NoteCond::MetaFlag),
        (cmp(), option::of(meta())).prop_map(|(c, v)| NoteCond::Meta(c, v)),
        any::<bool>().prop_map(NoteCond::MetaExists),
    ];
    leaf.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| NoteCond::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| NoteCond::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn note_sort() -> impl Strategy<Value = Vec<(NoteKey, bool)>> {
    let key = prop_oneof![
        Just(NoteKey::Id),
        Just(NoteKey::Slug),
        Just(NoteKey::N),
        Just(NoteKey::Extra),
        Just(NoteKey::Tags),
        Just(NoteKey::Meta),
    ];
    vec((key, any::<bool>()), 0..3)
}

fn item_writes() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (tenant(), item_spec()).prop_map(|(t, s)| Op::Insert(t, s)),
        1 => (tenant(), vec(item_spec(), 1..4)).prop_map(|(t, v)| Op::InsertMany(t, v)),
        2 => (tenant(), id(), item_patch()).prop_map(|(t, i, p)| Op::Update(t, i, p)),
        2 => (tenant(), id(), 0..3u64, item_patch())
            .prop_map(|(t, i, v, p)| Op::UpdateChecked(t, i, v, p)),
        2 => (tenant(), item_spec()).prop_map(|(t, s)| Op::Replace(t, s)),
        2 => (tenant(), item_spec()).prop_map(|(t, s)| Op::Upsert(t, s)),
        2 => (tenant(), id()).prop_map(|(t, i)| Op::Delete(t, i)),
        1 => (tenant(), item_cond()).prop_map(|(t, c)| Op::QueryDelete(t, c)),
    ]
}

fn item_reads() -> impl Strategy<Value = Op> {
    prop_oneof![
        (tenant(), id()).prop_map(|(t, i)| Op::FindById(t, i)),
        (tenant(), id()).prop_map(|(t, i)| Op::Get(t, i)),
        (tenant(), id()).prop_map(|(t, i)| Op::Exists(t, i)),
        (tenant(), item_cond()).prop_map(|(t, c)| Op::Count(t, c)),
        (
            tenant(),
            item_cond(),
            item_sort(),
            option::of(0..3u8),
            option::of(0..3u8)
        )
            .prop_map(|(tenant, cond, sort, skip, limit)| Op::Query {
                tenant,
                cond,
                sort,
                skip,
                limit,
            }),
        (
            tenant(),
            item_cond(),
            option::of(0..3u8),
            option::of(0..3u8)
        )
            .prop_map(|(tenant, cond, skip, limit)| Op::QueryCount {
                tenant,
                cond,
                skip,
                limit,
            }),
        (tenant(), item_cond(), item_sort(), 1..3u8).prop_map(|(tenant, cond, sort, limit)| {
            Op::Pages {
                tenant,
                cond,
                sort,
                limit,
            }
        }),
        (tenant(), 0..3u8).prop_map(|(t, c)| Op::FindByCode(t, c)),
        (tenant(), -1..3i64, 1..3u8).prop_map(|(t, r, l)| Op::ListByRank(t, r, l)),
    ]
}

fn note_ops() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (tenant(), note_spec()).prop_map(|(t, s)| Op::NoteInsert(t, s)),
        1 => (tenant(), vec(note_spec(), 1..4)).prop_map(|(t, v)| Op::NoteInsertMany(t, v)),
        2 => (tenant(), id(), note_patch()).prop_map(|(t, i, p)| Op::NoteUpdate(t, i, p)),
        1 => (tenant(), note_spec()).prop_map(|(t, s)| Op::NoteReplace(t, s)),
        1 => (tenant(), note_spec()).prop_map(|(t, s)| Op::NoteUpsert(t, s)),
        2 => (tenant(), id()).prop_map(|(t, i)| Op::NoteDelete(t, i)),
        1 => (tenant(), id()).prop_map(|(t, i)| Op::NotePurge(t, i)),
        1 => (tenant(), note_cond()).prop_map(|(t, c)| Op::NoteQueryDelete(t, c)),
        1 => prop_oneof![
            (tenant(), note_spec()).prop_map(|(t, s)| Op::NoteQueueUpsert(t, s)),
            (tenant(), id(), note_patch()).prop_map(|(t, i, p)| Op::NoteQueueUpdate(t, i, p)),
            (tenant(), id()).prop_map(|(t, i)| Op::NoteQueueDelete(t, i)),
        ],
        2 => prop_oneof![
            (tenant(), id()).prop_map(|(t, i)| Op::NoteFind(t, i)),
            (tenant(), id()).prop_map(|(t, i)| Op::NoteExists(t, i)),
            (tenant(), note_cond()).prop_map(|(t, c)| Op::NoteCount(t, c)),
            (
                tenant(),
                note_cond(),
                note_sort(),
                option::of(0..3u8),
                option::of(0..3u8)
            )
                .prop_map(|(tenant, cond, sort, skip, limit)| Op::NoteQuery {
                    tenant,
                    cond,
                    sort,
                    skip,
                    limit,
                }),
            (tenant(), 0..3u8).prop_map(|(t, s)| Op::NoteFindBySlug(t, s)),
        ],
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => item_writes(),
        6 => item_reads(),
        3 => note_ops(),
    ]
}

/// A sequence: up to [`MAX_OPS`] calls, after (in most cases) two batch inserts into one
/// tenant, so reads and writes meet populated collections, and then a few
/// sorted queries of that tenant, which probe filters and sorts against what the calls left.
/// The batches and probes shrink like the rest.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        tenant(),
        vec(item_spec(), 0..6),
        vec(note_spec(), 0..4),
        vec(op(), 1..=MAX_OPS),
        vec((item_cond(), item_sort()), 1..6),
        vec((note_cond(), note_sort()), 0..3),
    )
        .prop_map(|(t, items, notes, ops, item_probes, note_probes)| {
            let mut all = Vec::new();
            if !items.is_empty() {
                all.push(Op::InsertMany(t, items));
            }
            if !notes.is_empty() {
                all.push(Op::NoteInsertMany(t, notes));
            }
            all.extend(ops);
            all.extend(item_probes.into_iter().map(|(cond, sort)| Op::Query {
                tenant: t,
                cond,
                sort,
                skip: None,
                limit: None,
            }));
            all.extend(note_probes.into_iter().map(|(cond, sort)| Op::NoteQuery {
                tenant: t,
                cond,
                sort,
                skip: None,
                limit: None,
            }));
            all
        })
}

// ---------------------------------------------------------------------------------------------
// From abstract values to entities, patches, filters and sorts.
// ---------------------------------------------------------------------------------------------

fn id_s(n: u8) -> String {
    format!("i{n}")
}

fn code_s(n: u8) -> String {
    format!("c{n}")
}

fn label_s(n: u8) -> String {
    format!("l{n}")
}

fn tag_s(n: u8) -> String {
    ["a", "b", "c"][usize::from(n % 3)].to_owned()
}

fn tags_s(v: &[u8]) -> Vec<String> {
    v.iter().map(|n| tag_s(*n)).collect()
}

fn item(t: &TenantId, s: &ItemSpec) -> Item {
    Item {
        item_id: id_s(s.id),
        tenant_id: t.to_string(),
        code: code_s(s.code),
        rank: s.rank,
        label: s.label.map(label_s),
        score: s.score,
        tags: tags_s(&s.tags),
        version: s.version,
        created_at: None,
        updated_at: None,
    }
}

fn item_patch_of(p: &ItemPatchSpec) -> ItemPatch {
    ItemPatch {
        code: p.code.map(code_s),
        rank: p.rank,
        label: p.label.map(|l| l.map(label_s)),
        score: p.score,
        tags: p.tags.as_deref().map(tags_s),
    }
}

fn note(t: &TenantId, s: &NoteSpec) -> Note {
    Note {
        note_id: id_s(s.id),
        tenant_id: t.to_string(),
        slug: format!("s{}", s.slug),
        n: s.n,
        extra: s.extra.map(|e| format!("x{e}")),
        tags: tags_s(&s.tags),
        meta: s.meta.map(meta_of),
    }
}

fn note_patch_of(p: &NotePatchSpec) -> NotePatch {
    NotePatch {
        slug: p.slug.map(|s| format!("s{s}")),
        n: p.n,
        extra: p.extra.map(|e| e.map(|e| format!("x{e}"))),
        tags: None,
        meta: p.meta.map(|m| m.map(meta_of)),
    }
}

fn meta_of((a, flag): (i64, Option<bool>)) -> Meta {
    Meta { a, flag }
}

fn compare<E: Entity, T: Serialize>(field: Field<E, T>, op: Cmp, v: T) -> Filter<E> {
    match op {
        Cmp::Eq => field.eq(v),
        Cmp::Ne => field.ne(v),
        Cmp::Gt => field.gt(v),
        Cmp::Gte => field.gte(v),
        Cmp::Lt => field.lt(v),
        Cmp::Lte => field.lte(v),
    }
}

fn within<E: Entity, T: Serialize>(field: Field<E, T>, not: bool, v: Vec<T>) -> Filter<E> {
    if not {
        field.not_in(v)
    } else {
        field.is_in(v)
    }
}

/// A raw condition: the value itself for `Eq`, else `{<op>: value}`.
fn raw_cmp(op: Cmp, v: Bson) -> Bson {
    let op = match op {
        Cmp::Eq => return v,
        Cmp::Ne => "$ne",
        Cmp::Gt => "$gt",
        Cmp::Gte => "$gte",
        Cmp::Lt => "$lt",
        Cmp::Lte => "$lte",
    };
    Bson::Document(doc! { op: v })
}

fn item_filter(c: &ItemCond) -> Filter<Item> {
    let f = Item::fields();
    match c {
        ItemCond::All => Filter::all(),
        ItemCond::Id(op, v) => compare(f.item_id(), *op, id_s(*v)),
        ItemCond::Code(op, v) => compare(f.code(), *op, code_s(*v)),
        ItemCond::Rank(op, v) => compare(f.rank(), *op, *v),
        ItemCond::Label(op, v) => compare(f.label(), *op, v.map(label_s)),
        ItemCond::Score(op, v) => compare(f.score(), *op, *v),
        ItemCond::Version(op, v) => compare(f.version(), *op, *v),
        ItemCond::Tags(op, v) => compare(f.tags(), *op, tags_s(v)),
        ItemCond::CodeIn(not, v) => within(f.code(), *not, v.iter().map(|c| code_s(*c)).collect()),
        ItemCond::RankIn(not, v) => within(f.rank(), *not, v.clone()),
        ItemCond::LabelIn(not, v) => {
            within(f.label(), *not, v.iter().map(|l| l.map(label_s)).collect())
        }
        ItemCond::Exists(which, present) => match which {
            ItemOptional::Label => f.label().exists(*present),
            ItemOptional::Score => f.score().exists(*present),
            ItemOptional::Tags => f.tags().exists(*present),
            ItemOptional::CreatedAt => f.created_at().exists(*present),
        },
        ItemCond::TagHas(t) => Filter::raw(doc! { "tags": tag_s(*t) }),
        ItemCond::TagsSize(n) => Filter::raw(doc! { "tags": { "$size": i32::from(*n) } }),
        ItemCond::TagsAll(v) => Filter::raw(doc! { "tags": { "$all": tags_s(v) } }),
        ItemCond::RankHalf(op, v) => {
            Filter::raw(doc! { "rank": raw_cmp(*op, Bson::Double(f64::from(*v) / 2.0)) })
        }
        ItemCond::TypeIs(f, alias) => Filter::raw(doc! { f.name(): { "$type": *alias } }),
        ItemCond::RankNotGt(v) => Filter::raw(doc! { "rank": { "$not": { "$gt": *v } } }),
        ItemCond::TagCmp(op, t) => {
            Filter::raw(doc! { "tags": raw_cmp(*op, Bson::String(tag_s(*t))) })
        }
        ItemCond::TagElemMatch(op, t) => {
            let inner = match raw_cmp(*op, Bson::String(tag_s(*t))) {
                Bson::Document(d) => d,
                eq => doc! { "$eq": eq },
            };
            Filter::raw(doc! { "tags": { "$elemMatch": inner } })
        }
        ItemCond::TagAt(i, t) => {
            let path = format!("tags.{i}");
            match t {
                Some(t) => Filter::raw(doc! { path: tag_s(*t) }),
                None => Filter::raw(doc! { path: { "$exists": true } }),
            }
        }
        ItemCond::Nor(inner) => match item_filter(inner).to_document() {
            Ok(d) => Filter::raw(doc! { "$nor": [d] }),
            Err(_) => Filter::all(),
        },
        ItemCond::And(a, b) => item_filter(a).and(item_filter(b)),
        ItemCond::Or(a, b) => item_filter(a).or(item_filter(b)),
    }
}

fn item_sort_key(k: ItemKey, desc: bool) -> Sort<Item> {
    let f = Item::fields();
    macro_rules! dir {
        ($field:expr) => {
            if desc {
                $field.desc()
            } else {
                $field.asc()
            }
        };
    }
    match k {
        ItemKey::Id => dir!(f.item_id()),
        ItemKey::Code => dir!(f.code()),
        ItemKey::Rank => dir!(f.rank()),
        ItemKey::Label => dir!(f.label()),
        ItemKey::Score => dir!(f.score()),
        ItemKey::Tags => dir!(f.tags()),
        ItemKey::Version => dir!(f.version()),
    }
}

fn note_filter(c: &NoteCond) -> Filter<Note> {
    let f = Note::fields();
    match c {
        NoteCond::All => Filter::all(),
        NoteCond::Slug(op, v) => compare(f.slug(), *op, format!("s{v}")),
        NoteCond::N(op, v) => compare(f.n(), *op, *v),
        NoteCond::Extra(op, v) => compare(f.extra(), *op, v.map(|e| format!("x{e}"))),
        NoteCond::ExtraExists(p) => f.extra().exists(*p),
        NoteCond::TagHas(t) => Filter::raw(doc! { "tags": tag_s(*t) }),
        NoteCond::MetaA(op, v) => Filter::raw(doc! { "meta.a": raw_cmp(*op, Bson::Int64(*v)) }),
        NoteCond::MetaFlag(v) => {
            Filter::raw(doc! { "meta.flag": v.map_or(Bson::Null, Bson::Boolean) })
        }
        NoteCond::Meta(op, v) => compare(f.meta(), *op, v.map(meta_of)),
        NoteCond::MetaExists(p) => f.meta().exists(*p),
        NoteCond::And(a, b) => note_filter(a).and(note_filter(b)),
        NoteCond::Or(a, b) => note_filter(a).or(note_filter(b)),
    }
}

fn note_sort_key(k: NoteKey, desc: bool) -> Sort<Note> {
    let f = Note::fields();
    macro_rules! dir {
        ($field:expr) => {
            if desc {
                $field.desc()
            } else {
                $field.asc()
            }
        };
    }
    match k {
        NoteKey::Id => dir!(f.note_id()),
        NoteKey::Slug => dir!(f.slug()),
        NoteKey::N => dir!(f.n()),
        NoteKey::Extra => dir!(f.extra()),
        NoteKey::Tags => dir!(f.tags()),
        NoteKey::Meta => dir!(f.meta()),
    }
}

/// The sort keys of a query without repeats (a sort document has each key once).
fn dedup_keys<K: Copy + PartialEq>(sort: &[(K, bool)]) -> Vec<(K, bool)> {
    let mut out: Vec<(K, bool)> = Vec::new();
    for (k, d) in sort {
        if !out.iter().any(|(o, _)| o == k) {
            out.push((*k, *d));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Results, normalized so the two backends can be compared.
// ---------------------------------------------------------------------------------------------

/// An error by kind: the variant (and, for version conflicts, the versions), never the
/// message, which names server specifics.
fn kind(e: &Error) -> String {
    match e {
        Error::VersionConflict {
            expected, actual, ..
        } => format!("VersionConflict(expected {expected}, actual {actual:?})"),
        other => {
            let debug = format!("{other:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

/// An item as compared: timestamps by presence only (their values are the write's time).
fn norm_item(mut i: Item) -> Item {
    let stamp = DateTime::from_millis(0);
    i.created_at = i.created_at.map(|_| stamp);
    i.updated_at = i.updated_at.map(|_| stamp);
    i
}

fn norm_items(items: Vec<Item>, keep_order: bool) -> Vec<Item> {
    let mut items: Vec<Item> = items.into_iter().map(norm_item).collect();
    if !keep_order {
        items.sort_by(|a, b| a.item_id.cmp(&b.item_id));
    }
    items
}

fn norm_notes(mut notes: Vec<Note>, keep_order: bool) -> Vec<Note> {
    if !keep_order {
        notes.sort_by(|a, b| a.note_id.cmp(&b.note_id));
    }
    notes
}

/// What one call returned.
#[derive(Debug, PartialEq)]
enum Res {
    Done,
    Bool(bool),
    Count(u64),
    Item(Option<Item>),
    Items(Vec<Item>),
    /// Keyset pages: each page's items and whether it had a next cursor.
    Pages(Vec<(Vec<Item>, bool)>),
    Replaced {
        version: u64,
        updated_at: bool,
    },
    Upserted(Upserted),
    Many {
        inserted: usize,
        failed: Vec<(usize, String)>,
    },
    Note(Option<Note>),
    Notes(Vec<Note>),
    Err(String),
}

fn res<T>(r: caas_storage::Result<T>, ok: impl FnOnce(T) -> Res) -> Res {
    match r {
        Ok(v) => ok(v),
        Err(e) => Res::Err(kind(&e)),
    }
}

/// One backend: its storage and repositories.
struct Side {
    storage: Storage,
    items: ItemRepository,
    notes: NoteRepository,
}

impl Side {
    async fn new(storage: Storage) -> Side {
        storage.sync_indexes::<Item>().await.unwrap();
        storage.sync_indexes::<Note>().await.unwrap();
        Side {
            items: ItemRepository::new(&storage),
            notes: NoteRepository::new(&storage),
            storage,
        }
    }

    fn item_query(
        &self,
        t: &TenantId,
        cond: &ItemCond,
        sort: &[(ItemKey, bool)],
    ) -> caas_storage::repo::Query<'_, Item> {
        let mut q = self.items.query(t).filter(item_filter(cond));
        for (k, d) in dedup_keys(sort) {
            q = q.sort(item_sort_key(k, d));
        }
        q
    }

    /// Runs `op` with the case's `tenants`.
    async fn run(&self, op: &Op, tenants: &[TenantId; 2]) -> Res {
        let tn = |i: &u8| &tenants[usize::from(*i)];
        let (items, notes) = (&self.items, &self.notes);
        match op {
            Op::Insert(t, s) => res(items.insert(tn(t), &item(tn(t), s)).await, |_| Res::Done),
            Op::InsertMany(t, v) => {
                let batch: Vec<Item> = v.iter().map(|s| item(tn(t), s)).collect();
                res(items.insert_many(tn(t), &batch).await, |r| Res::Many {
                    inserted: r.inserted,
                    failed: r.failed.iter().map(|(i, e)| (*i, kind(e))).collect(),
                })
            }
            Op::Update(t, i, p) => res(
                items.update(tn(t), &id_s(*i), item_patch_of(p)).await,
                |i| Res::Item(i.map(norm_item)),
            ),
            Op::UpdateChecked(t, i, v, p) => res(
                items
                    .update_checked(tn(t), &id_s(*i), *v, item_patch_of(p))
                    .await,
                |i| Res::Item(Some(norm_item(i))),
            ),
            Op::Replace(t, s) => {
                let mut it = item(tn(t), s);
                let r = items.replace(tn(t), &mut it).await;
                res(r, |_| Res::Replaced {
                    version: it.version,
                    updated_at: it.updated_at.is_some(),
                })
            }
            Op::Upsert(t, s) => res(items.upsert(tn(t), &item(tn(t), s)).await, Res::Upserted),
            Op::Delete(t, i) => res(items.delete(tn(t), &id_s(*i)).await, Res::Bool),
            Op::QueryDelete(t, c) => res(
                items.query(tn(t)).filter(item_filter(c)).delete().await,
                Res::Count,
            ),
            Op::FindById(t, i) => res(items.find_by_id(tn(t), &id_s(*i)).await, |i| {
                Res::Item(i.map(norm_item))
            }),
            Op::Get(t, i) => res(items.get(tn(t), &id_s(*i)).await, |i| {
                Res::Item(Some(norm_item(i)))
            }),
            Op::Exists(t, i) => res(items.exists(tn(t), &id_s(*i)).await, Res::Bool),
            Op::Count(t, c) => res(items.count(tn(t), item_filter(c)).await, Res::Count),
            Op::Query {
                tenant,
                cond,
                sort,
                skip,
                limit,
            } => {
                let mut q = self.item_query(tn(tenant), cond, sort);
                // Ties are ordered by the id, so the order is total: MongoDB leaves the
                // order of ties (and of an unsorted find) unspecified. Skip and limit only
                // apply to a sorted query, for the same reason.
                let sorted = !sort.is_empty();
                if sorted {
                    q = q.sort(Item::fields().item_id().asc());
                    if let Some(s) = skip {
                        q = q.skip(u64::from(*s));
                    }
                    if let Some(l) = limit {
                        q = q.limit(u32::from(*l));
                    }
                }
                res(q.fetch().await, |v| Res::Items(norm_items(v, sorted)))
            }
            Op::QueryCount {
                tenant,
                cond,
                skip,
                limit,
            } => {
                let mut q = items.query(tn(tenant)).filter(item_filter(cond));
                if let Some(s) = skip {
                    q = q.skip(u64::from(*s));
                }
                if let Some(l) = limit {
                    q = q.limit(u32::from(*l));
                }
                res(q.count().await, Res::Count)
            }
            Op::Pages {
                tenant,
                cond,
                sort,
                limit,
            } => {
                let limit = u32::from(*limit);
                let mut pages = Vec::new();
                let mut request = PageRequest::first(limit);
                for _ in 0..8 {
                    let page = self
                        .item_query(tn(tenant), cond, sort)
                        .page(request.clone())
                        .await;
                    let page = match page {
                        Ok(p) => p,
                        Err(e) => return Res::Err(kind(&e)),
                    };
                    let next = page.next_request(limit);
                    pages.push((norm_items(page.items, true), next.is_some()));
                    match next {
                        Some(r) => request = r,
                        None => break,
                    }
                }
                Res::Pages(pages)
            }
            Op::FindByCode(t, c) => res(items.find_by_code(tn(t), code_s(*c)).await, |i| {
                Res::Item(i.map(norm_item))
            }),
            Op::ListByRank(t, r, l) => res(
                items
                    .list_by_rank(tn(t), *r, PageRequest::first(u32::from(*l)))
                    .await,
                |p| Res::Pages(vec![(norm_items(p.items, true), p.next.is_some())]),
            ),
            Op::NoteInsert(t, s) => res(notes.insert(tn(t), &note(tn(t), s)).await, |_| Res::Done),
            Op::NoteInsertMany(t, v) => {
                let batch: Vec<Note> = v.iter().map(|s| note(tn(t), s)).collect();
                res(notes.insert_many(tn(t), &batch).await, |r| Res::Many {
                    inserted: r.inserted,
                    failed: r.failed.iter().map(|(i, e)| (*i, kind(e))).collect(),
                })
            }
            Op::NoteUpdate(t, i, p) => res(
                notes.update(tn(t), &id_s(*i), note_patch_of(p)).await,
                Res::Note,
            ),
            Op::NoteReplace(t, s) => {
                let mut n = note(tn(t), s);
                res(notes.replace(tn(t), &mut n).await, |_| Res::Done)
            }
            Op::NoteUpsert(t, s) => res(notes.upsert(tn(t), &note(tn(t), s)).await, Res::Upserted),
            Op::NoteDelete(t, i) => res(notes.delete(tn(t), &id_s(*i)).await, Res::Bool),
            Op::NotePurge(t, i) => res(notes.purge(tn(t), &id_s(*i)).await, Res::Bool),
            Op::NoteQueryDelete(t, c) => res(
                notes.query(tn(t)).filter(note_filter(c)).delete().await,
                Res::Count,
            ),
            Op::NoteFind(t, i) => res(notes.find_by_id(tn(t), &id_s(*i)).await, Res::Note),
            Op::NoteExists(t, i) => res(notes.exists(tn(t), &id_s(*i)).await, Res::Bool),
            Op::NoteCount(t, c) => res(notes.count(tn(t), note_filter(c)).await, Res::Count),
            Op::NoteQuery {
                tenant,
                cond,
                sort,
                skip,
                limit,
            } => {
                let mut q = notes.query(tn(tenant)).filter(note_filter(cond));
                let sorted = !sort.is_empty();
                if sorted {
                    for (k, d) in dedup_keys(sort) {
                        q = q.sort(note_sort_key(k, d));
                    }
                    // See `Op::Query`: ties by id; skip and limit only when sorted.
                    q = q.sort(Note::fields().note_id().asc());
                    if let Some(s) = skip {
                        q = q.skip(u64::from(*s));
                    }
                    if let Some(l) = limit {
                        q = q.limit(u32::from(*l));
                    }
                }
                res(q.fetch().await, |v| Res::Notes(norm_notes(v, sorted)))
            }
            Op::NoteQueueUpsert(t, s) => {
                let queued = notes.queue_upsert(tn(t), &note(tn(t), s)).await;
                self.flushed(queued).await
            }
            Op::NoteQueueUpdate(t, i, p) => {
                let queued = notes.queue_update(tn(t), &id_s(*i), note_patch_of(p)).await;
                self.flushed(queued).await
            }
            Op::NoteQueueDelete(t, i) => {
                let queued = notes.queue_delete(tn(t), &id_s(*i)).await;
                self.flushed(queued).await
            }
            Op::NoteFindBySlug(t, s) => {
                res(notes.find_by_slug(tn(t), format!("s{s}")).await, Res::Note)
            }
        }
    }

    /// A queued write's result, once the queue is flushed (so it is applied before the next
    /// call, on both backends alike).
    async fn flushed(&self, queued: caas_storage::Result<()>) -> Res {
        if let Err(e) = queued {
            return Res::Err(kind(&e));
        }
        let flushed = self
            .storage
            .write_behind()
            .flush::<Note>(std::time::Duration::from_secs(10))
            .await;
        res(flushed, |_| Res::Done)
    }

    /// The events recorded since the last call, of the case's tenants: (tenant, aggregate,
    /// event type, revision), sorted (one call can write several aggregates).
    async fn events(
        &self,
        tenants: &[TenantId; 2],
    ) -> Result<Vec<(usize, String, String, u64)>, String> {
        let mut out: Vec<_> = self
            .storage
            .take_test_events()
            .await
            .map_err(|e| format!("reading events: {e}"))?
            .into_iter()
            .filter_map(|r| {
                let t = tenants
                    .iter()
                    .position(|t| t.as_str() == r.envelope.tenant)?;
                Some((
                    t,
                    r.envelope.aggregate_id,
                    r.envelope.event_type,
                    r.envelope.revision,
                ))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every stored document of `tenant` in `collection`, as compared: the values of time
    /// stamps and of random ids replaced by their type (their presence must match), sorted by
    /// the entity id, fields in stored order.
    async fn stored(
        &self,
        collection: &str,
        tenant: &TenantId,
    ) -> Result<Vec<Vec<(String, Bson)>>, String> {
        let docs = self
            .storage
            .raw()
            .documents(DB, collection, doc! { "tenant_id": tenant.as_str() })
            .await
            .map_err(|e| format!("reading {collection}: {e}"))?;
        let mut out: Vec<Vec<(String, Bson)>> = docs.into_iter().map(normalize).collect();
        out.sort_by_key(|d| entity_id(d));
        Ok(out)
    }
}

/// Framework and timestamp fields whose values legitimately differ between the backends (the
/// time of a write, random ids, Redis stream ids); their presence and type are still compared.
const VOLATILE: [&str; 6] = [
    "_deleted_at",
    "_incarnation",
    "_outbox_op",
    "_queue_pos",
    "created_at",
    "updated_at",
];

fn normalize(d: Document) -> Vec<(String, Bson)> {
    d.into_iter()
        .map(|(k, v)| {
            if VOLATILE.contains(&k.as_str()) && v != Bson::Null {
                let marker = Bson::String(format!("<{:?}>", v.element_type()));
                (k, marker)
            } else {
                (k, v)
            }
        })
        .collect()
}

fn entity_id(d: &[(String, Bson)]) -> String {
    d.iter()
        .find(|(k, _)| k == "item_id" || k == "note_id")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

/// Why a case did not pass.
#[derive(Debug)]
enum CaseError {
    /// The backends answered differently: what, where.
    Diverged(String),
    /// The server failed outside the compared calls (or is gone): no verdict on the memory
    /// backend, so the run stops rather than shrink.
    Server(String),
}

/// A memory-side failure outside the compared calls is a divergence (the memory backend must
/// answer); a server-side one is [`CaseError::Server`].
fn memory_side<T>(r: Result<T, String>) -> Result<T, CaseError> {
    r.map_err(|e| CaseError::Diverged(format!("memory backend: {e}")))
}

fn server_side<T>(r: Result<T, String>) -> Result<T, CaseError> {
    r.map_err(CaseError::Server)
}

/// The two backends of a run.
struct Env {
    server: Side,
    config: StorageConfig,
}

impl Env {
    async fn new() -> Env {
        let server = Side::new(common::storage().await).await;
        // Events of earlier runs are not this run's.
        server.storage.take_test_events().await.unwrap();
        Env {
            server,
            config: common::config(),
        }
    }

    /// Runs `ops` on a fresh memory storage and on the server with two fresh tenants, and
    /// says where they first differ.
    async fn case(&self, ops: &[Op]) -> Result<(), CaseError> {
        let memory = Side::new(
            Storage::in_memory_with(self.config.clone())
                .await
                .expect("the suite's configuration is valid"),
        )
        .await;
        let tenants = [common::tenant("diff-a"), common::tenant("diff-b")];
        let outcome = match self.compare(&memory, ops, &tenants).await {
            // A server that stopped answering shows as a difference first: tell them apart.
            Err(CaseError::Diverged(why)) => match self.ping().await {
                Ok(()) => Err(CaseError::Diverged(why)),
                Err(down) => Err(CaseError::Server(format!("{down} (after: {why})"))),
            },
            other => other,
        };
        let cleaned = self.clean_server(&tenants).await;
        outcome.and(server_side(cleaned))
    }

    /// Whether the server still answers.
    async fn ping(&self) -> Result<(), String> {
        self.server
            .storage
            .raw()
            .documents(DB, ITEMS, doc! { "_id": "ping" })
            .await
            .map(drop)
            .map_err(|e| format!("the server does not answer: {e}"))
    }

    async fn compare(
        &self,
        memory: &Side,
        ops: &[Op],
        tenants: &[TenantId; 2],
    ) -> Result<(), CaseError> {
        let server = &self.server;
        for (n, op) in ops.iter().enumerate() {
            let (m, s) = (memory.run(op, tenants).await, server.run(op, tenants).await);
            if m != s {
                return Err(CaseError::Diverged(format!(
                    "operation {n} {op:?} returned\n  memory: {m:?}\n  server: {s:?}"
                )));
            }
            let m = memory_side(memory.events(tenants).await)?;
            let s = server_side(server.events(tenants).await)?;
            if m != s {
                return Err(CaseError::Diverged(format!(
                    "operation {n} {op:?} recorded events\n  memory: {m:?}\n  server: {s:?}"
                )));
            }
        }
        for (i, t) in tenants.iter().enumerate() {
            let read = |side: &Side| {
                let t = t.clone();
                let (items, notes) = (side.items.clone(), side.notes.clone());
                async move {
                    let i = items.query(&t).fetch().await.map(|v| norm_items(v, false));
                    let n = notes.query(&t).fetch().await.map(|v| norm_notes(v, false));
                    (format!("{i:?}"), format!("{n:?}"))
                }
            };
            let (m, s) = (read(memory).await, read(server).await);
            if m != s {
                return Err(CaseError::Diverged(format!(
                    "tenant {i}: the repository reads\n  memory: {m:?}\n  server: {s:?}"
                )));
            }
            for coll in [ITEMS, NOTES] {
                let m = memory_side(memory.stored(coll, t).await)?;
                let s = server_side(server.stored(coll, t).await)?;
                if m != s {
                    return Err(CaseError::Diverged(format!(
                        "tenant {i}: the stored documents of {coll}\n  memory: {m:?}\n  server: {s:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Removes the case's documents and events from the server, so its collections (which
    /// FerretDB scans for most filters) stay small however many runs it has seen.
    async fn clean_server(&self, tenants: &[TenantId; 2]) -> Result<(), String> {
        let names: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
        let db = self.server.storage.raw().database(DB);
        for (coll, field) in [
            (ITEMS, "tenant_id"),
            (NOTES, "tenant_id"),
            ("caas_outbox", "tenant"),
            ("caas_outbox_published", "tenant"),
        ] {
            db.collection::<Document>(coll)
                .delete_many(doc! { field: { "$in": names.clone() } })
                .await
                .map_err(|e| format!("cleaning {coll}: {e}"))?;
        }
        Ok(())
    }
}

/// A runtime for one test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// Random sequences: the memory backend answers as FerretDB does.
#[test]
fn memory_backend_matches_the_server() {
    let cases = env_u64("CAAS_DIFF_CASES").map_or(DEFAULT_CASES, |n| n as u32);
    let seed = env_u64("CAAS_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        // Shrinking replays cases on the server: bounded in count and time.
        max_shrink_iters: 4096,
        max_shrink_time: 240_000,
        // A case is rejected only when the server fails (`CaseError::Server`): the first
        // rejection aborts the run. (The default would also read PROPTEST_* variables.)
        max_global_rejects: 0,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let rt = runtime();
    let env = rt.block_on(Env::new());
    let (runs, operations) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let server_failure = std::sync::Mutex::new(None::<String>);
    let started = Instant::now();
    let outcome = runner.run(&ops(), |ops| {
        runs.fetch_add(1, Ordering::Relaxed);
        operations.fetch_add(ops.len(), Ordering::Relaxed);
        match rt.block_on(env.case(&ops)) {
            Ok(()) => Ok(()),
            Err(CaseError::Diverged(why)) => Err(TestCaseError::fail(why)),
            Err(CaseError::Server(why)) => {
                *server_failure.lock().unwrap() = Some(why.clone());
                Err(TestCaseError::reject(why))
            }
        }
    });
    let server_failure = server_failure.into_inner().unwrap();
    let (runs, operations) = (runs.into_inner(), operations.into_inner());
    // Written to the process's stderr itself, which the test harness does not capture: CI
    // logs show the counts of a passing run too.
    let _ = writeln!(
        std::io::stderr(),
        "differential: {runs} cases, {operations} operations, seed {seed:#x}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    match (outcome, server_failure) {
        (Ok(()), None) => {}
        (Err(TestError::Fail(why, minimal)), failure) => {
            // While shrinking, a rejected case counts as passing, so a server failure then
            // leaves the sequence less than minimal.
            let note = failure
                .map(|f| {
                    format!(
                        "\n(the server failed while shrinking, so this may not be minimal: {f})"
                    )
                })
                .unwrap_or_default();
            panic!("the backends diverge (seed {seed:#x}); minimal sequence:\n{minimal:#?}\n{why}{note}")
        }
        (_, Some(why)) => {
            panic!(
                "the server failed, so the run stopped (no verdict on the memory backend): {why}"
            )
        }
        (Err(TestError::Abort(why)), None) => panic!("aborted: {why}"),
    }
}

/// Replays one fixed sequence on both backends (the regression tests below).
fn replay(ops: Vec<Op>) {
    let rt = runtime();
    let env = rt.block_on(Env::new());
    match rt.block_on(env.case(&ops)) {
        Ok(()) => {}
        Err(CaseError::Diverged(why)) => panic!("the backends diverge: {why}"),
        Err(CaseError::Server(why)) => panic!("the server failed: {why}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests: the minimal sequences of the divergences found, replayed on both backends.
// ---------------------------------------------------------------------------------------------

fn note0() -> NoteSpec {
    NoteSpec {
        id: 0,
        slug: 0,
        n: 0,
        extra: None,
        tags: vec![],
        meta: None,
    }
}

/// Diverged: an upsert of a new soft-deleting entity stored `_deleted_at: null` in memory.
/// Its filter is `{_id, _deleted_at: null}`, and the memory backend seeded the inserted
/// document with the filter's equalities, as an update-style upsert does. A replacement-style
/// upsert (`replaceOne`) takes only the `_id` from the filter, on FerretDB and MongoDB alike.
#[test]
fn a_replacing_upsert_takes_only_the_id_from_its_filter() {
    replay(vec![Op::NoteUpsert(0, note0())]);
}

fn item0() -> ItemSpec {
    ItemSpec {
        id: 0,
        code: 0,
        rank: 0,
        label: None,
        score: None,
        tags: vec![],
        version: 0,
    }
}

/// Diverged: the memory backend kept `_id` where the inserted document had it (the repository
/// appends it); servers store `_id` as the first field of every document.
#[test]
fn an_inserted_document_stores_its_id_first() {
    replay(vec![Op::Insert(0, item0())]);
}

/// Diverged: a count with `limit(0)` counted everything in memory. The driver counts with an
/// aggregation whose `$limit: 0` stage the server refuses (MongoDB: error 15958, "the limit
/// must be positive"; FerretDB refuses it too), unlike a find's limit 0, which means none.
#[test]
fn a_count_limited_to_zero_is_refused() {
    replay(vec![Op::QueryCount {
        tenant: 0,
        cond: ItemCond::All,
        skip: None,
        limit: Some(0),
    }]);
}

/// Not a memory divergence but FerretDB's own: an update that would duplicate a unique key is
/// refused with InternalError (1) and "UNIQUE constraint failed" on FerretDB, with 11000 on
/// MongoDB and in memory. The repository took FerretDB's answer for an unknown outcome and kept
/// the write's version claim, so later writes of the document conflicted there only; it now
/// reads it as the duplicate key it is (`docs/ferretdb.md`). Both sides refuse the update with
/// `DuplicateKey`, and the next write of the same document goes through on both.
#[test]
fn an_update_that_duplicates_a_unique_key_is_refused() {
    let (mut a, mut b) = (item0(), item0());
    (a.id, b.id, b.code) = (1, 2, 2);
    replay(vec![
        Op::Insert(1, a),
        Op::Insert(1, b),
        Op::Update(
            1,
            1,
            ItemPatchSpec {
                code: Some(2),
                rank: None,
                label: None,
                score: None,
                tags: None,
            },
        ),
        Op::Update(
            1,
            1,
            ItemPatchSpec {
                code: None,
                rank: Some(7),
                label: None,
                score: None,
                tags: None,
            },
        ),
    ]);
}
