//! `indexes plan|apply`: [`Storage::sync_indexes_with`](crate::Storage::sync_indexes_with)
//! over the declared entities.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::args::IndexesCommand;
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::Context;
use crate::index::{IndexChange, IndexPlan, SyncOptions};

/// The JSON document.
#[derive(Serialize)]
struct Plans {
    /// Whether a dry run.
    dry_run: bool,
    /// Whether every entity's indexes match its declaration (after `apply`: now).
    in_sync: bool,
    /// One plan per entity.
    plans: Vec<IndexPlan>,
}

pub(crate) async fn run(ctx: &Context<'_>, command: IndexesCommand) -> Result<Report, CliError> {
    let (filter, options) = match command {
        IndexesCommand::Plan { filter } => (
            filter,
            SyncOptions {
                dry_run: true,
                ..SyncOptions::default()
            },
        ),
        IndexesCommand::Apply {
            filter,
            drop_extraneous,
            recreate_changed,
        } => (
            filter,
            SyncOptions {
                dry_run: false,
                drop_extraneous,
                recreate_changed,
            },
        ),
    };
    let entities = ctx.select(&filter)?;
    let bar = ctx.bar(Some(entities.len() as u64), "indexes");
    let mut plans = Vec::with_capacity(entities.len());
    for e in entities {
        bar.set_message(e.meta.name);
        plans.push(
            ctx.storage
                .sync_indexes_with(e.meta, options)
                .await
                .context(|| format!("index sync of {}", e.meta.name))?,
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (in_sync, exit) = if options.dry_run {
        let in_sync = plans.iter().all(IndexPlan::is_in_sync);
        (in_sync, if in_sync { Exit::Ok } else { Exit::Findings })
    } else {
        // What apply could not settle: a changed index left as it is.
        let left = plans.iter().any(|p| {
            p.changes
                .iter()
                .any(|c| matches!(c, IndexChange::Changed { applied: false, .. }))
        });
        (!left, if left { Exit::Findings } else { Exit::Ok })
    };
    let mut text = String::new();
    let (mut created, mut to_create) = (0, 0);
    for p in &plans {
        let _ = writeln!(text, "{} ({})", p.namespace, p.entity);
        for c in &p.changes {
            let line = match c {
                IndexChange::Unchanged { name } => format!("ok        {name}"),
                IndexChange::Create {
                    name,
                    keys,
                    applied,
                    ..
                } => {
                    if *applied {
                        created += 1;
                        format!("created   {name} {keys}")
                    } else {
                        to_create += 1;
                        format!("missing   {name} {keys}")
                    }
                }
                IndexChange::Changed {
                    name,
                    declared,
                    found,
                    applied,
                } => format!(
                    "{} {name}: declared {declared}, found {found}",
                    if *applied { "recreated" } else { "changed  " }
                ),
                IndexChange::Extraneous { name, dropped } => format!(
                    "{} {name}",
                    if *dropped { "dropped  " } else { "extra    " }
                ),
                IndexChange::Unsupported { name, reason } => {
                    format!("skipped   {name}: {reason}")
                }
                IndexChange::Weakened { name, reason } => {
                    format!("weakened  {name}: {reason}")
                }
            };
            let _ = writeln!(text, "  {line}");
        }
    }
    let _ = writeln!(
        text,
        "{} entities; {}",
        plans.len(),
        if options.dry_run {
            format!("{to_create} indexes to create; in sync: {in_sync}")
        } else {
            format!("{created} indexes created; in sync: {in_sync}")
        }
    );
    let doc = Plans {
        dry_run: options.dry_run,
        in_sync,
        plans,
    };
    Ok(Report::new(&doc, text, exit))
}
