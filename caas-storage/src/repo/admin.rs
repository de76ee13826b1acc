//! Reads across tenants, for operators and migrations: loudly named on purpose.

use mongodb::bson::{doc, Bson, Document};

use crate::document::{self, DELETED_AT_FIELD};
use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::repo::{Filter, Repository};

impl<E: Entity> Repository<E> {
    /// Cross-tenant reads for operators and migrations. Loudly named on purpose: nothing a
    /// tenant-facing request does should need it.
    pub fn unscoped_admin_across_all_tenants(&self) -> UnscopedAdmin<'_, E> {
        UnscopedAdmin { repo: self }
    }
}

/// Reads across tenants: see [`Repository::unscoped_admin_across_all_tenants`].
#[derive(Debug)]
pub struct UnscopedAdmin<'r, E: Entity> {
    repo: &'r Repository<E>,
}

impl<E: Entity> UnscopedAdmin<'_, E> {
    /// Entities of every tenant matching `filter` (secret fields left out).
    pub async fn find(&self, filter: Filter<E>) -> Result<Vec<E>> {
        use futures::TryStreamExt;
        let mut f = filter.into_document()?;
        if E::META.soft_delete {
            f.insert(DELETED_AT_FIELD, Bson::Null);
        }
        let r = self.repo;
        let mut find = r.raw().find(f);
        if let Some(p) = document::projection(E::META, false) {
            find = find.projection(p);
        }
        let cursor = r
            .bounded("unscoped find", find)
            .await?
            .map_err(|e| Error::mongo(r.op("unscoped find"), e))?;
        let raws: Vec<mongodb::bson::RawDocumentBuf> = r
            .bounded("unscoped find", cursor.try_collect())
            .await?
            .map_err(|e| Error::mongo(r.op("unscoped find"), e))?;
        raws.iter()
            .map(|raw| crate::schema::decode_raw::<E>(raw, false).map(|read| read.entity))
            .collect()
    }

    /// How many entities all tenants hold.
    pub async fn count_all(&self) -> Result<u64> {
        let r = self.repo;
        let f = if E::META.soft_delete {
            doc! { DELETED_AT_FIELD: Bson::Null }
        } else {
            Document::new()
        };
        r.bounded("unscoped count", r.docs().count_documents(f))
            .await?
            .map_err(|e| Error::mongo(r.op("unscoped count"), e))
    }

    /// The tenants that have at least one entity.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        let r = self.repo;
        let values = r
            .bounded(
                "distinct tenants",
                r.docs().distinct(E::META.tenant_field, doc! {}),
            )
            .await?
            .map_err(|e| Error::mongo(r.op("distinct tenants"), e))?;
        let mut out: Vec<String> = values
            .into_iter()
            .filter_map(|b| b.as_str().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }
}
