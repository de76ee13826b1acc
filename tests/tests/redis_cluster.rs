//! The same cache and queue code against a Redis Cluster of three primaries on loopback
//! (started by `scripts/services up`): read-through, fenced puts, SCAN-based invalidation
//! across every primary, and the write-behind queue.

use caas_storage_tests as common;

use std::time::Duration;

use caas_storage::prelude::*;
use caas_storage::HealthStatus;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_platform", collection = "test_cluster_items", consistency = read_your_writes,
             cache(ttl = "5m"))]
struct Item {
    #[repository(id)]
    pub item_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub label: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_platform", collection = "test_cluster_events", consistency = eventual)]
struct Event {
    #[repository(id)]
    pub event_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
}

async fn cluster_storage() -> Storage {
    let mut config = common::config();
    let nodes = std::env::var("CAAS_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002".into());
    config.redis.cluster_nodes = nodes.split(',').map(str::to_owned).collect();
    config.redis.key_prefix = format!("cl{}:", std::process::id());
    Storage::connect(config).await.unwrap()
}

#[tokio::test]
async fn the_cache_works_on_a_cluster() {
    let storage = cluster_storage().await;
    let report = storage.health().await;
    let redis = report
        .component("redis/cluster")
        .expect("one cluster component");
    assert_eq!(redis.status, HealthStatus::Up, "{report:#?}");

    let repo = ItemRepository::new(&storage);
    let t = common::tenant("cluster");
    let ids: Vec<String> = (0..30).map(|i| format!("i{i}")).collect();
    for id in &ids {
        repo.insert(
            &t,
            &Item {
                item_id: id.clone(),
                tenant_id: t.to_string(),
                label: "a".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
        repo.find_by_id(&t, id).await.unwrap().unwrap();
        repo.find_by_id(&t, id).await.unwrap().unwrap();
    }
    let m = storage.cache().metrics_of::<Item>();
    assert_eq!(
        (m.redis_hits, m.redis_misses, m.sets, m.errors),
        (30, 30, 30, 0),
        "{m:?}"
    );

    // The entries are spread over the primaries, and invalidating the tenant finds them all.
    let mut conn = storage.raw().redis_cache_for("caas_platform");
    let mut nodes_with_keys = std::collections::BTreeSet::new();
    for id in &ids {
        let key = format!("cl{}:{{{t}:Item:{id}}}", std::process::id());
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        nodes_with_keys.insert(slot / 5462);
    }
    assert!(
        nodes_with_keys.len() >= 2,
        "keys landed on one primary only"
    );
    let dropped = storage
        .cache()
        .invalidate_all::<Item>(Some(&t))
        .await
        .unwrap();
    assert_eq!(dropped, 30);

    // Writes invalidate; the next read sees them.
    let patch = ItemPatch {
        label: Some("b".into()),
    };
    repo.update(&t, &ids[0], patch).await.unwrap();
    assert_eq!(
        repo.find_by_id(&t, &ids[0]).await.unwrap().unwrap().label,
        "b"
    );
}

/// Waits until `storage` has loaded one `Item` from MongoDB (its reader is then in the
/// injected pause between load and put).
async fn wait_until_loaded(storage: &Storage) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while storage.cache().metrics_of::<Item>().db_loads == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader never loaded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_stale_put_is_fenced_on_a_cluster() {
    let slow = cluster_storage().await;
    slow.cache().inject_load_delay(Duration::from_millis(1500));
    let fast = cluster_storage().await;
    let (slow_repo, fast_repo) = (ItemRepository::new(&slow), ItemRepository::new(&fast));
    let t = common::tenant("cluster-fence");
    fast_repo
        .insert(
            &t,
            &Item {
                item_id: "x".into(),
                tenant_id: t.to_string(),
                label: "old".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    let reader = {
        let (repo, t) = (slow_repo.clone(), t.clone());
        tokio::spawn(async move { repo.find_by_id(&t, &"x".to_owned()).await })
    };
    wait_until_loaded(&slow).await; // the reader has loaded the old label and is pausing
    fast_repo
        .update(
            &t,
            &"x".to_owned(),
            ItemPatch {
                label: Some("new".into()),
            },
        )
        .await
        .unwrap();
    reader.await.unwrap().unwrap();
    assert_eq!(slow.cache().metrics_of::<Item>().fenced_puts, 1);
    assert_eq!(
        fast_repo
            .find_by_id(&t, &"x".to_owned())
            .await
            .unwrap()
            .unwrap()
            .label,
        "new"
    );
}

#[tokio::test]
async fn the_write_behind_queue_works_on_a_cluster() {
    let storage = cluster_storage().await;
    let repo = EventRepository::new(&storage);
    let t = common::tenant("cluster-queue");
    let batch: Vec<Event> = (0..40)
        .map(|i| Event {
            event_id: format!("e{i}"),
            tenant_id: t.to_string(),
        })
        .collect();
    repo.insert_many(&t, &batch).await.unwrap();
    storage
        .write_behind()
        .flush::<Event>(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        repo.with_consistency(Consistency::Strong)
            .count(&t, Filter::all())
            .await
            .unwrap(),
        40
    );
    let lag = storage.write_behind().lag().await.unwrap();
    assert!(lag.iter().all(|l| l.pending == 0), "{lag:?}");
}
