//! What `Storage::migrate` is asked to do ([`Migrations`]) and how ([`MigrateOptions`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::entity::{Entity, EntityMeta};
use crate::error::{Error, Result};
use crate::index::SyncOptions;
use crate::migrations::data::Migration;

/// The migrations of a service: the entities whose stored documents and indexes to bring to
/// their declaration, and data migrations. Nothing to register by hand beyond the list: each
/// entity's schema chain and index specs are constants the derive emitted.
///
/// ```ignore
/// let plan = Migrations::new()
///     .entity::<User>()
///     .entity::<Profile>()
///     .data(SplitAddresses);
/// let report = storage.migrate(&plan, MigrateOptions::default()).await?;
/// ```
#[derive(Clone, Default)]
pub struct Migrations {
    pub(crate) entities: Vec<&'static EntityMeta>,
    /// Entities whose documents go down to a version (by entity identity).
    pub(crate) rollbacks: BTreeMap<String, u32>,
    pub(crate) data: Vec<Arc<dyn Migration>>,
    pub(crate) rollback_data: Vec<String>,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations")
            .field(
                "entities",
                &self.entities.iter().map(|m| m.name).collect::<Vec<_>>(),
            )
            .field("rollbacks", &self.rollbacks)
            .field(
                "data",
                &self
                    .data
                    .iter()
                    .map(|m| m.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .field("rollback_data", &self.rollback_data)
            .finish()
    }
}

pub(crate) fn identity(meta: &EntityMeta) -> String {
    format!("{}.{}:{}", meta.database, meta.collection, meta.name)
}

impl Migrations {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings `E`'s stored documents to its `schema_version` and its indexes to its
    /// declaration.
    pub fn entity<E: Entity>(self) -> Self {
        self.meta(E::META)
    }

    /// [`entity`](Self::entity) by metadata, e.g. `&[User::META, Profile::META]` kept in one
    /// list for the service.
    pub fn entities(mut self, metas: &[&'static EntityMeta]) -> Self {
        for m in metas {
            self = self.meta(m);
        }
        self
    }

    fn meta(mut self, meta: &'static EntityMeta) -> Self {
        if !self.entities.iter().any(|m| identity(m) == identity(meta)) {
            self.entities.push(meta);
        }
        self
    }

    /// Adds a data migration.
    pub fn data(mut self, migration: impl Migration + 'static) -> Self {
        self.data.push(Arc::new(migration));
        self
    }

    /// Takes `E`'s stored documents down to schema version `version` with the declared down
    /// steps (every step above `version` needs one), and forgets the steps above it in the
    /// ledger, so a release declaring them applies them again. Run it before deploying a
    /// release whose entity stops at `version`, and again once it is deployed (see
    /// `docs/migrations.md`).
    pub fn rollback<E: Entity>(mut self, version: u32) -> Self {
        self.rollbacks.insert(identity(E::META), version);
        self.meta(E::META)
    }

    /// Rolls back the data migration named `name` (one of [`data`](Self::data)) with its
    /// `down`, and forgets it in the ledger.
    pub fn rollback_data(mut self, name: &str) -> Self {
        self.rollback_data.push(name.to_owned());
        self
    }

    /// The schema version `meta`'s documents are taken to.
    pub(crate) fn target(&self, meta: &EntityMeta) -> u32 {
        self.rollbacks
            .get(&identity(meta))
            .copied()
            .unwrap_or(meta.schema_version)
    }

    /// Refuses plans that cannot run: duplicate or ambiguous data migrations, rollbacks to
    /// versions that do not exist or past missing down steps.
    pub(crate) fn check(&self) -> Result<()> {
        let mut names = BTreeMap::new();
        let mut orders = BTreeMap::new();
        for m in &self.data {
            if m.name().is_empty() {
                return Err(Error::Migration {
                    step: "data".into(),
                    reason: "a data migration has an empty name".into(),
                });
            }
            if names.insert(m.name().to_owned(), ()).is_some() {
                return Err(Error::Migration {
                    step: format!("data:{}", m.name()),
                    reason: "two data migrations have this name".into(),
                });
            }
            if let Some(other) = orders.insert(m.order(), m.name().to_owned()) {
                return Err(Error::Migration {
                    step: format!("data:{}", m.name()),
                    reason: format!(
                        "has the same order ({}) as `{other}`: which runs first would be \
                         ambiguous",
                        m.order()
                    ),
                });
            }
        }
        for name in &self.rollback_data {
            if !names.contains_key(name) {
                return Err(Error::Migration {
                    step: format!("data:{name}"),
                    reason: "rollback of a data migration the plan does not list".into(),
                });
            }
        }
        for meta in &self.entities {
            let to = self.target(meta);
            if to == 0 || to > meta.schema_version {
                return Err(Error::Migration {
                    step: format!("schema:{}", identity(meta)),
                    reason: format!(
                        "cannot roll back to version {to}: the entity declares versions 1 to {}",
                        meta.schema_version
                    ),
                });
            }
            for v in to..meta.schema_version {
                match meta.schema_step(v) {
                    Some(s) if s.down.is_some() => {}
                    Some(s) => {
                        return Err(Error::Migration {
                            step: format!("schema:{}:{}->{}", identity(meta), v, v + 1),
                            reason: format!(
                                "rolling back to version {to} needs a down step for `{}`: \
                                 declare `down = ...` in its #[migrate(...)]",
                                s.name
                            ),
                        })
                    }
                    None => {
                        return Err(Error::Migration {
                            step: format!("schema:{}", identity(meta)),
                            reason: format!("the chain has no step from version {v}"),
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// Which part of a run a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Rewriting an entity's stored documents through its schema chain.
    Schema,
    /// An entity's index plan.
    Indexes,
    /// A data migration.
    Data,
}

/// A progress report, handed to [`MigrateOptions::on_progress`] after every batch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// The step, as the ledger names it (`schema:app.profiles:Profile`, `data:<name>`, ...).
    pub step: String,
    /// Units done so far (documents, for the schema phase; across resumed runs).
    pub done: u64,
    /// Units in all, where known (documents to rewrite when the run started, plus those done
    /// before it).
    pub total: Option<u64>,
    /// Time since the run started.
    pub elapsed: Duration,
}

/// The progress callback.
pub(crate) type ProgressFn = dyn Fn(&Progress) + Send + Sync;

/// How `Storage::migrate` runs: dry run, batch size, rate limit, index options, progress.
#[derive(Clone, Default)]
pub struct MigrateOptions {
    pub(crate) dry_run: bool,
    pub(crate) batch_size: Option<usize>,
    pub(crate) rate_limit: Option<u32>,
    pub(crate) index: SyncOptions,
    pub(crate) rescan: bool,
    pub(crate) on_progress: Option<Arc<ProgressFn>>,
    #[cfg(feature = "testing")]
    pub(crate) stop_after: Option<u64>,
}

impl std::fmt::Debug for MigrateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateOptions")
            .field("dry_run", &self.dry_run)
            .field("batch_size", &self.batch_size)
            .field("rate_limit", &self.rate_limit)
            .field("index", &self.index)
            .field("rescan", &self.rescan)
            .finish_non_exhaustive()
    }
}

impl MigrateOptions {
    /// Apply everything pending (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Change nothing: count the stored documents per entity and schema version, plan the
    /// indexes, and report what a run would apply. Takes no lock.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// Documents read and rewritten per batch (default `migrations.batch_size`).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = Some(n.max(1));
        self
    }

    /// Most documents rewritten per second (default `migrations.rate_limit`; 0: no limit).
    pub fn rate_limit(mut self, per_second: u32) -> Self {
        self.rate_limit = Some(per_second);
        self
    }

    /// Index plan options: drop indexes the entity does not declare, re-create changed ones
    /// (both off by default: changed and extraneous indexes are reported only).
    pub fn indexes(mut self, options: SyncOptions) -> Self {
        self.index = SyncOptions {
            dry_run: false,
            ..options
        };
        self
    }

    /// Also rewrite older documents of entities whose steps the ledger records as applied:
    /// stragglers written by replicas of an older release after the migration ran. Steps are
    /// not recorded again.
    pub fn rescan(mut self) -> Self {
        self.rescan = true;
        self
    }

    /// Called after every batch with the progress so far (from the migrating task: keep it
    /// cheap).
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// Test hook: the run stops after the batch that reaches `documents` rewritten documents,
    /// as if the process died there: no further write, the lock not released (its lease
    /// expires), and an error returned.
    #[cfg(feature = "testing")]
    pub fn stop_after(mut self, documents: u64) -> Self {
        self.stop_after = Some(documents);
        self
    }
}
