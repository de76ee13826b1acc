//! Generated code is warning-free and documented: this crate denies warnings, missing docs, a
//! few stricter rustc lints and clippy's pedantic group (checked when clippy runs on it), and
//! declares entities that are private, crate-visible and public, with nothing of their
//! generated API used.

#![deny(
    warnings,
    missing_docs,
    missing_debug_implementations,
    unused,
    rust_2018_idioms,
    unused_qualifications,
    trivial_casts,
    unused_results,
    let_underscore_drop
)]
#![deny(clippy::pedantic)]

use caas_storage::prelude::*;

/// A public entity in a public module.
pub mod accounts {
    use caas_storage::prelude::*;

    /// An account.
    #[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_billing", collection = "accounts", consistency = causal,
                 cache(ttl = "10m", strategy = write_through, local(ttl = "1s", capacity = 100)),
                 outbox(topic = "billing.events"))]
    #[index(keys(handle), unique)]
    #[index(keys(owner, opened_at desc))]
    pub struct Account {
        /// Id.
        #[repository(id)]
        pub account_id: String,
        /// Tenant.
        #[repository(tenant)]
        pub tenant_id: String,
        /// Public handle.
        pub handle: String,
        /// Owner.
        pub owner: String,
        /// Opened at.
        pub opened_at: DateTime,
        /// Balance.
        #[repository(version)]
        pub revision: i64,
        /// Not visible outside this module.
        pub(crate) internal_note: String,
        /// Private.
        secret_code: Option<String>,
    }

    impl Account {
        /// Reads the private field, so it is not dead code.
        #[must_use]
        pub fn secret_code(&self) -> Option<&str> {
            self.secret_code.as_deref()
        }
    }
}

/// A crate-visible entity.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_audit", collection = "events", consistency = eventual)]
#[index(keys(kind))]
pub(crate) struct Event {
    #[repository(id)]
    uid: String,
    #[repository(tenant)]
    tenant_id: String,
    kind: String,
    #[repository(unique)]
    sequence: i64,
}

/// A private entity, in a private module, with no finders and no patchable fields.
mod private {
    use caas_storage::prelude::*;

    #[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
    #[repository(database = "caas_misc", collection = "markers")]
    struct Marker {
        #[id]
        marker_id: String,
        #[tenant]
        tenant_id: String,
    }

    /// Constructs the private entity, so it is not dead code.
    pub(super) fn marker_id() -> String {
        let m = Marker {
            marker_id: "m1".into(),
            tenant_id: "t".into(),
        };
        assert_eq!(m.tenant_id, "t");
        m.marker_id
    }
}

fn main() {
    let event = Event {
        uid: "e1".into(),
        tenant_id: "t".into(),
        kind: "login".into(),
        sequence: 1,
    };
    assert_eq!(event.id(), "e1");
    assert_eq!(event.tenant_id, "t");
    assert_eq!(event.kind, "login");
    assert_eq!(event.sequence, 1);
    assert_eq!(event.uid, "e1");
    let meta = <accounts::Account as Entity>::META;
    let outbox = meta.outbox.expect("outbox");
    assert_eq!(outbox.insert, Some("account.created"));
    assert_eq!(outbox.update, Some("account.updated"));
    assert_eq!(outbox.delete, Some("account.deleted"));
    assert_eq!(meta.version_field, Some("revision"));
    assert_eq!(private::marker_id(), "m1");
}
