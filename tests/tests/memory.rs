//! The memory backend's own surface (`Storage::in_memory`): the events a call recorded, the
//! clock tests move, isolation between handles, and the features it refuses. The behaviour
//! suites (`repository.rs`, `pipeline.rs`, `cache.rs`, `consistency.rs`, `tenancy.rs`) run
//! on it too, as one more capability set (`common::each_capability_set`).

use caas_storage_tests as common;

use std::time::Duration;

use caas_storage::prelude::*;
use caas_storage::Error;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_mem_accounts", consistency = strong,
             cache(ttl = "1m"), outbox(topic = "platform.events"))]
#[index(keys(email), unique)]
struct Account {
    #[repository(id)]
    account_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
    #[repository(version)]
    version: u64,
}

fn account(t: &TenantId, id: &str, email: &str) -> Account {
    Account {
        account_id: id.into(),
        tenant_id: t.to_string(),
        email: email.into(),
        version: 0,
    }
}

/// The events a call recorded, taken call by call, read the same way on both backends.
#[tokio::test]
async fn each_call_publishes_exactly_its_events_on_both_backends() {
    for storage in [Storage::in_memory().await, common::storage().await] {
        eprintln!("-- {}", storage.capabilities().server_description());
        let accounts = AccountRepository::new(&storage);
        storage.sync_indexes::<Account>().await.unwrap();
        let t = common::tenant("events");
        // Events of earlier runs (servers keep them) are not this test's.
        storage.take_test_events().await.unwrap();

        accounts
            .insert(&t, &account(&t, "a1", "a1@example.com"))
            .await
            .unwrap();
        let taken = storage.take_test_events().await.unwrap();
        let mine: Vec<_> = taken
            .iter()
            .filter(|r| r.envelope.tenant == t.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{taken:?}");
        assert_eq!(mine[0].envelope.event_type, "account.created");
        assert_eq!(mine[0].topic, "platform.events");
        assert_eq!(mine[0].envelope.aggregate_id, "a1");
        assert_eq!(mine[0].envelope.payload["email"], "a1@example.com");

        // A refused write publishes nothing.
        let dup = accounts
            .insert(&t, &account(&t, "a2", "a1@example.com"))
            .await;
        assert!(matches!(dup, Err(Error::DuplicateKey { .. })), "{dup:?}");
        let taken = storage.take_test_events().await.unwrap();
        assert!(
            taken.iter().all(|r| r.envelope.tenant != t.as_str()),
            "{taken:?}"
        );

        accounts.delete(&t, &"a1".to_owned()).await.unwrap();
        let types: Vec<String> = storage
            .take_test_events()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.envelope.tenant == t.as_str())
            .map(|r| r.envelope.event_type)
            .collect();
        assert_eq!(types, ["account.deleted"]);
    }
}

/// Cache entries expire on the test clock: no waiting for a TTL.
#[tokio::test]
async fn cache_entries_expire_when_the_test_clock_moves() {
    let storage = Storage::in_memory().await;
    let accounts = AccountRepository::new(&storage);
    let t = common::tenant("clock");
    accounts
        .insert(&t, &account(&t, "a1", "c@example.com"))
        .await
        .unwrap();
    let id = "a1".to_owned();

    accounts.find_by_id(&t, &id).await.unwrap().unwrap();
    accounts.find_by_id(&t, &id).await.unwrap().unwrap();
    let m = storage.cache().metrics_of::<Account>();
    assert_eq!((m.db_loads, m.redis_hits), (1, 1), "{m:?}");

    let clock = storage
        .test_clock()
        .expect("an in-memory storage has a test clock");
    clock.advance(Duration::from_secs(59));
    accounts.find_by_id(&t, &id).await.unwrap().unwrap();
    let m = storage.cache().metrics_of::<Account>();
    assert_eq!(
        (m.db_loads, m.redis_hits),
        (1, 2),
        "still fresh at 59s: {m:?}"
    );

    clock.advance(Duration::from_secs(2));
    accounts.find_by_id(&t, &id).await.unwrap().unwrap();
    let m = storage.cache().metrics_of::<Account>();
    assert_eq!(
        (m.db_loads, m.redis_hits),
        (2, 2),
        "expired after 1m: {m:?}"
    );
    assert!(common::storage().await.test_clock().is_none());
}

/// Two in-memory storages share nothing; clones share everything.
#[tokio::test]
async fn in_memory_storages_are_isolated_and_clones_share() {
    let a = Storage::in_memory().await;
    let b = Storage::in_memory().await;
    let t = common::tenant("iso");
    AccountRepository::new(&a)
        .insert(&t, &account(&t, "a1", "i@example.com"))
        .await
        .unwrap();
    let id = "a1".to_owned();
    assert!(AccountRepository::new(&b)
        .find_by_id(&t, &id)
        .await
        .unwrap()
        .is_none());
    let clone = a.clone();
    assert!(AccountRepository::new(&clone)
        .find_by_id(&t, &id)
        .await
        .unwrap()
        .is_some());
    // The same email in the other storage is no duplicate.
    AccountRepository::new(&b)
        .insert(&t, &account(&t, "a2", "i@example.com"))
        .await
        .unwrap();
}

/// What the memory backend does not model refuses at once, naming the feature.
#[tokio::test]
async fn features_that_need_a_server_refuse_in_memory() {
    let storage = Storage::in_memory().await;
    assert!(storage.is_in_memory());
    let relay = storage.outbox_relay(Default::default());
    assert!(
        matches!(&relay, Err(Error::Unsupported { feature, .. }) if feature.contains("relay")),
        "{:?}",
        relay.err()
    );
    let retention = storage.run_retention().await;
    assert!(
        matches!(
            &retention,
            Err(Error::Unsupported {
                feature: "retention",
                ..
            })
        ),
        "{retention:?}"
    );
}
