//! The cost of instrumentation: a repository `find_by_id` served by the Redis tier (no
//! in-process tier), with a `tracing` subscriber and a `metrics` recorder installed, against
//! the same calls with neither, same run, alternating rounds: <= 1.05.
//!
//! - subscriber, target row: a `tracing_subscriber` registry with an info-level filter and no
//!   output layer (the span machinery a service pays before any exporter: span creation,
//!   field recording, enter/exit; the debug child spans filtered out, as in production);
//!   reported too: `tracing_subscriber::fmt` at info level writing to `io::sink` (formatting
//!   every field of every repository span, as a service logging spans as text does);
//! - recorder: `metrics-exporter-prometheus`'s recorder without its HTTP listener (what a
//!   service exporting to Prometheus installs).
//!
//! Metrics alone is reported too, to show where the cost is.
//!
//! Both are installed per call (`WithSubscriber`, a thread-local default recorder) on the
//! bench's current-thread runtime, so the bare calls run in the same process with neither.
//!
//! ```sh
//! scripts/services up && cargo bench -p caas-storage --bench observability
//! ```

#[path = "support.rs"]
mod support;

use caas_storage::prelude::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_observed", consistency = causal, cache(ttl = "30m"))]
struct Observed {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub score: i64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds = support::env_usize("BENCH_ROUNDS", 31);
    let batch = support::env_usize("BENCH_BATCH", 300);
    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    let t = TenantId::new("bench").unwrap();
    let repo = ObservedRepository::new(&storage);
    let id = "item-1".to_owned();
    let _ = repo.purge(&t, &id).await;
    repo.insert(
        &t,
        &Observed {
            id: id.clone(),
            tenant_id: "bench".into(),
            name: "n".into(),
            tags: (0..5).map(|i| format!("tag-{i}")).collect(),
            score: 1,
        },
    )
    .await
    .unwrap();
    repo.find_by_id(&t, &id).await.unwrap().unwrap(); // fill Redis

    let registry = tracing::Dispatch::new(
        tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO),
    );
    let fmt = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let recorder = PrometheusBuilder::new().build_recorder();

    println!(
        "instrumented vs bare find_by_id (Redis hit), {rounds} rounds x {batch} reads, medians of per-op time"
    );
    let mut rows = Vec::new();
    for (name, subscriber, metrics_on, target) in [
        (
            "registry+metrics vs bare (redis hit)",
            Some(&registry),
            true,
            true,
        ),
        ("metrics only vs bare", None, true, false),
        ("fmt(sink)+metrics vs bare", Some(&fmt), true, false),
    ] {
        let r = support::alternate(
            name,
            rounds,
            batch,
            |_| {
                let (repo, t, id) = (&repo, &t, &id);
                let (subscriber, recorder) = (subscriber.cloned(), &recorder);
                async move {
                    // The thread's default recorder for this call (the runtime has one
                    // thread).
                    let _recorder =
                        metrics_on.then(|| metrics::set_default_local_recorder(recorder));
                    let call = repo.find_by_id(t, id);
                    let e = match subscriber {
                        Some(s) => call.with_subscriber(s).await,
                        None => call.await,
                    };
                    std::hint::black_box(e.unwrap().unwrap());
                }
            },
            |_| {
                let (repo, t, id) = (&repo, &t, &id);
                async move {
                    std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
                }
            },
        )
        .await;
        r.print(if target { "<= 1.05" } else { "report" });
        let mut row = if target {
            r.row("<= 1.05", Some(1.05))
        } else {
            support::Row::report(&r.name, r.ratio(), r.row("", None).detail)
        };
        row.name = format!("observability: {}", row.name);
        rows.push(row);
    }
    // The recorder saw the calls (else the comparison measured nothing).
    let rendered = recorder.handle().render();
    assert!(
        rendered.contains(caas_storage::telemetry::metrics::names::REPOSITORY_OPERATIONS_TOTAL),
        "the recorder recorded no repository call"
    );
    support::record(&rows);
}
