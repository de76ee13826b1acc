//! One run of `Storage::migrate`: the phases in order, under the lock, against the ledger.
//!
//! 1. **Schema chains** (`documents.rs`), entity by entity: stored documents rewritten at the
//!    target version, steps recorded.
//! 2. **Index plans**, entity by entity: create missing indexes, report changed ones, drop
//!    extraneous ones only when asked; recorded under the checksum of the declaration, so a
//!    changed declaration is a new step.
//! 3. **Data migrations**, by `order`.
//!
//! Indexes come after the chains so that a unique index on a field the chain fills in is built
//! on filled-in documents.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mongodb::bson::doc;

use crate::entity::EntityMeta;
use crate::error::{Error, Result};
use crate::index::{self, SyncOptions};
use crate::migrations::data::MigrationContext;
use crate::migrations::documents;
use crate::migrations::ledger::{self, checksum, Ledger, Record};
use crate::migrations::lock::Held;
use crate::migrations::plan::{identity, MigrateOptions, Migrations, Phase, Progress};
use crate::migrations::report::{DataReport, IndexReport, MigrationReport, StepReport, StepState};
use crate::storage::Storage;

/// The context of one run.
pub(crate) struct Run<'a> {
    pub storage: &'a Storage,
    pub plan: &'a Migrations,
    pub options: &'a MigrateOptions,
    pub ledger: &'a Ledger,
    /// The lock held; `None` for a dry run.
    pub lock: Option<&'a Held>,
    pub host: &'a str,
    pub started: std::time::Instant,
    /// Documents rewritten by this run, all entities together (for the crash test hook).
    pub rewritten: AtomicU64,
    /// Set when the crash test hook fired: the lock is then not released.
    pub crashed: AtomicBool,
}

impl Run<'_> {
    pub(crate) fn dry_run(&self) -> bool {
        self.lock.is_none()
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.options
            .batch_size
            .unwrap_or(self.storage.config().migrations.batch_size)
            .max(1)
    }

    pub(crate) fn rate_limit(&self) -> u32 {
        self.options
            .rate_limit
            .unwrap_or(self.storage.config().migrations.rate_limit)
    }

    pub(crate) fn report(&self, progress: Progress) {
        if let Some(f) = &self.options.on_progress {
            f(&progress);
        }
    }

    /// Counts `n` more documents rewritten; whether the run is to stop here as if its process
    /// died (the `stop_after` test hook).
    pub(crate) fn crash_point(&self, n: u64) -> bool {
        let total = self.rewritten.fetch_add(n, Ordering::Relaxed) + n;
        #[cfg(feature = "testing")]
        if self.options.stop_after.is_some_and(|at| total >= at) {
            self.crashed.store(true, Ordering::Relaxed);
            return true;
        }
        let _ = total;
        false
    }
}

/// The ledger name and checksum of `meta`'s index declaration.
pub(crate) fn index_step(meta: &EntityMeta) -> (String, String) {
    let mut text = format!(
        "{}.{}|{}|{}|{}",
        meta.database,
        meta.collection,
        meta.tenant_field,
        meta.id_field,
        meta.primary_index_name()
    );
    for ix in meta.indexes {
        let keys: Vec<String> = ix
            .keys
            .iter()
            .map(|k| format!("{}:{}", k.field, k.direction.as_i32()))
            .collect();
        text.push_str(&format!(
            "|{}({}){}{}",
            ix.name,
            keys.join(","),
            if ix.unique { " unique" } else { "" },
            ix.ttl
                .map(|t| format!(" ttl={}ms", t.as_millis()))
                .unwrap_or_default()
        ));
    }
    let sum = checksum(&text);
    (format!("indexes:{}@{sum}", identity(meta)), sum)
}

/// Whether the ledger records everything `plan` would apply (then nobody needs the lock).
pub(crate) fn all_applied(
    plan: &Migrations,
    options: &MigrateOptions,
    applied: &BTreeMap<String, Record>,
) -> Result<bool> {
    if !plan.rollbacks.is_empty() || !plan.rollback_data.is_empty() || options.rescan {
        return Ok(false);
    }
    let mut all = true;
    for meta in &plan.entities {
        for from in 1..meta.schema_version {
            let declared = meta.schema_step(from).map_or("", |s| s.checksum);
            all &= ledger::verify(applied, &documents::step_name(meta, from), declared)?;
        }
        let (name, sum) = index_step(meta);
        all &= ledger::verify(applied, &name, &sum)?;
    }
    for m in &plan.data {
        all &= ledger::verify(applied, &format!("data:{}", m.name()), &m.checksum())?;
    }
    Ok(all)
}

/// Every phase of `run`, against the ledger as `applied` says.
pub(crate) async fn run(
    run: &Run<'_>,
    applied: &BTreeMap<String, Record>,
) -> Result<MigrationReport> {
    let mut report = MigrationReport {
        dry_run: run.dry_run(),
        token: run.lock.map(Held::token),
        waited: std::time::Duration::ZERO,
        entities: Vec::new(),
        indexes: Vec::new(),
        data: Vec::new(),
    };
    for meta in &run.plan.entities {
        report
            .entities
            .push(documents::migrate_entity(run, meta, applied).await?);
    }
    for meta in &run.plan.entities {
        report.indexes.push(indexes(run, meta, applied).await?);
    }
    let mut data = run.plan.data.clone();
    data.sort_by_key(|m| m.order());
    for m in data {
        let name = format!("data:{}", m.name());
        let sum = m.checksum();
        let recorded = ledger::verify(applied, &name, &sum)?;
        let rollback = run.plan.rollback_data.iter().any(|n| n == m.name());
        let mut step = StepReport {
            name: name.clone(),
            checksum: sum.clone(),
            state: if recorded {
                StepState::AlreadyApplied
            } else {
                StepState::Pending
            },
        };
        if let (Some(lock), true) = (run.lock, recorded == rollback) {
            let cx = MigrationContext {
                storage: run.storage,
                lock,
                ledger: run.ledger,
                name: m.name().to_owned(),
                progress: run.options.on_progress.clone(),
                started: run.started,
            };
            lock.ensure().await?;
            if rollback {
                m.down(&cx).await?;
                lock.ensure().await?;
                run.ledger.forget(&name, run.host, lock.token()).await?;
                step.state = StepState::RolledBack;
            } else {
                m.up(&cx).await?;
                lock.ensure().await?;
                run.ledger
                    .record(
                        &name,
                        "data",
                        &sum,
                        run.host,
                        lock.token(),
                        doc! { "order": m.order() },
                    )
                    .await?;
                run.ledger
                    .clear_progress(&format!("progress:data:{}", m.name()))
                    .await?;
                step.state = StepState::Applied;
            }
            run.report(Progress {
                phase: Phase::Data,
                step: name,
                done: 1,
                total: Some(1),
                elapsed: run.started.elapsed(),
            });
        }
        report.data.push(DataReport {
            order: m.order(),
            step,
        });
    }
    Ok(report)
}

/// The index phase for `meta`.
async fn indexes(
    run: &Run<'_>,
    meta: &'static EntityMeta,
    applied: &BTreeMap<String, Record>,
) -> Result<IndexReport> {
    let (name, sum) = index_step(meta);
    let recorded = ledger::verify(applied, &name, &sum)?;
    let mut step = StepReport {
        name: name.clone(),
        checksum: sum.clone(),
        state: if recorded {
            StepState::AlreadyApplied
        } else {
            StepState::Pending
        },
    };
    if recorded {
        return Ok(IndexReport { step, plan: None });
    }
    let db = run.storage.connections().database(meta.database);
    let caps = run.storage.capabilities();
    let Some(lock) = run.lock else {
        let options = SyncOptions {
            dry_run: true,
            ..run.options.index
        };
        let plan = index::sync_indexes(&db, caps, meta.index_target(), options).await?;
        return Ok(IndexReport {
            step,
            plan: Some(plan),
        });
    };
    lock.ensure().await?;
    let plan = index::sync_indexes(&db, caps, meta.index_target(), run.options.index).await?;
    let summary = mongodb::bson::to_document(&plan).map_err(|e| Error::Codec {
        entity: meta.name,
        direction: "encode",
        message: format!("index plan: {e}"),
    })?;
    lock.ensure().await?;
    run.ledger
        .record(
            &name,
            "indexes",
            &sum,
            run.host,
            lock.token(),
            doc! { "entity": meta.name, "plan": summary },
        )
        .await?;
    step.state = StepState::Applied;
    run.report(Progress {
        phase: Phase::Indexes,
        step: name,
        done: 1,
        total: Some(1),
        elapsed: run.started.elapsed(),
    });
    Ok(IndexReport {
        step,
        plan: Some(plan),
    })
}
