//! `#[caas_storage::test]`: each test gets a fresh, isolated storage, in memory by default and
//! on the servers with `CAAS_TEST_BACKEND=servers` (`scripts/test` runs this file both ways).
//! The tests below write the same tenant and ids: they pass together, and again on the next
//! run, only if every test has storage of its own and it is dropped afterwards.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use caas_storage::outbox::{envelope_from_message, RelayOptions};
use caas_storage::prelude::*;
use caas_storage::testing::TEST_BACKEND_VAR;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_macro", collection = "test_signups", consistency = strong,
             cache(ttl = "5m"), outbox(topic = "platform.events"))]
#[index(keys(email), unique)]
struct Signup {
    #[repository(id)]
    signup_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
    #[repository(version)]
    version: u64,
}

fn signup(id: &str) -> Signup {
    Signup {
        signup_id: id.into(),
        tenant_id: "t1".into(),
        email: format!("{id}@example.com"),
        version: 0,
    }
}

fn on_servers() -> bool {
    std::env::var(TEST_BACKEND_VAR).as_deref() == Ok("servers")
}

/// Writes the fixed tenant's fixed ids and checks they are all there is.
async fn write_and_count(storage: &Storage) {
    assert_eq!(storage.is_in_memory(), !on_servers());
    let repo = SignupRepository::new(storage);
    storage.sync_indexes::<Signup>().await.unwrap();
    let t = TenantId::new("t1").unwrap();
    for id in ["s1", "s2"] {
        repo.insert(&t, &signup(id)).await.unwrap();
    }
    assert_eq!(repo.count(&t, Filter::all()).await.unwrap(), 2);
    let events = storage.take_test_events().await.unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e.envelope.event_type == "signup.created"));
}

#[caas_storage::test]
async fn one_test_writes_the_fixed_ids(storage: Storage) {
    write_and_count(&storage).await;
}

#[caas_storage::test]
async fn another_test_writes_the_same_ids(storage: Storage) {
    write_and_count(&storage).await;
}

#[caas_storage::test]
async fn a_test_may_return_a_result(storage: Storage) -> caas_storage::Result<()> {
    let repo = SignupRepository::new(&storage);
    let t = TenantId::new("t1")?;
    repo.insert(&t, &signup("s1")).await?;
    assert!(repo.find_by_id(&t, &"s1".to_owned()).await?.is_some());
    Ok(())
}

#[caas_storage::test]
#[should_panic(expected = "the test returned an error")]
async fn an_error_fails_the_test(storage: Storage) -> caas_storage::Result<()> {
    let repo = SignupRepository::new(&storage);
    storage.sync_indexes::<Signup>().await?;
    let t = TenantId::new("t1")?;
    repo.insert(&t, &signup("s1")).await?;
    let mut twin = signup("s9");
    twin.email = "s1@example.com".into();
    repo.insert(&t, &twin).await?; // the unique email refuses it
    Ok(())
}

/// Publishes the fixed ids' events and reads the test's topic from its beginning: on the
/// servers the relay publishes to a topic of the test's own (`kafka.topic_suffix`), so each of
/// the two tests below finds exactly its two events there, however often the suite ran. In
/// memory nothing is published: the relay is refused and topics keep their declared names.
async fn publish_and_read_back(storage: &Storage) {
    let repo = SignupRepository::new(storage);
    let t = TenantId::new("t1").unwrap();
    for id in ["s1", "s2"] {
        repo.insert(&t, &signup(id)).await.unwrap();
    }
    let topic = storage.config().kafka.topic_name("platform.events");
    let options = RelayOptions::for_databases(["caas_macro"]);
    if !on_servers() {
        assert_eq!(topic, "platform.events");
        assert!(storage.outbox_relay(options).is_err());
        return;
    }
    assert!(
        topic.starts_with("platform.events.t") && topic.len() > "platform.events.t".len(),
        "{topic}"
    );
    let relay = storage.outbox_relay(options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut published = 0;
    while published < 2 {
        assert!(
            Instant::now() < deadline,
            "the relay published {published} of 2"
        );
        published += relay.drain_once().await.unwrap().published;
    }
    let consumer = caas_storage_tests::reader_from_beginning(&topic, &topic, deadline).await;
    let mut ids = Vec::new();
    // Everything on the topic: until it has been quiet for two seconds.
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        let envelope = envelope_from_message(&message.unwrap()).unwrap();
        ids.push(envelope.aggregate_id);
    }
    ids.sort();
    assert_eq!(ids, ["s1", "s2"]);
}

#[caas_storage::test]
async fn one_test_publishes_the_fixed_events(storage: Storage) {
    publish_and_read_back(&storage).await;
}

#[caas_storage::test]
async fn another_test_publishes_the_same_events(storage: Storage) {
    publish_and_read_back(&storage).await;
}

/// In memory no Kafka client is made: no librdkafka thread (`rdk:*`) runs in the test's
/// process, where before each storage started a producer and an admin client. (Nothing else
/// in this file makes a Kafka client in memory; on the servers the storage has its producer.)
#[cfg(target_os = "linux")]
#[caas_storage::test]
async fn in_memory_no_kafka_client_is_made(storage: Storage) {
    if on_servers() {
        return;
    }
    let repo = SignupRepository::new(&storage);
    let t = TenantId::new("t1").unwrap();
    repo.insert(&t, &signup("s1")).await.unwrap();
    storage.health().await;
    let kafka_threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("rdk:"))
        .collect();
    assert_eq!(kafka_threads, Vec::<String>::new());
}

fn strict_topics() -> StorageConfig {
    let mut config = if on_servers() {
        StorageConfig::from_env().unwrap()
    } else {
        StorageConfig::default()
    };
    config.kafka.topics.retain(|t| t.name != "platform.events");
    config
}

/// `config = ...` builds the storage from the given configuration: here one that no longer
/// declares the entity's topic, so its writes are refused as on a misconfigured service.
#[caas_storage::test(config = strict_topics)]
async fn the_given_configuration_applies(storage: Storage) {
    let repo = SignupRepository::new(&storage);
    let t = TenantId::new("t1").unwrap();
    let refused = repo.insert(&t, &signup("s1")).await;
    assert!(
        matches!(refused, Err(caas_storage::Error::Config { .. })),
        "{refused:?}"
    );
}

/// What a test on the servers owns is gone after it: its databases, its Redis keys and its
/// Kafka topics. (This calls what `#[caas_storage::test]` expands to, to look afterwards; in
/// memory there is nothing on a server to look at.)
#[test]
fn a_test_on_the_servers_leaves_nothing_behind() {
    use std::sync::Mutex;
    if !on_servers() {
        return;
    }
    static OWNED: Mutex<Option<(String, String, String)>> = Mutex::new(None);
    caas_storage::__private_0_1_0::run_test("leaves_nothing_behind", None, |storage| async move {
        publish_and_read_back(&storage).await;
        // A read puts the document in the cache: the test has Redis keys too.
        let t = TenantId::new("t1").unwrap();
        let repo = SignupRepository::new(&storage);
        assert!(repo
            .find_by_id(&t, &"s1".to_owned())
            .await
            .unwrap()
            .is_some());
        let mut cache = storage.raw().redis_cache_for("caas_macro");
        let prefix = format!("{}*", storage.config().redis.key_prefix);
        assert!(!cache.scan_match(&prefix, None).await.unwrap().is_empty());
        let c = storage.config();
        *OWNED.lock().unwrap() = Some((
            c.mongodb.database_suffix.clone(),
            c.redis.key_prefix.clone(),
            c.kafka.topic_suffix.clone(),
        ));
    });
    let (database_suffix, key_prefix, topic_suffix) = OWNED.lock().unwrap().take().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = caas_storage_tests::storage().await;
        let databases = storage.raw().mongo().list_database_names().await.unwrap();
        let left: Vec<_> = databases
            .iter()
            .filter(|d| d.ends_with(&database_suffix))
            .collect();
        assert!(left.is_empty(), "databases left: {left:?}");
        for db in storage.config().redis.databases.purposes().into_keys() {
            let mut redis = storage.raw().redis(db).unwrap();
            let keys = redis.scan_match(&format!("{key_prefix}*"), None).await;
            assert_eq!(keys.unwrap(), Vec::<String>::new(), "Redis database {db}");
        }
        let admin: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &storage.config().kafka.brokers)
            .create()
            .unwrap();
        let metadata = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let topics: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|t| t.ends_with(&topic_suffix))
            .collect();
        assert!(topics.is_empty(), "topics left: {topics:?}");
    });
}
