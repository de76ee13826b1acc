//! Sessions and rate limits in Redis (the reference design's DB 4 and DB 5), on one Redis and
//! on the 3-primary cluster: sessions expire when idle, slide when touched, end at their
//! lifetime, and are revoked one by one or all for a user, with no token in any key; the rate
//! limiter admits exactly its rate under 50 concurrent callers and says when to retry. Each
//! test runs on the memory backend too (`Storage::in_memory`), which must behave the same.

use caas_storage_tests as common;

use std::time::{Duration, Instant};

use caas_storage::prelude::*;
use caas_storage::rate_limit::{Decision, RateLimit};
use caas_storage::sessions::SessionOptions;

async fn single() -> Storage {
    common::storage().await
}

async fn cluster() -> Storage {
    let mut config = common::config();
    let nodes = std::env::var("CAAS_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002".into());
    config.redis.cluster_nodes = nodes.split(',').map(str::to_owned).collect();
    config.redis.key_prefix = format!("sess{}:", std::process::id());
    Storage::connect(config).await.unwrap()
}

async fn each_redis(body: impl AsyncFn(Storage, &'static str)) {
    body(single().await, "single").await;
    body(cluster().await, "cluster").await;
    // The memory backend's Redis tier: the same scripts' behaviour, in this process.
    let memory = Storage::in_memory_with(common::config()).await.unwrap();
    body(memory, "memory").await;
}

/// Every key in the store's Redis database (on the cluster: on every primary).
async fn all_keys(storage: &Storage) -> Vec<String> {
    let db = storage.config().redis.databases.sessions;
    let mut conn = storage.raw().redis(db).unwrap();
    conn.scan_match("*", None).await.unwrap()
}

#[tokio::test]
async fn a_session_slides_while_touched_and_ends_when_idle_or_at_its_lifetime() {
    each_redis(async |storage, label| {
        let sessions = storage
            .sessions(SessionOptions {
                idle_ttl: Duration::from_millis(800),
                max_lifetime: Duration::from_millis(2500),
                namespace: "test".into(),
            })
            .unwrap();
        let t = common::tenant("sessions");
        let (token, created) = sessions
            .create(&t, "u-1", serde_json::json!({ "role": "admin" }))
            .await
            .unwrap();
        assert_eq!(token.secret().len(), 64, "{label}");
        assert_eq!(
            created.ends_at_ms - created.created_at_ms,
            2500,
            "{label}: the lifetime"
        );

        // Touched every 400ms: alive past its idle timeout, with its data.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1600) {
            let s = sessions
                .touch::<serde_json::Value>(&t, token.secret())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{label}: ended while touched"));
            assert_eq!(s.user_id, "u-1");
            assert_eq!(s.data["role"], "admin");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        // Touched or not, it ends at its lifetime.
        tokio::time::sleep(Duration::from_millis(2600).saturating_sub(started.elapsed())).await;
        let mut ended_at = None;
        for _ in 0..10 {
            if sessions
                .touch::<serde_json::Value>(&t, token.secret())
                .await
                .unwrap()
                .is_none()
            {
                ended_at = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ended_at = ended_at.unwrap_or_else(|| panic!("{label}: outlived its lifetime"));
        assert!(
            ended_at < Duration::from_millis(3100),
            "{label}: {ended_at:?}"
        );

        // Left alone, a session ends after its idle timeout.
        let (idle, _) = sessions.create(&t, "u-2", 7u32).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            sessions
                .touch::<u32>(&t, idle.secret())
                .await
                .unwrap()
                .map(|s| s.data),
            Some(7)
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            sessions
                .touch::<u32>(&t, idle.secret())
                .await
                .unwrap()
                .is_none(),
            "{label}: alive after its idle timeout"
        );
    })
    .await;
}

#[tokio::test]
async fn sessions_are_revoked_one_by_one_or_all_for_a_user_and_stay_in_their_tenant() {
    each_redis(async |storage, label| {
        let sessions = storage.sessions(SessionOptions::default()).unwrap();
        let (a, b) = (common::tenant("sess-a"), common::tenant("sess-b"));
        let mut tokens = Vec::new();
        for _ in 0..3 {
            tokens.push(sessions.create(&a, "alice", ()).await.unwrap().0);
        }
        let (bob, _) = sessions.create(&a, "bob", ()).await.unwrap();
        let (alice_b, _) = sessions.create(&b, "alice", ()).await.unwrap();

        // Another tenant's token opens nothing here.
        assert!(sessions
            .touch::<()>(&b, tokens[0].secret())
            .await
            .unwrap()
            .is_none());
        // No token appears in any key.
        let keys = all_keys(&storage).await;
        for t in tokens.iter().chain([&bob, &alice_b]) {
            assert!(
                !keys.iter().any(|k| k.contains(t.secret())),
                "{label}: a token in a key"
            );
        }

        assert!(sessions.revoke(&a, tokens[0].secret()).await.unwrap());
        assert!(!sessions.revoke(&a, tokens[0].secret()).await.unwrap());
        assert!(sessions
            .touch::<()>(&a, tokens[0].secret())
            .await
            .unwrap()
            .is_none());
        assert_eq!(sessions.count_for_user(&a, "alice").await.unwrap(), 2);

        assert_eq!(sessions.revoke_all_for_user(&a, "alice").await.unwrap(), 2);
        for t in &tokens {
            assert!(sessions
                .touch::<()>(&a, t.secret())
                .await
                .unwrap()
                .is_none());
        }
        // Bob, and alice in the other tenant, keep theirs.
        assert!(sessions
            .touch::<()>(&a, bob.secret())
            .await
            .unwrap()
            .is_some());
        assert!(sessions
            .touch::<()>(&b, alice_b.secret())
            .await
            .unwrap()
            .is_some());
        assert_eq!(sessions.count_for_user(&a, "alice").await.unwrap(), 0);
        assert_eq!(sessions.count_for_user(&b, "alice").await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn the_limiter_admits_exactly_its_rate_under_50_concurrent_callers() {
    each_redis(async |storage, label| {
        let limiter = storage
            .rate_limiter("login", RateLimit::per(10, Duration::from_secs(60)))
            .unwrap();
        let t = common::tenant("rl");
        let decisions = futures::future::join_all((0..50).map(|_| {
            let limiter = limiter.clone();
            let t = t.clone();
            tokio::spawn(async move { limiter.check(&t, "alice@example.com").await.unwrap() })
        }))
        .await;
        let decisions: Vec<Decision> = decisions.into_iter().map(Result::unwrap).collect();
        let allowed = decisions.iter().filter(|d| d.is_allowed()).count();
        assert_eq!(allowed, 10, "{label}: {decisions:?}");
        for d in &decisions {
            if let Decision::Limited { retry_after } = d {
                // The next slot opens one interval (6s) after the burst, never later.
                assert!(
                    *retry_after > Duration::from_secs(5) && *retry_after <= Duration::from_secs(6),
                    "{label}: {retry_after:?}"
                );
            }
        }
        // Per tenant and key: another key, or the same key in another tenant, is untouched.
        assert!(limiter
            .check(&t, "bob@example.com")
            .await
            .unwrap()
            .is_allowed());
        let other = common::tenant("rl-other");
        assert!(limiter
            .check(&other, "alice@example.com")
            .await
            .unwrap()
            .is_allowed());
        // The caller's key never appears in Redis.
        let db = storage.config().redis.databases.rate_limiting;
        let keys = storage
            .raw()
            .redis(db)
            .unwrap()
            .scan_match("*", None)
            .await
            .unwrap();
        let limiter_keys: Vec<_> = keys
            .iter()
            .filter(|k| k.contains("caas:rl:login:"))
            .collect();
        assert!(limiter_keys.len() >= 3, "{label}: {keys:?}");
        assert!(
            !limiter_keys.iter().any(|k| k.contains("alice")),
            "{label}: {limiter_keys:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_refused_caller_is_admitted_after_its_retry_after_and_the_rate_holds_over_time() {
    each_redis(async |storage, label| {
        // 5 per second, bursts of 5: one every 200ms once the burst is spent.
        let limiter = storage
            .rate_limiter("api", RateLimit::per(5, Duration::from_secs(1)))
            .unwrap();
        let t = common::tenant("rl-time");
        let mut admitted = 0;
        let mut retry = None;
        for _ in 0..8 {
            match limiter.check(&t, "k").await.unwrap() {
                Decision::Allowed { .. } => admitted += 1,
                Decision::Limited { retry_after } => retry = Some(retry_after),
            }
        }
        assert_eq!(admitted, 5, "{label}");
        let retry = retry.unwrap();
        assert!(retry <= Duration::from_millis(200), "{label}: {retry:?}");
        tokio::time::sleep(retry + Duration::from_millis(5)).await;
        assert!(
            limiter.check(&t, "k").await.unwrap().is_allowed(),
            "{label}"
        );

        // 20 callers asking as fast as they can for 1.2s more: the burst is spent, so the
        // limiter admits one per 200ms, 6 in all (one either way for where the window falls).
        let started = Instant::now();
        let admitted = futures::future::join_all((0..20).map(|_| {
            let (limiter, t) = (limiter.clone(), t.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while started.elapsed() < Duration::from_millis(1200) {
                    if limiter.check(&t, "k").await.unwrap().is_allowed() {
                        n += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                n
            })
        }))
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum::<u32>();
        assert!(
            (5..=7).contains(&admitted),
            "{label}: {admitted} admitted in 1.2s"
        );
    })
    .await;
}
