// A key of outbox(...) written twice.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_auth",
    collection = "users",
    outbox(topic = "a.events", insert = "user.created", topic = "b.events")
)]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(version)]
    pub version: u64,
    pub email: String,
}

fn main() {}
