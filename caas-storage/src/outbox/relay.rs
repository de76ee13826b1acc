//! [`OutboxRelay`]: publishes the `ready` records of the shards it leases to Kafka.
//!
//! One drain pass, per database: keep the shard leases fresh (see [`lease`](super::lease)),
//! reconcile stale `prepared` records of the held shards, read the oldest `ready` records of
//! those shards, hold back any event whose aggregate still has an earlier revision pending,
//! send the rest (key = aggregate id, value = envelope JSON, headers from
//! [`EventEnvelope::headers`]), await their delivery reports and mark them `published`.
//! Failures back off with jitter and park after `max_attempts` (copied to a dead-letter topic
//! when one is configured). The pass never waits longer than its operation bounds.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use super::envelope::{now_millis, EventEnvelope};
use super::lease::ShardLeases;
use super::metrics::{Counters, RelayMetrics};
use super::record::{
    record_from_doc, EventState, Head, OutboxLag, OutboxRecord, ReconcileReport,
    DEFAULT_RECONCILE_AFTER, DEFAULT_SHARD_COUNT,
};
use super::store::OutboxStore;
use crate::connection::breaker::Permit;
use crate::connection::{topics, Connections};
use crate::error::{Error, Result};
use crate::telemetry::metrics as telemetry;

/// How long topic creation waits before giving up (and trying again later).
const TOPIC_CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying a failed topic creation or check.
const TOPIC_RETRY: Duration = Duration::from_secs(10);
/// Pause between checks of the declared topics once one succeeded (drift can be fixed, or
/// appear, while the relay runs).
const TOPIC_RECHECK: Duration = Duration::from_secs(300);

/// Settings of an [`OutboxRelay`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelayOptions {
    /// The databases whose outboxes this relay drains.
    pub databases: Vec<String>,
    /// Number of shards (must match the writers' [`OutboxStore::with_shard_count`]).
    pub shard_count: u32,
    /// Most events read and published per database per pass.
    pub batch_size: usize,
    /// Pause between passes that found no full batch.
    pub poll_interval: Duration,
    /// Lifetime of a relay's heartbeat, which keeps all its shard leases; renewed every third
    /// of it. A crashed relay's shards are taken over within about `lease_ttl * 4/3`. Relay
    /// clocks must agree to well within a third of it.
    pub lease_ttl: Duration,
    /// Delivery attempts before an event is parked.
    pub max_attempts: u32,
    /// Backoff after the first failure; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Age after which `prepared` records are reconciled (see [`OutboxStore::reconcile`]).
    pub reconcile_after: Duration,
    /// Largest disagreement between the clocks of the hosts that write events. Under a
    /// backlog, events recorded within this much of the newest event read wait for a later
    /// pass, so that an earlier revision stamped by a slower clock cannot be overtaken.
    pub max_clock_skew: Duration,
    /// How often the backlog gauges (`pending`, `oldest_pending_age_ms`) are refreshed.
    pub lag_interval: Duration,
    /// Topic parked events are copied to, if any.
    pub dlq_topic: Option<String>,
    /// Create missing undeclared topics before publishing to them (only reached under
    /// `kafka.undeclared_topics = "warn"`; declared topics follow `kafka.create_topics`).
    pub create_topics: bool,
    /// Partitions of undeclared topics the relay creates.
    pub topic_partitions: i32,
    /// Replication factor of undeclared topics the relay creates; -1 (the default) takes the
    /// broker's `default.replication.factor`, so that a multi-broker cluster never gets 1 by
    /// default. Declared topics take theirs from `kafka.topics`.
    pub topic_replication: i32,
    /// This relay's identity in leases (unique per process).
    pub instance_id: String,
    /// Bound on each MongoDB operation.
    pub op_timeout: Duration,
    /// What happens to delivered records: see [`RelayArchive`]. Default
    /// [`RelayArchive::Auto`].
    pub archive: RelayArchive,
}

/// What the relay does with the records it delivered (`outbox.relay.archive`).
///
/// Either way a batch costs a fixed number of statements, never one per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RelayArchive {
    /// `bulk` where the server has no multi-document transactions, `off` where it has them.
    /// Without transactions, reconciliation of stale `prepared` records reads published
    /// records (rules 1 and 2 of docs/outbox.md), so they are kept; with transactions events
    /// are recorded with their write and nothing needs them.
    #[default]
    Auto,
    /// Copy each batch to `caas_outbox_published` (one `insert_many`), then delete it from
    /// the outbox (one `delete_many`). Kept for `retention.published_events`, for audits and
    /// reconciliation.
    Bulk,
    /// Delete each batch from the outbox (one `delete_many`) and keep no copy: the least
    /// database work a relay can do. Without transactions, a stale `prepared` event whose
    /// rival at the same revision was already published and removed is decided from the
    /// document alone (its op stamp while the document is at that revision, else its version).
    Off,
}

impl RelayArchive {
    /// Whether delivered records are copied to the archive on a server with (`true`) or
    /// without transactions.
    pub fn keeps_copies(self, transactions: bool) -> bool {
        match self {
            RelayArchive::Auto => !transactions,
            RelayArchive::Bulk => true,
            RelayArchive::Off => false,
        }
    }
}

impl std::str::FromStr for RelayArchive {
    type Err = Error;

    /// `auto`, `bulk` or `off`; anything else is an error naming `outbox.relay.archive`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(RelayArchive::Auto),
            "bulk" => Ok(RelayArchive::Bulk),
            "off" => Ok(RelayArchive::Off),
            other => Err(Error::config(
                "outbox.relay.archive",
                format!("`{other}` is not one of auto, bulk, off"),
            )),
        }
    }
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            databases: Vec::new(),
            shard_count: DEFAULT_SHARD_COUNT,
            batch_size: 200,
            poll_interval: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(15),
            max_attempts: 8,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            reconcile_after: DEFAULT_RECONCILE_AFTER,
            max_clock_skew: Duration::from_secs(2),
            lag_interval: Duration::from_secs(5),
            dlq_topic: None,
            create_topics: true,
            topic_partitions: 3,
            topic_replication: -1,
            instance_id: uuid::Uuid::now_v7().hyphenated().to_string(),
            op_timeout: Duration::from_secs(10),
            archive: RelayArchive::Auto,
        }
    }
}

impl RelayOptions {
    /// Defaults, draining `databases`.
    pub fn for_databases<I, S>(databases: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RelayOptions {
            databases: databases.into_iter().map(Into::into).collect(),
            ..RelayOptions::default()
        }
    }

    fn check(&self) -> Result<()> {
        let bad =
            |key: &str, reason: &str| Err(Error::config(format!("outbox.relay.{key}"), reason));
        if self.databases.is_empty() {
            return bad("databases", "name at least one database to drain");
        }
        if self.shard_count == 0 {
            return bad("shard_count", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return bad("lease_ttl", "must be at least 300ms");
        }
        if self.instance_id.is_empty() {
            return bad("instance_id", "may not be empty");
        }
        if self.topic_partitions < 1 {
            return bad("topic_partitions", "must be at least 1");
        }
        if self.topic_replication < 1 && self.topic_replication != -1 {
            return bad(
                "topic_replication",
                "must be at least 1, or -1 for the broker's default",
            );
        }
        Ok(())
    }

    /// Backoff before attempt `attempts + 1`: `base * 2^(attempts-1)` capped at the maximum,
    /// with "equal jitter" (a uniform draw from the upper half).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self
            .backoff_base
            .saturating_mul(1_u32 << exp)
            .min(self.backoff_max);
        let half = full / 2;
        let span = u64::try_from((full - half).as_micros()).unwrap_or(u64::MAX);
        let r = std::collections::hash_map::RandomState::new().hash_one((attempts, now_millis()));
        half + Duration::from_micros(if span == 0 { 0 } else { r % (span + 1) })
    }
}

/// What one [`OutboxRelay::drain_once`] pass did, over all databases.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DrainReport {
    /// Events delivered and marked published.
    pub published: u64,
    /// Failed delivery attempts.
    pub failed: u64,
    /// Events parked in this pass.
    pub parked: u64,
    /// Events held back behind an earlier pending event of their aggregate (or not yet due).
    pub deferred: u64,
    /// Reconciliation of stale prepared records.
    pub reconciled: ReconcileReport,
    /// Shard leases held after the pass.
    pub shards_held: u64,
    /// Whether some database had a full batch (call again without waiting).
    pub more: bool,
    /// Errors met (logged; the pass went on with the next database).
    pub errors: Vec<String>,
}

struct TopicState {
    created: bool,
    retry_at: Instant,
}

/// The relay's view of the declared topics (`kafka.topics`): checked (and created) when it
/// starts, again every [`TOPIC_RECHECK`], and every [`TOPIC_RETRY`] while a check fails.
#[derive(Default)]
struct Declared {
    /// A check succeeded: declared topics may be published to (before it, they wait, so that
    /// a broker's auto-creation cannot make them with other settings).
    checked: bool,
    next_check: Option<Instant>,
    /// Topics not published to: not creatable, drifted under `kafka.topic_drift = "error"`,
    /// or undeclared under `kafka.undeclared_topics = "error"`.
    blocked: std::collections::HashSet<String>,
}
struct RelayInner {
    conn: Connections,
    options: RelayOptions,
    stores: Vec<OutboxStore>,
    leases: tokio::sync::Mutex<Vec<ShardLeases>>,
    counters: Arc<Counters>,
    topics: std::sync::Mutex<HashMap<String, TopicState>>,
    declared: std::sync::Mutex<Declared>,
    indexes_ready: AtomicBool,
    last_lag: std::sync::Mutex<Option<Instant>>,
}

/// Publishes outbox records to Kafka. Cheap to clone; run it with [`spawn`](Self::spawn) or
/// call [`drain_once`](Self::drain_once) in a loop of your own.
#[derive(Clone)]
pub struct OutboxRelay {
    inner: Arc<RelayInner>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("instance_id", &self.inner.options.instance_id)
            .field("databases", &self.inner.options.databases)
            .finish()
    }
}

impl OutboxRelay {
    /// A relay over `conn`'s MongoDB and shared Kafka producer. Fails on invalid options,
    /// and on a dead-letter topic missing from `kafka.topics` under
    /// `kafka.undeclared_topics = "error"`.
    pub(crate) fn new(conn: &Connections, options: RelayOptions) -> Result<Self> {
        options.check()?;
        if let Some(dlq) = &options.dlq_topic {
            conn.check_topic(
                "the outbox relay's dead-letter topic (outbox.relay.dlq_topic)",
                dlq,
            )?;
        }
        let stores = options
            .databases
            .iter()
            .map(|db| {
                OutboxStore::new(conn, db)
                    .with_shard_count(options.shard_count)
                    .with_reconcile_after(options.reconcile_after)
                    .with_op_timeout(options.op_timeout)
            })
            .collect();
        let leases = options
            .databases
            .iter()
            .map(|db| {
                ShardLeases::new(
                    conn,
                    db,
                    &options.instance_id,
                    options.shard_count,
                    options.lease_ttl,
                    options.op_timeout,
                )
            })
            .collect();
        Ok(OutboxRelay {
            inner: Arc::new(RelayInner {
                conn: conn.clone(),
                counters: Arc::new(Counters::new(options.instance_id.clone())),
                options,
                stores,
                leases: tokio::sync::Mutex::new(leases),
                topics: std::sync::Mutex::new(HashMap::new()),
                declared: std::sync::Mutex::new(Declared::default()),
                indexes_ready: AtomicBool::new(false),
                last_lag: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The options the relay runs with.
    pub fn options(&self) -> &RelayOptions {
        &self.inner.options
    }

    /// The outbox of each drained database.
    pub fn stores(&self) -> &[OutboxStore] {
        &self.inner.stores
    }

    /// A snapshot of the relay's counters.
    pub fn metrics(&self) -> RelayMetrics {
        self.inner.counters.snapshot()
    }

    /// Runs the relay in a tokio task until [`RelayHandle::shutdown`]. Dropping the handle
    /// detaches the relay, which then runs at its normal pace until the process ends.
    pub fn spawn(&self) -> RelayHandle {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let relay = self.clone();
        let join = tokio::spawn(async move {
            loop {
                if *stopped.borrow() {
                    break;
                }
                let more = match relay.drain_once().await {
                    Ok(r) => r.more,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay pass failed");
                        false
                    }
                };
                if !more {
                    tokio::select! {
                        _ = tokio::time::sleep(relay.inner.options.poll_interval) => {}
                        changed = stopped.changed() => {
                            if changed.is_err() {
                                // The handle was dropped: the relay is detached and goes on at
                                // its normal pace (`changed` would return at once from now on).
                                tokio::time::sleep(relay.inner.options.poll_interval).await;
                            }
                        }
                    }
                }
            }
            relay.release().await;
        });
        RelayHandle {
            stop,
            join,
            counters: self.inner.counters.clone(),
            bound: self.shutdown_bound(),
        }
    }

    /// The longest a pass can take (every bound it waits on, plus slack).
    fn shutdown_bound(&self) -> Duration {
        let k = self.inner.conn.config().kafka.message_timeout;
        let o = &self.inner.options;
        (k + Duration::from_secs(5)) * 2
            + TOPIC_CREATE_TIMEOUT
            + o.op_timeout * 8 * (o.databases.len() as u32 + 1)
    }

    /// Releases every shard lease this relay holds (for a clean stop when driving
    /// [`drain_once`](Self::drain_once) yourself; the spawned task does it on shutdown).
    pub async fn release(&self) {
        let mut leases = self.inner.leases.lock().await;
        for l in leases.iter_mut() {
            l.release_all().await;
        }
        self.inner.counters.shards_held.store(0, Ordering::Relaxed);
    }

    /// One pass over every database: leases, reconciliation, one batch published.
    pub async fn drain_once(&self) -> Result<DrainReport> {
        let inner = &self.inner;
        inner.counters.passes.fetch_add(1, Ordering::Relaxed);
        let mut report = DrainReport::default();
        if !inner.indexes_ready.load(Ordering::Relaxed) {
            let mut ok = true;
            for s in &inner.stores {
                if let Err(e) = s.ensure_indexes().await {
                    ok = false;
                    tracing::warn!(database = s.database(), error = %e, "could not create outbox indexes");
                }
            }
            inner.indexes_ready.store(ok, Ordering::Relaxed);
        }
        let mut leases = inner.leases.lock().await;
        for (store, lease) in inner.stores.iter().zip(leases.iter_mut()) {
            if let Err(e) = self.drain_database(store, lease, &mut report).await {
                tracing::warn!(database = store.database(), error = %e, "outbox relay pass failed for a database");
                report.errors.push(format!("{}: {e}", store.database()));
            }
        }
        report.shards_held = leases.iter().map(|l| l.held_count() as u64).sum();
        drop(leases);
        inner
            .counters
            .shards_held
            .store(report.shards_held, Ordering::Relaxed);
        inner.counters.record_reconcile(&report.reconciled);
        inner.counters.tick();
        self.refresh_lag().await;
        Ok(report)
    }

    async fn refresh_lag(&self) {
        let inner = &self.inner;
        {
            let mut last = inner.last_lag.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < inner.options.lag_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut total = OutboxLag::default();
        for s in &inner.stores {
            match s.lag().await {
                Ok(l) => {
                    telemetry::outbox_backlog(s.database(), l.pending, l.oldest_pending_age());
                    total.merge(&l);
                }
                Err(e) => {
                    tracing::warn!(database = s.database(), error = %e, "could not measure outbox lag");
                    return;
                }
            }
        }
        inner.counters.record_lag(&total);
    }

    async fn drain_database(
        &self,
        store: &OutboxStore,
        lease: &mut ShardLeases,
        report: &mut DrainReport,
    ) -> Result<()> {
        let o = &self.inner.options;
        if lease.due() {
            if let Err(e) = lease.maintain().await {
                // Shards whose leases are still comfortably valid are drained anyway.
                tracing::warn!(database = store.database(), error = %e, "could not maintain outbox shard leases");
                report.errors.push(format!("{}: {e}", store.database()));
            }
        }
        let owned = lease.owned();
        if owned.is_empty() {
            return Ok(());
        }
        let shards = shard_filter(&owned, o.shard_count);

        // The one read every pass needs: pending records oldest first, up to one more than
        // a batch of ready ones and on to the clock-skew horizon (one collection scan on
        // servers that scan).
        let skew_ms = i64::try_from(o.max_clock_skew.as_millis()).unwrap_or(i64::MAX / 4);
        let mut pending = store
            .pending_window(shards.clone(), o.batch_size, skew_ms)
            .await?;
        if !pending.prepared.is_empty() {
            let rec = store
                .reconcile_heads(&pending.prepared, DateTime::now())
                .await?;
            report.reconciled.merge(&rec);
            if rec.ready + rec.abandoned + rec.parked > 0 {
                pending = store
                    .pending_window(shards.clone(), o.batch_size, skew_ms)
                    .await?;
            }
        }
        if pending.window.is_empty() {
            return Ok(());
        }
        report.more |= pending.truncated;
        let window = pending.window;

        // Pending events outside the window: the lowest revision per aggregate.
        let mut earliest_outside: HashMap<String, (String, i64)> = HashMap::new();
        let mut note = |h: &Head| {
            let here = (h.inc.clone(), h.revision);
            let e = earliest_outside
                .entry(h.agg.clone())
                .or_insert(here.clone());
            if here < *e {
                *e = here;
            }
        };
        // A parked event holds its aggregate's later revisions back, as a pending one does.
        // Outside the window, events created after its last one remain; events of one
        // aggregate are recorded in revision order, so an earlier revision of an event in the
        // window can only be out there if clocks disagree, and then within `max_clock_skew`
        // of the window's end: the read went on that far, and `beyond` is what it found.
        pending
            .prepared
            .iter()
            .chain(&pending.parked)
            .chain(&pending.beyond)
            .for_each(&mut note);
        let edge_after = None;

        let (eligible, deferred) = select(&window, &earliest_outside, edge_after, now_millis())?;
        report.deferred += deferred;
        Counters::add(&self.inner.counters.deferred, deferred);
        if eligible.is_empty() {
            return Ok(());
        }
        self.publish(store, eligible, report).await
    }

    async fn publish(
        &self,
        store: &OutboxStore,
        records: Vec<(OutboxRecord, Document)>,
        report: &mut DrainReport,
    ) -> Result<()> {
        let inner = &self.inner;
        let mut topics: Vec<&str> = records.iter().map(|(r, _)| r.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for t in topics {
            self.ensure_topic(t).await;
        }
        // The Kafka circuit breaker: while it is open nothing is sent (the events stay ready
        // and no attempt is counted); after the cool-down one event goes as the probe.
        let breaker = inner.conn.topics().breaker().clone();
        let mut permit = Some(breaker.permit());
        if permit.as_ref().is_some_and(Permit::skips) {
            report.deferred += records.len() as u64;
            Counters::add(&inner.counters.deferred, records.len() as u64);
            return Ok(());
        }
        let probe = permit.as_ref().is_some_and(Permit::is_probe);
        let (records, held) = self.sendable(records, probe);
        report.deferred += held;
        Counters::add(&inner.counters.deferred, held);

        let producer = inner.conn.kafka();
        let wait = inner.conn.config().kafka.message_timeout + Duration::from_secs(5);
        let o = &inner.options;
        // One chain per aggregate, in revision order (as `select` left them). Each wave sends
        // the next revision of every chain; a chain whose revision fails stops for this pass:
        // a later revision is never sent before an earlier one is delivered, so one Kafka
        // refusal cannot reorder an aggregate.
        let mut chains: Vec<std::collections::VecDeque<(OutboxRecord, Document)>> = Vec::new();
        let mut chain_of: HashMap<String, usize> = HashMap::new();
        for (r, d) in records {
            let agg = d.get_str("agg").unwrap_or_default().to_owned();
            let i = *chain_of.entry(agg).or_insert_with(|| {
                chains.push(std::collections::VecDeque::new());
                chains.len() - 1
            });
            chains[i].push_back((r, d));
        }
        let mut delivered = Vec::new();
        let mut failed: Vec<(OutboxRecord, String)> = Vec::new();
        loop {
            let wave: Vec<(usize, OutboxRecord, Document)> = chains
                .iter_mut()
                .enumerate()
                .filter_map(|(i, c)| c.pop_front().map(|(r, d)| (i, r, d)))
                .collect();
            if wave.is_empty() {
                break;
            }
            if breaker.is_open() && permit.is_none() {
                // Opened by this pass's failures: the rest waits for the cool-down.
                let left = wave.len() + chains.iter().map(|c| c.len()).sum::<usize>();
                report.deferred += left as u64;
                Counters::add(&inner.counters.deferred, left as u64);
                break;
            }
            let mut pending = Vec::with_capacity(wave.len());
            let mut send_unreachable = 0_u32;
            for (i, r, d) in wave {
                let value = match r.envelope.to_json() {
                    Ok(v) => v,
                    Err(e) => {
                        chains[i].clear();
                        failed.push((r, e.to_string()));
                        continue;
                    }
                };
                let key = r.envelope.kafka_key();
                // The trace of the write that recorded the event goes on with it.
                let trace = d.get_str(super::record::TRACEPARENT_FIELD).ok();
                let extra: &[(&str, &str)] = match &trace {
                    Some(t) => &[("traceparent", t)],
                    None => &[],
                };
                let topic = inner.conn.config().kafka.topic_name(&r.topic);
                let record = FutureRecord::to(&topic)
                    .key(key.as_str())
                    .payload(value.as_slice())
                    .headers(headers(&r.envelope, extra));
                match producer.send_result(record) {
                    Ok(delivery) => pending.push((i, r, d, delivery)),
                    Err((e, _)) => {
                        send_unreachable += u32::from(topics::is_transport(&e));
                        chains[i].clear();
                        failed.push((r, e.to_string()));
                    }
                }
            }
            let outcomes =
                futures::future::join_all(pending.into_iter().map(|(i, r, d, f)| async move {
                    (i, r, d, tokio::time::timeout(wait, f).await)
                }))
                .await;
            let (mut sent, mut unreachable) = (0_u32, 0_u32);
            for (i, r, d, outcome) in outcomes {
                let error = match outcome {
                    Ok(Ok(Ok(_))) => {
                        sent += 1;
                        delivered.push(d);
                        continue;
                    }
                    Ok(Ok(Err((e, _)))) => {
                        unreachable += u32::from(topics::is_transport(&e));
                        e.to_string()
                    }
                    Ok(Err(_)) => "delivery report dropped (producer closed)".into(),
                    Err(_) => {
                        unreachable += 1;
                        format!("no delivery report within {wait:?}")
                    }
                };
                chains[i].clear();
                failed.push((r, error));
            }
            report_to_breaker(
                &breaker,
                permit.take(),
                sent,
                unreachable + send_unreachable,
            );
        }

        let published = delivered.len() as u64;
        let delivered_topics: Vec<String> = delivered
            .iter()
            .map(|d| d.get_str("topic").unwrap_or_default().to_owned())
            .collect();
        let archive = o
            .archive
            .keeps_copies(inner.conn.capabilities().transactions);
        if let Err(e) = store
            .mark_published(delivered, &o.instance_id, archive)
            .await
        {
            // Delivered but not marked: they will be published again (at-least-once).
            tracing::warn!(database = store.database(), error = %e, "could not mark delivered outbox records published");
            report.errors.push(format!("{}: {e}", store.database()));
        }
        report.published += published;
        Counters::add(&inner.counters.published, published);
        for (topic, n) in per_topic(delivered_topics) {
            telemetry::outbox_deliveries(&topic, n, 0, 0);
        }
        let now = DateTime::now();

        if failed.is_empty() {
            return Ok(());
        }
        let mut updates = Vec::with_capacity(failed.len());
        for (r, err) in &failed {
            let attempts = r.attempts + 1;
            let park = attempts >= o.max_attempts;
            tracing::warn!(
                database = store.database(), event_id = %r.envelope.event_id, topic = %r.topic,
                attempts, park, error = %err, "outbox event delivery failed"
            );
            let next = DateTime::from_millis(
                now.timestamp_millis()
                    + i64::try_from(o.backoff(attempts).as_millis()).unwrap_or(i64::MAX / 4),
            );
            let state = if park {
                EventState::Parked
            } else {
                EventState::Ready
            };
            updates.push((
                doc! { "_id": &r.envelope.event_id, "state": EventState::Ready.as_str() },
                doc! { "$set": {
                    "state": state.as_str(), "attempts": i64::from(attempts),
                    "next_attempt_at": next, "last_error": err.as_str(), "updated_at": now,
                } },
            ));
            telemetry::outbox_deliveries(&r.topic, 0, 1, u64::from(park));
            if park {
                report.parked += 1;
                Counters::add(&inner.counters.parked, 1);
                if let Some(dlq) = &o.dlq_topic {
                    self.dead_letter(dlq, r, err).await;
                }
            }
        }
        report.failed += failed.len() as u64;
        Counters::add(&inner.counters.failures, failed.len() as u64);
        store
            .update_each("record outbox delivery failure", updates)
            .await
            .map(drop)
    }

    /// Copies a parked event to the dead-letter topic (best effort: the record stays parked
    /// in the outbox either way).
    async fn dead_letter(&self, dlq: &str, r: &OutboxRecord, err: &str) {
        self.ensure_topic(dlq).await;
        let Ok(value) = r.envelope.to_json() else {
            return;
        };
        let producer = self.inner.conn.kafka();
        let key = r.envelope.kafka_key();
        let topic = self.inner.conn.config().kafka.topic_name(dlq);
        let record = FutureRecord::to(&topic)
            .key(key.as_str())
            .payload(value.as_slice())
            .headers(headers(
                &r.envelope,
                &[("caas_error", err), ("caas_original_topic", &r.topic)],
            ));
        let wait = self.inner.conn.config().kafka.message_timeout + Duration::from_secs(5);
        match tokio::time::timeout(wait, producer.send(record, Duration::from_secs(0))).await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                tracing::warn!(event_id = %r.envelope.event_id, dlq, error = %e, "could not copy a parked event to the dead-letter topic")
            }
            Err(_) => {
                tracing::warn!(event_id = %r.envelope.event_id, dlq, "dead-letter copy timed out")
            }
        }
    }

    /// Makes `topic` ready to publish to. A declared topic: the declared topics are checked
    /// (and created, see [`TopicAdmin`](crate::connection::topics)) when due. An undeclared
    /// one (`kafka.undeclared_topics = "warn"`; under `"error"` it is blocked): created with
    /// the relay's partitions and replication unless it exists or a recent attempt failed.
    /// Failures are logged, not returned.
    async fn ensure_topic(&self, topic: &str) {
        let conn = &self.inner.conn;
        if conn.config().kafka.topic(topic).is_some() {
            return self.ensure_declared().await;
        }
        if conn.check_topic("an outbox event", topic).is_err() {
            let mut declared = self
                .inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if declared.blocked.insert(topic.to_owned()) {
                tracing::error!(
                    topic,
                    "outbox events for an undeclared Kafka topic are held back \
                     (kafka.undeclared_topics = error): declare it in kafka.topics"
                );
            }
            return;
        }
        if !self.inner.options.create_topics {
            return;
        }
        {
            let topics = self.inner.topics.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = topics.get(topic) {
                if t.created || t.retry_at > Instant::now() {
                    return;
                }
            }
        }
        let o = &self.inner.options;
        let created = conn
            .topics()
            .create_undeclared(
                conn.config(),
                topic,
                o.topic_partitions,
                o.topic_replication,
            )
            .await;
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                topic.to_owned(),
                TopicState {
                    created,
                    retry_at: Instant::now() + TOPIC_RETRY,
                },
            );
    }

    /// Checks (and creates) the declared topics when due: at the first pass, every
    /// [`TOPIC_RECHECK`] after a check, every [`TOPIC_RETRY`] after a failed one.
    async fn ensure_declared(&self) {
        {
            let d = self
                .inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if d.next_check.is_some_and(|t| t > Instant::now()) {
                return;
            }
        }
        let conn = &self.inner.conn;
        let k = &conn.config().kafka;
        let outcome = conn.topics().check(conn.config(), k.create_topics).await;
        let mut d = self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(report) => {
                report.log(k.topic_drift);
                let retry = !report.errors.is_empty();
                d.blocked.retain(|t| k.topic(t).is_none());
                d.blocked.extend(report.blocked(k.topic_drift));
                d.checked = true;
                d.next_check =
                    Some(Instant::now() + if retry { TOPIC_RETRY } else { TOPIC_RECHECK });
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check the declared Kafka topics");
                d.next_check = Some(Instant::now() + TOPIC_RETRY);
            }
        }
    }

    /// What this pass may send: per aggregate chain, up to the first event whose topic is
    /// blocked or (declared) not yet checked; with `probe`, the first event alone. Returns
    /// the records and how many were held back.
    fn sendable(
        &self,
        records: Vec<(OutboxRecord, Document)>,
        probe: bool,
    ) -> (Vec<(OutboxRecord, Document)>, u64) {
        let k = &self.inner.conn.config().kafka;
        let d = self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let total = records.len();
        let mut stopped: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(total);
        for (r, doc) in records {
            let agg = doc.get_str("agg").unwrap_or_default().to_owned();
            let waits = d.blocked.contains(&r.topic) || (!d.checked && k.topic(&r.topic).is_some());
            if stopped.contains(&agg) || waits || (probe && !out.is_empty()) {
                // Later revisions of the aggregate wait behind it.
                stopped.insert(agg);
                continue;
            }
            out.push((r, doc));
        }
        let held = (total - out.len()) as u64;
        (out, held)
    }
}

/// Reports one wave's delivery to the Kafka breaker: with `permit` (the pass's first wave:
/// maybe the probe) once, else per failure. A delivered event closes it; each failure of an
/// unreachable cluster counts toward opening it; a refused message (too large, ...) says
/// Kafka is there.
fn report_to_breaker(
    breaker: &crate::connection::breaker::Breaker,
    permit: Option<Permit>,
    sent: u32,
    unreachable: u32,
) {
    let permit = permit.unwrap_or(Permit::Go);
    if sent > 0 || unreachable == 0 {
        permit.success(breaker);
        return;
    }
    permit.failure(breaker);
    for _ in 1..unreachable {
        Permit::Go.failure(breaker);
    }
}

/// How many of `topics` name each topic.
fn per_topic(topics: Vec<String>) -> HashMap<String, u64> {
    let mut n = HashMap::new();
    for t in topics {
        *n.entry(t).or_insert(0) += 1;
    }
    n
}

fn headers(e: &EventEnvelope, extra: &[(&str, &str)]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(8);
    for (k, v) in e.headers() {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_str()),
        });
    }
    for (k, v) in extra {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    h
}

/// `None` when every shard is held (no filter), the shard itself for one, `$in` otherwise.
fn shard_filter(owned: &[u32], shard_count: u32) -> Option<Bson> {
    if owned.len() as u32 >= shard_count {
        return None;
    }
    if let [one] = owned {
        return Some(Bson::Int64(i64::from(*one)));
    }
    Some(Bson::Document(doc! {
        "$in": owned.iter().map(|s| Bson::Int64(i64::from(*s))).collect::<Vec<_>>()
    }))
}

/// Chooses what to publish from a window of ready records (oldest first): per aggregate, in
/// revision order, up to the first event that must wait (an earlier revision pending outside
/// the window, created after `edge_after`, or not yet due after a failure). Returns the
/// records in send order and how many were held back.
fn select(
    window: &[Document],
    earliest_outside: &HashMap<String, (String, i64)>,
    edge_after: Option<i64>,
    now: i64,
) -> Result<(Vec<(OutboxRecord, Document)>, u64)> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<(Head, &Document)>> = HashMap::new();
    for d in window {
        let h = Head::from_doc(d)?;
        if !groups.contains_key(&h.agg) {
            order.push(h.agg.clone());
        }
        groups.entry(h.agg.clone()).or_default().push((h, d));
    }
    let mut out = Vec::with_capacity(window.len());
    let mut deferred = 0;
    for agg in order {
        let mut chain = groups.remove(&agg).unwrap_or_default();
        chain.sort_by(|(a, _), (b, _)| {
            (a.position(), a.created_at, &a.id).cmp(&(b.position(), b.created_at, &b.id))
        });
        let blocked_above = earliest_outside.get(&agg).map(|(i, r)| (i.as_str(), *r));
        for (i, (h, d)) in chain.iter().enumerate() {
            let blocked = blocked_above.is_some_and(|b| b < h.position())
                || edge_after.is_some_and(|t| h.created_at > t);
            if blocked || h.next_attempt_at > now {
                deferred += (chain.len() - i) as u64;
                break;
            }
            out.push((record_from_doc(d)?, (*d).clone()));
        }
    }
    Ok((out, deferred))
}

/// A running relay task.
pub struct RelayHandle {
    stop: tokio::sync::watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    bound: Duration,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("finished", &self.join.is_finished())
            .finish()
    }
}

impl RelayHandle {
    /// A snapshot of the relay's counters.
    pub fn metrics(&self) -> RelayMetrics {
        self.counters.snapshot()
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Stops after the current pass and releases the leases. Bounded: a pass stuck past every
    /// operation bound is aborted (its leases then expire by themselves).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut join = self.join;
        if tokio::time::timeout(self.bound, &mut join).await.is_err() {
            tracing::warn!("outbox relay did not stop in time; aborting it");
            join.abort();
        }
    }

    /// Kills the task where it stands without releasing its leases, as a crash would: other
    /// relays take its shards over when the leases expire.
    pub fn abort(self) {
        self.join.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(agg: &str, id: &str, revision: i64, created: i64, due: i64) -> Document {
        doc! {
            "_id": id, "event_type": "t", "aggregate_type": "A", "aggregate_id": agg,
            "tenant": "t", "revision": revision, "payload": "{}", "topic": "x",
            "state": "ready", "op": id, "agg": agg, "shard": 0_i64, "attempts": 0_i64,
            "created_at": DateTime::from_millis(created),
            "next_attempt_at": DateTime::from_millis(due),
        }
    }

    #[test]
    fn selection_keeps_aggregate_order_and_waits_for_earlier_revisions() {
        let window = vec![
            rec("a", "1", 2, 10, 0),
            rec("b", "2", 7, 11, 0),
            rec("a", "3", 1, 12, 0),
            rec("c", "4", 5, 13, 0),
            rec("c", "5", 6, 14, 0),
            rec("d", "6", 1, 15, 100),
            rec("d", "7", 2, 16, 0),
        ];
        let mut outside = HashMap::new();
        outside.insert("b".to_owned(), (String::new(), 6));
        outside.insert("c".to_owned(), (String::new(), 6));
        let (out, deferred) = select(&window, &outside, None, 50).unwrap();
        let ids: Vec<&str> = out
            .iter()
            .map(|(r, _)| r.envelope.event_id.as_str())
            .collect();
        // a: revision order (3 before 1); b: blocked by revision 6 outside; c: 5 goes, 6 is
        // not blocked by an equal revision; d: first not due, so both wait.
        assert_eq!(ids, ["3", "1", "4", "5"]);
        assert_eq!(deferred, 3);
        // Near the end of a truncated window (created after 12): c and a's revision 1 wait.
        let (out, deferred) = select(&window, &outside, Some(12), 50).unwrap();
        let ids: Vec<&str> = out
            .iter()
            .map(|(r, _)| r.envelope.event_id.as_str())
            .collect();
        assert_eq!(ids, ["3", "1"]);
        assert_eq!(deferred, 5);
    }

    #[test]
    fn selection_orders_incarnations_before_revisions() {
        let with_inc = |id: &str, inc: &str, revision: i64, created: i64| {
            let mut d = rec("a", id, revision, created, 0);
            d.insert("inc", inc);
            d
        };
        // Created again ("i2") after a delete at revision 3 of "i1": 0 and 1 of "i2" follow it.
        let window = vec![
            with_inc("new0", "i2", 0, 10),
            with_inc("old3", "i1", 3, 11),
            with_inc("new1", "i2", 1, 12),
        ];
        let (out, _) = select(&window, &HashMap::new(), None, 50).unwrap();
        let ids: Vec<&str> = out
            .iter()
            .map(|(r, _)| r.envelope.event_id.as_str())
            .collect();
        assert_eq!(ids, ["old3", "new0", "new1"]);
        // The old incarnation's delete pending outside the window holds the new one back.
        let mut outside = HashMap::new();
        outside.insert("a".to_owned(), ("i1".to_owned(), 3));
        let window = vec![with_inc("new0", "i2", 0, 10)];
        let (out, deferred) = select(&window, &outside, None, 50).unwrap();
        assert!(out.is_empty());
        assert_eq!(deferred, 1);
    }

    #[test]
    fn archive_settings_parse_and_bad_ones_name_their_key() {
        assert_eq!("off".parse::<RelayArchive>().unwrap(), RelayArchive::Off);
        assert_eq!(
            " Bulk ".parse::<RelayArchive>().unwrap(),
            RelayArchive::Bulk
        );
        assert_eq!(
            "auto".parse::<RelayArchive>().unwrap(),
            RelayArchive::default()
        );
        let e = "per-event".parse::<RelayArchive>().unwrap_err().to_string();
        assert!(e.contains("outbox.relay.archive"), "{e}");
        assert!(RelayArchive::Auto.keeps_copies(false));
        assert!(!RelayArchive::Auto.keeps_copies(true));
        assert!(!RelayArchive::Off.keeps_copies(false));
        assert!(RelayArchive::Bulk.keeps_copies(true));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let o = RelayOptions {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RelayOptions::default()
        };
        for attempts in 1..20 {
            let d = o.backoff(attempts);
            let full = (Duration::from_millis(100) * 2_u32.pow((attempts - 1).min(10)))
                .min(Duration::from_secs(1));
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn shard_filters() {
        assert_eq!(shard_filter(&[0, 1], 2), None);
        assert_eq!(shard_filter(&[3], 16), Some(Bson::Int64(3)));
        assert!(matches!(shard_filter(&[1, 2], 16), Some(Bson::Document(_))));
    }
}
