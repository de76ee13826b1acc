//! Connecting, capabilities, health and configuration errors against the real servers that
//! `scripts/services up` runs.

use caas_storage_tests as common;

use std::time::{Duration, Instant};

use caas_storage::capabilities::ServerProduct;
use caas_storage::{Error, HealthStatus, Storage, StorageConfig};

#[tokio::test]
async fn connects_and_every_component_is_healthy() {
    let storage = common::storage().await;
    let report = storage.health().await;
    assert_eq!(report.status, HealthStatus::Up, "{report:#?}");
    let names: Vec<&str> = report.components.iter().map(|c| c.name.as_str()).collect();
    for name in [
        "mongodb",
        "redis/db0",
        "redis/db1",
        "redis/db4",
        "redis/db5",
        "kafka",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for c in &report.components {
        assert_eq!(c.status, HealthStatus::Up, "{c:?}");
        assert!(c.error.is_none());
        assert!(c.latency_ms >= 0.0);
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "up");
    assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(json["components"][0]["name"], "mongodb");
}

#[tokio::test]
async fn capabilities_report_what_ferretdb_supports() {
    let storage = common::storage().await;
    let caps = storage.capabilities();
    assert_eq!(caps.product, ServerProduct::Ferretdb, "{caps:?}");
    assert_eq!(caps.ferretdb_version.as_deref(), Some("v1.24.2"));
    assert!(caps.max_wire_version >= 17);
    // What FerretDB v1.24 lacks, found by probing rather than assumed:
    assert!(
        !caps.transactions,
        "FerretDB has no multi-document transactions"
    );
    assert!(!caps.ttl_indexes, "FerretDB rejects expireAfterSeconds");
    assert!(!caps.change_streams, "FerretDB has no change streams");
    assert!(
        !caps.causal_consistency,
        "FerretDB returns no operationTime"
    );
    assert!(!caps.atomic_conditional_updates);
    assert!(
        !caps.find_and_modify_projection,
        "FerretDB rejects findAndModify `fields`"
    );
    assert!(
        !caps.unique_list_elements,
        "FerretDB's unique index holds a whole array, not each element"
    );
    assert!(caps.server_description().starts_with("FerretDB 1.24.2"));
}

#[tokio::test]
async fn probes_leave_no_collections_behind() {
    let storage = common::storage().await;
    let db = storage
        .raw()
        .database(&storage.config().mongodb.probe_database);
    let names = db.list_collection_names().await.unwrap();
    // Other tests connect concurrently and may have a probe in flight; none may linger, so
    // wait until each name seen now is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    for name in names
        .iter()
        .filter(|n| n.starts_with("caas_capability_probe_"))
    {
        while db.list_collection_names().await.unwrap().contains(name) {
            assert!(
                Instant::now() < deadline,
                "probe collection {name} left behind"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn one_handle_serves_several_databases() {
    let storage = common::storage().await;
    let tenant = common::tenant("multi-db");
    for db in ["caas_auth", "caas_messaging"] {
        let coll = storage
            .raw()
            .database(db)
            .collection::<caas_storage::bson::Document>("foundation_probe");
        coll.insert_one(caas_storage::bson::doc! { "tenant": tenant.as_str() })
            .await
            .unwrap();
        let n = coll
            .count_documents(caas_storage::bson::doc! { "tenant": tenant.as_str() })
            .await
            .unwrap();
        assert_eq!(n, 1, "{db}");
        coll.delete_many(caas_storage::bson::doc! { "tenant": tenant.as_str() })
            .await
            .unwrap();
    }
    // Entities of caas_auth cache in the auth service's Redis database.
    let mut auth = storage.raw().redis_cache_for("caas_auth");
    let key = format!("{tenant}:probe");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .query_async(&mut auth)
        .await
        .unwrap();
    let mut db1 = storage.raw().redis(1).unwrap();
    let v: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut db1)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut db1)
        .await
        .unwrap();
    assert!(matches!(storage.raw().redis(9), Err(Error::Config { .. })));
}

#[tokio::test]
async fn a_bad_uri_is_a_config_error_naming_the_key() {
    let mut config = StorageConfig::default();
    config.mongodb.uri = "mongodb://127.0.0.1:27017/?maxPoolSize=lots".into();
    match Storage::connect(config).await {
        Err(Error::Config { key, reason }) => {
            assert_eq!(key, "mongodb.uri");
            assert!(reason.to_lowercase().contains("maxpoolsize"), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let mut config = StorageConfig::default();
    config.redis.url = "http://127.0.0.1:6379".into();
    match Storage::connect(config).await {
        Err(Error::Config { key, .. }) => assert_eq!(key, "redis.url"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_config_file_key_is_named() {
    let dir = std::env::temp_dir().join(format!("caas-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("storage.toml");
    std::fs::write(
        &path,
        "[redis]\nurl = \"redis://127.0.0.1:6379/\"\nmax_retry = 3\n",
    )
    .unwrap();
    let e = StorageConfig::from_vars([("CAAS_CONFIG_FILE", path.to_str().unwrap())]).unwrap_err();
    let Error::Config { key, reason } = e else {
        panic!("not a config error: {e:?}")
    };
    assert_eq!(key, "redis.max_retry");
    assert!(
        reason.contains("max_retries"),
        "names what is accepted: {reason}"
    );

    std::fs::write(&path, "[redis]\nmax_retries = 7\n").unwrap();
    let c = StorageConfig::from_vars([
        ("CAAS_CONFIG_FILE", path.to_str().unwrap()),
        ("CAAS_REDIS_RESPONSE_TIMEOUT", "300ms"),
    ])
    .unwrap();
    assert_eq!(c.redis.max_retries, 7, "file value");
    assert_eq!(
        c.redis.response_timeout,
        Duration::from_millis(300),
        "env on top"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn connecting_to_no_server_fails_within_the_selection_timeout() {
    let mut config = StorageConfig::default();
    config.mongodb.uri = format!("mongodb://127.0.0.1:{}/", common::free_port());
    config.mongodb.server_selection_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let e = Storage::connect(config).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.is_transient(),
        "an unreachable server is worth retrying: {e}"
    );
}

/// Every variable `scripts/services` reads (its ports, its directory, its ready timeout) can be
/// exported next to the library's configuration without breaking it: the README tells users
/// running two checkouts side by side to export the port variables, and
/// `StorageConfig::from_env()` refuses unknown `CAAS_MONGODB_*`, `CAAS_REDIS_*` and
/// `CAAS_KAFKA_*` variables.
#[test]
fn the_server_scripts_variables_leave_the_configuration_alone() {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services"),
    )
    .unwrap();
    let mut vars: Vec<&str> = script
        .match_indices("${CAAS_")
        .map(|(i, _)| {
            let rest = &script[i + 2..];
            &rest[..rest.find([':', '}']).unwrap()]
        })
        .collect();
    vars.sort();
    vars.dedup();
    assert!(vars.len() >= 5, "found the script's variables: {vars:?}");
    let mut env: Vec<(&str, &str)> = vars.iter().map(|v| (*v, "7777")).collect();
    env.push(("CAAS_MONGODB_URI", "mongodb://127.0.0.1:7777/"));
    let config = StorageConfig::from_vars(env)
        .unwrap_or_else(|e| panic!("{vars:?} next to the configuration: {e}"));
    assert_eq!(config.mongodb.uri, "mongodb://127.0.0.1:7777/");
}
