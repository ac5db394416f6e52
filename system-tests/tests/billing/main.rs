//! Billing end to end: the real operator makes the Tariff's Deployment,
//! whose environment starts the billing binary here; real simulated meters
//! publish through real Mosquitto and the real gateway into Kafka; a run
//! asks every meter for its register through the gateway's command API.
//! Twenty answer, two are switched off and are billed from their last
//! reading (estimated); a third meter outside the Tariff tries to answer
//! for a switched-off one and is ignored. Then the API: re-run, payments,
//! defaulters, CSV, bad input, authentication, rate limit, and the HTML
//! bill screenshotted by headless Chromium.
//!
//! One test binary; its tests by concern: `billed_and_paid`, `unreachable`.
//! Here: the billing binary started as the Tariff's Deployment would run
//! it, and its API.

mod billed_and_paid;
mod unreachable;

use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::DynamicObject;
use reqwest::StatusCode;
use serde_json::Value;

const METERS: usize = 22;
const SWITCHED_OFF: [usize; 2] = [20, 21];

fn meter(i: usize) -> String {
    format!("meter-{i:02}")
}

struct Billing {
    process: Workload,
    api: String,
    key: String,
    http: reqwest::Client,
}

impl Billing {
    /// Sends `req` with the bearer key: the status and the body's text.
    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, String) {
        let r = req.bearer_auth(&self.key).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn text(&self, path: &str) -> (StatusCode, String) {
        self.send(self.http.get(format!("{}{path}", self.api))).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, text) = self.text(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, text) = self
            .send(self.http.post(format!("{}{path}", self.api)).json(&body))
            .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Starts the billing binary with the environment the operator put into
/// the Tariff's Deployment (addresses moved to this machine).
async fn start_billing(h: &Harness, tariff: &str) -> Billing {
    start_billing_with(h, tariff, &[]).await
}

/// `start_billing`, with some variables set otherwise.
async fn start_billing_with(h: &Harness, tariff: &str, overrides: &[(&str, String)]) -> Billing {
    let deploy = wait_for(
        "the Tariff's billing Deployment",
        60,
        || async { get_opt(&h.ns.api::<Deployment>(), &format!("{tariff}-billing")).await },
        |_| true,
    )
    .await;
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let container = pod.containers.into_iter().next().unwrap();
    let dir = h.tmp.path().join("billing");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = write(&dir, "gateway-ca.crt", &h.ns.secret_value("gw-ca", "tls.crt").await);
    let mut env_map = container_env(&h.ns, container.env.unwrap_or_default(), |v| v).await;
    assert!(
        env_map["GATEWAY_URL"].starts_with("https://gw-"),
        "the operator points billing at the gateway's API Service: {}",
        env_map["GATEWAY_URL"]
    );
    let http_port = free_port();
    let metrics_port = free_port();
    env_map.insert("GATEWAY_URL".into(), h.gateway.api_url.clone());
    env_map.insert("GATEWAY_CA_FILE".into(), ca);
    env_map.insert("HTTP_ADDR".into(), format!("127.0.0.1:{http_port}"));
    env_map.insert("METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}"));
    env_map.insert("KUBECONFIG".into(), env("KUBECONFIG"));
    env_map.insert("TICK_SECONDS".into(), "1".into());
    env_map.insert("LOG_JSON".into(), "false".into());
    env_map.insert("RUST_LOG".into(), "info,rdkafka=warn".into());
    for (k, v) in overrides {
        env_map.insert(k.to_string(), v.clone());
    }
    let process = spawn_with_env("fleetward-billing", &env_map, metrics_port, dir.join("billing.log"));
    Billing {
        process,
        api: format!("http://127.0.0.1:{http_port}"),
        key: env_map["BILLING_API_KEY"].clone(),
        http: reqwest::Client::new(),
    }
}

fn tariff_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: fleetward.io/v1alpha1
kind: Tariff
metadata: {{name: {name}}}
spec:
  propertyType: residential
  currency: EUR
  slabs:
    - {{upToUnits: 100, pricePerUnit: "0.12"}}
    - {{upToUnits: 300, pricePerUnit: "0.18"}}
    - {{pricePerUnit: "0.25"}}
  taxes: [{{name: VAT, percent: "13.5"}}]
  miscCharges: [{{name: meter rent, amount: "2.50"}}]
  gateway: gw
  meterReadTimeoutSeconds: 8
  meterSelector:
    matchLabels: {{fleetward.io/property-type: residential}}
  database:
    connectionSecretRef: {{name: audit-db, key: url}}
"#
    )
}

async fn tariff_status(h: &Harness, name: &str) -> Value {
    let api = h.ns.dynamic("fleetward.io/v1alpha1", "Tariff");
    let t: DynamicObject = api.get(name).await.unwrap();
    t.data["status"].clone()
}
