//! Optimistic locking: version-checked writes that are correct on MongoDB and on FerretDB.
//!
//! On MongoDB a single-document `findAndModify` with `{version: n}` in its filter is atomic, so
//! the filter alone decides the winner. FerretDB v1 applies updates as read, modify, write back
//! without a row lock: two writers that both read version `n` can both "win". Where the
//! capabilities say conditional updates are not atomic, a writer first claims the transition
//! `n -> n+1` by inserting `{_id: "<tenant>␟<id>␟<n+1>"}` into `<collection>__version_claims`.
//! Unique `_id` inserts are enforced by the storage engine, so only one writer gets the claim;
//! the loser reports a conflict. The claim is deleted after the write (the version filter then
//! keeps stale writers out); a claim left by a crashed writer expires after [`CLAIM_LEASE`].

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Collection;

use crate::entity::Entity;
use crate::error::{duplicate_key_message, Error, Result};
use crate::outbox::WriteKind;
use crate::repo::events::{self, WriteEvents};
use crate::repo::write::{self, Outcome, RawWrite};
use crate::repo::{codec, Repository};
use crate::tenant::TenantId;

/// How long a claim of a crashed writer blocks its version transition.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// Attempts of an unconditional update on a versioned entity before giving up under
/// contention.
const UPDATE_ATTEMPTS: u32 = 32;

fn version_field<E: Entity>() -> &'static str {
    E::META
        .version_field
        .expect("versioned paths run only for entities with a version field")
}

/// Patch the latest version, whatever it is (retrying past concurrent writers).
pub(crate) async fn update_latest<E: Entity>(
    repo: &Repository<E>,
    tenant: &TenantId,
    id: &E::Id,
    set: Document,
) -> Result<Option<E>> {
    let vf = version_field::<E>();
    if repo.storage().capabilities().atomic_conditional_updates {
        let filter = repo.id_filter(tenant, id)?;
        let mut update = doc! { "$inc": { vf: 1_i64 } };
        if !set.is_empty() {
            update.insert("$set", set);
        }
        return repo
            .find_one_and_update_public("update", filter, update)
            .await;
    }
    let mut last = None;
    for attempt in 0..UPDATE_ATTEMPTS {
        let Some(current) = current_version(repo, tenant, id).await? else {
            return Ok(None);
        };
        match update_at(repo, tenant, id, current, set.clone()).await {
            Ok(e) => return Ok(Some(e)),
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e @ Error::VersionConflict { .. }) => {
                last = Some(e);
                backoff(attempt).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("the loop ran"))
}

/// Patch only if the stored version is `expected`.
pub(crate) async fn update_at<E: Entity>(
    repo: &Repository<E>,
    tenant: &TenantId,
    id: &E::Id,
    expected: u64,
    mut set: Document,
) -> Result<E> {
    let vf = version_field::<E>();
    let next = expected + 1;
    set.insert(vf, version_bson(next));
    let mut filter = repo.id_filter(tenant, id)?;
    filter.insert(vf, version_bson(expected));
    let claim = Claim::take(repo, tenant, id, expected).await?;
    let result = if E::META.outbox.is_some() {
        let events = WriteEvents {
            kind: WriteKind::Update,
            revision: next,
            payload: events::payload::<E>(&set),
            extra: &[],
        };
        let update = RawWrite::Update {
            filter,
            update: doc! { "$set": set },
        };
        match write::run(repo, "update_checked", tenant, id, update, events).await {
            Ok(Outcome::Updated(d)) => d.map(|d| codec::decode_projected(d, false)).transpose(),
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    } else {
        repo.find_one_and_update_public("update_checked", filter, doc! { "$set": set })
            .await
    };
    if let Some(c) = claim {
        c.release().await;
    }
    match result? {
        Some(e) => Ok(e),
        None => Err(diagnose(repo, tenant, id, expected).await),
    }
}

/// Replace only if the stored version is `entity.version()`; bumps it on success.
pub(crate) async fn replace<E: Entity>(
    repo: &Repository<E>,
    tenant: &TenantId,
    entity: &mut E,
) -> Result<()> {
    let vf = version_field::<E>();
    let expected = entity
        .version()
        .expect("entities with a version field report it");
    let next = expected + 1;
    let mut doc = codec::encode(tenant, entity)?;
    doc.insert(vf, version_bson(next));
    let mut filter = repo.id_filter(tenant, entity.id())?;
    filter.insert(vf, version_bson(expected));
    let claim = Claim::take(repo, tenant, entity.id(), expected).await?;
    let events = WriteEvents {
        kind: WriteKind::Update,
        revision: next,
        payload: events::payload::<E>(&doc),
        extra: &[],
    };
    let result = write::run(
        repo,
        "replace",
        tenant,
        entity.id(),
        RawWrite::Replace { filter, doc },
        events,
    )
    .await;
    if let Some(c) = claim {
        c.release().await;
    }
    if !matches!(result?, Outcome::Matched(n) if n > 0) {
        return Err(diagnose(repo, tenant, entity.id(), expected).await);
    }
    entity.set_version(next);
    Ok(())
}

/// Delete (soft where declared) whatever the version, as one claimed version transition, so
/// the delete event is recorded with it. For entities with an outbox.
pub(crate) async fn delete_latest<E: Entity>(
    repo: &Repository<E>,
    tenant: &TenantId,
    id: &E::Id,
) -> Result<bool> {
    let vf = version_field::<E>();
    let mut last = None;
    for attempt in 0..UPDATE_ATTEMPTS {
        let Some(current) = current_version(repo, tenant, id).await? else {
            return Ok(false);
        };
        let next = current + 1;
        let mut filter = repo.id_filter(tenant, id)?;
        filter.insert(vf, version_bson(current));
        let write = if E::META.soft_delete {
            RawWrite::Update {
                filter,
                update: doc! { "$set": {
                    crate::repo::DELETED_AT_FIELD: DateTime::now(),
                    vf: version_bson(next),
                } },
            }
        } else {
            RawWrite::Delete { filter }
        };
        let events = WriteEvents {
            kind: WriteKind::Delete,
            revision: next,
            payload: serde_json::json!({}),
            extra: &[],
        };
        let claim = Claim::take(repo, tenant, id, current).await;
        let claim = match claim {
            Ok(c) => c,
            Err(e @ Error::VersionConflict { .. }) => {
                last = Some(e);
                backoff(attempt).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let result = write::run(repo, "delete", tenant, id, write, events).await;
        if let Some(c) = claim {
            c.release().await;
        }
        match result? {
            Outcome::Matched(n) if n > 0 => return Ok(true),
            Outcome::Updated(Some(_)) => return Ok(true),
            _ => match diagnose(repo, tenant, id, current).await {
                Error::NotFound { .. } => return Ok(false),
                e => {
                    last = Some(e);
                    backoff(attempt).await;
                }
            },
        }
    }
    Err(last.expect("the loop ran"))
}

/// Insert-or-replace without a version check, as a claimed version transition (replace) or an
/// insert, so the right event is recorded with it. For entities with an outbox.
pub(crate) async fn upsert_latest<E: Entity>(
    repo: &Repository<E>,
    tenant: &TenantId,
    entity: &E,
) -> Result<crate::repo::Upserted> {
    let mut last = None;
    for attempt in 0..UPDATE_ATTEMPTS {
        match current_version(repo, tenant, entity.id()).await? {
            None => match repo.insert_direct(tenant, entity, &[]).await {
                Ok(()) => return Ok(crate::repo::Upserted::Inserted),
                Err(e @ Error::DuplicateKey { .. }) => last = Some(e),
                Err(e) => return Err(e),
            },
            Some(current) => {
                let mut copy = mongodb::bson::from_document::<E>(codec::encode(tenant, entity)?)
                    .map_err(|e| Error::Codec {
                        entity: E::META.name,
                        direction: "decode",
                        message: e.to_string(),
                    })?;
                copy.set_version(current);
                match replace(repo, tenant, &mut copy).await {
                    Ok(()) => return Ok(crate::repo::Upserted::Replaced),
                    Err(e @ (Error::VersionConflict { .. } | Error::NotFound { .. })) => {
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        backoff(attempt).await;
    }
    Err(last.expect("the loop ran"))
}

fn version_bson(v: u64) -> Bson {
    // Versions are stored as BSON int64 (serde writes every integer type that fits that way
    // or as int32; MongoDB compares numbers across both).
    Bson::Int64(i64::try_from(v).unwrap_or(i64::MAX))
}

async fn current_version<E: Entity>(
    repo: &Repository<E>,
    tenant: &TenantId,
    id: &E::Id,
) -> Result<Option<u64>> {
    let vf = version_field::<E>();
    let filter = repo.id_filter(tenant, id)?;
    let found = repo
        .bounded(
            "read version",
            repo.docs()
                .find_one(filter)
                .projection(doc! { "_id": 0, vf: 1 }),
        )
        .await?
        .map_err(|e| Error::mongo(repo.op("read version"), e))?;
    Ok(found.map(|d| match d.get(vf) {
        Some(Bson::Int32(i)) => u64::try_from(*i).unwrap_or(0),
        Some(Bson::Int64(i)) => u64::try_from(*i).unwrap_or(0),
        Some(Bson::Double(f)) => *f as u64,
        _ => 0,
    }))
}

/// Why a version-filtered write matched nothing.
async fn diagnose<E: Entity>(
    repo: &Repository<E>,
    tenant: &TenantId,
    id: &E::Id,
    expected: u64,
) -> Error {
    match current_version(repo, tenant, id).await {
        Ok(None) => repo.not_found(id),
        Ok(Some(actual)) => Error::VersionConflict {
            entity: E::META.name,
            id: codec::id_text::<E>(id),
            expected,
            actual: Some(actual),
        },
        Err(e) => e,
    }
}

async fn backoff(attempt: u32) {
    let base = 2_u64.saturating_pow(attempt.min(6));
    let jitter = u64::from(std::process::id() ^ attempt.wrapping_mul(2_654_435_761)) % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// The exclusive right to move one document from one version to the next.
struct Claim {
    coll: Collection<Document>,
    key: String,
}

impl Claim {
    /// `None` where the server's conditional updates are atomic and no claim is needed.
    async fn take<E: Entity>(
        repo: &Repository<E>,
        tenant: &TenantId,
        id: &E::Id,
        expected: u64,
    ) -> Result<Option<Claim>> {
        if repo.storage().capabilities().atomic_conditional_updates {
            return Ok(None);
        }
        let coll = repo
            .storage()
            .database(E::META.database)
            .collection::<Document>(&format!("{}__version_claims", E::META.collection));
        let key = format!(
            "{tenant}\u{1f}{}\u{1f}{}",
            codec::id_text::<E>(id),
            expected + 1
        );
        for _ in 0..2 {
            let now = DateTime::now();
            match repo
                .bounded(
                    "claim version",
                    coll.insert_one(doc! { "_id": &key, "at": now }),
                )
                .await?
            {
                Ok(_) => return Ok(Some(Claim { coll, key })),
                Err(e) if duplicate_key_message(&e).is_some() => {
                    // Someone holds it. Take it over only if its holder is long gone.
                    let held = repo
                        .bounded("read claim", coll.find_one(doc! { "_id": &key }))
                        .await?
                        .map_err(|e| Error::mongo(repo.op("read version claim"), e))?;
                    let stale = held
                        .as_ref()
                        .and_then(|d| d.get_datetime("at").ok())
                        .is_some_and(|at| {
                            now.timestamp_millis() - at.timestamp_millis()
                                > CLAIM_LEASE.as_millis() as i64
                        });
                    match held {
                        Some(d) if stale => {
                            let at = d.get("at").cloned().unwrap_or(Bson::Null);
                            let _ = repo
                                .bounded(
                                    "expire claim",
                                    coll.delete_one(doc! { "_id": &key, "at": at }),
                                )
                                .await;
                        }
                        None => {}
                        Some(_) => {
                            return Err(Error::VersionConflict {
                                entity: E::META.name,
                                id: codec::id_text::<E>(id),
                                expected,
                                actual: None,
                            })
                        }
                    }
                }
                Err(e) => return Err(Error::mongo(repo.op("claim version"), e)),
            }
        }
        Err(Error::VersionConflict {
            entity: E::META.name,
            id: codec::id_text::<E>(id),
            expected,
            actual: None,
        })
    }

    async fn release(self) {
        if let Err(e) = self.coll.delete_one(doc! { "_id": &self.key }).await {
            tracing::warn!(claim = %self.key, error = %e, "could not release a version claim; it expires by itself");
        }
    }
}
