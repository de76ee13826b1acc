// An error that leaves the struct modelled (an unknown key) still generates the full API, so code
// using it adds no errors.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", soft_deleet)]
#[index(keys(email), unique)]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
}

#[allow(dead_code)]
async fn usage(storage: &Storage, t: &TenantId) -> caas_storage::Result<()> {
    let users = UserRepository::new(storage);
    let _ = users.find_by_email(t, "a@example.com").await?;
    let _ = users
        .query(t)
        .filter(User::fields().email().eq("a@example.com"))
        .fetch()
        .await?;
    let _ = users
        .update(t, &"u1".to_owned(), UserPatch { email: None })
        .await?;
    Ok(())
}

fn main() {}
