//! The hash-chained audit log against the real servers: linear under concurrent appenders on
//! several handles, independent per tenant, every kind of tampering named by `verify`, a
//! consistent tail rewrite caught against the checkpoint published to Kafka, and the shipped
//! Python verifier agreeing with the runtime.

use caas_storage_tests as common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use caas_storage::audit::{
    AuditEntry, AuditLog, AuditOptions, BreakKind, Checkpoint, NewAuditEntry,
};
use caas_storage::bson::{doc, Document};
use caas_storage::outbox::{EventEnvelope, RelayOptions};
use caas_storage::prelude::*;
use caas_storage::{FaultPoint, HealthStatus};
use rdkafka::Message;

const DB: &str = "caas_audit_it";

/// The options of one test: its own topic (a Kafka topic per test) and collections derived
/// from it, so tests running at once never read each other's entries or checkpoints.
fn options(topic: &str) -> AuditOptions {
    let mut o = AuditOptions::for_database(DB);
    let suffix = topic.rsplit('-').next().unwrap();
    o.topic = topic.to_owned();
    o.collection = format!("log_{suffix}");
    o.checkpoint_collection = format!("checkpoints_{suffix}");
    o
}

fn unique(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::now_v7().simple())
}

fn entry(i: usize, who: &str) -> NewAuditEntry {
    NewAuditEntry::new("doc.viewed", who, format!("doc:{i}"))
        .with_details(serde_json::json!({ "i": i, "via": "test", "nested": { "b": 1, "a": [i] } }))
}

async fn raw(
    storage: &Storage,
    topic: &str,
) -> caas_storage::driver::mongodb::Collection<Document> {
    storage
        .raw()
        .database(DB)
        .collection(&options(topic).collection)
}

/// Runs `docs/audit_verify.py` on `entries` written as JSON lines; (exit success, output).
fn python_verify(entries: &[AuditEntry]) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("{}.jsonl", unique("audit-chain")));
    let lines: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit_verify.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 runs docs/audit_verify.py");
    let _ = std::fs::remove_file(&path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_appenders_on_two_handles_build_one_linear_chain_the_python_verifier_accepts() {
    let (a, b) = (common::storage().await, common::storage().await);
    let topic = unique("test.audit");
    let logs = [
        a.audit_log(options(&topic)).unwrap(),
        b.audit_log(options(&topic)).unwrap(),
    ];
    let tenant = common::tenant("audit-linear");
    let (appenders, each) = (8usize, 500usize);
    let mut tasks = Vec::new();
    for w in 0..appenders {
        let log = logs[w % 2].clone();
        let tenant = tenant.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(each);
            for i in 0..each {
                let e = log
                    .append(&tenant, entry(i, &format!("w{w}")))
                    .await
                    .unwrap();
                seqs.push(e.sequence);
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for s in t.await.unwrap() {
            assert!(all.insert(s), "sequence {s} handed out twice");
        }
    }
    let total = (appenders * each) as u64;
    assert_eq!(all, (1..=total).collect::<BTreeSet<u64>>());

    let report = logs[0].verify(&tenant, ..).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.checked, total);
    let entries = logs[1].entries(&tenant, ..).await.unwrap();
    assert_eq!(entries.len() as u64, total);
    let (ok, said) = python_verify(&entries);
    assert!(ok, "the Python verifier refused an intact chain: {said}");
    let head = report.last_intact.unwrap();
    assert_eq!(
        said,
        format!("ok: {total} entries, head {} {}", head.0, head.1)
    );

    // The script is no rubber stamp: one changed byte and it names the entry.
    let mut altered = entries.clone();
    altered[41].actor.push('!');
    let (ok, said) = python_verify(&altered);
    assert!(!ok);
    assert_eq!(said, "broken at sequence 42: altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_appending_at_once_get_independent_chains_and_batches_stay_linear() {
    let (a, b) = (common::storage().await, common::storage().await);
    let topic = unique("test.audit");
    let logs = [
        a.audit_log(options(&topic)).unwrap(),
        b.audit_log(options(&topic)).unwrap(),
    ];
    let tenants = [common::tenant("audit-t1"), common::tenant("audit-t2")];
    let mut tasks = Vec::new();
    for (w, log) in logs.iter().enumerate() {
        for tenant in &tenants {
            let (log, tenant) = (log.clone(), tenant.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..10 {
                    // Batches of 25 from both handles race for the same positions.
                    let batch = (0..25)
                        .map(|i| entry(round * 25 + i, &format!("h{w}")))
                        .collect();
                    let stored = log.append_many(&tenant, batch).await.unwrap();
                    assert_eq!(stored.len(), 25);
                    for pair in stored.windows(2) {
                        assert_eq!(pair[1].sequence, pair[0].sequence + 1);
                        assert_eq!(pair[1].previous_hash, pair[0].hash);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for tenant in &tenants {
        let report = logs[0].verify(tenant, ..).await.unwrap();
        assert!(report.is_intact(), "{tenant}: {report:?}");
        assert_eq!(report.checked, 500, "{tenant}");
        let entries = logs[0].entries(tenant, ..).await.unwrap();
        assert!(entries.iter().all(|e| e.tenant == tenant.as_str()));
        assert_eq!(entries[0].previous_hash, caas_storage::audit::GENESIS_HASH);
        assert!(python_verify(&entries).0);
    }
}

/// Appends `n` entries and returns the log.
async fn chain_of(storage: &Storage, topic: &str, tenant: &TenantId, n: usize) -> AuditLog {
    let log = storage.audit_log(options(topic)).unwrap();
    let batch = (0..n).map(|i| entry(i, "u1")).collect();
    log.append_many(tenant, batch).await.unwrap();
    log
}

fn key(tenant: &TenantId, seq: u64) -> String {
    format!("{tenant}:{seq:020}")
}

#[tokio::test]
async fn verify_names_the_first_altered_deleted_or_reordered_entry() {
    let storage = common::storage().await;
    let topic = unique("test.audit");
    let coll = raw(&storage, &topic).await;

    // One byte of one field, changed with the raw driver.
    let tenant = common::tenant("audit-flip");
    let log = chain_of(&storage, &topic, &tenant, 20).await;
    assert!(log.verify(&tenant, ..).await.unwrap().is_intact());
    coll.update_one(
        doc! { "_id": key(&tenant, 7) },
        doc! { "$set": { "actor": "u2" } },
    )
    .await
    .unwrap();
    let report = log.verify(&tenant, ..).await.unwrap();
    let broken = report.broken.expect("an altered entry is caught");
    assert_eq!((broken.sequence, broken.kind), (7, BreakKind::Altered));
    assert_eq!(report.checked, 6);
    // Entries before it still verify on their own.
    assert!(log.verify(&tenant, ..=6).await.unwrap().is_intact());

    // One entry deleted.
    let tenant = common::tenant("audit-delete");
    let log = chain_of(&storage, &topic, &tenant, 20).await;
    coll.delete_one(doc! { "_id": key(&tenant, 12) })
        .await
        .unwrap();
    let broken = log.verify(&tenant, ..).await.unwrap().broken.unwrap();
    assert_eq!((broken.sequence, broken.kind), (12, BreakKind::Missing));

    // Two entries swapped (each moved to the other's position, fields intact).
    let tenant = common::tenant("audit-swap");
    let log = chain_of(&storage, &topic, &tenant, 20).await;
    let e3 = coll
        .find_one(doc! { "_id": key(&tenant, 3) })
        .await
        .unwrap()
        .unwrap();
    let e4 = coll
        .find_one(doc! { "_id": key(&tenant, 4) })
        .await
        .unwrap()
        .unwrap();
    coll.delete_many(doc! { "_id": { "$in": [key(&tenant, 3), key(&tenant, 4)] } })
        .await
        .unwrap();
    let moved = |mut d: Document, seq: i64| {
        d.insert("_id", key(&tenant, seq as u64));
        d.insert("sequence", seq);
        d
    };
    coll.insert_many([moved(e4, 3), moved(e3, 4)])
        .await
        .unwrap();
    let broken = log.verify(&tenant, ..).await.unwrap().broken.unwrap();
    assert_eq!(broken.sequence, 3);
    assert_eq!(broken.kind, BreakKind::Altered, "the sequence is hashed");
}

/// Reads `topic` from the beginning until a checkpoint of `tenant` at `sequence` arrives.
async fn published_checkpoint(topic: &str, tenant: &TenantId, sequence: u64) -> Checkpoint {
    let deadline = Instant::now() + Duration::from_secs(30);
    let consumer =
        common::reader_from_beginning(topic, &unique("audit-test-reader"), deadline).await;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .expect("the checkpoint reached Kafka in time")
            .unwrap();
        let event = EventEnvelope::from_json(m.payload().unwrap()).unwrap();
        if let Some(cp) = Checkpoint::from_event(&event) {
            if cp.tenant == tenant.as_str() && cp.sequence == sequence {
                return cp;
            }
        }
    }
}

#[tokio::test]
async fn a_tail_rewritten_consistently_is_caught_against_the_published_checkpoint() {
    let storage = common::storage().await;
    let topic = unique("test.audit");
    let coll = raw(&storage, &topic).await;
    let tenant = common::tenant("audit-rewrite");
    let log = chain_of(&storage, &topic, &tenant, 20).await;
    let cp = log.checkpoint(&tenant).await.unwrap().expect("a head");
    assert_eq!(cp.sequence, 20);
    // Checkpointing again at the same head publishes nothing new.
    assert!(log
        .checkpoint_all()
        .await
        .unwrap()
        .iter()
        .all(|c| c.tenant != tenant.as_str()));

    let relay = storage
        .outbox_relay(RelayOptions::for_databases([DB]))
        .unwrap();
    let published = async {
        loop {
            relay.drain_once().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let from_kafka = tokio::select! {
        cp = published_checkpoint(&topic, &tenant, 20) => cp,
        _ = published => unreachable!(),
    };
    assert_eq!(from_kafka.hash, cp.hash);
    let status = log.status().await.unwrap();
    assert_eq!(status.backlog, 0);
    assert!(status.last_checkpoint_age.is_some());

    // Rewrite entries 15..=20: change one field of 15, re-hash it and every later entry, so the
    // chain verifies on its own.
    let mut entries = log.entries(&tenant, 14..).await.unwrap();
    let mut previous = entries[0].hash.clone();
    for e in entries.iter_mut().skip(1) {
        if e.sequence == 15 {
            e.actor = "someone-else".into();
        }
        e.previous_hash = previous.clone();
        e.hash = e.computed_hash();
        previous = e.hash.clone();
        coll.update_one(
            doc! { "_id": key(&tenant, e.sequence) },
            doc! { "$set": { "actor": &e.actor, "previous_hash": &e.previous_hash, "hash": &e.hash } },
        )
        .await
        .unwrap();
    }
    // The stored checkpoint catches it...
    let broken = log.verify(&tenant, ..).await.unwrap().broken.unwrap();
    assert_eq!(broken.sequence, 20);
    assert!(
        matches!(broken.kind, BreakKind::CheckpointMismatch { .. }),
        "{broken:?}"
    );
    // ...and so does the published one, after the stored checkpoints were rewritten too.
    storage
        .raw()
        .database(DB)
        .collection::<Document>(&options(&topic).checkpoint_collection)
        .delete_many(doc! { "tenant": tenant.as_str() })
        .await
        .unwrap();
    assert!(
        log.verify(&tenant, ..).await.unwrap().is_intact(),
        "the rewrite is consistent"
    );
    let report = log.verify_against(&tenant, &from_kafka).await.unwrap();
    let broken = report.broken.unwrap();
    assert_eq!(broken.sequence, 20);
    assert_eq!(
        broken.kind,
        BreakKind::CheckpointMismatch {
            published: from_kafka.hash.clone()
        }
    );

    // A tail cut below the published head is caught as missing.
    coll.delete_many(doc! { "tenant": tenant.as_str(), "sequence": { "$gte": 18 } })
        .await
        .unwrap();
    let broken = log
        .verify_against(&tenant, &from_kafka)
        .await
        .unwrap()
        .broken
        .unwrap();
    assert_eq!((broken.sequence, broken.kind), (20, BreakKind::Missing));
}

#[tokio::test]
async fn bad_audit_options_name_the_key() {
    let storage = common::storage().await;
    let mut o = AuditOptions::for_database(DB);
    o.checkpoint_collection = o.collection.clone();
    let err = storage.audit_log(o).unwrap_err().to_string();
    assert!(err.contains("audit.checkpoint_collection"), "{err}");
    let mut o = AuditOptions::for_database(DB);
    o.max_attempts = 0;
    let err = storage.audit_log(o).unwrap_err().to_string();
    assert!(err.contains("audit.max_attempts"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_entries_survive_a_drainer_dying_and_are_appended_exactly_once_in_order() {
    let topic = unique("test.audit");
    let tenant = common::tenant("audit-queued");
    // Acknowledged, then the process "dies" before anything was applied.
    let queued: Vec<String> = {
        let storage = common::storage().await;
        let log = storage.audit_log(options(&topic)).unwrap();
        let mut ids = Vec::new();
        for i in 0..120 {
            ids.push(log.append_queued(&tenant, entry(i, "q")).await.unwrap());
        }
        ids
    };
    let storage = common::storage().await;
    let log = storage.audit_log(options(&topic)).unwrap();
    // Health shows what waits in the queue.
    let health = storage.health().await;
    let audit = health
        .component(&format!("audit/{DB}.{}", options(&topic).collection))
        .expect("the audit log is in the health report");
    assert_eq!(audit.status, HealthStatus::Up, "{audit:?}");
    assert!(
        audit.details["queued"].as_u64().unwrap() >= 120,
        "{audit:?}"
    );
    // Direct appends interleave with the queue's.
    log.append(&tenant, entry(0, "direct")).await.unwrap();
    // The next drainer dies after appending its batch, before recording it as done.
    storage.inject_fault(FaultPoint::AuditQueueAfterApply);
    assert!(log.drain_queued(&tenant).await.is_err());
    log.append(&tenant, entry(1, "direct")).await.unwrap();
    // Another handle takes over: nothing twice, nothing lost.
    let other = common::storage().await;
    let log2 = other.audit_log(options(&topic)).unwrap();
    assert_eq!(
        log2.drain_queued(&tenant).await.unwrap(),
        0,
        "the batch was applied"
    );
    for i in 120..150 {
        queued_push(&log2, &tenant, i).await;
    }
    assert_eq!(log2.drain_all_queued().await.unwrap(), 30);
    assert_eq!(
        log2.drain_queued(&tenant).await.unwrap(),
        0,
        "the queue is empty"
    );

    let report = log2.verify(&tenant, ..).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    let entries = log2.entries(&tenant, ..).await.unwrap();
    assert_eq!(entries.len(), 152);
    let from_queue: Vec<&str> = entries
        .iter()
        .filter(|e| e.actor == "q")
        .map(|e| e.audit_id.as_str())
        .collect();
    assert_eq!(from_queue.len(), 150);
    assert_eq!(
        &from_queue[..120],
        queued.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let unique_ids: BTreeSet<&str> = entries.iter().map(|e| e.audit_id.as_str()).collect();
    assert_eq!(
        unique_ids.len(),
        entries.len(),
        "an entry was appended twice"
    );
    assert!(python_verify(&entries).0);
}

async fn queued_push(log: &AuditLog, tenant: &TenantId, i: usize) {
    log.append_queued(tenant, entry(i, "q")).await.unwrap();
}
