// cache(...) needs a ttl.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = eventual,
             cache(strategy = write_through))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    #[repository(version)]
    pub version: u64,
}

fn main() {}
