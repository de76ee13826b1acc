//! The command line, as clap definitions. A new command is a variant of [`Command`] here and
//! an arm in `dispatch.rs`.

use clap::{Parser, Subcommand};

/// The whole command line.
#[derive(Debug, Parser)]
#[command(name = "caas", disable_version_flag = true, propagate_version = false)]
pub(crate) struct Args {
    /// Print one JSON document on stdout instead of text (errors too: `{"error": ...}`).
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check MongoDB, Redis, Kafka, the backlogs and the audit logs (exit 0 up, 1 degraded or
    /// down).
    Health(HealthArgs),
    /// The declared indexes: what differs from the server, and creating what is missing.
    #[command(subcommand)]
    Indexes(IndexesCommand),
    /// Schema and data migrations (ledger and lock shared with the service).
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// The transactional outboxes: backlog, parked events, redrive.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// The write-behind queues of `eventual` entities: backlog, dead letters, replay.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The Redis cache: entries per entity, invalidation.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// The hash-chained audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Write the declared entities' documents (some tenants or all), their indexes and the
    /// migration ledger to one archive file.
    Backup(BackupArgs),
    /// Restore an archive (verified whole first) into an empty database or as another tenant;
    /// run again to resume, `--rollback` to undo, `--verify-only` to check a file.
    Restore(RestoreArgs),
    /// Delete one tenant's data everywhere the framework put it (documents, cache, queued
    /// writes, outbox backlog) and report counts.
    Erase(EraseArgs),
}

/// `backup`.
#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// The archive to write (gzip).
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,
    /// Only this tenant; repeat for several (default: every tenant).
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Leave the migration ledger out.
    #[arg(long)]
    pub without_ledger: bool,
    #[command(flatten)]
    pub filter: EntityFilter,
}

/// `restore`.
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The archive to read.
    #[arg(long, value_name = "FILE")]
    pub archive: std::path::PathBuf,
    /// Restore tenant FROM as tenant TO (a clone); repeatable.
    #[arg(long = "into-tenant", value_name = "FROM=TO")]
    pub into_tenant: Vec<String>,
    /// Restore database FROM into database TO; repeatable.
    #[arg(long = "database", value_name = "FROM=TO")]
    pub database: Vec<String>,
    /// Leave the migration ledger out.
    #[arg(long)]
    pub without_ledger: bool,
    /// Only check the archive (every checksum); write nothing.
    #[arg(long, conflicts_with = "rollback")]
    pub verify_only: bool,
    /// Undo a half-done (or finished) restore made with the same archive and options.
    #[arg(long)]
    pub rollback: bool,
}

/// `erase`.
#[derive(Debug, clap::Args)]
pub(crate) struct EraseArgs {
    /// The tenant to erase.
    #[arg(long)]
    pub tenant: String,
    /// Do it (without it, nothing is deleted and the command exits 2).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub filter: EntityFilter,
}

/// `--entity NAME`, repeatable.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct EntityFilter {
    /// Only this declared entity (type name, or `database.collection`); repeat for several.
    #[arg(long = "entity", value_name = "NAME")]
    pub entities: Vec<String>,
}

/// `health`.
#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// Exit 0 when degraded too (MongoDB up, something else down): for liveness probes.
    #[arg(long)]
    pub allow_degraded: bool,
}

/// `indexes ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum IndexesCommand {
    /// What would be created, changed or dropped; changes nothing (exit 1 when not in line).
    Plan {
        #[command(flatten)]
        filter: EntityFilter,
    },
    /// Create missing indexes; report changed and extraneous ones (exit 1 when a changed
    /// index is left as it is).
    Apply {
        #[command(flatten)]
        filter: EntityFilter,
        /// Drop indexes the entity does not declare (never `_id_`).
        #[arg(long)]
        drop_extraneous: bool,
        /// Drop and re-create indexes whose keys or options differ from the declaration.
        #[arg(long)]
        recreate_changed: bool,
    },
}

/// `migrate ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum MigrateCommand {
    /// Documents per schema version and the steps not applied yet (exit 1 when something is
    /// pending).
    Status {
        #[command(flatten)]
        filter: EntityFilter,
    },
    /// What `run` would do, in detail; changes nothing and takes no lock (exit 0).
    DryRun {
        #[command(flatten)]
        filter: EntityFilter,
    },
    /// Apply what is pending: rewrite documents, sync indexes, run data migrations.
    Run {
        #[command(flatten)]
        filter: EntityFilter,
        /// Documents per batch (default `migrations.batch_size`).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Most documents rewritten per second (default `migrations.rate_limit`; 0: none).
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Also rewrite older documents of steps already recorded as applied.
        #[arg(long)]
        rescan: bool,
    },
}

/// `--database NAME`, repeatable.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct DatabaseFilter {
    /// Only the outbox of this MongoDB database; repeat for several.
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,
}

/// `outbox ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Events pending, parked, and the oldest pending age (exit 1 when events are parked).
    Status {
        #[command(flatten)]
        filter: DatabaseFilter,
    },
    /// The parked events (delivery attempts exhausted), oldest first.
    Parked {
        #[command(flatten)]
        filter: DatabaseFilter,
        /// Most events listed per outbox.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Make parked events ready again, so the relay retries them (exit 1 when an id given
    /// was not parked).
    Redrive {
        #[command(flatten)]
        filter: DatabaseFilter,
        /// Event ids to redrive.
        #[arg(value_name = "EVENT_ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Redrive every parked event.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// `queue ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Writes pending, their age, dead letters (exit 1 when there are dead letters).
    Status {
        #[command(flatten)]
        filter: EntityFilter,
    },
    /// The dead letters: queued writes the database refused for good.
    DeadLetters {
        #[command(flatten)]
        filter: EntityFilter,
        /// Most listed per queue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put dead letters back in their queue and apply them.
    Replay {
        #[command(flatten)]
        filter: EntityFilter,
        /// Dead-letter ids to replay (as `dead-letters` lists them).
        #[arg(value_name = "ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Replay every dead letter of the selected queues.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only put them back; leave applying them to the service's flusher.
        #[arg(long)]
        no_flush: bool,
        /// How long to wait for the queues to be applied, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// `cache ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// Entries in Redis per cached entity (with `--tenant`, that tenant's), and this
    /// process's counters.
    Stats {
        #[command(flatten)]
        filter: EntityFilter,
        /// Count only this tenant's entries.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Drop a tenant's cache entries (every cached entity, or `--entity`).
    Invalidate {
        #[command(flatten)]
        filter: EntityFilter,
        /// The tenant whose entries go.
        #[arg(long)]
        tenant: String,
    },
}

/// `audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify a tenant's chain in every declared audit log (exit 1 when one is broken).
    Verify {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Only the log in this MongoDB database.
        #[arg(long, value_name = "DATABASE")]
        log: Option<String>,
        /// First sequence to check (default 1).
        #[arg(long)]
        from: Option<u64>,
        /// Last sequence to check (default: the end of the chain).
        #[arg(long)]
        to: Option<u64>,
    },
}
