//! Generated repository vs the server's fastest path for the same call, against the FerretDB
//! that `scripts/services up` runs: both sides touch the SAME collection and the SAME
//! documents, and the baseline addresses them the way the server answers fastest, by their
//! `_id` (`"<tenant>:<id>"`, docs/architecture.md "Stored documents").
//!
//! - insert: `insert` vs raw `insert_one` of the same document shape (same `_id` scheme,
//!   same fields) into the same collection. Target <= 1.03.
//! - find_by_id: uncached `find_by_id` vs raw `find_one({_id})`. Target <= 1.1.
//! - update (FerretDB fallback): `update` of a versioned entity on the detected capabilities
//!   (no atomic conditional updates: claim, re-read, write), vs raw
//!   `find_one_and_update({_id}, {$set, $inc: {version: 1}})`. No target: the bench counts the
//!   MongoDB commands one update sends (through [`StorageBuilder::on_command`]) and prints
//!   them with their time. The atomic path is measured by `benches/repository_atomic.rs`.
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench -p caas-storage --bench repository
//! ```

#[path = "support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use caas_storage::bson::doc;
use caas_storage::prelude::*;
use mongodb::options::ReturnDocument;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_docs", consistency = strong)]
struct BenchDoc {
    #[repository(id)]
    pub doc_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub name: String,
    pub score: i64,
    #[repository(version)]
    #[serde(default)]
    pub version: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds = support::env_usize("BENCH_ROUNDS", 15);
    let batch = support::env_usize("BENCH_BATCH", 40);
    // Every command the driver starts, by name, while `counting` is set.
    let commands: Arc<Mutex<Option<BTreeMap<String, usize>>>> = Arc::new(Mutex::new(None));
    let log = commands.clone();
    let storage = Storage::builder(StorageConfig::from_env().unwrap())
        .on_command(move |ev| {
            if let Some(m) = log.lock().unwrap().as_mut() {
                *m.entry(ev.command_name.clone()).or_default() += 1;
            }
        })
        .connect()
        .await
        .unwrap();
    let db = storage.raw().database("caas_bench");
    db.collection::<caas_storage::bson::Document>("bench_docs")
        .drop()
        .await
        .unwrap();
    storage.sync_indexes::<BenchDoc>().await.unwrap();
    // The raw side uses the same collection with the same concerns as the `strong` entity.
    let raw = support::strong_collection(&db, "bench_docs");

    let repo = BenchDocRepository::new(&storage);
    let t = TenantId::new("bench").unwrap();
    let make = |prefix: &str, i: usize| BenchDoc {
        doc_id: format!("{prefix}{i}"),
        tenant_id: "bench".into(),
        name: format!("name {i}"),
        score: i as i64,
        version: 0,
    };
    // What the repository stores for `make`: the same fields under the same `_id` scheme.
    let raw_doc = |prefix: &str, i: usize| {
        doc! {
            "_id": format!("bench:{prefix}{i}"),
            "doc_id": format!("{prefix}{i}"),
            "tenant_id": "bench",
            "name": format!("name {i}"),
            "score": i as i64,
            "version": 0_i64,
            "_schema_version": 1_i64,
        }
    };

    // Commands one insert and one read send (the raw side sends one each).
    for (what, i) in [("insert", usize::MAX), ("find_by_id", usize::MAX)] {
        *commands.lock().unwrap() = Some(BTreeMap::new());
        if what == "insert" {
            repo.insert(&t, &make("probe", i)).await.unwrap();
        } else {
            repo.find_by_id(&t, &format!("probe{i}")).await.unwrap();
        }
        let sent = commands.lock().unwrap().take().unwrap();
        println!("{what} commands: {sent:?}");
    }
    println!("caas-storage generated repository vs raw mongodb driver calls by _id");
    println!(
        "server: {}; rounds {rounds} x batch {batch}, alternating, medians of per-op time",
        storage.capabilities().server_description()
    );
    // The call numbers the generated side inserted (`g<i>`): reads and updates go to these.
    let inserted = std::cell::RefCell::new(Vec::new());
    let insert = support::alternate(
        "repository: insert",
        rounds,
        batch,
        |i| {
            inserted.borrow_mut().push(i);
            let (repo, t, d) = (&repo, &t, make("g", i));
            async move { repo.insert(t, &d).await.unwrap() }
        },
        |i| {
            let (c, d) = (&raw, raw_doc("r", i));
            async move {
                c.insert_one(d).await.unwrap();
            }
        },
    )
    .await;
    insert.print("<= 1.03");

    // Reads and updates go to the same documents for both sides (those the generated side
    // inserted), so the server does the same work and only the client code differs.
    let inserted = inserted.into_inner();
    let pick = |i: usize| inserted[(i * 7919) % inserted.len()];
    let find = support::alternate(
        "repository: find_by_id",
        rounds,
        batch,
        |i| {
            let (repo, t, id) = (&repo, &t, format!("g{}", pick(i)));
            async move {
                assert!(repo.find_by_id(t, &id).await.unwrap().is_some());
            }
        },
        |i| {
            let (c, key) = (&raw, format!("bench:g{}", pick(i)));
            async move {
                assert!(c.find_one(doc! { "_id": key }).await.unwrap().is_some());
            }
        },
    )
    .await;
    find.print("<= 1.1");

    // Round trips of one update on the detected capabilities (FerretDB: the fallback).
    *commands.lock().unwrap() = Some(BTreeMap::new());
    let patch = BenchDocPatch {
        score: Some(-1),
        ..Default::default()
    };
    repo.update(&t, &format!("g{}", pick(0)), patch)
        .await
        .unwrap();
    let sent = commands.lock().unwrap().take().unwrap();
    let trips: usize = sent.values().sum();
    println!(
        "update round trips on {} (atomic conditional updates: {}): {trips} {:?}",
        storage.capabilities().server_description(),
        storage.capabilities().atomic_conditional_updates,
        sent
    );

    let update = support::alternate(
        "repository: update (fallback)",
        rounds,
        batch,
        |i| {
            let (repo, t, id) = (&repo, &t, format!("g{}", pick(i)));
            async move {
                let patch = BenchDocPatch {
                    score: Some(i as i64),
                    ..Default::default()
                };
                assert!(repo.update(t, &id, patch).await.unwrap().is_some());
            }
        },
        |i| {
            let (c, key) = (&raw, format!("bench:g{}", pick(i)));
            async move {
                let after = c
                    .find_one_and_update(
                        doc! { "_id": key },
                        doc! { "$set": { "score": i as i64 }, "$inc": { "version": 1_i64 } },
                    )
                    .return_document(ReturnDocument::After)
                    .await
                    .unwrap();
                assert!(after.is_some());
            }
        },
    )
    .await;
    update.print(&format!("report; {trips} commands per update"));
    support::record(&[
        insert.row("<= 1.03", Some(1.03)),
        find.row("<= 1.1", Some(1.1)),
        update.row(&format!("report ({trips} commands/update)"), None),
    ]);
}
