//! Upgrade-on-read: the cost of reading a document stored two schema versions back (a 2-step
//! chain runs before it is decoded) against reading one stored at the current version.
//! - decode only (`migrations::decode_stored`, the function every read decodes through), same
//!   document shape either side after the steps: the per-document cost of the chain
//! - `find_by_id` end to end, uncached: what a service sees
//!
//! ```sh
//! scripts/services up && eval "$(scripts/services env)" && cargo bench -p caas-storage --bench migrations
//! ```

#[path = "support.rs"]
mod support;

use caas_storage::bson::{doc, Document};
use caas_storage::migrations::decode_stored;
use caas_storage::prelude::*;
use caas_storage::StepResult;

/// 1 -> 2: `name` became `full_name`.
fn v1_to_v2(doc: &mut Document) -> StepResult {
    let name = doc.remove("name").ok_or("no name")?;
    doc.insert("full_name", name);
    Ok(())
}

/// 2 -> 3: `mail` became a lower-case `email`.
fn v2_to_v3(doc: &mut Document) -> StepResult {
    let mail = doc.get_str("mail")?.to_lowercase();
    doc.remove("mail");
    doc.insert("email", mail);
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_bench",
    collection = "bench_schema",
    consistency = causal,
    schema_version = 3
)]
#[migrate(from = 1, up = v1_to_v2)]
#[migrate(from = 2, up = v2_to_v3)]
struct Profile {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub full_name: String,
    pub email: String,
    pub tags: Vec<String>,
    pub score: i64,
}

fn stored(id: &str, version: i64) -> Document {
    let tags: Vec<String> = (0..5).map(|i| format!("tag-{i}")).collect();
    let mut d = doc! {
        "_id": format!("bench:{id}"), "id": id, "tenant_id": "bench", "tags": tags, "score": 1_i64,
        "_schema_version": version,
    };
    if version == 1 {
        d.insert("name", "Ada Lovelace");
        d.insert("mail", "ADA@Example.COM");
    } else {
        d.insert("full_name", "Ada Lovelace");
        d.insert("email", "ada@example.com");
    }
    d
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let old = stored("old", 1);
    let current = stored("current", 3);
    assert_eq!(
        decode_stored::<Profile>(old.clone()).unwrap().email,
        "ada@example.com"
    );
    println!("upgrade-on-read vs plain read, {rounds} rounds, medians of per-op time");
    let r = support::alternate(
        "decode: 2-step upgrade vs current",
        rounds,
        batch * 50,
        |_| {
            let d = old.clone();
            async move {
                std::hint::black_box(decode_stored::<Profile>(d).unwrap());
            }
        },
        |_| {
            let d = current.clone();
            async move {
                std::hint::black_box(decode_stored::<Profile>(d).unwrap());
            }
        },
    )
    .await;
    r.print("(cost of the chain per document)");
    println!(
        "  the 2-step chain adds {:.2} us per document",
        (r.candidate.as_secs_f64() - r.baseline.as_secs_f64()) * 1e6
    );

    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    let coll = storage
        .raw()
        .database("caas_bench")
        .collection::<Document>("bench_schema");
    coll.drop().await.unwrap();
    coll.insert_many([old, current]).await.unwrap();
    let repo = ProfileRepository::new(&storage);
    let t = TenantId::new("bench").unwrap();
    let (old_id, current_id) = ("old".to_owned(), "current".to_owned());
    let r = support::alternate(
        "find_by_id: v1 doc vs v3 doc",
        rounds,
        batch / 4,
        |_| {
            let (repo, t, id) = (&repo, &t, &old_id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
        |_| {
            let (repo, t, id) = (&repo, &t, &current_id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
    )
    .await;
    r.print("<= 1.05 (the chain is noise next to the round trip)");
}
