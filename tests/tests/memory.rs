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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_mem_profiles",
             consistency = read_your_writes,
             cache(ttl = "10m", local(ttl = "30s", capacity = 100)))]
struct Profile {
    #[repository(id)]
    profile_id: String,
    #[repository(tenant)]
    tenant_id: String,
    name: String,
    #[repository(version)]
    version: u64,
}

/// The in-process tier expires on the test clock too: at its own TTL the next read goes to
/// Redis (which still holds the entry), and refills the tier.
#[tokio::test]
async fn in_process_entries_expire_when_the_test_clock_moves() {
    let storage = Storage::in_memory().await;
    let profiles = ProfileRepository::new(&storage);
    let t = common::tenant("local");
    let p = Profile {
        profile_id: "p1".into(),
        tenant_id: t.to_string(),
        name: "Ada".into(),
        version: 0,
    };
    profiles.insert(&t, &p).await.unwrap();
    let id = "p1".to_owned();
    let counts = || {
        let m = storage.cache().metrics_of::<Profile>();
        (m.local_hits, m.redis_hits, m.db_loads)
    };

    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(counts(), (1, 0, 1), "loaded once, then in process");

    let clock = storage.test_clock().unwrap();
    clock.advance(Duration::from_secs(29));
    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(counts(), (2, 0, 1), "still in process at 29s");

    clock.advance(Duration::from_secs(2));
    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(
        counts(),
        (2, 1, 1),
        "expired in process after 30s, Redis still has it"
    );
    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(counts(), (3, 1, 1), "refilled from Redis");
}

/// A frozen test clock stands exactly at a TTL: real time passing between the calls does not
/// move it, so the entry is there 1 ms before its 30 s and gone at 30 s.
#[tokio::test]
async fn a_frozen_test_clock_stands_exactly_at_the_ttl() {
    let storage = Storage::in_memory().await;
    let clock = storage.test_clock().unwrap();
    clock.freeze();
    let profiles = ProfileRepository::new(&storage);
    let t = common::tenant("frozen");
    let p = Profile {
        profile_id: "p1".into(),
        tenant_id: t.to_string(),
        name: "Ada".into(),
        version: 0,
    };
    profiles.insert(&t, &p).await.unwrap();
    let id = "p1".to_owned();
    let counts = || {
        let m = storage.cache().metrics_of::<Profile>();
        (m.local_hits, m.redis_hits, m.db_loads)
    };
    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(counts(), (0, 0, 1), "loaded into both tiers");

    std::thread::sleep(Duration::from_millis(20));
    clock.advance(Duration::from_millis(29_999));
    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(counts(), (1, 0, 1), "still in process 1 ms before 30s");

    clock.advance(Duration::from_millis(1));
    profiles.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(counts(), (1, 1, 1), "gone from the process at 30s");
}

/// An entity's events occurred when the write did, by the test clock: a day on, an insert and
/// an update publish events stamped a day on, at the clock's time to the millisecond.
#[tokio::test]
async fn events_occur_at_the_test_clock_time() {
    let storage = Storage::in_memory().await;
    let clock = storage.test_clock().unwrap();
    clock.freeze();
    clock.advance(Duration::from_secs(86_400));
    let accounts = AccountRepository::new(&storage);
    let t = common::tenant("occurred");
    let occurred = |events: Vec<caas_storage::outbox::OutboxRecord>| -> Vec<i64> {
        events
            .iter()
            .map(|e| {
                DateTime::parse_rfc3339_str(&e.envelope.occurred_at)
                    .unwrap_or_else(|err| panic!("{}: {err}", e.envelope.occurred_at))
                    .timestamp_millis()
            })
            .collect()
    };
    accounts
        .insert(&t, &account(&t, "a1", "o@example.com"))
        .await
        .unwrap();
    let at = clock.now().timestamp_millis();
    assert_eq!(occurred(storage.take_test_events().await.unwrap()), [at]);

    clock.advance(Duration::from_millis(1_234));
    accounts
        .update(
            &t,
            &"a1".to_owned(),
            AccountPatch {
                email: Some("p@example.com".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        occurred(storage.take_test_events().await.unwrap()),
        [at + 1_234]
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_mem_notes")]
struct Note {
    #[repository(id)]
    note_id: String,
    #[repository(tenant)]
    tenant_id: String,
    text: String,
    #[repository(version)]
    version: u64,
    #[repository(created_at)]
    created_at: DateTime,
    #[repository(updated_at)]
    updated_at: Option<DateTime>,
}

/// The timestamps the runtime sets are taken from the test clock: a day later by the clock,
/// an update is stamped a day later, and the creation time stays.
#[tokio::test]
async fn declared_timestamps_follow_the_test_clock() {
    let storage = Storage::in_memory().await;
    let notes = NoteRepository::new(&storage);
    let t = common::tenant("stamps");
    let id = "n1".to_owned();
    let note = Note {
        note_id: id.clone(),
        tenant_id: t.to_string(),
        text: "first".into(),
        version: 0,
        created_at: DateTime::MIN,
        updated_at: None,
    };
    notes.insert(&t, &note).await.unwrap();
    let created = notes.find_by_id(&t, &id).await.unwrap().unwrap().created_at;

    let day = Duration::from_secs(86_400);
    storage.test_clock().unwrap().advance(day);
    let patch = NotePatch {
        text: Some("second".into()),
    };
    notes.update(&t, &id, patch).await.unwrap().unwrap();
    let stored = notes.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(stored.created_at, created);
    let updated = stored.updated_at.expect("an update sets updated_at");
    let later = updated.timestamp_millis() - created.timestamp_millis();
    assert!(
        (86_400_000..86_460_000).contains(&later),
        "stamped {later} ms after creation"
    );
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
    let audit = storage.audit_log(caas_storage::audit::AuditOptions::for_database(
        "caas_audit",
    ));
    assert!(
        matches!(
            &audit,
            Err(Error::Unsupported {
                feature: "the audit log",
                ..
            })
        ),
        "{:?}",
        audit.err()
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
    let topics = storage.ensure_topics().await;
    assert!(
        matches!(
            &topics,
            Err(Error::Unsupported {
                feature: "Kafka topic administration",
                ..
            })
        ),
        "{topics:?}"
    );
}

/// Health in memory: every component answers (no server to ping), the backlogs are read from
/// the memory outbox and queue.
#[tokio::test]
async fn health_is_up_in_memory_with_the_outbox_backlog() {
    let storage = Storage::in_memory().await;
    let accounts = AccountRepository::new(&storage);
    let t = common::tenant("health");
    accounts
        .insert(&t, &account(&t, "a1", "h@example.com"))
        .await
        .unwrap();
    let report = storage.health().await;
    let down: Vec<_> = report
        .components
        .iter()
        .filter(|c| c.status != caas_storage::health::HealthStatus::Up)
        .map(|c| (&c.name, &c.error))
        .collect();
    assert!(down.is_empty(), "{down:?}");
    let outbox = report.component("outbox").expect("the outbox is reported");
    assert_eq!(outbox.details["pending"], 1, "{outbox:?}");
}

/// Rate limits run on the test clock: a limit that is spent comes back as the clock moves,
/// with no waiting.
#[tokio::test]
async fn rate_limits_refill_as_the_test_clock_moves() {
    use caas_storage::rate_limit::{Decision, RateLimit};
    let storage = Storage::in_memory().await;
    let clock = storage.test_clock().unwrap();
    let limiter = storage
        .rate_limiter("login", RateLimit::per(3, Duration::from_secs(60)))
        .unwrap();
    let t = common::tenant("limit");
    for n in 0..3 {
        let d = limiter.check(&t, "a@example.com").await.unwrap();
        assert!(matches!(d, Decision::Allowed { .. }), "attempt {n}: {d:?}");
    }
    let d = limiter.check(&t, "a@example.com").await.unwrap();
    let Decision::Limited { retry_after } = d else {
        panic!("the fourth attempt within the minute is limited: {d:?}");
    };
    assert!(retry_after <= Duration::from_secs(20), "{retry_after:?}");
    // Another key is not limited.
    let other = limiter.check(&t, "b@example.com").await.unwrap();
    assert!(matches!(other, Decision::Allowed { .. }), "{other:?}");
    clock.advance(retry_after);
    let d = limiter.check(&t, "a@example.com").await.unwrap();
    assert!(
        matches!(d, Decision::Allowed { .. }),
        "after {retry_after:?}: {d:?}"
    );
}

/// Sessions slide on the test clock and end at their lifetime, however often touched.
#[tokio::test]
async fn sessions_slide_and_end_on_the_test_clock() {
    use caas_storage::sessions::SessionOptions;
    let storage = Storage::in_memory().await;
    let clock = storage.test_clock().unwrap();
    let sessions = storage
        .sessions(SessionOptions {
            idle_ttl: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(150),
            ..SessionOptions::default()
        })
        .unwrap();
    let t = common::tenant("sessions");
    let (token, _) = sessions.create(&t, "u1", "cart-1").await.unwrap();
    let token = token.secret().to_owned();
    for _ in 0..2 {
        clock.advance(Duration::from_secs(50));
        let s = sessions.touch::<String>(&t, &token).await.unwrap();
        assert_eq!(
            s.map(|s| s.data),
            Some("cart-1".to_owned()),
            "a touch within the idle time slides it"
        );
    }
    assert_eq!(sessions.count_for_user(&t, "u1").await.unwrap(), 1);
    clock.advance(Duration::from_secs(51));
    assert!(
        sessions
            .touch::<String>(&t, &token)
            .await
            .unwrap()
            .is_none(),
        "past its lifetime, the session has ended"
    );
    let (second, _) = sessions.create(&t, "u1", "cart-2").await.unwrap();
    clock.advance(Duration::from_secs(61));
    assert!(
        sessions
            .touch::<String>(&t, second.secret())
            .await
            .unwrap()
            .is_none(),
        "idle longer than idle_ttl, the session has ended"
    );
}
