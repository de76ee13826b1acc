//! Connects to the servers named by the environment (defaults: loopback) and prints what the
//! framework sees: the server's capabilities and the health report.
//!
//! ```sh
//! scripts/services up && cargo run --example quickstart
//! ```

use caas_storage::{HealthStatus, Storage, StorageConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let storage = Storage::connect(StorageConfig::from_env()?).await?;
    println!("server: {}", storage.capabilities().server_description());
    println!(
        "capabilities:\n{}",
        serde_json::to_string_pretty(storage.capabilities())?
    );
    let report = storage.health().await;
    println!("health:\n{}", serde_json::to_string_pretty(&report)?);
    if report.status != HealthStatus::Up {
        return Err(format!("storage is {:?}", report.status).into());
    }
    Ok(())
}
