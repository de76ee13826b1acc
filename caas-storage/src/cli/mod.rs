//! `caas`: the operator's command line, embedded in the service's own binary (feature `cli`).
//!
//! Entities live in the service's binary, so the tool does too: the service lists its entities
//! (and audit logs, data migrations) once, and every command acts on those only.
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     caas_storage::cli::Cli::new("my-service")
//!         .entity::<User>()
//!         .entity::<Message>()
//!         .audit(AuditOptions::for_database("caas_compliance"))
//!         .run_from_env() // std::env::args, StorageConfig::from_env()
//!         .await
//! }
//! ```
//!
//! Commands: `health`; `indexes plan|apply`; `migrate status|dry-run|run`;
//! `outbox status|parked|redrive`; `queue status|dead-letters|replay`;
//! `cache stats|invalidate`; `audit verify`. Every command takes `--json` (one JSON document on
//! stdout). Exit codes ([`Exit`]): 0 ok, 1 the command ran and found something not ok
//! (health not up, a broken audit chain, pending migrations, parked events, dead letters,
//! indexes out of line), 2 usage error, 3 could not run (configuration, connection, a server
//! error). See `docs/cli.md`.
//!
//! Files: `args.rs` (the clap definitions: the command enum), `dispatch.rs` (command to
//! handler), `commands/` (one file per command group), `output.rs` (text or JSON, progress
//! bars, exit codes), and this file (the embedding API and the entity registry).

mod args;
mod commands;
mod dispatch;
mod output;

use std::ffi::OsString;
use std::io::Write;
use std::marker::PhantomData;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::audit::AuditOptions;
use crate::cache::CacheMetrics;
use crate::config::StorageConfig;
use crate::entity::{Entity, EntityMeta};
use crate::error::Result;
use crate::migrations::{Migration, Migrations};
use crate::storage::Storage;
use crate::tenant::TenantId;
use crate::write_behind::DeadLetter;

pub use output::{CliError, Exit};

/// The embeddable CLI: what the service declares, then [`run_from_env`](Self::run_from_env)
/// (or [`run_with`](Self::run_with) for a given [`Storage`] and output).
pub struct Cli {
    name: &'static str,
    entities: Vec<Registered>,
    audit: Vec<AuditOptions>,
    migrations: Migrations,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("name", &self.name)
            .field(
                "entities",
                &self
                    .entities
                    .iter()
                    .map(|e| e.meta.name)
                    .collect::<Vec<_>>(),
            )
            .field("audit", &self.audit)
            .field("migrations", &self.migrations)
            .finish()
    }
}

/// A declared entity: its metadata, and the generic runtime calls made for its type.
pub(crate) struct Registered {
    pub(crate) meta: &'static EntityMeta,
    pub(crate) ops: Box<dyn EntityOps>,
}

impl Registered {
    /// `database.collection`.
    pub(crate) fn namespace(&self) -> String {
        format!("{}.{}", self.meta.database, self.meta.collection)
    }

    /// Whether writes of the entity may go through the write-behind queue (entities with an
    /// outbox never do).
    pub(crate) fn queued(&self) -> bool {
        self.meta.outbox.is_none()
    }
}

/// The runtime calls that are generic over the entity type, kept per declared entity.
pub(crate) trait EntityOps: Send + Sync {
    /// Makes a repository of the entity on `storage`: registers the pipeline that applies its
    /// write-behind queue.
    fn attach(&self, storage: &Storage);
    /// `storage.cache().invalidate_all::<E>(tenant)`.
    fn invalidate_all<'a>(
        &'a self,
        storage: &'a Storage,
        tenant: Option<&'a TenantId>,
    ) -> BoxFuture<'a, Result<u64>>;
    /// `storage.cache().entry_count::<E>(tenant)`.
    fn entry_count<'a>(
        &'a self,
        storage: &'a Storage,
        tenant: Option<&'a TenantId>,
    ) -> BoxFuture<'a, Result<u64>>;
    /// `storage.cache().metrics_of::<E>()`.
    fn metrics(&self, storage: &Storage) -> CacheMetrics;
    /// `storage.write_behind().flush::<E>(timeout)`.
    fn flush<'a>(&'a self, storage: &'a Storage, timeout: Duration) -> BoxFuture<'a, Result<()>>;
    /// `storage.write_behind().dead_letters::<E>(limit)`.
    fn dead_letters<'a>(
        &'a self,
        storage: &'a Storage,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>>>;
    /// `storage.write_behind().replay::<E>(ids)`.
    fn replay<'a>(
        &'a self,
        storage: &'a Storage,
        ids: Option<&'a [String]>,
    ) -> BoxFuture<'a, Result<u64>>;
}

struct Typed<E>(PhantomData<fn() -> E>);

impl<E: Entity> EntityOps for Typed<E> {
    fn attach(&self, storage: &Storage) {
        let _ = crate::repo::Repository::<E>::new(storage);
    }

    fn invalidate_all<'a>(
        &'a self,
        storage: &'a Storage,
        tenant: Option<&'a TenantId>,
    ) -> BoxFuture<'a, Result<u64>> {
        storage.cache().invalidate_all::<E>(tenant).boxed()
    }

    fn entry_count<'a>(
        &'a self,
        storage: &'a Storage,
        tenant: Option<&'a TenantId>,
    ) -> BoxFuture<'a, Result<u64>> {
        storage.cache().entry_count::<E>(tenant).boxed()
    }

    fn metrics(&self, storage: &Storage) -> CacheMetrics {
        storage.cache().metrics_of::<E>()
    }

    fn flush<'a>(&'a self, storage: &'a Storage, timeout: Duration) -> BoxFuture<'a, Result<()>> {
        storage.write_behind().flush::<E>(timeout).boxed()
    }

    fn dead_letters<'a>(
        &'a self,
        storage: &'a Storage,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>>> {
        storage.write_behind().dead_letters::<E>(limit).boxed()
    }

    fn replay<'a>(
        &'a self,
        storage: &'a Storage,
        ids: Option<&'a [String]>,
    ) -> BoxFuture<'a, Result<u64>> {
        storage.write_behind().replay::<E>(ids).boxed()
    }
}

impl Cli {
    /// A CLI named `name` (what `--help` shows), with nothing declared yet.
    pub fn new(name: &'static str) -> Self {
        Cli {
            name,
            entities: Vec::new(),
            audit: Vec::new(),
            migrations: Migrations::new(),
        }
    }

    /// Declares entity `E`: its indexes, schema migrations, outbox, write-behind queue and
    /// cache are what the commands act on. Declaring an entity twice changes nothing.
    pub fn entity<E: Entity>(mut self) -> Self {
        let meta = E::META;
        if !self.entities.iter().any(|r| {
            (r.meta.database, r.meta.collection, r.meta.name)
                == (meta.database, meta.collection, meta.name)
        }) {
            self.entities.push(Registered {
                meta,
                ops: Box::new(Typed::<E>(PhantomData)),
            });
        }
        self
    }

    /// Declares an audit log: `audit verify` checks its chains, `health` reports it and
    /// `outbox` covers its database (its checkpoints go out through the outbox).
    pub fn audit(mut self, options: AuditOptions) -> Self {
        if !self.audit.contains(&options) {
            self.audit.push(options);
        }
        self
    }

    /// Declares a data migration: `migrate` runs it after the entities' schema and index
    /// steps (when no `--entity` narrows the run).
    pub fn migration(mut self, migration: impl Migration + 'static) -> Self {
        self.migrations = self.migrations.data(migration);
        self
    }

    /// Parses `std::env::args`, connects with [`StorageConfig::from_env`] and runs the
    /// command, printing to stdout and stderr. Returns the exit code ([`Exit`]).
    pub async fn run_from_env(&self) -> ExitCode {
        self.run_args(std::env::args_os()).await.into()
    }

    /// [`run_from_env`](Self::run_from_env) with the given arguments (the first is the
    /// program name): for a service that runs the CLI as a subcommand of its own binary, e.g.
    /// `my-service caas health` → `cli.run_args(std::env::args_os().skip(1))`.
    ///
    /// The process connects without the background workers a service runs (retention, the TTL
    /// sweeper, write-behind flushers): the commands do what they are asked and nothing else.
    pub async fn run_args<I, T>(&self, args: I) -> Exit
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr();
        let args = match self.parse(args, &mut stdout, &mut stderr) {
            Ok(a) => a,
            Err(exit) => return exit,
        };
        drop(stdout);
        let storage = match connect().await {
            Ok(s) => s,
            Err(e) => {
                let mut stdout = std::io::stdout().lock();
                let error = CliError::Connect {
                    source: Box::new(e),
                };
                return output::failed(&error, args.json, &mut stdout, &mut stderr);
            }
        };
        let mut stdout = std::io::stdout().lock();
        let exit = self
            .execute(args, &storage, &mut stdout, &mut stderr, true)
            .await;
        let _ = stdout.flush();
        exit
    }

    /// Parses `args` (the first is the program name) and runs the command on `storage`,
    /// writing its output (text, or the JSON document with `--json`) to `out` and
    /// diagnostics to `err`. Progress bars are not drawn. For tests and for services that
    /// already hold a [`Storage`].
    pub async fn run_with<I, T>(
        &self,
        args: I,
        storage: &Storage,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Exit
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        match self.parse(args, out, err) {
            Ok(args) => self.execute(args, storage, out, err, false).await,
            Err(exit) => exit,
        }
    }

    /// The clap command, named after the service.
    fn command(&self) -> clap::Command {
        args::Args::command()
            .name(self.name)
            .bin_name(self.name)
            .about(format!(
                "Operator commands of {}: health, indexes, migrations, outbox, write-behind \
                 queue, cache, audit log",
                self.name
            ))
    }

    fn parse<I, T>(
        &self,
        args: I,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> std::result::Result<args::Args, Exit>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let parsed = self
            .command()
            .try_get_matches_from(args)
            .and_then(|m| args::Args::from_arg_matches(&m));
        match parsed {
            Ok(a) => Ok(a),
            Err(e) => {
                let text = e.render().to_string();
                if e.use_stderr() {
                    let _ = write!(err, "{text}");
                    Err(Exit::Usage)
                } else {
                    // --help, --version
                    let _ = write!(out, "{text}");
                    Err(Exit::Ok)
                }
            }
        }
    }

    async fn execute(
        &self,
        args: args::Args,
        storage: &Storage,
        out: &mut dyn Write,
        err: &mut dyn Write,
        progress: bool,
    ) -> Exit {
        let json = args.json;
        let ctx = Context {
            cli: self,
            storage,
            progress: progress && !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        match dispatch::run(&ctx, args.command).await {
            Ok(report) => report.render(json, out, err),
            Err(e) => output::failed(&e, json, out, err),
        }
    }
}

/// Connects from the environment, without background workers.
async fn connect() -> Result<Storage> {
    let mut config = StorageConfig::from_env()?;
    config.retention.enabled = false;
    config.ttl.sweeper = false;
    config.write_behind.start_flusher = false;
    Storage::connect(config).await
}

/// What a command runs with.
pub(crate) struct Context<'a> {
    pub(crate) cli: &'a Cli,
    pub(crate) storage: &'a Storage,
    /// Whether progress bars are drawn (stderr is a terminal, no `--json`, not `run_with`).
    pub(crate) progress: bool,
}

impl Context<'_> {
    /// The declared entities `filter` names (all of them when it names none).
    pub(crate) fn select(
        &self,
        filter: &args::EntityFilter,
    ) -> std::result::Result<Vec<&Registered>, CliError> {
        if filter.entities.is_empty() {
            return Ok(self.cli.entities.iter().collect());
        }
        let mut out = Vec::new();
        for name in &filter.entities {
            let found: Vec<&Registered> = self
                .cli
                .entities
                .iter()
                .filter(|r| r.meta.name == name || r.namespace() == *name)
                .collect();
            if found.is_empty() {
                return Err(CliError::Usage {
                    message: format!(
                        "no declared entity is named `{name}` (declared: {})",
                        self.cli
                            .entities
                            .iter()
                            .map(|r| r.meta.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            for r in found {
                if !out.iter().any(|o: &&Registered| std::ptr::eq(*o, r)) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// The declared audit logs.
    pub(crate) fn audit_logs(&self) -> &[AuditOptions] {
        &self.cli.audit
    }

    /// The data migrations declared.
    pub(crate) fn migrations(&self) -> &Migrations {
        &self.cli.migrations
    }

    /// A progress bar on stderr, hidden unless [`progress`](Self::progress).
    pub(crate) fn bar(&self, len: Option<u64>, message: &str) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = match len {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.to_owned());
        bar
    }
}
