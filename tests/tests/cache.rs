//! The cache against real Redis and FerretDB: read-through, invalidation on every write,
//! fenced puts under concurrency, stampede protection, undecodable entries, secrets, and
//! Redis outages.

use caas_storage_tests as common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caas_storage::prelude::*;
use caas_storage::StorageConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_profiles", consistency = read_your_writes,
             cache(ttl = "5m"))]
#[index(keys(handle), unique)]
struct Profile {
    #[repository(id)]
    pub profile_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub handle: String,
    pub bio: String,
    #[repository(secret)]
    #[serde(default)]
    pub recovery_code: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_settings", consistency = strong,
             cache(ttl = "5m", strategy = write_through))]
struct Setting {
    #[repository(id)]
    pub key: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub value: String,
    #[repository(version)]
    pub version: u64,
}

fn profile(t: &TenantId, id: &str) -> Profile {
    Profile {
        profile_id: id.into(),
        tenant_id: t.to_string(),
        handle: format!("@{id}"),
        bio: "hello".into(),
        recovery_code: "TOP-SECRET-CODE".into(),
        version: 0,
    }
}

/// The Redis key of a cached entity: `{tenant:database.collection:Entity:id}`.
fn data_key(t: &TenantId, entity: &str, id: &str) -> String {
    let namespace = match entity {
        "Profile" => "caas_auth.test_profiles",
        "Setting" => "caas_auth.test_settings",
        "Pref" => "caas_auth.test_prefs",
        other => panic!("no namespace for {other}"),
    };
    format!("{{{t}:{namespace}:{entity}:{id}}}")
}

async fn raw_get(storage: &Storage, key: &str) -> Option<Vec<u8>> {
    let mut conn = storage.raw().redis_cache_for("caas_auth");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn cached_version(raw: &[u8]) -> u64 {
    let bar = raw.iter().position(|b| *b == b'|').unwrap();
    std::str::from_utf8(&raw[..bar]).unwrap().parse().unwrap()
}

#[tokio::test]
async fn reads_fill_the_cache_and_writes_invalidate_it() {
    common::each_capability_set(async |storage, _| {
        let repo = ProfileRepository::new(&storage);
        let t = common::tenant("cache-rw");
        let p = profile(&t, "p1");
        repo.insert(&t, &p).await.unwrap();

        let first = repo.find_by_id(&t, &p.profile_id).await.unwrap().unwrap();
        let second = repo.find_by_id(&t, &p.profile_id).await.unwrap().unwrap();
        assert_eq!(first, second);
        let m = storage.cache().metrics_of::<Profile>();
        assert_eq!(
            (m.redis_misses, m.redis_hits, m.db_loads, m.sets),
            (1, 1, 1, 1),
            "{m:?}"
        );

        let key = data_key(&t, "Profile", "p1");
        let raw = raw_get(&storage, &key).await.expect("cached");
        let text = String::from_utf8_lossy(&raw);
        assert!(
            !text.contains("TOP-SECRET-CODE"),
            "secret fields are never cached"
        );
        assert!(!text.contains("recovery_code"));

        // Every kind of write invalidates.
        let patch = ProfilePatch {
            bio: Some("patched".into()),
            ..Default::default()
        };
        repo.update(&t, &p.profile_id, patch).await.unwrap();
        assert!(raw_get(&storage, &key).await.is_none(), "patch invalidates");
        assert_eq!(
            repo.find_by_id(&t, &p.profile_id)
                .await
                .unwrap()
                .unwrap()
                .bio,
            "patched"
        );

        let mut fresh = repo.find_by_id(&t, &p.profile_id).await.unwrap().unwrap();
        fresh.bio = "replaced".into();
        repo.replace(&t, &mut fresh).await.unwrap();
        assert!(
            raw_get(&storage, &key).await.is_none(),
            "replace invalidates"
        );
        assert_eq!(
            repo.find_by_id(&t, &p.profile_id)
                .await
                .unwrap()
                .unwrap()
                .bio,
            "replaced"
        );

        repo.update_checked(
            &t,
            &p.profile_id,
            fresh.version,
            ProfilePatch {
                bio: Some("checked".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            repo.find_by_id(&t, &p.profile_id)
                .await
                .unwrap()
                .unwrap()
                .bio,
            "checked"
        );

        let mut up = profile(&t, "p1");
        up.bio = "upserted".into();
        repo.upsert(&t, &up).await.unwrap();
        assert_eq!(
            repo.find_by_id(&t, &p.profile_id)
                .await
                .unwrap()
                .unwrap()
                .bio,
            "upserted"
        );

        assert!(repo.delete(&t, &p.profile_id).await.unwrap());
        assert!(
            raw_get(&storage, &key).await.is_none(),
            "delete invalidates"
        );
        assert!(repo.find_by_id(&t, &p.profile_id).await.unwrap().is_none());
        let m = storage.cache().metrics_of::<Profile>();
        assert!(m.invalidations >= 5, "{m:?}");
    })
    .await;
}

#[tokio::test]
async fn batch_writes_and_explicit_calls_invalidate() {
    common::each_capability_set(async |storage, _| {
        let repo = ProfileRepository::new(&storage);
        let t = common::tenant("cache-batch");
        let t2 = common::tenant("cache-batch-other");
        let batch: Vec<Profile> = (0..5).map(|i| profile(&t, &format!("b{i}"))).collect();
        repo.insert_many(&t, &batch).await.unwrap();
        repo.insert(&t2, &profile(&t2, "b0")).await.unwrap();
        for p in &batch {
            repo.find_by_id(&t, &p.profile_id).await.unwrap().unwrap();
        }
        repo.find_by_id(&t2, &"b0".to_owned())
            .await
            .unwrap()
            .unwrap();
        assert!(raw_get(&storage, &data_key(&t, "Profile", "b0"))
            .await
            .is_some());

        // A query delete invalidates exactly what it deleted.
        let n = repo
            .query(&t)
            .filter(Profile::fields().handle().is_in(["@b0", "@b1"]))
            .delete()
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert!(raw_get(&storage, &data_key(&t, "Profile", "b0"))
            .await
            .is_none());
        assert!(raw_get(&storage, &data_key(&t, "Profile", "b2"))
            .await
            .is_some());

        // Explicit: one entry, then a whole tenant (found with SCAN), leaving other tenants.
        storage
            .cache()
            .invalidate::<Profile>(&t, &"b2".to_owned())
            .await
            .unwrap();
        assert!(raw_get(&storage, &data_key(&t, "Profile", "b2"))
            .await
            .is_none());
        let dropped = storage
            .cache()
            .invalidate_all::<Profile>(Some(&t))
            .await
            .unwrap();
        assert_eq!(dropped, 2, "b3 and b4");
        assert!(raw_get(&storage, &data_key(&t, "Profile", "b3"))
            .await
            .is_none());
        assert!(
            raw_get(&storage, &data_key(&t2, "Profile", "b0"))
                .await
                .is_some(),
            "other tenant kept"
        );
    })
    .await;
}

#[tokio::test]
async fn write_through_updates_the_cache_with_the_new_version() {
    common::each_capability_set(async |storage, _| {
        let repo = SettingRepository::new(&storage);
        let t = common::tenant("cache-wt");
        let s = Setting {
            key: "theme".into(),
            tenant_id: t.to_string(),
            value: "dark".into(),
            version: 0,
        };
        repo.insert(&t, &s).await.unwrap();
        let key = data_key(&t, "Setting", "theme");
        assert_eq!(cached_version(&raw_get(&storage, &key).await.unwrap()), 0);
        repo.update(
            &t,
            &s.key,
            SettingPatch {
                value: Some("light".into()),
            },
        )
        .await
        .unwrap();
        assert_eq!(cached_version(&raw_get(&storage, &key).await.unwrap()), 1);
        let got = repo.find_by_id(&t, &s.key).await.unwrap().unwrap();
        assert_eq!(got.value, "light");
        let m = storage.cache().metrics_of::<Setting>();
        assert_eq!(m.db_loads, 0, "served from what the writes put: {m:?}");
    })
    .await;
}

#[tokio::test]
async fn undecodable_entries_are_misses_deleted_and_counted() {
    let storage = common::storage().await;
    let repo = ProfileRepository::new(&storage);
    let t = common::tenant("cache-garbage");
    repo.insert(&t, &profile(&t, "g1")).await.unwrap();
    let key = data_key(&t, "Profile", "g1");
    let mut conn = storage.raw().redis_cache_for("caas_auth");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("7|not bson at all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = repo
        .find_by_id(&t, &"g1".to_owned())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.handle, "@g1");
    let m = storage.cache().metrics_of::<Profile>();
    assert_eq!(m.decode_errors, 1);
    let raw = raw_get(&storage, &key)
        .await
        .expect("refilled with a good entry");
    assert_eq!(cached_version(&raw), 0);
}

/// 50 concurrent misses of one hot key: one loader reads MongoDB, the others wait for it.
#[tokio::test]
async fn a_hot_miss_loads_from_the_database_once() {
    let mut config = common::config();
    // Waiters wait long enough for the loader even on a loaded machine.
    config.cache.stampede_wait = Duration::from_secs(3);
    let storage = Storage::connect(config).await.unwrap();
    let repo = ProfileRepository::new(&storage);
    let t = common::tenant("cache-stampede");
    repo.insert(&t, &profile(&t, "hot")).await.unwrap();
    storage
        .cache()
        .invalidate::<Profile>(&t, &"hot".to_owned())
        .await
        .unwrap();
    let before = storage.cache().metrics_of::<Profile>();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let repo = repo.clone();
            let t = t.clone();
            tokio::spawn(async move { repo.find_by_id(&t, &"hot".to_owned()).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().unwrap().handle, "@hot");
    }
    let m = storage.cache().metrics_of::<Profile>();
    let loads = m.db_loads - before.db_loads;
    assert!(loads <= 2, "{loads} loads for 50 concurrent misses: {m:?}");
    assert!(m.stampede_waits - before.stampede_waits >= 40, "{m:?}");
}

/// The classic cache-aside race, made certain: a reader misses and loads the old document;
/// a writer updates it and invalidates; only then does the reader try to put what it loaded.
/// The put is fenced, so the next read sees the write.
/// Waits until `storage` has loaded one `Profile` from MongoDB (its reader is then in the
/// injected pause between load and put).
async fn wait_until_loaded<E: caas_storage::Entity>(storage: &Storage) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while storage.cache().metrics_of::<E>().db_loads == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader never loaded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_put_that_lost_the_race_to_a_write_is_refused() {
    let slow = common::storage().await;
    slow.cache().inject_load_delay(Duration::from_millis(1500));
    let fast = common::storage().await;
    let (slow_repo, fast_repo) = (ProfileRepository::new(&slow), ProfileRepository::new(&fast));
    let t = common::tenant("cache-fence");
    fast_repo.insert(&t, &profile(&t, "f1")).await.unwrap();

    let reader = {
        let (repo, t) = (slow_repo.clone(), t.clone());
        tokio::spawn(async move { repo.find_by_id(&t, &"f1".to_owned()).await })
    };
    wait_until_loaded::<Profile>(&slow).await; // the reader has loaded version 0 and is pausing
    let patch = ProfilePatch {
        bio: Some("new".into()),
        ..Default::default()
    };
    let written = fast_repo
        .update(&t, &"f1".to_owned(), patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written.version, 1);
    let old = reader.await.unwrap().unwrap().unwrap();
    assert_eq!(old.version, 0, "the reader's own answer predates the write");
    assert_eq!(slow.cache().metrics_of::<Profile>().fenced_puts, 1);

    let key = data_key(&t, "Profile", "f1");
    assert!(
        raw_get(&fast, &key).await.is_none(),
        "the stale value was not cached"
    );
    let seen = fast_repo
        .find_by_id(&t, &"f1".to_owned())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.version, seen.bio.as_str()), (1, "new"));
}

/// Many writers and readers on few keys. A read through the handle never returns a version
/// older than the last write that handle acknowledged, and at the end the cache holds exactly
/// what the database holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_reads_under_concurrent_writers_and_readers() {
    let storage = common::storage().await;
    let repo = ProfileRepository::new(&storage);
    let t = common::tenant("cache-race");
    let ids: Vec<String> = (0..3).map(|i| format!("k{i}")).collect();
    for id in &ids {
        repo.insert(&t, &profile(&t, id)).await.unwrap();
    }
    let acked: Arc<HashMap<String, AtomicU64>> = Arc::new(
        ids.iter()
            .map(|id| (id.clone(), AtomicU64::new(0)))
            .collect(),
    );
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (repo, t, ids, acked) = (repo.clone(), t.clone(), ids.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let id = &ids[(w + i) % ids.len()];
                let patch = ProfilePatch {
                    bio: Some(format!("w{w}-{i}")),
                    ..Default::default()
                };
                let after = repo.update(&t, id, patch).await.unwrap().unwrap();
                acked[id].fetch_max(after.version, Ordering::SeqCst);
            }
        }));
    }
    let stale = Arc::new(AtomicU64::new(0));
    for r in 0..6 {
        let (repo, t, ids, acked, stale) = (
            repo.clone(),
            t.clone(),
            ids.clone(),
            acked.clone(),
            stale.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..60 {
                let id = &ids[(r + i) % ids.len()];
                let floor = acked[id].load(Ordering::SeqCst);
                let got = repo.find_by_id(&t, id).await.unwrap().unwrap();
                if got.version < floor {
                    stale.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        stale.load(Ordering::SeqCst),
        0,
        "reads older than an acknowledged write"
    );
    for id in &ids {
        let db = repo.find_by_id_with_secrets(&t, id).await.unwrap().unwrap();
        let writes = (0..4_usize)
            .flat_map(|w| (0..25_usize).map(move |i| (w + i) % 3))
            .filter(|k| format!("k{k}") == *id)
            .count() as u64;
        assert_eq!(db.version, writes, "{id}: writes lost");
        if let Some(raw) = raw_get(&storage, &data_key(&t, "Profile", id)).await {
            assert_eq!(
                cached_version(&raw),
                db.version,
                "{id}: cache differs from the database"
            );
        }
        let via_cache = repo.find_by_id(&t, id).await.unwrap().unwrap();
        assert_eq!(via_cache.version, db.version);
    }
}

/// Redis killed and restarted during a bounded load: no operation fails, and no entry that
/// went stale during the outage is served afterwards.
#[tokio::test]
async fn a_redis_outage_fails_nothing_and_leaves_nothing_stale() {
    let mut redis_server = tokio::task::spawn_blocking(common::private_redis)
        .await
        .unwrap();
    let mut config: StorageConfig = common::config();
    config.redis.url = format!("redis://127.0.0.1:{}/", redis_server.port);
    config.redis.response_timeout = Duration::from_millis(200);
    config.redis.connection_timeout = Duration::from_millis(200);
    config.redis.max_retries = 0;
    config.cache.op_timeout = Duration::from_millis(100);
    config.cache.breaker_cooldown = Duration::from_millis(200);
    let config_after = config.clone();
    let storage = Storage::connect(config).await.unwrap();
    let repo = ProfileRepository::new(&storage);
    let t = common::tenant("cache-outage");
    let ids: Vec<String> = (0..4).map(|i| format!("o{i}")).collect();
    for id in &ids {
        repo.insert(&t, &profile(&t, id)).await.unwrap();
        repo.find_by_id(&t, id).await.unwrap().unwrap(); // cached
    }

    let load = |phase: &'static str| {
        let (repo, t, ids) = (repo.clone(), t.clone(), ids.clone());
        async move {
            let mut failures = 0;
            for i in 0..40 {
                let id = &ids[i % ids.len()];
                let patch = ProfilePatch {
                    bio: Some(format!("{phase}-{i}")),
                    ..Default::default()
                };
                if repo.update(&t, id, patch).await.is_err() {
                    failures += 1;
                }
                if repo.find_by_id(&t, id).await.is_err() {
                    failures += 1;
                }
            }
            failures
        }
    };
    assert_eq!(load("before").await, 0);
    // Redis persists nothing here, but a Redis with AOF would bring entries back after a
    // restart; keep an entry around through the outage by snapshotting it to restore later.
    let key = data_key(&t, "Profile", "o0");
    let before_outage = raw_get(&storage, &key).await;

    redis_server.stop();
    assert_eq!(
        load("during").await,
        0,
        "no request fails because Redis is down"
    );
    assert!(storage.cache().metrics_of::<Profile>().bypassed > 0);

    redis_server.start();
    // Simulate a Redis that came back with its old data (persistence): the pre-outage entry.
    if let Some(old) = before_outage {
        let mut conn = storage.raw().redis_cache_for("caas_auth");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(&key)
                .arg(old.clone())
                .query_async(&mut conn)
                .await;
            if r.is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private Redis did not come back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Reads alone first, each after a cool-down, so that the breaker's probe goes to a read's
    // clean-up SCAN (a probe that never reported its outcome used to leave the breaker
    // half-open, bypassing Redis for good).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        repo.find_by_id(&t, &ids[1]).await.unwrap().unwrap();
    }
    assert!(!storage.cache().is_bypassing_redis(), "the breaker closed");
    for id in &ids {
        let db = repo.find_by_id_with_secrets(&t, id).await.unwrap().unwrap();
        let seen = repo.find_by_id(&t, id).await.unwrap().unwrap();
        assert_eq!(
            seen.version, db.version,
            "{id}: stale entry served after the outage"
        );
        assert_eq!(seen.bio, db.bio);
    }
    assert_eq!(load("after").await, 0);

    // Redis is used again, not only survived: a write through this handle invalidates what
    // another instance reads from Redis, and no read bypasses it any more.
    let bypassed = storage.cache().metrics_of::<Profile>().bypassed;
    let other = Storage::connect(config_after).await.unwrap();
    let other_repo = ProfileRepository::new(&other);
    let id = &ids[0];
    other_repo.find_by_id(&t, id).await.unwrap().unwrap(); // cached in Redis by B
    repo.update(
        &t,
        id,
        ProfilePatch {
            bio: Some("after-recovery".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let seen = other_repo.find_by_id(&t, id).await.unwrap().unwrap();
    assert_eq!(
        seen.bio, "after-recovery",
        "B read a stale entry A did not invalidate"
    );
    assert_eq!(
        storage.cache().metrics_of::<Profile>().bypassed,
        bypassed,
        "reads after the recovery went through Redis"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_prefs", consistency = read_your_writes,
             cache(ttl = "5m", local(ttl = "30s", capacity = 1000)))]
struct Pref {
    #[repository(id)]
    pub key: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub value: String,
    #[repository(version)]
    pub version: u64,
}

/// Two handles (two service instances) with in-process tiers: a write through one drops the
/// other's in-process copy (Redis pub/sub), so the other reads the write, not its old copy.
#[tokio::test]
async fn a_write_on_one_instance_invalidates_the_in_process_tier_of_another() {
    let a = common::storage().await;
    let b = common::storage().await;
    let (repo_a, repo_b) = (PrefRepository::new(&a), PrefRepository::new(&b));
    let t = common::tenant("cache-local");
    let key = "theme".to_owned();
    repo_a
        .insert(
            &t,
            &Pref {
                key: key.clone(),
                tenant_id: t.to_string(),
                value: "dark".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    // Both instances hold the value in their in-process tier.
    for repo in [&repo_a, &repo_b] {
        assert_eq!(
            repo.find_by_id(&t, &key).await.unwrap().unwrap().value,
            "dark"
        );
        assert_eq!(
            repo.find_by_id(&t, &key).await.unwrap().unwrap().value,
            "dark"
        );
    }
    assert!(b.cache().metrics_of::<Pref>().local_hits >= 1);
    // Give B's subscription a moment to be live (it starts with the first local read).
    tokio::time::sleep(Duration::from_millis(300)).await;

    repo_a
        .update(
            &t,
            &key,
            PrefPatch {
                value: Some("light".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        repo_a.find_by_id(&t, &key).await.unwrap().unwrap().value,
        "light",
        "the writing instance reads its write at once"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = repo_b.find_by_id(&t, &key).await.unwrap().unwrap();
        if seen.value == "light" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance B kept serving its stale in-process copy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = b.cache().metrics_of::<Pref>();
    assert!(
        m.local_misses >= 2,
        "B missed locally after the invalidation: {m:?}"
    );
}

/// The in-process tier takes no value the Redis fence refused: a slow reader that loaded v0
/// before a write on the same handle must not put v0 back into the in-process tier after the
/// write cleared it (read-your-writes would break for the tier's TTL).
#[tokio::test]
async fn the_in_process_tier_is_fenced_like_redis() {
    let storage = common::storage().await;
    let repo = PrefRepository::new(&storage);
    let t = common::tenant("cache-local-fence");
    let key = "lang".to_owned();
    let pref = Pref {
        key: key.clone(),
        tenant_id: t.to_string(),
        value: "en".into(),
        version: 0,
    };
    repo.insert(&t, &pref).await.unwrap();
    storage
        .cache()
        .inject_load_delay(Duration::from_millis(1500));
    let reader = {
        let (repo, t, key) = (repo.clone(), t.clone(), key.clone());
        tokio::spawn(async move { repo.find_by_id(&t, &key).await })
    };
    wait_until_loaded::<Pref>(&storage).await; // task 1 loaded v0 and is pausing
    storage.cache().inject_load_delay(Duration::ZERO);
    repo.update(
        &t,
        &key,
        PrefPatch {
            value: Some("fr".into()),
        },
    )
    .await
    .unwrap();
    let old = reader.await.unwrap().unwrap().unwrap();
    assert_eq!(old.value, "en", "task 1's own answer predates the write");
    let seen = repo.find_by_id(&t, &key).await.unwrap().unwrap();
    assert_eq!(seen.value, "fr", "task 2 reads its own write");
}

mod namesake {
    use caas_storage::prelude::*;

    /// The same struct name as `super::Profile`'s neighbours, in another database.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_messaging", collection = "test_namesakes", consistency = read_your_writes,
                 cache(ttl = "5m", local(ttl = "30s", capacity = 100)))]
    pub struct Pref {
        #[repository(id)]
        pub key: String,
        #[repository(tenant)]
        pub tenant_id: String,
        pub value: String,
        #[repository(version)]
        pub version: u64,
    }
}

/// Cache identity is the entity's namespace, not its struct name: two entities named `Pref`
/// in different databases keep apart in Redis and in the in-process tier (where a second type
/// under one name used to panic).
#[tokio::test]
async fn entities_with_the_same_name_in_different_databases_do_not_share_entries() {
    let storage = common::storage().await;
    let (ours, theirs) = (
        PrefRepository::new(&storage),
        namesake::PrefRepository::new(&storage),
    );
    let t = common::tenant("cache-namesake");
    let key = "k".to_owned();
    ours.insert(
        &t,
        &Pref {
            key: key.clone(),
            tenant_id: t.to_string(),
            value: "ours".into(),
            version: 0,
        },
    )
    .await
    .unwrap();
    theirs
        .insert(
            &t,
            &namesake::Pref {
                key: key.clone(),
                tenant_id: t.to_string(),
                value: "theirs".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            ours.find_by_id(&t, &key).await.unwrap().unwrap().value,
            "ours"
        );
        assert_eq!(
            theirs.find_by_id(&t, &key).await.unwrap().unwrap().value,
            "theirs"
        );
    }
}

/// A delete fences out every earlier write-through put: an update whose cache step lands after
/// the delete's does not put the deleted document back.
#[tokio::test]
async fn a_write_through_put_that_lands_after_a_delete_is_refused() {
    let storage = common::storage().await;
    let repo = SettingRepository::new(&storage);
    let t = common::tenant("cache-wt-delete");
    let s = Setting {
        key: "mode".into(),
        tenant_id: t.to_string(),
        value: "a".into(),
        version: 0,
    };
    repo.insert(&t, &s).await.unwrap();
    storage.cache().inject_put_delay(Duration::from_millis(800));
    let update = {
        let (repo, t) = (repo.clone(), t.clone());
        tokio::spawn(async move {
            repo.update(
                &t,
                &"mode".to_owned(),
                SettingPatch {
                    value: Some("b".into()),
                },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // the update is written, its put waits
    assert!(repo.delete(&t, &s.key).await.unwrap());
    update.await.unwrap().unwrap().unwrap();
    assert!(
        repo.find_by_id(&t, &s.key).await.unwrap().is_none(),
        "the deleted setting was put back into the cache"
    );
}

/// Upserts move the stored version on from the stored one, never to the caller's: a
/// write-through entry cannot be fenced out by a version from the future, nor go backwards.
#[tokio::test]
async fn upsert_versions_never_move_backwards() {
    let storage = common::storage().await;
    let repo = SettingRepository::new(&storage);
    let t = common::tenant("cache-wt-upsert");
    let mut s = Setting {
        key: "tz".into(),
        tenant_id: t.to_string(),
        value: "utc".into(),
        version: 0,
    };
    repo.insert(&t, &s).await.unwrap();
    s.version = 100;
    s.value = "cet".into();
    repo.upsert(&t, &s).await.unwrap();
    s.version = 0;
    s.value = "pst".into();
    repo.upsert(&t, &s).await.unwrap();
    let got = repo.find_by_id(&t, &s.key).await.unwrap().unwrap();
    assert_eq!((got.version, got.value.as_str()), (2, "pst"));
    let cached = raw_get(&storage, &data_key(&t, "Setting", "tz"))
        .await
        .unwrap();
    assert_eq!(cached_version(&cached), 2);
}

/// After an outage, the entries a write could not invalidate are cleared by one SCAN for all
/// the reads that wait on it, not one SCAN per read.
#[tokio::test]
async fn after_an_outage_one_scan_clears_an_entity_for_every_waiting_read() {
    let mut redis_server = tokio::task::spawn_blocking(common::private_redis)
        .await
        .unwrap();
    let mut config: StorageConfig = common::config();
    config.redis.url = format!("redis://127.0.0.1:{}/", redis_server.port);
    config.redis.response_timeout = Duration::from_millis(200);
    config.redis.connection_timeout = Duration::from_millis(200);
    config.redis.max_retries = 0;
    config.cache.op_timeout = Duration::from_millis(100);
    config.cache.breaker_cooldown = Duration::from_millis(200);
    let storage = Storage::connect(config).await.unwrap();
    let repo = ProfileRepository::new(&storage);
    let t = common::tenant("cache-scan-once");
    repo.insert(&t, &profile(&t, "s0")).await.unwrap();
    redis_server.stop();
    // A write Redis cannot hear about marks the entity for clearing.
    repo.update(
        &t,
        &"s0".to_owned(),
        ProfilePatch {
            bio: Some("during".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    redis_server.start();
    tokio::time::sleep(Duration::from_millis(300)).await; // past the breaker cool-down
    let mut conn = storage.raw().redis_cache_for("caas_auth");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let (repo, t) = (repo.clone(), t.clone());
            tokio::spawn(async move { repo.find_by_id(&t, &"s0".to_owned()).await })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap().unwrap().unwrap().bio, "during");
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let scans: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(scans <= 2, "{scans} SCAN calls for 20 reads:\n{stats}");
}
