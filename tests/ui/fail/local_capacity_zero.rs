// An in-process cache tier that can hold nothing.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = eventual,
             cache(ttl = "1m", local(ttl = "1s", capacity = 0)))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
}

fn main() {}
