//! The TTL fallback: where the server has no TTL indexes (FerretDB), the sweeper deletes exactly
//! the expired documents of entities that declare a TTL index, a bounded number per run, drops
//! their cache entries and reports what it deleted in health; where the server has TTL indexes
//! it leaves expiry to them.

use caas_storage_tests as common;

use std::time::Duration;

use caas_storage::bson::{doc, DateTime, Document};
use caas_storage::prelude::*;

const DB: &str = "caas_ttl_it";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_ttl_it", collection = "sessions", consistency = read_your_writes,
             cache(ttl = "5m"))]
#[index(keys(expires_at), ttl = "1h")]
struct Session {
    #[repository(id)]
    session_id: String,
    #[repository(tenant)]
    tenant_id: String,
    expires_at: DateTime,
    #[repository(version)]
    version: u64,
}

/// The same, in a collection of its own (the other tests' sweepers never see it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_ttl_it", collection = "sessions_indexed")]
#[index(keys(expires_at), ttl = "1h")]
struct IndexedSession {
    #[repository(id)]
    session_id: String,
    #[repository(tenant)]
    tenant_id: String,
    expires_at: DateTime,
}

/// The background sweeper's: a collection of its own, so its sweeps never race the explicit
/// sweeps of the test that counts what each run deletes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_ttl_it", collection = "sessions_background")]
#[index(keys(expires_at), ttl = "1h")]
struct BackgroundSession {
    #[repository(id)]
    session_id: String,
    #[repository(tenant)]
    tenant_id: String,
    expires_at: DateTime,
}

fn minutes_from_now(m: i64) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() + m * 60_000)
}

fn session(id: &str, t: &TenantId, expires_at: DateTime) -> Session {
    Session {
        session_id: id.into(),
        tenant_id: t.as_str().into(),
        expires_at,
        version: 1,
    }
}

async fn ids(storage: &Storage, t: &TenantId) -> Vec<String> {
    ids_in(storage, "sessions", t).await
}

async fn ids_in(storage: &Storage, collection: &str, t: &TenantId) -> Vec<String> {
    use futures::TryStreamExt;
    let docs: Vec<Document> = storage
        .raw()
        .database(DB)
        .collection::<Document>(collection)
        .find(doc! { "tenant_id": t.as_str() })
        .sort(doc! { "session_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .map(|d| d.get_str("session_id").unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_sweeper_deletes_exactly_the_expired_documents_a_batch_per_run() {
    let mut config = common::config();
    config.ttl.sweeper = false; // this test runs the sweeps itself
    config.ttl.batch_size = 3;
    let storage = Storage::connect(config).await.unwrap();
    assert!(
        !storage.capabilities().ttl_indexes,
        "this test is for servers without TTL indexes"
    );
    let sessions = SessionRepository::new(&storage);
    let t = common::tenant("ttl");
    // Expired: older than the one-hour TTL.
    for (id, minutes) in [("e1", -61), ("e2", -120), ("e3", -24 * 60), ("e4", -65)] {
        sessions
            .insert(&t, &session(id, &t, minutes_from_now(minutes)))
            .await
            .unwrap();
    }
    // Not expired: inside the hour, now, in the future; and a value that is not a date.
    for (id, minutes) in [("k1", -59), ("k2", 0), ("k3", 60)] {
        sessions
            .insert(&t, &session(id, &t, minutes_from_now(minutes)))
            .await
            .unwrap();
    }
    storage
        .raw()
        .database(DB)
        .collection::<Document>("sessions")
        .insert_one(doc! { "session_id": "k4", "tenant_id": t.as_str(), "expires_at": "never", "version": 1_i64 })
        .await
        .unwrap();
    // A cached expired session: its entry goes with it.
    assert!(sessions
        .find_by_id(&t, &"e1".into())
        .await
        .unwrap()
        .is_some());

    let mut deleted = 0;
    let mut runs = 0;
    loop {
        let report = storage.run_ttl_sweep().await.unwrap();
        assert!(!report.server_has_ttl_indexes);
        assert!(report.deleted <= 3, "bounded per run: {report:?}");
        runs += 1;
        if report.deleted == 0 {
            break;
        }
        deleted += report.deleted;
    }
    assert!(deleted >= 4 && runs >= 3, "{deleted} in {runs} runs");
    assert_eq!(ids(&storage, &t).await, ["k1", "k2", "k3", "k4"]);
    assert_eq!(sessions.find_by_id(&t, &"e1".into()).await.unwrap(), None);

    let health = storage.health().await;
    let ttl = health.component("ttl").expect("a ttl component");
    // This handle's background sweeper is off (`ttl.sweeper = false`); its explicit sweeps count.
    assert_eq!(ttl.details["mode"], "off");
    assert_eq!(ttl.details["deleted_total"], deleted);
    assert_eq!(
        ttl.details["entities"],
        serde_json::json!(["caas_ttl_it.sessions:Session"])
    );
}

#[tokio::test]
async fn the_background_sweeper_runs_by_itself_under_its_lease() {
    let mut config = common::config();
    config.ttl.interval = Duration::from_millis(300);
    config.redis.key_prefix = format!("ttl{}:", std::process::id());
    let storage = Storage::connect(config).await.unwrap();
    let sessions = BackgroundSessionRepository::new(&storage);
    let t = common::tenant("ttl-bg");
    for (id, minutes) in [("old", -90), ("new", 30)] {
        let s = BackgroundSession {
            session_id: id.into(),
            tenant_id: t.as_str().into(),
            expires_at: minutes_from_now(minutes),
        };
        sessions.insert(&t, &s).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ids_in(&storage, "sessions_background", &t).await != ["new"] {
        assert!(std::time::Instant::now() < deadline, "not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn where_the_server_has_ttl_indexes_they_expire_documents_not_the_sweeper() {
    let mut config = common::config();
    config.ttl.sweeper = false;
    let storage = Storage::builder(config)
        .capabilities(|c| c.ttl_indexes = true)
        .connect()
        .await
        .unwrap();
    let sessions = IndexedSessionRepository::new(&storage);
    let t = common::tenant("ttl-index");
    let old = IndexedSession {
        session_id: "old".into(),
        tenant_id: t.as_str().into(),
        expires_at: minutes_from_now(-90),
    };
    sessions.insert(&t, &old).await.unwrap();
    let report = storage.run_ttl_sweep().await.unwrap();
    assert!(report.server_has_ttl_indexes);
    assert_eq!(report.deleted, 0);
    assert_eq!(sessions.get(&t, &"old".into()).await.unwrap(), old);
    let health = storage.health().await;
    assert_eq!(
        health.component("ttl").unwrap().details["mode"],
        "ttl_index"
    );
}
