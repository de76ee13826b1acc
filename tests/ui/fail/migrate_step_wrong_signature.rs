// A step is `fn(&mut Document) -> StepResult`: another signature is a type error at the attribute.

fn takes_a_reference(_doc: &Document) -> bool {
    true
}

use caas_storage::bson::Document;
use caas_storage::prelude::*;
use caas_storage::StepResult;

fn v1_to_v2(_doc: &mut Document) -> StepResult {
    Ok(())
}

fn v2_to_v3(_doc: &mut Document) -> StepResult {
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "app", collection = "profiles", schema_version = 2)]
#[migrate(from = 1, up = v1_to_v2, down = takes_a_reference)]
pub struct Profile {
    #[repository(id)]
    pub profile_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub name: String,
}

fn main() {
    let _ = (v1_to_v2, v2_to_v3);
}
