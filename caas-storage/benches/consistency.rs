//! `eventual` writes (acknowledged once queued, applied in batches) against single `strong`
//! inserts, same entity shape, same run, alternating rounds. Target: >= 10x throughput.
//! Two ratios are printed: acknowledged writes per second (what a caller waits for), and
//! applied writes per second (queue drained into MongoDB).
//!
//! ```sh
//! scripts/services up && cargo bench --bench consistency
//! ```

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let n: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
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

    let (mut ack_ratio, mut applied_ratio) = (Vec::new(), Vec::new());
    let (mut strong_rate, mut eventual_ack_rate, mut eventual_applied_rate) =
        (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let start = Instant::now();
        for i in 0..n {
            let row = StrongRow {
                row_id: format!("s{r}-{i}"),
                tenant_id: "bench".into(),
                payload: payload.clone(),
            };
            strong.insert(&t, &row).await.unwrap();
        }
        let strong_secs = start.elapsed().as_secs_f64();

        let start = Instant::now();
        for i in 0..n {
            let row = EventualRow {
                row_id: format!("e{r}-{i}"),
                tenant_id: "bench".into(),
                payload: payload.clone(),
            };
            eventual.insert(&t, &row).await.unwrap();
        }
        let ack_secs = start.elapsed().as_secs_f64();
        storage
            .write_behind()
            .flush::<EventualRow>(Duration::from_secs(120))
            .await
            .unwrap();
        let applied_secs = start.elapsed().as_secs_f64();

        strong_rate.push(n as f64 / strong_secs);
        eventual_ack_rate.push(n as f64 / ack_secs);
        eventual_applied_rate.push(n as f64 / applied_secs);
        ack_ratio.push(strong_secs / ack_secs);
        applied_ratio.push(strong_secs / applied_secs);
    }
    println!("eventual (write-behind) vs strong inserts, {rounds} rounds x {n} writes, medians");
    println!(
        "strong inserts           {:>9.0} writes/s",
        median(strong_rate)
    );
    println!(
        "eventual acknowledged    {:>9.0} writes/s  ratio {:>6.1}x  (target >= 10x)",
        median(eventual_ack_rate),
        median(ack_ratio)
    );
    println!(
        "eventual applied (drain) {:>9.0} writes/s  ratio {:>6.1}x",
        median(eventual_applied_rate),
        median(applied_ratio)
    );
}
