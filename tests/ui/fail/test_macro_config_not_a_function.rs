// `config` names a function returning the `StorageConfig` to build the test's storage from.

const CONFIG: &str = "caas.toml";

#[caas_storage::test(config = CONFIG)]
async fn signs_up(storage: caas_storage::Storage) {
    let _ = storage;
}

fn main() {}
