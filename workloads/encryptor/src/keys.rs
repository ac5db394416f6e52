//! Where a keyring comes from: the file the operator mounts from the
//! keyring Secret (encryptor), or that Secret read through the Kubernetes
//! API (export CLI, with the caller's own credentials and RBAC).

use std::path::Path;

use fleetward_keyring::{Keyring, KeyringError, SECRET_DATA_KEY};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

#[derive(thiserror::Error, Debug)]
pub enum KeySourceError {
    #[error("cannot read keyring file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring from {from}: {source}")]
    Invalid {
        from: String,
        #[source]
        source: KeyringError,
    },
    #[error("--keyring-secret must be NAMESPACE/NAME, got {0:?}")]
    SecretRef(String),
    #[error("Kubernetes client (KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("cannot read Secret {ns}/{name}: {source}")]
    Get {
        ns: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {ns}/{name} has no key {key:?}")]
    MissingKey {
        ns: String,
        name: String,
        key: &'static str,
    },
}

pub fn from_file(path: &Path) -> Result<Keyring, KeySourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeySourceError::File {
        path: path.display().to_string(),
        source,
    })?;
    Keyring::from_json(&text).map_err(|source| KeySourceError::Invalid {
        from: path.display().to_string(),
        source,
    })
}

pub async fn from_secret(reference: &str) -> Result<Keyring, KeySourceError> {
    let (ns, name) = reference
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| KeySourceError::SecretRef(reference.to_string()))?;
    let client = Client::try_default().await.map_err(KeySourceError::Client)?;
    let secret = Api::<Secret>::namespaced(client, ns)
        .get(name)
        .await
        .map_err(|source| KeySourceError::Get {
            ns: ns.into(),
            name: name.into(),
            source,
        })?;
    let missing = || KeySourceError::MissingKey {
        ns: ns.into(),
        name: name.into(),
        key: SECRET_DATA_KEY,
    };
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(SECRET_DATA_KEY))
        .ok_or_else(missing)?;
    let text = String::from_utf8(bytes.0).map_err(|_| missing())?;
    Keyring::from_json(&text).map_err(|source| KeySourceError::Invalid {
        from: format!("Secret {ns}/{name}"),
        source,
    })
}
