// A consistency model or cache strategy written as a misspelled string: the suggestion is the
// nearest accepted identifier, as for the identifier form, not the string's text.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users", consistency = "strongg",
             cache(ttl = "30m", strategy = "write-through"))]
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
