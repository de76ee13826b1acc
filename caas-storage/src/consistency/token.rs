//! [`CausalToken`]: "at least what I saw", portable across requests and instances.
//!
//! A token records, per document, the version a caller wrote or read
//! ([`Repository::causal_token`](crate::Repository::causal_token),
//! [`Repository::observe`](crate::Repository::observe)). Handed to another request (on any
//! instance) and passed to
//! [`Repository::find_by_id_after`](crate::Repository::find_by_id_after), it makes that read
//! return at least that version: a read that comes back older (a stale cache tier, a lagging
//! secondary) is repeated against the primary with majority read concern, bypassing the
//! caches, until the version is there or `causal_wait` runs out. Tokens are version-based so
//! they work the same on a replica set and on servers without causally consistent sessions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use mongodb::bson::Bson;

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

    /// Records that document `id` of entity `entity` in `tenant` was seen at `version`.
    pub(crate) fn observe_version(
        &mut self,
        tenant: &TenantId,
        entity: &str,
        id: &Bson,
        version: u64,
    ) {
        let slot = self.seen.entry(key(tenant, entity, id)).or_insert(0);
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
    pub(crate) fn required_version(
        &self,
        tenant: &TenantId,
        entity: &str,
        id: &Bson,
    ) -> Option<u64> {
        self.seen.get(&key(tenant, entity, id)).copied()
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
}

/// `tenant:Entity:id`, the id as relaxed extended JSON.
fn key(tenant: &TenantId, entity: &str, id: &Bson) -> String {
    format!("{tenant}:{entity}:{}", id.clone().into_relaxed_extjson())
}
