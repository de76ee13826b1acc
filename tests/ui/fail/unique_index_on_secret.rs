// A unique index cannot have a secret key: MongoDB's duplicate-key error quotes the key values
// (`dup key: { ... }`), and a unique index lets callers probe which values exist. Reported at the
// key in keys(...), and at `unique` for the field shorthand.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
#[index(keys(org, recovery_email), unique)]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub org: String,
    #[repository(secret)]
    pub recovery_email: Option<String>,
    #[repository(unique, secret)]
    pub api_key_hash: Option<String>,
}

fn main() {}
