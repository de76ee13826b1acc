//! `#[caas_storage::test]`: each test gets a fresh, isolated storage, in memory by default and
//! on the servers with `CAAS_TEST_BACKEND=servers` (`scripts/test` runs this file both ways).
//! The tests below write the same tenant and ids: they pass together, and again on the next
//! run, only if every test has storage of its own and it is dropped afterwards.

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
