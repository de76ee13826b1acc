//! The MongoDB driver's monitoring events, turned into metrics and the slow-command log.
//!
//! - Pool (CMAP) events: `caas_mongodb_pool_connections` {state = `open` | `in_use`},
//!   `caas_mongodb_pool_max_size`, `caas_mongodb_pool_wait_seconds` (checkout started →
//!   checked out or failed, as the driver measures it) and
//!   `caas_mongodb_pool_checkout_failures_total` {reason}.
//! - Command events: `caas_mongodb_command_duration_seconds` {command},
//!   `caas_mongodb_command_failures_total` {command}, and commands slower than
//!   `mongodb.slow_command_threshold`: a warning under target `caas_storage::slow_query` with
//!   the command's name, database, collection, duration and *shape* (field names and value
//!   types, never values: see `redact::shape`), counted in `caas_mongodb_slow_commands_total`.
//!
//! The command handler runs on the driver's path and stays cheap: a started command's
//! document is moved (not copied) into a map keyed by request id, and taken back out when the
//! command ends; its shape is computed only for a slow one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::metrics::{counter, gauge, histogram};
use mongodb::bson::Document;
use mongodb::event::cmap::{CmapEvent, ConnectionCheckoutFailedReason};
use mongodb::event::command::{CommandEvent, CommandStartedEvent};

use super::metrics::names::*;

/// Target of the slow-command warnings.
pub(crate) const SLOW_QUERY_TARGET: &str = "caas_storage::slow_query";

/// Commands in flight at most remembered (a safety bound: every started command ends with a
/// succeeded or failed event).
const MAX_IN_FLIGHT: usize = 100_000;

/// The pool gauges, summed over the servers of one client.
#[derive(Debug, Default)]
pub(crate) struct PoolGauges {
    open: AtomicI64,
    in_use: AtomicI64,
}

/// The CMAP handler of a client whose pools hold at most `max_pool_size` connections each.
pub(crate) fn pool_handler(max_pool_size: u32) -> impl Fn(CmapEvent) + Send + Sync + 'static {
    let gauges = Arc::new(PoolGauges::default());
    gauge!(MONGODB_POOL_MAX_SIZE).set(f64::from(max_pool_size));
    move |event| {
        let g = &gauges;
        match event {
            CmapEvent::PoolCreated(_) | CmapEvent::PoolReady(_) => {
                gauge!(MONGODB_POOL_MAX_SIZE).set(f64::from(max_pool_size));
            }
            CmapEvent::ConnectionCreated(_) => set(&g.open, 1, "open"),
            CmapEvent::ConnectionClosed(_) => set(&g.open, -1, "open"),
            CmapEvent::ConnectionCheckedOut(e) => {
                set(&g.in_use, 1, "in_use");
                histogram!(MONGODB_POOL_WAIT_SECONDS).record(e.duration.as_secs_f64());
            }
            CmapEvent::ConnectionCheckedIn(_) => set(&g.in_use, -1, "in_use"),
            CmapEvent::ConnectionCheckoutFailed(e) => {
                histogram!(MONGODB_POOL_WAIT_SECONDS).record(e.duration.as_secs_f64());
                let reason = match e.reason {
                    ConnectionCheckoutFailedReason::Timeout => "timeout",
                    ConnectionCheckoutFailedReason::ConnectionError => "connection_error",
                    _ => "other",
                };
                counter!(MONGODB_POOL_CHECKOUT_FAILURES_TOTAL, "reason" => reason).increment(1);
            }
            _ => {}
        }
    }
}

fn set(counter: &AtomicI64, delta: i64, state: &'static str) {
    let now = (counter.fetch_add(delta, Ordering::Relaxed) + delta).max(0);
    gauge!(MONGODB_POOL_CONNECTIONS, "state" => state).set(now as f64);
}

/// A callback for every command the driver starts.
pub(crate) type CommandLog = Arc<dyn Fn(&CommandStartedEvent) + Send + Sync>;

/// A command in flight: what the slow-command log needs once it ends.
struct Started {
    db: String,
    command: Document,
}

/// The command monitoring handler: metrics, the slow-command log, and `log` (the command log
/// of [`StorageBuilder::on_command`](crate::StorageBuilder::on_command), or the debug log)
/// for every started command.
pub(crate) fn command_handler(
    slow_threshold: Duration,
    log: Option<CommandLog>,
) -> impl Fn(CommandEvent) + Send + Sync + 'static {
    let in_flight: Mutex<HashMap<i32, Started>> = Mutex::new(HashMap::new());
    move |event| match event {
        CommandEvent::Started(e) => {
            if let Some(log) = &log {
                log(&e);
            }
            let mut map = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_IN_FLIGHT {
                map.clear();
            }
            map.insert(
                e.request_id,
                Started {
                    db: e.db,
                    command: e.command,
                },
            );
        }
        CommandEvent::Succeeded(e) => {
            let started = in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&e.request_id);
            ended(&e.command_name, e.duration, started, slow_threshold, false);
        }
        CommandEvent::Failed(e) => {
            let started = in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&e.request_id);
            ended(&e.command_name, e.duration, started, slow_threshold, true);
        }
        _ => {}
    }
}

fn ended(
    name: &str,
    duration: Duration,
    started: Option<Started>,
    slow_threshold: Duration,
    failed: bool,
) {
    let command = command_label(name);
    histogram!(MONGODB_COMMAND_DURATION_SECONDS, "command" => command.clone())
        .record(duration.as_secs_f64());
    if failed {
        counter!(MONGODB_COMMAND_FAILURES_TOTAL, "command" => command.clone()).increment(1);
    }
    if duration < slow_threshold {
        return;
    }
    counter!(MONGODB_SLOW_COMMANDS_TOTAL, "command" => command).increment(1);
    let Some(started) = started else {
        tracing::warn!(target: SLOW_QUERY_TARGET, command = name, duration_ms = duration.as_secs_f64() * 1000.0, failed, "slow MongoDB command");
        return;
    };
    // The first key names the command; its value is the collection for collection commands.
    let collection = started.command.get_str(name).unwrap_or("");
    let shape = crate::redact::shape(&started.command);
    tracing::warn!(
        target: SLOW_QUERY_TARGET,
        command = name,
        database = %started.db,
        collection,
        duration_ms = duration.as_secs_f64() * 1000.0,
        failed,
        shape = %shape,
        "slow MongoDB command"
    );
}

/// The label of a command name: the common ones without allocating.
fn command_label(name: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 24] = [
        "find",
        "insert",
        "update",
        "delete",
        "findAndModify",
        "aggregate",
        "count",
        "distinct",
        "getMore",
        "killCursors",
        "createIndexes",
        "listIndexes",
        "dropIndexes",
        "listCollections",
        "create",
        "drop",
        "hello",
        "isMaster",
        "ping",
        "buildInfo",
        "commitTransaction",
        "abortTransaction",
        "endSessions",
        "serverStatus",
    ];
    match KNOWN.iter().find(|k| **k == name) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(name.to_owned()),
    }
}
