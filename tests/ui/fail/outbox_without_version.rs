// An outbox needs a version field: events are ordered and reconciled by it.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = causal,
             outbox(topic = "platform.events"))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
}

fn main() {}
