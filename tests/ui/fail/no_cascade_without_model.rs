// When the struct cannot be modelled (no id field), placeholders keep code that names the
// generated types from adding errors: only the derive's error is reported.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
}

fn main() {
    let _ = |storage: &Storage| UserRepository::new(storage);
    let _ = UserPatch::default();
    let _ = User::fields();
}
