//! The optional in-process tier: a bounded moka cache of `Arc<E>` per entity type, with its own
//! short TTL. Writes on this instance drop entries at once; writes on other instances reach it
//! through Redis pub/sub (see [`listener`](super::listener)).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::entity::{Entity, LocalCacheSpec};

/// The operations the listener needs without knowing the entity type.
pub(crate) trait LocalTier: Send + Sync {
    fn invalidate(&self, tag: &str);
    fn clear(&self);
    fn as_any(&self) -> &dyn Any;
}

pub(crate) struct Typed<E: Entity>(pub moka::sync::Cache<String, Arc<E>>);

impl<E: Entity> LocalTier for Typed<E> {
    fn invalidate(&self, tag: &str) {
        self.0.invalidate(tag);
    }
    fn clear(&self) {
        self.0.invalidate_all();
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Local tiers by entity name.
#[derive(Default)]
pub(crate) struct Registry {
    tiers: Mutex<HashMap<&'static str, Arc<dyn LocalTier>>>,
}

impl Registry {
    /// The tier of `E`, created on first use.
    pub(crate) fn tier<E: Entity>(&self, spec: &LocalCacheSpec) -> Arc<dyn LocalTier> {
        let mut tiers = self.tiers.lock().expect("local tier registry");
        tiers
            .entry(E::META.name)
            .or_insert_with(|| {
                let cache = moka::sync::Cache::builder()
                    .max_capacity(spec.capacity)
                    .time_to_live(spec.ttl)
                    .build();
                Arc::new(Typed::<E>(cache))
            })
            .clone()
    }

    pub(crate) fn get(&self, entity: &str) -> Option<Arc<dyn LocalTier>> {
        self.tiers
            .lock()
            .expect("local tier registry")
            .get(entity)
            .cloned()
    }

    pub(crate) fn clear_all(&self) {
        for t in self.tiers.lock().expect("local tier registry").values() {
            t.clear();
        }
    }
}

/// Typed access to a tier.
pub(crate) fn typed<E: Entity>(tier: &Arc<dyn LocalTier>) -> &moka::sync::Cache<String, Arc<E>> {
    &tier
        .as_any()
        .downcast_ref::<Typed<E>>()
        .expect("one tier type per entity name")
        .0
}
