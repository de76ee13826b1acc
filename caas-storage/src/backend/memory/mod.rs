//! The memory backend: documents kept in this process, for users' unit tests
//! ([`Storage::in_memory`](crate::Storage::in_memory)).
//!
//! It answers what the executor sends with MongoDB's semantics (`eval/`: filters with BSON
//! type ordering and array rules, update operators, sorts, projections), enforces `_id` and
//! the declared unique indexes with the same duplicate-key error, and runs transactions with
//! real atomicity. Writes are serialized (one transaction or one write at a time), so a commit
//! never has to detect a conflict. A transaction writes in place and keeps the version before
//! it of each document it touches: reads outside it see those (what was committed), an abort
//! puts them back, a commit forgets them. So a transactional write costs what the document
//! costs, whatever the size of the collection.
//!
//! Not modelled: durability, replication and read preferences, server limits (document size,
//! index key size), collation, `$regex`, aggregation.

pub(crate) mod eval;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::FindOptions;
use tokio::sync::OwnedMutexGuard;

use super::{CollectionBackend, DriverResult, Session, Updated};
use crate::entity::EntityMeta;
use eval::error::EvalError;
use eval::path::split_head;

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Every database of one in-memory storage. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub(crate) struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The storage's clock (milliseconds since the epoch), read by `$currentDate`. Handed in
    /// by the connection layer, which owns the clock.
    now_ms: Option<Arc<dyn Fn() -> i64 + Send + Sync>>,
    state: Mutex<State>,
    /// Held by each write, and by a transaction from start to commit or abort.
    writer: Arc<tokio::sync::Mutex<()>>,
}

type Namespace = (String, String);

#[derive(Clone, Default)]
struct State {
    colls: HashMap<Namespace, CollState>,
}

/// Keys (`_id`s, unique index keys) to document positions, with a fast hasher: these maps
/// are consulted on every write and read by `_id`.
type KeyMap = HashMap<String, u64, foldhash::fast::RandomState>;

/// One collection: documents in insertion order, their `_id`s, its unique indexes.
#[derive(Clone, Default)]
struct CollState {
    docs: BTreeMap<u64, Document>,
    ids: KeyMap,
    next: u64,
    unique: Vec<UniqueIndex>,
    /// While a transaction that wrote here is open: the committed version of each document it
    /// touched (`None`: it did not exist), which reads outside the transaction see.
    shadow: BTreeMap<u64, Option<Document>>,
    /// Whether writes are a transaction's (and fill `shadow`).
    recording: bool,
}

/// Which documents a call sees: the latest writes (every write, and the transaction that is
/// open), or what was committed (reads, which take no session).
#[derive(Clone, Copy, PartialEq)]
enum View {
    Latest,
    Committed,
}

/// A unique index: its keys, and each indexed key's document (by position), so that a write
/// is checked in constant time.
#[derive(Clone, Debug)]
struct UniqueIndex {
    name: String,
    keys: Vec<String>,
    entries: KeyMap,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store whose `$currentDate` reads `now_ms` (milliseconds since the epoch).
    pub(crate) fn new(now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                now_ms: Some(Arc::new(now_ms)),
                ..Inner::default()
            }),
        }
    }

    /// Now, as the storage's clock says (real time for a store built without one).
    fn now(&self) -> mongodb::bson::DateTime {
        match &self.inner.now_ms {
            Some(now_ms) => mongodb::bson::DateTime::from_millis(now_ms()),
            None => mongodb::bson::DateTime::now(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The collection `database.collection` of this store.
    pub(crate) fn collection(&self, database: &str, collection: &str) -> MemoryCollection {
        MemoryCollection {
            store: self.clone(),
            ns: (database.to_owned(), collection.to_owned()),
        }
    }

    /// Enforces `meta`'s unique indexes from now on (as `sync_indexes` does on a server).
    /// `database` is `meta`'s database as stored (with `mongodb.database_suffix`).
    pub(crate) fn declare_indexes(&self, database: &str, meta: &EntityMeta) {
        let mut state = self.state();
        let coll = state
            .colls
            .entry((database.to_owned(), meta.collection.to_owned()))
            .or_default();
        for spec in meta.indexes.iter().filter(|s| s.unique) {
            coll.add_unique(
                spec.name.to_owned(),
                spec.keys.iter().map(|k| k.field.to_owned()).collect(),
            );
        }
    }

    /// A new transaction handle (not started).
    pub(crate) fn session(&self) -> Transaction {
        Transaction {
            store: self.clone(),
            guard: None,
            touched: HashSet::new(),
        }
    }
}

/// A transaction on the memory backend. It writes in place; each collection it wrote keeps the
/// committed version of what it touched until it commits (forgotten) or aborts (put back).
/// Writes of everyone else wait until then. Dropped while open, it aborts.
pub(crate) struct Transaction {
    store: MemoryStore,
    guard: Option<OwnedMutexGuard<()>>,
    touched: HashSet<Namespace>,
}

impl Transaction {
    pub(crate) async fn start(&mut self) -> DriverResult<()> {
        if self.guard.is_some() {
            return Err(command_error(
                256,
                "TransactionInProgress",
                "Transaction already in progress",
            ));
        }
        self.guard = Some(self.store.inner.writer.clone().lock_owned().await);
        self.touched.clear();
        Ok(())
    }

    pub(crate) fn commit(&mut self) -> DriverResult<()> {
        if self.guard.is_none() {
            return Err(command_error(
                251,
                "NoSuchTransaction",
                "no transaction started",
            ));
        }
        let mut state = self.store.state();
        for ns in self.touched.drain() {
            if let Some(coll) = state.colls.get_mut(&ns) {
                coll.shadow.clear();
                coll.recording = false;
            }
        }
        drop(state);
        self.guard = None;
        Ok(())
    }

    pub(crate) fn abort(&mut self) {
        if self.guard.is_none() {
            return;
        }
        let mut state = self.store.state();
        for ns in self.touched.drain() {
            if let Some(coll) = state.colls.get_mut(&ns) {
                coll.roll_back();
            }
        }
        drop(state);
        self.guard = None;
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.abort();
    }
}

/// One collection of a [`MemoryStore`].
pub(crate) struct MemoryCollection {
    store: MemoryStore,
    ns: Namespace,
}

impl MemoryCollection {
    /// Runs `f` on the live collection (serialized with transactions), or on the copy of the
    /// transaction `session` when given.
    async fn write<T>(
        &self,
        session: Option<&mut Session>,
        f: impl FnOnce(&mut CollState, &Namespace) -> DriverResult<T>,
    ) -> DriverResult<T> {
        match session {
            Some(Session::Memory(t)) => {
                if t.guard.is_none() {
                    return Err(command_error(
                        251,
                        "NoSuchTransaction",
                        "no transaction started",
                    ));
                }
                if !t.touched.contains(&self.ns) {
                    t.touched.insert(self.ns.clone());
                }
                let mut state = self.store.state();
                let coll = state.colls.entry(self.ns.clone()).or_default();
                coll.recording = true;
                f(coll, &self.ns)
            }
            Some(Session::Mongo(_)) => Err(mongodb::error::Error::custom(
                "a MongoDB session was passed to a memory-backend collection",
            )),
            None => {
                let _writer = self.store.inner.writer.lock().await;
                let mut state = self.store.state();
                let coll = state.colls.entry(self.ns.clone()).or_default();
                f(coll, &self.ns)
            }
        }
    }

    /// Runs `f` on the collection as committed (see [`View::Committed`]).
    fn read<T>(&self, f: impl FnOnce(&CollState) -> DriverResult<T>) -> DriverResult<T> {
        let state = self.store.state();
        match state.colls.get(&self.ns) {
            Some(c) => f(c),
            None => f(&CollState::default()),
        }
    }
}

#[async_trait]
impl CollectionBackend for MemoryCollection {
    async fn find(&self, filter: Document, options: FindOptions) -> DriverResult<Vec<Document>> {
        self.read(|c| c.find(&filter, &options, View::Committed))
    }

    async fn stream_raw(
        &self,
        filter: Document,
        options: FindOptions,
    ) -> DriverResult<BoxStream<'static, DriverResult<RawDocumentBuf>>> {
        let docs = self.read(|c| c.find(&filter, &options, View::Committed))?;
        let raws: Vec<DriverResult<RawDocumentBuf>> = docs
            .iter()
            .map(|d| RawDocumentBuf::from_document(d).map_err(mongodb::error::Error::custom))
            .collect();
        Ok(stream::iter(raws).boxed())
    }

    async fn count(
        &self,
        filter: Document,
        skip: Option<u64>,
        limit: Option<u64>,
    ) -> DriverResult<u64> {
        // The driver counts with an aggregation whose `$limit` stage refuses 0 (unlike a
        // find's limit, where 0 means none).
        if limit == Some(0) {
            return Err(command_error(
                15958,
                "Location15958",
                "the limit must be positive",
            ));
        }
        self.read(|c| {
            let n = c.matching(&filter, View::Committed)?.len() as u64;
            let n = n.saturating_sub(skip.unwrap_or(0));
            Ok(limit.map_or(n, |l| n.min(l)))
        })
    }

    async fn distinct(&self, field: &str, filter: Document) -> DriverResult<Vec<Bson>> {
        self.read(|c| {
            let mut out: Vec<Bson> = Vec::new();
            for seq in c.matching(&filter, View::Committed)? {
                let Some(doc) = c.doc(seq, View::Committed) else {
                    continue;
                };
                for v in eval::path::get_path(doc, field) {
                    let values: Vec<&Bson> = match v {
                        Bson::Array(a) => a.iter().collect(),
                        v => vec![v],
                    };
                    for v in values {
                        if !out.iter().any(|o| eval::compare::values_equal(o, v)) {
                            out.push(v.clone());
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    async fn insert_one(&self, doc: &Document, session: Option<&mut Session>) -> DriverResult<()> {
        self.write(session, |c, ns| {
            c.insert(id_first(doc), ns).map_err(write_error)
        })
        .await
    }

    async fn insert_many(
        &self,
        docs: &[Document],
        ordered: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<()> {
        self.write(session, |c, ns| {
            let mut errors = Vec::new();
            for (i, d) in docs.iter().enumerate() {
                if let Err((code, name, message)) = c.insert(id_first(d), ns) {
                    errors.push(doc! { "index": i as i64, "code": code, "codeName": name, "errmsg": message });
                    if ordered {
                        break;
                    }
                }
            }
            if errors.is_empty() {
                return Ok(());
            }
            let report: mongodb::error::InsertManyError =
                mongodb::bson::from_document(doc! { "writeErrors": errors })
                    .map_err(mongodb::error::Error::custom)?;
            Err(ErrorKind::InsertMany(report).into())
        })
        .await
    }

    async fn update(
        &self,
        filter: Document,
        update: Document,
        multi: bool,
        upsert: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Updated> {
        let now = self.store.now();
        self.write(session, |c, ns| {
            let mut seqs = c.matching(&filter, View::Latest)?;
            if !multi {
                seqs.truncate(1);
            }
            let mut result = Updated {
                matched: seqs.len() as u64,
                ..Updated::default()
            };
            for seq in seqs {
                let mut next = c.docs[&seq].clone();
                if eval::update::apply_update(&mut next, &update, false, now).map_err(bad_value)? {
                    c.put(seq, next, ns).map_err(write_error)?;
                    result.modified += 1;
                }
            }
            if result.matched == 0 && upsert {
                let mut seed = eval::update::upsert_seed(&filter);
                eval::update::apply_update(&mut seed, &update, true, now).map_err(bad_value)?;
                let id = ensure_id(&mut seed);
                c.insert(seed, ns).map_err(write_error)?;
                result.upserted_id = Some(id);
            }
            Ok(result)
        })
        .await
    }

    async fn replace(
        &self,
        filter: Document,
        doc: &Document,
        upsert: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Updated> {
        if doc.keys().any(|k| k.starts_with('$')) {
            return Err(bad_value(EvalError::BadValue(
                "the replacement document must not contain update operators".into(),
            )));
        }
        self.write(session, |c, ns| {
            let Some(seq) = c.matching(&filter, View::Latest)?.first().copied() else {
                if !upsert {
                    return Ok(Updated::default());
                }
                // A replacement-style upsert inserts the replacement, with the filter's `_id`
                // equality when the replacement has none: unlike an update, the filter's
                // other equalities (`_deleted_at: null`, ...) are not copied in.
                let mut new = Document::new();
                if let Some(id) = doc
                    .get("_id")
                    .cloned()
                    .or_else(|| eval::update::upsert_seed(&filter).remove("_id"))
                {
                    new.insert("_id", id);
                }
                for (k, v) in doc.iter().filter(|(k, _)| *k != "_id") {
                    new.insert(k.clone(), v.clone());
                }
                let id = ensure_id(&mut new);
                c.insert(new, ns).map_err(write_error)?;
                return Ok(Updated {
                    upserted_id: Some(id),
                    ..Updated::default()
                });
            };
            let old_id = c.docs[&seq].get("_id").cloned().unwrap_or(Bson::Null);
            if let Some(new_id) = doc.get("_id") {
                if !eval::compare::values_equal(new_id, &old_id) {
                    return Err(command_error(
                        66,
                        "ImmutableField",
                        "After applying the update, the (immutable) field '_id' was found to have been altered",
                    ));
                }
            }
            let mut new = Document::new();
            new.insert("_id", old_id);
            for (k, v) in doc.iter().filter(|(k, _)| *k != "_id") {
                new.insert(k.clone(), v.clone());
            }
            let modified = u64::from(new != c.docs[&seq]);
            c.put(seq, new, ns).map_err(write_error)?;
            Ok(Updated {
                matched: 1,
                modified,
                upserted_id: None,
            })
        })
        .await
    }

    async fn find_one_and_update(
        &self,
        filter: Document,
        update: Document,
        after: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Option<Document>> {
        let now = self.store.now();
        self.write(session, |c, ns| {
            let Some(seq) = c.matching(&filter, View::Latest)?.first().copied() else {
                return Ok(None);
            };
            let before = c.docs[&seq].clone();
            let mut next = before.clone();
            if eval::update::apply_update(&mut next, &update, false, now).map_err(bad_value)? {
                c.put(seq, next.clone(), ns).map_err(write_error)?;
            }
            Ok(Some(if after { next } else { before }))
        })
        .await
    }

    async fn create_index(&self, model: mongodb::IndexModel) -> DriverResult<()> {
        if model
            .options
            .as_ref()
            .is_none_or(|o| o.unique != Some(true))
        {
            return Ok(());
        }
        let keys: Vec<String> = model.keys.keys().cloned().collect();
        let name = model
            .options
            .as_ref()
            .and_then(|o| o.name.clone())
            .unwrap_or_else(|| {
                keys.iter()
                    .map(|k| format!("{k}_1"))
                    .collect::<Vec<_>>()
                    .join("_")
            });
        self.write(None, |c, _| {
            c.add_unique(name, keys);
            Ok(())
        })
        .await
    }

    async fn delete(
        &self,
        filter: Document,
        multi: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<u64> {
        self.write(session, |c, _| {
            let mut seqs = c.matching(&filter, View::Latest)?;
            if !multi {
                seqs.truncate(1);
            }
            for seq in &seqs {
                c.remove(*seq);
            }
            Ok(seqs.len() as u64)
        })
        .await
    }
}

/// A refused write: code, code name, message.
type Refusal = (i32, &'static str, String);

impl CollState {
    /// The positions of the matching documents, in insertion order. A filter on `_id` alone
    /// is answered from the `_id` map.
    fn matching(&self, filter: &Document, view: View) -> DriverResult<Vec<u64>> {
        let view = if self.shadow.is_empty() {
            View::Latest
        } else {
            view
        };
        if view == View::Latest && filter.len() == 1 {
            if let Some(id) = filter.get("_id").filter(|v| !is_operator_doc(v)) {
                return Ok(self.ids.get(&id_key(id)).copied().into_iter().collect());
            }
        }
        let compiled = eval::filter::Filter::new(filter).map_err(bad_value)?;
        // A filter that fixes the `_id` (the pipeline's writes: `_id` and a version) looks
        // at that one document only: the one the `_id` map names, or, as committed, one a
        // transaction deleted.
        if let Some(id) = id_equality(filter) {
            let key = id_key(id);
            let mut seqs: Vec<u64> = self.ids.get(&key).copied().into_iter().collect();
            if view == View::Committed {
                seqs.extend(self.shadow.iter().filter_map(|(seq, d)| {
                    let d = d.as_ref()?;
                    (id_key(d.get("_id").unwrap_or(&Bson::Null)) == key).then_some(*seq)
                }));
                seqs.sort_unstable();
                seqs.dedup();
            }
            return Ok(seqs
                .into_iter()
                .filter(|seq| self.doc(*seq, view).is_some_and(|d| compiled.matches(d)))
                .collect());
        }
        let matches = |(seq, d): (u64, &Document)| compiled.matches(d).then_some(seq);
        Ok(match view {
            View::Latest => self
                .docs
                .iter()
                .filter_map(|(s, d)| matches((*s, d)))
                .collect(),
            View::Committed => self.committed().into_iter().filter_map(matches).collect(),
        })
    }

    /// The document at `seq` as `view` sees it.
    fn doc(&self, seq: u64, view: View) -> Option<&Document> {
        match self.shadow.get(&seq) {
            Some(before) if view == View::Committed => before.as_ref(),
            _ => self.docs.get(&seq),
        }
    }

    /// Every committed document, in insertion order, while a transaction is open here.
    fn committed(&self) -> Vec<(u64, &Document)> {
        let mut out: Vec<(u64, &Document)> = self
            .docs
            .keys()
            .chain(self.shadow.keys().filter(|s| !self.docs.contains_key(s)))
            .filter_map(|s| Some((*s, self.doc(*s, View::Committed)?)))
            .collect();
        out.sort_unstable_by_key(|(s, _)| *s);
        out
    }

    /// Keeps the committed version of the document at `seq`, the first time an open
    /// transaction touches it.
    fn remember(&mut self, seq: u64) {
        if self.recording && !self.shadow.contains_key(&seq) {
            let before = self.docs.get(&seq).cloned();
            self.shadow.insert(seq, before);
        }
    }

    /// Undoes the open transaction's writes here: puts the committed versions back.
    fn roll_back(&mut self) {
        self.recording = false;
        let shadow = std::mem::take(&mut self.shadow);
        for seq in shadow.keys() {
            self.remove(*seq);
        }
        for (seq, before) in shadow {
            if let Some(doc) = before {
                // It was stored, so its keys compute.
                let keys = self.unique_keys(&doc).unwrap_or_default();
                self.ids
                    .insert(id_key(doc.get("_id").unwrap_or(&Bson::Null)), seq);
                self.place(seq, doc, keys);
            }
        }
    }

    /// Stores `doc` at `seq` with its unique-index entries `keys` (checked by the caller; the
    /// `_id` map is the caller's too).
    fn place(&mut self, seq: u64, doc: Document, keys: Vec<Vec<String>>) {
        for (u, ks) in self.unique.iter_mut().zip(keys) {
            for k in ks {
                u.entries.insert(k, seq);
            }
        }
        self.docs.insert(seq, doc);
    }

    fn find(
        &self,
        filter: &Document,
        options: &FindOptions,
        view: View,
    ) -> DriverResult<Vec<Document>> {
        let mut docs: Vec<Document> = self
            .matching(filter, view)?
            .into_iter()
            .filter_map(|s| self.doc(s, view).cloned())
            .collect();
        if let Some(sort) = &options.sort {
            eval::sort::sort_docs(&mut docs, sort).map_err(bad_value)?;
        }
        let skip = usize::try_from(options.skip.unwrap_or(0)).unwrap_or(usize::MAX);
        let mut docs: Vec<Document> = docs.into_iter().skip(skip).collect();
        if let Some(limit) = options.limit.filter(|l| *l != 0) {
            docs.truncate(usize::try_from(limit.unsigned_abs()).unwrap_or(usize::MAX));
        }
        if let Some(p) = &options.projection {
            docs = docs
                .iter()
                .map(|d| eval::project::project(d, p))
                .collect::<Result<_, _>>()
                .map_err(bad_value)?;
        }
        Ok(docs)
    }

    /// Inserts `doc` (with an `_id` generated when it has none) unless it breaks `_id` or a
    /// unique index.
    fn insert(&mut self, mut doc: Document, ns: &Namespace) -> Result<(), Refusal> {
        let id = ensure_id(&mut doc);
        let key = id_key(&id);
        if self.ids.contains_key(&key) {
            return Err(duplicate(ns, "_id_", &doc! { "_id": id }));
        }
        let keys = self.unique_keys(&doc)?;
        self.check_unique(&doc, &keys, None, ns)?;
        let seq = self.next;
        self.next += 1;
        self.remember(seq);
        self.ids.insert(key, seq);
        self.place(seq, doc, keys);
        Ok(())
    }

    /// Removes the document at `seq`, with its `_id` and index entries.
    fn remove(&mut self, seq: u64) {
        self.remember(seq);
        if let Some(d) = self.docs.remove(&seq) {
            self.ids
                .remove(&id_key(d.get("_id").unwrap_or(&Bson::Null)));
            self.unindex(seq, &d);
        }
    }

    /// Adds a unique index (unless one with these keys or this name exists), indexing the
    /// documents already there.
    fn add_unique(&mut self, name: String, keys: Vec<String>) {
        if self.unique.iter().any(|u| u.keys == keys || u.name == name) {
            return;
        }
        let mut entries = KeyMap::default();
        for (seq, d) in &self.docs {
            // A document whose keys do not compute (parallel arrays) is left out, where a
            // server would refuse to build the index.
            for k in index_texts(d, &keys).unwrap_or_default() {
                entries.entry(k).or_insert(*seq);
            }
        }
        self.unique.push(UniqueIndex {
            name,
            keys,
            entries,
        });
    }

    /// `doc`'s keys in each unique index, in index order (see [`index_texts`]).
    fn unique_keys(&self, doc: &Document) -> Result<Vec<Vec<String>>, Refusal> {
        self.unique
            .iter()
            .map(|u| index_texts(doc, &u.keys))
            .collect()
    }

    fn unindex(&mut self, seq: u64, doc: &Document) {
        for u in &mut self.unique {
            for k in index_texts(doc, &u.keys).unwrap_or_default() {
                if u.entries.get(&k) == Some(&seq) {
                    u.entries.remove(&k);
                }
            }
        }
    }

    /// Replaces the document at `seq` (same `_id`) unless it breaks a unique index.
    fn put(&mut self, seq: u64, doc: Document, ns: &Namespace) -> Result<(), Refusal> {
        let old = self.docs.get(&seq).and_then(|d| d.get("_id"));
        if let (Some(old), Some(new)) = (old, doc.get("_id")) {
            if !eval::compare::values_equal(old, new) {
                return Err((
                    66,
                    "ImmutableField",
                    "Performing an update on the path '_id' would modify the immutable field '_id'"
                        .into(),
                ));
            }
        }
        let keys = self.unique_keys(&doc)?;
        self.check_unique(&doc, &keys, Some(seq), ns)?;
        self.remember(seq);
        if let Some(old) = self.docs.remove(&seq) {
            self.unindex(seq, &old);
        }
        self.place(seq, doc, keys);
        Ok(())
    }

    /// Refuses `doc` (whose keys in the unique indexes are `keys`) when another document than
    /// `except` holds one of them.
    fn check_unique(
        &self,
        doc: &Document,
        keys: &[Vec<String>],
        except: Option<u64>,
        ns: &Namespace,
    ) -> Result<(), Refusal> {
        for (index, texts) in self.unique.iter().zip(keys) {
            for text in texts {
                let clash = index.entries.get(text).is_some_and(|s| Some(*s) != except);
                if clash {
                    // The entry that clashed, as the server shows it.
                    let key = index_entries(doc, &index.keys)?
                        .into_iter()
                        .find(|values| key_text(values) == *text)
                        .unwrap_or_default();
                    let shown: Document = index.keys.iter().cloned().zip(key).collect();
                    return Err(duplicate(ns, &index.name, &shown));
                }
            }
        }
        Ok(())
    }
}

/// `doc`'s entries in an index on `keys`: one per value, as MongoDB builds them. A missing
/// field is null. An array is multikey: one entry per element (an empty array is one
/// `undefined` entry), and a path through an array of documents reaches into each element.
/// At most one key of a compound index may hold an array; two are refused as the server
/// refuses them ("cannot index parallel arrays").
fn index_entries(doc: &Document, keys: &[String]) -> Result<Vec<Vec<Bson>>, Refusal> {
    let mut fixed = Vec::with_capacity(keys.len());
    let mut spread: Option<(usize, Vec<Bson>)> = None;
    for (i, key) in keys.iter().enumerate() {
        let (first, rest) = split_head(key);
        let (mut values, mut multi) = (Vec::new(), false);
        key_values(doc.get(first), rest, &mut values, &mut multi);
        if multi {
            if let Some((j, _)) = &spread {
                return Err((
                    171,
                    "CannotIndexParallelArrays",
                    format!("cannot index parallel arrays [{}] [{}]", keys[*j], key),
                ));
            }
            spread = Some((i, values));
            fixed.push(Bson::Null);
        } else {
            fixed.push(values.pop().unwrap_or(Bson::Null));
        }
    }
    Ok(match spread {
        None => vec![fixed],
        Some((i, values)) => values
            .into_iter()
            .map(|v| {
                let mut entry = fixed.clone();
                entry[i] = v;
                entry
            })
            .collect(),
    })
}

/// The values a path (`value`, then the `rest` of the dotted path under it) gives an index
/// entry; `multi` is set when an array was crossed.
fn key_values(value: Option<&Bson>, rest: Option<&str>, out: &mut Vec<Bson>, multi: &mut bool) {
    match (value, rest.map(split_head)) {
        (None, _) => out.push(Bson::Null),
        (Some(Bson::Array(items)), None) => {
            *multi = true;
            if items.is_empty() {
                out.push(Bson::Undefined);
            }
            out.extend(items.iter().cloned());
        }
        (Some(v), None) => out.push(v.clone()),
        (Some(Bson::Document(d)), Some((next, rest))) => key_values(d.get(next), rest, out, multi),
        (Some(Bson::Array(items)), Some((next, rest))) => {
            *multi = true;
            if items.is_empty() {
                out.push(Bson::Null);
            }
            for item in items {
                match item {
                    Bson::Document(d) => key_values(d.get(next), rest, out, multi),
                    _ => out.push(Bson::Null),
                }
            }
        }
        (Some(_), Some(_)) => out.push(Bson::Null),
    }
}

/// The texts of `doc`'s entries in an index on `keys` ([`index_entries`]), each once: the
/// keys a unique index holds for the document.
fn index_texts(doc: &Document, keys: &[String]) -> Result<Vec<String>, Refusal> {
    let mut texts: Vec<String> = Vec::new();
    for entry in index_entries(doc, keys)? {
        let text = key_text(&entry);
        if !texts.contains(&text) {
            texts.push(text);
        }
    }
    Ok(texts)
}

/// One text per index key, equal for keys a unique index takes as equal (numbers by value,
/// missing as null).
fn key_text(values: &[Bson]) -> String {
    values
        .iter()
        .map(|v| match v {
            Bson::Null => "z".to_owned(),
            Bson::Undefined => "u".to_owned(),
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => id_key(v),
            Bson::String(s) => format!("s:{s}"),
            Bson::Boolean(b) => format!("b:{b}"),
            Bson::DateTime(d) => format!("d:{}", d.timestamp_millis()),
            Bson::ObjectId(o) => format!("o:{o}"),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

fn duplicate(ns: &Namespace, index: &str, key: &Document) -> Refusal {
    (
        DUPLICATE_KEY,
        "DuplicateKey",
        format!(
            "E11000 duplicate key error collection: {}.{} index: {index} dup key: {key}",
            ns.0, ns.1
        ),
    )
}

/// The `_id` a filter requires by plain equality, at its top level or in a top-level `$and`.
fn id_equality(filter: &Document) -> Option<&Bson> {
    if let Some(id) = filter.get("_id").filter(|v| !is_operator_doc(v)) {
        return Some(id);
    }
    match filter.get("$and") {
        Some(Bson::Array(parts)) => parts.iter().find_map(|p| match p {
            Bson::Document(d) => id_equality(d),
            _ => None,
        }),
        _ => None,
    }
}

fn is_operator_doc(v: &Bson) -> bool {
    matches!(v, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')))
}

/// A copy of `doc` with its `_id` first (as [`ensure_id`] leaves it), made in one pass.
fn id_first(doc: &Document) -> Document {
    let Some(id) = doc.get("_id") else {
        return doc.clone();
    };
    if doc.keys().next().is_some_and(|k| k == "_id") {
        return doc.clone();
    }
    let mut out = Document::new();
    out.insert("_id", id.clone());
    for (k, v) in doc.iter().filter(|(k, _)| *k != "_id") {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The `_id` of `doc`, generated (an ObjectId) when it has none, and moved to be the first
/// field, as the server stores it.
fn ensure_id(doc: &mut Document) -> Bson {
    if doc.keys().next().is_some_and(|k| k == "_id") {
        return doc.get("_id").cloned().unwrap_or(Bson::Null);
    }
    let id = doc
        .remove("_id")
        .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
    let mut with_id = Document::new();
    with_id.insert("_id", id.clone());
    with_id.extend(std::mem::take(doc));
    *doc = with_id;
    id
}

/// The `_id` map's key: numbers that compare equal share one key, as in MongoDB.
fn id_key(id: &Bson) -> String {
    match id {
        Bson::String(s) => format!("s:{s}"),
        Bson::Int32(n) => format!("n:{}", f64::from(*n)),
        Bson::Int64(n) => format!("n:{}", *n as f64),
        Bson::Double(n) => format!("n:{n}"),
        other => format!("{other:?}"),
    }
}

/// A write error, as the driver reports a refused single write.
fn write_error((code, name, message): Refusal) -> mongodb::error::Error {
    match mongodb::bson::from_document::<mongodb::error::WriteError>(
        doc! { "code": code, "codeName": name, "errmsg": message.clone() },
    ) {
        Ok(w) => ErrorKind::Write(WriteFailure::WriteError(w)).into(),
        Err(_) => mongodb::error::Error::custom(message),
    }
}

/// A command error, as the server reports a refused command.
fn command_error(code: i32, name: &str, message: &str) -> mongodb::error::Error {
    match mongodb::bson::from_document::<mongodb::error::CommandError>(
        doc! { "code": code, "codeName": name, "errmsg": message },
    ) {
        Ok(c) => ErrorKind::Command(c).into(),
        Err(_) => mongodb::error::Error::custom(message.to_owned()),
    }
}

/// A filter, update, sort or projection the memory backend refuses, as the server's
/// `BadValue` (code 2).
fn bad_value(e: EvalError) -> mongodb::error::Error {
    command_error(2, "BadValue", &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ids(coll: &MemoryCollection) -> Vec<String> {
        coll.find(doc! {}, FindOptions::default())
            .await
            .unwrap()
            .iter()
            .map(|d| format!("{}={}", d.get_str("_id").unwrap(), d.get("n").unwrap()))
            .collect()
    }

    /// A store with `a=1`, `b=2` committed and a unique index on `n`.
    async fn seeded() -> (MemoryStore, MemoryCollection) {
        let store = MemoryStore::default();
        let coll = store.collection("db", "c");
        coll.write(None, |c, _| {
            c.add_unique("n_1".into(), vec!["n".into()]);
            Ok(())
        })
        .await
        .unwrap();
        let docs = [doc! { "_id": "a", "n": 1 }, doc! { "_id": "b", "n": 2 }];
        coll.insert_many(&docs, true, None).await.unwrap();
        (store, coll)
    }

    async fn transaction(store: &MemoryStore, coll: &MemoryCollection) -> Session {
        let mut session = Session::Memory(store.session());
        session.start_transaction(None).await.unwrap();
        coll.insert_one(&doc! { "_id": "c", "n": 3 }, Some(&mut session))
            .await
            .unwrap();
        coll.update(
            doc! { "_id": "a" },
            doc! { "$set": { "n": 10 } },
            false,
            false,
            Some(&mut session),
        )
        .await
        .unwrap();
        coll.delete(doc! { "_id": "b" }, false, Some(&mut session))
            .await
            .unwrap();
        session
    }

    /// Reads outside an open transaction see what was committed, by any filter; the commit
    /// makes its writes visible at once.
    #[tokio::test]
    async fn reads_outside_an_open_transaction_see_the_committed_documents() {
        let (store, coll) = seeded().await;
        let mut session = transaction(&store, &coll).await;
        assert_eq!(ids(&coll).await, ["a=1", "b=2"]);
        let by_id = coll.find(doc! { "_id": "b" }, FindOptions::default()).await;
        assert_eq!(
            by_id.unwrap().len(),
            1,
            "a deleted document is still committed"
        );
        let by_id = coll
            .find(doc! { "_id": "c", "n": 3 }, FindOptions::default())
            .await;
        assert!(by_id.unwrap().is_empty(), "an inserted one is not yet");
        assert_eq!(
            coll.count(doc! { "n": { "$gte": 2 } }, None, None)
                .await
                .unwrap(),
            1
        );
        session.commit_transaction().await.unwrap();
        assert_eq!(ids(&coll).await, ["a=10", "c=3"]);
    }

    /// An abort puts back every document the transaction touched, with its `_id` and unique
    /// index entries: the old values are taken again, the new ones are free again.
    #[tokio::test]
    async fn an_abort_restores_documents_ids_and_unique_entries() {
        let (store, coll) = seeded().await;
        let mut session = transaction(&store, &coll).await;
        session.abort_transaction().await.unwrap();
        assert_eq!(ids(&coll).await, ["a=1", "b=2"]);
        let taken = coll.insert_one(&doc! { "_id": "x", "n": 2 }, None).await;
        assert!(taken.is_err(), "n=2 is b's again");
        let taken = coll.insert_one(&doc! { "_id": "b", "n": 9 }, None).await;
        assert!(taken.is_err(), "_id b is taken again");
        coll.insert_one(&doc! { "_id": "c", "n": 3 }, None)
            .await
            .unwrap();
        coll.insert_one(&doc! { "_id": "d", "n": 10 }, None)
            .await
            .unwrap();
        let found = coll
            .find(doc! { "_id": "a", "n": 1 }, FindOptions::default())
            .await;
        assert_eq!(found.unwrap().len(), 1);
    }

    /// A transaction dropped while open (its task cancelled) aborts and lets writes go on.
    #[tokio::test]
    async fn a_transaction_dropped_while_open_aborts() {
        let (store, coll) = seeded().await;
        drop(transaction(&store, &coll).await);
        assert_eq!(ids(&coll).await, ["a=1", "b=2"]);
        coll.insert_one(&doc! { "_id": "c", "n": 3 }, None)
            .await
            .unwrap();
        assert_eq!(ids(&coll).await, ["a=1", "b=2", "c=3"]);
    }

    /// A collection `db.m` with a unique index on each of `indexes` (each a list of keys).
    async fn indexed(indexes: &[&[&str]]) -> MemoryCollection {
        let coll = MemoryStore::default().collection("db", "m");
        let indexes: Vec<Vec<String>> = indexes
            .iter()
            .map(|keys| keys.iter().map(|k| (*k).to_owned()).collect())
            .collect();
        coll.write(None, |c, _| {
            for keys in indexes {
                c.add_unique(keys.join("_"), keys);
            }
            Ok(())
        })
        .await
        .unwrap();
        coll
    }

    /// The server's error for a refused write: its code and message.
    async fn refused(coll: &MemoryCollection, doc: Document) -> (i32, String) {
        let e = coll.insert_one(&doc, None).await.unwrap_err();
        match *e.kind {
            ErrorKind::Write(WriteFailure::WriteError(w)) => (w.code, w.message),
            other => panic!("not a write error: {other:?}"),
        }
    }

    /// A unique index on an array field holds each element, as MongoDB's multikey index does:
    /// two documents may not share an element, a document may repeat its own, an empty array
    /// is one `undefined` entry (distinct from a missing field's null), and the entries of a
    /// deleted or updated document are free again.
    #[tokio::test]
    async fn a_unique_index_on_an_array_holds_each_element() {
        let coll = indexed(&[&["tags"]]).await;
        coll.insert_one(&doc! { "_id": 1, "tags": ["a", "b"] }, None)
            .await
            .unwrap();
        let (code, message) = refused(&coll, doc! { "_id": 2, "tags": ["c", "a"] }).await;
        assert_eq!(code, DUPLICATE_KEY);
        assert!(
            message.ends_with(r#"index: tags dup key: { "tags": "a" }"#),
            "{message}"
        );
        coll.insert_one(&doc! { "_id": 3, "tags": ["c", "c"] }, None)
            .await
            .unwrap();
        coll.insert_one(&doc! { "_id": 4, "tags": [] }, None)
            .await
            .unwrap();
        assert_eq!(
            refused(&coll, doc! { "_id": 5, "tags": [] }).await.0,
            DUPLICATE_KEY
        );
        coll.insert_one(&doc! { "_id": 6 }, None).await.unwrap();
        let scalar = refused(&coll, doc! { "_id": 7, "tags": "b" }).await;
        assert_eq!(scalar.0, DUPLICATE_KEY, "a scalar clashes with an element");

        coll.update(
            doc! { "_id": 3 },
            doc! { "$push": { "tags": "d" } },
            false,
            false,
            None,
        )
        .await
        .unwrap();
        coll.delete(doc! { "_id": 1 }, false, None).await.unwrap();
        coll.insert_one(&doc! { "_id": 8, "tags": ["a", "b"] }, None)
            .await
            .unwrap();
        assert_eq!(
            refused(&coll, doc! { "_id": 9, "tags": ["d"] }).await.0,
            DUPLICATE_KEY,
            "the pushed element is held"
        );
    }

    /// A path through an array of documents indexes each element's field; a compound index
    /// takes one array at most and refuses two, as the server does.
    #[tokio::test]
    async fn unique_paths_reach_into_arrays_and_parallel_arrays_are_refused() {
        let coll = indexed(&[&["items.sku"]]).await;
        coll.insert_one(
            &doc! { "_id": 1, "items": [{ "sku": 1 }, { "sku": 2 }] },
            None,
        )
        .await
        .unwrap();
        let clash = refused(&coll, doc! { "_id": 2, "items": [{ "sku": 2.0 }] }).await;
        assert_eq!(clash.0, DUPLICATE_KEY, "{clash:?}");

        let coll = indexed(&[&["tenant", "tags"]]).await;
        coll.insert_one(&doc! { "_id": 1, "tenant": "t1", "tags": ["a"] }, None)
            .await
            .unwrap();
        coll.insert_one(&doc! { "_id": 2, "tenant": "t2", "tags": ["a"] }, None)
            .await
            .unwrap();
        let clash = refused(&coll, doc! { "_id": 3, "tenant": "t1", "tags": ["b", "a"] }).await;
        assert_eq!(clash.0, DUPLICATE_KEY, "{clash:?}");
        let parallel = refused(&coll, doc! { "_id": 4, "tenant": ["t3"], "tags": ["c"] }).await;
        assert_eq!(parallel.0, 171, "{parallel:?}");
        assert!(
            parallel.1.contains("cannot index parallel arrays"),
            "{parallel:?}"
        );
    }
}
