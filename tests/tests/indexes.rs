//! Index sync against FerretDB: create, idempotence, changed and extraneous indexes, and TTL
//! indexes on a server without them.

use caas_storage_tests as common;

use caas_storage::bson::doc;
use caas_storage::index::{IndexChange, SyncOptions};
use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_platform", collection = "test_index_sync")]
#[index(keys(email), unique)]
#[index(keys(status, created_at desc))]
#[index(keys(expires_at), ttl = "1h")]
struct Session {
    #[repository(id)]
    pub session_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    pub status: String,
    pub created_at: i64,
    pub expires_at: DateTime,
}

#[tokio::test]
async fn sync_creates_then_is_idempotent_and_reports_what_it_will_not_do() {
    let storage = common::storage().await;
    let coll = storage
        .raw()
        .database("caas_platform")
        .collection::<caas_storage::bson::Document>("test_index_sync");
    let _ = coll.drop().await;

    let dry = storage
        .sync_indexes_with(
            Session::META,
            SyncOptions {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(dry.created().is_empty(), "a dry run changes nothing");
    assert!(!dry.is_in_sync());

    let plan = storage.sync_indexes::<Session>().await.unwrap();
    let mut created = plan.created();
    created.sort();
    assert_eq!(
        created,
        [
            "tenant_id_1_email_1",
            "tenant_id_1_session_id_1",
            "tenant_id_1_status_1_created_at_-1"
        ]
    );
    let ttl = plan
        .changes
        .iter()
        .find_map(|c| match c {
            IndexChange::Unsupported { name, reason } => Some((name.clone(), reason.clone())),
            _ => None,
        })
        .expect("the TTL index is reported, not dropped silently");
    assert_eq!(
        ttl.0, "expires_at_1",
        "TTL indexes are single-field, without the tenant"
    );
    assert!(ttl.1.contains("FerretDB"), "{}", ttl.1);

    let on_server: Vec<String> = coll.list_index_names().await.unwrap();
    for name in &created {
        assert!(
            on_server.contains(&(*name).to_owned()),
            "{name} not on the server"
        );
    }
    let again = storage.sync_indexes::<Session>().await.unwrap();
    assert!(again.is_in_sync(), "second sync: {again:#?}");
    assert!(again.created().is_empty());

    // An index nobody declared is reported, and dropped only when asked.
    coll.create_index(caas_storage_index_model(doc! { "status": 1 }, "stray"))
        .await
        .unwrap();
    let plan = storage.sync_indexes::<Session>().await.unwrap();
    assert!(plan.changes.contains(&IndexChange::Extraneous {
        name: "stray".into(),
        dropped: false
    }));
    assert!(coll
        .list_index_names()
        .await
        .unwrap()
        .contains(&"stray".to_owned()));
    let plan = storage
        .sync_indexes_with(
            Session::META,
            SyncOptions {
                drop_extraneous: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(plan.changes.contains(&IndexChange::Extraneous {
        name: "stray".into(),
        dropped: true
    }));
    assert!(!coll
        .list_index_names()
        .await
        .unwrap()
        .contains(&"stray".to_owned()));

    // An index with the declared name but other options is reported as changed, left alone
    // unless re-creation is asked for.
    coll.drop_index("tenant_id_1_email_1").await.unwrap();
    coll.create_index(caas_storage_index_model(
        doc! { "tenant_id": 1, "email": 1 },
        "tenant_id_1_email_1",
    ))
    .await
    .unwrap();
    let plan = storage.sync_indexes::<Session>().await.unwrap();
    let changed = plan
        .changes
        .iter()
        .find(|c| matches!(c, IndexChange::Changed { .. }))
        .unwrap();
    assert!(
        matches!(changed, IndexChange::Changed { name, applied: false, .. } if name == "tenant_id_1_email_1")
    );
    let plan = storage
        .sync_indexes_with(
            Session::META,
            SyncOptions {
                recreate_changed: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(plan
        .changes
        .iter()
        .any(|c| matches!(c, IndexChange::Changed { applied: true, .. })));
    assert!(storage
        .sync_indexes::<Session>()
        .await
        .unwrap()
        .is_in_sync());
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["namespace"], "caas_platform.test_index_sync");
}

fn caas_storage_index_model(keys: caas_storage::bson::Document, name: &str) -> mongodb::IndexModel {
    mongodb::IndexModel::builder()
        .keys(keys)
        .options(
            mongodb::options::IndexOptions::builder()
                .name(name.to_owned())
                .build(),
        )
        .build()
}
