// A `#[caas_storage::test]` takes the storage it runs on as its one argument.

#[caas_storage::test]
async fn signs_up() {}

fn main() {}
