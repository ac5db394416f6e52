//! The chart's alerting, end to end: Prometheus loads the rules and sends
//! to the chart's Alertmanager, which posts to the test's webhook receiver.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleetward_system_tests::webhook::AlertReceiver;
use fleetward_system_tests::*;
use fleetward_testkit::wait_until_blocking;

use crate::support::*;

/// The alert rules Prometheus has loaded, each with its health and last
/// evaluation.
fn alert_rules(prom: &str) -> Vec<serde_json::Value> {
    prometheus(prom, "/api/v1/rules?type=alert", None)["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Every rule of the chart's rules file is loaded, Prometheus has found
/// the Alertmanager, and nothing fires for this healthy namespace but
/// `FleetwardDeviceSilent`: the test's devices publish in bursts, minutes
/// apart, not at their cadence, so a silent device is right by then.
pub(crate) fn rules_loaded_and_quiet(ns: &str, prom: &str, figures: &mut Figures) {
    let file = std::fs::read_to_string(repo_root().join("helm/fleetward/alerts/fleetward.rules.yaml")).unwrap();
    let in_file = file.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert!(in_file >= 12, "the rules file has its alerts ({in_file})");
    assert_eq!(alert_rules(prom).len(), in_file, "Prometheus loaded every alert rule");
    wait_until_blocking(
        "Prometheus to find the Alertmanager",
        60,
        || {
            prometheus(prom, "/api/v1/alertmanagers", None)["data"]["activeAlertmanagers"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
        || prometheus(prom, "/api/v1/alertmanagers", None).to_string(),
    );
    let firing = prom_query(
        prom,
        &format!(r#"ALERTS{{alertstate="firing", namespace="{ns}", alertname!="FleetwardDeviceSilent"}}"#),
    );
    assert!(firing.is_empty(), "no alert fires for the healthy stack: {firing:?}");
    figures.add(format!("{in_file} alert rules loaded, none firing"));
}

/// How long the healthy idle stack is watched for alerts:
/// `FLEETWARD_E2E_QUIET_SECONDS`, ten minutes unless set.
pub(crate) fn quiet_seconds() -> u64 {
    match std::env::var("FLEETWARD_E2E_QUIET_SECONDS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("FLEETWARD_E2E_QUIET_SECONDS={v:?}: a number of seconds")),
        Err(_) => 600,
    }
}

/// A healthy stack left idle raises nothing. For `secs` from when the
/// examples are Ready (their devices have not connected yet), no alert of
/// the chart's rules is pending or firing, in any namespace, and nothing
/// reaches the webhook receiver; every rule is evaluated throughout and
/// healthy (a rule whose query fails is quiet for the wrong reason).
/// Prometheus keeps `ALERTS` for pending alerts too, so the last look, over
/// the whole window, also sees an alert that came and went between looks.
pub(crate) fn quiet_while_idle(prom: &str, receiver: &AlertReceiver, secs: u64, figures: &mut Figures) {
    let start = Instant::now();
    let alerts_in = |query: &str| -> BTreeSet<String> {
        prom_query(prom, query)
            .iter()
            .map(|a| {
                let m = &a["metric"];
                format!(
                    "{} ({}) namespace={} {}",
                    m["alertname"].as_str().unwrap_or("?"),
                    m["alertstate"].as_str().unwrap_or("?"),
                    m["namespace"].as_str().unwrap_or("-"),
                    m
                )
            })
            .collect()
    };
    let mut looks = 0;
    loop {
        let seen = alerts_in("ALERTS");
        assert!(
            seen.is_empty(),
            "an alert on the healthy idle stack {:.0} s into its quiet: {seen:#?}",
            start.elapsed().as_secs_f64()
        );
        assert_eq!(
            receiver.all(),
            "[]",
            "nothing reaches the receiver while the stack is idle"
        );
        looks += 1;
        let left = Duration::from_secs(secs).saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_secs(15)));
    }
    let window = alerts_in(&format!("max_over_time(ALERTS[{}s])", secs.max(1)));
    assert!(
        window.is_empty(),
        "an alert came and went on the idle stack: {window:#?}"
    );
    // Every rule evaluated lately, without error (`unknown` until its first
    // evaluation: a very short window may have to wait for that).
    let lately = |rule: &serde_json::Value| {
        rule["lastEvaluation"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| chrono::Utc::now().signed_duration_since(t) < chrono::Duration::seconds(120))
    };
    wait_until_blocking(
        "every alert rule evaluated lately and healthy",
        120,
        || {
            let rules = alert_rules(prom);
            !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok" && lately(r))
        },
        || format!("{:#?}", alert_rules(prom)),
    );
    let evaluated = alert_rules(prom).len();
    figures.add(format!(
        "healthy idle stack: no alert pending or firing for {secs} s ({looks} looks, {evaluated} rules evaluated and healthy), none at the receiver"
    ));
}

/// Points the StationFeed at a path its source answers 404.
pub(crate) fn break_the_feed(ns: &str) {
    kubectl(&[
        "-n",
        ns,
        "patch",
        "stationfeed",
        "dublin-bikes",
        "--type=merge",
        "-p",
        r#"{"spec":{"source":{"jcdecaux":{"baseUrl":"http://fleetward-station-api:8080/no-such-api"}}}}"#,
    ]);
}

/// The silent thermometer's alert and the broken feed's reach the webhook
/// (through Alertmanager), each with its Kubernetes names, both started
/// after `since` (the thermometer's earlier silences resolved when it
/// published again).
pub(crate) fn reach_the_receiver(ns: &str, receiver: &AlertReceiver, since: Instant, figures: &mut Figures) {
    let since_unix = chrono::Utc::now() - chrono::Duration::from_std(since.elapsed()).unwrap();
    let silent = [
        ("alertname", "FleetwardDeviceSilent"),
        ("namespace", ns),
        ("device", "thermo-001"),
        ("gateway", "edge"),
    ];
    let stale = [("alertname", "FleetwardStationFeedStale"), ("namespace", ns)];
    let mut at = [None, None];
    wait_until_blocking(
        "the silent device's and the broken feed's alerts at the webhook",
        300,
        || {
            for (i, labels) in [&silent[..], &stale[..]].into_iter().enumerate() {
                if at[i].is_none() && !receiver.firing_since(since_unix, labels).is_empty() {
                    at[i] = Some(since.elapsed().as_secs_f64());
                }
            }
            at.iter().all(Option::is_some)
        },
        || receiver.all(),
    );
    let alert = &receiver.firing_since(since_unix, &silent)[0];
    assert_eq!(alert["labels"]["category"], "indoorThermometer", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("thermo-001")),
        "{alert}"
    );
    let feed = &receiver.firing_since(since_unix, &stale)[0];
    assert!(
        feed["labels"]["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("dublin-bikes")),
        "{feed}"
    );
    figures.add(format!(
        "alerts at the webhook: device silent after {:.0} s (3 reports of 30 s), feed broken after {:.0} s",
        at[0].unwrap(),
        at[1].unwrap()
    ));
}
