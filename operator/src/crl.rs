//! A Gateway's certificate revocation list, kept in the ConfigMap
//! `<gateway>-crl`: `crl.pem`, signed by the gateway CA and mounted into
//! Mosquitto. The CRL is its own record of the entries (it is read back to
//! add to it or re-sign it), about 75 bytes per revoked certificate, so one
//! ConfigMap (1 MiB, `holders` taking up to 100 KB of it) holds some
//! 11,500 of them. (Earlier versions also
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
//! A Device's revocations are also kept in its status, from which a lost
//! CRL is rebuilt; a deleted Device takes its status with it, so its
//! revocations are recorded with the Gateway's CA (key `revocations.json`
//! of the CA Secret, see [`RECORD_KEY`]): they matter exactly as long as
//! that CA, and a lost CRL is rebuilt from both.
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
/// Most holders listed (the newest revocations'), about 100 KB: the CRL
/// shares the ConfigMap's 1 MiB.
const MAX_HOLDERS: usize = 2000;
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

/// The key of a Gateway's CA Secret listing the revocations that outlive
/// their Devices: a line `<serial> <unix seconds> <CRL reason code>` each,
/// about 55 bytes (a CRL entry takes 75), so the record fits wherever the
/// CRL does.
pub const RECORD_KEY: &str = "revoked";

/// The record's text for `entries`.
pub fn record_text(entries: &[Revocation]) -> String {
    entries
        .iter()
        .map(|e| {
            let at = e.revoked_at.parse::<Timestamp>().map(|t| t.as_second()).unwrap_or(0);
            let code = match e.reason.as_str() {
                "keyCompromise" => 1,
                "superseded" => 4,
                _ => 5,
            };
            format!("{} {at} {code}\n", e.serial)
        })
        .collect()
}

/// The revocations recorded in a CA Secret (none when it has no record;
/// an unreadable line is an error: rebuilding a CRL without it would bring
/// a revoked certificate back).
pub fn record_of(ca_secret: &k8s_openapi::api::core::v1::Secret) -> Result<Vec<Revocation>> {
    let Some(bytes) = ca_secret.data.as_ref().and_then(|d| d.get(RECORD_KEY)) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| Error::InvalidCrl {
        name: format!("{} ({RECORD_KEY})", ca_secret.name_any()),
        reason,
    };
    let text = std::str::from_utf8(&bytes.0).map_err(|e| bad(e.to_string()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let [serial, at, code] = words[..] else {
                return Err(bad(format!("line {l:?}")));
            };
            let at: i64 = at.parse().map_err(|_| bad(format!("time in {l:?}")))?;
            let at = Timestamp::from_second(at).map_err(|e| bad(e.to_string()))?;
            let reason = match code {
                "1" => "keyCompromise",
                "4" => "superseded",
                _ => "cessationOfOperation",
            };
            Ok(Revocation {
                serial: serial.to_string(),
                revoked_at: at.to_string(),
                subject: String::new(),
                reason: reason.into(),
            })
        })
        .collect()
}

/// `entries` with those of `more` whose serial is not among them yet.
pub fn merged(mut entries: Vec<Revocation>, more: &[Revocation]) -> Vec<Revocation> {
    let mut listed: std::collections::HashSet<String> = entries.iter().map(|e| e.serial.clone()).collect();
    for r in more {
        if listed.insert(r.serial.clone()) {
            entries.push(r.clone());
        }
    }
    entries
}

/// The `holders` text after a write of `entries` at `now`: those already
/// `listed` and those of `entries` that name their holder, kept while the
/// revocation is less than a day old (and listed in the CRL), at most
/// `MAX_HOLDERS` of the newest, sorted by serial.
pub fn holders(listed: &str, entries: &[Revocation], now: Timestamp) -> String {
    let since = now - SignedDuration::from_hours(HOLDERS_KEPT_HOURS);
    let recent: std::collections::HashMap<&str, Timestamp> = entries
        .iter()
        .filter_map(|e| {
            let at = e.revoked_at.parse::<Timestamp>().ok()?;
            (at >= since).then_some((e.serial.as_str(), at))
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
    held.retain(|serial, _| recent.contains_key(serial));
    if held.len() > MAX_HOLDERS {
        let mut newest: Vec<(&str, Timestamp)> = held.keys().map(|s| (*s, recent[s])).collect();
        newest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let keep: std::collections::HashSet<&str> = newest.iter().take(MAX_HOLDERS).map(|(s, _)| *s).collect();
        held.retain(|serial, _| keep.contains(serial));
    }
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
    fn merging_keeps_the_first_entry_of_a_serial() {
        let a = entry("0A", "2026-12-07T11:00:00Z", "d1");
        let b = entry("0B", "2026-12-07T11:00:00Z", "d2");
        let again = entry("0A", "2026-12-01T00:00:00Z", "");
        assert_eq!(merged(vec![a.clone()], &[again, b.clone()]), vec![a, b]);
    }

    #[test]
    fn a_record_is_written_and_read_back_from_the_ca_secret() {
        use k8s_openapi::ByteString;
        let mut secret = k8s_openapi::api::core::v1::Secret::default();
        assert!(record_of(&secret).unwrap().is_empty());
        let mut superseded = entry("0B", "2026-12-01T08:30:00Z", "");
        superseded.reason = "superseded".into();
        let entries = vec![entry("0A", "2026-12-07T11:00:00Z", "d1"), superseded];
        let text = record_text(&entries);
        assert_eq!(text, "0A 1796641200 5\n0B 1796113800 4\n");
        let with = |t: &[u8]| Some([(RECORD_KEY.to_string(), ByteString(t.to_vec()))].into_iter().collect());
        secret.data = with(text.as_bytes());
        let back = record_of(&secret).unwrap();
        // The subject is not kept: a CRL does not need it.
        assert_eq!(back[0], entry("0A", "2026-12-07T11:00:00Z", ""));
        assert_eq!(back[1].reason, "superseded");
        assert_eq!(back[1].revoked_at, "2026-12-01T08:30:00Z");
        secret.data = with(b"0A 12");
        assert!(record_of(&secret).is_err());
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
        // Past the cap, the newest revocations' holders stay.
        let many: Vec<Revocation> = (0..MAX_HOLDERS + 5)
            .map(|i| {
                entry(
                    &format!("{i:04X}"),
                    &(now - SignedDuration::from_secs(i as i64)).to_string(),
                    "d",
                )
            })
            .collect();
        let text = holders("", &many, now);
        assert_eq!(text.lines().count(), MAX_HOLDERS);
        assert!(text.contains("0000 d\n") && !text.contains(&format!("{:04X} d\n", MAX_HOLDERS + 4)));
    }
}
