//! Erasing one tenant: everywhere the framework put the data of the entities listed.
//!
//! Order matters: the write-behind queue first (so a flusher does not write a queued document
//! back after its collection was cleared), then the outbox (so the relay does not publish the
//! tenant's pending events), then the documents, then the cache (so a read racing the erasure
//! cannot put back an entry loaded before the documents went).

use std::collections::BTreeSet;

use mongodb::bson::{doc, Document};
use serde::Serialize;

use crate::document::claims_collection;
use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::outbox::{OUTBOX_COLLECTION, PUBLISHED_COLLECTION};
use crate::storage::Storage;
use crate::tenant::TenantId;

/// What erasure removed for one entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasedEntity {
    /// Entity name.
    pub entity: String,
    /// `database.collection`.
    pub namespace: String,
    /// Documents deleted, soft-deleted ones included.
    pub documents: u64,
    /// Version claims deleted (`<collection>__version_claims`).
    pub version_claims: u64,
    /// Cache entries deleted.
    pub cache_entries: u64,
    /// Cache keys deleted: entries, invalidation generations and loader locks.
    pub cache_keys: u64,
    /// Queued write-behind entries removed.
    pub queued_writes: u64,
    /// Dead-lettered write-behind entries removed.
    pub dead_letters: u64,
}

/// What erasure removed from the outbox of one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasedOutbox {
    /// The database.
    pub database: String,
    /// Records not yet published (prepared, ready, parked, abandoned) deleted.
    pub pending: u64,
    /// Published records deleted (`caas_outbox_published`).
    pub published: u64,
}

/// What [`Storage::erase_tenant`] removed, per place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// The tenant.
    pub tenant: TenantId,
    /// Per entity.
    pub entities: Vec<ErasedEntity>,
    /// Per database of those entities.
    pub outboxes: Vec<ErasedOutbox>,
    /// What erasure does not cover, for the operator to handle.
    pub not_covered: Vec<String>,
}

fn mongo(what: String) -> impl FnOnce(mongodb::error::Error) -> Error {
    move |e| Error::mongo(what, e)
}

pub(super) async fn erase(
    storage: &Storage,
    entities: &[&'static EntityMeta],
    tenant: &TenantId,
) -> Result<ErasureReport> {
    if entities.is_empty() {
        return Err(Error::Backup {
            operation: "erase",
            reason: "no entities listed: pass the metadata of every entity to erase".into(),
        });
    }
    let mut out = Vec::new();
    // 1. Queued writes.
    for meta in entities {
        let (queued, dead) = storage.write_behind().purge_tenant(meta, tenant).await?;
        out.push(ErasedEntity {
            entity: meta.name.to_owned(),
            namespace: format!("{}.{}", meta.database, meta.collection),
            documents: 0,
            version_claims: 0,
            cache_entries: 0,
            cache_keys: 0,
            queued_writes: queued,
            dead_letters: dead,
        });
    }
    // 2. The outbox of every database involved: every record of the tenant.
    let databases: BTreeSet<&str> = entities.iter().map(|m| m.database).collect();
    let mut outboxes = Vec::new();
    for db in databases {
        let d = storage.raw().database(db);
        let mut counts = [0_u64; 2];
        for (i, coll) in [OUTBOX_COLLECTION, PUBLISHED_COLLECTION].iter().enumerate() {
            counts[i] = d
                .collection::<Document>(coll)
                .delete_many(doc! { "tenant": tenant.as_str() })
                .await
                .map_err(mongo(format!("erase {tenant}'s records from {db}.{coll}")))?
                .deleted_count;
        }
        outboxes.push(ErasedOutbox {
            database: db.to_owned(),
            pending: counts[0],
            published: counts[1],
        });
    }
    // 3. Documents and version claims; 4. cache.
    for (meta, e) in entities.iter().zip(&mut out) {
        let d = storage.raw().database(meta.database);
        e.documents = d
            .collection::<Document>(meta.collection)
            .delete_many(doc! { meta.tenant_field: tenant.as_str() })
            .await
            .map_err(mongo(format!(
                "erase {tenant}'s documents from {}",
                e.namespace
            )))?
            .deleted_count;
        let claims = claims_collection(meta);
        e.version_claims = d
            .collection::<Document>(&claims)
            .delete_many(
                doc! { "base": { "$regex": format!("^{}\u{1f}", regex_escape(tenant.as_str())) } },
            )
            .await
            .map_err(mongo(format!(
                "erase {tenant}'s claims from {}.{claims}",
                meta.database
            )))?
            .deleted_count;
        if meta.cache.is_some() {
            let (entries, keys) = storage.cache().purge_tenant(meta, tenant).await?;
            e.cache_entries = entries;
            e.cache_keys = keys;
        }
    }
    Ok(ErasureReport {
        tenant: tenant.clone(),
        entities: out,
        outboxes,
        not_covered: vec![
            "the audit log (append-only and hash-chained: erase a tenant's chain with the \
             audit log's own tools, or keep it as a legal record)"
                .into(),
            "sessions and rate-limit state in Redis (they expire on their own; revoke the \
             tenant's sessions with the session store)"
                .into(),
            "entities not listed, and events already published to Kafka (topic retention \
             applies)"
                .into(),
        ],
    })
}

/// `s` with regex metacharacters escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
