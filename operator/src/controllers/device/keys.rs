//! A Device's entry in its Gateway's device-keys Secrets
//! (`fleetward_credentials::keys`): what the gateway workload needs to check
//! its messages, without the certificate and private key of the
//! credentials Secret. The gateway's ServiceAccount may read those shard
//! Secrets and no other Secret.
//!
//! Entries are written by a JSON merge patch of their data keys only, so
//! writers never conflict and no resourceVersion round trip is needed. The
//! `Batcher` writes the entries of many Devices in one patch per shard: one
//! write at a time per shard, at most one a second, and what arrives
//! meanwhile goes into the next one. Under a burst (10,000 Devices applied at once) a shard is written a
//! few hundred times instead of once per Device, and every write's watch
//! event (the whole shard) is sent to the gateway pod and the operator as
//! many times less. `project` returns once its entry is stored, so a
//! Device is Ready only when its gateway can check it.
//!
//! The shards themselves are the Gateway's (created by its reconciler,
//! owned by it); a Device writes into one only when that is so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use fleetward_credentials::{Credentials, keys_secret_name, keys_shard};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;

use crate::controllers::stores::Stores;
use crate::crd::Device;
use crate::ownership::{MANAGER, owner_ref, refuse_unless_owned};
use crate::{Error, Result};

/// Least time between two writes of one shard. A shard's first write goes
/// at once; under a burst the entries of the next interval go together.
/// Without a floor the batch size follows the API server's latency: a busy
/// server answered in tens of milliseconds, batches held one or two
/// entries, and each of some 10,000 writes stored (and sent to every
/// watcher) the whole shard again, which made the server busier still.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The entries waiting for one shard's next write, and who waits for them.
#[derive(Default)]
struct Shard {
    /// Device → its entry (`None`: remove it). A later entry for the same
    /// device replaces an earlier one not yet written.
    next: BTreeMap<String, Option<Vec<u8>>>,
    waiters: Vec<oneshot::Sender<std::result::Result<(), String>>>,
    /// Devices in the write under way.
    writing: HashSet<String>,
    busy: bool,
}

/// Batches device-key entries per shard (see the module documentation).
pub struct Batcher {
    client: Client,
    /// Where the shards are read from, and where each write's answer is
    /// recorded until the watch catches up.
    stores: Stores,
    shards: Mutex<HashMap<(String, String), Shard>>,
}

impl Batcher {
    pub fn new(client: Client, stores: Stores) -> Arc<Self> {
        Arc::new(Self {
            client,
            stores,
            shards: Mutex::default(),
        })
    }

    /// Writes (`Some`) or removes (`None`) the device's entry; no request
    /// when the shard already holds what is wanted.
    pub async fn project(self: &Arc<Self>, dev: &Device, ns: &str, creds: Option<&Credentials>) -> Result<()> {
        let name = dev.name_any();
        let gateway = &dev.spec.gateway_ref;
        let shard = keys_secret_name(gateway, keys_shard(&name));
        let want = creds.map(|c| c.gateway_keys().to_bytes());
        let Some(known) = self.stores.secret(ns, &shard) else {
            // Nothing to remove from a shard that is gone (its Gateway was
            // deleted); one still to come is waited for.
            return match want {
                None => Ok(()),
                Some(_) => Err(Error::NotYet(format!("Secret {shard} of Gateway {gateway}"))),
            };
        };
        match self.stores.gateway(ns, gateway) {
            Some(gw) => refuse_unless_owned(known.as_ref(), &owner_ref(gw.as_ref())?)?,
            None if want.is_none() => return Ok(()),
            None => return Err(Error::NotYet(format!("Gateway {gateway}"))),
        }
        let have = known.data.as_ref().and_then(|d| d.get(&name)).map(|b| &b.0);
        if have == want.as_ref() {
            return Ok(());
        }
        self.write(ns, &shard, name, want).await
    }

    /// True while `device`'s entry in `shard` is queued or being written:
    /// a shard that lacks it has not lost it.
    pub fn pending(&self, ns: &str, shard: &str, device: &str) -> bool {
        let shards = self.shards.lock().expect("keys batcher");
        shards
            .get(&(ns.to_string(), shard.to_string()))
            .is_some_and(|s| s.next.contains_key(device) || s.writing.contains(device))
    }

    async fn write(self: &Arc<Self>, ns: &str, shard: &str, device: String, entry: Option<Vec<u8>>) -> Result<()> {
        let (done, answer) = oneshot::channel();
        let key = (ns.to_string(), shard.to_string());
        let start = {
            let mut shards = self.shards.lock().expect("keys batcher");
            let s = shards.entry(key.clone()).or_default();
            s.next.insert(device, entry);
            s.waiters.push(done);
            !std::mem::replace(&mut s.busy, true)
        };
        if start {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            tokio::spawn(self.clone().writer(api, key));
        }
        let failed = |reason: String| Error::KeysWrite {
            shard: shard.to_string(),
            reason,
        };
        answer
            .await
            .map_err(|_| failed("the writer stopped".into()))?
            .map_err(failed)
    }

    /// Writes the shard's queued entries, one patch at a time, until none
    /// are left.
    async fn writer(self: Arc<Self>, api: Api<Secret>, key: (String, String)) {
        let shard = &key.1;
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let mut last_write: Option<tokio::time::Instant> = None;
        loop {
            if let Some(last) = last_write {
                tokio::time::sleep_until(last + MIN_INTERVAL).await;
            }
            let (entries, waiters) = {
                let mut shards = self.shards.lock().expect("keys batcher");
                let s = shards.get_mut(&key).expect("a busy shard is kept");
                if s.next.is_empty() {
                    shards.remove(&key);
                    return;
                }
                let entries = std::mem::take(&mut s.next);
                s.writing = entries.keys().cloned().collect();
                (entries, std::mem::take(&mut s.waiters))
            };
            last_write = Some(tokio::time::Instant::now());
            let only_removals = entries.values().all(Option::is_none);
            let data: serde_json::Map<String, serde_json::Value> = entries
                .into_iter()
                .map(|(device, entry)| (device, json!(entry.map(ByteString))))
                .collect();
            let result = match api.patch(shard, &params, &Patch::Merge(json!({"data": data}))).await {
                Ok(written) => {
                    self.stores.wrote_patched_secret(written);
                    Ok(())
                }
                // Removals from a shard that is gone: nothing left to remove.
                Err(kube::Error::Api(e)) if e.code == 404 && only_removals => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            tracing::debug!(shard, entries = data.len(), ok = result.is_ok(), "keys shard written");
            for w in waiters {
                let _ = w.send(result.clone());
            }
            if let Some(s) = self.shards.lock().expect("keys batcher").get_mut(&key) {
                s.writing.clear();
            }
        }
    }
}
