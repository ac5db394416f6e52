//! The device registry: every Device of this gateway with its category,
//! enabled flag and HMAC keys, read from the credential Secrets the operator
//! writes (`<device>-credentials`, labelled `fleetward.io/gateway=<gw>`).
//!
//! It is a Kubernetes watch rather than mounted files: a rotation or a
//! disable takes effect within the watch latency (well under a second), no
//! restart and no kubelet sync delay, and devices come and go without
//! changing the pod. The cost is read access to Secrets in the namespace
//! (a Role the operator creates for the gateway's ServiceAccount).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use fleetward_credentials::Credentials;
use fleetward_protocol::Category;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::audit::{Audit, AuditEvent};
use crate::metrics::Metrics;

/// What the gateway knows about one device.
#[derive(Clone, PartialEq)]
pub struct DeviceEntry {
    pub category: Category,
    pub enabled: bool,
    pub key: Vec<u8>,
    pub previous_key: Option<Vec<u8>>,
    /// Unix seconds until which `previous_key` is accepted.
    pub previous_expires: Option<i64>,
    pub version: i64,
}

impl std::fmt::Debug for DeviceEntry {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEntry")
            .field("category", &self.category)
            .field("enabled", &self.enabled)
            .field("version", &self.version)
            .field("previous_expires", &self.previous_expires)
            .finish_non_exhaustive()
    }
}

impl DeviceEntry {
    pub fn previous_key_valid(&self, now: i64) -> bool {
        self.previous_key.is_some() && self.previous_expires.is_some_and(|t| now <= t)
    }

    /// Reads a credential Secret (the contract of `fleetward_credentials`).
    /// Errors name what is wrong, never values.
    pub fn from_secret(secret: &Secret) -> Result<(String, DeviceEntry), String> {
        let c = Credentials::from_secret(secret).map_err(|e| e.to_string())?;
        let category = Category::parse(&c.category).ok_or("unknown category")?;
        Ok((
            c.device,
            DeviceEntry {
                category,
                enabled: c.enabled,
                key: c.hmac.into_bytes(),
                previous_key: c.previous_hmac.map(String::into_bytes),
                previous_expires: c.previous_expires.map(|t| t.timestamp()),
                version: c.version,
            },
        ))
    }
}

#[derive(Default)]
pub struct Registry {
    devices: RwLock<HashMap<String, DeviceEntry>>,
    synced: AtomicBool,
}

impl Registry {
    pub fn get(&self, device_id: &str) -> Option<DeviceEntry> {
        self.devices.read().expect("registry lock").get(device_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.devices.read().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the first full listing has been loaded.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Inserts or replaces an entry; reports what changed for the audit.
    fn upsert(&self, id: String, entry: DeviceEntry, audit: &Audit, metrics: &Metrics) {
        let mut map = self.devices.write().expect("registry lock");
        match map.get(&id) {
            Some(old) if *old == entry => return,
            Some(old) => {
                if old.version != entry.version {
                    metrics.key_reloads.inc();
                    audit.record(
                        AuditEvent::new("key_reload")
                            .device(&id)
                            .detail(format!("secret version {}", entry.version)),
                    );
                }
                if old.enabled != entry.enabled {
                    let ev = if entry.enabled {
                        "device_enabled"
                    } else {
                        "device_disabled"
                    };
                    audit.record(AuditEvent::new(ev).device(&id));
                }
            }
            None => {
                if self.synced() {
                    audit.record(AuditEvent::new("device_added").device(&id));
                }
            }
        }
        map.insert(id, entry);
        metrics.devices.set(map.len() as i64);
    }

    fn remove(&self, id: &str, audit: &Audit, metrics: &Metrics) {
        let mut map = self.devices.write().expect("registry lock");
        if map.remove(id).is_some() {
            audit.record(AuditEvent::new("device_removed").device(id));
        }
        metrics.devices.set(map.len() as i64);
    }

    /// Watches the gateway's device Secrets until the stream ends.
    pub async fn watch(
        self: Arc<Self>,
        client: Client,
        namespace: String,
        gateway: String,
        audit: Audit,
        metrics: Arc<Metrics>,
    ) {
        let api: Api<Secret> = Api::namespaced(client, &namespace);
        let selector = fleetward_credentials::gateway_selector(&gateway);
        let stream = watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut relist: Option<HashMap<String, DeviceEntry>> = None;
        loop {
            let event = match stream.try_next().await {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "device registry watch error; retrying");
                    continue;
                }
            };
            match event {
                watcher::Event::Init => relist = Some(HashMap::new()),
                watcher::Event::InitApply(secret) => {
                    if let (Some(map), Some((id, entry))) = (relist.as_mut(), parse(&secret)) {
                        map.insert(id, entry);
                    }
                }
                watcher::Event::InitDone => {
                    let fresh = relist.take().unwrap_or_default();
                    let gone: Vec<String> = {
                        let map = self.devices.read().expect("registry lock");
                        map.keys().filter(|k| !fresh.contains_key(*k)).cloned().collect()
                    };
                    for id in gone {
                        self.remove(&id, &audit, &metrics);
                    }
                    for (id, entry) in fresh {
                        self.upsert(id, entry, &audit, &metrics);
                    }
                    if !self.synced.swap(true, Ordering::AcqRel) {
                        tracing::info!(devices = self.len(), "device registry loaded");
                    }
                }
                watcher::Event::Apply(secret) => {
                    if let Some((id, entry)) = parse(&secret) {
                        self.upsert(id, entry, &audit, &metrics);
                    }
                }
                watcher::Event::Delete(secret) => {
                    if let Some(id) = secret.labels().get("fleetward.io/device") {
                        self.remove(id, &audit, &metrics);
                    }
                }
            }
        }
    }
}

fn parse(secret: &Secret) -> Option<(String, DeviceEntry)> {
    match DeviceEntry::from_secret(secret) {
        Ok(v) => Some(v),
        Err(reason) => {
            tracing::warn!(secret = %secret.name_any(), reason, "ignoring unreadable device credentials");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_operator_secret_layout() {
        let creds = Credentials {
            device: "d1".into(),
            gateway: "gw".into(),
            category: "smartLock".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            ca_pem: "CA".into(),
            hmac: "new".into(),
            previous_hmac: Some("old".into()),
            previous_expires: Some("2030-01-01T00:00:00Z".parse().unwrap()),
            previous_serial: None,
            version: 4,
            rotation: 1,
            enabled: false,
        };
        let secret = creds.to_secret(Default::default(), None);
        let (id, e) = DeviceEntry::from_secret(&secret).unwrap();
        assert_eq!(id, "d1");
        assert_eq!(e.category, Category::SmartLock);
        assert!(!e.enabled);
        assert_eq!(e.version, 4);
        assert_eq!(e.key, b"new");
        assert!(e.previous_key_valid(1_893_456_000));
        assert!(!e.previous_key_valid(1_893_456_001));
        assert!(!format!("{e:?}").contains("new"));
    }
}
