// Index keys name Rust fields; a stored (renamed) name is pointed to its field.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
#[index(keys(emailAddress))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[serde(rename = "emailAddress")]
    pub email: String,
}

fn main() {}
