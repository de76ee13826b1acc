// An unknown key inside outbox(...).

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_auth",
    collection = "users",
    outbox(topic = "platform.events", insrt = "user.created")
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
