//! Cross-instance invalidation of in-process tiers: every write publishes the entity's cache
//! identity and the entry's tag on a Redis channel; each `Storage` with a local tier listens and drops its copy. When the
//! subscription breaks, messages may have been missed, so every local tier is cleared on
//! (re)subscribe.

use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;

use super::keys;
use super::local::Registry;

pub(crate) fn spawn(
    client: redis::Client,
    channel: String,
    registry: Weak<Registry>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        let Some(reg) = registry.upgrade() else {
                            return;
                        };
                        reg.clear_all();
                        drop(reg);
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            let Some(reg) = registry.upgrade() else {
                                return;
                            };
                            let Ok(message) = msg.get_payload::<String>() else {
                                continue;
                            };
                            if let Some((identity, tag)) = keys::parse_message(&message) {
                                reg.invalidate(identity, tag);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cache invalidation listener: Redis unavailable")
                }
            }
            if registry.upgrade().is_none() {
                return;
            }
            // The subscription broke: entries may have changed unseen.
            if let Some(reg) = registry.upgrade() {
                reg.clear_all();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .abort_handle()
}
