//! Indexes: the specs an entity declares, and syncing them to the server.
//!
//! Every entity gets a unique index on `(tenant, id)`. Every declared index starts with the
//! tenant key, which the derive prepends, so tenant-scoped queries use them; the exception is a
//! TTL index, which MongoDB allows on one field only and which is about expiry, not lookup.

mod spec;
mod sync;

pub use spec::{IndexKey, IndexSpec, SortDirection};
pub(crate) use sync::{create_missing, sync_indexes, IndexTarget};
pub use sync::{IndexChange, IndexPlan, SyncOptions};
