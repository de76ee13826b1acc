//! `update` of a versioned entity on the atomic path (the one MongoDB takes: one
//! `findAndModify {_id} $set $inc {version: 1}`), forced on FerretDB with the `testing`
//! feature's capabilities override. That path is only safe with one writer at a time, which
//! is what this bench runs. Baseline: the raw driver call a developer would write for the same
//! change, `find_one_and_update({_id}, {$set, $inc: {version: 1}})` returning the document
//! after, on the same collection and documents. Target <= 1.2. Also `update_checked` (version
//! in the filter: `findAndModify {_id, version: n}`) against the raw call with that filter.
//!
//! ```sh
//! cargo bench -p caas-storage --features testing --bench repository_atomic
//! ```

#[path = "support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use caas_storage::bson::doc;
use caas_storage::prelude::*;
use mongodb::options::ReturnDocument;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_atomic", consistency = strong)]
struct AtomicDoc {
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
    let commands: Arc<Mutex<Option<BTreeMap<String, usize>>>> = Arc::new(Mutex::new(None));
    let log = commands.clone();
    let storage = Storage::builder(StorageConfig::from_env().unwrap())
        .capabilities(|c| c.atomic_conditional_updates = true)
        .on_command(move |ev| {
            if let Some(m) = log.lock().unwrap().as_mut() {
                *m.entry(ev.command_name.clone()).or_default() += 1;
            }
        })
        .connect()
        .await
        .unwrap();
    let db = storage.raw().database("caas_bench");
    db.collection::<caas_storage::bson::Document>("bench_atomic")
        .drop()
        .await
        .unwrap();
    storage.sync_indexes::<AtomicDoc>().await.unwrap();
    let raw = support::strong_collection(&db, "bench_atomic");
    let repo = AtomicDocRepository::new(&storage);
    let t = TenantId::new("bench").unwrap();
    let n = 200;
    let docs: Vec<AtomicDoc> = (0..n)
        .map(|i| AtomicDoc {
            doc_id: format!("a{i}"),
            tenant_id: "bench".into(),
            name: format!("name {i}"),
            score: i as i64,
            version: 0,
        })
        .collect();
    repo.insert_many(&t, &docs).await.unwrap();

    println!("update of a versioned entity, atomic path forced (single writer) vs raw _id update");
    *commands.lock().unwrap() = Some(BTreeMap::new());
    let patch = AtomicDocPatch {
        score: Some(-1),
        ..Default::default()
    };
    repo.update(&t, &"a0".to_owned(), patch).await.unwrap();
    let sent = commands.lock().unwrap().take().unwrap();
    let trips: usize = sent.values().sum();
    println!("update round trips on the atomic path: {trips} {sent:?}");

    let pick = move |i: usize| (i * 7919) % n;
    let update = support::alternate(
        "atomic: update",
        rounds,
        batch,
        |i| {
            let (repo, t, id) = (&repo, &t, format!("a{}", pick(i)));
            async move {
                let patch = AtomicDocPatch {
                    score: Some(i as i64),
                    ..Default::default()
                };
                assert!(repo.update(t, &id, patch).await.unwrap().is_some());
            }
        },
        |i| {
            let (c, key) = (&raw, format!("bench:a{}", pick(i)));
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
    update.print("<= 1.2");

    // update_checked names the version it expects: read it first on both sides (untimed is
    // not possible inside `alternate`, so both sides pay the same `find_one` by `_id`).
    let checked = support::alternate(
        "atomic: update_checked",
        rounds,
        batch,
        |i| {
            let (repo, raw, t, id) = (&repo, &raw, &t, format!("a{}", pick(i)));
            async move {
                let key = format!("bench:{id}");
                let cur = raw.find_one(doc! { "_id": key }).await.unwrap().unwrap();
                let v = cur.get_i64("version").unwrap() as u64;
                let patch = AtomicDocPatch {
                    score: Some(i as i64),
                    ..Default::default()
                };
                repo.update_checked(t, &id, v, patch).await.unwrap();
            }
        },
        |i| {
            let (c, key) = (&raw, format!("bench:a{}", pick(i)));
            async move {
                let cur = c.find_one(doc! { "_id": &key }).await.unwrap().unwrap();
                let v = cur.get_i64("version").unwrap();
                let after = c
                    .find_one_and_update(
                        doc! { "_id": key, "version": v },
                        doc! { "$set": { "score": i as i64, "version": v + 1 } },
                    )
                    .return_document(ReturnDocument::After)
                    .await
                    .unwrap();
                assert!(after.is_some());
            }
        },
    )
    .await;
    checked.print("<= 1.2");
    support::record(&[
        update.row("<= 1.2", Some(1.2)),
        checked.row("<= 1.2", Some(1.2)),
    ]);
}
