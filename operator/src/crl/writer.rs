//! Writes of a Gateway's CRL ConfigMap (see the parent module for what it
//! holds).
//!
//! Device reconcilers for many devices may revoke at the same time, so every
//! write is a read-modify-replace guarded by `resourceVersion`, retried on
//! conflict; nothing is lost when two revocations race. `Batcher` goes one
//! step further: concurrent revocations for one gateway queue up and are
//! written together, one CRL update (and one re-signing) for all of them.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use super::{
    CRL_KEY, CrlState, ENTRIES_KEY, HOLDERS_KEY, NEXT_UPDATE_ANNOTATION, NUMBER_ANNOTATION, RECORD_KEY, VALIDITY_DAYS,
    holders, merged, name, parse, record_of, record_text,
};
use crate::controllers::applier::create_once;
use crate::crd::Gateway;
use crate::ownership::{controller_of, labels, owner_ref};
use crate::pki::{CaBundle, Revocation};
use crate::{Error, Result};

const MAX_ATTEMPTS: u32 = 20;

/// Writes `state` (re-signed with the next CRL number) into `cm`.
fn render(cm: &mut ConfigMap, ca: &CaBundle, entries: Vec<Revocation>, number: u64) -> Result<CrlState> {
    let now = Timestamp::now();
    let pem = ca.sign_crl(&entries, number, now, VALIDITY_DAYS)?;
    let next_update = now + SignedDuration::from_hours(24 * VALIDITY_DAYS);
    let data = cm.data.get_or_insert_with(BTreeMap::new);
    let held = holders(data.get(HOLDERS_KEY).map_or("", String::as_str), &entries, now);
    data.insert(CRL_KEY.into(), pem);
    data.insert(HOLDERS_KEY.into(), held);
    data.remove(ENTRIES_KEY);
    let ann = cm.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(NUMBER_ANNOTATION.into(), number.to_string());
    ann.insert(NEXT_UPDATE_ANNOTATION.into(), next_update.to_string());
    Ok(CrlState::new(entries, number, next_update))
}

pub async fn load(api: &Api<ConfigMap>, gateway: &str) -> Result<Option<CrlState>> {
    api.get_opt(&name(gateway)).await?.as_ref().map(parse).transpose()
}

/// Creates the CRL with `create`'s entries and number (empty and 1 for a
/// new gateway; a lost CRL rebuilt), or without it re-signs the existing
/// one with `ca` (its validity half spent, or a new CA).
pub async fn write(
    api: &Api<ConfigMap>,
    gw: &Gateway,
    ca: &CaBundle,
    create: Option<(Vec<Revocation>, u64)>,
) -> Result<CrlState> {
    let gw_name = gw.name_any();
    let cm_name = name(&gw_name);
    if let Some((entries, number)) = create {
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(cm_name.clone()),
                labels: Some(labels(&[("fleetward.io/gateway", &gw_name)])),
                owner_references: Some(vec![owner_ref(gw)?]),
                ..Default::default()
            },
            ..Default::default()
        };
        let state = render(&mut cm, ca, entries, number)?;
        // Someone (a concurrent reconcile) created it first: use theirs
        // (`create_once` refused it if it is not this Gateway's).
        if create_once(api, &cm_name, &cm).await?.is_some() {
            return Ok(state);
        }
        let theirs = api
            .get_opt(&cm_name)
            .await?
            .ok_or(Error::MissingObjectKey("CRL ConfigMap vanished during creation"))?;
        return parse(&theirs);
    }
    modify(api, &gw_name, ca, |_entries, _state| true).await
}

/// Adds `revocations` (those not yet listed) and re-signs. Returns the new
/// state; an already-listed serial is not added twice.
pub async fn revoke(
    api: &Api<ConfigMap>,
    gateway: &str,
    ca: &CaBundle,
    revocations: &[Revocation],
) -> Result<CrlState> {
    modify(api, gateway, ca, |entries, _| {
        let before = entries.len();
        *entries = merged(std::mem::take(entries), revocations);
        entries.len() != before
    })
    .await
}

/// Queues revocations per gateway and writes each queue's contents as one
/// CRL update: under a thousand simultaneous revocations the CRL is
/// re-signed a handful of times instead of a thousand (each losing most
/// of its optimistic-concurrency races). `revoke` returns once the
/// revocation is in the stored CRL, so callers keep their ordering rules.
pub struct Batcher {
    client: kube::Client,
    queues: std::sync::Mutex<BTreeMap<(String, String), tokio::sync::mpsc::UnboundedSender<Queued>>>,
}

struct Queued {
    ca: CaBundle,
    entries: Vec<Revocation>,
    /// Revocations to record with the CA: those of a deleted Device.
    outlive: Vec<Revocation>,
    done: tokio::sync::oneshot::Sender<std::result::Result<CrlState, String>>,
}

/// Most revocations written in one CRL update.
const MAX_BATCH: usize = 5000;

impl Batcher {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            queues: Default::default(),
        }
    }

    pub async fn revoke(&self, ns: &str, gateway: &str, ca: &CaBundle, entries: Vec<Revocation>) -> Result<CrlState> {
        self.queue(ns, gateway, ca, entries, Vec::new()).await
    }

    /// `revoke` for a Device being deleted: `entries` and what its status
    /// remembers having had revoked (`history`) are also recorded with the
    /// CA, so a CRL rebuilt after the Device is gone still lists them.
    pub async fn revoke_deleted(
        &self,
        ns: &str,
        gateway: &str,
        ca: &CaBundle,
        entries: Vec<Revocation>,
        history: Vec<Revocation>,
    ) -> Result<CrlState> {
        let outlive = merged(entries.clone(), &history);
        self.queue(ns, gateway, ca, entries, outlive).await
    }

    async fn queue(
        &self,
        ns: &str,
        gateway: &str,
        ca: &CaBundle,
        entries: Vec<Revocation>,
        outlive: Vec<Revocation>,
    ) -> Result<CrlState> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let queued = Queued {
            ca: ca.clone(),
            entries,
            outlive,
            done,
        };
        {
            let mut queues = self.queues.lock().expect("crl queues");
            let key = (ns.to_string(), gateway.to_string());
            let sender = queues.entry(key).or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
                tokio::spawn(write_queued(api, secrets, gateway.to_string(), rx));
                tx
            });
            sender.send(queued).map_err(|_| Error::CrlWrite {
                gateway: gateway.to_string(),
                reason: "the CRL writer stopped".into(),
            })?;
        }
        answer
            .await
            .map_err(|_| Error::CrlWrite {
                gateway: gateway.to_string(),
                reason: "the CRL writer stopped".into(),
            })?
            .map_err(|reason| Error::CrlWrite {
                gateway: gateway.to_string(),
                reason,
            })
    }
}

async fn write_queued(
    api: Api<ConfigMap>,
    secrets: Api<Secret>,
    gateway: String,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Queued>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        // The newest request's CA signs (they agree unless the CA is being
        // replaced, and then the newest is the one to use).
        let ca = batch.last().expect("non-empty").ca.clone();
        let entries: Vec<Revocation> = batch.iter().flat_map(|q| q.entries.iter().cloned()).collect();
        let outlive: Vec<Revocation> = batch.iter().flat_map(|q| q.outlive.iter().cloned()).collect();
        let mut result = revoke(&api, &gateway, &ca, &entries).await.map_err(|e| e.to_string());
        if result.is_ok()
            && !outlive.is_empty()
            && let Err(e) = record(&secrets, &gateway, &outlive).await
        {
            result = Err(e.to_string());
        }
        tracing::debug!(
            gateway,
            requests = batch.len(),
            revocations = entries.len(),
            "CRL updated"
        );
        for q in batch {
            let _ = q.done.send(result.clone());
        }
    }
}

/// Adds `revocations` to the record in the Gateway's CA Secret (module
/// docs of `crl`): read, merge, replace guarded by `resourceVersion`,
/// retried on conflict. Without a CA Secret nothing trusts the
/// certificates any more, so there is nothing to record.
pub async fn record(secrets: &Api<Secret>, gateway: &str, revocations: &[Revocation]) -> Result<()> {
    let name = Gateway::ca_secret_name(gateway);
    for _ in 0..MAX_ATTEMPTS {
        let Some(mut secret) = secrets.get_opt(&name).await? else {
            return Ok(());
        };
        refuse_unless_gateways(&secret, "Secret", gateway)?;
        let before = record_of(&secret)?;
        let known = before.len();
        let after = merged(before, revocations);
        if after.len() == known {
            return Ok(());
        }
        secret
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(RECORD_KEY.into(), ByteString(record_text(&after).into_bytes()));
        match secrets.replace(&name, &PostParams::default(), &secret).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            // Past what one Secret holds the CRL (smaller per entry) is
            // full too, and its write already said so.
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("Too long") => {
                tracing::warn!(gateway, entries = after.len(), "the CA's revocation record is full");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict {
        name,
        attempts: MAX_ATTEMPTS,
    })
}

/// Read-modify-write with optimistic concurrency. `change` edits the entry
/// list and says whether anything must be written.
/// A CRL ConfigMap (or CA Secret) is only ever rewritten when it is this
/// Gateway's (an object someone else made under the name is never taken
/// over).
fn refuse_unless_gateways<K: kube::Resource>(obj: &K, kind: &str, gateway: &str) -> Result<()> {
    let ours = controller_of(obj).is_some_and(|r| r.kind == "Gateway" && r.name == gateway);
    if ours {
        return Ok(());
    }
    Err(Error::NameConflict {
        kind: kind.into(),
        name: obj.meta().name.clone().unwrap_or_default(),
        owner: format!("Gateway {gateway}"),
    })
}

async fn modify(
    api: &Api<ConfigMap>,
    gateway: &str,
    ca: &CaBundle,
    change: impl Fn(&mut Vec<Revocation>, &CrlState) -> bool,
) -> Result<CrlState> {
    let cm_name = name(gateway);
    for _ in 0..MAX_ATTEMPTS {
        let mut cm = api.get(&cm_name).await?;
        refuse_unless_gateways(&cm, "ConfigMap", gateway)?;
        let state = parse(&cm)?;
        let mut entries = state.entries.clone();
        if !change(&mut entries, &state) {
            return Ok(state);
        }
        let new_state = render(&mut cm, ca, entries, state.number + 1)?;
        match api.replace(&cm_name, &PostParams::default(), &cm).await {
            Ok(_) => return Ok(new_state),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("Too long") => {
                return Err(Error::CrlWrite {
                    gateway: gateway.to_string(),
                    reason: format!(
                        "{} revoked certificates no longer fit in ConfigMap {cm_name} (1 MiB); spread the devices \
                         over more Gateways",
                        new_state.entries.len()
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict {
        name: cm_name,
        attempts: MAX_ATTEMPTS,
    })
}
