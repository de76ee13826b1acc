// Writes of an eventual entity are queued in Redis, whole documents included: secret fields
// must not leave the database.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_keys", collection = "api_keys", consistency = eventual)]
pub struct ApiKey {
    #[repository(id)]
    pub key_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub owner: String,
    #[repository(secret)]
    pub key_hash: Option<String>,
}

fn main() {}
