//! [`Query`]: filter, sort, page and project a tenant's entities.

use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::FindOptions;
use serde::de::DeserializeOwned;

use crate::document;
use crate::entity::{Entity, Mutable};
use crate::error::{Error, Result};
use crate::index::SortDirection;
use crate::repo::filter::{FieldPath, Filter, Sort};
use crate::repo::page::{Cursor, Page, PageRequest};
use crate::repo::Repository;
use crate::schema;
use crate::telemetry::spans;
use crate::tenant::TenantId;
use tracing::Instrument;

/// A query over one tenant's entities of type `E`, built from typed filters and sorts.
///
/// ```ignore
/// let active = users.query(&tenant)
///     .filter(User::fields().status().eq(UserStatus::Active))
///     .sort(User::fields().created_at().desc())
///     .limit(50)
///     .fetch().await?;
/// ```
#[must_use = "a query does nothing until fetched"]
pub struct Query<'r, E: Entity> {
    repo: &'r Repository<E>,
    tenant: TenantId,
    filter: Filter<E>,
    sort: Vec<(&'static str, SortDirection)>,
    skip: Option<u64>,
    limit: Option<i64>,
    with_secrets: bool,
    only: Option<Vec<&'static str>>,
}

impl<E: Entity> std::fmt::Debug for Query<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("entity", &E::META.name)
            .field("tenant", &self.tenant)
            .field("filter", &self.filter)
            .field("sort", &self.sort)
            .field("skip", &self.skip)
            .field("limit", &self.limit)
            .finish()
    }
}

impl<'r, E: Entity> Query<'r, E> {
    pub(crate) fn new(repo: &'r Repository<E>, tenant: TenantId) -> Self {
        Query {
            repo,
            tenant,
            filter: Filter::all(),
            sort: Vec::new(),
            skip: None,
            limit: None,
            with_secrets: false,
            only: None,
        }
    }

    /// Adds a condition (conditions combine with AND).
    pub fn filter(mut self, filter: Filter<E>) -> Self {
        self.filter = self.filter.and(filter);
        self
    }

    /// Adds a sort key (earlier keys sort first).
    pub fn sort(mut self, sort: Sort<E>) -> Self {
        self.sort.push((sort.field, sort.direction));
        self
    }

    /// Skips the first `n` matches. Prefer [`page`](Self::page) for paging through results.
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = Some(n);
        self
    }

    /// Returns at most `n` matches.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(i64::from(n));
        self
    }

    /// Includes `secret` fields, which reads leave out by default.
    pub fn include_secrets(mut self) -> Self {
        self.with_secrets = true;
        self
    }

    /// Fetches only these fields; read the results with [`fetch_as`](Self::fetch_as) into a
    /// struct that has them. Secret fields stay out unless
    /// [`include_secrets`](Self::include_secrets) is set.
    pub fn only(mut self, fields: impl IntoIterator<Item = FieldPath<E>>) -> Self {
        self.only = Some(fields.into_iter().map(|f| f.name).collect());
        self
    }

    fn projection(&self) -> Option<Document> {
        match &self.only {
            None => document::projection(E::META, self.with_secrets),
            Some(fields) => {
                // The schema version too: a projected read still refuses newer documents.
                let mut p = doc! { "_id": 0, document::SCHEMA_VERSION_FIELD: 1 };
                for f in fields {
                    if self.with_secrets || !E::META.secret_fields.contains(f) {
                        p.insert(*f, 1);
                    }
                }
                Some(p)
            }
        }
    }

    fn sort_document(&self) -> Option<Document> {
        (!self.sort.is_empty()).then(|| {
            self.sort
                .iter()
                .map(|(f, d)| ((*f).to_owned(), Bson::Int32(d.as_i32())))
                .collect()
        })
    }

    fn find_options(&self) -> FindOptions {
        FindOptions::builder()
            .projection(self.projection())
            .sort(self.sort_document())
            .skip(self.skip)
            .limit(self.limit)
            .build()
    }

    fn filter_document(&mut self) -> Result<Document> {
        let user = std::mem::take(&mut self.filter).into_document()?;
        self.repo.scoped(&self.tenant, user)
    }

    /// Runs `f` as the repository call `operation` (see [`Repository::observed`]).
    fn observed<'f, T: 'f>(
        repo: &Repository<E>,
        tenant: TenantId,
        operation: &'static str,
        f: impl std::future::Future<Output = Result<T>> + 'f,
    ) -> impl std::future::Future<Output = Result<T>> + 'f {
        repo.observed(operation, &tenant, f)
    }

    /// All matches.
    pub async fn fetch(self) -> Result<Vec<E>> {
        let (repo, tenant) = (self.repo, self.tenant.clone());
        Self::observed(repo, tenant, "find", self.fetch_unobserved()).await
    }

    async fn fetch_unobserved(self) -> Result<Vec<E>> {
        self.stream_unobserved().await?.try_collect().await
    }

    /// The first match, if any.
    pub async fn first(mut self) -> Result<Option<E>> {
        self.limit = Some(1);
        let (repo, tenant) = (self.repo, self.tenant.clone());
        Self::observed(repo, tenant, "find_one", async move {
            let mut all = self.fetch_unobserved().await?;
            Ok(if all.is_empty() {
                None
            } else {
                Some(all.swap_remove(0))
            })
        })
        .await
    }

    /// All matches, as a stream (for large result sets). Documents stored at an older schema
    /// version are upgraded as they come (and written back when
    /// `migrations.write_back_on_read` says so, once the stream is done with them).
    pub async fn stream(self) -> Result<BoxStream<'static, Result<E>>> {
        let (repo, tenant) = (self.repo, self.tenant.clone());
        Self::observed(repo, tenant, "stream", self.stream_unobserved()).await
    }

    async fn stream_unobserved(mut self) -> Result<BoxStream<'static, Result<E>>> {
        let filter = self.filter_document()?;
        let repo = self.repo;
        let with_secrets = self.with_secrets;
        let find = repo.docs().stream_raw(filter, self.find_options());
        let op = repo.op("find");
        let cursor = repo
            .bounded("find", find)
            .instrument(spans::mongodb("find"))
            .await?
            .map_err(|e| Error::mongo(op.clone(), e))?;
        let pipeline = repo.pipeline().clone();
        Ok(cursor
            .map(move |r| r.map_err(|e| Error::mongo(op.clone(), e)))
            .and_then(move |raw| {
                let pipeline = pipeline.clone();
                async move {
                    let read = schema::decode_raw::<E>(&raw, with_secrets)?;
                    if read.upgraded_from.is_some() {
                        if let Some(key) = raw.get("_id").ok().flatten() {
                            if let Ok(key) = Bson::try_from(key) {
                                pipeline.write_back(vec![key]).await;
                            }
                        }
                    }
                    Ok(read.entity)
                }
            })
            .boxed())
    }

    /// All matches, read as `T` (use with [`only`](Self::only)). The selected fields are read
    /// as stored: documents at an older schema version are not upgraded (the steps need whole
    /// documents), and documents at a newer one are refused
    /// ([`Error::FutureSchemaVersion`]).
    pub async fn fetch_as<T: DeserializeOwned + Send + Sync + Unpin>(self) -> Result<Vec<T>> {
        let (repo, tenant) = (self.repo, self.tenant.clone());
        Self::observed(repo, tenant, "find", self.fetch_as_unobserved()).await
    }

    async fn fetch_as_unobserved<T: DeserializeOwned + Send + Sync + Unpin>(
        mut self,
    ) -> Result<Vec<T>> {
        let docs = self.fetch_documents(None).await?;
        docs.into_iter()
            .map(|mut d| {
                let stored = schema::version_of(&d);
                if stored > E::META.schema_version {
                    return Err(schema::future(E::META, d.get(E::META.id_field), stored));
                }
                d.remove(document::SCHEMA_VERSION_FIELD);
                mongodb::bson::from_document(d).map_err(|e| Error::Codec {
                    entity: E::META.name,
                    direction: "decode",
                    message: e.to_string(),
                })
            })
            .collect()
    }

    async fn fetch_documents(&mut self, extra: Option<Document>) -> Result<Vec<Document>> {
        let mut filter = self.filter_document()?;
        if let Some(extra) = extra {
            filter = doc! { "$and": [filter, extra] };
        }
        let repo = self.repo;
        let options = self.find_options();
        repo.pipeline()
            .read_retried("find", || {
                repo.docs().find_all(filter.clone(), options.clone())
            })
            .instrument(spans::mongodb("find"))
            .await?
            .map_err(|e| Error::mongo(repo.op("find"), e))
    }

    /// How many entities match.
    pub async fn count(self) -> Result<u64> {
        let (repo, tenant) = (self.repo, self.tenant.clone());
        Self::observed(repo, tenant, "count", self.count_unobserved()).await
    }

    async fn count_unobserved(mut self) -> Result<u64> {
        let filter = self.filter_document()?;
        let repo = self.repo;
        let (skip, limit) = (self.skip, self.limit);
        repo.pipeline()
            .read_retried("count", || {
                repo.docs()
                    .count(filter.clone(), skip, limit.map(i64::unsigned_abs))
            })
            .instrument(spans::mongodb("count"))
            .await?
            .map_err(|e| Error::mongo(repo.op("count"), e))
    }

    /// One page, sorted by this query's sort keys and then the id; see [`Page`].
    pub async fn page(self, request: PageRequest) -> Result<Page<E>> {
        let (repo, tenant) = (self.repo, self.tenant.clone());
        Self::observed(repo, tenant, "page", self.page_unobserved(request)).await
    }

    async fn page_unobserved(mut self, request: PageRequest) -> Result<Page<E>> {
        let id_field = E::META.id_field;
        if !self.sort.iter().any(|(f, _)| *f == id_field) {
            self.sort.push((id_field, SortDirection::Asc));
        }
        let keys = self.sort.clone();
        let after = match &request.after {
            None => None,
            Some(c) => Some(after_filter(&keys, c.values()?)?),
        };
        let limit = request.limit.max(1);
        self.limit = Some(i64::from(limit) + 1);
        self.skip = None;
        self.only = None;
        let mut docs = self.fetch_documents(after).await?;
        let more = docs.len() > limit as usize;
        docs.truncate(limit as usize);
        let next = if more {
            docs.last().map(|last| {
                Cursor::from_values(
                    keys.iter()
                        .map(|(f, _)| last.get(*f).cloned().unwrap_or(Bson::Null))
                        .collect(),
                )
            })
        } else {
            None
        };
        let mut items = Vec::with_capacity(docs.len());
        let mut upgraded = Vec::new();
        for doc in docs {
            let key = doc.get("_id").cloned();
            let read = schema::decode_doc::<E>(doc, self.with_secrets)?;
            if let (Some(_), Some(key)) = (read.upgraded_from, key) {
                upgraded.push(key);
            }
            items.push(read.entity);
        }
        self.repo.pipeline().write_back(upgraded).await;
        Ok(Page { items, next })
    }

    /// Deletes every match (soft where the entity declares it) and returns how many. Each
    /// deleted document goes through the write pipeline: its version moves on, its delete
    /// event is recorded and its cache entries are dropped.
    pub async fn delete(mut self) -> Result<u64>
    where
        E: Mutable,
    {
        let filter = self.filter_document()?;
        self.repo.delete_matching(&self.tenant, filter).await
    }
}

/// Strictly after `values` in the order `keys`: `k0 > v0 OR (k0 = v0 AND k1 > v1) OR ...`
/// (`<` for descending keys).
fn after_filter(keys: &[(&'static str, SortDirection)], values: Vec<Bson>) -> Result<Document> {
    if values.len() != keys.len() {
        return Err(Error::Codec {
            entity: "Cursor",
            direction: "decode",
            message: "the cursor belongs to a query with other sort keys".into(),
        });
    }
    let mut branches = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        let mut branch = Document::new();
        for j in 0..i {
            branch.insert(keys[j].0, values[j].clone());
        }
        let op = match keys[i].1 {
            SortDirection::Asc => "$gt",
            SortDirection::Desc => "$lt",
        };
        branch.insert(keys[i].0, doc! { op: values[i].clone() });
        branches.push(Bson::Document(branch));
    }
    Ok(doc! { "$or": branches })
}
