//! [`CausalToken`]: "at least what I saw", portable across requests and instances.
//!
//! A token records, per document, the version a caller wrote or read. Handed to another
//! request (on any instance) and passed to
//! [`Repository::find_by_id_after`](crate::Repository::find_by_id_after), it makes that read
//! return at least that version: a read that comes back older (a stale cache tier, a lagging
//! secondary) is repeated against the primary with majority read concern, bypassing the
//! caches, until the version is there or `causal_wait` runs out. Tokens are version-based so
//! they work the same on a replica set and on servers without causally consistent sessions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::tenant::TenantId;

/// See the module docs. Serialize it with [`encode`](Self::encode) to hand it to a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalToken {
    /// `tenant:Entity:id` -> the least version a read must return.
    seen: BTreeMap<String, u64>,
}

impl CausalToken {
    /// An empty token (requires nothing).
    pub fn new() -> Self {
        CausalToken::default()
    }

    /// A token requiring at least `entity`'s current version.
    pub fn of<E: Entity>(tenant: &TenantId, entity: &E) -> Self {
        let mut t = CausalToken::new();
        t.observe(tenant, entity);
        t
    }

    /// Records `entity` (its version; entities without a version field add nothing).
    pub fn observe<E: Entity>(&mut self, tenant: &TenantId, entity: &E) {
        let (Some(version), Ok(key)) = (entity.version(), Self::key::<E>(tenant, entity.id()))
        else {
            return;
        };
        let slot = self.seen.entry(key).or_insert(0);
        *slot = (*slot).max(version);
    }

    /// Combines two tokens (the larger version of each document wins).
    pub fn merge(&mut self, other: &CausalToken) {
        for (k, v) in &other.seen {
            let slot = self.seen.entry(k.clone()).or_insert(0);
            *slot = (*slot).max(*v);
        }
    }

    /// The least version the token requires of this document, if any.
    pub fn required<E: Entity>(&self, tenant: &TenantId, id: &E::Id) -> Option<u64> {
        self.seen.get(&Self::key::<E>(tenant, id).ok()?).copied()
    }

    /// Whether the token requires nothing.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Text form, safe in headers and URLs (hex of JSON).
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a token always serializes");
        crate::hex::encode(&json)
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(text: &str) -> Result<Self> {
        let bad = |m: &str| Error::Codec {
            entity: "CausalToken",
            direction: "decode",
            message: m.to_owned(),
        };
        let bytes =
            crate::hex::decode(text).ok_or_else(|| bad("not a token issued by caas-storage"))?;
        serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))
    }

    fn key<E: Entity>(tenant: &TenantId, id: &E::Id) -> Result<String> {
        let id = mongodb::bson::to_bson(id).map_err(|e| Error::Codec {
            entity: E::META.name,
            direction: "encode",
            message: e.to_string(),
        })?;
        Ok(format!(
            "{tenant}:{}:{}",
            E::META.name,
            id.into_relaxed_extjson()
        ))
    }
}
