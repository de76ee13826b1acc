//! Reading a backup back: the verifying first pass, then the journaled, resumable second pass,
//! and the rollback.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Collection;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::archive::{hex, ArchiveReader, Record};
use super::{RestorePlan, RESTORE_JOURNAL_COLLECTION};
use crate::error::{Component, Error, Result, DUPLICATE_KEY};
use crate::storage::Storage;
use crate::tenant::TenantId;

/// One section of a verified archive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SectionSummary {
    /// `entity` or `ledger`.
    pub kind: String,
    /// Entity name (`""` for the ledger).
    pub entity: String,
    /// Database it was read from.
    pub database: String,
    /// Collection it was read from.
    pub collection: String,
    /// Stored name of the id field (`_id` for the ledger).
    pub id_field: String,
    /// Stored name of the tenant field (none for the ledger).
    pub tenant_field: Option<String>,
    /// Documents in the section.
    pub count: u64,
    /// SHA-256 of their BSON bytes.
    pub sha256: String,
    /// Documents per tenant.
    pub tenants: BTreeMap<String, u64>,
    /// Names of the indexes the server listed at backup.
    pub index_names: Vec<String>,
    /// The index definitions as the server listed them.
    #[serde(skip)]
    pub(crate) indexes: Vec<Document>,
}

/// What [`Storage::verify_archive`] found: an archive whose every check passed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiveSummary {
    /// Format version.
    pub format_version: u16,
    /// When the backup was made (RFC 3339).
    pub created_at: String,
    /// The server it was made from.
    pub source_server: String,
    /// The tenants it covers (`None`: all).
    pub scope: Option<Vec<String>>,
    /// Whether it is a point-in-time cut.
    pub point_in_time: bool,
    /// Its sections, in order.
    pub sections: Vec<SectionSummary>,
    /// Documents, ledger records included.
    pub documents: u64,
    /// The trailer's SHA-256.
    pub archive_sha256: String,
}

/// One section of a restore or rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoredSection {
    /// `entity` or `ledger`.
    pub kind: String,
    /// Entity name (`""` for the ledger).
    pub entity: String,
    /// `database.collection` in the archive.
    pub source: String,
    /// `database.collection` written.
    pub target: String,
    /// Tenants written (after re-keying).
    pub tenants: Vec<String>,
    /// Documents inserted by this run.
    pub inserted: u64,
    /// Documents found already there and identical (a resumed restore, ledger records the
    /// target had).
    pub skipped_existing: u64,
    /// Ledger records the target had with other content (kept as they are).
    pub conflicts: u64,
    /// Documents removed (rollback).
    pub removed: u64,
    /// Indexes created or found in place.
    pub indexes: Vec<String>,
    /// Indexes not created, with the reason (e.g. TTL on a server without TTL indexes).
    pub indexes_skipped: Vec<String>,
    /// Whether the target now holds exactly the manifest's count for the restored tenants.
    pub verified: bool,
}

/// What [`Storage::restore`] or [`Storage::rollback_restore`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// The archive's checksum.
    pub archive_sha256: String,
    /// The restore journal's id.
    pub journal: String,
    /// `restored`, `already_restored` or `rolled_back`.
    pub state: String,
    /// Whether this run resumed an interrupted restore.
    pub resumed: bool,
    /// One entry per section.
    pub sections: Vec<RestoredSection>,
    /// Cache entries of the restored tenants dropped.
    pub cache_entries_dropped: u64,
}

fn open(path: &Path) -> Result<ArchiveReader<BufReader<File>>> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::Archive {
        archive: name.clone(),
        reason: format!("cannot open: {e}"),
    })?;
    ArchiveReader::open(BufReader::with_capacity(256 * 1024, file), &name)
}

fn verify_path(path: &Path) -> Result<ArchiveSummary> {
    let mut r = open(path)?;
    verify(&mut r)
}

fn str_of(d: &Document, key: &str) -> String {
    d.get_str(key).unwrap_or_default().to_owned()
}

/// The first pass: reads every record and checks framing, counts and checksums.
fn verify<R: std::io::Read>(r: &mut ArchiveReader<R>) -> Result<ArchiveSummary> {
    let header = match r.next()? {
        Some(Record::Header(h)) => h,
        _ => return Err(r.bad("the first record is not the header".into())),
    };
    let mut sections: Vec<SectionSummary> = Vec::new();
    let mut open: Option<(SectionSummary, Sha256)> = None;
    let mut manifest: Option<Document> = None;
    let sha = loop {
        let Some(rec) = r.next()? else {
            return Err(r.bad("truncated: no trailer".into()));
        };
        if manifest.is_some() && !matches!(rec, Record::Trailer(_)) {
            return Err(r.bad("a record follows the manifest".into()));
        }
        match rec {
            Record::Header(_) => return Err(r.bad("a second header".into())),
            Record::Section(s) => {
                if let Some((prev, _)) = &open {
                    return Err(r.bad(format!(
                        "section {}.{} has no end record",
                        prev.database, prev.collection
                    )));
                }
                let indexes: Vec<Document> = s
                    .get_array("indexes")
                    .map(|a| a.iter().filter_map(|b| b.as_document().cloned()).collect())
                    .unwrap_or_default();
                open = Some((
                    SectionSummary {
                        kind: str_of(&s, "kind"),
                        entity: str_of(&s, "entity"),
                        database: str_of(&s, "database"),
                        collection: str_of(&s, "collection"),
                        id_field: str_of(&s, "id_field"),
                        tenant_field: s.get_str("tenant_field").ok().map(str::to_owned),
                        count: 0,
                        sha256: String::new(),
                        tenants: BTreeMap::new(),
                        index_names: indexes.iter().map(|i| str_of(i, "name")).collect(),
                        indexes,
                    },
                    Sha256::new(),
                ));
                let (sec, _) = open.as_ref().expect("just set");
                if sec.database.is_empty() || sec.collection.is_empty() {
                    return Err(r.bad("a section names no database or collection".into()));
                }
            }
            Record::Document(raw) => {
                let Some((sec, hasher)) = open.as_mut() else {
                    return Err(r.bad("a document outside any section".into()));
                };
                hasher.update(raw.as_bytes());
                sec.count += 1;
                if let Some(f) = &sec.tenant_field {
                    match raw.get_str(f).ok() {
                        Some(t) => *sec.tenants.entry(t.to_owned()).or_default() += 1,
                        None => {
                            let (n, db, coll) =
                                (sec.count, sec.database.clone(), sec.collection.clone());
                            return Err(r.bad(format!(
                                "document {n} of {db}.{coll} has no tenant field `{f}`"
                            )));
                        }
                    }
                }
            }
            Record::SectionEnd(end) => {
                let Some((mut sec, hasher)) = open.take() else {
                    return Err(r.bad("a section end outside any section".into()));
                };
                sec.sha256 = hex(&hasher.finalize());
                let count = end.get_i64("count").unwrap_or(-1);
                if count != sec.count as i64 {
                    return Err(r.bad(format!(
                        "section {}.{}: its end record counts {count} documents, the archive \
                         holds {}",
                        sec.database, sec.collection, sec.count
                    )));
                }
                if end.get_str("sha256").unwrap_or_default() != sec.sha256 {
                    return Err(r.bad(format!(
                        "section {}.{}: checksum mismatch (recorded {}, documents hash to {})",
                        sec.database,
                        sec.collection,
                        end.get_str("sha256").unwrap_or_default(),
                        sec.sha256
                    )));
                }
                sections.push(sec);
            }
            Record::Manifest(m) => {
                if let Some((sec, _)) = &open {
                    return Err(r.bad(format!(
                        "section {}.{} has no end record",
                        sec.database, sec.collection
                    )));
                }
                manifest = Some(m);
            }
            Record::Trailer(sha) => {
                if manifest.is_none() {
                    return Err(r.bad("the trailer comes before any manifest".into()));
                }
                break sha;
            }
        }
    };
    let manifest = manifest.expect("checked at the trailer");
    let listed: Vec<Document> = manifest
        .get_array("sections")
        .map(|a| a.iter().filter_map(|b| b.as_document().cloned()).collect())
        .unwrap_or_default();
    if listed.len() != sections.len() {
        return Err(r.bad(format!(
            "the manifest lists {} sections, the archive holds {}",
            listed.len(),
            sections.len()
        )));
    }
    for (m, s) in listed.iter().zip(&sections) {
        let same = str_of(m, "database") == s.database
            && str_of(m, "collection") == s.collection
            && m.get_i64("count").ok() == Some(s.count as i64)
            && str_of(m, "sha256") == s.sha256;
        if !same {
            return Err(r.bad(format!(
                "the manifest's entry for {}.{} does not match the section (count {:?} vs {}, \
                 sha256 {} vs {})",
                s.database,
                s.collection,
                m.get_i64("count").ok(),
                s.count,
                str_of(m, "sha256"),
                s.sha256
            )));
        }
    }
    let documents: u64 = sections.iter().map(|s| s.count).sum();
    if manifest.get_i64("documents").ok() != Some(documents as i64) {
        return Err(r.bad("the manifest's document total does not match the sections".into()));
    }
    Ok(ArchiveSummary {
        format_version: super::FORMAT_VERSION,
        created_at: header
            .get_datetime("created_at")
            .ok()
            .and_then(|t| t.try_to_rfc3339_string().ok())
            .unwrap_or_default(),
        source_server: header
            .get_document("source")
            .map(|s| str_of(s, "server"))
            .unwrap_or_default(),
        scope: header.get_array("scope").ok().map(|a| {
            a.iter()
                .filter_map(|b| b.as_str().map(str::to_owned))
                .collect()
        }),
        point_in_time: header.get_bool("point_in_time").unwrap_or(false),
        sections,
        documents,
        archive_sha256: sha,
    })
}

/// Where one section goes.
#[derive(Debug, Clone)]
struct Target {
    database: String,
    collection: String,
    /// Tenants written (after re-keying); empty for the ledger.
    tenants: Vec<String>,
    /// Documents the section contributes.
    expected: u64,
}

fn targets(storage: &Storage, plan: &RestorePlan, summary: &ArchiveSummary) -> Result<Vec<Target>> {
    if let Some((from, _)) = &plan.rename {
        let found = summary
            .sections
            .iter()
            .any(|s| s.tenants.contains_key(from.as_str()));
        if !found {
            return Err(Error::Backup {
                operation: "restore",
                reason: format!("tenant {from} is not in the archive: nothing to clone"),
            });
        }
    }
    Ok(summary
        .sections
        .iter()
        .map(|s| {
            if s.kind == "ledger" {
                let database = plan
                    .databases
                    .get(&s.database)
                    .cloned()
                    .unwrap_or_else(|| storage.config().migrations.database.clone());
                return Target {
                    database,
                    collection: s.collection.clone(),
                    tenants: Vec::new(),
                    expected: s.count,
                };
            }
            let (tenants, expected) = match &plan.rename {
                Some((from, to)) => match s.tenants.get(from.as_str()) {
                    Some(n) => (vec![to.as_str().to_owned()], *n),
                    None => (Vec::new(), 0),
                },
                None => (s.tenants.keys().cloned().collect(), s.count),
            };
            Target {
                database: plan.target_db(&s.database).to_owned(),
                collection: s.collection.clone(),
                tenants,
                expected,
            }
        })
        .collect())
}

fn journal_id(plan: &RestorePlan, archive: &str) -> String {
    let mut h = Sha256::new();
    h.update(archive.as_bytes());
    if let Some((from, to)) = &plan.rename {
        h.update(format!("\u{1f}{from}\u{1f}{to}").as_bytes());
    }
    for (a, b) in &plan.databases {
        h.update(format!("\u{1e}{a}\u{1f}{b}").as_bytes());
    }
    hex(&h.finalize()[..16])
}

fn journal(storage: &Storage) -> Collection<Document> {
    storage
        .raw()
        .database(&storage.config().migrations.database)
        .collection(RESTORE_JOURNAL_COLLECTION)
}

fn mongo(what: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> Error {
    let what = what.into();
    move |e| Error::mongo(what, e)
}

fn tenant_filter(field: &str, tenants: &[String]) -> Document {
    doc! { field: { "$in": tenants.iter().cloned().map(Bson::String).collect::<Vec<_>>() } }
}

async fn collection_names(storage: &Storage, db: &str) -> Result<BTreeSet<String>> {
    Ok(storage
        .raw()
        .database(db)
        .list_collection_names()
        .await
        .map_err(mongo(format!("list the collections of {db}")))?
        .into_iter()
        .collect())
}

/// The verifying pass over the file at `path`, on a blocking thread (it reads and hashes the
/// whole archive); `operation` names the call in the error if that thread panics.
pub(super) async fn verify_off_thread(
    path: &Path,
    operation: &'static str,
) -> Result<ArchiveSummary> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || verify_path(&owned))
        .await
        .map_err(|e| Error::Backup {
            operation,
            reason: format!("the verifying pass panicked: {e}"),
        })?
}

pub(super) async fn restore(
    storage: &Storage,
    plan: &RestorePlan,
    path: &Path,
) -> Result<RestoreReport> {
    let summary = verify_off_thread(path, "restore").await?;
    let targets = targets(storage, plan, &summary)?;
    let id = journal_id(plan, &summary.archive_sha256);
    let journals = journal(storage);
    let existing = journals
        .find_one(doc! { "_id": &id })
        .await
        .map_err(mongo("read the restore journal"))?;
    let state = existing.as_ref().map(|j| str_of(j, "state"));
    if state.as_deref() == Some("restored") {
        return Ok(RestoreReport {
            archive_sha256: summary.archive_sha256,
            journal: id,
            state: "already_restored".into(),
            resumed: false,
            sections: Vec::new(),
            cache_entries_dropped: 0,
        });
    }
    let resumed = state.as_deref() == Some("running");
    let mut done: BTreeSet<usize> = BTreeSet::new();
    if resumed {
        let j = existing.expect("running journal");
        if let Ok(secs) = j.get_array("sections") {
            for (i, s) in secs.iter().enumerate() {
                if s.as_document().and_then(|d| d.get_bool("done").ok()) == Some(true) {
                    done.insert(i);
                }
            }
        }
    } else {
        // A fresh start: the target must hold nothing of the restored tenants.
        let mut entries = Vec::new();
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (s, t) in summary.sections.iter().zip(&targets) {
            if !names.contains_key(&t.database) {
                names.insert(
                    t.database.clone(),
                    collection_names(storage, &t.database).await?,
                );
            }
            let existed = names[&t.database].contains(&t.collection);
            if s.kind == "entity" && existed && !t.tenants.is_empty() {
                let field = s.tenant_field.as_deref().unwrap_or_default();
                let n = storage
                    .raw()
                    .database(&t.database)
                    .collection::<Document>(&t.collection)
                    .count_documents(tenant_filter(field, &t.tenants))
                    .await
                    .map_err(mongo(format!("count {}.{}", t.database, t.collection)))?;
                if n > 0 {
                    return Err(Error::Backup {
                        operation: "restore",
                        reason: format!(
                            "{}.{} already holds {n} documents of the tenant(s) being restored \
                             ({}): restore into an empty database, or into another tenant id \
                             (`RestorePlan::into_tenant`); nothing was written",
                            t.database,
                            t.collection,
                            t.tenants.join(", ")
                        ),
                    });
                }
            }
            entries.push(Bson::Document(doc! {
                "kind": &s.kind, "database": &t.database, "collection": &t.collection,
                "tenant_field": s.tenant_field.clone().map(Bson::String).unwrap_or(Bson::Null),
                "tenants": t.tenants.iter().cloned().map(Bson::String).collect::<Vec<_>>(),
                "existed": existed, "done": false, "inserted": 0_i64,
            }));
        }
        let rename = plan
            .rename
            .as_ref()
            .map(|(f, t)| Bson::Document(doc! { "from": f.as_str(), "to": t.as_str() }))
            .unwrap_or(Bson::Null);
        let record = doc! {
            "_id": &id, "archive_sha256": &summary.archive_sha256, "state": "running",
            "rename": rename, "sections": entries, "ledger_inserted": [],
            "started_at": mongodb::bson::DateTime::now(),
            "updated_at": mongodb::bson::DateTime::now(),
        };
        journals
            .replace_one(doc! { "_id": &id }, record)
            .upsert(true)
            .await
            .map_err(mongo("write the restore journal"))?;
    }

    let mut report_sections: Vec<RestoredSection> = summary
        .sections
        .iter()
        .zip(&targets)
        .map(|(s, t)| RestoredSection {
            kind: s.kind.clone(),
            entity: s.entity.clone(),
            source: format!("{}.{}", s.database, s.collection),
            target: format!("{}.{}", t.database, t.collection),
            tenants: t.tenants.clone(),
            inserted: 0,
            skipped_existing: 0,
            conflicts: 0,
            removed: 0,
            indexes: Vec::new(),
            indexes_skipped: Vec::new(),
            verified: false,
        })
        .collect();

    // Indexes first: unique indexes then guard the inserts.
    if plan.indexes {
        for ((s, t), rep) in summary
            .sections
            .iter()
            .zip(&targets)
            .zip(&mut report_sections)
        {
            if s.kind != "entity" {
                continue;
            }
            create_indexes(storage, s, t, rep).await?;
        }
    }

    // The second pass.
    let mut r = open(path)?;
    let mut batches = 0_u64;
    let mut section: Option<usize> = None;
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let rename = plan
        .rename
        .as_ref()
        .map(|(f, t)| (f.as_str().to_owned(), t.clone()));
    while let Some(rec) = r.next()? {
        match rec {
            Record::Section(_) => {
                section = Some(section.map_or(0, |i| i + 1));
            }
            Record::Document(raw) => {
                let i = section.expect("verified: documents are inside sections");
                if done.contains(&i) {
                    continue;
                }
                let s = &summary.sections[i];
                let doc = match (&rename, s.kind.as_str(), &s.tenant_field) {
                    (Some((from, to)), "entity", Some(field)) => {
                        if raw.get_str(field).ok() != Some(from.as_str()) {
                            continue;
                        }
                        rekey(&raw, field, &s.id_field, to)?
                    }
                    _ => raw,
                };
                batch.push(doc);
                if batch.len() >= plan.batch_size {
                    let (n, ids) = flush(
                        storage,
                        &summary.sections[i],
                        &targets[i],
                        &mut batch,
                        &mut report_sections[i],
                    )
                    .await?;
                    batches += 1;
                    progress(&journals, &id, i, n, false, &ids).await?;
                    if plan.interrupt_after.is_some_and(|max| batches >= max) {
                        return Err(Error::Timeout {
                            component: Component::Mongodb,
                            operation:
                                "restore interrupted by the test hook (process stopped here)",
                            after: std::time::Duration::ZERO,
                        });
                    }
                }
            }
            Record::SectionEnd(_) => {
                let i = section.expect("verified");
                if done.contains(&i) {
                    continue;
                }
                let (n, ids) = flush(
                    storage,
                    &summary.sections[i],
                    &targets[i],
                    &mut batch,
                    &mut report_sections[i],
                )
                .await?;
                progress(&journals, &id, i, n, true, &ids).await?;
            }
            Record::Trailer(sha) if sha != summary.archive_sha256 => {
                return Err(r.bad(format!(
                    "the archive changed between the verifying pass and the restore (checksum \
                     {} then {sha}); the journal {id} is kept: roll back, then restore from \
                     a file nobody writes to",
                    summary.archive_sha256
                )));
            }
            Record::Header(_) | Record::Manifest(_) | Record::Trailer(_) => {}
        }
    }

    // Verify against the manifest, then drop the restored tenants' cache entries.
    let mut dropped = 0;
    for ((s, t), rep) in summary
        .sections
        .iter()
        .zip(&targets)
        .zip(&mut report_sections)
    {
        let coll = storage
            .raw()
            .database(&t.database)
            .collection::<Document>(&t.collection);
        let found = if s.kind == "entity" {
            if t.tenants.is_empty() {
                0
            } else {
                coll.count_documents(tenant_filter(
                    s.tenant_field.as_deref().unwrap_or_default(),
                    &t.tenants,
                ))
                .await
                .map_err(mongo(format!("count {}.{}", t.database, t.collection)))?
            }
        } else {
            // Every ledger record is there, inserted now or found in place.
            rep.inserted + rep.skipped_existing + rep.conflicts
        };
        rep.verified = found == t.expected;
        if !rep.verified {
            return Err(Error::Backup {
                operation: "restore",
                reason: format!(
                    "verification failed: {}.{} holds {found} documents of the restored \
                     tenant(s), the manifest says {} (was something written there during the \
                     restore?); the journal {id} is kept: resume or roll back",
                    t.database, t.collection, t.expected
                ),
            });
        }
        if s.kind == "entity" {
            for tenant in &t.tenants {
                let Ok(tenant) = TenantId::new(tenant) else {
                    continue;
                };
                let identity = format!("{}.{}:{}", t.database, t.collection, s.entity);
                dropped += storage
                    .cache()
                    .invalidate_identity(&t.database, &identity, &tenant)
                    .await?;
            }
        }
    }
    journals
        .update_one(
            doc! { "_id": &id },
            doc! { "$set": { "state": "restored", "updated_at": mongodb::bson::DateTime::now() } },
        )
        .await
        .map_err(mongo("write the restore journal"))?;
    Ok(RestoreReport {
        archive_sha256: summary.archive_sha256,
        journal: id,
        state: "restored".into(),
        resumed,
        sections: report_sections,
        cache_entries_dropped: dropped,
    })
}

/// Records a section's progress; `ledger_ids` are the ledger records it inserted.
async fn progress(
    journals: &Collection<Document>,
    id: &str,
    section: usize,
    inserted: u64,
    done: bool,
    ledger_ids: &[String],
) -> Result<()> {
    let mut set = doc! { "updated_at": mongodb::bson::DateTime::now() };
    if done {
        set.insert(format!("sections.{section}.done"), true);
    }
    let mut update = doc! {
        "$set": set,
        "$inc": { format!("sections.{section}.inserted"): inserted as i64 },
    };
    if !ledger_ids.is_empty() {
        update.insert(
            "$push",
            doc! { "ledger_inserted": { "$each": ledger_ids.iter().cloned().map(Bson::String).collect::<Vec<_>>() } },
        );
    }
    journals
        .update_one(doc! { "_id": id }, update)
        .await
        .map_err(mongo("write the restore journal"))?;
    Ok(())
}

/// A document re-keyed into tenant `to`: the tenant field, and `_id` as repositories build it.
fn rekey(
    raw: &RawDocumentBuf,
    tenant_field: &str,
    id_field: &str,
    to: &TenantId,
) -> Result<RawDocumentBuf> {
    let bad = |message: String| Error::Codec {
        entity: "backup document",
        direction: "decode",
        message,
    };
    let mut d = raw.to_document().map_err(|e| bad(e.to_string()))?;
    let id = d
        .get(id_field)
        .cloned()
        .ok_or_else(|| bad(format!("no id field `{id_field}` to re-key")))?;
    d.insert("_id", crate::document::storage_key(to.as_str(), &id));
    d.insert(tenant_field, to.as_str());
    RawDocumentBuf::from_document(&d).map_err(|e| bad(e.to_string()))
}

/// Inserts `batch` (emptied) into the section's target. Duplicates by `_id` that are identical
/// count as skipped; a different document under the same `_id` is refused (for the ledger:
/// counted as a conflict and kept). Returns how many were inserted and, for the ledger, their
/// `_id`s (the journal records them for a rollback).
async fn flush(
    storage: &Storage,
    s: &SectionSummary,
    t: &Target,
    batch: &mut Vec<RawDocumentBuf>,
    rep: &mut RestoredSection,
) -> Result<(u64, Vec<String>)> {
    if batch.is_empty() {
        return Ok((0, Vec::new()));
    }
    let mut ids = Vec::new();
    let docs = std::mem::take(batch);
    let coll = storage
        .raw()
        .database(&t.database)
        .collection::<RawDocumentBuf>(&t.collection);
    let what = format!("restore into {}.{}", t.database, t.collection);
    let mut failed: BTreeMap<usize, (i32, String)> = BTreeMap::new();
    if let Err(e) = coll.insert_many(&docs).ordered(false).await {
        match e.kind.as_ref() {
            mongodb::error::ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
                for w in m.write_errors.iter().flatten() {
                    failed.insert(w.index, (w.code, w.message.clone()));
                }
            }
            _ => return Err(Error::mongo(what, e)),
        }
    }
    let mut inserted = 0;
    for (i, d) in docs.iter().enumerate() {
        match failed.get(&i) {
            None => {
                inserted += 1;
                if s.kind == "ledger" {
                    if let Ok(id) = d.get_str("_id") {
                        ids.push(id.to_owned());
                    }
                }
            }
            Some((code, _)) if *code == DUPLICATE_KEY => {
                let id = d
                    .get("_id")
                    .ok()
                    .flatten()
                    .map(|b| b.to_raw_bson())
                    .and_then(|b| Bson::try_from(b).ok())
                    .unwrap_or(Bson::Null);
                let there = coll
                    .find_one(doc! { "_id": id.clone() })
                    .await
                    .map_err(mongo(what.clone()))?;
                let same = match &there {
                    Some(x) => x.to_document().ok() == d.to_document().ok(),
                    None => false,
                };
                if same {
                    rep.skipped_existing += 1;
                } else if s.kind == "ledger" {
                    rep.conflicts += 1;
                } else {
                    return Err(Error::Backup {
                        operation: "restore",
                        reason: format!(
                            "{}.{} already holds another document under _id {}: the target \
                             changed since the restore started; roll it back and restore again",
                            t.database,
                            t.collection,
                            crate::document::id_for_errors(&id)
                        ),
                    });
                }
            }
            Some((code, message)) => {
                return Err(Error::Rejected {
                    entity: "restored document",
                    position: i,
                    code: *code,
                    message: format!("{what}: {message}"),
                })
            }
        }
    }
    rep.inserted += inserted;
    Ok((inserted, ids))
}

/// Creates the section's indexes (as the server listed them at backup) on the target.
async fn create_indexes(
    storage: &Storage,
    s: &SectionSummary,
    t: &Target,
    rep: &mut RestoredSection,
) -> Result<()> {
    let ttl = storage.capabilities().ttl_indexes;
    let db = storage.raw().database(&t.database);
    for ix in &s.indexes {
        let name = str_of(ix, "name");
        if name == "_id_" {
            continue;
        }
        let mut spec = ix.clone();
        spec.remove("v");
        spec.remove("ns");
        if spec.contains_key("expireAfterSeconds") && !ttl {
            rep.indexes_skipped.push(format!(
                "{name}: TTL indexes are not supported by the connected {} server",
                storage.capabilities().server_description()
            ));
            continue;
        }
        db.run_command(doc! { "createIndexes": &t.collection, "indexes": [spec] })
            .await
            .map_err(mongo(format!(
                "create index {name} on {}.{}",
                t.database, t.collection
            )))?;
        rep.indexes.push(name);
    }
    Ok(())
}

pub(super) async fn rollback(
    storage: &Storage,
    plan: &RestorePlan,
    path: &Path,
) -> Result<RestoreReport> {
    let summary = verify_off_thread(path, "restore rollback").await?;
    let id = journal_id(plan, &summary.archive_sha256);
    let journals = journal(storage);
    let j = journals
        .find_one(doc! { "_id": &id })
        .await
        .map_err(mongo("read the restore journal"))?
        .ok_or_else(|| Error::Backup {
            operation: "restore rollback",
            reason: format!(
                "no restore journal {id} for this archive and plan: nothing was restored that \
                 could be rolled back"
            ),
        })?;
    let mut sections = Vec::new();
    if str_of(&j, "state") != "rolled_back" {
        let entries: Vec<Document> = j
            .get_array("sections")
            .map(|a| a.iter().filter_map(|b| b.as_document().cloned()).collect())
            .unwrap_or_default();
        let ledger_ids: Vec<Bson> = j.get_array("ledger_inserted").cloned().unwrap_or_default();
        for (e, s) in entries.iter().zip(&summary.sections) {
            let (db, coll) = (str_of(e, "database"), str_of(e, "collection"));
            let c = storage.raw().database(&db).collection::<Document>(&coll);
            let tenants: Vec<String> = e
                .get_array("tenants")
                .map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let removed = if s.kind == "ledger" {
                if ledger_ids.is_empty() {
                    0
                } else {
                    c.delete_many(doc! { "_id": { "$in": ledger_ids.clone() } })
                        .await
                        .map_err(mongo(format!("roll back {db}.{coll}")))?
                        .deleted_count
                }
            } else if !e.get_bool("existed").unwrap_or(true) {
                let n = c
                    .count_documents(doc! {})
                    .await
                    .map_err(mongo(format!("count {db}.{coll}")))?;
                c.drop().await.map_err(mongo(format!("drop {db}.{coll}")))?;
                n
            } else if tenants.is_empty() {
                0
            } else {
                c.delete_many(tenant_filter(&str_of(e, "tenant_field"), &tenants))
                    .await
                    .map_err(mongo(format!("roll back {db}.{coll}")))?
                    .deleted_count
            };
            if s.kind == "entity" {
                for tenant in &tenants {
                    let Ok(tenant) = TenantId::new(tenant) else {
                        continue;
                    };
                    let identity = format!("{db}.{coll}:{}", s.entity);
                    storage
                        .cache()
                        .invalidate_identity(&db, &identity, &tenant)
                        .await?;
                }
            }
            sections.push(RestoredSection {
                kind: s.kind.clone(),
                entity: s.entity.clone(),
                source: format!("{}.{}", s.database, s.collection),
                target: format!("{db}.{coll}"),
                tenants,
                inserted: 0,
                skipped_existing: 0,
                conflicts: 0,
                removed,
                indexes: Vec::new(),
                indexes_skipped: Vec::new(),
                verified: false,
            });
        }
        journals
            .update_one(
                doc! { "_id": &id },
                doc! { "$set": { "state": "rolled_back", "updated_at": mongodb::bson::DateTime::now() } },
            )
            .await
            .map_err(mongo("write the restore journal"))?;
    }
    Ok(RestoreReport {
        archive_sha256: summary.archive_sha256,
        journal: id,
        state: "rolled_back".into(),
        resumed: false,
        sections,
        cache_entries_dropped: 0,
    })
}
