//! `migrate status|dry-run|run`: [`Storage::migrate`](crate::Storage::migrate) over the
//! declared entities (and data migrations).

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::args::MigrateCommand;
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::Context;
use crate::migrations::{MigrateOptions, MigrationReport, StepState};

/// The JSON document.
#[derive(Serialize)]
struct Migrate {
    /// Steps not applied (after `run`: left).
    pending_steps: Vec<String>,
    /// Stored documents below their entity's target version (for `run`: when it started).
    documents_to_migrate: u64,
    /// Documents rewritten by this run.
    rewritten: u64,
    /// The runtime's report.
    report: MigrationReport,
}

pub(crate) async fn run(ctx: &Context<'_>, command: MigrateCommand) -> Result<Report, CliError> {
    let (filter, mut options, status) = match command {
        MigrateCommand::Status { filter } => (filter, MigrateOptions::new().dry_run(), true),
        MigrateCommand::DryRun { filter } => (filter, MigrateOptions::new().dry_run(), false),
        MigrateCommand::Run {
            filter,
            batch_size,
            rate_limit,
            rescan,
        } => {
            let mut o = MigrateOptions::new();
            if let Some(n) = batch_size {
                o = o.batch_size(n);
            }
            if let Some(n) = rate_limit {
                o = o.rate_limit(n);
            }
            if rescan {
                o = o.rescan();
            }
            (filter, o, false)
        }
    };
    let narrowed = !filter.entities.is_empty();
    let metas: Vec<_> = ctx.select(&filter)?.iter().map(|r| r.meta).collect();
    let mut plan = if narrowed {
        // Data migrations span entities: they run only in a run over every entity.
        crate::migrations::Migrations::new()
    } else {
        ctx.migrations().clone()
    };
    plan = plan.entities(&metas);
    let dry_run = options.dry_run;
    let bar = ctx.bar(None, "migrating");
    if !dry_run {
        let b = bar.clone();
        options = options.on_progress(move |p| {
            if let Some(total) = p.total {
                b.set_length(total);
            }
            b.set_position(p.done);
            b.set_message(p.step.clone());
        });
    }
    let report = ctx
        .storage
        .migrate(&plan, options)
        .await
        .context(|| "migration".to_owned())?;
    bar.finish_and_clear();
    let pending_steps: Vec<String> = report
        .steps()
        .filter(|s| s.state == StepState::Pending)
        .map(|s| s.name.clone())
        .collect();
    // Append-only entities' documents are upgraded on read, never rewritten.
    let append_only: Vec<String> = metas
        .iter()
        .filter(|m| m.append_only)
        .map(|m| format!("{}.{}:{}", m.database, m.collection, m.name))
        .collect();
    let documents_to_migrate: u64 = report
        .entities
        .iter()
        .filter(|e| !append_only.contains(&e.entity))
        .flat_map(|e| e.by_version.range(..e.target).map(|(_, n)| *n))
        .sum();
    let rewritten = report.entities.iter().map(|e| e.rewritten).sum();
    let exit = if status && (!pending_steps.is_empty() || documents_to_migrate > 0) {
        Exit::Findings
    } else {
        Exit::Ok
    };
    let mut text = String::new();
    for e in &report.entities {
        let versions: Vec<String> = e
            .by_version
            .iter()
            .map(|(v, n)| format!("v{v}: {n}"))
            .collect();
        let _ = writeln!(
            text,
            "{} -> v{}  [{}]{}",
            e.entity,
            e.target,
            versions.join(", "),
            if dry_run {
                String::new()
            } else {
                format!("  rewritten {}", e.rewritten)
            }
        );
    }
    for s in report.steps() {
        let _ = writeln!(text, "  {:<16} {}", state(s.state), s.name);
    }
    let _ = writeln!(
        text,
        "{}: {} steps pending, {} documents to migrate{}",
        if status {
            "status"
        } else if dry_run {
            "dry run"
        } else {
            "run"
        },
        pending_steps.len(),
        documents_to_migrate,
        if dry_run {
            String::new()
        } else {
            format!(", {rewritten} rewritten, applied {:?}", report.applied())
        }
    );
    let doc = Migrate {
        pending_steps,
        documents_to_migrate,
        rewritten,
        report,
    };
    Ok(Report::new(&doc, text, exit))
}

fn state(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Applied => "applied",
        StepState::AlreadyApplied => "already applied",
        StepState::RolledBack => "rolled back",
    }
}
