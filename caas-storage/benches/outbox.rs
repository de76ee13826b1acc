//! Outbox relay drain throughput vs a raw rdkafka `FutureProducer` sending the same messages
//! (same shared producer: acks=all, idempotence), in alternating rounds of one process, against
//! the FerretDB and Kafka that `scripts/services up` runs. Target: relay throughput >= 0.8 of
//! raw.
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench --bench outbox
//! ```
//!
//! Each round records `OUTBOX_BENCH_EVENTS` events (default 1000: 100 aggregates x 10
//! revisions) as `ready` (untimed), then times one relay draining them (read, order, publish,
//! await delivery, mark published); the baseline times sending the same keys, values and
//! headers with the same producer and awaiting every delivery report. Rounds alternate which
//! goes first (`OUTBOX_BENCH_ROUNDS`, default 7; relay batch `OUTBOX_BENCH_BATCH`, default
//! 200); medians are compared. A third contender, the hand-written floor, does the least
//! database work any relay must do (read the records once, archive, delete) around the same
//! sends, to tell the relay's own overhead from the database's cost.

use std::time::{Duration, Instant};

use caas_storage::bson::{doc, Bson, Document};
use caas_storage::outbox::{
    EventEnvelope, OutboxRelay, OutboxStore, PendingEvent, RelayOptions, WriteKind, WriteRef,
};
use caas_storage::{Storage, StorageConfig};
use futures::TryStreamExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const DB: &str = "caas_outbox_bench";
const HAND_DB: &str = "caas_outbox_bench_hand";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(topic: &str, round: usize, n: usize) -> Vec<PendingEvent> {
    let aggregates = (n / 10).max(1);
    (0..n)
        .map(|i| {
            let agg = format!("r{round}-a{}", i % aggregates);
            let revision = (i / aggregates + 1) as i64;
            PendingEvent {
                envelope: EventEnvelope::new(
                    "bench.updated",
                    "Bench",
                    agg.clone(),
                    "bench-tenant",
                    serde_json::json!({
                        "id": agg, "revision": revision, "name": "a bench entity",
                        "tags": ["x", "y"], "score": i,
                    }),
                )
                .with_revision(revision as u64),
                topic: topic.to_owned(),
                write: WriteRef {
                    collection: "bench".into(),
                    tenant_field: "tenant_id".into(),
                    tenant: "bench-tenant".into(),
                    id_field: "id".into(),
                    id: Bson::String(agg),
                    revision_field: Some("version".into()),
                    revision,
                    kind: WriteKind::Update,
                    soft_delete: false,
                },
            }
        })
        .collect()
}

async fn relay_drain(relay: &OutboxRelay, n: usize) -> Duration {
    let start = Instant::now();
    let mut published = 0;
    let deadline = start + Duration::from_secs(300);
    while published < n as u64 {
        let r = relay.drain_once().await.expect("drain");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        published += r.published;
        assert!(Instant::now() < deadline, "drain stuck at {published}/{n}");
    }
    start.elapsed()
}

async fn raw_send(storage: &Storage, batch: &[PendingEvent]) -> Duration {
    let producer = storage.raw().kafka_producer();
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(batch.len());
    for e in batch {
        let value = e.envelope.to_json().unwrap();
        let mut headers = OwnedHeaders::new_with_capacity(5);
        for (k, v) in e.envelope.headers() {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let record = FutureRecord::to(&e.topic)
            .key(e.envelope.aggregate_id.as_str())
            .payload(value.as_slice())
            .headers(headers);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in futures::future::join_all(deliveries).await {
        d.expect("delivery report").expect("delivered");
    }
    start.elapsed()
}

/// The least any outbox relay on this database must do for the batch, by hand: read the
/// ready records once, send them, await delivery, copy them to an archive, delete them.
async fn hand_written(storage: &Storage, store: &OutboxStore, n: usize) -> Duration {
    let producer = storage.raw().kafka_producer();
    let archive = storage
        .raw()
        .database(HAND_DB)
        .collection::<Document>("hand_published");
    let start = Instant::now();
    let docs: Vec<Document> = store
        .collection()
        .find(doc! { "state": "ready" })
        .sort(doc! { "created_at": 1, "_id": 1 })
        .limit(n as i64)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), n);
    let mut deliveries = Vec::with_capacity(n);
    for d in &docs {
        let key = d.get_str("aggregate_id").unwrap();
        let value = d.get_str("payload").unwrap();
        let record = FutureRecord::to(d.get_str("topic").unwrap())
            .key(key)
            .payload(value);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in futures::future::join_all(deliveries).await {
        d.expect("delivery report").expect("delivered");
    }
    let ids: Vec<Bson> = docs.iter().map(|d| d.get("_id").unwrap().clone()).collect();
    archive.insert_many(docs).await.unwrap();
    store
        .collection()
        .delete_many(doc! { "state": "ready", "_id": { "$in": ids } })
        .await
        .unwrap();
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("OUTBOX_BENCH_EVENTS", 1000);
    let rounds = env_or("OUTBOX_BENCH_ROUNDS", 7);
    let batch_size = env_or("OUTBOX_BENCH_BATCH", 200);
    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    storage.raw().database(DB).drop().await.unwrap();
    storage.raw().database(HAND_DB).drop().await.unwrap();
    let hand_store = storage.outbox(HAND_DB);
    hand_store.ensure_indexes().await.unwrap();
    let topic = format!("bench.outbox.{}", uuid::Uuid::now_v7().simple());
    let store = storage.outbox(DB);
    let relay = storage
        .outbox_relay(RelayOptions {
            batch_size,
            lag_interval: Duration::from_secs(3600),
            ..RelayOptions::for_databases([DB])
        })
        .unwrap();

    // Warm-up: topic creation, leases, indexes, connections.
    let warm = events(&topic, 0, 50);
    store.insert_ready(&warm).await.unwrap();
    relay_drain(&relay, warm.len()).await;
    raw_send(&storage, &warm).await;

    let mut relay_times = Vec::new();
    let mut raw_times = Vec::new();
    let mut hand_times = Vec::new();
    for round in 1..=rounds {
        let batch = events(&topic, round, n);
        store.insert_ready(&batch).await.unwrap();
        hand_store
            .insert_ready(&events(&topic, round + 1000, n))
            .await
            .unwrap();
        let mut r = Duration::ZERO;
        let mut b = Duration::ZERO;
        let mut h = Duration::ZERO;
        // Rotate which goes first.
        for step in 0..3 {
            match (round + step) % 3 {
                0 => r = relay_drain(&relay, n).await,
                1 => b = raw_send(&storage, &batch).await,
                _ => h = hand_written(&storage, &hand_store, n).await,
            }
        }
        println!(
            "round {round}: relay {:>8.1} ms  raw producer {:>7.1} ms  hand-written floor {:>8.1} ms",
            r.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            h.as_secs_f64() * 1e3,
        );
        relay_times.push(r);
        raw_times.push(b);
        hand_times.push(h);
    }
    relay.release().await;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (r, b, h) = (
        rate(median(relay_times)),
        rate(median(raw_times)),
        rate(median(hand_times)),
    );
    println!(
        "outbox drain, {n} events x {rounds} rounds (relay batch {batch_size}), medians: \
         relay {r:.0} ev/s, raw producer {b:.0} ev/s, hand-written read+send+archive+delete {h:.0} ev/s"
    );
    println!(
        "relay / raw producer throughput ratio {:.3} (target >= 0.8); \
         relay / hand-written floor {:.3}; floor / raw producer {:.3}",
        r / b,
        r / h,
        h / b
    );
    store.cleanup_published(Duration::ZERO).await.unwrap();
    storage.raw().database(HAND_DB).drop().await.unwrap();
}
