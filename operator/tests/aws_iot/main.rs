//! Gateways with `provider: awsIot`: the operator built from this tree
//! against moto's AWS IoT Core (PyPI `moto[server]`, on loopback), read
//! back with the AWS SDK (`provisioning`); and against an endpoint that
//! throttles every request (`throttling`). Here: moto, the operator with
//! AWS credentials, and what the tests read back from IoT Core.

#[path = "../common/mod.rs"]
mod common;
mod provisioning;
mod throttling;

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use aws_sdk_iot::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iot::types::CertificateDescription;
use common::*;
use fleetward_operator::aws_iot::MUTATING;
use fleetward_operator::crd::Device;
use serde_json::Value;

const REGION: &str = "eu-west-1";

/// moto's server on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new(env("FLEETWARD_PYTHON"))
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto (the venv of ./deploy.sh dev-up)");
        wait_port(port, 30);
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn client(&self) -> aws_sdk_iot::Client {
        let config = aws_sdk_iot::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(fleetward_operator::aws_iot::https_client())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .endpoint_url(&self.url)
            .build();
        aws_sdk_iot::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On the way out, even when the test failed: the namespace goes without
/// waiting for AWS (moto goes with the test), so no other test's operator
/// finds its Devices and Gateways still asking for IoT Core.
struct Leave(String);

impl Drop for Leave {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = Command::new(kubectl())
                .args(args)
                .env("KUBECONFIG", env("KUBECONFIG"))
                .output();
        };
        for kind in ["devices", "gateways"] {
            let out = Command::new(kubectl())
                .args(["-n", &self.0, "get", kind, "-o", "name"])
                .env("KUBECONFIG", env("KUBECONFIG"))
                .output();
            for obj in out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
            {
                run(&[
                    "-n",
                    &self.0,
                    "patch",
                    obj,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        run(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// The operator with AWS credentials moto accepts (the default chain reads
/// them from the environment, as it would read IRSA's on EKS). One for the
/// whole binary: two would both reconcile every Gateway and Device.
fn aws_operator() -> &'static Workload {
    static OP: OnceLock<Workload> = OnceLock::new();
    OP.get_or_init(|| {
        install_crds();
        spawn_operator_with_env(
            &[],
            &format!("operator-aws-{}", std::process::id()),
            &[
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        )
    })
}

/// Requests the operator sent to AWS, by operation (every attempt).
fn aws_requests(op: &Workload) -> std::collections::BTreeMap<String, u64> {
    let text = http_get(&format!("{}/metrics", op.base_url)).expect("operator /metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("fleetward_aws_requests_total{operation=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(name, n)| (name.to_string(), n.trim().parse().unwrap_or(0)))
        .collect()
}

fn mutating(counts: &std::collections::BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| MUTATING.contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum()
}

fn gateway_yaml(name: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Gateway\nmetadata:\n  name: {name}\nspec:\n  provider: awsIot\n  awsIot:\n    region: {REGION}\n    endpointUrl: {endpoint}\n"
    )
}

fn aws_status(d: &Device) -> Option<&fleetward_operator::crd::device::DeviceAwsIot> {
    d.status.as_ref()?.aws_iot.as_ref()
}

/// A certificate as IoT Core describes it.
async fn certificate(iot: &aws_sdk_iot::Client, id: &str) -> CertificateDescription {
    iot.describe_certificate()
        .certificate_id(id)
        .send()
        .await
        .expect("DescribeCertificate")
        .certificate_description()
        .cloned()
        .expect("a description")
}

fn status_of(c: &CertificateDescription) -> Option<&str> {
    c.status().map(|s| s.as_str())
}

async fn policy_of(iot: &aws_sdk_iot::Client, name: &str) -> Value {
    let p = iot.get_policy().policy_name(name).send().await.expect("GetPolicy");
    serde_json::from_str(p.policy_document().unwrap()).unwrap()
}

/// Every Resource of a policy statement with `action`.
fn resources(doc: &Value, action: &str) -> Vec<String> {
    let mut out = Vec::new();
    for st in doc["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow", "{st}");
        let actions: Vec<&str> = match &st["Action"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => panic!("Action {other}"),
        };
        assert!(actions.iter().all(|a| !a.contains('*')), "no wildcard action: {st}");
        if actions.contains(&action) {
            match &st["Resource"] {
                Value::String(s) => out.push(s.clone()),
                Value::Array(a) => out.extend(a.iter().filter_map(Value::as_str).map(str::to_string)),
                other => panic!("Resource {other}"),
            }
        }
    }
    out.sort();
    out
}
