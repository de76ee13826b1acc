// Writes of an entity with an outbox cannot be queued: a queued write cannot record its event
// atomically. `queue_update` needs `Queueable`, which the derive implements only without
// `outbox(...)`.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = causal,
             outbox(topic = "platform.events"))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    #[repository(version)]
    pub version: u64,
}

async fn rename(users: &UserRepository, t: &TenantId) -> caas_storage::Result<()> {
    let patch = UserPatch {
        email: Some("b@example.com".into()),
    };
    users.queue_update(t, &"u1".to_owned(), patch).await
}

fn main() {
    let _ = rename;
}
