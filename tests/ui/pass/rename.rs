//! Stored names follow serde: `rename_all` on the struct, `rename` on a field (which wins), in
//! the entity description, index keys, field paths and patches. Fields serde does not store are
//! left out; a field with its own serializer is stored but has no typed path or patch field.

use caas_storage::index::IndexKey;
use caas_storage::prelude::*;

mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extra {
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[serde(rename_all = "camelCase")]
#[repository(database = "caas_profiles", collection = "profiles", consistency = read_your_writes,
             cache(ttl = "1h30m", strategy = cache_aside), outbox(topic = "profiles", update = "profile.changed"))]
#[index(keys(display_name, last_seen_at desc))]
#[index(keys(legacy), unique)]
pub struct UserProfile {
    #[repository(id)]
    pub profile_id: String,
    #[repository(tenant)]
    #[serde(rename = "tenant")]
    pub tenant_id: String,
    #[repository(unique)]
    #[serde(rename = "mail")]
    pub email_address: String,
    pub display_name: String,
    pub last_seen_at: i64,
    #[repository(version)]
    pub row_version: i32,
    #[serde(with = "as_text")]
    pub legacy: u32,
    #[repository(secret)]
    pub recovery_code: Option<String>,
    #[serde(skip_serializing, default)]
    pub transient: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

#[allow(dead_code)]
async fn usage(storage: &Storage, t: &TenantId) -> caas_storage::Result<()> {
    let profiles = UserProfileRepository::new(storage);
    let _: Option<UserProfile> = profiles.find_by_email_address(t, "a@example.com").await?;
    let _: Page<UserProfile> = profiles
        .list_by_display_name(t, "Ada", PageRequest::first(20))
        .await?;
    let patch = UserProfilePatch {
        display_name: Some("Ada L.".into()),
        email_address: None,
        last_seen_at: Some(5),
        recovery_code: Some(None),
    };
    let _: Option<UserProfile> = profiles.update(t, &"p1".to_owned(), patch).await?;
    Ok(())
}

fn main() {
    let _ = usage;
    let meta = <UserProfile as Entity>::META;
    assert_eq!(meta.name, "UserProfile");
    assert_eq!(meta.id_field, "profileId");
    assert_eq!(meta.tenant_field, "tenant");
    assert_eq!(meta.version_field, Some("rowVersion"));
    assert_eq!(
        meta.fields,
        &[
            "profileId",
            "tenant",
            "mail",
            "displayName",
            "lastSeenAt",
            "rowVersion",
            "legacy",
            "recoveryCode",
        ]
    );
    assert_eq!(meta.secret_fields, &["recoveryCode"]);
    assert_eq!(meta.consistency, Consistency::ReadYourWrites);
    let cache = meta.cache.unwrap();
    assert_eq!(cache.ttl, std::time::Duration::from_secs(90 * 60));
    assert_eq!(cache.jitter, std::time::Duration::ZERO);
    assert!(cache.local.is_none());
    let outbox = meta.outbox.unwrap();
    assert_eq!(outbox.topic, "profiles");
    assert_eq!(
        (outbox.insert, outbox.update, outbox.delete),
        (None, Some("profile.changed"), None)
    );

    let names: Vec<&str> = meta.indexes.iter().map(|i| i.name).collect();
    assert_eq!(
        names,
        [
            "tenant_1_displayName_1_lastSeenAt_-1",
            "tenant_1_legacy_1",
            "tenant_1_mail_1"
        ]
    );
    assert_eq!(
        meta.indexes[0].keys,
        &[
            IndexKey::asc("tenant"),
            IndexKey::asc("displayName"),
            IndexKey::desc("lastSeenAt"),
        ]
    );

    let f = UserProfile::fields();
    assert_eq!(f.email_address().name(), "mail");
    assert_eq!(f.profile_id().name(), "profileId");
    assert_eq!(f.row_version().name(), "rowVersion");

    let doc = caas_storage::repo::patch_document(&UserProfilePatch {
        email_address: Some("b@example.com".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(doc.get_str("mail").unwrap(), "b@example.com");
}
