//! Generated repository vs the same operations hand-written with the `mongodb` driver, against
//! the FerretDB that `scripts/services up` runs. Target: ratio <= 1.03 for each operation.
//!
//! ```sh
//! scripts/services up && cargo bench --bench repository
//! ```

#[path = "support.rs"]
mod support;

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
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    let db = storage.raw().database("caas_bench");
    db.collection::<caas_storage::bson::Document>("bench_docs")
        .drop()
        .await
        .unwrap();
    db.collection::<caas_storage::bson::Document>("bench_raw")
        .drop()
        .await
        .unwrap();
    storage.sync_indexes::<BenchDoc>().await.unwrap();
    // The hand-written baseline gets the same (tenant, id) unique index and write concern.
    let raw_coll = db.collection_with_options::<BenchDoc>(
        "bench_raw",
        mongodb::options::CollectionOptions::builder()
            .write_concern(Consistency::Strong.write_concern())
            .read_concern(Consistency::Strong.read_concern())
            .selection_criteria(Consistency::Strong.read_preference())
            .build(),
    );
    raw_coll
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { "tenant_id": 1, "doc_id": 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();

    let repo = BenchDocRepository::new(&storage);
    let t = TenantId::new("bench").unwrap();
    let make = |prefix: &str, i: usize| BenchDoc {
        doc_id: format!("{prefix}{i}"),
        tenant_id: "bench".into(),
        name: format!("name {i}"),
        score: i as i64,
    };

    println!("caas-storage generated repository vs hand-written mongodb driver code");
    println!("rounds {rounds} x batch {batch}, alternating, medians of per-op time");
    let insert = support::alternate(
        "insert",
        rounds,
        batch,
        |i| {
            let (repo, t, d) = (&repo, &t, make("g", i));
            async move { repo.insert(t, &d).await.unwrap() }
        },
        |i| {
            let (c, d) = (&raw_coll, make("r", i));
            async move {
                c.insert_one(&d).await.unwrap();
            }
        },
    )
    .await;
    insert.print("<= 1.03");

    // Reads and updates go to the same documents for both sides (those the generated side
    // inserted), so the server does the same work and only the client code differs.
    let n = rounds * batch;
    let find = support::alternate(
        "find_by_id",
        rounds,
        batch,
        |i| {
            let (repo, t, id) = (&repo, &t, format!("g{}", (i * 7919) % n));
            async move {
                let _ = repo.find_by_id(t, &id).await.unwrap();
            }
        },
        |i| {
            let (c, id) = (&raw_coll, format!("g{}", (i * 7919) % n));
            async move {
                let _ = c
                    .find_one(doc! { "tenant_id": "bench", "doc_id": id })
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    find.print("<= 1.03");

    let update = support::alternate(
        "update (patch)",
        rounds,
        batch,
        |i| {
            let (repo, t, id) = (&repo, &t, format!("g{}", (i * 7919) % n));
            async move {
                let patch = BenchDocPatch {
                    score: Some(i as i64),
                    ..Default::default()
                };
                let _ = repo.update(t, &id, patch).await.unwrap();
            }
        },
        |i| {
            let (c, id) = (&raw_coll, format!("g{}", (i * 7919) % n));
            async move {
                let _ = c
                    .find_one_and_update(
                        doc! { "tenant_id": "bench", "doc_id": id },
                        doc! { "$set": { "score": i as i64 } },
                    )
                    .return_document(ReturnDocument::After)
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    update.print("<= 1.03");
}
