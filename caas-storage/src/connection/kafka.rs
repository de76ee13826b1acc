//! The shared idempotent Kafka producer, the settings every Kafka client starts from, and the
//! client context that reports librdkafka's errors (a refused SASL login, an untrusted broker
//! certificate) through `tracing` and health instead of losing them.
//!
//! Security settings are librdkafka properties given in `kafka.properties`
//! (`security.protocol`, `sasl.*`, `ssl.*`): they reach every client made here (the producer,
//! the relay's admin client) and every consumer built from [`KafkaConfig::client_config`].
//! librdkafka is built with the system OpenSSL (the `rdkafka` crate's `ssl` feature), which
//! provides TLS and SASL SCRAM; SASL PLAIN is built in. GSSAPI (Kerberos) is not built.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::config::{KafkaConfig, StorageConfig};
use crate::error::{Error, Result};

/// The client context of the runtime's Kafka producer: librdkafka's log lines go to `tracing`
/// (target `caas_storage::kafka`), its client errors too (at warn level), and the latest error
/// is kept so that [`Storage::health`](crate::Storage::health) can say why Kafka is down
/// (`Authentication failed: Invalid username or password` rather than a transport failure).
/// Credentials of the configuration are masked in everything it logs or keeps.
pub struct KafkaContext {
    state: Arc<KafkaState>,
}

/// What a [`KafkaContext`] keeps, shared with the connections that report it.
#[derive(Default)]
pub(crate) struct KafkaState {
    secrets: Vec<String>,
    errors: Mutex<LatestErrors>,
}

/// The latest error, and the latest one that says why (librdkafka follows a failed login or
/// handshake with "all brokers are down", which says only that).
#[derive(Default)]
struct LatestErrors {
    any: Option<(Instant, String)>,
    cause: Option<(Instant, String)>,
}

impl KafkaState {
    /// The latest error librdkafka reported that says why a connection failed (else the latest
    /// at all), with its age; credentials masked.
    pub(crate) fn last_error(&self) -> Option<String> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let (at, text) = errors.cause.as_ref().or(errors.any.as_ref())?;
        Some(format!("{text} ({}s ago)", at.elapsed().as_secs()))
    }

    fn record(&self, code: Option<RDKafkaErrorCode>, text: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let now = Some((Instant::now(), text));
        if code != Some(RDKafkaErrorCode::AllBrokersDown) {
            errors.cause.clone_from(&now);
        }
        errors.any = now;
    }

    fn scrub(&self, text: &str) -> String {
        crate::redact::scrub(text, self.secrets.iter().map(String::as_str))
    }
}

impl KafkaContext {
    fn new(config: &StorageConfig) -> Self {
        KafkaContext {
            state: Arc::new(KafkaState {
                secrets: config
                    .credentials()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                errors: Mutex::default(),
            }),
        }
    }

    /// The latest client error librdkafka reported that says why a connection failed (a
    /// refused login, a failed TLS handshake; else the latest error at all), with its age,
    /// credentials masked; `None` if there was none. librdkafka reports an error each time a
    /// connection to a broker fails, so a lasting problem stays the latest.
    pub fn last_error(&self) -> Option<String> {
        self.state.last_error()
    }
}

impl std::fmt::Debug for KafkaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaContext")
            .field("last_error", &self.last_error())
            .finish_non_exhaustive()
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let message = self.state.scrub(log_message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "caas_storage::kafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "caas_storage::kafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "caas_storage::kafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "caas_storage::kafka", facility = fac, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = self.state.scrub(&format!("{error}: {reason}"));
        tracing::warn!(target: "caas_storage::kafka", error = %text, "Kafka client error");
        self.state.record(error.rdkafka_error_code(), text);
    }
}

/// The producer every outbox relay of the process publishes with, and what its context keeps.
pub(crate) fn producer(
    config: &StorageConfig,
) -> Result<(FutureProducer<KafkaContext>, Arc<KafkaState>)> {
    let k = &config.kafka;
    let context = KafkaContext::new(config);
    let state = context.state.clone();
    let producer = client_config(
        config,
        &[
            ("acks", k.acks.clone()),
            ("enable.idempotence", k.enable_idempotence.to_string()),
            (
                "message.timeout.ms",
                k.message_timeout.as_millis().to_string(),
            ),
        ],
    )
    .create_with_context(context)
    .map_err(|e| {
        Error::config(
            "kafka.properties",
            crate::redact::scrub(&e.to_string(), config.credentials()),
        )
    })?;
    Ok((producer, state))
}

/// The brokers and client id, then `settings`, then the configured `kafka.properties` (security
/// settings among them), which win over everything before them.
pub(crate) fn client_config(config: &StorageConfig, settings: &[(&str, String)]) -> ClientConfig {
    let mut cc = config.kafka.client_config();
    for (key, value) in settings {
        cc.set(*key, value);
    }
    // The configured properties win over the settings above.
    for (key, value) in &config.kafka.properties {
        cc.set(key, value);
    }
    cc
}

impl KafkaConfig {
    /// librdkafka settings to connect a client of your own (a consumer of the relay's topics,
    /// an admin client) the way the runtime's producer connects: `bootstrap.servers`,
    /// `client.id`, and every entry of [`properties`](Self::properties), security settings
    /// (`security.protocol`, `sasl.*`, `ssl.*`) among them. Add what your client needs:
    ///
    /// ```no_run
    /// # fn f(config: &caas_storage::StorageConfig) -> Result<(), Box<dyn std::error::Error>> {
    /// use caas_storage::driver::rdkafka::consumer::StreamConsumer;
    /// let consumer: StreamConsumer = config
    ///     .kafka
    ///     .client_config()
    ///     .set("group.id", "billing")
    ///     .set("auto.offset.reset", "earliest")
    ///     .create()?;
    /// # Ok(()) }
    /// ```
    ///
    /// Producer-only entries of `properties` (`linger.ms`, ...) make librdkafka log a warning
    /// on a consumer and are ignored. The returned value's `Debug` shows every property,
    /// passwords included: do not print it.
    pub fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        for (key, value) in &self.properties {
            cc.set(key, value);
        }
        cc
    }
}
