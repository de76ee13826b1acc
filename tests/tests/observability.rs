//! Observability against the real servers: the span tree of repository calls and its fields,
//! the metrics recorded through the `metrics` facade, the slow-command log, the trace context
//! carried from a write through the outbox and Kafka to a consumer, and the MongoDB pool and
//! Redis `INFO` metrics.
//!
//! This binary installs a global `tracing` subscriber (a capturing layer) and a global
//! `metrics` recorder (metrics-util's `DebuggingRecorder`): both must see what the driver's
//! and the runtime's background tasks record on other threads. Tests run concurrently, so each
//! uses an entity (a metric label) and a tenant of its own, and reads the captures filtered by
//! them.

use caas_storage_tests as common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use caas_storage::outbox::{envelope_from_message, handle_traced, header_value, RelayOptions};
use caas_storage::prelude::*;
use caas_storage::telemetry::metrics::names;
use caas_storage::trace::TraceContext;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rdkafka::message::OwnedMessage;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const TEST_BOUND: Duration = Duration::from_secs(90);

async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_BOUND, body)
        .await
        .expect("test exceeded its bound");
}

// ---- the entities (one per test: metric labels and captures stay apart) --------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_observe_it", collection = "span_accounts", consistency = read_your_writes,
             cache(ttl = "5m"))]
struct SpanAccount {
    #[repository(id)]
    pub account_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub handle: String,
    #[repository(secret)]
    #[serde(default)]
    pub password_hash: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_observe_it", collection = "metric_items", consistency = read_your_writes,
             cache(ttl = "5m"))]
struct MetricItem {
    #[repository(id)]
    pub item_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub label: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_observe_it", collection = "slow_notes", consistency = strong)]
struct SlowNote {
    #[repository(id)]
    pub note_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_observe_trace_it", collection = "traced_orders", consistency = causal,
             outbox(topic = "test.observability.traced_orders", insert = "order.placed"))]
struct TracedOrder {
    #[repository(id)]
    pub order_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub status: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_observe_it", collection = "pool_pings", consistency = strong)]
struct PoolPing {
    #[repository(id)]
    pub ping_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
}

// ---- capturing tracing layer ------------------------------------------------------------------

/// A span as the layer saw it: name, target, fields (as text), parent's serial.
#[derive(Debug, Clone)]
struct SpanRec {
    serial: u64,
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

/// An event: target, level, fields (the message under `message`), its span's serial.
#[derive(Debug, Clone)]
struct EventRec {
    target: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
    span: Option<u64>,
}

#[derive(Default)]
struct Captured {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
}

/// The serial of a span, kept in its extensions (span ids are reused; serials are not).
struct Serial(u64);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Capture {
    store: Arc<Mutex<Captured>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("new span");
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Serial>().map(|s| s.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut store = self.store.lock().unwrap();
        let serial = store.spans.len() as u64;
        store.spans.push(SpanRec {
            serial,
            name: attrs.metadata().name().to_owned(),
            fields,
            parent,
        });
        drop(store);
        span.extensions_mut().insert(Serial(serial));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(serial) = span.extensions().get::<Serial>().map(|s| s.0) else {
            return;
        };
        let mut store = self.store.lock().unwrap();
        values.record(&mut Fields(&mut store.spans[serial as usize].fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<Serial>().map(|s| s.0));
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.store.lock().unwrap().events.push(EventRec {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            fields,
            span,
        });
    }
}

/// What this binary captured, shared by every test; the metrics recorder likewise.
struct Globals {
    captured: Arc<Mutex<Captured>>,
    snapshotter: Snapshotter,
    /// Metric values accumulated over snapshots (each snapshot drains the recorder).
    totals: Mutex<HashMap<String, Total>>,
}

#[derive(Debug, Clone, Default)]
struct Total {
    /// Counters: the sum; gauges: the largest value seen; histograms: the number of samples.
    value: f64,
    /// Gauges: the last value a snapshot reported.
    last: f64,
}

fn globals() -> &'static Globals {
    static G: OnceLock<Globals> = OnceLock::new();
    G.get_or_init(|| {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let subscriber = tracing_subscriber::registry().with(Capture {
            store: captured.clone(),
        });
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("one global recorder");
        Globals {
            captured,
            snapshotter,
            totals: Mutex::new(HashMap::new()),
        }
    })
}

/// `name{k=v,...}` with labels sorted: the key metrics are looked up by.
fn metric_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

/// Every metric recorded so far, accumulated.
fn metrics() -> HashMap<String, Total> {
    let g = globals();
    let mut totals = g.totals.lock().unwrap();
    for (ck, _, _, value) in g.snapshotter.snapshot().into_vec() {
        let key = ck.key();
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let t = totals.entry(metric_key(key.name(), &labels)).or_default();
        match value {
            DebugValue::Counter(n) => t.value += n as f64,
            DebugValue::Gauge(v) => {
                t.value = t.value.max(v.into_inner());
                t.last = v.into_inner();
            }
            DebugValue::Histogram(v) => t.value += v.len() as f64,
        }
    }
    totals.clone()
}

fn metric(all: &HashMap<String, Total>, name: &str, labels: &[(&str, &str)]) -> f64 {
    all.get(&metric_key(name, labels)).map_or(0.0, |t| t.value)
}

fn spans() -> Vec<SpanRec> {
    globals().captured.lock().unwrap().spans.clone()
}

fn events() -> Vec<EventRec> {
    globals().captured.lock().unwrap().events.clone()
}

/// Every recorded field value and event field, as one text (for "never appears" checks).
fn all_recorded_text() -> String {
    let c = globals().captured.lock().unwrap();
    let mut out = String::new();
    for s in &c.spans {
        for (k, v) in &s.fields {
            out.push_str(&format!("{} {k}={v}\n", s.name));
        }
    }
    for e in &c.events {
        for (k, v) in &e.fields {
            out.push_str(&format!("{} {k}={v}\n", e.target));
        }
    }
    out
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The repository spans of `tenant` for `operation`.
fn repository_spans(tenant: &TenantId, operation: &str) -> Vec<SpanRec> {
    spans()
        .into_iter()
        .filter(|s| {
            s.name == "caas_storage.repository"
                && s.fields.get("caas.tenant").map(String::as_str) == Some(tenant.as_str())
                && s.fields.get("db.operation").map(String::as_str) == Some(operation)
        })
        .collect()
}

async fn storage_with(config: StorageConfig) -> Storage {
    globals();
    Storage::connect(config)
        .await
        .expect("the servers are up: run scripts/services up")
}

// ---- (1) the span tree ------------------------------------------------------------------------

/// One repository call is one `caas_storage.repository` span with the documented fields, and
/// its cache and MongoDB steps are child spans; a call inside `TraceContext::scope` is a child
/// of the scope's context; no secret (nor any document value) is recorded anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_call_is_one_span_with_the_documented_fields_and_no_values() {
    bounded(async {
        let storage = storage_with(common::config()).await;
        let repo = SpanAccountRepository::new(&storage);
        let t = common::tenant("obs-span");
        let secret = format!("SECRET-{}", uuid::Uuid::now_v7().simple());
        let handle = format!("HANDLE-{}", uuid::Uuid::now_v7().simple());
        let a = SpanAccount {
            account_id: "a1".into(),
            tenant_id: t.to_string(),
            handle: handle.clone(),
            password_hash: secret.clone(),
            version: 0,
        };
        repo.insert(&t, &a).await.unwrap();
        assert!(repo
            .find_by_id(&t, &"a1".to_string())
            .await
            .unwrap()
            .is_some()); // miss
        let scope = TraceContext::new_root();
        let found = scope
            .scope(repo.find_by_id(&t, &"a1".to_string()))
            .await
            .unwrap();
        assert!(found.is_some()); // Redis hit
        let with_secrets = repo
            .find_by_id_with_secrets(&t, &"a1".to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(with_secrets.password_hash, secret, "the secret was stored");
        assert_eq!(
            repo.query(&t)
                .filter(SpanAccount::fields().handle().eq(handle.clone()))
                .count()
                .await
                .unwrap(),
            1
        );
        assert!(repo.get(&t, &"nope".to_string()).await.is_err());

        // The insert: one span, its MongoDB step a child.
        let inserts = repository_spans(&t, "insert");
        assert_eq!(inserts.len(), 1, "one span per call: {inserts:#?}");
        let insert = &inserts[0];
        for (field, want) in [
            ("db.system", "mongodb"),
            ("db.collection.name", "span_accounts"),
            ("db.namespace", "caas_observe_it"),
            ("caas.entity", "SpanAccount"),
            ("caas.consistency", "read_your_writes"),
            ("caas.outcome", "ok"),
            ("otel.status_code", "OK"),
            ("otel.kind", "client"),
            ("otel.name", "insert span_accounts"),
        ] {
            assert_eq!(
                insert.fields.get(field).map(String::as_str),
                Some(want),
                "{field} of {insert:#?}"
            );
        }
        assert!(is_hex(&insert.fields["trace_id"], 32), "{insert:#?}");
        assert!(is_hex(&insert.fields["span_id"], 16), "{insert:#?}");
        assert!(
            !insert.fields.contains_key("parent_span_id"),
            "a call outside any scope is a root"
        );
        assert!(
            insert.fields["duration_ms"].parse::<f64>().unwrap() > 0.0,
            "{insert:#?}"
        );
        let children: Vec<SpanRec> = spans()
            .into_iter()
            .filter(|s| s.parent == Some(insert.serial))
            .collect();
        assert!(
            children.iter().any(|c| c.name == "caas_storage.mongodb"
                && c.fields.get("db.operation").map(String::as_str) == Some("insert")),
            "the insert's MongoDB step is a child span: {children:#?}"
        );

        // The two reads by id: a miss, then a Redis hit inside the scope.
        let reads = repository_spans(&t, "find_by_id");
        assert_eq!(reads.len(), 2, "{reads:#?}");
        assert_eq!(reads[0].fields["caas.cache"], "miss");
        assert_eq!(reads[1].fields["caas.cache"], "redis_hit");
        assert_eq!(reads[1].fields["trace_id"], scope.trace_id().to_string());
        assert_eq!(
            reads[1].fields["parent_span_id"],
            scope.span_id().to_string()
        );
        assert_ne!(reads[1].fields["span_id"], scope.span_id().to_string());
        let step_names: Vec<String> = spans()
            .into_iter()
            .filter(|s| s.parent == Some(reads[0].serial))
            .map(|s| s.name)
            .collect();
        assert!(
            step_names.iter().any(|n| n == "caas_storage.cache")
                && step_names.iter().any(|n| n == "caas_storage.mongodb"),
            "a miss has a cache step and a MongoDB step: {step_names:?}"
        );
        // Other reads: secrets, counts, get (failing: its outcome is the error kind).
        assert_eq!(repository_spans(&t, "find_by_id_with_secrets").len(), 1);
        assert_eq!(repository_spans(&t, "count").len(), 1);
        let get = repository_spans(&t, "get");
        assert_eq!(get.len(), 1, "get is one call, not get + find_by_id");
        assert_eq!(get[0].fields["caas.outcome"], "not_found");
        assert_eq!(get[0].fields["otel.status_code"], "ERROR");
        assert_eq!(get[0].fields["error.type"], "not_found");
        assert!(
            events().iter().any(|e| e.span == Some(get[0].serial)
                && e.fields.get("message").map(String::as_str) == Some("repository call failed")),
            "the failure is an event in the call's span"
        );

        // Neither the secret nor a document value was recorded, anywhere.
        let text = all_recorded_text();
        assert!(
            text.contains(t.as_str()),
            "the captures hold this test's calls"
        );
        assert!(!text.contains(&secret), "a secret value was recorded");
        assert!(!text.contains(&handle), "a document value was recorded");
    })
    .await;
}

// ---- (2) metrics of a write and a cached read --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_and_a_cached_read_record_the_documented_metrics() {
    bounded(async {
        let storage = storage_with(common::config()).await;
        let repo = MetricItemRepository::new(&storage);
        let t = common::tenant("obs-metrics");
        let before = metrics();
        let e = "MetricItem";
        let item = MetricItem {
            item_id: format!("m-{}", uuid::Uuid::now_v7().simple()),
            tenant_id: t.to_string(),
            label: "x".into(),
            version: 0,
        };
        repo.insert(&t, &item).await.unwrap();
        let err = repo.insert(&t, &item).await.unwrap_err();
        assert_eq!(err.kind(), "duplicate_key");
        repo.find_by_id(&t, &item.item_id).await.unwrap().unwrap(); // miss, then put
        repo.find_by_id(&t, &item.item_id).await.unwrap().unwrap(); // Redis hit
        let after = metrics();
        let delta = |name: &str, labels: &[(&str, &str)]| {
            metric(&after, name, labels) - metric(&before, name, labels)
        };
        let ops = names::REPOSITORY_OPERATIONS_TOTAL;
        assert_eq!(
            delta(
                ops,
                &[("entity", e), ("operation", "insert"), ("outcome", "ok")]
            ),
            1.0
        );
        assert_eq!(
            delta(
                ops,
                &[
                    ("entity", e),
                    ("operation", "insert"),
                    ("outcome", "duplicate_key")
                ]
            ),
            1.0
        );
        assert_eq!(
            delta(
                names::REPOSITORY_ERRORS_TOTAL,
                &[
                    ("entity", e),
                    ("operation", "insert"),
                    ("kind", "duplicate_key")
                ]
            ),
            1.0
        );
        assert_eq!(
            delta(
                ops,
                &[
                    ("entity", e),
                    ("operation", "find_by_id"),
                    ("outcome", "ok")
                ]
            ),
            2.0
        );
        let dur = names::REPOSITORY_OPERATION_DURATION_SECONDS;
        assert_eq!(
            delta(dur, &[("entity", e), ("operation", "insert")]),
            2.0,
            "one duration sample per call"
        );
        assert_eq!(
            delta(dur, &[("entity", e), ("operation", "find_by_id")]),
            2.0
        );
        let cache = names::CACHE_REQUESTS_TOTAL;
        assert_eq!(
            delta(
                cache,
                &[("entity", e), ("tier", "redis"), ("result", "miss")]
            ),
            1.0
        );
        assert_eq!(
            delta(
                cache,
                &[("entity", e), ("tier", "redis"), ("result", "hit")]
            ),
            1.0
        );
        assert!(
            delta(names::CACHE_INVALIDATIONS_TOTAL, &[("entity", e)]) >= 1.0,
            "the insert invalidated its entry"
        );
        assert!(
            delta(
                names::MONGODB_COMMAND_DURATION_SECONDS,
                &[("command", "insert")]
            ) >= 2.0
        );
        let breaker = after
            .get(&metric_key(names::BREAKER_OPEN, &[("component", "redis")]))
            .expect("the Redis breaker's gauge is there");
        assert_eq!(breaker.last, 0.0, "closed");
    })
    .await;
}

// ---- (3) the slow-command log ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_commands_are_logged_with_their_shape_and_never_their_values() {
    bounded(async {
        let mut config = common::config();
        config.mongodb.slow_command_threshold = Duration::ZERO;
        let storage = storage_with(config).await;
        let repo = SlowNoteRepository::new(&storage);
        let t = common::tenant("obs-slow");
        let value = format!("DISTINCTIVE-{}", uuid::Uuid::now_v7().simple());
        let before = metrics();
        let found = repo
            .query(&t)
            .filter(SlowNote::fields().title().eq(value.clone()))
            .fetch()
            .await
            .unwrap();
        assert!(found.is_empty());
        let slow: Vec<EventRec> = events()
            .into_iter()
            .filter(|e| {
                e.target == "caas_storage::slow_query"
                    && e.fields.get("collection").map(String::as_str) == Some("slow_notes")
                    && e.fields.get("command").map(String::as_str) == Some("find")
            })
            .collect();
        assert!(!slow.is_empty(), "the find was logged as slow");
        let line = &slow[0];
        assert_eq!(line.level, tracing::Level::WARN);
        assert_eq!(line.fields["database"], "caas_observe_it");
        assert!(line.fields["duration_ms"].parse::<f64>().unwrap() >= 0.0);
        let shape = &line.fields["shape"];
        assert!(
            shape.contains("title") && shape.contains("\"string\""),
            "the filter's shape: {shape}"
        );
        assert!(
            slow.iter().all(|e| !e.fields["shape"].contains(&value)),
            "a slow-command line holds the value"
        );
        assert!(
            !all_recorded_text().contains(&value),
            "the value was recorded somewhere"
        );
        let after = metrics();
        let key = [("command", "find")];
        assert!(
            metric(&after, names::MONGODB_SLOW_COMMANDS_TOTAL, &key)
                > metric(&before, names::MONGODB_SLOW_COMMANDS_TOTAL, &key),
            "slow commands are counted"
        );
    })
    .await;
}

// ---- (4) the trace through the outbox and Kafka -----------------------------------------------

/// Reads `topic` from the beginning until a message whose envelope names `aggregate_id`.
async fn message_of(topic: &str, aggregate_id: &str) -> OwnedMessage {
    let deadline = Instant::now() + Duration::from_secs(30);
    let consumer = common::reader_from_beginning(
        topic,
        &format!("obs-reader-{}", uuid::Uuid::now_v7().simple()),
        deadline,
    )
    .await;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .expect("the event arrives")
            .expect("consumer error");
        if envelope_from_message(&m).is_ok_and(|e| e.aggregate_id == aggregate_id) {
            return m.detach();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_goes_from_the_write_through_kafka_to_the_consumer() {
    bounded(async {
        let storage = storage_with(common::config()).await;
        let repo = TracedOrderRepository::new(&storage);
        let t = common::tenant("obs-trace");
        let id = format!("o-{}", uuid::Uuid::now_v7().simple());
        let request = TraceContext::new_root();
        request
            .scope(repo.insert(
                &t,
                &TracedOrder {
                    order_id: id.clone(),
                    tenant_id: t.to_string(),
                    status: "placed".into(),
                    version: 0,
                },
            ))
            .await
            .unwrap();
        let write = repository_spans(&t, "insert");
        assert_eq!(write.len(), 1);
        assert_eq!(write[0].fields["trace_id"], request.trace_id().to_string());

        let relay = storage
            .outbox_relay(RelayOptions {
                poll_interval: Duration::from_millis(50),
                ..RelayOptions::for_databases(["caas_observe_trace_it"])
            })
            .unwrap();
        // Until a pass finds nothing left (events of earlier runs may go first).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut published = 0;
        loop {
            assert!(Instant::now() < deadline, "the relay did not finish");
            let r = relay.drain_once().await.unwrap();
            published += r.published;
            if published > 0 && r.published == 0 && !r.more {
                break;
            }
        }
        let m = message_of("test.observability.traced_orders", &id).await;
        let header = header_value(&m, "traceparent").expect("a traceparent header");
        let sent = TraceContext::parse(&header).expect("a valid W3C traceparent");
        assert_eq!(header.len(), 55);
        assert!(header.starts_with("00-"));
        assert_eq!(sent.trace_id(), request.trace_id());
        assert_eq!(
            sent.span_id().to_string(),
            write[0].fields["span_id"],
            "the header names the write's span"
        );

        // The handler runs in the trace, and its own writes continue it.
        let handler_tenant = common::tenant("obs-trace-handler");
        let seen = handle_traced(&m, async {
            repo.insert(
                &handler_tenant,
                &TracedOrder {
                    order_id: format!("{id}-next"),
                    tenant_id: handler_tenant.to_string(),
                    status: "shipped".into(),
                    version: 0,
                },
            )
            .await
            .unwrap();
            TraceContext::current()
        })
        .await
        .expect("a current context in the handler");
        assert_eq!(seen.trace_id(), request.trace_id());
        let consume = spans()
            .into_iter()
            .find(|s| {
                s.name == "caas_storage.consume"
                    && s.fields.get("span_id").map(String::as_str)
                        == Some(&*seen.span_id().to_string())
            })
            .expect("the handler's span");
        assert_eq!(consume.fields["trace_id"], request.trace_id().to_string());
        assert_eq!(consume.fields["parent_span_id"], sent.span_id().to_string());
        assert_eq!(
            consume.fields["messaging.destination.name"],
            "test.observability.traced_orders"
        );
        let next = repository_spans(&handler_tenant, "insert");
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].fields["trace_id"], request.trace_id().to_string());
        assert_eq!(next[0].fields["parent_span_id"], seen.span_id().to_string());

        let after = metrics();
        let topic = [("topic", "test.observability.traced_orders")];
        assert!(
            metric(&after, names::OUTBOX_PUBLISHED_TOTAL, &topic) >= 1.0,
            "the relay counts what it published"
        );
        assert!(after.contains_key(&metric_key(
            names::OUTBOX_PENDING,
            &[("database", "caas_observe_trace_it")]
        )));
    })
    .await;
}

// ---- (5) pool metrics, (6) Redis INFO ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_metrics_appear_after_a_call() {
    bounded(async {
        let config = common::config();
        let max = config.mongodb.max_pool_size;
        let storage = storage_with(config).await;
        let before = metrics();
        let repo = PoolPingRepository::new(&storage);
        let t = common::tenant("obs-pool");
        repo.find_by_id(&t, &"p".to_string()).await.unwrap();
        let after = metrics();
        let wait = names::MONGODB_POOL_WAIT_SECONDS;
        assert!(
            metric(&after, wait, &[]) > metric(&before, wait, &[]),
            "checkouts are timed"
        );
        assert!(
            metric(
                &after,
                names::MONGODB_POOL_CONNECTIONS,
                &[("state", "open")]
            ) >= 1.0
        );
        assert!(
            after.contains_key(&metric_key(
                names::MONGODB_POOL_CONNECTIONS,
                &[("state", "in_use")]
            )),
            "connections in use are counted"
        );
        assert_eq!(
            metric(&after, names::MONGODB_POOL_MAX_SIZE, &[]),
            f64::from(max)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_info_is_sampled_while_the_storage_lives() {
    bounded(async {
        let mut config = common::config();
        config.metrics.redis_info_interval = Duration::from_millis(200);
        let storage = storage_with(config).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = metrics();
            let memory = all.iter().find(|(k, _)| {
                k.starts_with(&format!("{}{{node=", names::REDIS_USED_MEMORY_BYTES))
            });
            let clients = all.iter().find(|(k, _)| {
                k.starts_with(&format!("{}{{node=", names::REDIS_CONNECTED_CLIENTS))
            });
            if let (Some((_, m)), Some((_, c))) = (memory, clients) {
                assert!(m.value > 0.0 && c.value >= 1.0, "{m:?} {c:?}");
                break;
            }
            assert!(Instant::now() < deadline, "no Redis INFO sample");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(storage);
    })
    .await;
}
