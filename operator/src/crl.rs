//! A Gateway's certificate revocation list, kept in the ConfigMap
//! `<gateway>-crl`: `crl.pem`, signed by the gateway CA and mounted into
//! Mosquitto. The CRL is its own record of the entries (it is read back to
//! add to it or re-sign it), about 75 bytes per revoked certificate, so one
//! ConfigMap (1 MiB) holds some 13,000 of them. (Earlier versions also
//! kept a `revoked.json` copy, three times larger; it is still read, and
//! dropped at the next write.)
//!
//! Beside it, `holders` names who held each certificate revoked in the
//! last day (`<serial> <device id>` lines): the gateway hands these to the
//! broker's plugin, which closes the sessions of those clients even when
//! they have done nothing since they connected (the plugin knows a
//! session's certificate only from its first publish or subscription).
//! Older holders are dropped; the CRL alone keeps refusing them.
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
pub use fleetward_protocol::broker::CRL_HOLDERS_KEY as HOLDERS_KEY;
/// How long a revocation's holder stays listed.
const HOLDERS_KEPT_HOURS: i64 = 24;
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

/// The `holders` text after a write of `entries` at `now`: those already
/// `listed` and those of `entries` that name their holder, kept while the
/// revocation is less than a day old (and listed in the CRL), sorted by
/// serial.
pub fn holders(listed: &str, entries: &[Revocation], now: Timestamp) -> String {
    let since = now - SignedDuration::from_hours(HOLDERS_KEPT_HOURS);
    let recent: std::collections::HashMap<&str, bool> = entries
        .iter()
        .map(|e| {
            let fresh = e.revoked_at.parse::<Timestamp>().is_ok_and(|t| t >= since);
            (e.serial.as_str(), fresh)
        })
        .collect();
    let mut held: std::collections::BTreeMap<&str, &str> = listed
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let pair = (words.next()?, words.next()?);
            words.next().is_none().then_some(pair)
        })
        .collect();
    for e in entries.iter().filter(|e| !e.subject.is_empty()) {
        held.insert(&e.serial, &e.subject);
    }
    held.retain(|serial, _| recent.get(serial).copied().unwrap_or(false));
    held.iter().map(|(serial, id)| format!("{serial} {id}\n")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: &str, at: &str, subject: &str) -> Revocation {
        Revocation {
            serial: serial.into(),
            revoked_at: at.into(),
            subject: subject.into(),
            reason: "cessationOfOperation".into(),
        }
    }

    #[test]
    fn holders_of_the_last_day_are_listed_and_older_ones_dropped() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let entries = [
            // Read back from the CRL: no subject; its holder was listed.
            entry("0A", "2026-12-07T11:00:00Z", ""),
            // A day and more ago: dropped.
            entry("0B", "2026-12-06T11:59:59Z", ""),
            // Just revoked.
            entry("0C", "2026-12-07T12:00:00Z", "lock-7"),
            // Revoked long ago, its holder named again: not listed.
            entry("0D", "2026-11-01T00:00:00Z", "meter-1"),
        ];
        let listed = "0A door-2\n0B door-3\nnot a line\n0E gone-from-the-crl\n";
        assert_eq!(holders(listed, &entries, now), "0A door-2\n0C lock-7\n");
        assert_eq!(holders("", &[], now), "");
    }
}
