// write_behind acknowledges before the database write, so only eventual entities may use it.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = causal,
             cache(ttl = "30m", strategy = write_behind))]
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
