//! Data migrations: changes that span documents or collections (a backfill, a split, a re-key),
//! written by hand as a [`Migration`] and run by `Storage::migrate` under the ledger and the
//! lock, once across a fleet.

use std::sync::Arc;

use async_trait::async_trait;
use mongodb::bson::Document;

use crate::error::{Error, Result};
use crate::migrations::ledger::Ledger;
use crate::migrations::lock::Held;
use crate::migrations::plan::{Phase, Progress, ProgressFn};
use crate::storage::Storage;

/// A data migration. Object-safe (`Box<dyn Migration>`): implement it with
/// `#[async_trait::async_trait]` (re-exported as `caas_storage::migrations::async_trait`).
///
/// ```ignore
/// struct SplitAddresses;
///
/// #[caas_storage::migrations::async_trait]
/// impl Migration for SplitAddresses {
///     fn name(&self) -> &str { "2026-06-split-addresses" }
///     fn order(&self) -> i64 { 20260601 }
///     fn checksum(&self) -> String { checksum(include_str!("split_addresses.rs")) }
///     async fn up(&self, cx: &MigrationContext<'_>) -> caas_storage::Result<()> {
///         let resume = cx.checkpoint().await?;   // where an interrupted run stopped
///         // ... read a batch, cx.ensure_lock().await?, write it, cx.save_checkpoint(..) ...
///         Ok(())
///     }
/// }
/// ```
///
/// What a migration must do itself:
/// - be **resumable**: a run interrupted (the process died, the lock was lost) runs `up` again
///   from the start; save a checkpoint ([`MigrationContext::save_checkpoint`]) after each batch
///   and start from it, or make every write idempotent;
/// - call [`MigrationContext::ensure_lock`] before each batch of writes, so a process that lost
///   the lock (paused past its lease) stops;
/// - drop the cache entries of what it changes (`cx.storage().cache().invalidate_all::<E>(None)`
///   or `invalidate`) and write through [`Storage::raw`](crate::Storage::raw) or repositories
///   knowing that repository writes record outbox events, which a migration usually should not
///   (it is not a business change).
#[async_trait]
pub trait Migration: Send + Sync {
    /// Its unique name, the ledger's key: e.g. `2026-06-split-addresses`.
    fn name(&self) -> &str;

    /// Where it runs among the plan's data migrations: lower first (two with the same order
    /// are refused as ambiguous). Data migrations run after the schema chains and index plans.
    fn order(&self) -> i64;

    /// What the ledger records. Change it when what the migration does changes; a migration
    /// applied with another checksum is refused (`Error::MigrationChecksum`): write a new one
    /// instead. [`checksum`](crate::migrations::checksum) hashes text for you.
    fn checksum(&self) -> String;

    /// Applies the migration.
    async fn up(&self, cx: &MigrationContext<'_>) -> Result<()>;

    /// Undoes it, for a rollback (`Migrations::rollback_data`). The default refuses.
    async fn down(&self, cx: &MigrationContext<'_>) -> Result<()> {
        let _ = cx;
        Err(Error::Migration {
            step: format!("data:{}", self.name()),
            reason: "declares no `down`, so it cannot be rolled back".into(),
        })
    }
}

/// What a [`Migration`] runs with: the storage handle, the lock it runs under, a checkpoint in
/// the ledger, progress reporting.
pub struct MigrationContext<'a> {
    pub(crate) storage: &'a Storage,
    pub(crate) lock: &'a Held,
    pub(crate) ledger: &'a Ledger,
    pub(crate) name: String,
    pub(crate) progress: Option<Arc<ProgressFn>>,
    pub(crate) started: std::time::Instant,
}

impl std::fmt::Debug for MigrationContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationContext")
            .field("migration", &self.name)
            .field("token", &self.lock.token())
            .finish_non_exhaustive()
    }
}

impl MigrationContext<'_> {
    /// The storage handle: repositories, [`Storage::raw`](crate::Storage::raw), the cache.
    pub fn storage(&self) -> &Storage {
        self.storage
    }

    /// The fencing token of the lock this run holds: larger than any earlier holder's. Store it
    /// with what you write if a later check must tell runs apart.
    pub fn token(&self) -> i64 {
        self.lock.token()
    }

    /// Fails with [`Error::MigrationLock`] unless this process still holds the migration lock.
    /// Call it before each batch of writes.
    pub async fn ensure_lock(&self) -> Result<()> {
        self.lock.ensure().await
    }

    fn checkpoint_name(&self) -> String {
        format!("progress:data:{}", self.name)
    }

    /// The checkpoint the last interrupted run of this migration saved, if any.
    pub async fn checkpoint(&self) -> Result<Option<Document>> {
        Ok(self
            .ledger
            .progress(&self.checkpoint_name())
            .await?
            .and_then(|d| d.get_document("checkpoint").ok().cloned()))
    }

    /// Saves a checkpoint (after a batch): a run that starts again after an interruption reads
    /// it with [`checkpoint`](Self::checkpoint). Cleared when the migration is recorded.
    pub async fn save_checkpoint(&self, checkpoint: Document) -> Result<()> {
        self.ensure_lock().await?;
        self.ledger
            .save_progress(
                &self.checkpoint_name(),
                self.token(),
                mongodb::bson::doc! { "checkpoint": checkpoint },
            )
            .await
    }

    /// Reports progress to the callback of the run's options (`done` of `total` units).
    pub fn progress(&self, done: u64, total: Option<u64>) {
        if let Some(f) = &self.progress {
            f(&Progress {
                phase: Phase::Data,
                step: format!("data:{}", self.name),
                done,
                total,
                elapsed: self.started.elapsed(),
            });
        }
    }
}
