//! What `Storage::migrate` did, or (dry run) would do. Serializable, for logs and a CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::index::IndexPlan;

/// The state of one step after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepState {
    /// Not applied (a dry run, or a step of a phase that did not run).
    Pending,
    /// Applied by this run and recorded in the ledger.
    Applied,
    /// The ledger recorded it before this run: not run again.
    AlreadyApplied,
    /// Rolled back by this run and forgotten by the ledger.
    RolledBack,
}

/// One step of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The ledger's name of the step, e.g. `schema:app.profiles:Profile:1->2`.
    pub name: String,
    /// The checksum declared.
    pub checksum: String,
    /// What became of it.
    pub state: StepState,
}

/// An entity's stored documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityReport {
    /// `database.collection:Entity`.
    pub entity: String,
    /// The version documents are taken to (the entity's `schema_version`, or a rollback's).
    pub target: u32,
    /// Stored documents per schema version when the run started (unstamped ones as 1).
    pub by_version: BTreeMap<u32, u64>,
    /// Documents this run rewrote.
    pub rewritten: u64,
    /// Documents rewritten by earlier runs that were interrupted before finishing.
    pub rewritten_before: u64,
    /// Documents at a version newer than the entity's, left as they are.
    pub newer: u64,
    /// The chain's steps.
    pub steps: Vec<StepReport>,
}

/// An entity's index plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexReport {
    /// The step, `indexes:database.collection:Entity@<checksum of the declaration>`.
    pub step: StepReport,
    /// The plan (a dry run's when the step was applied before or this is a dry run).
    pub plan: Option<IndexPlan>,
}

/// A data migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataReport {
    /// Its order.
    pub order: i64,
    /// The step.
    pub step: StepReport,
}

/// The result of `Storage::migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// The lock's fencing token this run held (`None` for a dry run).
    pub token: Option<i64>,
    /// How long the run waited for another process holding the lock.
    pub waited: Duration,
    /// Schema chains, per entity.
    pub entities: Vec<EntityReport>,
    /// Index plans, per entity.
    pub indexes: Vec<IndexReport>,
    /// Data migrations, in order.
    pub data: Vec<DataReport>,
}

impl MigrationReport {
    /// The steps this run applied.
    pub fn applied(&self) -> Vec<&str> {
        self.steps()
            .filter(|s| s.state == StepState::Applied)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Every step of the report.
    pub fn steps(&self) -> impl Iterator<Item = &StepReport> {
        self.entities
            .iter()
            .flat_map(|e| e.steps.iter())
            .chain(self.indexes.iter().map(|i| &i.step))
            .chain(self.data.iter().map(|d| &d.step))
    }

    /// The report of entity `name` (`Entity`, or `database.collection:Entity`).
    pub fn entity(&self, name: &str) -> Option<&EntityReport> {
        self.entities
            .iter()
            .find(|e| e.entity == name || e.entity.rsplit(':').next() == Some(name))
    }
}
