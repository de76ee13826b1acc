//! `outbox status|parked|redrive`: the [`OutboxStore`](crate::outbox::OutboxStore) admin calls
//! over the outboxes of the declared entities and audit logs.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::args::{DatabaseFilter, OutboxCommand};
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::Context;
use crate::outbox::{OutboxLag, OutboxRecord};

/// One outbox's backlog.
#[derive(Serialize)]
struct Lag {
    database: String,
    #[serde(flatten)]
    lag: OutboxLag,
}

/// `outbox status`.
#[derive(Serialize)]
struct Status {
    outboxes: Vec<Lag>,
    total: OutboxLag,
}

/// A parked record and its outbox.
#[derive(Serialize)]
struct Parked {
    database: String,
    #[serde(flatten)]
    record: OutboxRecord,
}

/// `outbox redrive`.
#[derive(Serialize)]
struct Redrive {
    /// Ids made ready again.
    redriven: Vec<String>,
    /// Ids given that no outbox held as parked.
    not_parked: Vec<String>,
}

/// The databases whose outboxes the commands cover: those of the declared entities with an
/// outbox and of the declared audit logs, narrowed by `--database`.
fn databases(ctx: &Context<'_>, filter: &DatabaseFilter) -> Result<Vec<String>, CliError> {
    let mut all: Vec<String> = ctx
        .cli
        .entities
        .iter()
        .filter(|e| e.meta.outbox.is_some())
        .map(|e| e.meta.database.to_owned())
        .chain(ctx.audit_logs().iter().map(|a| a.database.clone()))
        .collect();
    all.sort();
    all.dedup();
    for d in &filter.databases {
        if !all.contains(d) {
            return Err(CliError::Usage {
                message: format!(
                    "no declared entity or audit log has its outbox in `{d}` (outboxes: {})",
                    all.join(", ")
                ),
            });
        }
    }
    if !filter.databases.is_empty() {
        all.retain(|d| filter.databases.contains(d));
    }
    Ok(all)
}

pub(crate) async fn run(ctx: &Context<'_>, command: OutboxCommand) -> Result<Report, CliError> {
    match command {
        OutboxCommand::Status { filter } => {
            let mut outboxes = Vec::new();
            let mut total = OutboxLag::default();
            let mut text = String::new();
            for database in databases(ctx, &filter)? {
                let lag = ctx
                    .storage
                    .outbox(&database)
                    .lag()
                    .await
                    .context(|| format!("outbox lag of {database}"))?;
                total.merge(&lag);
                let _ = writeln!(
                    text,
                    "{database:<24} pending {:>6} (ready {}, prepared {})  parked {:>4}  oldest {}",
                    lag.pending,
                    lag.ready,
                    lag.prepared,
                    lag.parked,
                    lag.oldest_pending_age_ms
                        .map_or("-".to_owned(), |ms| format!("{ms} ms"))
                );
                outboxes.push(Lag { database, lag });
            }
            let exit = if total.parked > 0 {
                Exit::Findings
            } else {
                Exit::Ok
            };
            let _ = writeln!(
                text,
                "{} outboxes: {} pending, {} parked",
                outboxes.len(),
                total.pending,
                total.parked
            );
            Ok(Report::new(&Status { outboxes, total }, text, exit))
        }
        OutboxCommand::Parked { filter, limit } => {
            let mut parked = Vec::new();
            for database in databases(ctx, &filter)? {
                let records = ctx
                    .storage
                    .outbox(&database)
                    .parked(limit)
                    .await
                    .context(|| format!("parked records of {database}"))?;
                parked.extend(records.into_iter().map(|record| Parked {
                    database: database.clone(),
                    record,
                }));
            }
            let mut text = String::new();
            for p in &parked {
                let _ = writeln!(
                    text,
                    "{}  {}  {} {}  attempts {}  {}",
                    p.database,
                    p.record.envelope.event_id,
                    p.record.topic,
                    p.record.envelope.event_type,
                    p.record.attempts,
                    p.record.last_error.as_deref().unwrap_or("")
                );
            }
            let _ = writeln!(text, "{} parked", parked.len());
            Ok(Report::new(
                &serde_json::json!({ "parked": parked }),
                text,
                Exit::Ok,
            ))
        }
        OutboxCommand::Redrive { filter, ids, all } => {
            let dbs = databases(ctx, &filter)?;
            let mut redriven = Vec::new();
            let mut not_parked = Vec::new();
            if all {
                for database in &dbs {
                    let store = ctx.storage.outbox(database);
                    loop {
                        let batch = store
                            .parked(500)
                            .await
                            .context(|| format!("parked records of {database}"))?;
                        if batch.is_empty() {
                            break;
                        }
                        let mut moved = 0;
                        for r in batch {
                            let id = r.envelope.event_id;
                            if store
                                .redrive(&id)
                                .await
                                .context(|| format!("redrive of {id}"))?
                            {
                                moved += 1;
                                redriven.push(id);
                            }
                        }
                        if moved == 0 {
                            break;
                        }
                    }
                }
            } else {
                'ids: for id in ids {
                    for database in &dbs {
                        if ctx
                            .storage
                            .outbox(database)
                            .redrive(&id)
                            .await
                            .context(|| format!("redrive of {id} in {database}"))?
                        {
                            redriven.push(id);
                            continue 'ids;
                        }
                    }
                    not_parked.push(id);
                }
            }
            let exit = if not_parked.is_empty() {
                Exit::Ok
            } else {
                Exit::Findings
            };
            let mut text = String::new();
            for id in &redriven {
                let _ = writeln!(text, "redriven    {id}");
            }
            for id in &not_parked {
                let _ = writeln!(text, "not parked  {id}");
            }
            let _ = writeln!(text, "{} redriven", redriven.len());
            Ok(Report::new(
                &Redrive {
                    redriven,
                    not_parked,
                },
                text,
                exit,
            ))
        }
    }
}
