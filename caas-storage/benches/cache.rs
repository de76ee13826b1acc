//! Cache tiers against their raw baselines, same run, alternating rounds:
//! - Redis hit (`find_by_id`) vs a raw `redis` GET of the same key + the same decode: <= 1.05
//! - in-process hit vs a raw moka `get` of an `Arc` + the same clone: <= 2
//! - uncached MongoDB read vs in-process hit: >= 100x
//! - `find_by_id` cached (Redis) vs uncached
//!
//! ```sh
//! scripts/services up && cargo bench --bench cache
//! ```

#[path = "support.rs"]
mod support;

use std::sync::Arc;

use caas_storage::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_cached", consistency = causal, cache(ttl = "30m"))]
struct Cached {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub score: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_local", consistency = causal,
             cache(ttl = "30m", local(ttl = "10m", capacity = 10_000)))]
struct Local {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub score: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_bench", collection = "bench_plain", consistency = causal)]
struct Plain {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub score: i64,
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
    let storage = Storage::connect(StorageConfig::from_env().unwrap())
        .await
        .unwrap();
    let t = TenantId::new("bench").unwrap();
    let tags: Vec<String> = (0..5).map(|i| format!("tag-{i}")).collect();
    let cached = CachedRepository::new(&storage);
    let local = LocalRepository::new(&storage);
    let plain = PlainRepository::new(&storage);
    let id = "item-1".to_owned();
    let _ = cached.purge(&t, &id).await;
    let _ = local.purge(&t, &id).await;
    let _ = plain.purge(&t, &id).await;
    cached
        .insert(
            &t,
            &Cached {
                id: id.clone(),
                tenant_id: "bench".into(),
                name: "n".into(),
                tags: tags.clone(),
                score: 1,
            },
        )
        .await
        .unwrap();
    local
        .insert(
            &t,
            &Local {
                id: id.clone(),
                tenant_id: "bench".into(),
                name: "n".into(),
                tags: tags.clone(),
                score: 1,
            },
        )
        .await
        .unwrap();
    plain
        .insert(
            &t,
            &Plain {
                id: id.clone(),
                tenant_id: "bench".into(),
                name: "n".into(),
                tags,
                score: 1,
            },
        )
        .await
        .unwrap();
    cached.find_by_id(&t, &id).await.unwrap().unwrap(); // fill Redis
    local.find_by_id(&t, &id).await.unwrap().unwrap(); // fill both tiers

    println!(
        "cache tiers vs raw baselines, {rounds} rounds x {batch} reads, medians of per-op time"
    );
    let key = "{bench:caas_bench.bench_cached:Cached:item-1}".to_owned();
    let redis_conn = storage.raw().redis_cache_for("caas_bench");
    let r = support::alternate(
        "redis hit vs raw GET+decode",
        rounds,
        batch,
        |_| {
            let (repo, t, id) = (&cached, &t, &id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
        |_| {
            let (mut conn, key) = (redis_conn.clone(), &key);
            async move {
                let raw: Vec<u8> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let bar = raw.iter().position(|b| *b == b'|').unwrap();
                let v: Cached = caas_storage::bson::from_slice(&raw[bar + 1..]).unwrap();
                std::hint::black_box(v);
            }
        },
    )
    .await;
    r.print("<= 1.05");
    let mut rows = vec![r.row("<= 1.05", Some(1.05))];

    let moka: moka::sync::Cache<String, Arc<Local>> =
        moka::sync::Cache::builder().max_capacity(10_000).build();
    let value = local.find_by_id(&t, &id).await.unwrap().unwrap();
    moka.insert("bench:Local:item-1".into(), Arc::new(value));
    let r = support::alternate(
        "in-process hit vs raw moka",
        rounds,
        batch * 20,
        |_| {
            let (repo, t, id) = (&local, &t, &id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
        |_| {
            let moka = &moka;
            async move {
                let hit = moka.get("bench:Local:item-1").unwrap();
                std::hint::black_box((*hit).clone());
            }
        },
    )
    .await;
    r.print("<= 2");
    rows.push(r.row("<= 2", Some(2.0)));

    let r = support::alternate(
        "uncached DB read vs in-process hit",
        rounds,
        batch / 4,
        |_| {
            let (repo, t, id) = (&plain, &t, &id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
        |_| {
            let (repo, t, id) = (&local, &t, &id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
    )
    .await;
    r.print(">= 100 (ratio = DB / in-process)");
    rows.push(support::Row::at_least(
        &format!("cache: {}", r.name),
        r.ratio(),
        100.0,
        r.row("", None).detail,
    ));

    let r = support::alternate(
        "find_by_id uncached vs redis-cached",
        rounds,
        batch / 4,
        |_| {
            let (repo, t, id) = (&plain, &t, &id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
        |_| {
            let (repo, t, id) = (&cached, &t, &id);
            async move {
                std::hint::black_box(repo.find_by_id(t, id).await.unwrap().unwrap());
            }
        },
    )
    .await;
    r.print("(speed-up of the Redis tier)");
    rows.push(support::Row::report(
        &format!("cache: {}", r.name),
        r.ratio(),
        r.row("", None).detail,
    ));
    for row in rows.iter_mut().take(2) {
        row.name = format!("cache: {}", row.name);
    }
    support::record(&rows);
}
