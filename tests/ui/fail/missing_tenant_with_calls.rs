// A derive that fails for want of a tenant field reports only that: the generated repository,
// patch type, field paths and finders still exist, so code calling them (`find_by_id` and
// `update` from `Repository<User>` through `Deref`, the finder of a declared index, a typed
// filter, a queued write) adds no errors of its own.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
#[index(keys(email), unique)]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    pub email: String,
    pub name: String,
}

async fn usage(storage: &Storage, t: &TenantId) -> caas_storage::Result<()> {
    let users = UserRepository::new(storage);
    let id = "u1".to_owned();
    let _: Option<User> = users.find_by_id(t, &id).await?;
    let patch = UserPatch {
        name: Some("Ada".into()),
        ..UserPatch::default()
    };
    let _: Option<User> = users.update(t, &id, patch).await?;
    let _: Option<User> = users.find_by_email(t, "ada@example.com").await?;
    let _: Vec<User> = users
        .query(t)
        .filter(User::fields().name().eq("Ada"))
        .fetch()
        .await?;
    users.queue_delete(t, &id).await?;
    Ok(())
}

fn main() {
    let _ = usage;
}
