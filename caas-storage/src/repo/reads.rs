//! The typed reads of [`Repository`]: by id (through the cache tiers), with secrets, after a
//! causal token; existence, counts and queries. Every read decodes through `schema.rs`, which
//! upgrades documents stored at an older schema version.

use crate::consistency::{CausalToken, Consistency};
use mongodb::bson::{doc, Bson, Document};

use crate::document::{self, DELETED_AT_FIELD};
use crate::entity::Entity;
use crate::error::{Component, Error, Result};
use crate::repo::{Filter, Query, Repository};
use crate::schema;
use crate::telemetry::spans;
use crate::tenant::TenantId;
use tracing::Instrument;

impl<E: Entity> Repository<E> {
    /// The entity with this id in this tenant (secret fields left out), or `None`.
    pub async fn find_by_id(&self, tenant: &TenantId, id: &E::Id) -> Result<Option<E>> {
        self.observed("find_by_id", tenant, self.find_by_id_unobserved(tenant, id))
            .await
    }

    /// [`find_by_id`](Self::find_by_id) inside another call's span.
    async fn find_by_id_unobserved(&self, tenant: &TenantId, id: &E::Id) -> Result<Option<E>> {
        if E::META.cache.is_some() {
            let key = document::id_to_bson::<E>(id)?;
            return self
                .pipeline()
                .cache()
                .read(tenant, &key, || self.load_by_id(tenant, id))
                .await;
        }
        self.load_by_id(tenant, id).await
    }

    async fn load_by_id(&self, tenant: &TenantId, id: &E::Id) -> Result<Option<E>> {
        self.read_one("find_by_id", tenant, id, false).await
    }

    /// The stored document with this id, unless soft-deleted: read by `_id` alone (the
    /// filter every server answers from its key), the deletion checked here.
    async fn live_document(
        &self,
        operation: &'static str,
        tenant: &TenantId,
        id: &E::Id,
        projection: Option<Document>,
    ) -> Result<Option<Document>> {
        let filter = self.key_filter(tenant, id)?;
        let found = self
            .pipeline()
            .read_retried(operation, || {
                self.docs().find_one(filter.clone(), projection.clone())
            })
            .instrument(spans::mongodb("find"))
            .await?
            .map_err(|e| Error::mongo(self.op(operation), e))?;
        Ok(found.filter(|d| matches!(d.get(DELETED_AT_FIELD), None | Some(Bson::Null))))
    }

    /// Like [`find_by_id`](Self::find_by_id), with secret fields included (e.g. to check a
    /// password hash). Never cached.
    pub async fn find_by_id_with_secrets(
        &self,
        tenant: &TenantId,
        id: &E::Id,
    ) -> Result<Option<E>> {
        self.observed(
            "find_by_id_with_secrets",
            tenant,
            self.read_one("find_by_id_with_secrets", tenant, id, true),
        )
        .await
    }

    /// One live document from MongoDB (by `_id`, through [`live_document`](Self::live_document)),
    /// upgraded to the entity's schema version if it is older (and written back so, if
    /// `migrations.write_back_on_read` says so).
    async fn read_one(
        &self,
        operation: &'static str,
        tenant: &TenantId,
        id: &E::Id,
        with_secrets: bool,
    ) -> Result<Option<E>> {
        let projection = document::projection(E::META, with_secrets);
        let Some(doc) = self
            .live_document(operation, tenant, id, projection)
            .await?
        else {
            return Ok(None);
        };
        let key = doc.get("_id").cloned();
        let read = schema::decode_doc::<E>(doc, with_secrets)?;
        if let (Some(_), Some(key)) = (read.upgraded_from, key) {
            self.pipeline().write_back(vec![key]).await;
        }
        Ok(Some(read.entity))
    }

    /// The entity with this id, at least as new as `token` requires (see [`CausalToken`]): a
    /// read that comes back older (a stale cache tier, a lagging secondary) is repeated against
    /// the primary (majority read concern, no cache), backing off between reads, until the
    /// version is there, or fails with [`Error::Timeout`] after `mongodb.causal_wait`. A
    /// document the primary no longer has (deleted since the token was made) reads as `None`.
    pub async fn find_by_id_after(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        token: &CausalToken,
    ) -> Result<Option<E>> {
        self.observed(
            "find_by_id_after",
            tenant,
            self.find_by_id_after_unobserved(tenant, id, token),
        )
        .await
    }

    async fn find_by_id_after_unobserved(
        &self,
        tenant: &TenantId,
        id: &E::Id,
        token: &CausalToken,
    ) -> Result<Option<E>> {
        let key = document::id_to_bson::<E>(id)?;
        let Some(required) = token.required_version(tenant, E::META.name, &key) else {
            return self.find_by_id_unobserved(tenant, id).await;
        };
        if let Some(e) = self.find_by_id_unobserved(tenant, id).await? {
            if e.version().unwrap_or(0) >= required {
                return Ok(Some(e));
            }
        }
        let primary = self.with_consistency(Consistency::Strong);
        let wait = self.storage().config().mongodb.causal_wait;
        let deadline = std::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            let Some(e) = primary.load_by_id(tenant, id).await? else {
                // Deleted since: the primary, read with majority concern, is the truth.
                self.storage().cache().invalidate::<E>(tenant, id).await?;
                return Ok(None);
            };
            if e.version().unwrap_or(0) >= required {
                // The cache tiers held something older: drop it.
                self.storage().cache().invalidate::<E>(tenant, id).await?;
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    component: Component::Mongodb,
                    operation: "causal read (waiting for the version the token requires)",
                    after: wait,
                });
            }
            // Replication catches up in milliseconds or not soon: back off, so that a token
            // far in the future costs a handful of reads, not one every few milliseconds.
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// A token requiring at least `entity`'s version, to hand to later requests.
    pub fn causal_token(&self, tenant: &TenantId, entity: &E) -> CausalToken {
        let mut token = CausalToken::new();
        self.observe(&mut token, tenant, entity);
        token
    }

    /// Records `entity`'s version in `token` (entities without a version field add nothing).
    pub fn observe(&self, token: &mut CausalToken, tenant: &TenantId, entity: &E) {
        if let (Some(version), Ok(id)) = (entity.version(), document::id_to_bson::<E>(entity.id()))
        {
            token.observe_version(tenant, E::META.name, &id, version);
        }
    }

    /// The entity with this id, or [`Error::NotFound`].
    pub async fn get(&self, tenant: &TenantId, id: &E::Id) -> Result<E> {
        self.observed("get", tenant, async {
            self.find_by_id_unobserved(tenant, id)
                .await?
                .ok_or_else(|| self.not_found(id))
        })
        .await
    }

    /// Whether an entity with this id exists in this tenant.
    pub async fn exists(&self, tenant: &TenantId, id: &E::Id) -> Result<bool> {
        let projection = doc! { "_id": 1, DELETED_AT_FIELD: 1 };
        self.observed("exists", tenant, async {
            Ok(self
                .live_document("exists", tenant, id, Some(projection))
                .await?
                .is_some())
        })
        .await
    }

    /// How many entities of this tenant match `filter`.
    pub async fn count(&self, tenant: &TenantId, filter: Filter<E>) -> Result<u64> {
        self.query(tenant).filter(filter).count().await
    }

    /// A query over this tenant's entities.
    pub fn query(&self, tenant: &TenantId) -> Query<'_, E> {
        Query::new(self, tenant.clone())
    }
}
