//! Devices' liveness in `kubectl get devices`: the gateway writes each
//! Device's `status.online` and `status.lastSeen` (paced, never once per
//! message), and the table shows them.

use std::time::Instant;

use chrono::{DateTime, Utc};
use fleetward_system_tests::*;
use fleetward_testkit::wait_until_blocking;

use crate::support::*;

fn status(ns: &str, device: &str) -> (String, Option<DateTime<Utc>>) {
    let online = jsonpath(ns, &["device", device], "{.status.online}");
    let last_seen = jsonpath(ns, &["device", device], "{.status.lastSeen}");
    (
        online,
        DateTime::parse_from_rfc3339(&last_seen).ok().map(|t| t.to_utc()),
    )
}

fn yaml(ns: &str, device: &str) -> String {
    kubectl_try(&["-n", ns, "get", "device", device, "-o", "yaml"]).1
}

/// `device` just published: it is online, seen within the gateway's
/// resolution (a minute for a small fleet), and the table shows both columns.
pub(crate) fn online_after_publishing(ns: &str, device: &str, figures: &mut Figures) {
    let t = Instant::now();
    wait_until_blocking(
        &format!("{device} online in its status"),
        60,
        || status(ns, device).0 == "true",
        || yaml(ns, device),
    );
    let took = t.elapsed().as_secs_f64();
    let (_, seen) = status(ns, device);
    let seen = seen.unwrap_or_else(|| panic!("{device} has a lastSeen: {}", yaml(ns, device)));
    let age = (Utc::now() - seen).num_seconds();
    // At most the resolution (60 s) behind the last message, plus a sweep
    // (10 s), plus the time since the last message (the step before ends
    // by reading the rows back); CI saw 58 s. Far under what a five-minute
    // or a per-restart-only lastSeen would give.
    assert!((-5..=150).contains(&age), "lastSeen {seen} is {age} s old");
    let table = kubectl(&["-n", ns, "get", "devices"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("ONLINE") && header.contains("LASTSEEN"), "{table}");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(device))
        .unwrap_or_else(|| panic!("{device} in\n{table}"));
    assert!(row.split_whitespace().any(|c| c == "true"), "{row}");
    figures.add(format!(
        "{device} online in `kubectl get devices` {took:.0} s after publishing (lastSeen {age} s old)"
    ));
}

/// `device`, silent since `since`, is offline with a `lastSeen` before
/// that; `never` (a Device that never published) has neither.
pub(crate) fn offline_when_silent(ns: &str, device: &str, since: Instant, never: &str, figures: &mut Figures) {
    let since_utc = Utc::now() - chrono::Duration::from_std(since.elapsed()).unwrap();
    wait_until_blocking(
        &format!("{device} offline in its status"),
        60,
        || status(ns, device).0 == "false",
        || yaml(ns, device),
    );
    let offline_after = since.elapsed().as_secs_f64();
    let (_, seen) = status(ns, device);
    let seen = seen.unwrap_or_else(|| panic!("{device} keeps its lastSeen: {}", yaml(ns, device)));
    assert!(
        seen <= since_utc + chrono::Duration::seconds(1),
        "lastSeen {seen} after the silence began ({since_utc})"
    );
    // Long past three of its reports since it was made: still nothing
    // written for a Device that never connected (a new fleet costs no
    // writes until it connects).
    assert_eq!(status(ns, never), (String::new(), None), "{never}: {}", yaml(ns, never));
    figures.add(format!(
        "{device} offline in `kubectl get devices` {offline_after:.0} s into its silence; nothing written for a device that never connected"
    ));
}
