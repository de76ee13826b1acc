//! Which handler runs a parsed command. A new command is an arm here and a variant in
//! `args.rs`.

use super::args::Command;
use super::commands;
use super::output::{CliError, Report};
use super::Context;

/// Runs `command`.
pub(crate) async fn run(ctx: &Context<'_>, command: Command) -> Result<Report, CliError> {
    match command {
        Command::Health(a) => commands::health::run(ctx, a).await,
        Command::Indexes(c) => commands::indexes::run(ctx, c).await,
        Command::Migrate(c) => commands::migrate::run(ctx, c).await,
        Command::Outbox(c) => commands::outbox::run(ctx, c).await,
        Command::Queue(c) => commands::queue::run(ctx, c).await,
        Command::Cache(c) => commands::cache::run(ctx, c).await,
        Command::Audit(c) => commands::audit::run(ctx, c).await,
        Command::Backup(a) => commands::backup::backup(ctx, a).await,
        Command::Restore(a) => commands::backup::restore(ctx, a).await,
        Command::Erase(a) => commands::backup::erase(ctx, a).await,
    }
}
