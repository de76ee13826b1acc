//! What a Redis cache entry holds: `<version>|<BSON of the document>`, secret and framework
//! fields left out except `_schema_version`, so a reader with a newer entity upgrades an entry
//! an older release put (and a reader with an older one does not take a newer entry for its
//! own shape); and the TTL each entry gets.

use std::sync::atomic::{AtomicU64, Ordering};

use mongodb::bson::Document;

use crate::document;
use crate::entity::{CacheSpec, Entity, EntityMeta};
use crate::error::{Error, Result};
use crate::schema;

/// The entry for a stored document (as written or as read back), or `None` when the entity
/// has no version field: write-through puts are fenced by version, so without one the entry
/// is invalidated instead.
pub(crate) fn from_document(meta: &EntityMeta, doc: &Document) -> Option<(u64, Vec<u8>)> {
    let version = document::stored_u64(doc, meta.version_field?);
    let stamp = schema::version_of(doc);
    let mut doc = doc.clone();
    document::strip(meta, &mut doc, false);
    doc.insert(document::SCHEMA_VERSION_FIELD, schema::stamp(stamp));
    encode(meta, version, &doc)
        .ok()
        .map(|bytes| (version, bytes))
}

/// The entry for an entity read from MongoDB.
pub(crate) fn from_entity<E: Entity>(e: &E) -> Result<Vec<u8>> {
    let mut doc = mongodb::bson::to_document(e).map_err(|err| Error::Codec {
        entity: E::META.name,
        direction: "encode",
        message: err.to_string(),
    })?;
    document::strip(E::META, &mut doc, false);
    doc.insert(
        document::SCHEMA_VERSION_FIELD,
        schema::stamp(E::META.schema_version),
    );
    encode(E::META, e.version().unwrap_or(0), &doc)
}

fn encode(meta: &EntityMeta, version: u64, doc: &Document) -> Result<Vec<u8>> {
    let mut out = format!("{version}|").into_bytes();
    doc.to_writer(&mut out).map_err(|err| Error::Codec {
        entity: meta.name,
        direction: "encode",
        message: err.to_string(),
    })?;
    Ok(out)
}

/// The tombstone a delete at `version` leaves: no body.
pub(crate) fn tombstone(version: u64) -> Vec<u8> {
    format!("{version}|").into_bytes()
}

/// What an entry holds.
pub(crate) enum Decoded<E> {
    /// The entity.
    Entity(E),
    /// A tombstone: the document was deleted (a miss for reads).
    Deleted,
    /// Not an entry this crate wrote, or one for another shape of the entity.
    Corrupt,
    /// An entry of a newer schema version than this build's entity (put by a newer release
    /// during a rolling update): a miss here, left for the readers it suits.
    Newer,
}

/// Decodes an entry.
pub(crate) fn decode<E: Entity>(raw: &[u8]) -> Decoded<E> {
    let Some(bar) = raw.iter().position(|b| *b == b'|') else {
        return Decoded::Corrupt;
    };
    if bar + 1 == raw.len() {
        return Decoded::Deleted;
    }
    let Ok(body) = mongodb::bson::RawDocument::from_bytes(&raw[bar + 1..]) else {
        return Decoded::Corrupt;
    };
    let current = E::META.schema_version;
    match schema::raw_stamp_of(body) {
        // Entries put before entries were stamped: their version is unknown unless there
        // never was another.
        None if current != schema::UNSTAMPED => Decoded::Corrupt,
        Some(v) if v > current => Decoded::Newer,
        Some(v) if v < current => match schema::decode_raw::<E>(body, false) {
            Ok(read) => Decoded::Entity(read.entity),
            Err(e) => {
                tracing::warn!(entity = E::META.name, error = %e, "a cache entry of an older schema version did not upgrade; reading MongoDB instead");
                Decoded::Corrupt
            }
        },
        _ => match mongodb::bson::from_slice(body.as_bytes()) {
            Ok(e) => Decoded::Entity(e),
            Err(_) => Decoded::Corrupt,
        },
    }
}

/// The entry TTL: the declared one plus up to `jitter` more, so entries written together do not
/// expire together.
pub(crate) fn ttl_ms(spec: &CacheSpec) -> u64 {
    let base = spec.ttl.as_millis() as u64;
    let jitter = spec.jitter.as_millis() as u64;
    if jitter == 0 {
        return base;
    }
    base + cheap_random() % (jitter + 1)
}

/// A token identifying one holder of the stampede lock.
pub(crate) fn lock_token() -> String {
    format!("{}-{:x}", std::process::id(), cheap_random())
}

fn cheap_random() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64
    let mut z = t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
