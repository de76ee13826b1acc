// A TTL of zero, on an index and on the cache.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = eventual,
             cache(ttl = "0s"))]
#[index(keys(expires_at), ttl = "0d")]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub expires_at: DateTime,
}

fn main() {}
