//! A Gateway's certificate revocation list, kept in the ConfigMap
//! `<gateway>-crl`: `crl.pem` (signed by the gateway CA, mounted into
//! Mosquitto) and `revoked.json` (the entries, so the CRL can be re-signed).
//!
//! Device reconcilers for many devices may revoke at the same time, so every
//! write is a read-modify-replace guarded by `resourceVersion`, retried on
//! conflict; nothing is lost when two revocations race.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use crate::context::{labels, owner_ref};
use crate::crd::Gateway;
use crate::pki::{CaBundle, Revocation};
use crate::{Error, Result};

pub const CRL_KEY: &str = "crl.pem";
pub const ENTRIES_KEY: &str = "revoked.json";
const NUMBER_ANNOTATION: &str = "fleetward.io/crl-number";
const NEXT_UPDATE_ANNOTATION: &str = "fleetward.io/crl-next-update";
/// A CRL is valid this long; it is re-signed when half of it has passed.
const VALIDITY_DAYS: i64 = 30;
const MAX_ATTEMPTS: u32 = 20;

pub fn name(gateway: &str) -> String {
    format!("{gateway}-crl")
}

#[derive(Clone, Debug)]
pub struct CrlState {
    pub entries: Vec<Revocation>,
    pub number: u64,
    pub next_update: Timestamp,
}

impl CrlState {
    pub fn contains(&self, serial: &str) -> bool {
        self.entries.iter().any(|e| e.serial == serial)
    }

    /// When the CRL should be re-signed.
    pub fn refresh_at(&self) -> Timestamp {
        self.next_update - SignedDuration::from_hours(24 * VALIDITY_DAYS / 2)
    }
}

fn parse(cm: &ConfigMap) -> Result<CrlState> {
    let bad = |reason: String| Error::InvalidCrl {
        name: cm.name_any(),
        reason,
    };
    let data = cm.data.clone().unwrap_or_default();
    let entries = match data.get(ENTRIES_KEY) {
        Some(json) => serde_json::from_str(json).map_err(|e| bad(e.to_string()))?,
        None => Vec::new(),
    };
    let ann = cm.annotations();
    let number = ann
        .get(NUMBER_ANNOTATION)
        .map(|n| n.parse().map_err(|_| bad(format!("bad {NUMBER_ANNOTATION}"))))
        .transpose()?
        .unwrap_or(0);
    let next_update = ann
        .get(NEXT_UPDATE_ANNOTATION)
        .map(|t| t.parse().map_err(|_| bad(format!("bad {NEXT_UPDATE_ANNOTATION}"))))
        .transpose()?
        .unwrap_or(Timestamp::UNIX_EPOCH);
    Ok(CrlState {
        entries,
        number,
        next_update,
    })
}

/// Writes `state` (re-signed with the next CRL number) into `cm`.
fn render(cm: &mut ConfigMap, ca: &CaBundle, entries: Vec<Revocation>, number: u64) -> Result<CrlState> {
    let now = Timestamp::now();
    let pem = ca.sign_crl(&entries, number, now, VALIDITY_DAYS)?;
    let next_update = now + SignedDuration::from_hours(24 * VALIDITY_DAYS);
    let data = cm.data.get_or_insert_with(BTreeMap::new);
    data.insert(CRL_KEY.into(), pem);
    data.insert(
        ENTRIES_KEY.into(),
        serde_json::to_string_pretty(&entries).expect("entries serialize"),
    );
    let ann = cm.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(NUMBER_ANNOTATION.into(), number.to_string());
    ann.insert(NEXT_UPDATE_ANNOTATION.into(), next_update.to_string());
    Ok(CrlState {
        entries,
        number,
        next_update,
    })
}

pub async fn load(api: &Api<ConfigMap>, gateway: &str) -> Result<Option<CrlState>> {
    api.get_opt(&name(gateway)).await?.as_ref().map(parse).transpose()
}

/// Creates the (empty) CRL of a new gateway, or re-signs an existing one
/// whose validity is half spent.
pub async fn ensure(api: &Api<ConfigMap>, gw: &Gateway, ca: &CaBundle) -> Result<CrlState> {
    let gw_name = gw.name_any();
    let cm_name = name(&gw_name);
    if api.get_opt(&cm_name).await?.is_none() {
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(cm_name.clone()),
                labels: Some(labels(&[("fleetward.io/gateway", &gw_name)])),
                owner_references: Some(vec![owner_ref(gw)?]),
                ..Default::default()
            },
            ..Default::default()
        };
        let state = render(&mut cm, ca, Vec::new(), 1)?;
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => return Ok(state),
            // Someone (a concurrent reconcile) created it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    modify(api, &gw_name, ca, |_entries, state| {
        Timestamp::now() >= state.refresh_at()
    })
    .await
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
        let mut changed = false;
        for r in revocations {
            if !entries.iter().any(|e| e.serial == r.serial) {
                entries.push(r.clone());
                changed = true;
            }
        }
        changed
    })
    .await
}

/// Read-modify-write with optimistic concurrency. `change` edits the entry
/// list and says whether anything must be written.
async fn modify(
    api: &Api<ConfigMap>,
    gateway: &str,
    ca: &CaBundle,
    change: impl Fn(&mut Vec<Revocation>, &CrlState) -> bool,
) -> Result<CrlState> {
    let cm_name = name(gateway);
    for _ in 0..MAX_ATTEMPTS {
        let mut cm = api.get(&cm_name).await?;
        let state = parse(&cm)?;
        let mut entries = state.entries.clone();
        if !change(&mut entries, &state) {
            return Ok(state);
        }
        let new_state = render(&mut cm, ca, entries, state.number + 1)?;
        match api.replace(&cm_name, &PostParams::default(), &cm).await {
            Ok(_) => return Ok(new_state),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict {
        name: cm_name,
        attempts: MAX_ATTEMPTS,
    })
}
