//! The device registry: every Device of this gateway with its category,
//! enabled flag and HMAC keys, read from the device-keys shard Secrets the
//! operator writes for this gateway (`<gw>-device-keys-NN`, see
//! `fleetward_credentials::keys`): no certificate, no private key.
//!
//! It is a Kubernetes watch rather than mounted files: a rotation or a
//! disable takes effect within the watch latency (well under a second), no
//! restart and no kubelet sync delay, and devices come and go without
//! changing the pod. The gateway's Role grants read access to those shard
//! Secrets by name and to no other Secret.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use fleetward_credentials::{DeviceKeys, KEYS_SHARDS, keys_secret_names};
use fleetward_protocol::Category;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

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

    /// Reads a device's entry of the keys shards (the contract of
    /// `fleetward_credentials::keys`). Errors name what is wrong, never values.
    pub fn from_keys(k: &DeviceKeys) -> Result<DeviceEntry, String> {
        let category = Category::parse(&k.category).ok_or("unknown category")?;
        Ok(DeviceEntry {
            category,
            enabled: k.enabled,
            key: k.hmac.clone().into_bytes(),
            previous_key: k.previous_hmac.clone().map(String::into_bytes),
            previous_expires: k.previous_expires.map(|t| t.timestamp()),
            version: k.version,
        })
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

    /// Every device's id and category.
    pub fn categories(&self) -> Vec<(String, Category)> {
        let devices = self.devices.read().expect("registry lock");
        devices.iter().map(|(id, e)| (id.clone(), e.category)).collect()
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

    /// Watches the gateway's device-keys shards until the streams end: one
    /// watch per shard Secret, by name, which is all its Role allows.
    pub async fn watch(
        self: Arc<Self>,
        client: Client,
        namespace: String,
        gateway: String,
        audit: Audit,
        metrics: Arc<Metrics>,
    ) {
        let api: Api<Secret> = Api::namespaced(client, &namespace);
        let streams = keys_secret_names(&gateway).into_iter().enumerate().map(|(i, name)| {
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            watcher(api.clone(), config)
                .default_backoff()
                .map(move |ev| (i, ev))
                .boxed()
        });
        let mut events = futures::stream::select_all(streams);
        let shards = KEYS_SHARDS as usize;
        // The devices each shard held when last read, so a device that
        // leaves its shard's Secret (or the whole Secret goes) is removed.
        let mut members: Vec<HashSet<String>> = vec![HashSet::new(); shards];
        // During a (re)list: the shard's Secret, if the listing had it.
        let mut relisting: Vec<Option<Option<Secret>>> = vec![None; shards];
        let mut loaded = vec![false; shards];
        while let Some((i, event)) = events.next().await {
            match event {
                Err(e) => tracing::warn!(error = %e, "device registry watch error; retrying"),
                Ok(watcher::Event::Init) => relisting[i] = Some(None),
                Ok(watcher::Event::InitApply(secret)) => {
                    if let Some(listed) = relisting[i].as_mut() {
                        *listed = Some(secret);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let listed = relisting[i].take().flatten();
                    self.load_shard(&mut members[i], listed.as_ref(), &audit, &metrics);
                    loaded[i] = true;
                    if loaded.iter().all(|l| *l) && !self.synced.swap(true, Ordering::AcqRel) {
                        tracing::info!(devices = self.len(), "device registry loaded");
                    }
                }
                Ok(watcher::Event::Apply(secret)) => self.load_shard(&mut members[i], Some(&secret), &audit, &metrics),
                Ok(watcher::Event::Delete(_)) => self.load_shard(&mut members[i], None, &audit, &metrics),
            }
        }
    }

    /// Makes the registry hold exactly the devices of one shard's Secret
    /// (none when it is gone).
    fn load_shard(&self, members: &mut HashSet<String>, secret: Option<&Secret>, audit: &Audit, metrics: &Metrics) {
        let fresh: HashMap<String, DeviceEntry> = secret
            .and_then(|s| s.data.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|(id, bytes)| parse(id, &bytes.0).map(|e| (id.clone(), e)))
            .collect();
        for gone in members.iter().filter(|id| !fresh.contains_key(*id)) {
            self.remove(gone, audit, metrics);
        }
        *members = fresh.keys().cloned().collect();
        for (id, entry) in fresh {
            self.upsert(id, entry, audit, metrics);
        }
    }
}

fn parse(device: &str, bytes: &[u8]) -> Option<DeviceEntry> {
    match DeviceKeys::from_bytes(bytes)
        .map_err(|e| e.to_string())
        .and_then(|k| DeviceEntry::from_keys(&k))
    {
        Ok(entry) => Some(entry),
        Err(reason) => {
            tracing::warn!(device, reason, "ignoring an unreadable device keys entry");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_credentials::Credentials;

    #[test]
    fn reads_the_operators_keys_layout() {
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
        let bytes = creds.gateway_keys().to_bytes();
        let e = parse("d1", &bytes).unwrap();
        assert_eq!(e.category, Category::SmartLock);
        assert!(!e.enabled);
        assert_eq!(e.version, 4);
        assert_eq!(e.key, b"new");
        assert!(e.previous_key_valid(1_893_456_000));
        assert!(!e.previous_key_valid(1_893_456_001));
        assert!(!format!("{e:?}").contains("new"));
    }
}
