//! `eventual` writes (acknowledged once queued in a Redis stream, applied in batches) against
//! what Redis itself costs for the same thing, and against single `strong` inserts; same
//! entity shape, same run, rotating order.
//!
//! - eventual acknowledged / raw `XADD`: the time per `insert` of an `eventual` entity
//!   (returns once Redis acknowledged the entry) vs a raw `XADD key * e <payload>` of the SAME
//!   payload (the entry the queue stored, read back) on the same Redis connection settings
//!   (same logical database, no `WAIT`: the queue's durability is Redis's own, as configured
//!   on the server). Target <= 1.3.
//! - eventual acknowledged / strong: throughput ratio (reported).
//! - eventual applied (queue drained into MongoDB) / strong: throughput ratio (reported).
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench -p caas-storage --bench consistency
//! ```

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_strong", consistency = strong)]
struct StrongRow {
    #[repository(id)]
    pub row_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub payload: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_eventual", consistency = eventual)]
struct EventualRow {
    #[repository(id)]
    pub row_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub payload: String,
}

const RAW_STREAM: &str = "bench:raw:xadd";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds = support::env_usize("BENCH_ROUNDS", 7);
    let n = support::env_usize("BENCH_BATCH", 300);
    let mut config = StorageConfig::from_env().unwrap();
    config.redis.key_prefix = "bench:".into();
    config.write_behind.start_flusher = false; // the bench drains explicitly, and times it
    let storage = Storage::connect(config).await.unwrap();
    for c in ["bench_strong", "bench_eventual"] {
        storage
            .raw()
            .database("caas_bench")
            .collection::<caas_storage::bson::Document>(c)
            .drop()
            .await
            .unwrap();
    }
    storage.sync_indexes::<StrongRow>().await.unwrap();
    storage.sync_indexes::<EventualRow>().await.unwrap();
    let strong = StrongRowRepository::new(&storage);
    let eventual = EventualRowRepository::new(&storage);
    let t = TenantId::new("bench").unwrap();
    let payload = "x".repeat(200);

    // The entry the queue stores for one such write, read back from its stream: the raw side
    // appends exactly these bytes.
    let wb_db = storage.config().redis.databases.write_behind;
    let mut redis = storage.raw().redis(wb_db).unwrap();
    let queue_key = "bench:caas:wb:caas_bench.bench_eventual";
    let _: () = redis::cmd("DEL")
        .arg(queue_key)
        .arg(RAW_STREAM)
        .query_async(&mut redis)
        .await
        .unwrap();
    eventual
        .insert(
            &t,
            &EventualRow {
                row_id: "sample".into(),
                tenant_id: "bench".into(),
                payload: payload.clone(),
            },
        )
        .await
        .unwrap();
    let sample: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(queue_key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let entry: Vec<u8> = match sample.ids[0].map.get("e") {
        Some(redis::Value::BulkString(b)) => b.clone(),
        other => panic!("queue entry: {other:?}"),
    };
    println!("queue entry: {} bytes", entry.len());
    storage
        .write_behind()
        .flush::<EventualRow>(Duration::from_secs(120))
        .await
        .unwrap();
    let mut raw_rate = Vec::new();
    let mut raw_ratio = Vec::new();

    let (mut ack_ratio, mut applied_ratio) = (Vec::new(), Vec::new());
    let (mut strong_rate, mut eventual_ack_rate, mut eventual_applied_rate) =
        (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let (mut strong_secs, mut ack_secs, mut applied_secs, mut raw_secs) = (0.0, 0.0, 0.0, 0.0);
        for step in 0..3 {
            match (r + step) % 3 {
                0 => {
                    let start = Instant::now();
                    for i in 0..n {
                        let row = StrongRow {
                            row_id: format!("s{r}-{i}"),
                            tenant_id: "bench".into(),
                            payload: payload.clone(),
                        };
                        strong.insert(&t, &row).await.unwrap();
                    }
                    strong_secs = start.elapsed().as_secs_f64();
                }
                1 => {
                    let start = Instant::now();
                    for i in 0..n {
                        let row = EventualRow {
                            row_id: format!("e{r}-{i}"),
                            tenant_id: "bench".into(),
                            payload: payload.clone(),
                        };
                        eventual.insert(&t, &row).await.unwrap();
                    }
                    ack_secs = start.elapsed().as_secs_f64();
                    storage
                        .write_behind()
                        .flush::<EventualRow>(Duration::from_secs(120))
                        .await
                        .unwrap();
                    applied_secs = start.elapsed().as_secs_f64();
                }
                _ => {
                    let start = Instant::now();
                    for _ in 0..n {
                        let _: String = redis::cmd("XADD")
                            .arg(RAW_STREAM)
                            .arg("*")
                            .arg("e")
                            .arg(entry.as_slice())
                            .query_async(&mut redis)
                            .await
                            .unwrap();
                    }
                    raw_secs = start.elapsed().as_secs_f64();
                    let _: () = redis::cmd("DEL")
                        .arg(RAW_STREAM)
                        .query_async(&mut redis)
                        .await
                        .unwrap();
                }
            }
        }

        strong_rate.push(n as f64 / strong_secs);
        eventual_ack_rate.push(n as f64 / ack_secs);
        eventual_applied_rate.push(n as f64 / applied_secs);
        raw_rate.push(n as f64 / raw_secs);
        ack_ratio.push(strong_secs / ack_secs);
        applied_ratio.push(strong_secs / applied_secs);
        raw_ratio.push(ack_secs / raw_secs);
    }
    let (strong_rate, ack_rate, applied_rate, raw_rate) = (
        median(strong_rate),
        median(eventual_ack_rate),
        median(eventual_applied_rate),
        median(raw_rate),
    );
    let (ack_ratio, applied_ratio, raw_ratio) =
        (median(ack_ratio), median(applied_ratio), median(raw_ratio));
    println!("eventual (write-behind) vs raw XADD and strong inserts, {rounds} rounds x {n} writes, medians");
    println!("raw XADD (same payload)  {raw_rate:>9.0} writes/s");
    println!(
        "eventual acknowledged    {ack_rate:>9.0} writes/s  time / raw XADD {raw_ratio:.3} (target <= 1.3)"
    );
    println!("strong inserts           {strong_rate:>9.0} writes/s");
    println!("eventual acknowledged / strong {ack_ratio:.1}x; applied (drain) {applied_rate:.0} writes/s, {applied_ratio:.1}x strong");
    support::record(&[
        support::Row::at_most(
            "queue: eventual ack / raw XADD (time)",
            raw_ratio,
            1.3,
            format!("{ack_rate:.0} vs {raw_rate:.0} writes/s"),
        ),
        support::Row::report(
            "queue: eventual ack / strong (throughput)",
            ack_ratio,
            format!("{ack_rate:.0} vs {strong_rate:.0} writes/s"),
        ),
        support::Row::report(
            "queue: eventual applied / strong (throughput)",
            applied_ratio,
            format!("{applied_rate:.0} vs {strong_rate:.0} writes/s"),
        ),
    ]);
}
