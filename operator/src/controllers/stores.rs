//! What the reconcilers observe, from memory instead of per-reconcile GETs:
//! reflector stores of the Gateways and of the Secrets and ConfigMaps the
//! operator manages (CAs, certificates, credentials, keyrings, CRLs),
//! filled by one watch each and shared by every controller.
//!
//! A store lags the API server by the watch latency. A reconcile must never
//! mistake its own write for something missing (it would issue a second
//! certificate), so `OwnWrites` (`stores/own_writes.rs`) keeps every Secret
//! this operator wrote until the store has caught up, and `secret` returns
//! whichever is newer.
//!
//! The Secrets watch is the only one in the operator: the controllers that
//! react to Secret changes subscribe to it (`secret_changes`) instead of
//! opening watches of their own, so every Secret event (a credentials
//! Secret, a keys shard of hundreds of entries) crosses the wire and is
//! decoded once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use self::own_writes::OwnWrites;
use crate::crd::Gateway;
use crate::crl::{self, CrlState};
use crate::ownership::MANAGED_BY;

mod own_writes;

/// A CRL and the ConfigMap resourceVersion it was parsed from.
type ParsedCrl = (String, Arc<CrlState>);

/// The highest CRL number seen per CRL ConfigMap.
type CrlNumbers = Arc<Mutex<HashMap<ObjectRef<ConfigMap>, u64>>>;

/// A change to a managed Secret, as the one Secrets watch saw it.
#[derive(Clone, Debug)]
pub enum SecretChange {
    Applied(Arc<Secret>),
    Deleted(Arc<Secret>),
}

impl SecretChange {
    pub fn secret(&self) -> &Secret {
        match self {
            Self::Applied(s) | Self::Deleted(s) => s,
        }
    }
}

type Subscribers<T> = Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<T>>>>;

#[derive(Clone)]
pub struct Stores {
    pub gateways: Store<Gateway>,
    pub secrets: Store<Secret>,
    pub configmaps: Store<ConfigMap>,
    own: Arc<OwnWrites>,
    subscribers: Subscribers<SecretChange>,
    configmap_subscribers: Subscribers<Arc<ConfigMap>>,
    /// Parsed CRLs by ConfigMap, with the resourceVersion they were parsed
    /// from.
    crls: Arc<Mutex<HashMap<ObjectRef<ConfigMap>, ParsedCrl>>>,
    /// The highest number of each CRL the watch has shown, kept after the
    /// ConfigMap is gone: a lost CRL is rebuilt with a higher number, even
    /// when the Gateway's status has not caught up with the last one.
    crl_numbers: CrlNumbers,
}

/// How long `start` waits for the first listing of every store.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

impl Stores {
    /// Starts one reflector per kind and waits until each has listed.
    pub async fn start(client: Client) -> Result<Self, StoresError> {
        let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let own: Arc<OwnWrites> = Arc::default();
        let subscribers: Subscribers<SecretChange> = Arc::default();
        let configmap_subscribers: Subscribers<Arc<ConfigMap>> = Arc::default();
        let gateways = reflect(Api::<Gateway>::all(client.clone()), watcher::Config::default(), |_| {});
        let (to, seen_by) = (subscribers.clone(), own.clone());
        let secrets = reflect(Api::<Secret>::all(client.clone()), managed.clone(), move |ev| {
            publish_secret_change(ev, &to, &seen_by)
        });
        let crl_numbers: CrlNumbers = Arc::default();
        let (seen, to) = (crl_numbers.clone(), configmap_subscribers.clone());
        let configmaps = reflect(Api::<ConfigMap>::all(client), managed, move |ev| {
            let cm = match ev {
                watcher::Event::Apply(cm) | watcher::Event::Delete(cm) => {
                    let cm = Arc::new(cm);
                    publish(&to, &cm);
                    cm
                }
                watcher::Event::InitApply(cm) => Arc::new(cm),
                _ => return,
            };
            if let Some(number) = crl::number(&cm) {
                let mut seen = seen.lock().expect("crl numbers");
                let highest = seen.entry(ObjectRef::from_obj(&cm)).or_default();
                *highest = (*highest).max(number);
            }
        });
        for (what, ready) in [
            ("Gateways", gateways.wait_until_ready().boxed()),
            ("Secrets", secrets.wait_until_ready().boxed()),
            ("ConfigMaps", configmaps.wait_until_ready().boxed()),
        ] {
            tokio::time::timeout(SYNC_TIMEOUT, ready)
                .await
                .map_err(|_| StoresError::NotSynced(what))?
                .map_err(|_| StoresError::NotSynced(what))?;
        }
        // Drop own writes the store has caught up with, so they do not
        // stay in memory until their object's next reconcile.
        let (sweep_own, sweep_store) = (Arc::downgrade(&own), secrets.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(own) = sweep_own.upgrade() else { return };
                own.sweep(&sweep_store);
            }
        });
        Ok(Self {
            gateways,
            secrets,
            configmaps,
            own,
            subscribers,
            configmap_subscribers,
            crls: Arc::default(),
            crl_numbers,
        })
    }

    /// The highest number the watch has shown for a gateway's CRL.
    pub fn last_crl_number(&self, ns: &str, gateway: &str) -> Option<u64> {
        let key = ObjectRef::new(&crl::name(gateway)).within(ns);
        self.crl_numbers.lock().expect("crl numbers").get(&key).copied()
    }

    /// Every change to or deletion of a managed ConfigMap from now on, seen
    /// after the store has it: a reconcile it wakes reads the store as the
    /// change left it (a separate watch could wake it before the store
    /// knows, and a lost CRL would look present).
    pub fn configmap_changes(&self) -> impl Stream<Item = Arc<ConfigMap>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.configmap_subscribers.lock().expect("subscribers").push(tx);
        tokio_stream_from(rx)
    }

    /// Every change to a managed Secret from now on (creations, updates and
    /// deletions, in the watch's order), for a controller's triggers.
    pub fn secret_changes(&self) -> impl Stream<Item = SecretChange> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.subscribers.lock().expect("subscribers").push(tx);
        tokio_stream_from(rx)
    }

    pub fn gateway(&self, ns: &str, name: &str) -> Option<Arc<Gateway>> {
        self.gateways.get(&ObjectRef::new(name).within(ns))
    }

    pub fn configmap(&self, ns: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.configmaps.get(&ObjectRef::new(name).within(ns))
    }

    /// A gateway's CRL, parsed once per version of its ConfigMap: every
    /// Device reconcile consults it, and parsing a CRL of thousands of
    /// entries each time would be a reconcile's largest cost. `None` when
    /// there is no CRL (yet); a CRL that cannot be read is an error, not
    /// cached.
    pub fn crl(&self, ns: &str, gateway: &str) -> Option<crate::Result<Arc<CrlState>>> {
        let cm = self.configmap(ns, &crl::name(gateway))?;
        let key = ObjectRef::from_obj(cm.as_ref());
        let version = cm.metadata.resource_version.clone().unwrap_or_default();
        let mut crls = self.crls.lock().expect("crl cache");
        if let Some((parsed_from, state)) = crls.get(&key)
            && *parsed_from == version
        {
            return Some(Ok(state.clone()));
        }
        let state = match crl::parse(&cm) {
            Ok(state) => Arc::new(state),
            Err(e) => return Some(Err(e)),
        };
        // One entry per gateway: a deleted gateway's goes with the next
        // change of any CRL.
        crls.retain(|k, _| self.configmaps.get(k).is_some());
        crls.insert(key, (version, state.clone()));
        Some(Ok(state))
    }

    /// A managed Secret as this operator last knows it: the store's copy,
    /// or the one it wrote itself if the store has not seen that yet.
    pub fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::new(name).within(ns);
        let stored = self.secrets.get(&key);
        self.own.newest(&key, stored)
    }

    /// Records a Secret this operator is about to write (before the
    /// request: its watch event may arrive before the answer does).
    pub fn writing_secret(&self, secret: &Secret, namespace: &str) {
        self.own.intend(secret, namespace);
    }

    /// Records a Secret this operator just wrote (the API server's answer).
    pub fn wrote_secret(&self, secret: Secret) {
        self.own.record(secret);
    }

    /// Records the answer to a patch whose result was not known in advance
    /// (a keys shard): the store's copy is replaced by it until the watch
    /// catches up, and its watch event carries no news.
    pub fn wrote_patched_secret(&self, secret: Secret) {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        self.own.intend(&secret, &ns);
        self.own.record(secret);
    }

    /// Records a Secret this operator is about to delete: its deletion is
    /// no news either (see `is_own_delete`).
    pub fn deleting_secret(&self, ns: &str, name: &str) {
        self.own.deleting(ObjectRef::new(name).within(ns));
    }

    /// True when the deletion of `secret` (a watch event) is one this
    /// operator made; asks once per deletion.
    pub fn is_own_delete(&self, secret: &Secret) -> bool {
        self.own.deleted(&ObjectRef::from_obj(secret))
    }

    /// True when `secret` (a watch event: created or changed, not deleted)
    /// holds exactly what this operator wrote or is writing: it carries no
    /// news for the reconciler that wrote it.
    pub fn is_own_write(&self, secret: &Secret) -> bool {
        self.own.is_own(secret)
    }
}

#[derive(thiserror::Error, Debug)]
pub enum StoresError {
    #[error("the {0} store did not finish its first listing within a minute; can the operator watch them?")]
    NotSynced(&'static str),
}

/// A reflector that runs until the process ends; its watch retries with
/// backoff on its own. `on_event` sees every event after the store has
/// applied it.
fn reflect<K>(api: Api<K>, config: watcher::Config, on_event: impl Fn(watcher::Event<K>) + Send + 'static) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .for_each(move |ev| {
            match ev {
                Ok(ev) => on_event(ev),
                Err(e) => tracing::debug!(error = %e, kind = K::kind(&()).as_ref(), "store watch"),
            }
            std::future::ready(())
        });
    tokio::spawn(stream);
    reader
}

/// What the Secrets reflector does with each event: hands the change to
/// the subscribers of `secret_changes` (a subscriber that went away is
/// dropped).
fn publish_secret_change(ev: watcher::Event<Secret>, subscribers: &Subscribers<SecretChange>, own: &OwnWrites) {
    let change = match ev {
        watcher::Event::Apply(s) => SecretChange::Applied(Arc::new(s)),
        watcher::Event::Delete(s) => {
            own.forget(&ObjectRef::from_obj(&s));
            SecretChange::Deleted(Arc::new(s))
        }
        _ => return,
    };
    publish(subscribers, &change);
}

/// Hands `item` to every subscriber; one that went away is dropped.
fn publish<T: Clone>(subscribers: &Subscribers<T>, item: &T) {
    subscribers
        .lock()
        .expect("subscribers")
        .retain(|tx| tx.send(item.clone()).is_ok());
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Drops what no reconciler reads from a cached object: managedFields
/// (often larger than the object) and kubectl's last-applied copy.
pub fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn crl_configmap(rv: &str, ca: &crate::pki::CaBundle, serials: &[&str]) -> ConfigMap {
        let revoked: Vec<crate::pki::Revocation> = serials
            .iter()
            .map(|s| crate::pki::Revocation {
                serial: s.to_string(),
                revoked_at: "2026-11-23T10:00:00Z".into(),
                subject: String::new(),
                reason: "cessationOfOperation".into(),
            })
            .collect();
        let pem = ca.sign_crl(&revoked, 1, jiff::Timestamp::now(), 30).unwrap();
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(crl::name("gw")),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            data: Some([(crl::CRL_KEY.to_string(), pem)].into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_crl_is_parsed_once_per_version_of_its_configmap() {
        let (gateways, _) = reflector::store::<Gateway>();
        let (secrets, _) = reflector::store::<Secret>();
        let (configmaps, mut writer) = reflector::store::<ConfigMap>();
        let stores = Stores {
            gateways,
            secrets,
            configmaps,
            own: Arc::default(),
            subscribers: Arc::default(),
            configmap_subscribers: Arc::default(),
            crls: Arc::default(),
            crl_numbers: Arc::default(),
        };
        assert!(stores.crl("ns", "gw").is_none(), "no CRL yet");
        let ca = crate::pki::generate_ca("test CA", 30).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(crl_configmap("5", &ca, &["0A"])));
        let first = stores.crl("ns", "gw").unwrap().unwrap();
        assert!(first.contains("0A"));
        let again = stores.crl("ns", "gw").unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same version is not parsed again");
        writer.apply_watcher_event(&watcher::Event::Apply(crl_configmap("6", &ca, &["0A", "0B"])));
        let newer = stores.crl("ns", "gw").unwrap().unwrap();
        assert!(
            !Arc::ptr_eq(&first, &newer) && newer.contains("0B"),
            "a new version is parsed"
        );
        let mut broken = crl_configmap("7", &ca, &[]);
        broken.data = Some([(crl::CRL_KEY.to_string(), "not a CRL".to_string())].into());
        writer.apply_watcher_event(&watcher::Event::Apply(broken));
        assert!(
            stores.crl("ns", "gw").unwrap().is_err(),
            "an unreadable CRL is an error"
        );
    }
}
