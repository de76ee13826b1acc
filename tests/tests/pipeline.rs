//! The write pipeline: every write, whatever the call and whatever branch the server's
//! capabilities select, records exactly its events, moves the version, stamps the declared
//! timestamps and refuses what it cannot honour. Each test runs once per capability set
//! (`common::each_capability_set`).

use caas_storage_tests as common;

use std::time::Duration;

use caas_storage::bson::{doc, Document};
use caas_storage::prelude::*;
use caas_storage::repo::Upserted;

const DB: &str = "caas_pipeline_it";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_pipeline_it", collection = "orders", consistency = strong,
             outbox(topic = "test.pipeline.orders", insert = "order.placed",
                    update = "order.changed", delete = "order.cancelled"))]
struct Order {
    #[repository(id)]
    order_id: String,
    #[repository(tenant)]
    tenant_id: String,
    status: String,
    #[repository(version)]
    version: u64,
}

fn order(t: &TenantId, id: &str) -> Order {
    Order {
        order_id: id.into(),
        tenant_id: t.to_string(),
        status: "new".into(),
        version: 0,
    }
}

/// (aggregate id, event type, revision) of every event recorded for `t` that its write
/// committed (no relay runs here), sorted: read with `test_events`, on either backend.
async fn events(storage: &Storage, t: &TenantId) -> Vec<(String, String, i64)> {
    let mut out: Vec<(String, String, i64)> = storage
        .test_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.envelope.tenant == t.as_str())
        .map(|r| {
            (
                r.envelope.aggregate_id,
                r.envelope.event_type,
                i64::try_from(r.envelope.revision).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expect(rows: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|(a, e, r)| ((*a).to_owned(), (*e).to_owned(), *r))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn every_write_records_exactly_its_events() {
    common::each_capability_set(async |storage, label| {
        storage.sync_indexes::<Order>().await.unwrap();
        let repo = OrderRepository::new(&storage);
        let t = common::tenant("pipeline-events");
        let id = |s: &str| s.to_owned();
        let status = |s: &str| OrderPatch {
            status: Some(s.into()),
        };

        repo.insert(&t, &order(&t, "a")).await.unwrap();
        let a = repo
            .update(&t, &id("a"), status("paid"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.version, 1, "{label}");
        let a = repo
            .update_checked(&t, &id("a"), 1, status("packed"))
            .await
            .unwrap();
        assert_eq!(a.version, 2, "{label}");
        let mut a = repo.get(&t, &id("a")).await.unwrap();
        a.status = "shipped".into();
        repo.replace(&t, &mut a).await.unwrap();
        assert_eq!(a.version, 3, "{label}");

        assert_eq!(
            repo.upsert(&t, &order(&t, "b")).await.unwrap(),
            Upserted::Inserted
        );
        assert_eq!(
            repo.upsert(
                &t,
                &Order {
                    status: "again".into(),
                    ..order(&t, "b")
                }
            )
            .await
            .unwrap(),
            Upserted::Replaced
        );
        assert!(repo.delete(&t, &id("b")).await.unwrap());

        let report = repo
            .insert_many(&t, &[order(&t, "c"), order(&t, "d"), order(&t, "a")])
            .await
            .unwrap();
        assert_eq!(report.inserted, 2, "{label}");
        assert_eq!(report.failed.len(), 1, "{label}: the duplicate of a");
        assert!(repo.purge(&t, &id("c")).await.unwrap());
        let n = repo
            .query(&t)
            .filter(Order::fields().order_id().eq("d".to_owned()))
            .delete()
            .await
            .unwrap();
        assert_eq!(n, 1, "{label}");

        // Writes that change nothing record nothing.
        assert!(repo
            .update(&t, &id("zz"), status("x"))
            .await
            .unwrap()
            .is_none());
        assert!(!repo.delete(&t, &id("zz")).await.unwrap());
        assert!(matches!(
            repo.update_checked(&t, &id("a"), 1, status("stale")).await,
            Err(Error::VersionConflict { .. })
        ));

        assert_eq!(
            events(&storage, &t).await,
            expect(&[
                ("a", "order.placed", 0),
                ("a", "order.changed", 1),
                ("a", "order.changed", 2),
                ("a", "order.changed", 3),
                ("b", "order.placed", 0),
                ("b", "order.changed", 1),
                ("b", "order.cancelled", 2),
                ("c", "order.placed", 0),
                ("c", "order.cancelled", 1),
                ("d", "order.placed", 0),
                ("d", "order.cancelled", 1),
            ]),
            "{label}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_outbox_entity_is_never_queued() {
    let storage = common::storage().await;
    let repo = OrderRepository::new(&storage);
    let t = common::tenant("pipeline-no-queue");
    let queued = repo.with_consistency(Consistency::Eventual);
    match queued.insert(&t, &order(&t, "q")).await {
        Err(Error::Unsupported { feature, .. }) => {
            assert!(feature.contains("outbox"), "{feature}")
        }
        other => panic!("{other:?}"),
    }
    assert!(repo
        .find_by_id(&t, &"q".to_owned())
        .await
        .unwrap()
        .is_none());
    assert!(events(&storage, &t).await.is_empty());
    // Updates through such a handle are direct (they return what they did): recorded.
    repo.insert(&t, &order(&t, "q")).await.unwrap();
    queued
        .update(
            &t,
            &"q".to_owned(),
            OrderPatch {
                status: Some("x".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        events(&storage, &t).await,
        expect(&[("q", "order.placed", 0), ("q", "order.changed", 1)])
    );
}

/// An `eventual` entity with a version and timestamps: queued writes apply as direct ones do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_pipeline_it", collection = "ledger", consistency = eventual, soft_delete)]
struct Entry {
    #[repository(id)]
    entry_id: String,
    #[repository(tenant)]
    tenant_id: String,
    amount: i64,
    #[repository(version)]
    version: u64,
    #[repository(created_at)]
    created_at: DateTime,
    #[repository(updated_at)]
    updated_at: Option<DateTime>,
}

fn entry(t: &TenantId, id: &str, amount: i64) -> Entry {
    Entry {
        entry_id: id.into(),
        tenant_id: t.to_string(),
        amount,
        version: 0,
        created_at: DateTime::from_millis(0),
        updated_at: None,
    }
}

async fn stored(storage: &Storage, t: &TenantId, id: &str) -> Option<Document> {
    storage
        .raw()
        .documents(
            DB,
            "ledger",
            doc! { "tenant_id": t.as_str(), "entry_id": id },
        )
        .await
        .unwrap()
        .into_iter()
        .next()
}

#[tokio::test]
async fn queued_writes_move_versions_and_timestamps_as_direct_writes_do() {
    common::each_capability_set(async |storage, label| {
        let repo = EntryRepository::new(&storage);
        let t = common::tenant("pipeline-queue");
        let id = "e1".to_owned();
        let flush = async || {
            storage
                .write_behind()
                .flush::<Entry>(Duration::from_secs(20))
                .await
                .unwrap()
        };
        let before = DateTime::now();
        repo.insert(&t, &entry(&t, &id, 5)).await.unwrap();
        flush().await;
        let d = stored(&storage, &t, &id).await.expect("applied");
        assert_eq!(d.get_i64("version").unwrap_or(0), 0, "{label}");
        let created = *d.get_datetime("created_at").unwrap();
        assert!(created >= before, "{label}: created_at is the write's time");
        assert_eq!(d.get_datetime("updated_at").unwrap(), &created, "{label}");

        repo.queue_update(&t, &id, EntryPatch { amount: Some(7) })
            .await
            .unwrap();
        flush().await;
        let d = stored(&storage, &t, &id).await.unwrap();
        assert_eq!(d.get_i64("amount").unwrap(), 7, "{label}");
        assert_eq!(
            d.get_i64("version").unwrap(),
            1,
            "{label}: a queued update bumps"
        );
        assert!(d.get_datetime("updated_at").unwrap() >= &created, "{label}");

        repo.queue_upsert(&t, &entry(&t, &id, 9)).await.unwrap();
        flush().await;
        let d = stored(&storage, &t, &id).await.unwrap();
        assert_eq!(d.get_i64("amount").unwrap(), 9, "{label}");
        assert_eq!(
            d.get_i64("version").unwrap(),
            2,
            "{label}: an upsert moves on from the stored version, not the caller's"
        );
        assert_eq!(
            d.get_datetime("created_at").unwrap(),
            &created,
            "{label}: an upsert keeps created_at"
        );

        repo.queue_delete(&t, &id).await.unwrap();
        flush().await;
        let d = stored(&storage, &t, &id).await.unwrap();
        assert!(
            d.get_datetime("_deleted_at").is_ok(),
            "{label}: soft-deleted"
        );
        assert_eq!(
            d.get_i64("version").unwrap(),
            3,
            "{label}: a queued delete bumps"
        );
        assert!(repo.find_by_id(&t, &id).await.unwrap().is_none(), "{label}");
    })
    .await;
}

#[tokio::test]
async fn direct_writes_stamp_timestamps_and_replace_updates_the_callers_copy() {
    common::each_capability_set(async |storage, label| {
        let repo = EntryRepository::new(&storage).with_consistency(Consistency::Strong);
        let t = common::tenant("pipeline-stamps");
        let id = "s1".to_owned();
        repo.insert(&t, &entry(&t, &id, 1)).await.unwrap();
        let mut e = repo.get(&t, &id).await.unwrap();
        assert_ne!(e.created_at, DateTime::from_millis(0), "{label}");
        assert_eq!(e.updated_at, Some(e.created_at), "{label}");

        tokio::time::sleep(Duration::from_millis(5)).await;
        let patched = repo
            .update(&t, &id, EntryPatch { amount: Some(2) })
            .await
            .unwrap()
            .unwrap();
        assert!(patched.updated_at > Some(e.created_at), "{label}");
        assert_eq!(patched.created_at, e.created_at, "{label}");
        assert_eq!(patched.version, 1, "{label}");

        e = repo.get(&t, &id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        e.amount = 3;
        repo.replace(&t, &mut e).await.unwrap();
        assert_eq!(e.version, 2, "{label}");
        let again = repo.get(&t, &id).await.unwrap();
        assert_eq!(again, e, "{label}: the caller's copy is what is stored");
        assert!(again.updated_at > patched.updated_at, "{label}");
    })
    .await;
}

/// A user with a secret field, cached, for the tests of what writes may touch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_pipeline_it", collection = "accounts", consistency = strong,
             cache(ttl = "5m"))]
struct Account {
    #[repository(id)]
    account_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
    #[repository(secret)]
    #[serde(default)]
    password_hash: String,
    #[repository(version)]
    version: u64,
}

fn account(t: &TenantId, id: &str) -> Account {
    Account {
        account_id: id.into(),
        tenant_id: t.to_string(),
        email: format!("{id}@example.com"),
        password_hash: "argon2id$hash".into(),
        version: 0,
    }
}

/// `get -> modify -> replace` (and `upsert` of a value built without the secret) keep the
/// secret fields the caller never loaded.
#[tokio::test]
async fn replace_and_upsert_after_an_ordinary_read_keep_secret_fields() {
    common::each_capability_set(async |storage, label| {
        let repo = AccountRepository::new(&storage);
        let t = common::tenant("pipeline-secrets");
        let id = "a1".to_owned();
        repo.insert(&t, &account(&t, "a1")).await.unwrap();
        let mut a = repo.get(&t, &id).await.unwrap();
        assert_eq!(a.password_hash, "", "{label}: reads leave secrets out");
        a.email = "new@example.com".into();
        repo.replace(&t, &mut a).await.unwrap();
        let stored = repo
            .find_by_id_with_secrets(&t, &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.email, "new@example.com", "{label}");
        assert_eq!(
            stored.password_hash, "argon2id$hash",
            "{label}: replace kept it"
        );

        let without = Account {
            password_hash: String::new(),
            email: "upserted@example.com".into(),
            ..account(&t, "a1")
        };
        repo.upsert(&t, &without).await.unwrap();
        let stored = repo
            .find_by_id_with_secrets(&t, &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.email, "upserted@example.com", "{label}");
        assert_eq!(
            stored.password_hash, "argon2id$hash",
            "{label}: upsert kept it"
        );

        // Setting one explicitly still works.
        let with = Account {
            password_hash: "argon2id$new".into(),
            ..stored.clone()
        };
        repo.upsert(&t, &with).await.unwrap();
        let stored = repo
            .find_by_id_with_secrets(&t, &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.password_hash, "argon2id$new", "{label}");
    })
    .await;
}

/// The queue holds whole documents in Redis: an entity with secret fields is never queued,
/// even through an `eventual` handle, and nothing is written.
#[tokio::test]
async fn an_entity_with_secret_fields_is_never_queued() {
    let storage = common::storage().await;
    let repo = AccountRepository::new(&storage);
    let t = common::tenant("pipeline-secret-no-queue");
    let queued = repo.with_consistency(Consistency::Eventual);
    match queued.insert(&t, &account(&t, "s1")).await {
        Err(Error::Unsupported { feature, .. }) => {
            assert!(feature.contains("secret"), "{feature}")
        }
        other => panic!("{other:?}"),
    }
    storage
        .write_behind()
        .flush_all(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(repo
        .find_by_id_with_secrets(&t, &"s1".to_owned())
        .await
        .unwrap()
        .is_none());
}

/// A patch is written by generated code, but `Patch` and `PatchWriter::set` are public: a
/// hand-written one must not move a document to another tenant, change its id or version, or
/// write the framework's fields.
#[tokio::test]
async fn patches_cannot_touch_the_tenant_the_id_the_version_or_framework_fields() {
    struct Evil(&'static str, caas_storage::bson::Bson);
    impl caas_storage::Patch for Evil {
        type Entity = Account;
        fn write(&self, w: &mut caas_storage::repo::PatchWriter) -> caas_storage::Result<()> {
            w.set(self.0, &Some(self.1.clone()))
        }
    }
    let storage = common::storage().await;
    let repo = AccountRepository::new(&storage);
    let t = common::tenant("pipeline-evil");
    let other = common::tenant("pipeline-evil-other");
    let id = "e1".to_owned();
    repo.insert(&t, &account(&t, "e1")).await.unwrap();
    for (field, value) in [
        ("tenant_id", other.as_str().into()),
        ("account_id", "e2".into()),
        ("version", 99_i64.into()),
        ("_deleted_at", caas_storage::bson::DateTime::now().into()),
        ("_schema_version", 7_i64.into()),
        ("email.$", "x".into()),
    ] {
        match repo.update(&t, &id, Evil(field, value)).await {
            Err(Error::Codec { message, .. }) => {
                assert!(message.contains(field), "{field}: {message}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    let a = repo.get(&t, &id).await.unwrap();
    assert_eq!((a.tenant_id.as_str(), a.version), (t.as_str(), 0));
    assert!(repo.find_by_id(&other, &id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_checked_update_at_an_impossible_version_is_a_conflict_not_a_panic() {
    common::each_capability_set(async |storage, label| {
        let repo = OrderRepository::new(&storage);
        let t = common::tenant("pipeline-max");
        repo.insert(&t, &order(&t, "m")).await.unwrap();
        let r = repo
            .update_checked(&t, &"m".to_owned(), u64::MAX, OrderPatch { status: None })
            .await;
        assert!(
            matches!(r, Err(Error::VersionConflict { .. })),
            "{label}: {r:?}"
        );
    })
    .await;
}

/// A claim left by a writer that died is taken over by exactly one of the writers racing for
/// the same version transition (FerretDB's conditional deletes are not atomic, so a takeover
/// that deletes the old claim could admit two), and each winner records exactly one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_claim_is_taken_over_by_exactly_one_writer() {
    let storage = common::storage().await;
    if storage.capabilities().atomic_conditional_updates {
        return; // no claims where conditional updates are atomic: the version filter decides
    }
    let repo = OrderRepository::new(&storage);
    let t = common::tenant("pipeline-takeover");
    let id = "o".to_owned();
    repo.insert(&t, &order(&t, &id)).await.unwrap();
    let claims = storage
        .raw()
        .database(DB)
        .collection::<Document>("orders__version_claims");
    let long_ago = DateTime::from_millis(DateTime::now().timestamp_millis() - 60_000);
    for round in 0..20_u64 {
        // The claim of a writer that died 60 s ago, on this round's transition.
        let base = format!("{t}\u{1f}{id}\u{1f}{}", round + 1);
        claims
            .insert_many([
                doc! { "_id": format!("{base}\u{1f}0"), "base": &base, "owner": "dead", "at": long_ago },
                // The same claim as the first release kept it (no generation).
                doc! { "_id": &base, "at": long_ago },
            ])
            .await
            .unwrap();
        let racers: Vec<_> = (0..8)
            .map(|w| {
                let (repo, t, id) = (repo.clone(), t.clone(), id.clone());
                tokio::spawn(async move {
                    repo.update_checked(
                        &t,
                        &id,
                        round,
                        OrderPatch {
                            status: Some(format!("r{round}w{w}")),
                        },
                    )
                    .await
                })
            })
            .collect();
        let mut winners = 0;
        for r in racers {
            match r.await.unwrap() {
                Ok(o) => {
                    assert_eq!(o.version, round + 1);
                    winners += 1;
                }
                Err(Error::VersionConflict { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(
            winners, 1,
            "round {round}: {winners} writers won one transition"
        );
    }
    let updates = events(&storage, &t)
        .await
        .into_iter()
        .filter(|(_, ty, _)| ty == "order.changed")
        .count();
    assert_eq!(updates, 20, "one event per winner");
}
