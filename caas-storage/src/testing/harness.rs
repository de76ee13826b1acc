//! What `#[caas_storage::test]` expands to call: one runtime per test, the backend
//! `CAAS_TEST_BACKEND` names, and the clean-up of what a test on the servers wrote.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use crate::config::StorageConfig;
use crate::storage::Storage;

/// The environment variable choosing the backend of `#[caas_storage::test]` tests.
pub const TEST_BACKEND_VAR: &str = "CAAS_TEST_BACKEND";

/// What a test body may return: `()`, or a `Result` whose error fails the test.
pub trait TestOutcome {
    /// Fails the test (panics) on an error.
    fn report(self);
}

impl TestOutcome for () {
    fn report(self) {}
}

impl<E: std::fmt::Debug> TestOutcome for std::result::Result<(), E> {
    fn report(self) {
        if let Err(e) = self {
            panic!("the test returned an error: {e:?}");
        }
    }
}

/// Runs one `#[caas_storage::test]`: builds its runtime and storage, runs `body`, cleans up
/// (also after a panic, which is then passed on).
///
/// - `CAAS_TEST_BACKEND` unset or `memory`: [`Storage::in_memory_with`] `config()` (default:
///   [`StorageConfig::default`]).
/// - `servers`: [`Storage::connect`] with `config()` (default: [`StorageConfig::from_env`]),
///   a `mongodb.database_suffix`, a `redis.key_prefix` and a `kafka.topic_suffix` of this
///   test's own; its databases, keys and topics are dropped afterwards.
pub fn run_test<F, Fut>(test: &str, config: Option<fn() -> StorageConfig>, body: F)
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future,
    Fut::Output: TestOutcome,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the test");
    let backend = std::env::var(TEST_BACKEND_VAR).unwrap_or_default();
    runtime.block_on(async move {
        let (storage, isolation) = match backend.as_str() {
            "" | "memory" => {
                let config = config.map_or_else(StorageConfig::default, |f| f());
                let storage = Storage::in_memory_with(config)
                    .await
                    .unwrap_or_else(|e| panic!("{test}: invalid test configuration: {e}"));
                (storage, None)
            }
            "servers" => {
                let mut config = match config {
                    Some(f) => f(),
                    None => StorageConfig::from_env().unwrap_or_else(|e| {
                        panic!("{test}: {TEST_BACKEND_VAR}=servers needs the CAAS_* settings: {e}")
                    }),
                };
                let id = uuid::Uuid::now_v7().simple().to_string();
                let id = &id[id.len() - 10..];
                config.mongodb.database_suffix = format!("_t{id}");
                config.redis.key_prefix = format!("{}t{id}:", config.redis.key_prefix);
                config.kafka.topic_suffix = format!("{}.t{id}", config.kafka.topic_suffix);
                let isolation = Isolation {
                    suffix: config.mongodb.database_suffix.clone(),
                    prefix: config.redis.key_prefix.clone(),
                    topic_suffix: config.kafka.topic_suffix.clone(),
                };
                let storage = Storage::connect(config).await.unwrap_or_else(|e| {
                    panic!("{test}: {TEST_BACKEND_VAR}=servers but the servers do not answer: {e}")
                });
                (storage, Some(isolation))
            }
            other => panic!(
                "{test}: {TEST_BACKEND_VAR}={other:?} is not a backend; use `memory` (the default) or `servers`"
            ),
        };
        let outcome = AssertUnwindSafe(body(storage.clone())).catch_unwind().await;
        if let Some(isolation) = isolation {
            isolation.drop_all(&storage).await;
        }
        match outcome {
            Ok(outcome) => outcome.report(),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
}

/// What a test on the servers owns: databases with `suffix`, Redis keys with `prefix`, Kafka
/// topics with `topic_suffix`.
struct Isolation {
    suffix: String,
    prefix: String,
    topic_suffix: String,
}

impl Isolation {
    /// Drops the test's databases, deletes its keys and its topics. Failures are printed, not
    /// raised: the test's own outcome is what the run reports.
    async fn drop_all(&self, storage: &Storage) {
        if let Err(e) = storage
            .connections()
            .topics()
            .delete_suffixed(&self.topic_suffix)
            .await
        {
            eprintln!("caas_storage::test: could not delete the test's Kafka topics: {e}");
        }
        let client = storage.raw().mongo();
        match client.list_database_names().await {
            Ok(names) => {
                for name in names.iter().filter(|n| n.ends_with(&self.suffix)) {
                    if let Err(e) = client.database(name).drop().await {
                        eprintln!("caas_storage::test: could not drop database {name}: {e}");
                    }
                }
            }
            Err(e) => eprintln!("caas_storage::test: could not list databases: {e}"),
        }
        let pattern = format!("{}*", self.prefix.replace('*', "\\*"));
        for conn in storage.connections().redis_databases().values() {
            let mut conn = conn.clone();
            match conn.scan_match(&pattern, None).await {
                Ok(keys) => {
                    for key in keys {
                        let _: ::redis::RedisResult<i64> =
                            ::redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
                    }
                }
                Err(e) => eprintln!("caas_storage::test: could not scan Redis keys: {e}"),
            }
        }
    }
}
