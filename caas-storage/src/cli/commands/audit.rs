//! `audit verify`: [`AuditLog::verify`](crate::audit::AuditLog::verify) of a tenant's chain in
//! every declared audit log.

use std::fmt::Write as _;

use serde::Serialize;

use crate::audit::Verification;
use crate::cli::args::AuditCommand;
use crate::cli::commands::tenant;
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::Context;

/// One log's verification.
#[derive(Serialize)]
struct Log {
    database: String,
    collection: String,
    intact: bool,
    verification: Verification,
}

pub(crate) async fn run(ctx: &Context<'_>, command: AuditCommand) -> Result<Report, CliError> {
    let AuditCommand::Verify {
        tenant: t,
        log,
        from,
        to,
    } = command;
    let t = tenant(&t)?;
    let mut selected: Vec<_> = ctx.audit_logs().iter().collect();
    if selected.is_empty() {
        return Err(CliError::Usage {
            message: "no audit log is declared (Cli::audit)".into(),
        });
    }
    if let Some(db) = &log {
        selected.retain(|o| o.database == *db);
        if selected.is_empty() {
            return Err(CliError::Usage {
                message: format!("no declared audit log is in database `{db}`"),
            });
        }
    }
    let range = from.unwrap_or(1)..=to.unwrap_or(u64::MAX);
    let mut logs = Vec::new();
    for options in selected {
        let audit = ctx
            .storage
            .audit_log(options.clone())
            .context(|| format!("audit log {}", options.database))?;
        let verification = audit
            .verify(&t, range.clone())
            .await
            .context(|| format!("verification of {t}'s chain in {}", options.database))?;
        logs.push(Log {
            database: options.database.clone(),
            collection: options.collection.clone(),
            intact: verification.is_intact(),
            verification,
        });
    }
    let intact = logs.iter().all(|l| l.intact);
    let mut text = String::new();
    for l in &logs {
        let v = &l.verification;
        let _ = write!(
            text,
            "{}.{}: {} entries checked, ",
            l.database, l.collection, v.checked
        );
        match &v.broken {
            None => {
                let _ = writeln!(text, "intact");
            }
            Some(b) => {
                let _ = writeln!(
                    text,
                    "BROKEN at sequence {} ({:?}{})",
                    b.sequence,
                    b.kind,
                    b.audit_id
                        .as_deref()
                        .map(|id| format!(", entry {id}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    let _ = writeln!(
        text,
        "tenant {t}: {}",
        if intact { "intact" } else { "broken" }
    );
    let exit = if intact { Exit::Ok } else { Exit::Findings };
    Ok(Report::new(
        &serde_json::json!({ "tenant": t.as_str(), "intact": intact, "logs": logs }),
        text,
        exit,
    ))
}
