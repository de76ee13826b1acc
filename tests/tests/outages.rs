//! Each server stopped in turn: health reports exactly that component down, within its
//! timeout, while the others stay up; and recovers when it is back. Uses private server
//! instances so the shared ones keep serving the other tests.

use caas_storage_tests as common;

use std::time::{Duration, Instant};

use caas_storage::health::HealthReport;
use caas_storage::{HealthStatus, Storage, StorageConfig};

fn down_components(r: &HealthReport) -> Vec<String> {
    let mut down: Vec<String> = r
        .components
        .iter()
        .filter(|c| c.status != HealthStatus::Up)
        .map(|c| c.name.split('/').next().unwrap().to_owned())
        .collect();
    down.dedup();
    down
}

async fn wait_for(storage: &Storage, want_down: &[&str]) -> HealthReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let r = storage.health().await;
        let bound = storage.config().health.timeout + Duration::from_secs(1);
        assert!(
            started.elapsed() < bound,
            "health took {:?}, more than its timeout allows",
            started.elapsed()
        );
        if down_components(&r) == want_down {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "wanted down {want_down:?}, still {:#?}",
            r.components
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn health_names_exactly_the_component_that_is_down() {
    let (mut mongo, mut redis, mut kafka) = tokio::task::spawn_blocking(|| {
        (
            common::private_ferretdb(),
            common::private_redis(),
            common::private_kafka(),
        )
    })
    .await
    .unwrap();

    let mut config = StorageConfig::default();
    config.mongodb.uri = format!("mongodb://127.0.0.1:{}/", mongo.port);
    config.mongodb.server_selection_timeout = Duration::from_millis(800);
    config.redis.url = format!("redis://127.0.0.1:{}/", redis.port);
    config.kafka.brokers = format!("127.0.0.1:{}", kafka.port);
    config.health.timeout = Duration::from_millis(1500);
    let storage = Storage::connect(config).await.unwrap();
    let r = wait_for(&storage, &[]).await;
    assert_eq!(r.status, HealthStatus::Up);

    redis.stop();
    // The write-behind queue lives in Redis, so its backlog cannot be read either.
    let r = wait_for(&storage, &["redis", "write_behind"]).await;
    assert_eq!(r.status, HealthStatus::Degraded);
    assert!(r
        .components
        .iter()
        .filter(|c| c.name.starts_with("redis"))
        .all(|c| c.error.is_some()));
    redis.start();
    wait_for(&storage, &[]).await;

    kafka.stop();
    let r = wait_for(&storage, &["kafka"]).await;
    assert_eq!(r.status, HealthStatus::Degraded);
    kafka.start();
    wait_for(&storage, &[]).await;

    mongo.stop();
    let r = wait_for(&storage, &["mongodb"]).await;
    assert_eq!(
        r.status,
        HealthStatus::Down,
        "MongoDB is the source of truth"
    );
    mongo.start();
    let r = wait_for(&storage, &[]).await;
    assert_eq!(r.status, HealthStatus::Up);
}
