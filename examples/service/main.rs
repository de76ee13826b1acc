//! A multi-tenant service on caas-storage with an HTTP API (axum), end to end against the real
//! servers: users (strong, cached, unique email per tenant, a secret password hash), sessions
//! and a rate-limited login (Redis DB 4 and 5), chat messages (causal, each an event on
//! `chat.messages` through the outbox), preferences (read-your-writes), login records
//! (eventual, through the write-behind queue), a hash-chained audit log, and the operations
//! endpoints `/health` (JSON; 503 when down) and `/metrics` (Prometheus).
//!
//! ```sh
//! scripts/demo                       # the main job: servers up, then this with its scenario
//! cargo run -p caas-storage-examples --bin service -- --serve-only   # just serve
//! cargo run -p caas-storage-examples --bin service -- caas health --json   # the operator CLI
//! ```
//!
//! `service caas <command>` is the operator CLI (`caas_storage::cli`, docs/cli.md) over this
//! service's entities and audit log: see [`operator_cli`].
//!
//! Without flags it serves on `CAAS_EXAMPLE_HTTP_ADDR` (default `127.0.0.1:0`, a free port),
//! runs the scripted scenario (`scenario.rs`) against itself with a real HTTP client, and exits
//! non-zero if any step did not do what it says. `--serve` keeps serving after the scenario
//! until stdin closes (the main-job test scrapes it then); `--serve-only` skips the scenario.

mod app;
mod model;
mod scenario;

use std::time::{Duration, Instant};

use caas_storage::outbox::RelayOptions;
use caas_storage::{Storage, StorageConfig};

/// The operator CLI over this service's entities and audit log: `service caas <command>`
/// (docs/cli.md). The entities are the binary's own, so the CLI lives in it.
fn operator_cli() -> caas_storage::cli::Cli {
    caas_storage::cli::Cli::new("service caas")
        .entity::<model::User>()
        .entity::<model::Message>()
        .entity::<model::Preference>()
        .entity::<model::Login>()
        .audit(caas_storage::audit::AuditOptions::for_database(
            "caas_audit",
        ))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("caas") {
        // `service caas health`: the arguments after the binary's name, as the CLI's own.
        let exit = operator_cli().run_args(std::env::args_os().skip(1)).await;
        return std::process::ExitCode::from(exit.code());
    }
    match serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("the service failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The exporter is the service's choice; the library only records through `metrics`.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    // The builder checks at connect that every entity's outbox topic is declared
    // (`kafka.topics`: the seed's seven by default, `chat.messages` among them).
    let storage = Storage::builder(StorageConfig::from_env()?)
        .entities(&model::metas())
        .connect()
        .await?;
    println!("connected: {}", storage.capabilities().server_description());
    for meta in model::metas() {
        let plan = storage
            .sync_indexes_with(meta, caas_storage::index::SyncOptions::default())
            .await?;
        println!(
            "indexes of {}: created {:?}",
            plan.namespace,
            plan.created()
        );
    }
    let relay = storage
        .outbox_relay(RelayOptions::for_databases(["caas_messaging"]))?
        .spawn();

    let app = app::App::new(storage.clone(), prometheus)?;
    let addr = std::env::var("CAAS_EXAMPLE_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let bound = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app.router()).await });
    println!("listening on http://{bound}");

    if args.iter().any(|a| a == "--serve-only") {
        tokio::signal::ctrl_c().await?;
    } else {
        scenario::run(&format!("http://{bound}"), &storage).await?;
        storage
            .write_behind()
            .flush_all(Duration::from_secs(30))
            .await?;
        println!("\ndone in {:?}", started.elapsed());
        if args.iter().any(|a| a == "--serve") {
            println!("serving on http://{bound} until stdin closes");
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await?;
        }
    }
    server.abort();
    relay.shutdown().await;
    Ok(())
}
