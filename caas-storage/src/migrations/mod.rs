//! Schema versions and migrations, declared at compile time and applied exactly once across a
//! fleet. The guide is `docs/migrations.md`; in short:
//!
//! - **Declared on the entity.** `#[repository(schema_version = 3)]` and one
//!   `#[migrate(from = K, up = f, down = g)]` per step `K -> K+1`, functions over the stored
//!   BSON document ([`StepFn`]). The derive checks the chain is complete
//!   (a gap, a duplicate or a step beyond the version is a compile error at the attribute) and
//!   emits it in `Entity::META` with the index specs: nothing to register by hand.
//! - **Upgraded on read.** A document stored at an older version is run through the chain
//!   before it is decoded, whether it comes from MongoDB or from a Redis entry (the in-process
//!   tier holds decoded values); a document from the future is
//!   [`Error::FutureSchemaVersion`](crate::Error::FutureSchemaVersion). Every write stamps the
//!   version, patches included; a patch of an older document rewrites it at the current version
//!   first. `migrations.write_back_on_read` also writes upgraded documents back.
//! - **Batch migrator.** [`Storage::migrate`] rewrites stored documents in batches (rate
//!   limited, resumable, with progress saved in the ledger and reported to a callback, a dry run
//!   that counts documents per entity and version), drops their cache entries and records **no
//!   outbox events**: a migration is not a business change, and consumers must not see one.
//!   Then it runs the index plans and the [`Migration`]s (data migrations across documents or
//!   collections).
//! - **Ledger and lock.** Applied steps (chain steps, index plans, data migrations) are recorded
//!   in `_caas_migrations` with checksum, time, host and fencing token (`ledger.rs`); one lock
//!   with a lease, a heartbeat and a fencing token, built on unique inserts (`lock.rs`), lets one
//!   process apply them while the others wait and then find them recorded. An applied step
//!   declared with another checksum is refused.
//! - **TTL fallback** is [`ttl`](crate::ttl); **rollbacks** are [`Migrations::rollback`] and
//!   [`Migrations::rollback_data`].
//!
//! Files: `plan.rs` (what to run, options, progress), `migrator.rs` (the phases),
//! `documents.rs` (one entity's documents), `data.rs` (the [`Migration`] trait), `ledger.rs`,
//! `lock.rs`, `report.rs`. Upgrading one document is `schema.rs`, writing it back
//! `repo/upgrade.rs`: reads and writes need them below this module.

mod data;
mod documents;
mod ledger;
mod lock;
mod migrator;
mod plan;
mod report;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use async_trait::async_trait;
pub use data::{Migration, MigrationContext};
pub(crate) use ledger::host as host_name;
pub use ledger::{checksum, LEDGER_COLLECTION};
pub use lock::LOCK_COLLECTION;
pub use plan::{MigrateOptions, Migrations, Phase, Progress};
pub use report::{DataReport, EntityReport, IndexReport, MigrationReport, StepReport, StepState};

pub use crate::entity::{SchemaStep, StepFn, StepResult};

use crate::entity::Entity;
use crate::error::Result;
use crate::storage::Storage;

/// Decodes a stored document of `E` as every read does: a document stored at an older schema
/// version is run through `E`'s steps first, one stored at a newer version is
/// [`Error::FutureSchemaVersion`](crate::Error::FutureSchemaVersion). `_id`, the framework's
/// fields and the secret fields are left out. For data migrations and tools that read documents
/// through [`Storage::raw`].
pub fn decode_stored<E: Entity>(doc: crate::bson::Document) -> Result<E> {
    crate::schema::decode_doc::<E>(doc, false).map(|read| read.entity)
}

impl Storage {
    /// Applies `plan`: each listed entity's stored documents are rewritten at its
    /// `schema_version` (or a rollback's), its indexes brought to its declaration, and the data
    /// migrations run, each step once across every process sharing the ledger
    /// (`migrations.database`). See [`migrations`](crate::migrations) and `docs/migrations.md`.
    ///
    /// When the ledger already records every step, returns at once without the lock. Otherwise
    /// takes the migration lock, waiting (up to `migrations.lock_wait`) while another process
    /// holds it, re-reads the ledger and applies what is still missing. A step recorded with
    /// another checksum than declared is [`Error::MigrationChecksum`](crate::Error::MigrationChecksum),
    /// before anything runs. With [`MigrateOptions::dry_run`] nothing is written and no lock is
    /// taken: the report counts documents per version and lists what would be applied.
    ///
    /// Rewrites record no outbox events and do not move versions; they drop the cache entries
    /// of what they change.
    pub async fn migrate(
        &self,
        plan: &Migrations,
        options: MigrateOptions,
    ) -> Result<MigrationReport> {
        plan.check()?;
        // In memory, documents at an older schema version are upgraded as they are read.
        self.on_servers("the batch migrator (its ledger and lock)")?;
        let conn = self.connections();
        let ledger = ledger::Ledger::new(conn);
        let host = ledger::host();
        let new_run = |lock| migrator::Run {
            storage: self,
            plan,
            options: &options,
            ledger: &ledger,
            lock,
            host: &host,
            started: std::time::Instant::now(),
            rewritten: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
        };
        let applied = ledger.applied().await?;
        if options.dry_run || migrator::all_applied(plan, &options, &applied)? {
            return migrator::run(&new_run(None), &applied).await;
        }
        let (held, waited) = lock::Lock::new(conn, &host)
            .acquire(conn.config().migrations.lock_wait)
            .await?;
        tracing::info!(
            database = ledger.database(),
            token = held.token(),
            waited_ms = waited.as_millis() as u64,
            "migrating"
        );
        let (result, crashed) = {
            let run = new_run(Some(&held));
            // What was applied while this process waited for the lock is not applied again.
            let result = match ledger.applied().await {
                Ok(applied) => migrator::run(&run, &applied).await,
                Err(e) => Err(e),
            };
            (result, run.crashed.load(Ordering::Relaxed))
        };
        if crashed {
            // As if the process died here: the lock is left to expire.
            drop(held);
        } else {
            held.release().await;
        }
        let mut report = result?;
        report.waited = waited;
        Ok(report)
    }
}
