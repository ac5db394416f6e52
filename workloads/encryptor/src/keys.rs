//! Where a keyring comes from: the file the operator mounts from the
//! keyring Secret (encryptor), or that Secret read through the Kubernetes
//! API (export CLI, with the caller's own credentials and RBAC); and the
//! keyring a running encryptor uses, reloaded when that file changes.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleetward_keyring::{Keyring, KeyringError, SECRET_DATA_KEY};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::metrics::Metrics;

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

/// The keyring in use; replaced when its file changes (rotation).
#[derive(Clone)]
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    pub fn new(k: Keyring) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(k))))
    }
    pub fn current(&self) -> Arc<Keyring> {
        self.0.read().expect("keyring lock").clone()
    }
    pub fn replace(&self, k: Keyring) {
        *self.0.write().expect("keyring lock") = Arc::new(k);
    }
}

/// Re-reads the keyring file every `every`. A Kubernetes Secret volume is
/// updated in place by the kubelet, so a rotation reaches a running
/// encryptor without a restart. An unreadable or invalid file keeps the
/// keyring in use (and is counted): better stale than stopped.
pub async fn watch_keyring_file(
    path: std::path::PathBuf,
    keyring: SharedKeyring,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    let mut last = std::fs::read_to_string(&path).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read keyring; keeping the loaded one");
                metrics.errors.with_label_values(&["keyring"]).inc();
                continue;
            }
        };
        if last.as_ref() == Some(&text) {
            continue;
        }
        match Keyring::from_json(&text) {
            Ok(k) => {
                let old = keyring.current();
                // A keyring that dropped the key in use would strand rows
                // being written; still take it (the operator never does this,
                // a person may have), but say so.
                if k.fernet_key(old.primary_id()).is_none() {
                    tracing::warn!(
                        old = old.primary_id(),
                        "new keyring no longer contains the previous primary key"
                    );
                }
                tracing::info!(primary = k.primary_id(), keys = k.key_ids().len(), "keyring reloaded");
                metrics.set_primary(k.primary_id());
                metrics.keyring_reloads.inc();
                keyring.replace(k);
                last = Some(text);
            }
            Err(e) => {
                tracing::warn!(error = %e, "changed keyring is invalid; keeping the loaded one");
                metrics.errors.with_label_values(&["keyring"]).inc();
            }
        }
    }
}
