//! Writing a backup: one section per collection, streamed from a cursor into the archive.

use std::collections::BTreeSet;
use std::io::Write;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Collection;
use sha2::{Digest, Sha256};

use super::archive::{hex, ArchiveWriter, Kind};
use super::{BackedUpSection, BackupPlan, BackupReport, TenantScope};
use crate::capabilities::{ServerProduct, Topology};
use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::migrations::LEDGER_COLLECTION;
use crate::storage::Storage;

/// What the report says when there is no snapshot.
const NO_SNAPSHOT: &str = "no point-in-time cut: the server has no snapshot reads, so each \
    collection was read by its own scan, one after the other. A document inserted or deleted \
    during the backup may or may not be in it; one updated during its collection's scan is in \
    it once, at one of its versions; collections are cut at different moments, so a write to \
    a later collection made after an earlier collection's scan ended is in the archive while \
    a related write to the earlier one is not";

const SNAPSHOT: &str = "point-in-time: every collection was read in one snapshot session \
    (readConcern snapshot); writes made after the backup started are not in it";

fn io_err(e: std::io::Error) -> Error {
    Error::Backup {
        operation: "backup",
        reason: format!("writing the archive failed: {e}"),
    }
}

/// One collection to write.
struct Source<'a> {
    kind: &'static str,
    meta: Option<&'a EntityMeta>,
    database: String,
    collection: String,
    filter: Document,
}

pub(super) async fn backup(
    storage: &Storage,
    plan: &BackupPlan,
    out: impl Write + Send,
) -> Result<BackupReport> {
    if plan.entities.is_empty() {
        return Err(Error::Backup {
            operation: "backup",
            reason: "the plan lists no entities: add them with `entity::<E>()` or `meta(E::META)`"
                .into(),
        });
    }
    let mut seen = BTreeSet::new();
    for m in &plan.entities {
        if !seen.insert((m.database, m.collection)) {
            return Err(Error::Backup {
                operation: "backup",
                reason: format!(
                    "two entities of the plan share {}.{}: list one of them",
                    m.database, m.collection
                ),
            });
        }
    }
    let caps = storage.capabilities();
    let snapshot = caps.product == ServerProduct::Mongodb
        && caps.transactions
        && matches!(
            caps.topology,
            Topology::ReplicaSet { .. } | Topology::Sharded
        );
    let mut session = if snapshot {
        Some(
            storage
                .raw()
                .mongo()
                .start_session()
                .snapshot(true)
                .await
                .map_err(|e| Error::mongo("start a snapshot session for the backup", e))?,
        )
    } else {
        None
    };

    let mut sources: Vec<Source<'_>> = plan
        .entities
        .iter()
        .map(|m| Source {
            kind: "entity",
            meta: Some(*m),
            database: m.database.to_owned(),
            collection: m.collection.to_owned(),
            filter: match &plan.tenants {
                TenantScope::All => Document::new(),
                TenantScope::Only(ts) if ts.len() == 1 => doc! { m.tenant_field: ts[0].as_str() },
                TenantScope::Only(ts) => doc! { m.tenant_field: {
                    "$in": ts.iter().map(|t| Bson::String(t.as_str().to_owned())).collect::<Vec<_>>()
                } },
            },
        })
        .collect();
    if plan.ledger {
        sources.push(Source {
            kind: "ledger",
            meta: None,
            database: storage.config().migrations.database.clone(),
            collection: LEDGER_COLLECTION.to_owned(),
            filter: Document::new(),
        });
    }

    let mut w = ArchiveWriter::new(out).map_err(io_err)?;
    let header = doc! {
        "created_at": mongodb::bson::DateTime::now(),
        "source": {
            "server": caps.server_description(),
            "host": crate::migrations::host_name(),
        },
        "scope": match &plan.tenants {
            TenantScope::All => Bson::String("all".into()),
            TenantScope::Only(ts) => Bson::Array(ts.iter().map(|t| Bson::String(t.as_str().into())).collect()),
        },
        "point_in_time": snapshot,
    };
    w.document(Kind::Header, &header).map_err(io_err)?;

    let mut sections = Vec::new();
    let mut manifest = Vec::new();
    let mut total = 0_u64;
    for s in &sources {
        let db = storage.raw().database(&s.database);
        let coll: Collection<RawDocumentBuf> = db.collection(&s.collection);
        let indexes = list_indexes(&coll).await?;
        let mut section = doc! {
            "kind": s.kind,
            "entity": s.meta.map(|m| m.name).unwrap_or(""),
            "database": &s.database,
            "collection": &s.collection,
            "id_field": s.meta.map(|m| m.id_field).unwrap_or("_id"),
            "tenant_field": s.meta.map(|m| Bson::String(m.tenant_field.into())).unwrap_or(Bson::Null),
            "indexes": indexes.iter().cloned().map(Bson::Document).collect::<Vec<_>>(),
        };
        if let Some(m) = s.meta {
            let declared: Vec<Bson> = m
                .indexes
                .iter()
                .map(|ix| {
                    let mut d =
                        doc! { "name": ix.name, "key": ix.key_document(), "unique": ix.unique };
                    if let Some(ttl) = ix.ttl {
                        d.insert("expireAfterSeconds", ttl.as_secs() as i64);
                    }
                    Bson::Document(d)
                })
                .collect();
            section.insert("declared_indexes", declared);
            section.insert("schema_version", i64::from(m.schema_version));
        }
        w.document(Kind::Section, &section).map_err(io_err)?;

        let mut hasher = Sha256::new();
        let mut count = 0_u64;
        let mut tenants = BTreeSet::new();
        let tenant_field = s.meta.map(|m| m.tenant_field);
        let mut write_doc = |raw: &RawDocumentBuf| -> Result<()> {
            let bytes = raw.as_bytes();
            hasher.update(bytes);
            count += 1;
            if let Some(f) = tenant_field {
                if let Ok(t) = raw.get_str(f) {
                    if !tenants.contains(t) {
                        tenants.insert(t.to_owned());
                    }
                }
            }
            w.record(Kind::Document, bytes).map_err(io_err)
        };
        let find = coll.find(s.filter.clone()).batch_size(plan.batch_size);
        let what = format!("back up {}.{}", s.database, s.collection);
        match session.as_mut() {
            Some(sess) => {
                let mut cursor = find
                    .session(&mut *sess)
                    .await
                    .map_err(|e| Error::mongo(what.clone(), e))?;
                while let Some(raw) = cursor
                    .next(&mut *sess)
                    .await
                    .transpose()
                    .map_err(|e| Error::mongo(what.clone(), e))?
                {
                    write_doc(&raw)?;
                }
            }
            None => {
                let mut cursor = find.await.map_err(|e| Error::mongo(what.clone(), e))?;
                while let Some(raw) = cursor
                    .try_next()
                    .await
                    .map_err(|e| Error::mongo(what.clone(), e))?
                {
                    write_doc(&raw)?;
                }
            }
        }
        let sha = hex(&hasher.finalize());
        let end = doc! {
            "count": count as i64,
            "sha256": &sha,
            "tenants": tenants.into_iter().map(Bson::String).collect::<Vec<_>>(),
        };
        w.document(Kind::SectionEnd, &end).map_err(io_err)?;
        manifest.push(Bson::Document(doc! {
            "kind": s.kind, "database": &s.database, "collection": &s.collection,
            "count": count as i64, "sha256": &sha,
        }));
        total += count;
        sections.push(BackedUpSection {
            kind: s.kind.to_owned(),
            entity: s.meta.map(|m| m.name).unwrap_or("").to_owned(),
            namespace: format!("{}.{}", s.database, s.collection),
            documents: count,
            indexes: indexes.len() as u64,
            sha256: sha,
        });
    }
    w.document(
        Kind::Manifest,
        &doc! { "sections": manifest, "documents": total as i64 },
    )
    .map_err(io_err)?;
    let (archive_sha256, bytes_uncompressed, _) = w.finish().map_err(io_err)?;
    Ok(BackupReport {
        format_version: super::FORMAT_VERSION,
        tenants: plan.tenants.clone(),
        point_in_time: snapshot,
        consistency: if snapshot { SNAPSHOT } else { NO_SNAPSHOT }.to_owned(),
        sections,
        documents: total,
        bytes_uncompressed,
        archive_sha256,
    })
}

/// The collection's indexes as the server lists them (none when it does not exist). Read
/// outside the snapshot session: `listIndexes` takes no snapshot read concern, and index
/// definitions do not change with the documents.
async fn list_indexes(coll: &Collection<RawDocumentBuf>) -> Result<Vec<Document>> {
    let what = format!("list the indexes of {}", coll.namespace());
    let result = match coll.list_indexes().await {
        Ok(c) => c.try_collect::<Vec<_>>().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(models) => models
            .into_iter()
            .map(|m| {
                mongodb::bson::to_document(&m).map_err(|e| Error::Codec {
                    entity: "index",
                    direction: "encode",
                    message: e.to_string(),
                })
            })
            .collect(),
        // NamespaceNotFound: a collection never written has no indexes.
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 26) => {
            Ok(Vec::new())
        }
        Err(e) => Err(Error::mongo(what, e)),
    }
}
