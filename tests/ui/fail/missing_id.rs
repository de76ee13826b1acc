// No id field.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
}

fn main() {}
