//! Logical backup, restore and tenant erasure (the guide is `docs/backup.md`).
//!
//! - **Backup** ([`Storage::backup`]): the documents of the entities a [`BackupPlan`] lists, for
//!   one tenant, some or all, with each collection's indexes (as the server lists them and as
//!   the entity declares them) and the migration ledger, into one gzip archive with a manifest
//!   of counts and SHA-256s (format: `archive.rs`). Streaming: a cursor with a bounded batch
//!   feeds the encoder, so memory does not grow with the data (`benches/backup.rs` measures
//!   peak RSS at 10k and 100k documents).
//! - **Consistency.** Where the server has snapshot reads (a MongoDB replica set with
//!   transactions), every collection is read in one snapshot session: a point-in-time cut, and
//!   the report says `point_in_time: true`. Elsewhere (FerretDB, standalone MongoDB) each
//!   collection is read by its own scan, one after the other: a document written during the
//!   backup may or may not be in it, a document updated during its collection's scan is in it
//!   once (at one of its versions), and two collections are cut at different moments (an
//!   entity written in collection B after A's scan ended is in the archive, its related write
//!   in A is not). The report then says `point_in_time: false` and why.
//! - **Restore** ([`Storage::restore`]) takes a path, because it reads the archive twice:
//!   the first pass verifies everything (magic, version, framing, every section's count and
//!   SHA-256 against the manifest, the whole-archive SHA-256 of the trailer, truncation) and
//!   writes nothing; only an archive that verifies is read a second time and written. We chose
//!   two passes over restoring into staging collections and swapping them in: FerretDB has no
//!   `renameCollection` across databases and no transactions, a swap would replace the other
//!   tenants' documents of a shared collection, and a second sequential read of a local file
//!   costs less than writing everything twice.
//! - **Targets.** A restore goes where nothing of the restored tenants is (refused otherwise,
//!   naming the collection), into the archive's databases or others ([`RestorePlan::database`]),
//!   or into another tenant id ([`RestorePlan::into_tenant`]): the tenant field and the stored
//!   `_id` (`<tenant>:<id>`, as repositories key documents) are re-keyed, and the target
//!   tenant's cache entries for the restored entities are dropped.
//! - **Resume and rollback.** A restore journal (`_caas_restore_journal` in the
//!   `migrations.database`) records the archive's checksum, the targets, whether each target
//!   collection existed, and each section's progress. Running the same restore again resumes
//!   it (inserts are by `_id`; a document already there and identical is skipped, a different
//!   one is an error). [`Storage::rollback_restore`] deletes what the journal says the restore
//!   wrote: the restored tenants' documents of each target collection (nothing of theirs was
//!   there before: the restore checked), the collections it created, and the ledger records it
//!   added.
//! - **Erasure** ([`Storage::erase_tenant`]): one tenant's documents in every listed entity's
//!   collection (soft-deleted ones included) and its version claims, its cache entries (data,
//!   generation and lock keys), its queued and dead-lettered write-behind entries, and its
//!   outbox records (pending and published) in those entities' databases, with counts per
//!   place. The audit log is not touched (see `docs/backup.md`).

mod archive;
mod dump;
mod erase;
mod restore;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::entity::{Entity, EntityMeta};
use crate::error::Result;
use crate::storage::Storage;
use crate::tenant::TenantId;

pub use archive::{FORMAT_VERSION, MAGIC, MAX_RECORD};
pub use erase::{ErasedEntity, ErasedOutbox, ErasureReport};
pub use restore::{ArchiveSummary, RestoreReport, RestoredSection, SectionSummary};

/// The collection of restore journals, in the `migrations.database`.
pub const RESTORE_JOURNAL_COLLECTION: &str = "_caas_restore_journal";

/// Which tenants a backup covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantScope {
    /// Every tenant.
    All,
    /// These tenants.
    Only(Vec<TenantId>),
}

/// What to back up: entities (by their static metadata) and tenants.
///
/// ```no_run
/// # async fn run(storage: caas_storage::Storage, metas: &[&'static caas_storage::entity::EntityMeta]) -> Result<(), Box<dyn std::error::Error>> {
/// use caas_storage::backup::BackupPlan;
/// let plan = BackupPlan::new().metas(metas).tenant(caas_storage::TenantId::new("acme")?);
/// let file = std::fs::File::create("acme.caasbak")?;
/// let report = storage.backup(&plan, file).await?;
/// println!("{}", serde_json::to_string_pretty(&report).unwrap());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BackupPlan {
    pub(crate) entities: Vec<&'static EntityMeta>,
    pub(crate) tenants: TenantScope,
    pub(crate) ledger: bool,
    pub(crate) batch_size: u32,
}

impl Default for BackupPlan {
    fn default() -> Self {
        Self::new()
    }
}

impl BackupPlan {
    /// No entities yet, every tenant, with the migration ledger.
    pub fn new() -> Self {
        BackupPlan {
            entities: Vec::new(),
            tenants: TenantScope::All,
            ledger: true,
            batch_size: 500,
        }
    }

    /// Adds entity `E`.
    pub fn entity<E: Entity>(self) -> Self {
        self.meta(E::META)
    }

    /// Adds an entity by its metadata (`User::META`).
    pub fn meta(mut self, meta: &'static EntityMeta) -> Self {
        if !self.entities.iter().any(|m| std::ptr::eq(*m, meta)) {
            self.entities.push(meta);
        }
        self
    }

    /// Adds every entity listed.
    pub fn metas(self, metas: &[&'static EntityMeta]) -> Self {
        metas.iter().fold(self, |p, m| p.meta(m))
    }

    /// Restricts the backup to `tenant` (call again to add more tenants).
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        match &mut self.tenants {
            TenantScope::All => self.tenants = TenantScope::Only(vec![tenant]),
            TenantScope::Only(v) => {
                if !v.contains(&tenant) {
                    v.push(tenant)
                }
            }
        }
        self
    }

    /// Restricts the backup to these tenants.
    pub fn tenants(self, tenants: impl IntoIterator<Item = TenantId>) -> Self {
        tenants.into_iter().fold(self, |p, t| p.tenant(t))
    }

    /// Leaves the migration ledger out.
    pub fn without_ledger(mut self) -> Self {
        self.ledger = false;
        self
    }

    /// Documents fetched per cursor batch (default 500): what bounds the memory a backup uses.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }
}

/// One collection of a backup, as [`BackupReport`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackedUpSection {
    /// `entity` or `ledger`.
    pub kind: String,
    /// Entity name (`""` for the ledger).
    pub entity: String,
    /// `database.collection`.
    pub namespace: String,
    /// Documents written.
    pub documents: u64,
    /// Indexes the server listed.
    pub indexes: u64,
    /// SHA-256 of the documents' BSON bytes, in archive order.
    pub sha256: String,
}

/// What [`Storage::backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    /// Archive format version.
    pub format_version: u16,
    /// Tenants covered.
    pub tenants: TenantScope,
    /// Whether every collection was read at one point in time (snapshot reads).
    pub point_in_time: bool,
    /// What a concurrent write during the backup can have produced.
    pub consistency: String,
    /// One entry per collection.
    pub sections: Vec<BackedUpSection>,
    /// Documents written, ledger records included.
    pub documents: u64,
    /// Uncompressed bytes.
    pub bytes_uncompressed: u64,
    /// The archive's checksum (the trailer's SHA-256): what restore journals are keyed by.
    pub archive_sha256: String,
}

/// How to restore an archive.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub(crate) rename: Option<(TenantId, TenantId)>,
    pub(crate) databases: BTreeMap<String, String>,
    pub(crate) ledger: bool,
    pub(crate) indexes: bool,
    pub(crate) batch_size: usize,
    pub(crate) interrupt_after: Option<u64>,
}

impl Default for RestorePlan {
    fn default() -> Self {
        Self::new()
    }
}

impl RestorePlan {
    /// Everything in the archive, into the databases it came from, ledger and indexes
    /// included.
    pub fn new() -> Self {
        RestorePlan {
            rename: None,
            databases: BTreeMap::new(),
            ledger: true,
            indexes: true,
            batch_size: 500,
            interrupt_after: None,
        }
    }

    /// Tenant cloning: restores only `from`'s documents, re-keyed as tenant `to` (tenant field
    /// and stored `_id`). `to` must hold nothing in the restored collections.
    pub fn into_tenant(mut self, from: TenantId, to: TenantId) -> Self {
        self.rename = Some((from, to));
        self
    }

    /// Restores the collections of database `from` (as the archive names it) into database
    /// `to`. The migration ledger goes to the `migrations.database` of the restoring handle
    /// unless that is mapped too.
    pub fn database(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.databases.insert(from.into(), to.into());
        self
    }

    /// Leaves the migration ledger out.
    pub fn without_ledger(mut self) -> Self {
        self.ledger = false;
        self
    }

    /// Leaves the indexes out (the documents only).
    pub fn without_indexes(mut self) -> Self {
        self.indexes = false;
        self
    }

    /// Documents per insert (default 500).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Test hook: stop (with a timeout error, as if the process died) after this many insert
    /// batches, leaving the restore half done for a resume or a rollback.
    #[cfg(feature = "testing")]
    pub fn interrupt_after_batches(mut self, batches: u64) -> Self {
        self.interrupt_after = Some(batches);
        self
    }

    pub(crate) fn target_db<'a>(&'a self, db: &'a str) -> &'a str {
        self.databases.get(db).map(String::as_str).unwrap_or(db)
    }
}

impl Storage {
    /// Writes the backup `plan` describes to `out` as one gzip archive (see
    /// [`backup`](crate::backup) and `docs/backup.md`), streaming: memory stays flat whatever
    /// the size. `out` is written synchronously (a file, a buffer); wrap a network sink in a
    /// buffered writer of your own. Fails on an empty plan.
    pub async fn backup(
        &self,
        plan: &BackupPlan,
        out: impl std::io::Write + Send,
    ) -> Result<BackupReport> {
        self.on_servers("backups")?;
        dump::backup(self, plan, out).await
    }

    /// Reads and verifies the archive at `path` without writing anything: magic, format
    /// version, framing, every count and checksum against the manifest, truncation.
    pub async fn verify_archive(&self, path: impl AsRef<Path>) -> Result<ArchiveSummary> {
        restore::verify_off_thread(path.as_ref(), "verify archive").await
    }

    /// Restores the archive at `path` as `plan` says: verifies all of it first (a bad archive
    /// is [`Error::Archive`](crate::Error::Archive) with nothing written), checks that the
    /// target holds nothing of the restored tenants, then writes it in batches under a
    /// journal. Run again after an interruption, it resumes; see
    /// [`rollback_restore`](Self::rollback_restore) to undo it instead.
    pub async fn restore(
        &self,
        plan: &RestorePlan,
        path: impl AsRef<Path>,
    ) -> Result<RestoreReport> {
        self.on_servers("restores")?;
        restore::restore(self, plan, path.as_ref()).await
    }

    /// Undoes a restore of the archive at `path` with `plan` (finished or not) as its journal
    /// records it: deletes the restored tenants' documents from the target collections, drops
    /// the collections the restore created, removes the ledger records it added.
    pub async fn rollback_restore(
        &self,
        plan: &RestorePlan,
        path: impl AsRef<Path>,
    ) -> Result<RestoreReport> {
        self.on_servers("restores")?;
        restore::rollback(self, plan, path.as_ref()).await
    }

    /// Erases everything of `tenant` the framework stored for the entities listed (see
    /// [`ErasureReport`]). Stop the tenant's traffic first: a write that lands during the
    /// erasure can leave a document behind.
    pub async fn erase_tenant(
        &self,
        entities: &[&'static EntityMeta],
        tenant: &TenantId,
    ) -> Result<ErasureReport> {
        self.on_servers("tenant erasure")?;
        erase::erase(self, entities, tenant).await
    }
}
