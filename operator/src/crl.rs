//! A Gateway's certificate revocation list, kept in the ConfigMap
//! `<gateway>-crl`: `crl.pem`, signed by the gateway CA and mounted into
//! Mosquitto. The CRL is its own record of the entries (it is read back to
//! add to it or re-sign it), about 75 bytes per revoked certificate, so one
//! ConfigMap (1 MiB) holds some 13,000 of them. (Earlier versions also
//! kept a `revoked.json` copy, three times larger; it is still read, and
//! dropped at the next write.)
//!
//! This module is the CRL's state and how it is read from its ConfigMap,
//! pure (the plans and the stores use it); `writer` creates, re-signs and
//! adds to it through the API.

pub mod writer;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::pki::Revocation;
use crate::{Error, Result};

pub const CRL_KEY: &str = "crl.pem";
pub const ENTRIES_KEY: &str = "revoked.json";
const NUMBER_ANNOTATION: &str = "fleetward.io/crl-number";
const NEXT_UPDATE_ANNOTATION: &str = "fleetward.io/crl-next-update";
/// A CRL is valid this long; it is re-signed when half of it has passed.
const VALIDITY_DAYS: i64 = 30;

pub fn name(gateway: &str) -> String {
    format!("{gateway}-crl")
}

#[derive(Clone, Debug)]
pub struct CrlState {
    pub entries: Vec<Revocation>,
    pub number: u64,
    pub next_update: Timestamp,
    /// The entries' serials, for `contains`: every Device reconcile asks
    /// about its own serials, and a scan of a 10,000-entry list per ask
    /// made a burst's cost grow with the square of the fleet.
    serials: std::collections::HashSet<String>,
}

impl CrlState {
    pub fn new(entries: Vec<Revocation>, number: u64, next_update: Timestamp) -> Self {
        let serials = entries.iter().map(|e| e.serial.clone()).collect();
        Self {
            entries,
            number,
            next_update,
            serials,
        }
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    /// When the CRL should be re-signed.
    pub fn refresh_at(&self) -> Timestamp {
        self.next_update - SignedDuration::from_hours(24 * VALIDITY_DAYS / 2)
    }

    /// A new gateway's CRL, signed at `now`.
    pub fn empty(now: Timestamp) -> Self {
        Self::new(Vec::new(), 1, now + SignedDuration::from_hours(24 * VALIDITY_DAYS))
    }

    /// A lost CRL made again from `entries`, numbered after the last one
    /// known (`previous`), signed at `now`.
    pub fn rebuilt(entries: Vec<Revocation>, previous: u64, now: Timestamp) -> Self {
        Self::new(
            entries,
            previous + 1,
            now + SignedDuration::from_hours(24 * VALIDITY_DAYS),
        )
    }

    /// This CRL re-signed at `now`: same entries, the next number.
    pub fn resigned(&self, now: Timestamp) -> Self {
        Self::new(
            self.entries.clone(),
            self.number + 1,
            now + SignedDuration::from_hours(24 * VALIDITY_DAYS),
        )
    }
}

/// The number of a CRL ConfigMap, from its annotation.
pub fn number(cm: &ConfigMap) -> Option<u64> {
    cm.annotations().get(NUMBER_ANNOTATION)?.parse().ok()
}

/// Reads a CRL ConfigMap.
pub fn parse(cm: &ConfigMap) -> Result<CrlState> {
    let bad = |reason: String| Error::InvalidCrl {
        name: cm.name_any(),
        reason,
    };
    let data = cm.data.clone().unwrap_or_default();
    let entries = match (data.get(CRL_KEY), data.get(ENTRIES_KEY)) {
        (_, Some(json)) => serde_json::from_str(json).map_err(|e| bad(e.to_string()))?,
        (Some(pem), None) => crate::pki::crl_entries(pem).map_err(|e| bad(e.to_string()))?,
        (None, None) => Vec::new(),
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
    Ok(CrlState::new(entries, number, next_update))
}
