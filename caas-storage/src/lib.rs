//! caas-storage: typed, tenant-scoped data access for multi-tenant services on MongoDB, Redis
//! and Kafka.
//!
//! A service annotates its structs with `#[derive(Repository)]` and gets a typed repository
//! whose every call is scoped to a tenant, consistent as declared, and indexed as declared.
//! Everything the generated code does, it does by delegating to [`Repository<E>`], the one
//! executor, over the pools of a [`Storage`] handle.
//!
//! ```ignore
//! use caas_storage::prelude::*;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Repository)]
//! #[repository(database = "caas_auth", collection = "users", consistency = strong)]
//! #[index(keys(email), unique)]
//! pub struct User {
//!     #[repository(id)] pub user_id: String,
//!     #[repository(tenant)] pub tenant_id: String,
//!     pub email: String,
//! }
//!
//! let storage = Storage::connect(StorageConfig::from_env()?).await?;
//! storage.sync_indexes::<User>().await?;
//! let users = UserRepository::new(&storage);
//! let t = TenantId::new("tenant_123")?;
//! let u = users.find_by_email(&t, "a@example.com").await?;
//! ```
//!
//! Where things are: [`config`] (settings), [`Storage`] (the handle), [`capabilities`] (what
//! the server supports), [`health`], [`tenant`], [`consistency`], [`cache`], [`outbox`],
//! [`write_behind`] (the `eventual` queue), [`index`] (declared indexes and their sync),
//! [`repo`] (the executor: the write pipeline, queries, patches, paging), [`entity`] (what the
//! derive generates), [`driver`] (the driver crates, for [`Storage::raw`]).

#![deny(missing_docs)]

pub mod cache;
pub mod capabilities;
pub mod config;
mod connection;
pub mod consistency;
mod document;
pub mod entity;
pub mod error;
pub mod health;
mod hex;
pub mod index;
pub mod outbox;
pub mod repo;
mod storage;
pub mod tenant;
pub mod write_behind;

pub use caas_storage_derive::Repository;
pub use capabilities::Capabilities;
pub use config::StorageConfig;
#[cfg(feature = "testing")]
pub use connection::FaultPoint;
pub use connection::RedisConnection;
pub use consistency::{CausalToken, Consistency};
pub use document::{DELETED_AT_FIELD, OP_FIELD, SCHEMA_VERSION_FIELD};
pub use entity::{Entity, Queueable};
pub use error::{Error, Result};
pub use health::{HealthReport, HealthStatus};
pub use repo::{Cursor, Filter, Page, PageRequest, Patch, Query, Repository};
pub use storage::{RawClients, Storage, StorageBuilder};
pub use tenant::TenantId;

/// Re-export of the BSON crate the driver uses (for `DateTime`, `oid::ObjectId`, raw filters).
pub use mongodb::bson;

/// The driver crates, re-exported for what [`Storage::raw`] hands out: use them through here
/// so your versions always match the runtime's.
pub mod driver {
    pub use mongodb;
    pub use rdkafka;
    pub use redis;
}

/// Everything a service needs in scope: `use caas_storage::prelude::*;`.
pub mod prelude {
    pub use crate::bson::DateTime;
    pub use crate::{
        Consistency, Cursor, Entity, Error, Filter, Page, PageRequest, Patch, Repository, Result,
        Storage, StorageConfig, TenantId,
    };
    pub use serde::{Deserialize, Serialize};
}

/// What generated code uses. Not a public API: names here change without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::consistency::Consistency;
    pub use crate::entity::Queueable;
    pub use crate::entity::{
        CacheSpec, CacheStrategy, Entity, EntityMeta, LocalCacheSpec, OutboxSpec,
    };
    pub use crate::error::{Error, Result};
    pub use crate::index::{IndexKey, IndexSpec, SortDirection};
    pub use crate::repo::{Field, Filter, Page, PageRequest, Patch, PatchWriter, Repository, Sort};
    pub use crate::storage::Storage;
    pub use crate::tenant::TenantId;
    pub use core::time::Duration;
    pub use mongodb::bson::DateTime;
    pub use serde;

    /// Integer types a `#[repository(version)]` field may have.
    pub trait VersionField: Copy {
        /// As `u64` (negative values read as 0).
        fn to_u64(self) -> u64;
        /// From `u64`, saturating at the type's maximum.
        fn from_u64(v: u64) -> Self;
    }

    macro_rules! version_field {
        ($($t:ty),*) => {$(
            impl VersionField for $t {
                fn to_u64(self) -> u64 {
                    u64::try_from(self).unwrap_or(0)
                }
                fn from_u64(v: u64) -> Self {
                    <$t>::try_from(v).unwrap_or(<$t>::MAX)
                }
            }
        )*};
    }
    version_field!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);
}
