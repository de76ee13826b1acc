//! The shared idempotent Kafka producer, and the settings every Kafka client starts from.

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::config::StorageConfig;
use crate::error::{Error, Result};

/// The producer every outbox relay of the process publishes with.
pub(crate) fn producer(config: &StorageConfig) -> Result<FutureProducer> {
    let k = &config.kafka;
    client_config(
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
    .create()
    .map_err(|e| {
        Error::config(
            "kafka.properties",
            crate::redact::scrub(&e.to_string(), config.credentials()),
        )
    })
}

/// The brokers and client id, then `settings`, then the configured `kafka.properties` (security
/// settings among them), which win over everything before them.
pub(crate) fn client_config(config: &StorageConfig, settings: &[(&str, String)]) -> ClientConfig {
    let k = &config.kafka;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &k.brokers)
        .set("client.id", &k.client_id);
    for (key, value) in settings {
        cc.set(*key, value);
    }
    for (key, value) in &k.properties {
        cc.set(key, value);
    }
    cc
}
