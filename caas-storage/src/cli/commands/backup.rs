//! `backup`, `restore` and `erase`: the [`backup`](crate::backup) module over the declared
//! entities. Archives are files; a restore reads its archive twice (verified whole before
//! anything is written), so it takes a path.

use std::fmt::Write as _;

use crate::backup::{BackupPlan, RestorePlan};
use crate::cli::args::{BackupArgs, EraseArgs, RestoreArgs};
use crate::cli::commands::tenant;
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::Context;
use crate::entity::EntityMeta;

fn metas(
    ctx: &Context<'_>,
    filter: &crate::cli::args::EntityFilter,
) -> Result<Vec<&'static EntityMeta>, CliError> {
    Ok(ctx.select(filter)?.into_iter().map(|r| r.meta).collect())
}

/// `FROM=TO` pairs.
fn pairs(values: &[String], flag: &str) -> Result<Vec<(String, String)>, CliError> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_owned(), b.to_owned())),
            _ => Err(CliError::Usage {
                message: format!("{flag} {v:?}: expected FROM=TO"),
            }),
        })
        .collect()
}

pub(crate) async fn backup(ctx: &Context<'_>, args: BackupArgs) -> Result<Report, CliError> {
    let mut plan = BackupPlan::new().metas(&metas(ctx, &args.filter)?);
    for t in &args.tenants {
        plan = plan.tenant(tenant(t)?);
    }
    if args.without_ledger {
        plan = plan.without_ledger();
    }
    let file = std::fs::File::create(&args.out).map_err(|e| CliError::Usage {
        message: format!("--out {}: {e}", args.out.display()),
    })?;
    let bar = ctx.bar(None, "backing up");
    let report = ctx
        .storage
        .backup(&plan, std::io::BufWriter::new(file))
        .await
        .context(|| format!("backup to {}", args.out.display()))?;
    bar.finish_and_clear();
    let mut text = format!(
        "{} documents in {} sections to {} (sha256 {}…), point in time: {}\n",
        report.documents,
        report.sections.len(),
        args.out.display(),
        &report.archive_sha256[..16.min(report.archive_sha256.len())],
        report.point_in_time
    );
    for s in &report.sections {
        let _ = writeln!(text, "  {s:?}");
    }
    Ok(Report::new(&report, text, Exit::Ok))
}

pub(crate) async fn restore(ctx: &Context<'_>, args: RestoreArgs) -> Result<Report, CliError> {
    if args.verify_only {
        let summary = ctx
            .storage
            .verify_archive(&args.archive)
            .await
            .context(|| format!("verify {}", args.archive.display()))?;
        let text = format!(
            "{}: intact, format {}, {} documents in {} sections, made {} from {}\n",
            args.archive.display(),
            summary.format_version,
            summary.documents,
            summary.sections.len(),
            summary.created_at,
            summary.source_server
        );
        return Ok(Report::new(&summary, text, Exit::Ok));
    }
    let mut plan = RestorePlan::new();
    for (from, to) in pairs(&args.into_tenant, "--into-tenant")? {
        plan = plan.into_tenant(tenant(&from)?, tenant(&to)?);
    }
    for (from, to) in pairs(&args.database, "--database")? {
        plan = plan.database(from, to);
    }
    if args.without_ledger {
        plan = plan.without_ledger();
    }
    let bar = ctx.bar(
        None,
        if args.rollback {
            "rolling back"
        } else {
            "restoring"
        },
    );
    let report = if args.rollback {
        ctx.storage.rollback_restore(&plan, &args.archive).await
    } else {
        ctx.storage.restore(&plan, &args.archive).await
    }
    .context(|| format!("restore from {}", args.archive.display()))?;
    bar.finish_and_clear();
    let mut text = format!(
        "{} ({}): {} sections{}\n",
        args.archive.display(),
        report.state,
        report.sections.len(),
        if report.resumed { ", resumed" } else { "" }
    );
    for s in &report.sections {
        let _ = writeln!(text, "  {} {} -> {}", s.entity, s.source, s.target);
    }
    Ok(Report::new(&report, text, Exit::Ok))
}

pub(crate) async fn erase(ctx: &Context<'_>, args: EraseArgs) -> Result<Report, CliError> {
    if !args.yes {
        return Err(CliError::Usage {
            message: format!(
                "erase deletes every document of tenant {:?} in the declared entities, its cache \
                 entries, queued writes and outbox backlog; add --yes to do it",
                args.tenant
            ),
        });
    }
    let t = tenant(&args.tenant)?;
    let report = ctx
        .storage
        .erase_tenant(&metas(ctx, &args.filter)?, &t)
        .await
        .context(|| format!("erase tenant {t}"))?;
    let mut text = format!("tenant {t} erased\n");
    for e in &report.entities {
        let _ = writeln!(text, "  {e:?}");
    }
    for o in &report.outboxes {
        let _ = writeln!(text, "  {o:?}");
    }
    if !report.not_covered.is_empty() {
        let _ = writeln!(text, "not covered: {}", report.not_covered.join("; "));
    }
    Ok(Report::new(&report, text, Exit::Ok))
}
