//! Schema versions and migrations against the real servers.
//!
//! - Documents written at version 1 with the driver read through a version 3 entity: from
//!   MongoDB, from a Redis entry a version 1 build put, from the in-process tier; written back
//!   only when configured; a newer document is an error, never a mangle; patches upgrade first.
//! - The batch migrator: 2,000 documents in CI (10,000 with `CAAS_TEST_MIGRATE_DOCS=10000`), stopped mid-way by a fault point, resumed by another
//!   handle: every document at version 3, every write counted once. Four handles migrating at
//!   once: each step applied once. A holder killed mid-step is taken over after its lease.
//! - The ledger: a tampered checksum is refused; rollbacks and data migrations are recorded.
//!
//! Every test has its own collection (the migrator rewrites whole collections) and its own
//! ledger database.

use caas_storage_tests as common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caas_storage::bson::{doc, Bson, Document};
use caas_storage::migrations::{
    checksum, MigrateOptions, Migration, MigrationContext, Migrations, Phase, StepState,
    LEDGER_COLLECTION,
};
use caas_storage::prelude::*;
use caas_storage::StepResult;
use futures::TryStreamExt;

const DB: &str = "caas_migrations_it";
const BULK_DB: &str = "caas_migrations_bulk_it";

// ---- the chain every test entity has: v1 {name, mail} -> v2 {full_name, mail} -> v3 {full_name,
// email}; each step appends to `history`, so a stored document shows every step that ran on it.

fn push_history(doc: &mut Document, step: &str) -> StepResult {
    let mut history = doc.get_array("history").cloned().unwrap_or_default();
    history.push(step.into());
    doc.insert("history", history);
    Ok(())
}

fn pop_history(doc: &mut Document) {
    if let Ok(h) = doc.get_array_mut("history") {
        h.pop();
    }
}

fn v1_to_v2(doc: &mut Document) -> StepResult {
    let name = doc.remove("name").ok_or("a version 1 profile has a name")?;
    doc.insert("full_name", name);
    push_history(doc, "1->2")
}

fn v2_to_v1(doc: &mut Document) -> StepResult {
    let name = doc.remove("full_name").ok_or("no full_name")?;
    doc.insert("name", name);
    pop_history(doc);
    Ok(())
}

fn v2_to_v3(doc: &mut Document) -> StepResult {
    let mail = doc.get_str("mail")?.to_lowercase();
    doc.remove("mail");
    doc.insert("email", mail);
    push_history(doc, "2->3")
}

fn v3_to_v2(doc: &mut Document) -> StepResult {
    let email = doc.remove("email").ok_or("no email")?;
    doc.insert("mail", email);
    pop_history(doc);
    Ok(())
}

/// The chain's steps with counters of their own, one copy per entity (tests run in parallel).
macro_rules! counted_steps {
    ($module:ident) => {
        mod $module {
            use super::*;
            pub static UP: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
            pub fn v1_to_v2(doc: &mut Document) -> StepResult {
                UP[0].fetch_add(1, Ordering::SeqCst);
                super::v1_to_v2(doc)
            }
            pub fn v2_to_v3(doc: &mut Document) -> StepResult {
                UP[1].fetch_add(1, Ordering::SeqCst);
                super::v2_to_v3(doc)
            }
            pub fn runs() -> [u64; 2] {
                [UP[0].load(Ordering::SeqCst), UP[1].load(Ordering::SeqCst)]
            }
        }
    };
}

counted_steps!(bulk_steps);
counted_steps!(fleet_steps);
counted_steps!(killed_steps);

/// A version 1 document, as the seed wrote them (no `_schema_version`), keyed as the runtime
/// keys documents (`_id = "<tenant>:<id>"`).
fn v1_doc(id_field: &str, id: &str, tenant: &TenantId, version: Option<i64>) -> Document {
    let mut d = doc! {
        "_id": format!("{}:{id}", tenant.as_str()), id_field: id, "tenant_id": tenant.as_str(),
        "name": format!("Name {id}"), "mail": format!("{}@Example.COM", id.to_uppercase()),
    };
    if let Some(v) = version {
        d.insert("version", v);
    }
    d
}

fn history_done() -> Bson {
    Bson::Array(vec!["1->2".into(), "2->3".into()])
}

/// A handle whose ledger is its own, with a short lock lease.
fn config(label: &str) -> StorageConfig {
    let mut c = common::config();
    c.migrations.database = format!("caas_mig_{label}_{}", std::process::id());
    c.migrations.lock_lease = Duration::from_secs(2);
    c
}

async fn fresh(storage: &Storage, collections: &[(&str, &str)]) {
    storage
        .raw()
        .database(&storage.config().migrations.database)
        .drop()
        .await
        .unwrap();
    for (db, coll) in collections {
        let db = storage.raw().database(db);
        db.collection::<Document>(coll).drop().await.unwrap();
        db.collection::<Document>(&format!("{coll}__version_claims"))
            .drop()
            .await
            .unwrap();
    }
}

async fn ledger(storage: &Storage) -> Vec<Document> {
    storage
        .raw()
        .database(&storage.config().migrations.database)
        .collection::<Document>(LEDGER_COLLECTION)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

// ---- upgrade on read -----------------------------------------------------------------------

/// The profile as a release at schema version 1 declared it.
mod v1 {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_migrations_it", collection = "profiles",
                 consistency = read_your_writes, cache(ttl = "5m", local(ttl = "5m", capacity = 1000)))]
    pub struct Profile {
        #[repository(id)]
        pub profile_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub name: String,
        pub mail: String,
        #[repository(version)]
        pub version: u64,
    }
}

/// The same profile at schema version 3.
mod v3 {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_migrations_it", collection = "profiles",
                 consistency = read_your_writes, cache(ttl = "5m", local(ttl = "5m", capacity = 1000)),
                 schema_version = 3)]
    #[migrate(from = 1, up = v1_to_v2, down = v2_to_v1)]
    #[migrate(from = 2, up = v2_to_v3, down = v3_to_v2)]
    pub struct Profile {
        #[repository(id)]
        pub profile_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub full_name: String,
        pub email: String,
        #[serde(default)]
        pub history: Vec<String>,
        #[repository(version)]
        pub version: u64,
    }
}

/// And at version 4, a release newer than the one under test.
mod v4 {
    use super::*;

    fn v3_to_v4(doc: &mut Document) -> StepResult {
        doc.insert("nickname", "");
        push_history(doc, "3->4")
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_migrations_it", collection = "profiles",
                 consistency = read_your_writes, cache(ttl = "5m"), schema_version = 4)]
    #[migrate(from = 1, up = v1_to_v2)]
    #[migrate(from = 2, up = v2_to_v3)]
    #[migrate(from = 3, up = v3_to_v4)]
    pub struct Profile {
        #[repository(id)]
        pub profile_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub full_name: String,
        pub email: String,
        pub nickname: String,
        #[serde(default)]
        pub history: Vec<String>,
        #[repository(version)]
        pub version: u64,
    }
}

fn profiles(storage: &Storage) -> caas_storage::driver::mongodb::Collection<Document> {
    storage.raw().database(DB).collection("profiles")
}

fn expected_v3(id: &str, tenant: &TenantId, version: u64) -> v3::Profile {
    v3::Profile {
        profile_id: id.into(),
        tenant_id: tenant.as_str().into(),
        full_name: format!("Name {id}"),
        email: format!("{id}@example.com"),
        history: vec!["1->2".into(), "2->3".into()],
        version,
    }
}

#[tokio::test]
async fn version_1_documents_read_through_a_version_3_entity_from_every_tier() {
    let storage = common::storage().await;
    let t = common::tenant("upgrade-read");
    let old = v1::ProfileRepository::new(&storage);
    let new = v3::ProfileRepository::new(&storage);
    profiles(&storage)
        .insert_many([
            v1_doc("profile_id", "p-mongo", &t, Some(4)),
            v1_doc("profile_id", "p-redis", &t, Some(7)),
        ])
        .await
        .unwrap();
    let metrics = || storage.cache().metrics_of::<v3::Profile>();

    // From MongoDB (nothing cached yet).
    let before = metrics();
    let read = new.find_by_id(&t, &"p-mongo".into()).await.unwrap();
    assert_eq!(read, Some(expected_v3("p-mongo", &t, 4)));
    assert_eq!(metrics().db_loads, before.db_loads + 1);

    // From a warm Redis entry that a version 1 build put: it holds the version 1 shape.
    let v1_value = old
        .find_by_id(&t, &"p-redis".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1_value.name, "Name p-redis");
    let before = metrics();
    let read = new.find_by_id(&t, &"p-redis".into()).await.unwrap();
    assert_eq!(read, Some(expected_v3("p-redis", &t, 7)));
    let after = metrics();
    assert_eq!(after.redis_hits, before.redis_hits + 1, "{after:?}");
    assert_eq!(
        after.db_loads, before.db_loads,
        "read from Redis, not MongoDB"
    );

    // From the warm in-process tier, which the read above filled with the upgraded value.
    let before = metrics();
    let read = new.find_by_id(&t, &"p-redis".into()).await.unwrap();
    assert_eq!(read, Some(expected_v3("p-redis", &t, 7)));
    assert_eq!(metrics().local_hits, before.local_hits + 1);
    // The version 1 build's own in-process copy is of its own type, never handed to version 3.
    assert_eq!(
        old.find_by_id(&t, &"p-redis".into()).await.unwrap(),
        Some(v1_value)
    );

    // Queries and pages upgrade too.
    let all = new.query(&t).fetch().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .all(|p| p.history.len() == 2 && p.email.ends_with("@example.com")));
    let page = new.query(&t).page(PageRequest::first(10)).await.unwrap();
    assert_eq!(page.items.len(), 2);

    // Nothing was written back (migrations.write_back_on_read is off by default).
    let stored = profiles(&storage)
        .find_one(doc! { "profile_id": "p-mongo", "tenant_id": t.as_str() })
        .await
        .unwrap()
        .unwrap();
    assert!(stored.get("_schema_version").is_none(), "{stored}");
    assert_eq!(stored.get_str("name").unwrap(), "Name p-mongo");
}

#[tokio::test]
async fn an_entry_a_newer_release_put_is_a_miss_and_a_newer_document_an_error() {
    let storage = common::storage().await;
    let t = common::tenant("future");
    let new = v3::ProfileRepository::new(&storage);
    let newer = v4::ProfileRepository::new(&storage);
    profiles(&storage)
        .insert_one(v1_doc("profile_id", "p-entry", &t, Some(1)))
        .await
        .unwrap();
    // A version 4 replica reads it first and puts a version 4 entry into Redis.
    let seen = newer
        .find_by_id(&t, &"p-entry".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.history, ["1->2", "2->3", "3->4"]);
    let before = storage.cache().metrics_of::<v3::Profile>();
    let read = new.find_by_id(&t, &"p-entry".into()).await.unwrap();
    assert_eq!(read, Some(expected_v3("p-entry", &t, 1)));
    let after = storage.cache().metrics_of::<v3::Profile>();
    assert_eq!(
        after.db_loads,
        before.db_loads + 1,
        "the newer entry was a miss"
    );
    assert_eq!(after.decode_errors, before.decode_errors);

    // A document stored by the newer release.
    let mut future = v1_doc("profile_id", "p-future", &t, Some(2));
    future.insert("_schema_version", 4_i64);
    profiles(&storage).insert_one(future.clone()).await.unwrap();
    let e = new.find_by_id(&t, &"p-future".into()).await.unwrap_err();
    match &e {
        Error::FutureSchemaVersion {
            entity,
            id,
            stored,
            supported,
        } => {
            assert_eq!(
                (*entity, id.as_str(), *stored, *supported),
                ("Profile", "\"p-future\"", 4, 3)
            );
        }
        other => panic!("expected FutureSchemaVersion, got {other:?}"),
    }
    let text = e.to_string();
    for part in ["Profile", "p-future", "4", "3"] {
        assert!(text.contains(part), "{text}");
    }
    assert!(matches!(
        new.query(&t).fetch().await,
        Err(Error::FutureSchemaVersion { .. })
    ));
    assert!(matches!(
        new.query(&t)
            .only([v3::Profile::fields().email().path()])
            .fetch_as::<Document>()
            .await,
        Err(Error::FutureSchemaVersion { .. })
    ));
    // A patch is refused too, and leaves the document as it was.
    let patch = v3::ProfilePatch {
        email: Some("x@y".into()),
        ..Default::default()
    };
    assert!(matches!(
        new.update(&t, &"p-future".into(), patch).await,
        Err(Error::FutureSchemaVersion { stored: 4, .. })
    ));
    let stored = profiles(&storage)
        .find_one(doc! { "_id": future.get_str("_id").unwrap() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, future);
}

#[tokio::test]
async fn every_write_stamps_the_version_and_patches_upgrade_older_documents_first() {
    let storage = common::storage().await;
    let t = common::tenant("upgrade-write");
    let old = v1::ProfileRepository::new(&storage);
    let new = v3::ProfileRepository::new(&storage);
    let stamp = |id: &'static str| {
        let storage = storage.clone();
        let t = t.clone();
        async move {
            let d = profiles(&storage)
                .find_one(doc! { "profile_id": id, "tenant_id": t.as_str() })
                .await
                .unwrap()
                .unwrap();
            (d.get("_schema_version").and_then(Bson::as_i64), d)
        }
    };
    profiles(&storage)
        .insert_one(v1_doc("profile_id", "p-patch", &t, Some(4)))
        .await
        .unwrap();
    let patch = v3::ProfilePatch {
        email: Some("new@example.com".into()),
        ..Default::default()
    };
    let after = new
        .update(&t, &"p-patch".into(), patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.email, "new@example.com");
    assert_eq!(after.full_name, "Name p-patch");
    assert_eq!(after.history, ["1->2", "2->3"]);
    assert_eq!(after.version, 5, "the patch moved the version once");
    let (v, stored) = stamp("p-patch").await;
    assert_eq!(v, Some(3));
    assert!(
        stored.get("name").is_none() && stored.get("mail").is_none(),
        "{stored}"
    );

    // Inserts and replaces stamp the current version; patches of current documents keep it.
    let mut fresh = expected_v3("p-insert", &t, 1);
    fresh.history.clear();
    new.insert(&t, &fresh).await.unwrap();
    assert_eq!(stamp("p-insert").await.0, Some(3));
    fresh.full_name = "Renamed".into();
    new.replace(&t, &mut fresh).await.unwrap();
    assert_eq!(stamp("p-insert").await.0, Some(3));

    // A version 1 build patches unstamped documents (as version 1)...
    profiles(&storage)
        .insert_one(v1_doc("profile_id", "p-old", &t, Some(1)))
        .await
        .unwrap();
    let patched = old
        .update(
            &t,
            &"p-old".into(),
            v1::ProfilePatch {
                name: Some("Old Build".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.name, "Old Build");
    assert_eq!(stamp("p-old").await.0, Some(1));
    // ...but never mixes its fields into a document a newer build wrote.
    let e = old
        .update(
            &t,
            &"p-insert".into(),
            v1::ProfilePatch {
                name: Some("mangled".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::FutureSchemaVersion {
                stored: 3,
                supported: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(stamp("p-insert").await.1.get("name").is_none());
}

#[tokio::test]
async fn reads_write_upgraded_documents_back_when_configured() {
    let mut config = common::config();
    config.migrations.write_back_on_read = true;
    let storage = Storage::connect(config).await.unwrap();
    let t = common::tenant("write-back");
    let new = v3::ProfileRepository::new(&storage);
    profiles(&storage)
        .insert_one(v1_doc("profile_id", "p-back", &t, Some(9)))
        .await
        .unwrap();
    let read = new.find_by_id(&t, &"p-back".into()).await.unwrap();
    assert_eq!(read, Some(expected_v3("p-back", &t, 9)));
    let stored = profiles(&storage)
        .find_one(doc! { "profile_id": "p-back", "tenant_id": t.as_str() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_i64("_schema_version").unwrap(), 3);
    assert_eq!(stored.get_str("email").unwrap(), "p-back@example.com");
    assert_eq!(stored.get("history"), Some(&history_done()));
    // Not a business change: the version did not move.
    assert_eq!(stored.get_i64("version").unwrap(), 9);
}

// ---- the batch migrator --------------------------------------------------------------------

mod bulk {
    use super::*;

    /// No version field, no cache: one write per document.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(
        database = "caas_migrations_bulk_it",
        collection = "notes_bulk",
        schema_version = 3
    )]
    #[migrate(from = 1, up = bulk_steps::v1_to_v2)]
    #[migrate(from = 2, up = bulk_steps::v2_to_v3)]
    pub struct Note {
        #[repository(id)]
        pub note_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub full_name: String,
        pub email: String,
        pub history: Vec<String>,
    }
}

/// A handle that counts the update commands sent to collection `coll`.
async fn counting(config: StorageConfig, coll: &'static str) -> (Storage, Arc<AtomicU64>) {
    let writes = Arc::new(AtomicU64::new(0));
    let w = writes.clone();
    let storage = Storage::builder(config)
        .on_command(move |e| {
            if e.command_name == "update" && e.command.get_str("update") == Ok(coll) {
                let n = e.command.get_array("updates").map_or(1, Vec::len);
                w.fetch_add(n as u64, Ordering::SeqCst);
            }
        })
        .connect()
        .await
        .unwrap();
    (storage, writes)
}

#[tokio::test]
async fn documents_migrate_in_batches_and_resume_after_a_crash() {
    // 2,000 by default, which keeps the suite's time bounded: FerretDB rewrites a few to a few
    // tens of documents per second on this machine. The 10,000-document proof is
    // `CAAS_TEST_MIGRATE_DOCS=10000 scripts/test --test migrations` (about 20 minutes here;
    // docs/benchmarks.md has its figures). The count must be a multiple of 20.
    let n: usize = std::env::var("CAAS_TEST_MIGRATE_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    assert_eq!(n % 20, 0, "CAAS_TEST_MIGRATE_DOCS must be a multiple of 20");
    let (batch, crash_at) = (n / 20, (n * 2 / 5) as u64);
    let at_v2 = n.div_ceil(3) as u64;
    let at_v1 = n as u64 - at_v2;
    let config = config("bulk");
    let (first, first_writes) = counting(config.clone(), "notes_bulk").await;
    // A database of its own, dropped first: a fresh file on FerretDB's SQLite backend.
    first.raw().database(BULK_DB).drop().await.unwrap();
    fresh(&first, &[(BULK_DB, "notes_bulk")]).await;
    let t = common::tenant("bulk");
    let coll = first
        .raw()
        .database(BULK_DB)
        .collection::<Document>("notes_bulk");
    let started = std::time::Instant::now();
    // A third of them already at version 2, as a half-finished hand-run script left them.
    let docs: Vec<Document> = (0..n)
        .map(|i| {
            let mut d = v1_doc("note_id", &format!("n{i:05}"), &t, None);
            if i % 3 == 0 {
                v1_to_v2(&mut d).unwrap();
                d.insert("_schema_version", 2_i64);
            }
            d
        })
        .collect();
    for chunk in docs.chunks(1000) {
        coll.insert_many(chunk).await.unwrap();
    }
    eprintln!("inserted {n} documents in {:?}", started.elapsed());
    let plan = Migrations::new().entity::<bulk::Note>();

    let dry = first
        .migrate(&plan, MigrateOptions::new().dry_run())
        .await
        .unwrap();
    let counts = &dry.entity("Note").unwrap().by_version;
    assert_eq!(counts.get(&1), Some(&at_v1));
    assert_eq!(counts.get(&2), Some(&at_v2));
    assert!(dry.steps().all(|s| s.state == StepState::Pending));
    assert_eq!(
        first_writes.load(Ordering::SeqCst),
        0,
        "a dry run writes nothing"
    );

    // The first run stops after two fifths of them, as if its process died.
    let started = std::time::Instant::now();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let crashed = first
        .migrate(
            &plan,
            MigrateOptions::new()
                .batch_size(batch)
                .stop_after(crash_at)
                .on_progress(move |p| seen.lock().unwrap().push(p.clone())),
        )
        .await
        .unwrap_err();
    assert!(crashed.to_string().contains("injected fault"), "{crashed}");
    eprintln!("first run: {crash_at} documents in {:?}", started.elapsed());
    {
        let progress = progress.lock().unwrap();
        assert_eq!(progress.len(), 8);
        assert!(progress.iter().all(|p| p.phase == Phase::Schema));
        assert_eq!(progress.last().unwrap().done, crash_at);
        assert_eq!(progress.last().unwrap().total, Some(n as u64));
    }
    assert_eq!(first_writes.load(Ordering::SeqCst), crash_at);
    let at_v3 = coll
        .count_documents(doc! { "_schema_version": 3_i64 })
        .await
        .unwrap();
    assert_eq!(at_v3, crash_at);
    assert!(ledger(&first)
        .await
        .iter()
        .all(|d| d.get_str("kind") == Ok("progress")));

    // Another process resumes: it takes the lock over once its lease expired.
    let (second, second_writes) = counting(config, "notes_bulk").await;
    let started = std::time::Instant::now();
    let report = second
        .migrate(&plan, MigrateOptions::new().batch_size(batch))
        .await
        .unwrap();
    eprintln!("resumed run: {:?}", started.elapsed());
    let note = report.entity("Note").unwrap();
    assert_eq!(
        (note.rewritten_before, note.rewritten),
        (crash_at, n as u64 - crash_at)
    );
    assert!(
        report.waited >= Duration::from_millis(500),
        "{:?}",
        report.waited
    );
    assert_eq!(second_writes.load(Ordering::SeqCst), n as u64 - crash_at);
    assert_eq!(
        first_writes.load(Ordering::SeqCst) + second_writes.load(Ordering::SeqCst),
        n as u64,
        "one write per document, across both runs"
    );
    // Every document at version 3, each step applied to it exactly once.
    let done = coll
        .count_documents(doc! { "_schema_version": 3_i64, "history": history_done() })
        .await
        .unwrap();
    assert_eq!(done, n as u64);
    assert_eq!(bulk_steps::runs(), [at_v1, n as u64]);
    // The ledger: both steps with the documents that went through them, and the index plan.
    let records = ledger(&second).await;
    let step = |name: &str| {
        records
            .iter()
            .find(|d| d.get_str("_id") == Ok(name))
            .unwrap_or_else(|| panic!("{name} recorded: {records:#?}"))
    };
    let ns = "caas_migrations_bulk_it.notes_bulk:Note";
    assert_eq!(
        step(&format!("schema:{ns}:1->2"))
            .get_i64("documents")
            .unwrap(),
        at_v1 as i64
    );
    assert_eq!(
        step(&format!("schema:{ns}:2->3"))
            .get_i64("documents")
            .unwrap(),
        n as i64
    );
    assert_eq!(
        step(&format!("schema:{ns}:2->3")).get_i64("token").unwrap(),
        report.token.unwrap()
    );
    assert!(records.iter().any(|d| d.get_str("kind") == Ok("indexes")));
    assert!(!records.iter().any(|d| d.get_str("kind") == Ok("progress")));
    assert_eq!(report.token, Some(2), "the second run took the lock over");

    // A third run finds everything recorded: no lock, no write.
    let again = second.migrate(&plan, MigrateOptions::new()).await.unwrap();
    assert!(again.steps().all(|s| s.state == StepState::AlreadyApplied));
    assert_eq!(again.token, None);
    assert_eq!(second_writes.load(Ordering::SeqCst), n as u64 - crash_at);
}

mod fleet {
    use super::*;

    /// Versioned and cached: rewrites take version claims on FerretDB and drop cache entries.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_migrations_it", collection = "tickets_fleet", schema_version = 3,
                 consistency = strong, cache(ttl = "5m"))]
    #[migrate(from = 1, up = fleet_steps::v1_to_v2)]
    #[migrate(from = 2, up = fleet_steps::v2_to_v3)]
    #[index(keys(email))]
    pub struct Ticket {
        #[repository(id)]
        pub ticket_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub full_name: String,
        pub email: String,
        pub history: Vec<String>,
        #[repository(version)]
        pub version: u64,
    }
}

#[tokio::test]
async fn four_replicas_starting_together_apply_each_step_once() {
    const N: usize = 300;
    let config = config("fleet");
    let mut handles = Vec::new();
    let mut writes = Vec::new();
    for _ in 0..4 {
        let (s, w) = counting(config.clone(), "tickets_fleet").await;
        handles.push(s);
        writes.push(w);
    }
    fresh(&handles[0], &[(DB, "tickets_fleet")]).await;
    let t = common::tenant("fleet");
    let docs: Vec<Document> = (0..N)
        .map(|i| v1_doc("ticket_id", &format!("t{i:04}"), &t, Some(3)))
        .collect();
    handles[0]
        .raw()
        .database(DB)
        .collection::<Document>("tickets_fleet")
        .insert_many(docs)
        .await
        .unwrap();
    // A cached copy from before the migration must not survive it.
    let repo = fleet::TicketRepository::new(&handles[0]);
    let cached = repo.find_by_id(&t, &"t0000".into()).await.unwrap().unwrap();
    assert_eq!(cached.history.len(), 2);
    let before = fleet_steps::runs();

    let plan = Migrations::new().entity::<fleet::Ticket>();
    let runs = handles.iter().map(|s| {
        let plan = plan.clone();
        async move { s.migrate(&plan, MigrateOptions::new().batch_size(50)).await }
    });
    let reports: Vec<_> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    // One process applied every step; the others found them recorded.
    let appliers: Vec<_> = reports.iter().filter(|r| !r.applied().is_empty()).collect();
    assert_eq!(appliers.len(), 1, "{reports:#?}");
    assert_eq!(
        appliers[0].applied().len(),
        3,
        "two chain steps and the index plan"
    );
    for r in &reports {
        assert!(r
            .steps()
            .all(|s| matches!(s.state, StepState::Applied | StepState::AlreadyApplied)));
    }
    let runs = fleet_steps::runs();
    assert_eq!(
        [runs[0] - before[0], runs[1] - before[1]],
        [N as u64, N as u64],
        "each step ran once per document"
    );
    let total: u64 = writes.iter().map(|w| w.load(Ordering::SeqCst)).sum();
    assert_eq!(total, N as u64, "one write per document");
    let records = ledger(&handles[1]).await;
    let kinds: Vec<&str> = records
        .iter()
        .filter_map(|d| d.get_str("kind").ok())
        .collect();
    assert_eq!(kinds, ["indexes", "schema", "schema"], "{records:#?}");
    // Rewrites left versions alone and dropped the stale cache entry.
    let t0 = repo.find_by_id(&t, &"t0000".into()).await.unwrap().unwrap();
    assert_eq!(t0, cached);
    assert_eq!(t0.version, 3);
    // An invalidation Redis did not answer in time counts as an error and marks the entity's
    // entries dirty: they are cleared before Redis serves the entity again.
    let stale: u64 = handles
        .iter()
        .map(|h| {
            let m = h.cache().metrics_of::<fleet::Ticket>();
            m.invalidations + m.errors
        })
        .sum();
    assert!(
        stale >= N as u64,
        "every rewritten document's entry dropped: {stale}"
    );
}

mod killed {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(
        database = "caas_migrations_it",
        collection = "cards_killed",
        schema_version = 3
    )]
    #[migrate(from = 1, up = killed_steps::v1_to_v2)]
    #[migrate(from = 2, up = killed_steps::v2_to_v3)]
    pub struct Card {
        #[repository(id)]
        pub card_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub full_name: String,
        pub email: String,
        pub history: Vec<String>,
        #[repository(version)]
        pub version: u64,
    }
}

#[tokio::test]
async fn a_lock_holder_killed_mid_step_is_taken_over() {
    const N: usize = 400;
    let config = config("killed");
    let doomed = Storage::connect(config.clone()).await.unwrap();
    fresh(&doomed, &[(DB, "cards_killed")]).await;
    let t = common::tenant("killed");
    let coll = doomed
        .raw()
        .database(DB)
        .collection::<Document>("cards_killed");
    let docs: Vec<Document> = (0..N)
        .map(|i| v1_doc("card_id", &format!("c{i:04}"), &t, Some(0)))
        .collect();
    coll.insert_many(docs).await.unwrap();
    let plan = Migrations::new().entity::<killed::Card>();

    // The holder migrates slowly and is killed part of the way through a step.
    let task = {
        let (doomed, plan) = (doomed.clone(), plan.clone());
        tokio::spawn(async move {
            doomed
                .migrate(&plan, MigrateOptions::new().batch_size(20).rate_limit(100))
                .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = coll
            .count_documents(doc! { "_schema_version": 3_i64 })
            .await
            .unwrap();
        if done >= 60 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the holder made no progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let _ = task.await;
    let left = coll
        .count_documents(doc! { "_schema_version": 3_i64 })
        .await
        .unwrap();
    assert!(left < N as u64, "killed mid-step ({left} of {N} done)");

    // Another process waits out the lease, takes the lock over and finishes.
    let taker = Storage::connect(config).await.unwrap();
    let report = taker.migrate(&plan, MigrateOptions::new()).await.unwrap();
    assert_eq!(report.token, Some(2));
    assert!(
        report.waited >= Duration::from_millis(500),
        "{:?}",
        report.waited
    );
    let done = coll
        .count_documents(doc! { "_schema_version": 3_i64, "history": history_done() })
        .await
        .unwrap();
    assert_eq!(done, N as u64, "every document once through each step");
    let records = ledger(&taker).await;
    let schema: Vec<&Document> = records
        .iter()
        .filter(|d| d.get_str("kind") == Ok("schema"))
        .collect();
    assert_eq!(schema.len(), 2);
    assert!(schema.iter().all(|d| d.get_i64("token") == Ok(2)));
    // At most the killed batch ran its steps twice (its writes never landed).
    let [a, b] = killed_steps::runs();
    assert!(a >= N as u64 && a <= N as u64 + 20 && b == a, "{a} {b}");
}

// ---- ledger: checksums, outbox silence, rollbacks, data migrations --------------------------

mod orders {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_migrations_orders_it", collection = "orders", schema_version = 3,
                 consistency = strong, outbox(topic = "test.migrations.orders", update = "order.changed"))]
    #[migrate(from = 1, up = v1_to_v2, down = v2_to_v1)]
    #[migrate(from = 2, up = v2_to_v3, down = v3_to_v2)]
    pub struct Order {
        #[repository(id)]
        pub order_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub full_name: String,
        pub email: String,
        pub history: Vec<String>,
        #[repository(version)]
        pub version: u64,
    }
}

const ORDERS_DB: &str = "caas_migrations_orders_it";

/// Copies every order's e-mail into `order_emails`, a batch at a time, with a checkpoint.
struct CopyEmails {
    revision: &'static str,
    runs: Arc<AtomicU64>,
}

#[caas_storage::migrations::async_trait]
impl Migration for CopyEmails {
    fn name(&self) -> &str {
        "copy-order-emails"
    }
    fn order(&self) -> i64 {
        1
    }
    fn checksum(&self) -> String {
        checksum(self.revision)
    }
    async fn up(&self, cx: &MigrationContext<'_>) -> caas_storage::Result<()> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let db = cx.storage().raw().database(ORDERS_DB);
        let mut after = cx
            .checkpoint()
            .await?
            .and_then(|c| c.get_str("after").ok().map(str::to_owned))
            .unwrap_or_default();
        loop {
            let batch: Vec<Document> = db
                .collection::<Document>("orders")
                .find(doc! { "order_id": { "$gt": &after } })
                .sort(doc! { "order_id": 1 })
                .limit(2)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let Some(last) = batch.last() else { break };
            after = last.get_str("order_id").unwrap().to_owned();
            cx.ensure_lock().await?;
            let copies: Vec<Document> = batch
                .iter()
                .map(|o| doc! { "_id": o.get_str("order_id").unwrap(), "email": o.get("email").cloned().unwrap_or(Bson::Null) })
                .collect();
            db.collection::<Document>("order_emails")
                .insert_many(copies)
                .await
                .unwrap();
            cx.save_checkpoint(doc! { "after": &after }).await?;
        }
        Ok(())
    }
    async fn down(&self, cx: &MigrationContext<'_>) -> caas_storage::Result<()> {
        cx.storage()
            .raw()
            .database(ORDERS_DB)
            .collection::<Document>("order_emails")
            .drop()
            .await
            .unwrap();
        Ok(())
    }
}

#[tokio::test]
async fn the_ledger_refuses_tampered_checksums_and_migrations_record_no_events() {
    let storage = Storage::connect(config("orders")).await.unwrap();
    fresh(
        &storage,
        &[(ORDERS_DB, "orders"), (ORDERS_DB, "order_emails")],
    )
    .await;
    let db = storage.raw().database(ORDERS_DB);
    db.collection::<Document>("caas_outbox")
        .drop()
        .await
        .unwrap();
    let t = common::tenant("orders");
    let docs: Vec<Document> = (0..5)
        .map(|i| v1_doc("order_id", &format!("o{i}"), &t, Some(1)))
        .collect();
    db.collection::<Document>("orders")
        .insert_many(docs)
        .await
        .unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let plan = Migrations::new()
        .entity::<orders::Order>()
        .data(CopyEmails {
            revision: "r1",
            runs: runs.clone(),
        });

    let report = storage.migrate(&plan, MigrateOptions::new()).await.unwrap();
    assert_eq!(report.applied().len(), 4, "{report:#?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        db.collection::<Document>("order_emails")
            .count_documents(doc! {})
            .await
            .unwrap(),
        5
    );
    // A migration is not a business change: no outbox event, no version moved.
    assert_eq!(
        db.collection::<Document>("caas_outbox")
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );
    let orders = orders::OrderRepository::new(&storage);
    let o0 = orders.get(&t, &"o0".into()).await.unwrap();
    assert_eq!((o0.version, o0.history.len()), (1, 2));

    // Run again: nothing to do, the data migration is not run twice.
    let again = storage.migrate(&plan, MigrateOptions::new()).await.unwrap();
    assert!(again.applied().is_empty());
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // The data migration changed after it was applied.
    let changed = Migrations::new()
        .entity::<orders::Order>()
        .data(CopyEmails {
            revision: "r2",
            runs: runs.clone(),
        });
    let e = storage
        .migrate(&changed, MigrateOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::MigrationChecksum { step, .. } if step == "data:copy-order-emails"),
        "{e:?}"
    );

    // Someone edits the ledger's record of a chain step: refused, dry run included.
    let ledger_coll = storage
        .raw()
        .database(&storage.config().migrations.database)
        .collection::<Document>(LEDGER_COLLECTION);
    let name = "schema:caas_migrations_orders_it.orders:Order:1->2";
    ledger_coll
        .update_one(
            doc! { "_id": name },
            doc! { "$set": { "checksum": "0000000000000000" } },
        )
        .await
        .unwrap();
    for options in [MigrateOptions::new(), MigrateOptions::new().dry_run()] {
        let e = storage.migrate(&plan, options).await.unwrap_err();
        match &e {
            Error::MigrationChecksum {
                step,
                recorded,
                declared,
                ..
            } => {
                assert_eq!(step, name);
                assert_eq!(recorded, "0000000000000000");
                assert_eq!(declared, orders::Order::META.schema_steps[0].checksum);
            }
            other => panic!("expected MigrationChecksum, got {other:?}"),
        }
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[tokio::test]
async fn rollbacks_take_documents_down_and_the_ledger_forgets_the_steps() {
    let storage = Storage::connect(config("rollback")).await.unwrap();
    fresh(&storage, &[(ORDERS_DB, "orders_rollback")]).await;
    let t = common::tenant("rollback");
    let coll = storage
        .raw()
        .database(ORDERS_DB)
        .collection::<Document>("orders_rollback");
    let docs: Vec<Document> = (0..4)
        .map(|i| v1_doc("order_id", &format!("r{i}"), &t, Some(2)))
        .collect();
    coll.insert_many(docs.clone()).await.unwrap();
    let plan = Migrations::new().entity::<rollback::Order>();
    storage.migrate(&plan, MigrateOptions::new()).await.unwrap();
    assert_eq!(
        coll.count_documents(doc! { "_schema_version": 3_i64 })
            .await
            .unwrap(),
        4
    );

    // Down to version 2, then to 1.
    let report = storage
        .migrate(
            &Migrations::new().rollback::<rollback::Order>(2),
            MigrateOptions::new(),
        )
        .await
        .unwrap();
    let steps: Vec<StepState> = report.entities[0].steps.iter().map(|s| s.state).collect();
    assert_eq!(steps, [StepState::AlreadyApplied, StepState::RolledBack]);
    let r0 = coll
        .find_one(doc! { "order_id": "r0" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r0.get_i64("_schema_version").unwrap(), 2);
    assert_eq!(r0.get_str("mail").unwrap(), "r0@example.com");
    storage
        .migrate(
            &Migrations::new().rollback::<rollback::Order>(1),
            MigrateOptions::new(),
        )
        .await
        .unwrap();
    let mut r0 = coll
        .find_one(doc! { "order_id": "r0" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r0.remove("_schema_version"), Some(Bson::Int64(1)));
    assert_eq!(r0.get_array("history").unwrap().len(), 0);
    assert_eq!(r0.get_str("name").unwrap(), "Name r0");
    let records = ledger(&storage).await;
    assert!(
        !records.iter().any(|d| d.get_str("kind") == Ok("schema")),
        "{records:#?}"
    );
    assert_eq!(
        records
            .iter()
            .filter(|d| d.get_str("kind") == Ok("rollback"))
            .count(),
        2
    );
    // A rollback past a step without `down` is refused before anything runs.
    let e = storage
        .migrate(
            &Migrations::new().rollback::<bulk::Note>(2),
            MigrateOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("down"), "{e}");

    // Forward again: the steps are applied and recorded anew.
    let report = storage.migrate(&plan, MigrateOptions::new()).await.unwrap();
    assert_eq!(report.entities[0].rewritten, 4);
    assert!(report.entities[0]
        .steps
        .iter()
        .all(|s| s.state == StepState::Applied));
    assert_eq!(
        coll.count_documents(doc! { "_schema_version": 3_i64, "history": history_done() })
            .await
            .unwrap(),
        4
    );
}

mod rollback {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(
        database = "caas_migrations_orders_it",
        collection = "orders_rollback",
        schema_version = 3
    )]
    #[migrate(from = 1, up = v1_to_v2, down = v2_to_v1)]
    #[migrate(from = 2, up = v2_to_v3, down = v3_to_v2)]
    pub struct Order {
        #[repository(id)]
        pub order_id: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub full_name: String,
        pub email: String,
        pub history: Vec<String>,
        #[repository(version)]
        pub version: u64,
    }
}
