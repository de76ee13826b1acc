// Outbox event types without a topic to publish them to.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_auth",
    collection = "users",
    outbox(insert = "user.created")
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
