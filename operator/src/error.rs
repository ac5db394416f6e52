//! The operator's error type. Messages name objects and reasons, never
//! Secret contents.

use crate::pki::PkiError;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),

    #[error("certificate error: {0}")]
    Pki(#[from] PkiError),

    #[error("Secret {name} is missing key {key}")]
    SecretMissingKey { name: String, key: String },

    #[error("ConfigMap {name} holds an unreadable revocation list: {reason}")]
    InvalidCrl { name: String, reason: String },

    #[error("gave up updating {name} after {attempts} conflicting writes")]
    Conflict { name: String, attempts: u32 },

    #[error("could not update the CRL of Gateway {gateway}: {reason}")]
    CrlWrite { gateway: String, reason: String },

    #[error("could not write the device-keys Secret {shard}: {reason}")]
    KeysWrite { shard: String, reason: String },

    #[error("the operator's caches are not ready: {0}")]
    Stores(#[from] crate::controllers::stores::StoresError),

    #[error(
        "{kind} {name} already exists and was not created by fleetward for {owner}: \
         fleetward does not take over objects it did not create; rename the {owner} or remove that {kind}"
    )]
    NameConflict { kind: String, name: String, owner: String },

    #[error("object has no {0}")]
    MissingObjectKey(&'static str),

    #[error("{0} does not exist yet")]
    NotYet(String),

    /// AWS refused or could not be reached (after the SDK's retries with
    /// backoff). The message is AWS's own; requests never carry secrets
    /// (only certificates, which are public, and policy documents).
    #[error("AWS IoT {operation} failed: {code}: {message}")]
    AwsIot {
        operation: &'static str,
        code: String,
        message: String,
    },

    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Pki(_) => "pki",
            Error::SecretMissingKey { .. } => "secret_missing_key",
            Error::InvalidCrl { .. } => "invalid_crl",
            Error::Conflict { .. } => "conflict",
            Error::CrlWrite { .. } => "crl_write",
            Error::KeysWrite { .. } => "keys_write",
            Error::Stores(_) => "stores",
            Error::NameConflict { .. } => "name_conflict",
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::NotYet(_) => "not_yet",
            Error::AwsIot { .. } => "aws_iot",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
