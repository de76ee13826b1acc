//! One file per command group: each turns its arguments into runtime calls and a
//! [`Report`](super::output::Report).

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod cache;
pub(crate) mod health;
pub(crate) mod indexes;
pub(crate) mod migrate;
pub(crate) mod outbox;
pub(crate) mod queue;

use super::output::CliError;
use crate::tenant::TenantId;

/// `--tenant` as a [`TenantId`], or a usage error.
pub(crate) fn tenant(text: &str) -> Result<TenantId, CliError> {
    TenantId::new(text).map_err(|e| CliError::Usage {
        message: format!("--tenant {text:?}: {e}"),
    })
}
