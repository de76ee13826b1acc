//! Time per call as a collection grows: `find_by_id`, the first keyset page of an index
//! finder (`list_by_status`, 20 items) and a unique finder (`find_by_email`), at 1k, 10k and
//! 100k documents in one collection (one tenant), against the FerretDB that
//! `scripts/services up` runs. Seeding uses `insert_many` in batches of `SCALE_SEED_BATCH`
//! (default 10 000), untimed.
//!
//! Target: `find_by_id` at 100k / at 1k <= 1.5 (flat: it filters on `_id` alone, the one
//! filter FerretDB answers from its primary key). The other two are reported: FerretDB pushes
//! down only an exact `_id` filter, so they scan the collection there (time grows with it),
//! although MongoDB serves both from the declared indexes. `SCALE_SIZES` (default
//! `1000,10000,100000`), `SCALE_CALLS` (default 100 `find_by_id` calls per size; the scanning
//! finders make `max(3, SCALE_CALLS * 1000 / size)` calls, so about the same total work).
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench -p caas-storage --bench scale
//! ```

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_scale", consistency = strong)]
#[index(keys(email), unique)]
#[index(keys(status, created_at desc))]
struct ScaleDoc {
    #[repository(id)]
    pub doc_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    pub status: String,
    pub created_at: DateTime,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SCALE_SIZES: numbers"))
        .collect();
    let calls = support::env_usize("SCALE_CALLS", 100);
    let seed_batch = support::env_usize("SCALE_SEED_BATCH", 10_000);
    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    storage
        .raw()
        .database("caas_bench")
        .collection::<caas_storage::bson::Document>("bench_scale")
        .drop()
        .await
        .unwrap();
    storage.sync_indexes::<ScaleDoc>().await.unwrap();
    let repo = ScaleDocRepository::new(&storage);
    let t = TenantId::new("bench").unwrap();
    let statuses = ["active", "locked", "invited", "deleted"];
    let make = |i: usize| ScaleDoc {
        doc_id: format!("d{i}"),
        tenant_id: "bench".into(),
        email: format!("user{i}@example.com"),
        status: statuses[i % statuses.len()].into(),
        created_at: DateTime::from_millis(1_700_000_000_000 + i as i64),
    };
    let started = Instant::now();
    let mut have = 0;
    let mut rows = Vec::new();
    println!("time per call vs documents in the collection (FerretDB pushes down only _id)");
    println!(
        "{:>8}  {:>12}  {:>14}  {:>14}  {:>9}",
        "docs", "find_by_id", "keyset page", "unique finder", "seed s"
    );
    for &size in &sizes {
        let seed_start = Instant::now();
        while have < size {
            let end = (have + seed_batch).min(size);
            let docs: Vec<ScaleDoc> = (have..end).map(make).collect();
            let r = repo.insert_many(&t, &docs).await.unwrap();
            assert_eq!(r.inserted, docs.len());
            have = end;
        }
        let seed = seed_start.elapsed();
        let mut by_id = Vec::new();
        for c in 0..calls {
            let id = format!("d{}", (c * 7919) % size);
            let s = Instant::now();
            assert!(repo.find_by_id(&t, &id).await.unwrap().is_some());
            by_id.push(s.elapsed());
        }
        let scans = (calls * 1000 / size).max(3);
        let (mut page, mut unique) = (Vec::new(), Vec::new());
        for c in 0..scans {
            let s = Instant::now();
            let p = repo
                .list_by_status(&t, "active", PageRequest::first(20))
                .await
                .unwrap();
            assert_eq!(p.items.len(), 20);
            page.push(s.elapsed());
            let s = Instant::now();
            let email = format!("user{}@example.com", (c * 7919) % size);
            assert!(repo.find_by_email(&t, &email).await.unwrap().is_some());
            unique.push(s.elapsed());
        }
        let (b, p, u) = (median(by_id), median(page), median(unique));
        println!(
            "{size:>8}  {:>9.2} ms  {:>11.2} ms  {:>11.2} ms  {:>9.1}",
            b.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            u.as_secs_f64() * 1e3,
            seed.as_secs_f64()
        );
        rows.push((size, b, p, u));
    }
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let curve = |f: fn(&(usize, Duration, Duration, Duration)) -> Duration| {
        rows.iter()
            .map(|r| format!("{}k {:.2} ms", r.0 / 1000, f(r).as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let span = format!("{}k / {}k", last.0 / 1000, first.0 / 1000);
    support::record(&[
        support::Row::at_most(
            &format!("scale: find_by_id {span}"),
            ratio(last.1, first.1),
            1.5,
            curve(|r| r.1),
        ),
        support::Row::report(
            &format!("scale: keyset page {span} (scan)"),
            ratio(last.2, first.2),
            curve(|r| r.2),
        ),
        support::Row::report(
            &format!("scale: unique finder {span} (scan)"),
            ratio(last.3, first.3),
            curve(|r| r.3),
        ),
    ]);
}
