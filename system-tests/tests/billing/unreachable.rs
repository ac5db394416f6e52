//! What the billing workload cannot reach (its database, the gateway's
//! command API) shows in the Tariff's condition, without the password.

use fleetward_operator::crd::Device;
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::{meter, start_billing_with, tariff_status, tariff_yaml};

/// What the billing workload cannot reach shows in the Tariff: its report
/// (`status.billing`) names the database or the gateway, and the operator
/// turns it into Ready=False with that reason. The database password never
/// appears in the status or the log.
#[tokio::test]
async fn an_unreachable_database_or_gateway_shows_in_the_tariffs_condition() {
    let names = [meter(0)];
    let specs: Vec<(&str, &str, &str)> = names.iter().map(|n| (n.as_str(), "electricityMeter", "")).collect();
    let h = Harness::start(Setup {
        prefix: "billing-down",
        devices: &specs,
        security: "",
        backend: false,
    })
    .await;
    let labels = json!({"metadata": {"labels": {
        "fleetward.io/property": "home-00",
        "fleetward.io/account": "acct-00",
        "fleetward.io/property-type": "residential",
    }}});
    h.ns.api::<Device>()
        .patch(&meter(0), &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    h.ns.apply_yaml(&tariff_yaml("home")).await;
    let ready_reason = |s: &Value| {
        s["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["reason"].as_str().map(str::to_string))
    };

    // A database nobody listens on, with a password in its URL.
    let password = "pw-never-shown-7d1c";
    let mut down = start_billing_with(
        &h,
        "home",
        &[(
            "DATABASE_URL",
            format!("postgres://fleetward:{password}@127.0.0.1:{}/fleetward", free_port()),
        )],
    )
    .await;
    let status = wait_for(
        "DatabaseUnreachable on the Tariff",
        60,
        || async { Some(tariff_status(&h, "home").await) },
        |s| ready_reason(s).as_deref() == Some("DatabaseUnreachable"),
    )
    .await;
    let error = status["billing"]["databaseError"].as_str().unwrap();
    assert!(error.contains("cannot reach the billing database"), "{error}");
    assert!(!status.to_string().contains(password), "{status}");
    assert!(!down.process.log_text().contains(password));
    down.process.kill9();

    // The database back, the gateway's API address closed: a run reports
    // the gateway, and the bill is estimated from telemetry.
    let billing = start_billing_with(
        &h,
        "home",
        &[("GATEWAY_URL", format!("https://127.0.0.1:{}", free_port()))],
    )
    .await;
    let (code, _) = billing.post("/api/v1/runs", json!({"period": "2026-11"})).await;
    assert!(code.is_success(), "{code}");
    let status = wait_for(
        "GatewayUnreachable on the Tariff",
        60,
        || async { Some(tariff_status(&h, "home").await) },
        |s| ready_reason(s).as_deref() == Some("GatewayUnreachable"),
    )
    .await;
    let error = status["billing"]["gatewayError"].as_str().unwrap();
    assert!(error.contains("cannot reach the gateway's command API"), "{error}");
    assert!(status["billing"].get("databaseError").is_none(), "{status}");
}
