//! Why a registry change was refused: [`RegistryError`], by kind, for callers that
//! branch on it (the admin API maps each kind to an HTTP status).

use crate::runtime::ComponentError;
use crate::store::StoreError;

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("service {name:?} does not exist")]
    UnknownService { name: String },
    #[error(
        "service {service:?} has no version {version:?}; `microhost versions {service}` lists them"
    )]
    UnknownVersion { service: String, version: String },
    #[error("{0}")]
    InvalidVersion(String),
    #[error("{0}")]
    Component(#[from] ComponentError),
    #[error(
        "version {label:?} of service {service:?} exists with different content \
         (sha256 {existing_sha256}); deploy under a new version label"
    )]
    VersionConflict {
        service: String,
        label: String,
        existing_sha256: String,
    },
    /// The version fails its health check or smoke request.
    #[error("version {version:?} of service {service:?} is not healthy: {reason}")]
    Unhealthy {
        service: String,
        version: String,
        reason: String,
    },
    /// The change does not apply to the current state (nothing to promote or roll back).
    #[error("{0}")]
    Refused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        RegistryError::Internal(e.to_string())
    }
}
