//! Backup and restore memory: peak RSS (`VmHWM`) of a process that backs up, verifies and
//! restores 10k documents, against one that does the same with 100k. Streaming both ways
//! (cursor -> encoder -> file, file -> decoder -> batched inserts) keeps it flat: the target is
//! a ratio of about 1 (at most 1.5).
//!
//! Each size runs in a process of its own (this binary, re-executed with
//! `CAAS_BACKUP_BENCH_CHILD=<size>`), so one size's peak cannot hide the other's.
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench -p caas-storage --bench backup
//! ```

#[path = "support.rs"]
mod support;

use std::time::Instant;

use caas_storage::backup::{BackupPlan, RestorePlan};
use caas_storage::bson::{doc, Document};
use caas_storage::entity::EntityMeta;
use caas_storage::prelude::*;

const DB: &str = "caas_bench_backup";

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench_backup", collection = "small", consistency = strong)]
#[index(keys(email))]
struct Small {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    pub bio: String,
    pub score: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench_backup", collection = "large", consistency = strong)]
#[index(keys(email))]
struct Large {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    pub bio: String,
    pub score: i64,
}

const TENANT: &str = "bench";

fn meta_for(size: usize) -> &'static EntityMeta {
    if size <= 10_000 {
        Small::META
    } else {
        Large::META
    }
}

/// Peak resident set size of this process so far, in KiB.
fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

async fn seed(storage: &Storage, meta: &EntityMeta, n: usize) {
    let coll = storage
        .raw()
        .database(DB)
        .collection::<Document>(meta.collection);
    if coll.count_documents(doc! {}).await.unwrap() == n as u64 {
        return;
    }
    coll.drop().await.unwrap();
    storage
        .sync_indexes_with(meta, Default::default())
        .await
        .unwrap();
    let bio = "lorem ipsum dolor sit amet ".repeat(12);
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        let id = format!("u{i:07}");
        batch.push(doc! {
            "_id": format!("{TENANT}:{id}"), "id": &id, "tenant_id": TENANT,
            "email": format!("{id}@example.com"), "bio": &bio, "score": i as i64,
            "_schema_version": 1_i64,
        });
        if batch.len() == 1000 {
            coll.insert_many(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    if !batch.is_empty() {
        coll.insert_many(batch).await.unwrap();
    }
}

/// One size, in this process: backup, verify, restore into a fresh database.
async fn child(size: usize) {
    let mut config = StorageConfig::from_env().unwrap();
    config.migrations.database = format!("caas_bench_backup_ledger_{}", std::process::id());
    let storage = Storage::connect(config).await.unwrap();
    let meta = meta_for(size);
    let baseline = vm_hwm_kb();
    let path = std::env::temp_dir().join(format!("caas-bench-backup-{size}.caasbak"));
    let started = Instant::now();
    let plan = BackupPlan::new()
        .meta(meta)
        .tenant(TenantId::new(TENANT).unwrap());
    let report = storage
        .backup(&plan, std::fs::File::create(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(report.sections[0].documents, size as u64);
    let backup_secs = started.elapsed().as_secs_f64();
    let after_backup = vm_hwm_kb();
    storage.verify_archive(&path).await.unwrap();
    let target = format!("caas_bench_backup_restore_{}", std::process::id());
    let started = Instant::now();
    let restored = storage
        .restore(&RestorePlan::new().database(DB, &target), &path)
        .await
        .unwrap();
    assert_eq!(restored.sections[0].inserted, size as u64);
    let restore_secs = started.elapsed().as_secs_f64();
    let after_restore = vm_hwm_kb();
    let bytes = std::fs::metadata(&path).unwrap().len();
    storage.raw().database(&target).drop().await.unwrap();
    storage
        .raw()
        .database(&storage.config().migrations.database)
        .drop()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    println!(
        "RESULT {size} {baseline} {after_backup} {after_restore} {bytes} {backup_secs:.2} {restore_secs:.2}"
    );
}

struct Run {
    size: usize,
    baseline: u64,
    backup: u64,
    restore: u64,
    bytes: u64,
    backup_secs: f64,
    restore_secs: f64,
}

fn run_child(size: usize) -> Run {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("CAAS_BACKUP_BENCH_CHILD", size.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "child for {size} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("a RESULT line");
    let f: Vec<&str> = line.split_whitespace().collect();
    Run {
        size,
        baseline: f[1].parse().unwrap(),
        backup: f[2].parse().unwrap(),
        restore: f[3].parse().unwrap(),
        bytes: f[4].parse().unwrap(),
        backup_secs: f[5].parse().unwrap(),
        restore_secs: f[6].parse().unwrap(),
    }
}

#[tokio::main]
async fn main() {
    if let Ok(size) = std::env::var("CAAS_BACKUP_BENCH_CHILD") {
        child(size.parse().unwrap()).await;
        return;
    }
    let (small, large) = (
        support::env_usize("BENCH_BACKUP_SMALL", 10_000),
        support::env_usize("BENCH_BACKUP_LARGE", 100_000),
    );
    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    seed(&storage, Small::META, small).await;
    seed(&storage, Large::META, large).await;
    println!(
        "seeded {small} + {large} documents in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let runs = [run_child(small), run_child(large)];
    println!(
        "{:>8} {:>12} {:>16} {:>17} {:>12} {:>9} {:>10}",
        "docs",
        "start KiB",
        "peak backup KiB",
        "peak restore KiB",
        "archive B",
        "backup s",
        "restore s"
    );
    for r in &runs {
        println!(
            "{:>8} {:>12} {:>16} {:>17} {:>12} {:>9.2} {:>10.2}",
            r.size, r.baseline, r.backup, r.restore, r.bytes, r.backup_secs, r.restore_secs
        );
    }
    let ratio = runs[1].restore as f64 / runs[0].restore as f64;
    let backup_ratio = runs[1].backup as f64 / runs[0].backup as f64;
    println!(
        "peak RSS {}k / {}k: backup {backup_ratio:.3}, backup+restore {ratio:.3} (target <= 1.5, flat ~ 1)",
        large / 1000,
        small / 1000
    );
    support::record(&[
        support::Row::at_most(
            "backup: peak RSS 100k/10k docs",
            backup_ratio,
            1.5,
            format!("{} KiB vs {} KiB", runs[1].backup, runs[0].backup),
        ),
        support::Row::at_most(
            "restore: peak RSS 100k/10k docs",
            ratio,
            1.5,
            format!("{} KiB vs {} KiB", runs[1].restore, runs[0].restore),
        ),
    ]);
}
