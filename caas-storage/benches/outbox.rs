//! Outbox relay drain throughput vs its floor on the same server, and vs a raw rdkafka
//! `FutureProducer` sending the same messages (same shared producer: acks=all, idempotence),
//! in rotating order in one process, against the FerretDB and Kafka that `scripts/services up`
//! runs.
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench -p caas-storage --bench outbox
//! ```
//!
//! Each round records `OUTBOX_BENCH_EVENTS` events (default 1000: 100 aggregates x 10
//! revisions) as `ready` (untimed) in each contender's database, then times:
//! - the relay with `archive = off` draining them (read, order, publish, await delivery,
//!   delete), batch `OUTBOX_BENCH_BATCH` (default 200, the relay's default);
//! - the relay with its default `archive = auto` (on FerretDB, which has no transactions:
//!   bulk, one `insert_many` + one `delete_many` per batch);
//! - the floor: hand-written code doing the least database work any relay must do, per batch
//!   of the same size: read one batch, send it, await delivery, one `delete_many`;
//! - the raw producer sending the same keys, values and headers and awaiting every report.
//!
//! Target: relay (archive off) / floor >= 0.9. Reported: relay (default) / floor, relay /
//! raw producer (the gap between floor and producer is the database's). `OUTBOX_BENCH_ROUNDS`
//! (default 7); medians are compared.

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use caas_storage::bson::{doc, Bson, Document};
use caas_storage::outbox::{
    EventEnvelope, OutboxRelay, OutboxStore, PendingEvent, RelayArchive, RelayOptions, WriteKind,
    WriteRef,
};
use caas_storage::{Storage, StorageConfig};
use futures::TryStreamExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const DB: &str = "caas_outbox_bench";
const OFF_DB: &str = "caas_outbox_bench_off";
const HAND_DB: &str = "caas_outbox_bench_hand";

fn env_or(name: &str, default: usize) -> usize {
    support::env_usize(name, default)
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

/// The least any outbox relay on this database must do, by hand, per batch of `batch`: read
/// the oldest ready records once, send them, await delivery, delete them (one statement).
async fn hand_written(storage: &Storage, store: &OutboxStore, n: usize, batch: usize) -> Duration {
    let producer = storage.raw().kafka_producer();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let docs: Vec<Document> = store
            .collection()
            .find(doc! { "state": "ready" })
            .sort(doc! { "created_at": 1, "_id": 1 })
            .limit(batch as i64)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(!docs.is_empty(), "floor drained {done}/{n}");
        let mut deliveries = Vec::with_capacity(docs.len());
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
        store
            .collection()
            .delete_many(doc! { "state": "ready", "_id": { "$in": ids } })
            .await
            .unwrap();
        done += docs.len();
    }
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
    let batch_size = env_or("OUTBOX_BENCH_BATCH", RelayOptions::default().batch_size);
    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    for db in [DB, OFF_DB, HAND_DB] {
        storage.raw().database(db).drop().await.unwrap();
    }
    let hand_store = storage.outbox(HAND_DB);
    hand_store.ensure_indexes().await.unwrap();
    let topic = format!("bench.outbox.{}", uuid::Uuid::now_v7().simple());
    let store = storage.outbox(DB);
    let off_store = storage.outbox(OFF_DB);
    let relay = storage
        .outbox_relay(RelayOptions {
            batch_size,
            lag_interval: Duration::from_secs(3600),
            ..RelayOptions::for_databases([DB])
        })
        .unwrap();
    let relay_off = storage
        .outbox_relay(RelayOptions {
            batch_size,
            lag_interval: Duration::from_secs(3600),
            archive: RelayArchive::Off,
            ..RelayOptions::for_databases([OFF_DB])
        })
        .unwrap();

    // Warm-up: topic creation, leases, indexes, connections.
    let warm = events(&topic, 0, 50);
    store.insert_ready(&warm).await.unwrap();
    relay_drain(&relay, warm.len()).await;
    off_store.insert_ready(&warm).await.unwrap();
    relay_drain(&relay_off, warm.len()).await;
    raw_send(&storage, &warm).await;

    let (mut relay_times, mut off_times, mut raw_times, mut hand_times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let batch = events(&topic, round, n);
        store.insert_ready(&batch).await.unwrap();
        off_store
            .insert_ready(&events(&topic, round + 2000, n))
            .await
            .unwrap();
        hand_store
            .insert_ready(&events(&topic, round + 1000, n))
            .await
            .unwrap();
        let (mut r, mut o, mut b, mut h) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        // Rotate which goes first.
        for step in 0..4 {
            match (round + step) % 4 {
                0 => r = relay_drain(&relay, n).await,
                1 => o = relay_drain(&relay_off, n).await,
                2 => b = raw_send(&storage, &batch).await,
                _ => h = hand_written(&storage, &hand_store, n, batch_size).await,
            }
        }
        println!(
            "round {round}: relay (archive off) {:>8.1} ms  relay (default) {:>8.1} ms  \
             floor {:>8.1} ms  raw producer {:>7.1} ms",
            o.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            h.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
        );
        relay_times.push(r);
        off_times.push(o);
        raw_times.push(b);
        hand_times.push(h);
    }
    relay.release().await;
    relay_off.release().await;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (r, o, b, h) = (
        rate(median(relay_times)),
        rate(median(off_times)),
        rate(median(raw_times)),
        rate(median(hand_times)),
    );
    println!(
        "outbox drain, {n} events x {rounds} rounds (batch {batch_size}), medians: relay \
         (archive off) {o:.0} ev/s, relay (default archive) {r:.0} ev/s, floor (read batch + \
         send + delete) {h:.0} ev/s, raw producer {b:.0} ev/s"
    );
    println!(
        "relay (archive off) / floor {:.3} (target >= 0.9); relay (default) / floor {:.3}; \
         relay (archive off) / raw producer {:.3}; floor / raw producer {:.3}",
        o / h,
        r / h,
        o / b,
        h / b
    );
    support::record(&[
        support::Row::at_least(
            "outbox: relay (archive off) / floor",
            o / h,
            0.9,
            format!("{o:.0} vs {h:.0} ev/s, batch {batch_size}"),
        ),
        support::Row::report(
            "outbox: relay (default archive) / floor",
            r / h,
            format!("{r:.0} vs {h:.0} ev/s"),
        ),
        support::Row::report(
            "outbox: relay / raw producer",
            o / b,
            format!("{o:.0} vs {b:.0} ev/s"),
        ),
    ]);
    store.cleanup_published(Duration::ZERO).await.unwrap();
    storage.raw().database(HAND_DB).drop().await.unwrap();
    storage.raw().database(OFF_DB).drop().await.unwrap();
}
