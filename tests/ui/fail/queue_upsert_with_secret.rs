// Writes of an entity with a secret field cannot be queued: the write-behind queue keeps whole
// documents in Redis, and secret fields must not leave the database. `queue_upsert` needs
// `Queueable`, which the derive does not implement for such an entity.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    #[repository(secret)]
    pub password_hash: Option<String>,
}

async fn save(users: &UserRepository, t: &TenantId, user: &User) -> caas_storage::Result<()> {
    users.queue_upsert(t, user).await
}

fn main() {
    let _ = save;
}
