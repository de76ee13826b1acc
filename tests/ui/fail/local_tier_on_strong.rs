// A strong entity may not have an in-process tier: another instance's copy can outlive a write.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = strong,
             cache(ttl = "30m", local(ttl = "5s", capacity = 100)))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(version)]
    pub version: u64,
}

fn main() {}
