//! The transactional branch of the events step, taken where the server has multi-document
//! transactions (a replica set): the records go in as `ready` and the write is applied in one
//! transaction, which the commit decides. Everything else (the records, the fault points, the
//! apply step) is shared with the transaction-free branch in [`events`](super::events).
//!
//! Transient errors (`TransientTransactionError`) run the transaction again, and a commit
//! whose outcome is unknown (`UnknownTransactionCommitResult`) is committed again. A write
//! error aborts a transaction, so documents an insert batch could not write are left out and
//! the transaction is run again without them: a batch reports per document on both branches.

use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};

use crate::backend::Session;
use crate::connection::FaultPoint;
use crate::error::{Error, Result};
use crate::outbox::PendingEvent;
use crate::repo::apply::{RawOutcome, RawWrite};
use crate::repo::pipeline::Pipeline;
use crate::telemetry::metrics as telemetry;

/// Attempts of a transaction that fails with a transient error.
const ATTEMPTS: u32 = 5;

/// Records `groups` and applies `write` in one transaction.
pub(crate) async fn record_and_apply(
    p: &Pipeline,
    operation: &'static str,
    mut groups: Vec<Vec<PendingEvent>>,
    mut write: RawWrite,
) -> Result<RawOutcome> {
    let outbox = p.outbox()?;
    let mut session = p.conn().start_session().await?;
    // Where each remaining document of an insert batch was in the caller's batch.
    let mut positions: Vec<usize> = (0..groups.len()).collect();
    let mut refused: Vec<(usize, Error)> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        session
            .start_transaction(Some(p.consistency().write_concern()))
            .await
            .map_err(|e| Error::mongo("start transaction", e))?;
        let all: Vec<PendingEvent> = groups.iter().flatten().cloned().collect();
        let applied = async {
            outbox.record(&all, Some(&mut session)).await?;
            p.conn().fault(FaultPoint::OutboxAfterPrepare)?;
            p.exec(operation, &write, Some(&mut session)).await
        }
        .await;
        let outcome = match applied {
            Err(e) => {
                abort(&mut session).await;
                if attempt < ATTEMPTS && transient(&e) {
                    continue;
                }
                return Err(e);
            }
            Ok(RawOutcome::Inserted(results)) if results.iter().any(Result::is_err) => {
                abort(&mut session).await;
                let mut keep = Vec::new();
                for (i, r) in results.into_iter().enumerate() {
                    match r {
                        Ok(()) => keep.push(i),
                        Err(e) => refused.push((positions[i], e)),
                    }
                }
                positions = keep.iter().map(|&i| positions[i]).collect();
                let mut remaining = Vec::with_capacity(keep.len());
                for &i in &keep {
                    remaining.push(std::mem::take(&mut groups[i]));
                }
                groups = remaining;
                write.retain_inserts(&keep);
                if positions.is_empty() {
                    return Ok(batch_outcome(0, refused));
                }
                continue;
            }
            Ok(o) => o,
        };
        if !outcome.happened(0) {
            // Nothing was written, so no event may be either.
            abort(&mut session).await;
            return Ok(outcome);
        }
        p.conn().fault(FaultPoint::OutboxAfterWrite)?;
        match commit(&mut session).await {
            Ok(()) if refused.is_empty() => return Ok(outcome),
            Ok(()) => return Ok(batch_outcome(positions.len(), refused)),
            Err(e) if attempt < ATTEMPTS && transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Aborts (best effort: an abort that fails leaves the server to time the transaction out).
async fn abort(session: &mut Session) {
    let _ = session.abort_transaction().await;
    telemetry::transaction(false);
}

/// Commits, again while the outcome is unknown.
async fn commit(session: &mut Session) -> Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        match session.commit_transaction().await {
            Ok(()) => {
                telemetry::transaction(true);
                return Ok(());
            }
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < ATTEMPTS => {}
            Err(e) => {
                // Not committed: the server aborts it.
                telemetry::transaction(false);
                return Err(Error::mongo("commit transaction", e));
            }
        }
    }
}

/// The report of a batch of `written + refused.len()` documents.
fn batch_outcome(written: usize, refused: Vec<(usize, Error)>) -> RawOutcome {
    let mut results: Vec<Result<()>> = (0..written + refused.len()).map(|_| Ok(())).collect();
    for (i, e) in refused {
        if let Some(slot) = results.get_mut(i) {
            *slot = Err(e);
        }
    }
    RawOutcome::Inserted(results)
}

fn transient(e: &Error) -> bool {
    matches!(e, Error::Mongo { source, .. } if source.contains_label(TRANSIENT_TRANSACTION_ERROR))
}
