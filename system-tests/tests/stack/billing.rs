//! Step 5 of the end-to-end test: the example residential Tariff
//! (`examples/billing/tariff.yaml`) with its billing workload as a pod.
//!
//! The Tariff becomes Ready (its Secrets there, the workload reaching its
//! database and the Gateway, the pod available); the workload stores
//! meter-001's readings from the Gateway's Kafka topic; a run requested
//! with the `fleetward.io/bill-period` annotation reads meter-001 through
//! the gateway pod's command API (the simulated meter answers `read_meter`
//! with its register), so its bill is not estimated; the report lands in
//! `status.billing`; the bill is served by the API through the Service's
//! address with the key from `<tariff>-billing-api`, and counted in the
//! pod's `/metrics`.

use std::time::Instant;

use fleetward_system_tests::*;
use fleetward_testkit::{http_status, wait_until_blocking};

use crate::{Figures, RELEASE};

const TARIFF: &str = "residential-2026";
/// The example Device the residential Tariff bills (examples/20-devices.yaml).
const METER: &str = "meter-001";

/// Applies the Tariff and bills the current month; `meter_readings` is how
/// many readings meter-001 has published so far (all must be stored first).
pub fn bill_the_month(ns: &str, meter_readings: usize, figures: &mut Figures) {
    let t = Instant::now();
    kubectl_apply(&example_in("billing/tariff.yaml", ns));
    ready(ns, "tariffs", 180);
    figures.add(format!(
        "Tariff applied -> Ready, its billing pod available: {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    // The run bills what is stored: wait for meter-001's readings (the
    // consumer starts at the topic's beginning, so none is missed).
    let stored = || {
        psql(
            ns,
            RELEASE,
            &format!(
                "SELECT count(*) FROM fleetward_billing.readings WHERE namespace = '{ns}' AND device_id = '{METER}'"
            ),
        )
        .trim()
        .parse::<usize>()
        .unwrap_or(0)
    };
    wait_until_blocking(
        "meter-001's readings stored by the billing workload",
        120,
        || stored() >= meter_readings,
        || format!("{} of {meter_readings} stored\n{}", stored(), pods(ns)),
    );

    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let t = Instant::now();
    kubectl(&[
        "-n",
        ns,
        "annotate",
        "tariff",
        TARIFF,
        &format!("fleetward.io/bill-period={period}"),
        "--overwrite",
    ]);
    let report = |field: &str| jsonpath(ns, &["tariff", TARIFF], &format!("{{.status.billing.{field}}}"));
    // The example Tariff waits up to 30 s for a meter's answer.
    wait_until_blocking(
        "the requested run reported in status.billing",
        120,
        || report("lastRunPeriod") == period,
        || {
            format!(
                "{}\n{}",
                kubectl_try(&["-n", ns, "get", "tariff", TARIFF, "-o", "yaml"]).1,
                kubectl_try(&["-n", ns, "logs", &format!("deployment/{TARIFF}-billing"), "--tail=30"]).1
            )
        },
    );
    let bills: i64 = report("lastRunBills").parse().expect("lastRunBills");
    let estimated: i64 = report("lastRunEstimated").parse().expect("lastRunEstimated");
    figures.add(format!(
        "bill-period {period} requested -> run reported: {:.1} s ({bills} bill, {estimated} estimated)",
        t.elapsed().as_secs_f64()
    ));
    assert!(bills >= 1, "meter-001 is billed");
    assert_eq!(estimated, 0, "meter-001 answered read_meter through the gateway pod");
    for field in ["lastError", "databaseError", "gatewayError"] {
        assert_eq!(report(field), "", "status.billing.{field}");
    }

    // The API, through the Service's address, with the Tariff's key.
    let service = format!("{TARIFF}-billing");
    let address = jsonpath(ns, &["service", &service], "{.spec.clusterIP}");
    let key = kubectl(&[
        "-n",
        ns,
        "get",
        "secret",
        &format!("{TARIFF}-billing-api"),
        "-o",
        r#"go-template={{index .data "api-key" | base64decode}}"#,
    ]);
    let url = format!("http://{address}:8080/api/v1/bills?period={period}");
    let (code, _) = http_status(&url, None);
    assert_eq!(code, 401, "the billing API refuses a request without its key");
    let (code, body) = http_status(&url, Some(key.trim()));
    assert_eq!(code, 200, "GET {url}: {body}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a JSON array of bills");
    let bill = listed
        .iter()
        .find(|b| b["device_id"] == METER)
        .unwrap_or_else(|| panic!("no bill for {METER}: {body}"));
    assert_eq!(bill["tariff"], TARIFF, "{bill}");
    assert_eq!(bill["period"], period, "{bill}");
    assert_eq!(bill["account_id"], "owner-0001", "{bill}");
    assert_eq!(bill["property"], "flat-4b", "{bill}");
    assert_eq!(bill["currency"], "EUR", "{bill}");
    assert_eq!(bill["estimated"], false, "{bill}");
    let total: f64 = bill["total"].as_str().and_then(|t| t.parse().ok()).expect("total");
    // At least the meter rent, with VAT.
    assert!(total >= 2.5, "{bill}");

    // The pod's own /metrics counts the bill (Prometheus is checked later
    // with every other workload).
    let (code, metrics) = http_status(&format!("http://{address}:9090/metrics"), None);
    assert_eq!(code, 200);
    let generated: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                r#"fleetward_billing_bills_generated_total{{tariff="{TARIFF}"}}"#
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("fleetward_billing_bills_generated_total in /metrics:\n{metrics}"));
    assert!(generated >= 1.0, "bills generated: {generated}");
}
