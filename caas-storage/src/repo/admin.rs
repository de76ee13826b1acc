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
        let mut f = filter.into_document()?;
        if E::META.soft_delete {
            f.insert(DELETED_AT_FIELD, Bson::Null);
        }
        let r = self.repo;
        let options = mongodb::options::FindOptions::builder()
            .projection(document::projection(E::META, false))
            .build();
        let docs = r
            .bounded("unscoped find", r.docs().find_all(f, options))
            .await?
            .map_err(|e| Error::mongo(r.op("unscoped find"), e))?;
        docs.into_iter()
            .map(|d| crate::schema::decode_doc::<E>(d, false).map(|read| read.entity))
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
        r.bounded("unscoped count", r.docs().count(f, None, None))
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
