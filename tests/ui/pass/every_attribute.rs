//! Every attribute the derive accepts, with the generated constants checked at run time and the
//! generated API type-checked (no server is needed: `usage` is never called).

use std::time::Duration;

use caas_storage::entity::CacheStrategy;
use caas_storage::index::{IndexKey, SortDirection};
use caas_storage::prelude::*;
use caas_storage::StepResult;

/// Schema step 1 -> 2: `name` became `handle`.
fn user_v1_to_v2(doc: &mut caas_storage::bson::Document) -> StepResult {
    if let Some(name) = doc.remove("name") {
        doc.insert("handle", name);
    }
    Ok(())
}

fn user_v2_to_v1(doc: &mut caas_storage::bson::Document) -> StepResult {
    let handle = doc.remove("handle").ok_or("no handle")?;
    doc.insert("name", handle);
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_auth",
    collection = "users",
    consistency = causal,
    cache(ttl = "30m", jitter = "1m", strategy = write_through, local(ttl = "5s", capacity = 10_000)),
    schema_version = 2,
    outbox(topic = "platform.events", insert = "user.created", update = "user.updated", delete = "user.deleted"),
    soft_delete
)]
#[index(keys(status, created_at desc), name = "by_status")]
#[index(keys(org, team, joined_at asc))]
#[index(keys(org, handle), unique)]
#[index(keys(expires_at), ttl = "30d")]
#[migrate(from = 1, up = user_v1_to_v2, down = user_v2_to_v1)]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(unique)]
    pub email: String,
    #[repository(index)]
    pub region: String,
    pub status: UserStatus,
    pub org: String,
    pub team: String,
    pub handle: String,
    pub joined_at: i64,
    #[repository(secret)]
    #[serde(default)]
    pub password_hash: String,
    #[repository(secret)]
    pub totp_seed: Option<String>,
    #[repository(version)]
    pub version: u32,
    #[repository(created_at)]
    #[serde(rename = "createdAt")]
    pub created_at: DateTime,
    #[repository(updated_at)]
    pub updated_at: Option<caas_storage::bson::DateTime>,
    pub expires_at: DateTime,
    #[serde(skip)]
    pub scratch: u32,
}

fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
async fn usage(storage: &Storage) -> caas_storage::Result<()> {
    let users = UserRepository::new(storage);
    let t = TenantId::new("tenant_1")?;

    let by_email = users.find_by_email(&t, "a@example.com");
    assert_send(&by_email);
    let _: Option<User> = by_email.await?;
    let _: Option<User> = users
        .find_by_org_and_handle(&t, "acme", String::from("@a"))
        .await?;

    let by_status = users.list_by_status(&t, UserStatus::Active, PageRequest::first(10));
    assert_send(&by_status);
    let page: Page<User> = by_status.await?;
    if let Some(next) = page.next_request(10) {
        let _: Page<User> = users.list_by_status(&t, UserStatus::Disabled, next).await?;
    }
    let _: Page<User> = users
        .list_by_org_and_team(&t, "acme", "core", PageRequest::first(5))
        .await?;
    let _: Page<User> = users
        .list_by_region(&t, "eu", PageRequest::first(5))
        .await?;

    // Generic CRUD through Deref.
    let id = String::from("u1");
    let _: Option<User> = users.find_by_id(&t, &id).await?;
    let patch = UserPatch {
        email: Some("b@example.com".into()),
        password_hash: Some("new-hash".into()),
        totp_seed: Some(None),
        ..Default::default()
    };
    let _: Option<User> = users.update(&t, &id, patch).await?;
    let _: User = users
        .update_checked(&t, &id, 3, UserPatch::default())
        .await?;
    let _: u64 = users
        .count(&t, User::fields().status().eq(UserStatus::Active))
        .await?;
    let _: Vec<User> = users
        .query(&t)
        .filter(User::fields().created_at().gte(DateTime::now()))
        .filter(User::fields().joined_at().lt(10))
        .sort(User::fields().email().asc())
        .fetch()
        .await?;
    let _: bool = users.delete(&t, &id).await?;
    let cloned = users.clone();
    let _ = format!("{cloned:?}");
    Ok(())
}

fn main() {
    let _ = usage;
    let meta = <User as Entity>::META;
    assert_eq!(meta.name, "User");
    assert_eq!(meta.database, "caas_auth");
    assert_eq!(meta.collection, "users");
    assert_eq!(meta.id_field, "user_id");
    assert_eq!(meta.tenant_field, "tenant_id");
    assert_eq!(meta.version_field, Some("version"));
    assert_eq!(
        meta.fields,
        &[
            "user_id",
            "tenant_id",
            "email",
            "region",
            "status",
            "org",
            "team",
            "handle",
            "joined_at",
            "password_hash",
            "totp_seed",
            "version",
            "createdAt",
            "updated_at",
            "expires_at",
        ]
    );
    assert_eq!(meta.created_at_field, Some("createdAt"));
    assert_eq!(meta.updated_at_field, Some("updated_at"));
    assert_eq!(meta.secret_fields, &["password_hash", "totp_seed"]);
    assert_eq!(meta.schema_version, 2);
    let [step] = meta.schema_steps else {
        panic!("one schema step")
    };
    assert_eq!((step.from, step.to(), step.name), (1, 2, "user_v1_to_v2"));
    assert_eq!(step.checksum.len(), 16);
    let mut doc = caas_storage::bson::doc! { "name": "ada" };
    (step.up)(&mut doc).unwrap();
    assert_eq!(doc.get_str("handle").unwrap(), "ada");
    (step.down.expect("down step"))(&mut doc).unwrap();
    assert_eq!(doc.get_str("name").unwrap(), "ada");
    assert_eq!(meta.consistency, Consistency::Causal);
    assert!(meta.soft_delete);

    let cache = meta.cache.expect("cache");
    assert_eq!(cache.ttl, Duration::from_secs(30 * 60));
    assert_eq!(cache.jitter, Duration::from_secs(60));
    assert_eq!(cache.strategy, CacheStrategy::WriteThrough);
    let local = cache.local.expect("local tier");
    assert_eq!(local.ttl, Duration::from_secs(5));
    assert_eq!(local.capacity, 10_000);

    let outbox = meta.outbox.expect("outbox");
    assert_eq!(outbox.topic, "platform.events");
    assert_eq!(outbox.insert, Some("user.created"));
    assert_eq!(outbox.update, Some("user.updated"));
    assert_eq!(outbox.delete, Some("user.deleted"));

    let names: Vec<&str> = meta.indexes.iter().map(|i| i.name).collect();
    assert_eq!(
        names,
        [
            "by_status",
            "tenant_id_1_org_1_team_1_joined_at_1",
            "tenant_id_1_org_1_handle_1",
            "expires_at_1",
            "tenant_id_1_email_1",
            "tenant_id_1_region_1",
        ]
    );
    let by_status = &meta.indexes[0];
    assert_eq!(
        by_status.keys,
        &[
            IndexKey::asc("tenant_id"),
            IndexKey::asc("status"),
            IndexKey::desc("createdAt"),
        ]
    );
    assert!(!by_status.unique);
    assert!(meta.indexes[2].unique && meta.indexes[4].unique);
    let ttl = &meta.indexes[3];
    assert_eq!(ttl.keys, &[IndexKey::asc("expires_at")]);
    assert_eq!(ttl.keys[0].direction, SortDirection::Asc);
    assert_eq!(ttl.ttl, Some(Duration::from_secs(30 * 24 * 3600)));
    assert!(meta
        .indexes
        .iter()
        .filter(|i| i.name != "expires_at_1")
        .all(|i| i.ttl.is_none()));

    let mut user = User {
        user_id: "u1".into(),
        tenant_id: "tenant_1".into(),
        email: "a@example.com".into(),
        region: "eu".into(),
        status: UserStatus::Active,
        org: "acme".into(),
        team: "core".into(),
        handle: "@a".into(),
        joined_at: 1,
        password_hash: String::new(),
        totp_seed: None,
        version: 7,
        created_at: DateTime::from_millis(1_000),
        updated_at: None,
        expires_at: DateTime::now(),
        scratch: 0,
    };
    assert_eq!(user.id(), "u1");
    assert_eq!(user.tenant(), "tenant_1");
    assert_eq!(user.version(), Some(7));
    user.set_version(8);
    assert_eq!(user.version, 8);
    assert!(user.local_cache_clone().is_some());
    user.set_updated_at(DateTime::from_millis(2_000));
    assert_eq!(user.updated_at, Some(DateTime::from_millis(2_000)));
    assert_eq!(user.created_at, DateTime::from_millis(1_000));

    // The patch has no `created_at` or `updated_at` field: the repository manages them. This
    // pattern names every field of the patch type, so it stops compiling if either comes back.
    let UserPatch {
        email: _,
        region: _,
        status: _,
        org: _,
        team: _,
        handle: _,
        joined_at: _,
        password_hash: _,
        totp_seed: _,
        expires_at: _,
    } = UserPatch::default();

    let f = User::fields();
    assert_eq!(f.created_at().name(), "createdAt");
    assert_eq!(f.updated_at().name(), "updated_at");
    assert_eq!(f.user_id().name(), "user_id");
    let doc = caas_storage::repo::patch_document(&UserPatch {
        email: Some("b@example.com".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(doc.get_str("email").unwrap(), "b@example.com");
    assert_eq!(doc.len(), 1);
}
