//! The README's main job as a test: the example service (`service.rs`) runs end to end against
//! the servers `scripts/services` started, and exits zero only if every step did what it says.
//!
//! It runs with every server port variable of `scripts/services` exported, as a user running
//! two checkouts side by side has them: those variables (`CAAS_SERVICES_*`) must leave the
//! library's configuration (`CAAS_MONGODB_*`, `CAAS_REDIS_*`, `CAAS_KAFKA_*`) alone.

use std::process::Command;

#[test]
fn the_example_service_runs_end_to_end() {
    let port = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
    let out = Command::new(env!("CARGO_BIN_EXE_service"))
        .env(
            "CAAS_SERVICES_MONGO_PORT",
            port("CAAS_SERVICES_MONGO_PORT", "27017"),
        )
        .env(
            "CAAS_SERVICES_REDIS_PORT",
            port("CAAS_SERVICES_REDIS_PORT", "6379"),
        )
        .env(
            "CAAS_SERVICES_REDIS_CLUSTER_PORT",
            port("CAAS_SERVICES_REDIS_CLUSTER_PORT", "7000"),
        )
        .env(
            "CAAS_SERVICES_KAFKA_PORT",
            port("CAAS_SERVICES_KAFKA_PORT", "9092"),
        )
        .env(
            "CAAS_SERVICES_KAFKA_CONTROLLER_PORT",
            port("CAAS_SERVICES_KAFKA_CONTROLLER_PORT", "9093"),
        )
        .output()
        .expect("the service binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the service failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for step in ["== ", "\"status\": \"up\"", "done in"] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
}
