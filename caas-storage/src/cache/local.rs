//! The optional in-process tier: a bounded moka cache of `Arc<E>` per entity, with its own
//! short TTL. Writes on this instance drop entries at once; writes on other instances reach it
//! through Redis pub/sub (see [`listener`](super::listener)).
//!
//! Entries expire on the runtime's clock ([`Clock`]), which tests move in memory; moka's own
//! time-to-live (the same TTL, in real time) frees the memory of entries nobody reads again.
//!
//! Fills are fenced as Redis puts are: a reader notes the tier's epoch before it reads Redis or
//! MongoDB, and its value goes in only if no invalidation happened since. So a slow reader
//! never puts back a value a write on this instance (or a message from another) dropped.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::connection::Clock;
use crate::entity::{Entity, LocalCacheSpec};

/// The operations the listener needs without knowing the entity type.
pub(crate) trait LocalTier: Send + Sync {
    fn invalidate(&self, tag: &str);
    fn clear(&self);
    fn as_any(&self) -> &dyn Any;
}

/// One entity's tier.
pub(crate) struct Typed<E: Entity> {
    /// Values with the time (ms on `clock`) they expire.
    cache: moka::sync::Cache<String, (Arc<E>, i64)>,
    clock: Clock,
    ttl_ms: i64,
    /// Invalidations so far; guarded with the fills it fences.
    epoch: Mutex<u64>,
}

impl<E: Entity> Typed<E> {
    /// The cached value of `tag`, unless it expired.
    pub(crate) fn get(&self, tag: &str) -> Option<Arc<E>> {
        let (value, expires) = self.cache.get(tag)?;
        if self.clock.now_ms() >= expires {
            self.cache.invalidate(tag);
            return None;
        }
        Some(value)
    }

    /// The epoch to hand back to [`fill`](Self::fill).
    pub(crate) fn epoch(&self) -> u64 {
        *self.epoch.lock().expect("local tier epoch")
    }

    /// Puts `value` unless an invalidation happened since `seen` was read.
    pub(crate) fn fill(&self, tag: &str, value: E, seen: u64) -> bool {
        let epoch = self.epoch.lock().expect("local tier epoch");
        if *epoch != seen {
            return false;
        }
        let expires = self.clock.now_ms().saturating_add(self.ttl_ms);
        self.cache
            .insert(tag.to_owned(), (Arc::new(value), expires));
        true
    }
}

impl<E: Entity> LocalTier for Typed<E> {
    fn invalidate(&self, tag: &str) {
        let mut epoch = self.epoch.lock().expect("local tier epoch");
        *epoch += 1;
        self.cache.invalidate(tag);
    }
    fn clear(&self) {
        let mut epoch = self.epoch.lock().expect("local tier epoch");
        *epoch += 1;
        self.cache.invalidate_all();
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The tiers of one cache identity, by Rust type.
type Tiers = Vec<(TypeId, Arc<dyn LocalTier>)>;

/// Local tiers by cache identity (namespace and entity name) and Rust type.
pub(crate) struct Registry {
    tiers: Mutex<HashMap<String, Tiers>>,
    clock: Clock,
}

impl Registry {
    /// No tiers yet; entries will expire on `clock`.
    pub(crate) fn new(clock: Clock) -> Self {
        Registry {
            tiers: Mutex::default(),
            clock,
        }
    }

    /// The tier of `E` under `identity`, created on first use.
    pub(crate) fn tier<E: Entity>(
        &self,
        identity: &str,
        spec: &LocalCacheSpec,
    ) -> Arc<dyn LocalTier> {
        let mut tiers = self.tiers.lock().expect("local tier registry");
        let of_identity = tiers.entry(identity.to_owned()).or_default();
        if let Some((_, t)) = of_identity.iter().find(|(ty, _)| *ty == TypeId::of::<E>()) {
            return t.clone();
        }
        let tier: Arc<dyn LocalTier> = Arc::new(Typed::<E> {
            cache: moka::sync::Cache::builder()
                .max_capacity(spec.capacity)
                .time_to_live(spec.ttl)
                .eviction_listener(|_, _, cause| {
                    // Size and expiry evictions; not invalidations or replacements.
                    if cause.was_evicted() {
                        crate::telemetry::metrics::cache_eviction(E::META.name);
                    }
                })
                .build(),
            clock: self.clock.clone(),
            ttl_ms: i64::try_from(spec.ttl.as_millis()).unwrap_or(i64::MAX),
            epoch: Mutex::new(0),
        });
        of_identity.push((TypeId::of::<E>(), tier.clone()));
        tier
    }

    /// Drops `tag` from every tier of `identity` on this instance.
    pub(crate) fn invalidate(&self, identity: &str, tag: &str) {
        if let Some(tiers) = self
            .tiers
            .lock()
            .expect("local tier registry")
            .get(identity)
        {
            for (_, t) in tiers {
                t.invalidate(tag);
            }
        }
    }

    /// Empties every tier of `identity`.
    pub(crate) fn clear(&self, identity: &str) {
        if let Some(tiers) = self
            .tiers
            .lock()
            .expect("local tier registry")
            .get(identity)
        {
            for (_, t) in tiers {
                t.clear();
            }
        }
    }

    pub(crate) fn clear_all(&self) {
        for tiers in self.tiers.lock().expect("local tier registry").values() {
            for (_, t) in tiers {
                t.clear();
            }
        }
    }
}

/// Typed access to a tier made by [`Registry::tier`] for `E`.
pub(crate) fn typed<E: Entity>(tier: &Arc<dyn LocalTier>) -> Option<&Typed<E>> {
    tier.as_any().downcast_ref::<Typed<E>>()
}
