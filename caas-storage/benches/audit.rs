//! The audit log's append throughput for one tenant, against a hand-written `insert_one` of
//! the same document shape with no chain (the baseline), in the same run, alternating rounds:
//!
//! - appends/s with 1, 4 and 16 concurrent appenders on one handle, and 8 on two handles
//!   (the handles race for positions);
//! - `append_many` (batches of 50) against single appends, per entry;
//! - queued appends (acknowledged once in Redis) against direct ones.
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench -p caas-storage --bench audit
//! ```

mod support;

use std::time::Instant;

use caas_storage::audit::{AuditLog, AuditOptions, NewAuditEntry};
use caas_storage::bson::{doc, Document};
use caas_storage::prelude::*;

const DB: &str = "caas_bench_audit";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn entry(i: usize) -> NewAuditEntry {
    NewAuditEntry::new("doc.viewed", "bench", format!("doc:{i}"))
        .with_details(serde_json::json!({ "i": i, "ip": "10.0.0.7" }))
}

/// Entries per second for `appenders` tasks spread over `logs`, `per` appends each.
async fn appends_per_second(
    logs: &[AuditLog],
    tenant: &TenantId,
    appenders: usize,
    per: usize,
) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|w| {
            let (log, tenant) = (logs[w % logs.len()].clone(), tenant.clone());
            tokio::spawn(async move {
                for i in 0..per {
                    log.append(&tenant, entry(i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (appenders * per) as f64 / start.elapsed().as_secs_f64()
}

/// Hand-written baseline: `insert_one` of a document of the same shape, no sequence or hash.
async fn raw_inserts_per_second(storage: &Storage, appenders: usize, per: usize) -> f64 {
    let coll = storage.raw().database(DB).collection::<Document>("raw");
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|w| {
            let coll = coll.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    coll.insert_one(doc! {
                        "_id": uuid::Uuid::now_v7().to_string(), "tenant": "bench", "action": "doc.viewed",
                        "actor": format!("w{w}"), "target": format!("doc:{i}"),
                        "details": "{\"i\":1,\"ip\":\"10.0.0.7\"}", "created_at": caas_storage::bson::DateTime::now(),
                        "previous_hash": "0".repeat(64), "hash": "0".repeat(64), "sequence": i as i64,
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (appenders * per) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let per_round: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192);
    let mut config = StorageConfig::from_env().unwrap();
    config.redis.key_prefix = "bench:".into();
    let a = Storage::connect(config.clone()).await.unwrap();
    let b = Storage::connect(config).await.unwrap();
    a.raw().database(DB).drop().await.unwrap();
    let options = AuditOptions::for_database(DB);
    let (la, lb) = (
        a.audit_log(options.clone()).unwrap(),
        b.audit_log(options).unwrap(),
    );
    let mut tenant_no = 0;
    let mut fresh = || {
        tenant_no += 1;
        TenantId::new(format!("bench-{tenant_no}")).unwrap()
    };

    let mut rows = Vec::new();
    println!("audit appends, one tenant, {rounds} rounds x {per_round} entries per configuration");
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "configuration", "entries/s", "raw insert/s", "ratio"
    );
    for (label, appenders, two_handles) in [
        ("1 appender", 1usize, false),
        ("4 appenders", 4, false),
        ("16 appenders", 16, false),
        ("8 appenders on 2 handles", 8, true),
    ] {
        let logs = if two_handles {
            vec![la.clone(), lb.clone()]
        } else {
            vec![la.clone()]
        };
        let (mut chain, mut raw) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let per = per_round / appenders;
            let t = fresh();
            if r % 2 == 0 {
                chain.push(appends_per_second(&logs, &t, appenders, per).await);
                raw.push(raw_inserts_per_second(&a, appenders, per).await);
            } else {
                raw.push(raw_inserts_per_second(&a, appenders, per).await);
                chain.push(appends_per_second(&logs, &t, appenders, per).await);
            }
        }
        let (c, r) = (median(chain), median(raw));
        println!("{label:<34} {c:>12.0} {r:>12.0} {:>8.3}", c / r);
        rows.push(support::Row::report(
            &format!("audit: {label} / raw inserts"),
            c / r,
            format!("{c:.0} vs {r:.0} entries/s"),
        ));
    }

    let (mut batched, mut single, mut queued) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = fresh();
        let start = Instant::now();
        for chunk in 0..per_round / 48 {
            la.append_many(&t, (0..48).map(|i| entry(chunk * 48 + i)).collect())
                .await
                .unwrap();
        }
        batched.push(per_round as f64 / start.elapsed().as_secs_f64());
        let t = fresh();
        single.push(appends_per_second(std::slice::from_ref(&la), &t, 1, per_round).await);
        let t = fresh();
        let start = Instant::now();
        for i in 0..per_round {
            la.append_queued(&t, entry(i)).await.unwrap();
        }
        queued.push(per_round as f64 / start.elapsed().as_secs_f64());
        la.drain_queued(&t).await.unwrap();
    }
    let (m, s, q) = (median(batched), median(single), median(queued));
    println!(
        "{:<34} {m:>12.0} {s:>12.0} {:>8.1}x",
        "append_many(48) vs single",
        m / s
    );
    println!(
        "{:<34} {q:>12.0} {s:>12.0} {:>8.1}x",
        "queued (acknowledged) vs single",
        q / s
    );
}
