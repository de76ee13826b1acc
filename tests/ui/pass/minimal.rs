//! The smallest entity: database, collection, an id and a tenant. Defaults: strong consistency,
//! schema version 1, no cache, no outbox, hard deletes, no declared index.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "sessions")]
pub struct Session {
    #[repository(id)]
    pub session_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
}

#[allow(dead_code)]
async fn usage(storage: &Storage, t: &TenantId) -> caas_storage::Result<()> {
    let sessions = SessionRepository::new(storage);
    let s = Session {
        session_id: "s1".into(),
        tenant_id: t.to_string(),
    };
    sessions.insert(t, &s).await?;
    let _: Option<Session> = sessions.find_by_id(t, &s.session_id).await?;
    let _: Option<Session> = sessions.update(t, &s.session_id, SessionPatch {}).await?;
    Ok(())
}

fn main() {
    let _ = usage;
    let meta = <Session as Entity>::META;
    assert_eq!(meta.name, "Session");
    assert_eq!(meta.fields, &["session_id", "tenant_id"]);
    assert!(meta.secret_fields.is_empty());
    assert!(meta.indexes.is_empty());
    assert_eq!(meta.version_field, None);
    assert_eq!(meta.schema_version, 1);
    assert_eq!(meta.consistency, Consistency::Strong);
    assert!(!meta.soft_delete);
    assert!(meta.cache.is_none());
    assert!(meta.outbox.is_none());
    let s = Session {
        session_id: "s1".into(),
        tenant_id: "t".into(),
    };
    assert_eq!(s.version(), None);
    assert!(s.local_cache_clone().is_none());
    assert_eq!(Session::fields().session_id().name(), "session_id");
    let doc = caas_storage::repo::patch_document(&SessionPatch::default()).unwrap();
    assert!(doc.is_empty());
}
