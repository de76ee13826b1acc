//! The schema phase of a run: rewriting one entity's stored documents through its chain, in
//! batches, resumably, and recording the chain's steps when no document is left behind.
//!
//! Each batch reads up to `batch_size` documents below the target version (above it, for a
//! rollback) and rewrites each one at the target version in one write (`repo/upgrade.rs`: no
//! version bump, no outbox event, its cache entries dropped), a few at a time. The filter is
//! the progress: a document rewritten is no longer found, so a run that starts again after a
//! crash carries on with what is left, and no document is rewritten twice. How far runs got is
//! saved in the ledger after every batch (`progress:schema:...`), with the count of documents
//! per version they came from; when nothing is left, each step is recorded with the number of
//! documents that went through it, and the progress document is removed.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{doc, Bson, Document};

use crate::consistency::Consistency;
use crate::document::SCHEMA_VERSION_FIELD;
use crate::entity::EntityMeta;
use crate::error::{Component, Error, Result};
use crate::migrations::ledger::{self, Record};
use crate::migrations::migrator::Run;
use crate::migrations::plan::{identity, Phase, Progress};
use crate::migrations::report::{EntityReport, StepReport, StepState};
use crate::repo::pipeline::Pipeline;
use crate::repo::upgrade::Rewrite;
use crate::schema::{self, UNSTAMPED};

/// Rewrites in flight at once within a batch.
const CONCURRENCY: usize = 4;

/// Batches in a row that rewrote nothing (every document found was being written by someone
/// else) before the run gives up.
const MAX_IDLE_BATCHES: u32 = 600;

/// The ledger's name of the step `from -> from + 1` of `meta`.
pub(crate) fn step_name(meta: &EntityMeta, from: u32) -> String {
    format!("schema:{}:{}->{}", identity(meta), from, from + 1)
}

/// Stored documents of `meta` per schema version (unstamped ones as 1).
pub(crate) async fn count_by_version(pipeline: &Pipeline) -> Result<BTreeMap<u32, u64>> {
    // The distinct stamps, then one count each (a handful of versions at most): every backend
    // answers these, where a `$group` needs the aggregation framework.
    let op = "count documents per schema version";
    let docs = pipeline.docs();
    let fail = |e| Error::mongo(pipeline.op(op), e);
    let stamps = pipeline
        .bounded(op, docs.distinct(SCHEMA_VERSION_FIELD, Document::new()))
        .await?
        .map_err(fail)?;
    let mut counts = BTreeMap::new();
    let unstamped = pipeline
        .bounded(
            op,
            docs.count(doc! { SCHEMA_VERSION_FIELD: Bson::Null }, None, None),
        )
        .await?
        .map_err(fail)?;
    if unstamped > 0 {
        counts.insert(UNSTAMPED, unstamped);
    }
    for stamp in stamps {
        let version = match &stamp {
            Bson::Null => continue,
            Bson::Int32(v) => u32::try_from(*v).unwrap_or(0),
            Bson::Int64(v) => u32::try_from(*v).unwrap_or(0),
            Bson::Double(v) => *v as u32,
            _ => 0,
        };
        let n = pipeline
            .bounded(
                op,
                docs.count(doc! { SCHEMA_VERSION_FIELD: stamp }, None, None),
            )
            .await?
            .map_err(fail)?;
        *counts.entry(version).or_insert(0) += n;
    }
    Ok(counts)
}

/// The schema phase for `meta`: see the module docs.
pub(crate) async fn migrate_entity(
    run: &Run<'_>,
    meta: &'static EntityMeta,
    applied: &BTreeMap<String, Record>,
) -> Result<EntityReport> {
    let current = meta.schema_version;
    let target = run.plan.target(meta);
    let down = target < current;
    // The steps and what the ledger says of them (a changed checksum stops everything here).
    let mut steps = Vec::new();
    let mut recorded = Vec::new();
    for from in 1..current {
        let step = meta.schema_step(from).ok_or_else(|| Error::Migration {
            step: step_name(meta, from),
            reason: "the entity's chain has no such step".into(),
        })?;
        let name = step_name(meta, from);
        let is_recorded = ledger::verify(applied, &name, step.checksum)?;
        recorded.push(is_recorded);
        steps.push(StepReport {
            name,
            checksum: step.checksum.to_owned(),
            state: if is_recorded {
                StepState::AlreadyApplied
            } else {
                StepState::Pending
            },
        });
    }
    let mut report = EntityReport {
        entity: identity(meta),
        target,
        by_version: BTreeMap::new(),
        rewritten: 0,
        rewritten_before: 0,
        newer: 0,
        steps,
    };
    let up_to_date = recorded.iter().all(|r| *r);
    let rolled_back = (target.saturating_sub(1) as usize..recorded.len()).all(|i| !recorded[i]);
    let nothing_to_do = current == 1 || (!down && up_to_date && !run.options.rescan);
    if nothing_to_do && !run.dry_run() {
        return Ok(report);
    }
    let pipeline = Pipeline::new(
        meta,
        Consistency::Strong,
        run.storage.connections(),
        run.storage.cache_handle(),
        None,
    );
    report.by_version = count_by_version(&pipeline).await?;
    report.newer = report
        .by_version
        .iter()
        .filter(|(v, _)| **v > current)
        .map(|(_, n)| n)
        .sum();
    let to_rewrite: u64 = report
        .by_version
        .iter()
        .filter(|(v, _)| {
            if down {
                **v > target && **v <= current
            } else {
                **v < target
            }
        })
        .map(|(_, n)| n)
        .sum();
    let progress_name = format!("progress:schema:{}:{target}", identity(meta));
    let saved = run.ledger.progress(&progress_name).await?;
    let mut by_from =
        ledger::counts_from_bson(saved.as_ref().and_then(|d| d.get_document("by_from").ok()));
    report.rewritten_before = by_from.values().sum();
    // An append-only entity's documents are never changed, by the framework either: they
    // stay at the version they were written at and are upgraded on every read.
    if run.dry_run() || meta.append_only || (down && rolled_back && to_rewrite == 0) {
        return Ok(report);
    }
    let Some(lock) = run.lock else {
        return Ok(report);
    };

    let filter = if down {
        doc! { SCHEMA_VERSION_FIELD: { "$gt": schema::stamp(target), "$lte": schema::stamp(current) } }
    } else {
        doc! { "$or": [
            { SCHEMA_VERSION_FIELD: { "$lt": schema::stamp(target) } },
            { SCHEMA_VERSION_FIELD: { "$exists": false } },
        ] }
    };
    let batch = run.batch_size();
    let rate = run.rate_limit();
    let started = std::time::Instant::now();
    let mut idle = 0;
    loop {
        lock.ensure().await?;
        let found: Vec<Document> = pipeline
            .bounded(
                "read documents to migrate",
                pipeline.docs().find_all(
                    filter.clone(),
                    mongodb::options::FindOptions::builder()
                        .limit(i64::try_from(batch).unwrap_or(i64::MAX))
                        .build(),
                ),
            )
            .await?
            .map_err(|e| Error::mongo(pipeline.op("read documents to migrate"), e))?;
        if found.is_empty() {
            break;
        }
        let outcomes: Vec<Result<Rewrite>> = futures::stream::iter(found)
            .map(|d| pipeline.rewrite(d, target))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut done = 0;
        let mut failed = None;
        for outcome in outcomes {
            match outcome {
                Ok(Rewrite::Rewritten { from }) => {
                    *by_from.entry(from).or_insert(0) += 1;
                    done += 1;
                }
                Ok(Rewrite::Current | Rewrite::Changed) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        report.rewritten += done;
        let total: u64 = by_from.values().sum();
        run.ledger
            .save_progress(
                &progress_name,
                lock.token(),
                doc! { "by_from": ledger::counts_to_bson(&by_from), "rewritten": i64::try_from(total).unwrap_or(i64::MAX), "target": i64::from(target) },
            )
            .await?;
        run.report(Progress {
            phase: Phase::Schema,
            step: format!("schema:{}", identity(meta)),
            done: total,
            total: Some(report.rewritten_before + to_rewrite),
            elapsed: run.started.elapsed(),
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if run.crash_point(done) {
            return Err(Error::Timeout {
                component: Component::Mongodb,
                operation: "injected fault: the migrator stopped here, as if its process died",
                after: Duration::ZERO,
            });
        }
        if done == 0 {
            // Everything found is being written by someone else: wait for them.
            idle += 1;
            if idle > MAX_IDLE_BATCHES {
                return Err(Error::Migration {
                    step: format!("schema:{}", identity(meta)),
                    reason: "documents kept changing under the migrator; run it again".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50 * u64::from(idle.min(20)))).await;
        } else {
            idle = 0;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(report.rewritten as f64 / f64::from(rate));
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }

    // Nothing left behind: record (or, for a rollback, forget) the steps.
    lock.ensure().await?;
    for (i, step) in report.steps.iter_mut().enumerate() {
        let from = i as u32 + 1;
        if down {
            if from >= target && recorded[i] {
                run.ledger
                    .forget(&step.name, run.host, lock.token())
                    .await?;
                step.state = StepState::RolledBack;
            }
            continue;
        }
        if recorded[i] {
            continue;
        }
        let through: u64 = by_from
            .iter()
            .filter(|(v, _)| **v <= from)
            .map(|(_, n)| n)
            .sum();
        let s = meta.schema_step(from).expect("checked above");
        run.ledger
            .record(
                &step.name,
                "schema",
                s.checksum,
                run.host,
                lock.token(),
                doc! {
                    "entity": meta.name, "namespace": format!("{}.{}", meta.database, meta.collection),
                    "from": i64::from(from), "to": i64::from(from + 1), "step": s.name,
                    "documents": i64::try_from(through).unwrap_or(i64::MAX),
                },
            )
            .await?;
        step.state = StepState::Applied;
    }
    run.ledger.clear_progress(&progress_name).await?;
    Ok(report)
}
