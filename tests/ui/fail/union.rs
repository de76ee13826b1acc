// Unions cannot be entities.

#[derive(caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub union User {
    a: u32,
    b: f32,
}

fn main() {}
