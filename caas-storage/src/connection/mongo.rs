//! The MongoDB client: pool settings from the configuration, the command log, and the
//! monitoring handlers behind the pool and command metrics and the slow-command log
//! ([`telemetry::mongodb`](crate::telemetry)).

use std::sync::Arc;

use mongodb::event::command::CommandStartedEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;

use crate::config::StorageConfig;
use crate::error::{Error, Result};
use crate::telemetry;

/// A callback for every command the driver starts.
pub(crate) type CommandLog = telemetry::mongodb::CommandLog;

/// The client with the configured pool. Without `on_command`, commands are logged by `tracing`
/// at debug level under target `caas_storage::mongodb` when that level is enabled at connect:
/// their shape (field names and value types), never their values.
pub(crate) async fn client(
    config: &StorageConfig,
    on_command: Option<CommandLog>,
) -> Result<mongodb::Client> {
    let m = &config.mongodb;
    let bad_uri = |e: mongodb::error::Error| {
        Error::config(
            "mongodb.uri",
            crate::redact::scrub(&e.to_string(), config.credentials()),
        )
    };
    let mut options = ClientOptions::parse(&m.uri).await.map_err(bad_uri)?;
    options.app_name = Some(m.app_name.clone());
    options.max_pool_size = Some(m.max_pool_size);
    options.min_pool_size = Some(m.min_pool_size);
    options.max_idle_time = Some(m.max_idle_time);
    options.server_selection_timeout = Some(m.server_selection_timeout);
    options.connect_timeout = Some(m.connect_timeout);
    let log = on_command.or_else(|| {
        tracing::enabled!(target: "caas_storage::mongodb", tracing::Level::DEBUG).then(|| {
            Arc::new(|e: &CommandStartedEvent| {
                // The command's shape only: its values are the data (and secret fields).
                let shape = crate::redact::shape(&e.command);
                tracing::debug!(target: "caas_storage::mongodb", db = %e.db, command = %shape, "mongodb command");
            }) as CommandLog
        })
    });
    // Command metrics and the slow-command log, and the command log; pool metrics.
    let commands = telemetry::mongodb::command_handler(m.slow_command_threshold, log);
    options.command_event_handler = Some(EventHandler::callback(commands));
    options.cmap_event_handler = Some(EventHandler::callback(telemetry::mongodb::pool_handler(
        m.max_pool_size,
    )));
    mongodb::Client::with_options(options).map_err(bad_uri)
}

/// The server's clock minus this process's, in milliseconds: `hello`'s `localTime` against the
/// middle of the round trip. 0 when the server does not say.
pub(crate) async fn clock_offset_ms(client: &mongodb::Client) -> i64 {
    let before = mongodb::bson::DateTime::now().timestamp_millis();
    let hello = client
        .database("admin")
        .run_command(mongodb::bson::doc! { "hello": 1 })
        .await;
    let after = mongodb::bson::DateTime::now().timestamp_millis();
    match hello.as_ref().map(|h| h.get_datetime("localTime")) {
        Ok(Ok(server)) => server.timestamp_millis() - (before + after) / 2,
        _ => 0,
    }
}
