//! The retry policy (`connection/retry.rs`) carries repository calls through a MongoDB-wire
//! server restart: calls made while the server is down succeed once it is back, within the
//! policy's bound, and the same calls fail fast without the policy. Uses a private FerretDB so
//! the shared one keeps serving the other tests.

use caas_storage_tests as common;

use std::time::{Duration, Instant};

use caas_storage::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_test_retries", collection = "notes")]
struct Note {
    #[repository(id)]
    pub note_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub text: String,
}

fn note(t: &TenantId, id: &str, text: &str) -> Note {
    Note {
        note_id: id.into(),
        tenant_id: t.to_string(),
        text: text.into(),
    }
}

async fn connect(port: u16, max_attempts: u32) -> NoteRepository {
    let mut config = common::config();
    config.mongodb.uri = format!("mongodb://127.0.0.1:{port}/");
    // A short selection timeout: each attempt against a stopped server fails in 300ms, so the
    // outage below outlasts one attempt many times over.
    config.mongodb.server_selection_timeout = Duration::from_millis(300);
    config.retry.max_attempts = max_attempts;
    config.retry.initial_backoff = Duration::from_millis(100);
    config.retry.max_backoff = Duration::from_millis(500);
    config.retention.enabled = false;
    config.ttl.sweeper = false;
    let storage = Storage::connect(config).await.unwrap();
    NoteRepository::new(&storage)
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_made_while_the_server_restarts_succeed_once_it_is_back() {
    let mut ferret = tokio::task::spawn_blocking(common::private_ferretdb)
        .await
        .unwrap();
    let t = common::tenant("retry");

    // Without retries, a call during the outage fails at once with a transient error, and the
    // next call after the server is back succeeds (the failure left nothing behind).
    let once = connect(ferret.port, 1).await;
    once.insert(&t, &note(&t, "before", "written before the outage"))
        .await
        .unwrap();
    ferret = tokio::task::spawn_blocking(move || {
        ferret.stop();
        ferret
    })
    .await
    .unwrap();
    let started = Instant::now();
    let err = once
        .find_by_id(&t, &"before".to_owned())
        .await
        .expect_err("the server is down and nothing retries");
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "one attempt only"
    );
    let err = once
        .insert(&t, &note(&t, "lost", "refused"))
        .await
        .expect_err("the server is down and nothing retries");
    assert!(err.is_transient(), "{err}");
    ferret = tokio::task::spawn_blocking(move || {
        ferret.start();
        ferret
    })
    .await
    .unwrap();

    // With the policy: stop the server, bring it back 1.5s later, and call in between.
    let retried = connect(ferret.port, 12).await;
    assert!(retried
        .find_by_id(&t, &"before".to_owned())
        .await
        .unwrap()
        .is_some());
    ferret = tokio::task::spawn_blocking(move || {
        ferret.stop();
        ferret
    })
    .await
    .unwrap();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        ferret.start();
        ferret
    });
    let (before, during) = (
        "before".to_owned(),
        note(&t, "during", "written during the outage"),
    );
    let started = Instant::now();
    let (read, write, count) = tokio::join!(
        retried.find_by_id(&t, &before),
        retried.insert(&t, &during),
        retried.query(&t).count(),
    );
    let waited = started.elapsed();
    let ferret = restart.join().unwrap();
    assert_eq!(
        read.unwrap().map(|n| n.text),
        Some("written before the outage".to_owned())
    );
    write.unwrap();
    assert!(count.unwrap() >= 1);
    assert!(
        waited >= Duration::from_millis(1400),
        "the calls waited for the server ({waited:?})"
    );

    // An insert alone on a connection the restart closed under it (the pool still holds it):
    // the send fails without saying whether it landed, and the insert is sent again until the
    // server is back. (It failed with `UnexpectedEof` before inserts were sent again.)
    retried.find_by_id(&t, &before).await.unwrap();
    let ferret = tokio::task::spawn_blocking(move || {
        let mut ferret = ferret;
        ferret.stop();
        ferret
    })
    .await
    .unwrap();
    let restart = std::thread::spawn(move || {
        let mut ferret = ferret;
        std::thread::sleep(Duration::from_millis(1500));
        ferret.start();
        ferret
    });
    let stale = retried
        .insert(&t, &note(&t, "stale", "written on a stale connection"))
        .await;
    let _ferret = restart.join().unwrap();
    stale.unwrap();

    // Exactly the documents written while the server was up or by a call that succeeded: the
    // refused insert left nothing, the retried ones are there once.
    let mut ids: Vec<String> = retried
        .query(&t)
        .fetch()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.note_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["before", "during", "stale"]);
}
