//! caas-storage: typed, tenant-scoped data access for multi-tenant services on MongoDB, Redis
//! and Kafka.
//!
//! Start with [`Storage::connect`] and a [`StorageConfig`]; the derive macro and the
//! repositories build on that handle.

#![deny(missing_docs)]

pub mod capabilities;
pub mod config;
pub mod error;
pub mod health;
pub mod storage;
pub mod tenant;

pub use capabilities::Capabilities;
pub use config::StorageConfig;
pub use error::{Error, Result};
pub use health::{HealthReport, HealthStatus};
pub use storage::Storage;
pub use tenant::TenantId;
