//! The billing run end to end: twenty meters read through the gateway, two
//! switched off and estimated, a forged answer ignored; then the API (re-run,
//! payments, defaulters, CSV, bad input, authentication, rate limit) and the
//! HTML bill screenshotted by headless Chromium.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use fleetward_operator::crd::Device;
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;
use kube::api::{Patch, PatchParams};
use reqwest::StatusCode;
use serde_json::json;

use crate::{METERS, SWITCHED_OFF, meter, start_billing, tariff_status, tariff_yaml};

#[tokio::test]
async fn meters_are_read_through_the_gateway_billed_and_paid() {
    let names: Vec<String> = (0..=METERS).map(meter).collect();
    let specs: Vec<(&str, &str, &str)> = names.iter().map(|n| (n.as_str(), "electricityMeter", "")).collect();
    let h = Harness::start(Setup {
        prefix: "billing",
        devices: &specs,
        security: "",
        backend: false,
    })
    .await;
    // Meters 0..21 are residential properties of their own accounts; the
    // last one (the attacker) is a commercial meter this Tariff does not
    // select.
    let devices = h.ns.api::<Device>();
    for (i, n) in names.iter().enumerate() {
        let kind = if i == METERS { "commercial" } else { "residential" };
        let labels = json!({"metadata": {"labels": {
            "fleetward.io/property": format!("home-{i:02}"),
            "fleetward.io/account": format!("acct-{i:02}"),
            "fleetward.io/property-type": kind,
        }}});
        devices
            .patch(n, &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .unwrap();
    }
    h.ns.apply_yaml(&tariff_yaml("home")).await;
    let billing = start_billing(&h, "home").await;

    // Every meter publishes three readings; the register is cumulative.
    let mut connected = Vec::new();
    let mut first = HashMap::new();
    let mut last = HashMap::new();
    for n in &names {
        let (dev, events) = h.device(n).await;
        for k in 0..3 {
            let payload = dev.reading();
            let kwh = payload["kwh_total"].as_f64().unwrap();
            if k == 0 {
                first.insert(n.clone(), kwh);
            }
            last.insert(n.clone(), kwh);
            let env = dev.envelope(&payload);
            dev.publish(&fleetward_protocol::data_topic(n), env.to_json().into_bytes())
                .await
                .unwrap();
        }
        connected.push((dev, events));
    }
    let readings = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM fleetward_billing.readings WHERE namespace = $1")
            .bind(&h.ns.name)
            .fetch_one(&h.db)
            .await
            .unwrap_or(0);
        n
    };
    wait_until("all readings stored by billing", 60, || async {
        readings().await >= 3 * (METERS as i64 + 1)
    })
    .await;
    // Billing took them because the gateway signed them. A reading put on
    // the gateway's topic by anything else (here: a pod that reaches Kafka)
    // is not a reading, whatever it claims: neither unsigned nor signed
    // with a key of its own.
    forge_readings_on_the_topic(&h, &billing).await;
    for i in SWITCHED_OFF {
        connected[i].0.stop().await;
    }

    // A run on request: the annotation.
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let tariffs = h.ns.dynamic("fleetward.io/v1alpha1", "Tariff");
    let ann = json!({"metadata": {"annotations": {"fleetward.io/bill-period": period}}});
    tariffs
        .patch("home", &PatchParams::default(), &Patch::Merge(&ann))
        .await
        .unwrap();
    // While the run waits for the switched-off meters, the attacker quotes
    // meter-21's command id (from the gateway's audit) in a reading of its
    // own, with a register far above meter-21's.
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim_command = loop {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT message_id FROM fleetward_gateway.gateway_audit \
             WHERE namespace = $1 AND event = 'command_sent' AND device_id = 'meter-21' LIMIT 1",
        )
        .bind(&h.ns.name)
        .fetch_optional(&h.db)
        .await
        .unwrap();
        if let Some(id) = id {
            break id;
        }
        assert!(Instant::now() < deadline, "no read_meter command sent to meter-21");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attacker = &connected[METERS].0;
    let forged = attacker.envelope(&json!({"kwh_total": 999_999.0, "reply_to": victim_command}));
    attacker
        .publish(
            &fleetward_protocol::data_topic(&meter(METERS)),
            forged.to_json().into_bytes(),
        )
        .await
        .unwrap();

    let status = wait_for(
        "the run's report in the Tariff's status",
        60,
        || async { Some(tariff_status(&h, "home").await) },
        |s| s["billing"]["lastRunPeriod"] == json!(period) && s["billing"]["lastRunBills"].is_i64(),
    )
    .await;
    let report = &status["billing"];
    assert_eq!(report["lastRunBills"], json!(METERS), "{report}");
    assert_eq!(report["lastRunEstimated"], json!(2), "{report}");
    assert_eq!(report["handledRequest"], json!(period));
    assert!(
        report.get("gatewayError").is_none() && report.get("databaseError").is_none(),
        "{report}"
    );

    let (code, bills) = billing.get(&format!("/api/v1/bills?period={period}")).await;
    assert_eq!(code, StatusCode::OK, "{bills}");
    let bills = bills.as_array().unwrap().clone();
    assert_eq!(bills.len(), METERS);
    let mut expected_total = rust_decimal_sum(&[]);
    for b in &bills {
        let dev = b["device_id"].as_str().unwrap();
        let i: usize = dev.trim_start_matches("meter-").parse().unwrap();
        let off = SWITCHED_OFF.contains(&i);
        assert_eq!(b["estimated"], json!(off), "{dev}: {b}");
        assert_eq!(b["account_id"], json!(format!("acct-{i:02}")));
        // Answered or not, the end register is the meter's last: the
        // answer repeats the register, the estimate takes the last reading.
        let end: f64 = b["end_kwh"].as_str().unwrap().parse().unwrap();
        let start: f64 = b["start_kwh"].as_str().unwrap().parse().unwrap();
        assert!((end - last[dev]).abs() < 1e-6, "{dev}: end {end} vs {}", last[dev]);
        assert!(
            (start - first[dev]).abs() < 1e-6,
            "{dev}: start {start} vs {}",
            first[dev]
        );
        let units: f64 = b["units"].as_str().unwrap().parse().unwrap();
        assert!((units - (end - start)).abs() < 1e-6);
        expected_total = rust_decimal_sum(&[expected_total.as_str(), b["total"].as_str().unwrap()]);
    }
    assert_eq!(report["lastRunTotal"], json!(expected_total));
    // The forged answer counted for nobody: meter-21 is estimated at its
    // own last reading, and the attacker has no bill under this Tariff.
    assert!(bills.iter().all(|b| b["device_id"] != json!(meter(METERS))));

    // Re-running the period changes nothing (through the API this time).
    let (code, started) = billing.post("/api/v1/runs", json!({"period": period})).await;
    assert!(
        code == StatusCode::ACCEPTED || code == StatusCode::CREATED,
        "{code} {started}"
    );
    let rerun = wait_for(
        "the re-run",
        60,
        || async {
            let (_, runs) = billing.get(&format!("/api/v1/runs?period={period}")).await;
            runs.as_array().and_then(|r| {
                r.iter()
                    .find(|r| r["trigger"] == "api" && !r["finished_at"].is_null())
                    .cloned()
            })
        },
        |_| true,
    )
    .await;
    assert_eq!(
        (rerun["bills"].clone(), rerun["unchanged"].clone()),
        (json!(0), json!(METERS)),
        "{rerun}"
    );
    let (_, all) = billing
        .get(&format!("/api/v1/bills?period={period}&revisions=all"))
        .await;
    assert_eq!(all.as_array().unwrap().len(), METERS, "no duplicate, no revision");

    // A payment in full marks the bill paid; the other accounts, unpaid
    // past the due date, are the defaulters.
    let paid = &bills[0];
    let id = paid["id"].as_str().unwrap();
    let (code, res) = billing
        .post(
            &format!("/api/v1/bills/{id}/payments"),
            json!({"amount": paid["total"], "method": "card", "reference": "txn-0001"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{res}");
    assert_eq!(res["bill"]["status"], "paid");
    let due = chrono::NaiveDate::parse_from_str(paid["due_date"].as_str().unwrap(), "%Y-%m-%d").unwrap();
    let (_, none) = billing.get(&format!("/api/v1/defaulters?asOf={due}")).await;
    assert_eq!(none.as_array().unwrap().len(), 0, "nobody is late on the due date");
    let later = due + chrono::Days::new(10);
    let (_, late) = billing.get(&format!("/api/v1/defaulters?asOf={later}")).await;
    let late = late.as_array().unwrap();
    assert_eq!(late.len(), METERS - 1);
    assert!(
        late.iter()
            .all(|d| d["account_id"] != paid["account_id"] && d["days_overdue"] == 10)
    );

    // Bad input: a clear 4xx, nothing changed.
    let (code, err) = billing
        .post(
            &format!("/api/v1/bills/{id}/payments"),
            json!({"amount": "-5", "method": "card", "reference": "neg"}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("amount"), "{err}");
    let (code, _) = billing
        .post(
            "/api/v1/bills/00000000-0000-4000-8000-000000000000/payments",
            json!({"amount": "5", "method": "card", "reference": "ghost"}),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, err) = billing.get("/api/v1/defaulters?asOf=2026-13-01").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("YYYY-MM-DD"), "{err}");
    let (code, _) = billing.post("/api/v1/runs", json!({"period": "2026-13"})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = billing
        .post(
            "/api/v1/tenancies",
            json!({"property": "home-01", "account": "nobody", "startsOn": "2026-11-01"}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, payments) = billing.get(&format!("/api/v1/bills/{id}/payments")).await;
    assert_eq!(
        payments.as_array().unwrap().len(),
        1,
        "refused payments recorded nothing"
    );

    // CSV of the period.
    let (code, csv) = billing.text(&format!("/api/v1/bills.csv?period={period}")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(csv.lines().count(), METERS + 1);
    assert!(csv.starts_with("bill_id,period,tariff,account_id"));

    // The bill for a person, rendered by a real browser.
    let (code, html) = billing.text(&format!("/api/v1/bills/{id}/html")).await;
    assert_eq!(code, StatusCode::OK);
    assert!(html.contains("Electricity bill") && html.contains(paid["total"].as_str().unwrap()));
    screenshot(&h, &html);

    // Authentication and rate limit.
    let anon = billing
        .http
        .get(format!("{}/api/v1/bills", billing.api))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let wrong = billing
        .http
        .get(format!("{}/api/v1/bills", billing.api))
        .bearer_auth("x".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let mut limited = None;
    for _ in 0..200 {
        let r = billing
            .http
            .get(format!("{}/api/v1/accounts", billing.api))
            .bearer_auth(&billing.key)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = r.headers().get("retry-after").cloned();
            break;
        }
    }
    assert!(limited.is_some(), "a burst of requests is limited, with Retry-After");

    // Metrics, and no key in the log.
    let m = billing.process.metrics();
    assert_eq!(
        metric_in(&m, "fleetward_billing_bills_generated_total{tariff=\"home\"}"),
        METERS as f64
    );
    assert_eq!(
        metric_in(&m, "fleetward_billing_meter_reads_total{result=\"answered\"}"),
        20.0
    );
    assert!(metric_in(&m, "fleetward_billing_meter_reads_total{result=\"timeout\"}") >= 2.0);
    let billed = metric_in(&m, "fleetward_billing_billed_amount_total{currency=\"EUR\"}");
    let want: f64 = expected_total.parse().unwrap();
    assert!(
        (billed - want).abs() < 0.005,
        "billed {billed} vs the bills' {want}: a re-run adds nothing"
    );
    let log = billing.process.log_text();
    assert!(
        log.contains("a meter answered a read addressed to another; ignored") && log.contains("meter-22"),
        "the forged answer reached billing and was refused:\n{log}"
    );
    assert!(!log.contains(&billing.key), "the API key is not logged");
    let gw_key = h.ns.secret_value("gw-command-api", "api-key").await;
    assert!(!log.contains(&gw_key), "the gateway key is not logged");
}

/// Exact decimal sum of decimal strings, formatted with two decimals.
fn rust_decimal_sum(xs: &[&str]) -> String {
    let cents: i64 = xs
        .iter()
        .map(|x| {
            let (int, frac) = x.split_once('.').unwrap_or((x, "0"));
            let frac = format!("{frac:0<2}");
            int.parse::<i64>().unwrap() * 100 + frac[..2].parse::<i64>().unwrap()
        })
        .sum();
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Renders `html` with headless Chromium and checks the screenshot is a
/// page with content (a PNG of the window's size, not a blank one).
fn screenshot(h: &Harness, html: &str) {
    let dir = h.tmp.path().join("chromium");
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("bill.html");
    std::fs::write(&page, html).unwrap();
    let png = dir.join("bill.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=900,1100",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (Debian package) is installed by devenv/dev.sh");
    let bytes = std::fs::read(&png)
        .unwrap_or_else(|_| panic!("no screenshot; chromium said: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (900, 1100));
    // A blank 900×1100 page compresses to a few KB; text, rules and the
    // table do not.
    assert!(
        bytes.len() > 15_000,
        "the screenshot looks blank ({} bytes)",
        bytes.len()
    );
    let keep = std::env::var("FLEETWARD_KEEP_SCREENSHOT").ok();
    if let Some(path) = keep {
        std::fs::copy(&png, path).unwrap();
    }
}

/// Produces two readings of 999,999 kWh for meter-00 straight to the
/// gateway's topic, one unsigned and one with a MAC under another key, and
/// shows billing counted both `unsigned` and stored neither.
async fn forge_readings_on_the_topic(h: &Harness, billing: &crate::Billing) {
    use fleetward_protocol::record::{RecordKey, mac_header};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let record = |id: &str| {
        format!(
            r#"{{"device_id":"meter-00","category":"electricityMeter","timestamp":{},"message_id":"{id}",
               "payload":{{"kwh_total":999999}},"received_at":"{}","gateway":"gw","namespace":"{}"}}"#,
            chrono::Utc::now().timestamp(),
            chrono::Utc::now().to_rfc3339(),
            h.ns.name
        )
        .into_bytes()
    };
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .create()
        .unwrap();
    let unsigned = record("forged-unsigned");
    let other_key = record("forged-other-key");
    let attackers_key: RecordKey = "07".repeat(32).parse().unwrap();
    let mac = mac_header(&attackers_key, &h.topic, b"meter-00", &other_key);
    let before = billing
        .process
        .metric("fleetward_billing_readings_total{result=\"unsigned\"}");
    for (value, mac) in [(&unsigned, None), (&other_key, Some(mac))] {
        let mut rec = FutureRecord::to(&h.topic).key("meter-00").payload(value);
        if let Some(mac) = mac {
            rec = rec.headers(mac);
        }
        producer
            .send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    wait_until("billing refused both forged readings", 30, || async {
        billing
            .process
            .metric("fleetward_billing_readings_total{result=\"unsigned\"}")
            >= before + 2.0
    })
    .await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleetward_billing.readings WHERE namespace = $1 AND message_id LIKE 'forged-%'",
    )
    .bind(&h.ns.name)
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(stored, 0, "a forged reading was stored");
}
