//! `health`: [`Storage::health`](crate::Storage::health) over the declared entities and audit
//! logs.

use std::fmt::Write as _;

use crate::cli::args::HealthArgs;
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::Context;
use crate::health::HealthStatus;

pub(crate) async fn run(ctx: &Context<'_>, args: HealthArgs) -> Result<Report, CliError> {
    for e in &ctx.cli.entities {
        // Lists the entity on the handle (for the outbox lag), without starting anything.
        ctx.storage.register(e.meta);
    }
    for options in ctx.audit_logs() {
        // Made on the handle, the log is part of its health report.
        ctx.storage
            .audit_log(options.clone())
            .context(|| format!("audit log {}", options.database))?;
    }
    let report = ctx.storage.health().await;
    let exit = match report.status {
        HealthStatus::Up => Exit::Ok,
        HealthStatus::Degraded if args.allow_degraded => Exit::Ok,
        HealthStatus::Degraded | HealthStatus::Down => Exit::Findings,
    };
    let mut text = format!(
        "{} ({:.0} ms)\n",
        status(report.status).to_uppercase(),
        report.took_ms
    );
    for c in &report.components {
        let _ = write!(
            text,
            "  {:<28} {:<8} {:>7.1} ms",
            c.name,
            status(c.status),
            c.latency_ms
        );
        if let Some(e) = &c.error {
            let _ = write!(text, "  {e}");
        }
        text.push('\n');
    }
    Ok(Report::new(&report, text, exit))
}

fn status(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Up => "up",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Down => "down",
    }
}
