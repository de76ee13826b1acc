//! `queue status|dead-letters|replay`: the [`WriteBehind`](crate::write_behind::WriteBehind)
//! queues of the declared entities (one queue per collection).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cli::args::{EntityFilter, QueueCommand};
use crate::cli::output::{CliError, Context as _, Exit, Report};
use crate::cli::{Context, Registered};
use crate::write_behind::{DeadLetter, QueueLag};

/// One queue's backlog.
#[derive(Serialize)]
struct Queue {
    /// The declared entities it carries the writes of.
    entities: Vec<&'static str>,
    #[serde(flatten)]
    lag: QueueLag,
}

/// A dead letter and its queue.
#[derive(Serialize)]
struct Letter {
    namespace: String,
    #[serde(flatten)]
    letter: DeadLetter,
}

/// `queue replay`.
#[derive(Serialize)]
struct Replay {
    /// Dead letters put back, per queue.
    replayed: BTreeMap<String, u64>,
    /// Ids given that no selected queue held.
    not_found: Vec<String>,
    /// Whether the queues were applied before returning.
    flushed: bool,
    /// The queues afterwards.
    queues: Vec<Queue>,
}

/// The selected queues: namespace, and the declared entities whose writes may be queued there.
fn queues<'c>(
    ctx: &'c Context<'_>,
    filter: &EntityFilter,
) -> Result<BTreeMap<String, Vec<&'c Registered>>, CliError> {
    let mut out: BTreeMap<String, Vec<&Registered>> = BTreeMap::new();
    for r in ctx.select(filter)? {
        if r.queued() {
            out.entry(r.namespace()).or_default().push(r);
        } else if !filter.entities.is_empty() {
            return Err(CliError::Usage {
                message: format!(
                    "`{}` has an outbox: its writes are never queued",
                    r.meta.name
                ),
            });
        }
    }
    Ok(out)
}

/// The backlog of each selected queue (a queue never written to has none).
async fn lags(
    ctx: &Context<'_>,
    selected: &BTreeMap<String, Vec<&Registered>>,
) -> Result<Vec<Queue>, CliError> {
    let all = ctx
        .storage
        .write_behind()
        .lag()
        .await
        .context(|| "write-behind lag".to_owned())?;
    Ok(selected
        .iter()
        .map(|(ns, entities)| Queue {
            entities: entities.iter().map(|e| e.meta.name).collect(),
            lag: all
                .iter()
                .find(|l| l.namespace == *ns)
                .cloned()
                .unwrap_or(QueueLag {
                    namespace: ns.clone(),
                    pending: 0,
                    oldest_age_ms: 0,
                    dead_letters: 0,
                }),
        })
        .collect())
}

fn lag_text(queues: &[Queue]) -> String {
    let mut text = String::new();
    for q in queues {
        let _ = writeln!(
            text,
            "{:<36} pending {:>6}  oldest {:>7} ms  dead letters {:>4}  ({})",
            q.lag.namespace,
            q.lag.pending,
            q.lag.oldest_age_ms,
            q.lag.dead_letters,
            q.entities.join(", ")
        );
    }
    text
}

pub(crate) async fn run(ctx: &Context<'_>, command: QueueCommand) -> Result<Report, CliError> {
    match command {
        QueueCommand::Status { filter } => {
            let selected = queues(ctx, &filter)?;
            let queues = lags(ctx, &selected).await?;
            let dead: u64 = queues.iter().map(|q| q.lag.dead_letters).sum();
            let pending: u64 = queues.iter().map(|q| q.lag.pending).sum();
            let mut text = lag_text(&queues);
            let _ = writeln!(
                text,
                "{} queues: {pending} pending, {dead} dead letters",
                queues.len()
            );
            let exit = if dead > 0 { Exit::Findings } else { Exit::Ok };
            Ok(Report::new(
                &serde_json::json!({ "queues": queues }),
                text,
                exit,
            ))
        }
        QueueCommand::DeadLetters { filter, limit } => {
            let mut letters = Vec::new();
            for (namespace, entities) in queues(ctx, &filter)? {
                let found = entities[0]
                    .ops
                    .dead_letters(ctx.storage, limit)
                    .await
                    .context(|| format!("dead letters of {namespace}"))?;
                letters.extend(found.into_iter().map(|letter| Letter {
                    namespace: namespace.clone(),
                    letter,
                }));
            }
            let mut text = String::new();
            for l in &letters {
                let d = &l.letter;
                let _ = writeln!(
                    text,
                    "{}  {}  {} {} {}/{}  {}",
                    l.namespace,
                    d.id,
                    d.op.as_deref().unwrap_or("?"),
                    d.entity.as_deref().unwrap_or("?"),
                    d.tenant.as_deref().unwrap_or("?"),
                    d.document_id.as_deref().unwrap_or("?"),
                    d.error
                        .as_deref()
                        .or(d.decode_error.as_deref())
                        .unwrap_or("")
                );
            }
            let _ = writeln!(text, "{} dead letters", letters.len());
            Ok(Report::new(
                &serde_json::json!({ "dead_letters": letters }),
                text,
                Exit::Ok,
            ))
        }
        QueueCommand::Replay {
            filter,
            ids,
            all,
            no_flush,
            timeout,
        } => {
            let selected = queues(ctx, &filter)?;
            if !no_flush {
                for e in selected.values().flatten() {
                    // Registers the pipeline that applies the entity's queued writes.
                    e.ops.attach(ctx.storage);
                }
            }
            let mut replayed: BTreeMap<String, u64> = BTreeMap::new();
            let mut not_found = Vec::new();
            if all {
                for (namespace, entities) in &selected {
                    let n = entities[0]
                        .ops
                        .replay(ctx.storage, None)
                        .await
                        .context(|| format!("replay of {namespace}'s dead letters"))?;
                    replayed.insert(namespace.clone(), n);
                }
            } else {
                'ids: for id in &ids {
                    for (namespace, entities) in &selected {
                        let n = entities[0]
                            .ops
                            .replay(ctx.storage, Some(std::slice::from_ref(id)))
                            .await
                            .context(|| format!("replay of {id} in {namespace}"))?;
                        if n > 0 {
                            *replayed.entry(namespace.clone()).or_default() += n;
                            continue 'ids;
                        }
                    }
                    not_found.push(id.clone());
                }
            }
            let moved: u64 = replayed.values().sum();
            if !no_flush {
                let bar = ctx.bar(Some(moved), "applying");
                for (namespace, entities) in &selected {
                    if replayed.get(namespace).copied().unwrap_or(0) == 0 {
                        continue;
                    }
                    bar.set_message(namespace.clone());
                    entities[0]
                        .ops
                        .flush(ctx.storage, Duration::from_secs(timeout))
                        .await
                        .context(|| format!("applying the queue of {namespace}"))?;
                    bar.inc(replayed[namespace]);
                }
                bar.finish_and_clear();
            }
            let queues = lags(ctx, &selected).await?;
            let still_dead: u64 = queues.iter().map(|q| q.lag.dead_letters).sum();
            let exit = if !not_found.is_empty() || (!no_flush && still_dead > 0) {
                Exit::Findings
            } else {
                Exit::Ok
            };
            let mut text = String::new();
            for (ns, n) in &replayed {
                let _ = writeln!(text, "{ns}: {n} replayed");
            }
            if !not_found.is_empty() {
                let _ = writeln!(
                    text,
                    "not all ids were dead letters: {}",
                    not_found.join(", ")
                );
            }
            text.push_str(&lag_text(&queues));
            let _ = writeln!(
                text,
                "{moved} replayed{}",
                if no_flush {
                    ", left to the service's flusher"
                } else {
                    " and applied"
                }
            );
            Ok(Report::new(
                &Replay {
                    replayed,
                    not_found,
                    flushed: !no_flush,
                    queues,
                },
                text,
                exit,
            ))
        }
    }
}
