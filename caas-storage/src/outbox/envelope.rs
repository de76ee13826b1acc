//! [`EventEnvelope`]: the JSON document every outbox event is published as.
//!
//! The envelope is the Kafka message value; its identifying fields are also sent as message
//! headers (see [`EventEnvelope::headers`]) so consumers can route and deduplicate without
//! parsing the body. The Kafka key is [`EventEnvelope::kafka_key`], `tenant/type/id`, so all
//! events of one aggregate land on one partition, in order, and two tenants' aggregates never
//! share a key (nor merge on a compacted topic).

use std::time::{SystemTime, UNIX_EPOCH};

use mongodb::bson::{Bson, Document};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name used for the envelope in codec errors.
const ENVELOPE: &str = "EventEnvelope";

/// One domain event, as recorded in the outbox and published to Kafka.
///
/// ```
/// use caas_storage::outbox::EventEnvelope;
/// let e = EventEnvelope::new("user.created", "User", "u1", "tenant_a", serde_json::json!({"email": "a@x"}))
///     .with_revision(1)
///     .with_correlation_id("req-42");
/// assert_eq!(e.aggregate_id, "u1");
/// let back = EventEnvelope::from_json(&e.to_json().unwrap()).unwrap();
/// assert_eq!(back, e);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Unique event id: a UUID v7 (time-ordered) in its hyphenated text form.
    pub event_id: String,
    /// What happened, e.g. `user.created`.
    pub event_type: String,
    /// The kind of aggregate the event is about, e.g. `User`.
    pub aggregate_type: String,
    /// The aggregate's id rendered as text.
    pub aggregate_id: String,
    /// The tenant the aggregate belongs to.
    pub tenant: String,
    /// Version of the payload's schema.
    pub schema_version: u32,
    /// When the event was recorded: RFC 3339, UTC, millisecond precision
    /// (`2025-01-31T12:00:00.000Z`).
    pub occurred_at: String,
    /// The aggregate's revision after the write that caused the event; orders the events of
    /// one incarnation of the aggregate.
    pub revision: u64,
    /// Which incarnation of the aggregate the event belongs to: an aggregate deleted and
    /// created again under the same id starts again at revision 0 as a new incarnation. Text
    /// order is creation order, so `(incarnation, revision)` orders all events of an
    /// aggregate id. `None` for events of documents written before incarnations existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// The event body: the entity without its secret fields, or a custom body.
    pub payload: serde_json::Value,
    /// Id of the request or flow this event is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Id of the message or command that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
}

impl EventEnvelope {
    /// The Kafka message key: `<tenant>/<aggregate type>/<aggregate id>`. Tenant ids and type
    /// names hold no `/`, so the key names one aggregate of one tenant unambiguously.
    pub fn kafka_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.tenant, self.aggregate_type, self.aggregate_id
        )
    }

    /// A new event with a fresh UUID v7 id, `occurred_at` now, schema version 1 and revision 0
    /// (set the revision with [`with_revision`](Self::with_revision)).
    pub fn new(
        event_type: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        tenant: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        EventEnvelope {
            event_id: uuid::Uuid::now_v7().hyphenated().to_string(),
            event_type: event_type.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            tenant: tenant.into(),
            schema_version: 1,
            occurred_at: rfc3339_millis(now_millis()),
            revision: 0,
            incarnation: None,
            payload,
            correlation_id: None,
            causation_id: None,
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the payload's schema version.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Sets `occurred_at` to `ms` since the Unix epoch (the repositories set their events' to
    /// the write's time, which an in-memory storage takes from its test clock).
    pub(crate) fn at_millis(mut self, ms: i64) -> Self {
        self.occurred_at = rfc3339_millis(ms);
        self
    }

    /// Sets the aggregate's revision after the write.
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self
    }

    /// Sets the aggregate's incarnation (the repositories do this for their events).
    pub fn with_incarnation(mut self, incarnation: Option<String>) -> Self {
        self.incarnation = incarnation;
        self
    }

    /// The envelope as JSON bytes (the Kafka message value).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Codec {
            entity: ENVELOPE,
            direction: "encode",
            message: e.to_string(),
        })
    }

    /// Parses an envelope from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Codec {
            entity: ENVELOPE,
            direction: "decode",
            message: e.to_string(),
        })
    }

    /// The Kafka headers sent with the event: `event_id`, `event_type`, `tenant`,
    /// `schema_version`, `aggregate_type`, and `correlation_id` / `causation_id` when set.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("event_id", self.event_id.clone()),
            ("event_type", self.event_type.clone()),
            ("tenant", self.tenant.clone()),
            ("schema_version", self.schema_version.to_string()),
            ("aggregate_type", self.aggregate_type.clone()),
        ];
        if let Some(c) = &self.correlation_id {
            h.push(("correlation_id", c.clone()));
        }
        if let Some(c) = &self.causation_id {
            h.push(("causation_id", c.clone()));
        }
        h
    }
}

/// An entity document as an event payload: relaxed extended JSON (plain numbers and strings,
/// dates as `{"$date": ...}`), without the `secret_fields`, `_id` and the bookkeeping fields
/// caas-storage adds (names starting with `_`).
pub fn payload_from_document(document: &Document, secret_fields: &[&str]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (k, v) in document {
        if k.starts_with('_') || secret_fields.contains(&k.as_str()) {
            continue;
        }
        out.insert(k.clone(), Bson::into_relaxed_extjson(v.clone()));
    }
    serde_json::Value::Object(out)
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(
            rfc3339_millis(1_735_689_599_999),
            "2024-12-31T23:59:59.999Z"
        );
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        for ms in [1_700_000_000_123_i64, 4_102_444_800_000, 1_583_020_800_500] {
            let want = mongodb::bson::DateTime::from_millis(ms)
                .try_to_rfc3339_string()
                .unwrap();
            let got = rfc3339_millis(ms);
            assert_eq!(got[..19], want[..19], "{ms}");
        }
    }

    #[test]
    fn event_ids_are_time_ordered_uuid_v7() {
        let a = EventEnvelope::new("t", "A", "1", "x", serde_json::Value::Null);
        let b = EventEnvelope::new("t", "A", "1", "x", serde_json::Value::Null);
        let ua = uuid::Uuid::parse_str(&a.event_id).unwrap();
        assert_eq!(ua.get_version_num(), 7);
        assert!(a.event_id < b.event_id);
    }

    #[test]
    fn payload_leaves_out_secrets_and_bookkeeping() {
        let d = mongodb::bson::doc! {
            "_id": 1, "user_id": "u1", "password_hash": "x", "n": 3_i64, "_schema_version": 1
        };
        let p = payload_from_document(&d, &["password_hash"]);
        assert_eq!(p, serde_json::json!({"user_id": "u1", "n": 3}));
    }

    #[test]
    fn optional_ids_are_left_out_of_the_json() {
        let e = EventEnvelope::new("t", "A", "1", "x", serde_json::json!({}));
        let v: serde_json::Value = serde_json::from_slice(&e.to_json().unwrap()).unwrap();
        assert!(v.get("correlation_id").is_none());
        assert_eq!(v["schema_version"], 1);
        assert!(EventEnvelope::from_json(b"{}").is_err());
    }
}
