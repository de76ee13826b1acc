//! Logical backup and restore against the real servers (`docs/backup.md`).
//!
//! - Two tenants backed up and restored into a fresh database: the same documents byte for
//!   byte, the same indexes, the same migration ledger; a third tenant stays out.
//! - Restored into another tenant id: the repository finds the copy by id under the new
//!   tenant, changing it leaves the original alone.
//! - Corrupted, truncated, tampered and foreign archives are refused naming what is wrong,
//!   with nothing written.
//! - A restore interrupted mid-way is resumed to the same end state, or rolled back to
//!   nothing.
//!
//! Every test has its own tenants, its own target database and its own ledger database.

use caas_storage_tests as common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use caas_storage::backup::{BackupPlan, RestorePlan, RESTORE_JOURNAL_COLLECTION};
use caas_storage::bson::{doc, Document};
use caas_storage::migrations::LEDGER_COLLECTION;
use caas_storage::prelude::*;
use futures::TryStreamExt;

const DB: &str = "caas_backup_tests";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_backup_tests", collection = "accounts", consistency = strong,
             soft_delete, cache(ttl = "5m"))]
#[index(keys(email), unique)]
#[index(keys(plan))]
struct Account {
    #[repository(id)]
    pub account_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    pub plan: String,
    pub balance: i64,
    pub opened: DateTime,
    #[repository(secret)]
    #[serde(default)]
    pub api_key: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_backup_tests", collection = "notes", consistency = strong)]
#[index(keys(topic))]
struct Note {
    #[repository(id)]
    pub note_id: i64,
    #[repository(tenant)]
    pub tenant_id: String,
    pub topic: String,
    pub body: String,
}

fn account(t: &TenantId, i: usize) -> Account {
    Account {
        account_id: format!("acc-{i:05}"),
        tenant_id: t.to_string(),
        email: format!("user{i}@example.com"),
        plan: ["free", "pro", "team"][i % 3].into(),
        balance: (i as i64) * 7 - 100,
        opened: DateTime::from_millis(1_700_000_000_000 + i as i64),
        api_key: format!("secret-{i}"),
        version: 0,
    }
}

fn note(t: &TenantId, i: usize) -> Note {
    Note {
        note_id: i as i64,
        tenant_id: t.to_string(),
        topic: format!("topic-{}", i % 5),
        body: "x".repeat(50 + i % 30),
    }
}

/// A unique label for databases and files of this test.
fn unique(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{label}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A handle whose migration ledger (and restore journals) live in `ledger_db`.
async fn storage_with_ledger(ledger_db: &str) -> Storage {
    let mut c = common::config();
    c.migrations.database = ledger_db.to_owned();
    Storage::connect(c).await.unwrap()
}

fn archive_path(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!("caas-backup-{}.caasbak", unique(label)))
}

/// Accounts and notes of `t`: `n` accounts (one in a hundred soft-deleted), `n / 2` notes.
async fn seed(storage: &Storage, t: &TenantId, n: usize) {
    let accounts = AccountRepository::new(storage);
    let notes = NoteRepository::new(storage);
    let list: Vec<Account> = (0..n).map(|i| account(t, i)).collect();
    for chunk in list.chunks(500) {
        accounts.insert_many(t, chunk).await.unwrap();
    }
    for i in (0..n).step_by(100) {
        assert!(accounts.delete(t, &format!("acc-{i:05}")).await.unwrap());
    }
    let list: Vec<Note> = (0..n / 2).map(|i| note(t, i)).collect();
    for chunk in list.chunks(500) {
        notes.insert_many(t, chunk).await.unwrap();
    }
}

/// The stored documents of `tenants` in `db.coll`, by `_id`.
async fn stored(storage: &Storage, db: &str, coll: &str, tenants: &[&TenantId]) -> Vec<Document> {
    let list: Vec<&str> = tenants.iter().map(|t| t.as_str()).collect();
    let mut docs: Vec<Document> = storage
        .raw()
        .database(db)
        .collection::<Document>(coll)
        .find(doc! { "tenant_id": { "$in": list } })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.sort_by(|a, b| a.get_str("_id").unwrap().cmp(b.get_str("_id").unwrap()));
    docs
}

/// Index name, keys and uniqueness of `db.coll`, sorted by name.
async fn indexes(storage: &Storage, db: &str, coll: &str) -> Vec<(String, Document, bool)> {
    let mut out: Vec<(String, Document, bool)> = storage
        .raw()
        .database(db)
        .collection::<Document>(coll)
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|ix| {
            let o = ix.options.unwrap_or_default();
            (
                o.name.unwrap_or_default(),
                ix.keys,
                o.unique.unwrap_or(false),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn ledger(storage: &Storage, db: &str) -> Vec<Document> {
    storage
        .raw()
        .database(db)
        .collection::<Document>(LEDGER_COLLECTION)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A few ledger records, as `Storage::migrate` writes them.
async fn seed_ledger(storage: &Storage, db: &str) {
    let now = DateTime::now();
    storage
        .raw()
        .database(db)
        .collection::<Document>(LEDGER_COLLECTION)
        .insert_many([
            doc! { "_id": "schema:caas_backup_tests.accounts:Account:1->2", "kind": "schema",
            "checksum": "0123456789abcdef", "applied_at": now, "host": "h:1", "token": 1_i64,
            "documents": 10_i64 },
            doc! { "_id": "indexes:caas_backup_tests.accounts:Account@00aa", "kind": "indexes",
            "checksum": "00aa", "applied_at": now, "host": "h:1", "token": 1_i64 },
            doc! { "_id": "data:2026-01-split", "kind": "data", "order": 1_i64,
            "checksum": "beef", "applied_at": now, "host": "h:2", "token": 2_i64 },
        ])
        .await
        .unwrap();
}

/// Removes the documents of `tenants` from the shared source collections.
async fn forget(storage: &Storage, tenants: &[&TenantId]) {
    let list: Vec<&str> = tenants.iter().map(|t| t.as_str()).collect();
    for coll in ["accounts", "notes"] {
        storage
            .raw()
            .database(DB)
            .collection::<Document>(coll)
            .delete_many(doc! { "tenant_id": { "$in": &list } })
            .await
            .unwrap();
    }
}

async fn drop_dbs(storage: &Storage, dbs: &[&str]) {
    for db in dbs {
        storage.raw().database(db).drop().await.unwrap();
    }
}

#[tokio::test]
async fn two_tenants_restore_into_a_fresh_database_identically() {
    let (src_ledger, dst_ledger, target) = (
        unique("caas_bk_ledger_src"),
        unique("caas_bk_ledger_dst"),
        unique("caas_bk_fresh"),
    );
    let source = storage_with_ledger(&src_ledger).await;
    source.sync_indexes::<Account>().await.unwrap();
    source.sync_indexes::<Note>().await.unwrap();
    seed_ledger(&source, &src_ledger).await;
    let (a, b, other) = (
        common::tenant("bk-a"),
        common::tenant("bk-b"),
        common::tenant("bk-other"),
    );
    seed(&source, &a, 600).await;
    seed(&source, &b, 400).await;
    seed(&source, &other, 50).await;

    let path = archive_path("two");
    let plan = BackupPlan::new()
        .metas(&[Account::META, Note::META])
        .tenants([a.clone(), b.clone()]);
    let report = source
        .backup(&plan, std::fs::File::create(&path).unwrap())
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let counts: Vec<(String, u64)> = report
        .sections
        .iter()
        .map(|s| (s.namespace.clone(), s.documents))
        .collect();
    assert_eq!(
        counts,
        [
            (format!("{DB}.accounts"), 1000),
            (format!("{DB}.notes"), 500),
            (format!("{src_ledger}.{LEDGER_COLLECTION}"), 3),
        ]
    );
    assert!(!report.point_in_time || source.capabilities().transactions);
    assert!(!report.consistency.is_empty());

    let summary = source.verify_archive(&path).await.unwrap();
    assert_eq!(summary.documents, 1503);
    assert_eq!(summary.archive_sha256, report.archive_sha256);
    assert_eq!(summary.sections[0].tenants.len(), 2);

    let restorer = storage_with_ledger(&dst_ledger).await;
    let restored = restorer
        .restore(&RestorePlan::new().database(DB, &target), &path)
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&restored).unwrap());
    assert_eq!(restored.state, "restored");
    assert!(restored.sections.iter().all(|s| s.verified));
    assert_eq!(
        restored.sections.iter().map(|s| s.inserted).sum::<u64>(),
        1503
    );

    for coll in ["accounts", "notes"] {
        let before = stored(&source, DB, coll, &[&a, &b]).await;
        let after = stored(&restorer, &target, coll, &[&a, &b, &other]).await;
        assert_eq!(before.len(), after.len(), "{coll}");
        assert!(before == after, "{coll}: restored documents differ");
        assert_eq!(
            indexes(&source, DB, coll).await,
            indexes(&restorer, &target, coll).await,
            "{coll}: indexes"
        );
    }
    // Soft-deleted documents came along, still deleted.
    let deleted = restorer
        .raw()
        .database(&target)
        .collection::<Document>("accounts")
        .count_documents(doc! { "_deleted_at": { "$ne": null } })
        .await
        .unwrap();
    assert_eq!(deleted, 10);
    assert_eq!(
        ledger(&source, &src_ledger).await,
        ledger(&restorer, &dst_ledger).await
    );

    // The same restore again changes nothing.
    let again = restorer
        .restore(&RestorePlan::new().database(DB, &target), &path)
        .await
        .unwrap();
    assert_eq!(again.state, "already_restored");

    // Restoring into a target that already holds those tenants is refused.
    let journal_free = storage_with_ledger(&unique("caas_bk_ledger_x")).await;
    let e = journal_free
        .restore(&RestorePlan::new().database(DB, &target), &path)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "backup", "{e}");
    assert!(e.to_string().contains("already holds"), "{e}");

    let _ = std::fs::remove_file(&path);
    forget(&source, &[&a, &b, &other]).await;
    drop_dbs(
        &source,
        &[
            &src_ledger,
            &dst_ledger,
            &target,
            &journal_free.config().migrations.database,
        ],
    )
    .await;
}

#[tokio::test]
async fn restore_into_another_tenant_is_an_isolated_copy() {
    let ledger_db = unique("caas_bk_ledger_clone");
    let storage = storage_with_ledger(&ledger_db).await;
    storage.sync_indexes::<Account>().await.unwrap();
    let (a, b) = (common::tenant("bk-src"), common::tenant("bk-clone"));
    seed(&storage, &a, 300).await;
    let accounts = AccountRepository::new(&storage);
    // A stale cache entry of B (its document removed behind the framework's back) must not
    // shadow the copy: the restore invalidates B's entries.
    let mut stale = account(&b, 1);
    stale.email = "stale@example.com".into();
    accounts.insert(&b, &stale).await.unwrap();
    let cached = accounts.find_by_id(&b, &"acc-00001".into()).await.unwrap();
    assert_eq!(cached.unwrap().email, "stale@example.com");
    forget(&storage, &[&b]).await;
    let original = accounts
        .find_by_id(&a, &"acc-00001".into())
        .await
        .unwrap()
        .unwrap();

    let path = archive_path("clone");
    let plan = BackupPlan::new()
        .entity::<Account>()
        .entity::<Note>()
        .tenant(a.clone());
    storage
        .backup(&plan, std::fs::File::create(&path).unwrap())
        .await
        .unwrap();
    let report = storage
        .restore(&RestorePlan::new().into_tenant(a.clone(), b.clone()), &path)
        .await
        .unwrap();
    assert_eq!(report.sections[0].tenants, vec![b.to_string()]);
    assert!(report.cache_entries_dropped >= 1, "{report:?}");
    assert_eq!(report.sections[0].inserted, 300);
    assert_eq!(report.sections[1].inserted, 150);

    // Found by id under the new tenant, re-keyed.
    let copy = accounts
        .find_by_id(&b, &"acc-00001".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy.tenant_id, b.as_str());
    assert_eq!(
        Account {
            tenant_id: a.to_string(),
            ..copy.clone()
        },
        original
    );
    let raw = storage
        .raw()
        .database(DB)
        .collection::<Document>("accounts")
        .find_one(doc! { "_id": format!("{b}:acc-00001") })
        .await
        .unwrap()
        .expect("the copy is stored under <new tenant>:<id>");
    assert_eq!(raw.get_str("tenant_id").unwrap(), b.as_str());
    assert_eq!(
        raw.get_str("api_key").unwrap(),
        "secret-1",
        "secrets are copied too"
    );
    // Soft-deleted stays deleted; queries and the per-tenant unique index work for B.
    assert_eq!(
        accounts.find_by_id(&b, &"acc-00000".into()).await.unwrap(),
        None
    );
    let notes = NoteRepository::new(&storage);
    assert_eq!(
        notes.find_by_id(&b, &7).await.unwrap().unwrap().tenant_id,
        b.as_str()
    );
    let dup = accounts.insert(&b, &account(&b, 999_001)).await;
    assert!(dup.is_ok(), "{dup:?}");
    let mut clash = account(&b, 999_002);
    clash.email = "user5@example.com".into();
    let e = accounts.insert(&b, &clash).await.unwrap_err();
    assert_eq!(e.kind(), "duplicate_key", "{e}");

    // Isolated: changing or deleting B's copy leaves A as it was.
    let mut changed = copy.clone();
    changed.balance = 1_000_000;
    accounts.replace(&b, &mut changed).await.unwrap();
    assert!(accounts.delete(&b, &"acc-00002".into()).await.unwrap());
    let a_now = accounts
        .find_by_id(&a, &"acc-00001".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a_now, original);
    assert!(accounts
        .find_by_id(&a, &"acc-00002".into())
        .await
        .unwrap()
        .is_some());
    assert_eq!(stored(&storage, DB, "accounts", &[&a]).await.len(), 300);
    assert_eq!(stored(&storage, DB, "accounts", &[&b]).await.len(), 301);

    // The same restore again is recognised; cloning into B without that journal is refused
    // (B is not empty), into a third tenant it is fine.
    let same = storage
        .restore(&RestorePlan::new().into_tenant(a.clone(), b.clone()), &path)
        .await
        .unwrap();
    assert_eq!(same.state, "already_restored");
    let other_ledger = unique("caas_bk_ledger_clone2");
    let other = storage_with_ledger(&other_ledger).await;
    let e = other
        .restore(&RestorePlan::new().into_tenant(a.clone(), b.clone()), &path)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
    let third = common::tenant("x");
    let again = storage
        .restore(
            &RestorePlan::new().into_tenant(a.clone(), third.clone()),
            &path,
        )
        .await;
    assert!(again.is_ok(), "a third tenant is fine: {again:?}");
    let e = storage
        .rollback_restore(
            &RestorePlan::new().into_tenant(a.clone(), TenantId::new("never").unwrap()),
            &path,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no restore journal"), "{e}");

    let _ = std::fs::remove_file(&path);
    forget(&storage, &[&a, &b, &third]).await;
    drop_dbs(&storage, &[&ledger_db, &other_ledger]).await;
}

fn decompress(path: &PathBuf) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn a_corrupted_truncated_or_foreign_archive_is_refused_with_nothing_written() {
    let ledger_db = unique("caas_bk_ledger_bad");
    let storage = storage_with_ledger(&ledger_db).await;
    let t = common::tenant("bk-bad");
    seed(&storage, &t, 400).await;
    let good = archive_path("good");
    storage
        .backup(
            &BackupPlan::new()
                .entity::<Account>()
                .entity::<Note>()
                .tenant(t.clone()),
            std::fs::File::create(&good).unwrap(),
        )
        .await
        .unwrap();
    let compressed = std::fs::read(&good).unwrap();
    let plain = decompress(&good);

    // A document's content changed inside a well-formed gzip stream: only the SHA-256s see it.
    let mut tampered = plain.clone();
    let at = tampered
        .windows(7)
        .position(|w| w == b"user123")
        .expect("a document names user123");
    tampered[at + 4] = b'9';
    // The trailer cut off at a record boundary: gzip is fine, the archive is not.
    let last_frame = plain.len() - 1 - plain.iter().rev().position(|b| *b == 6).unwrap();
    let mut flipped = compressed.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x5a;
    let mut wrong_version = plain.clone();
    wrong_version[8] = 9;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped", flipped, ""),
        (
            "truncated",
            compressed[..compressed.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        ("tampered", compress(&tampered), "checksum mismatch"),
        ("no trailer", compress(&plain[..last_frame]), "truncated"),
        (
            "foreign gzip",
            compress(b"{\"not\": \"a backup\"}\n"),
            "not a caas-storage backup",
        ),
        (
            "plain text",
            b"hello, this is not gzip at all".to_vec(),
            "not a caas-storage backup",
        ),
        ("empty", Vec::new(), "not a caas-storage backup"),
        (
            "format version",
            compress(&wrong_version),
            "format version 9",
        ),
    ];
    let target = unique("caas_bk_never");
    let restorer = storage_with_ledger(&unique("caas_bk_ledger_never")).await;
    for (name, bytes, expect) in cases {
        eprintln!("case {name}");
        let path = archive_path(name.replace(' ', "_").as_str());
        std::fs::write(&path, bytes).unwrap();
        let e = restorer
            .restore(&RestorePlan::new().database(DB, &target), &path)
            .await
            .expect_err(name);
        assert_eq!(e.kind(), "archive", "{name}: {e}");
        assert!(e.to_string().contains(expect), "{name}: {e}");
        assert!(
            e.to_string().contains(&path.display().to_string()),
            "{name}: {e}"
        );
        let e = restorer.verify_archive(&path).await.expect_err(name);
        assert_eq!(e.kind(), "archive", "{name}: {e}");
        let _ = std::fs::remove_file(&path);
    }
    // Nothing written anywhere: no target collection, no ledger, no journal.
    let names = restorer.raw().mongo().list_database_names().await.unwrap();
    assert!(!names.contains(&target), "target database created");
    assert!(
        !names.contains(&restorer.config().migrations.database),
        "journal or ledger written"
    );
    // The good archive still restores (so the cases above failed for their own reason).
    let ok = restorer
        .restore(&RestorePlan::new().database(DB, &target), &good)
        .await
        .unwrap();
    assert_eq!(ok.sections[0].inserted, 400);

    let _ = std::fs::remove_file(&good);
    forget(&storage, &[&t]).await;
    drop_dbs(
        &storage,
        &[&ledger_db, &target, &restorer.config().migrations.database],
    )
    .await;
}

#[tokio::test]
async fn an_interrupted_restore_resumes_or_rolls_back() {
    let ledger_db = unique("caas_bk_ledger_resume");
    let storage = storage_with_ledger(&ledger_db).await;
    storage.sync_indexes::<Account>().await.unwrap();
    seed_ledger(&storage, &ledger_db).await;
    let t = common::tenant("bk-resume");
    seed(&storage, &t, 1200).await;
    let path = archive_path("resume");
    storage
        .backup(
            &BackupPlan::new()
                .entity::<Account>()
                .entity::<Note>()
                .tenant(t.clone()),
            std::fs::File::create(&path).unwrap(),
        )
        .await
        .unwrap();
    let source = stored(&storage, DB, "accounts", &[&t]).await;

    // Resume: stopped after 4 batches of 100 accounts, then run again.
    let (target, restore_ledger) = (unique("caas_bk_resumed"), unique("caas_bk_ledger_r1"));
    let restorer = storage_with_ledger(&restore_ledger).await;
    let plan = RestorePlan::new().database(DB, &target).batch_size(100);
    let e = restorer
        .restore(&plan.clone().interrupt_after_batches(4), &path)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    let half = stored(&restorer, &target, "accounts", &[&t]).await;
    assert_eq!(half.len(), 400, "four batches written before the stop");
    let journal = restorer
        .raw()
        .database(&restore_ledger)
        .collection::<Document>(RESTORE_JOURNAL_COLLECTION)
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(journal.get_str("state").unwrap(), "running");
    let resumed = restorer.restore(&plan, &path).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.sections[0].inserted, 800);
    assert_eq!(resumed.sections[0].skipped_existing, 400);
    assert_eq!(resumed.sections[1].inserted, 600);
    assert_eq!(resumed.sections[2].inserted, 3, "ledger");
    assert!(resumed.sections.iter().all(|s| s.verified));
    assert!(stored(&restorer, &target, "accounts", &[&t]).await == source);

    // Roll back: stopped in the notes section, then rolled back to nothing.
    let (target2, restore_ledger2) = (unique("caas_bk_rolled"), unique("caas_bk_ledger_r2"));
    let restorer2 = storage_with_ledger(&restore_ledger2).await;
    let plan2 = RestorePlan::new().database(DB, &target2).batch_size(100);
    restorer2
        .restore(&plan2.clone().interrupt_after_batches(15), &path)
        .await
        .unwrap_err();
    assert_eq!(
        stored(&restorer2, &target2, "accounts", &[&t]).await.len(),
        1200
    );
    assert_eq!(
        stored(&restorer2, &target2, "notes", &[&t]).await.len(),
        300
    );
    let rolled = restorer2.rollback_restore(&plan2, &path).await.unwrap();
    assert_eq!(rolled.state, "rolled_back");
    assert_eq!(rolled.sections[0].removed, 1200);
    assert_eq!(rolled.sections[1].removed, 300);
    let left = restorer2
        .raw()
        .database(&target2)
        .list_collection_names()
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "collections the restore created are gone: {left:?}"
    );
    assert!(ledger(&restorer2, &restore_ledger2).await.is_empty());
    // And it can be restored again from scratch.
    let again = restorer2.restore(&plan2, &path).await.unwrap();
    assert!(!again.resumed);
    assert_eq!(again.sections[0].inserted, 1200);
    assert!(stored(&restorer2, &target2, "accounts", &[&t]).await == source);

    let _ = std::fs::remove_file(&path);
    forget(&storage, &[&t]).await;
    drop_dbs(
        &storage,
        &[
            &ledger_db,
            &target,
            &restore_ledger,
            &target2,
            &restore_ledger2,
        ],
    )
    .await;
}
