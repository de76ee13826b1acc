// An index on two list fields: MongoDB cannot index parallel arrays.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
#[index(keys(roles, groups))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub roles: Vec<String>,
    pub groups: Option<std::collections::BTreeSet<String>>,
}

fn main() {}
