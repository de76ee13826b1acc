//! Attempts to read or write across tenants through the repository. Every one must fail or
//! see nothing; only the loudly named admin API sees every tenant.

use caas_storage_tests as common;

use caas_storage::bson::doc;
use caas_storage::prelude::*;
use caas_storage::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_platform", collection = "test_accounts")]
#[index(keys(handle), unique)]
struct Account {
    #[repository(id)]
    pub account_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub handle: String,
    pub balance: i64,
}

fn account(t: &TenantId, id: &str, balance: i64) -> Account {
    Account {
        account_id: id.into(),
        tenant_id: t.to_string(),
        handle: format!("@{id}"),
        balance,
    }
}

async fn setup_on(storage: &Storage) -> (AccountRepository, TenantId, TenantId) {
    storage.sync_indexes::<Account>().await.unwrap();
    let repo = AccountRepository::new(storage);
    let a = common::tenant("tenant-a");
    let b = common::tenant("tenant-b");
    repo.insert(&a, &account(&a, "shared-id", 100))
        .await
        .unwrap();
    repo.insert(&b, &account(&b, "shared-id", 200))
        .await
        .unwrap();
    (repo, a, b)
}

async fn setup() -> (AccountRepository, TenantId, TenantId) {
    setup_on(&common::storage().await).await
}

#[tokio::test]
async fn the_same_id_in_two_tenants_is_two_documents() {
    let (repo, a, b) = setup().await;
    let id = "shared-id".to_owned();
    assert_eq!(repo.get(&a, &id).await.unwrap().balance, 100);
    assert_eq!(repo.get(&b, &id).await.unwrap().balance, 200);
    assert_eq!(
        repo.find_by_handle(&a, "@shared-id")
            .await
            .unwrap()
            .unwrap()
            .balance,
        100
    );
}

#[tokio::test]
async fn writes_scoped_to_one_tenant_never_touch_another() {
    common::each_capability_set(async |storage, _| {
        let (repo, a, b) = setup_on(&storage).await;
        let id = "shared-id".to_owned();
        repo.update(
            &a,
            &id,
            AccountPatch {
                balance: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(repo.delete(&a, &id).await.unwrap());
        assert_eq!(repo.get(&b, &id).await.unwrap().balance, 200, "b untouched");
        // Ids that exist only in b are invisible from a.
        repo.insert(&b, &account(&b, "only-b", 1)).await.unwrap();
        let only_b = "only-b".to_owned();
        assert!(repo.find_by_id(&a, &only_b).await.unwrap().is_none());
        assert!(!repo.exists(&a, &only_b).await.unwrap());
        assert!(repo
            .update(
                &a,
                &only_b,
                AccountPatch {
                    balance: Some(-1),
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .is_none());
        assert!(!repo.delete(&a, &only_b).await.unwrap());
        let mut foreign = account(&a, "only-b", 5);
        assert!(matches!(
            repo.replace(&a, &mut foreign).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(repo.get(&b, &only_b).await.unwrap().balance, 1);
        // Deleting "everything" in a deletes only a's.
        repo.query(&a).delete().await.unwrap();
        assert_eq!(repo.count(&b, Filter::all()).await.unwrap(), 2);
    })
    .await;
}

#[tokio::test]
async fn entities_of_another_tenant_are_refused_on_write() {
    common::each_capability_set(async |storage, _| {
        let (repo, a, b) = setup_on(&storage).await;
        let theirs = account(&b, "smuggled", 1);
        match repo.insert(&a, &theirs).await {
            Err(Error::TenantMismatch {
                expected, found, ..
            }) => {
                assert_eq!(expected, a.as_str());
                assert_eq!(found, b.as_str());
            }
            other => panic!("{other:?}"),
        }
        // A batch with one foreign entity writes nothing at all.
        let batch = vec![
            account(&a, "ok-1", 1),
            theirs.clone(),
            account(&a, "ok-2", 2),
        ];
        assert!(matches!(
            repo.insert_many(&a, &batch).await,
            Err(Error::TenantMismatch { .. })
        ));
        assert!(!repo.exists(&a, &"ok-1".to_owned()).await.unwrap());
        assert!(matches!(
            repo.upsert(&a, &theirs).await,
            Err(Error::TenantMismatch { .. })
        ));
        let mut theirs = theirs;
        assert!(matches!(
            repo.replace(&a, &mut theirs).await,
            Err(Error::TenantMismatch { .. })
        ));
        assert!(!repo.exists(&b, &"smuggled".to_owned()).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn crafted_filters_cannot_choose_the_tenant() {
    let (repo, a, b) = setup().await;
    for raw in [
        doc! { "tenant_id": b.as_str() },
        doc! { "tenant_id": { "$ne": "nobody" } },
        doc! { "$or": [ { "balance": 100 }, { "tenant_id": b.as_str() } ] },
        doc! { "$and": [ { "tenant_id.x": 1 } ] },
    ] {
        match repo
            .query(&a)
            .filter(Filter::raw(raw.clone()))
            .fetch()
            .await
        {
            Err(Error::TenantFilter {
                field: "tenant_id", ..
            }) => {}
            other => panic!("{raw}: {other:?}"),
        }
    }
    // A raw filter that does not name the tenant is still scoped to it.
    let all = repo
        .query(&a)
        .filter(Filter::raw(
            doc! { "$or": [ { "balance": 100 }, { "balance": 200 } ] },
        ))
        .fetch()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].tenant_id, a.as_str());
}

#[tokio::test]
async fn only_the_admin_api_sees_across_tenants() {
    let (repo, a, b) = setup().await;
    let admin = repo.unscoped_admin_across_all_tenants();
    let both = admin
        .find(Account::fields().handle().eq("@shared-id"))
        .await
        .unwrap();
    let mut tenants: Vec<&str> = both
        .iter()
        .map(|x| x.tenant_id.as_str())
        .filter(|t| *t == a.as_str() || *t == b.as_str())
        .collect();
    tenants.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(tenants, want);
    let listed = admin.tenants().await.unwrap();
    assert!(listed.contains(&a.to_string()) && listed.contains(&b.to_string()));
    assert!(admin.count_all().await.unwrap() >= 2);
}
