// An unknown key inside cache(local(...)): the misspelled `capacity` is not also reported missing.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = eventual,
             cache(ttl = "1m", local(ttl = "1s", capasity = 100)))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
}

fn main() {}
