//! Index sync: compare what an entity declares with what the server has, and act on it.
//!
//! `create` missing indexes; `report` indexes whose options differ (never changed silently:
//! MongoDB cannot alter an index in place, and dropping one under load is an operator's call);
//! `report` extraneous indexes and drop them only when [`SyncOptions::drop_extraneous`] says so;
//! `report` TTL indexes the server cannot build as unsupported, never drop them silently.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use serde::Serialize;

use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::index::IndexSpec;

/// What to do beyond creating missing indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// Only compute the plan; change nothing.
    pub dry_run: bool,
    /// Drop indexes the entity does not declare (never `_id_`).
    pub drop_extraneous: bool,
    /// Drop and re-create indexes whose keys or options differ from the declaration.
    pub recreate_changed: bool,
}

/// One line of an [`IndexPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum IndexChange {
    /// Declared and present with the same keys and options.
    Unchanged {
        /// Index name.
        name: String,
    },
    /// Declared and missing: created (or, in a dry run, to be created).
    Create {
        /// Index name.
        name: String,
        /// Key document as JSON, e.g. `{"tenant_id":1,"email":1}`.
        keys: String,
        /// Unique index.
        unique: bool,
        /// TTL in seconds.
        ttl_seconds: Option<u64>,
        /// Whether it was created (false in a dry run).
        applied: bool,
    },
    /// Declared and present with other keys or options.
    Changed {
        /// Index name.
        name: String,
        /// What the entity declares.
        declared: String,
        /// What the server has.
        found: String,
        /// Whether it was dropped and re-created.
        applied: bool,
    },
    /// Present on the server, not declared.
    Extraneous {
        /// Index name.
        name: String,
        /// Whether it was dropped.
        dropped: bool,
    },
    /// Declared, but the server cannot build it; nothing was done.
    Unsupported {
        /// Index name.
        name: String,
        /// Why, e.g. `TTL indexes are not supported by FerretDB 1.24.2`.
        reason: String,
    },
    /// Declared and built (another entry says how), but the server enforces less than it
    /// declares: a unique index on a list field holds the whole list, not each element, where
    /// [`Capabilities::unique_list_elements`] is false (FerretDB v1).
    Weakened {
        /// Index name.
        name: String,
        /// What the server does not enforce.
        reason: String,
    },
}

/// The result of [`Storage::sync_indexes`](crate::Storage::sync_indexes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexPlan {
    /// Entity type name.
    pub entity: String,
    /// `database.collection`.
    pub namespace: String,
    /// One entry per index, declared or found.
    pub changes: Vec<IndexChange>,
}

impl IndexPlan {
    /// Names of the indexes this sync created.
    pub fn created(&self) -> Vec<&str> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                IndexChange::Create {
                    name,
                    applied: true,
                    ..
                } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether the server already matched the declaration (nothing to create or change).
    pub fn is_in_sync(&self) -> bool {
        self.changes.iter().all(|c| {
            matches!(
                c,
                IndexChange::Unchanged { .. }
                    | IndexChange::Unsupported { .. }
                    | IndexChange::Weakened { .. }
            )
        })
    }
}

/// An index in comparable form.
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    name: String,
    keys: Document,
    unique: bool,
    ttl: Option<Duration>,
    /// A key that holds a list, for a unique index (its entries are per element).
    unique_list_key: Option<&'static str>,
}

impl Desired {
    fn describe(&self) -> String {
        describe(&self.keys, self.unique, self.ttl.map(|d| d.as_secs()))
    }
}

fn describe(keys: &Document, unique: bool, ttl: Option<u64>) -> String {
    let mut s = Bson::Document(keys.clone())
        .into_relaxed_extjson()
        .to_string();
    if unique {
        s.push_str(" unique");
    }
    if let Some(t) = ttl {
        s.push_str(&format!(" ttl={t}s"));
    }
    s
}

/// The indexes one collection should have: the unique (tenant, id) index every entity gets,
/// and the declared ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexTarget<'a> {
    /// The entity's name, for the plan.
    pub entity: &'a str,
    /// MongoDB database.
    pub database: &'a str,
    /// MongoDB collection.
    pub collection: &'a str,
    /// Stored name of the tenant field.
    pub tenant_field: &'a str,
    /// Stored name of the id field.
    pub id_field: &'a str,
    /// The declared indexes.
    pub indexes: &'a [IndexSpec],
}

impl IndexTarget<'_> {
    /// The name of the unique (tenant, id) index.
    pub(crate) fn primary_name(&self) -> String {
        format!("{}_1_{}_1", self.tenant_field, self.id_field)
    }
}

fn desired(meta: &IndexTarget<'_>) -> Vec<Desired> {
    let mut out = vec![Desired {
        name: meta.primary_name(),
        keys: [meta.tenant_field, meta.id_field]
            .iter()
            .map(|f| ((*f).to_owned(), Bson::Int32(1)))
            .collect(),
        unique: true,
        ttl: None,
        unique_list_key: None,
    }];
    out.extend(meta.indexes.iter().map(|i| Desired {
        name: i.name.to_owned(),
        keys: i.key_document(),
        unique: i.unique,
        ttl: i.ttl,
        unique_list_key: i.keys.iter().find(|k| i.unique && k.list).map(|k| k.field),
    }));
    out
}

/// Numbers in key documents come back as int32, int64 or double; compare them as numbers.
fn same_keys(a: &Document, b: &Document) -> bool {
    fn num(b: &Bson) -> Option<f64> {
        match b {
            Bson::Int32(i) => Some(f64::from(*i)),
            Bson::Int64(i) => Some(*i as f64),
            Bson::Double(f) => Some(*f),
            _ => None,
        }
    }
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
            ka == kb
                && match (num(va), num(vb)) {
                    (Some(x), Some(y)) => x == y,
                    _ => va == vb,
                }
        })
}

/// The indexes `coll` has; none when the collection does not exist yet.
async fn list(coll: &mongodb::Collection<Document>) -> mongodb::error::Result<Vec<IndexModel>> {
    match coll.list_indexes().await {
        Ok(cursor) => cursor.try_collect().await,
        // NamespaceNotFound: the collection does not exist yet, so it has no indexes.
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 26) => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Creates those of `wanted` (keys, name) that `coll` lacks, by name, after listing what it
/// has: never a `createIndexes` that repeats existing indexes (FerretDB 1.24.2 panics on one
/// that repeats several, and the driver then clears its pool; see `docs/ferretdb.md`).
/// Returns how many it created.
pub(crate) async fn create_missing(
    coll: &mongodb::Collection<Document>,
    wanted: &[(Document, &str)],
) -> mongodb::error::Result<usize> {
    let existing = list(coll).await?;
    let has = |name: &str| {
        existing
            .iter()
            .any(|m| m.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name))
    };
    let missing: Vec<IndexModel> = wanted
        .iter()
        .filter(|(_, name)| !has(name))
        .map(|(keys, name)| {
            IndexModel::builder()
                .keys(keys.clone())
                .options(IndexOptions::builder().name((*name).to_owned()).build())
                .build()
        })
        .collect();
    let n = missing.len();
    if n > 0 {
        coll.create_indexes(missing).await?;
    }
    Ok(n)
}

pub(crate) async fn sync_indexes(
    db: &mongodb::Database,
    capabilities: &Capabilities,
    meta: IndexTarget<'_>,
    options: SyncOptions,
) -> Result<IndexPlan> {
    let coll = db.collection::<Document>(meta.collection);
    let ns = format!("{}.{}", meta.database, meta.collection);
    let existing = list(&coll)
        .await
        .map_err(|e| Error::mongo(format!("listIndexes {ns}"), e))?;

    let mut changes = Vec::new();
    let wanted = desired(&meta);
    for d in &wanted {
        if d.ttl.is_some() && !capabilities.ttl_indexes {
            changes.push(IndexChange::Unsupported {
                name: d.name.clone(),
                reason: format!(
                    "TTL indexes are not supported by {}",
                    capabilities.server_description()
                ),
            });
            continue;
        }
        let found = existing
            .iter()
            .find(|m| m.options.as_ref().and_then(|o| o.name.as_deref()) == Some(d.name.as_str()));
        match found {
            None => {
                if !options.dry_run {
                    create(&coll, d, &ns).await?;
                }
                changes.push(IndexChange::Create {
                    name: d.name.clone(),
                    keys: Bson::Document(d.keys.clone())
                        .into_relaxed_extjson()
                        .to_string(),
                    unique: d.unique,
                    ttl_seconds: d.ttl.map(|t| t.as_secs()),
                    applied: !options.dry_run,
                });
            }
            Some(m) => {
                let o = m.options.clone().unwrap_or_default();
                let unique = o.unique.unwrap_or(false);
                let ttl = o.expire_after.map(|t| t.as_secs());
                if same_keys(&m.keys, &d.keys)
                    && unique == d.unique
                    && ttl == d.ttl.map(|t| t.as_secs())
                {
                    changes.push(IndexChange::Unchanged {
                        name: d.name.clone(),
                    });
                } else {
                    let apply = options.recreate_changed && !options.dry_run;
                    if apply {
                        coll.drop_index(&d.name)
                            .await
                            .map_err(|e| Error::mongo(format!("dropIndexes {ns} {}", d.name), e))?;
                        create(&coll, d, &ns).await?;
                    }
                    changes.push(IndexChange::Changed {
                        name: d.name.clone(),
                        declared: d.describe(),
                        found: describe(&m.keys, unique, ttl),
                        applied: apply,
                    });
                }
            }
        }
        if let Some(field) = d
            .unique_list_key
            .filter(|_| !capabilities.unique_list_elements)
        {
            let reason = format!(
                "{} enforces the unique index on the list field `{field}` on the whole list, \
                 not on each element: two documents may share an element",
                capabilities.server_description()
            );
            tracing::warn!(index = %d.name, namespace = %ns, "{reason}");
            changes.push(IndexChange::Weakened {
                name: d.name.clone(),
                reason,
            });
        }
    }
    for m in &existing {
        let Some(name) = m.options.as_ref().and_then(|o| o.name.clone()) else {
            continue;
        };
        if name == "_id_" || wanted.iter().any(|d| d.name == name) {
            continue;
        }
        let drop = options.drop_extraneous && !options.dry_run;
        if drop {
            coll.drop_index(&name)
                .await
                .map_err(|e| Error::mongo(format!("dropIndexes {ns} {name}"), e))?;
        }
        changes.push(IndexChange::Extraneous {
            name,
            dropped: drop,
        });
    }
    Ok(IndexPlan {
        entity: meta.entity.to_owned(),
        namespace: ns,
        changes,
    })
}

async fn create(coll: &mongodb::Collection<Document>, d: &Desired, ns: &str) -> Result<()> {
    let mut o = IndexOptions::builder().name(d.name.clone()).build();
    if d.unique {
        o.unique = Some(true);
    }
    o.expire_after = d.ttl;
    let model = IndexModel::builder()
        .keys(d.keys.clone())
        .options(o)
        .build();
    coll.create_index(model)
        .await
        .map_err(|e| Error::mongo(format!("createIndexes {ns} {}", d.name), e))?;
    Ok(())
}
