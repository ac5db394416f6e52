//! Gateways with `provider: awsIot`: the operator built from this tree
//! against moto's AWS IoT Core (PyPI `moto[server]`, on loopback), read
//! back with the AWS SDK; and against an endpoint that throttles every
//! request.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use aws_sdk_iot::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iot::types::CertificateDescription;
use common::*;
use fleetward_operator::aws_iot::MUTATING;
use fleetward_operator::crd::{Device, Gateway};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

use serde_json::{Value, json};

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

/// A Gateway with `provider: awsIot` and five Devices: the CA registered,
/// five things with one active certificate each (the one in the Device's
/// Secret), each with its own policy naming only its own client id and
/// topics. A second reconcile of every device sends only reads. Disabling
/// one revokes its certificate and detaches its policy; deleting all
/// leaves nothing in IoT Core.
#[tokio::test]
async fn devices_become_things_with_certificates_and_policies_scoped_to_their_topics() {
    let moto = Moto::start();
    let iot = moto.client();
    let op = aws_operator();
    let ns = TestNs::new("fw-aws").await;
    let _leave = Leave(ns.name.clone());
    let (gateways, devs) = (ns.api::<Gateway>(), ns.api::<Device>());
    let devices: Vec<String> = (1..=5).map(|i| format!("meter-{i}")).collect();
    let manifests: Vec<String> = devices
        .iter()
        .map(|d| device_yaml_with_category(d, "cloud", "electricityMeter", ""))
        .collect();
    ns.gateway_with_devices(&gateway_yaml("cloud", &moto.url), &manifests)
        .await;

    let gw = wait_for(
        "Gateway cloud registered in IoT Core",
        60,
        || get_opt(&gateways, "cloud"),
        |g: &Gateway| gateway_ready(g) && g.status.as_ref().and_then(|s| s.aws_iot.as_ref()).is_some(),
    )
    .await;
    let reg = gw.status.as_ref().unwrap().aws_iot.clone().unwrap();
    let ca = iot
        .describe_ca_certificate()
        .certificate_id(&reg.ca_certificate_id)
        .send()
        .await
        .expect("the CA is registered");
    let ca = ca.certificate_description().unwrap();
    assert_eq!(ca.status().map(|s| s.as_str()), Some("ACTIVE"));
    assert_eq!(
        ca.certificate_pem().unwrap(),
        ns.secret_value("cloud-ca", "tls.crt").await
    );
    let endpoint = reg.data_endpoint.clone().expect("data endpoint");
    // The gateway workload's own certificate, with a policy for its client
    // id and the devices' topics, and its pod pointed at the endpoint.
    let client_cert = certificate(&iot, reg.client_certificate_id.as_deref().expect("client certificate")).await;
    assert_eq!(status_of(&client_cert), Some("ACTIVE"));
    assert_eq!(
        client_cert.certificate_pem().unwrap(),
        ns.secret_value("cloud-gateway-client", "tls.crt").await
    );
    let gw_policy = policy_of(&iot, reg.client_policy.as_deref().unwrap()).await;
    let arn = |r: &str| format!("arn:aws:iot:{REGION}:123456789012:{r}");
    assert_eq!(
        resources(&gw_policy, "iot:Connect"),
        vec![arn(&format!("client/fleetward-gateway-{}-cloud", ns.name))]
    );
    assert_eq!(
        resources(&gw_policy, "iot:Subscribe"),
        vec![arn("topicfilter/device/+/data")]
    );
    let set = ns
        .api::<k8s_openapi::api::apps::v1::StatefulSet>()
        .get("cloud-gateway")
        .await
        .unwrap();
    let pod = set.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers.len(), 1, "no Mosquitto beside IoT Core");
    let host = pod.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "MQTT_HOST")
        .and_then(|e| e.value.clone());
    assert_eq!(host.as_deref(), Some(endpoint.as_str()));
    // No broker of ours: no Mosquitto configuration or MQTT Service.
    assert!(
        get_opt(&ns.api::<k8s_openapi::api::core::v1::ConfigMap>(), "cloud-mosquitto")
            .await
            .is_none()
    );
    assert!(
        get_opt(&ns.api::<k8s_openapi::api::core::v1::Service>(), "cloud")
            .await
            .is_none()
    );
    // And the provider cannot be switched under the Devices.
    let switched = gateways
        .patch(
            "cloud",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"provider": "mosquitto"}})),
        )
        .await;
    assert!(
        switched
            .as_ref()
            .is_err_and(|e| e.to_string().contains("provider is immutable")),
        "{switched:?}"
    );
    assert_eq!(
        gw.status.as_ref().unwrap().endpoint.as_deref(),
        Some(format!("mqtts://{endpoint}:8883").as_str())
    );

    for name in &devices {
        let d = wait_for(
            &format!("Device {name} Ready in IoT Core"),
            60,
            || get_opt(&devs, name),
            |d: &Device| device_ready(d) && aws_status(d).is_some_and(|a| a.certificate_status == "ACTIVE"),
        )
        .await;
        let thing = format!("{}_{name}", ns.name);
        let st = aws_status(&d).unwrap();
        assert_eq!(st.thing_name, thing);
        let described = iot.describe_thing().thing_name(&thing).send().await.expect("thing");
        assert_eq!(described.thing_arn(), Some(st.thing_arn.as_str()));
        let attrs = described.attributes().unwrap();
        assert_eq!(attrs.get("namespace"), Some(&ns.name));
        assert_eq!(attrs.get("category").map(String::as_str), Some("electricityMeter"));

        let principals = iot.list_thing_principals().thing_name(&thing).send().await.unwrap();
        let mut described = Vec::new();
        for p in principals.principals() {
            let id = p.rsplit('/').next().unwrap();
            let c = certificate(&iot, id).await;
            described.push((p.clone(), status_of(&c).map(str::to_string)));
        }
        assert_eq!(
            principals.principals().len(),
            1,
            "{thing}: one certificate: {described:?}"
        );
        let cert_arn = &principals.principals()[0];
        let cert = certificate(&iot, &st.certificate_id).await;
        assert_eq!(cert.certificate_arn(), Some(cert_arn.as_str()));
        assert_eq!(status_of(&cert), Some("ACTIVE"));
        assert_eq!(
            cert.certificate_pem().unwrap(),
            ns.secret_value(&format!("{name}-credentials"), "tls.crt").await,
            "IoT Core holds the certificate the operator issued"
        );
        let attached = iot.list_attached_policies().target(cert_arn).send().await.unwrap();
        let names: Vec<_> = attached.policies().iter().filter_map(|p| p.policy_name()).collect();
        assert_eq!(names, vec![thing.as_str()]);

        // The policy, read back: this device's client id and topics only.
        let doc = policy_of(&iot, &thing).await;
        assert_eq!(resources(&doc, "iot:Connect"), vec![arn(&format!("client/{thing}"))]);
        assert_eq!(
            resources(&doc, "iot:Publish"),
            vec![arn(&format!("topic/device/{name}/data"))]
        );
        assert_eq!(
            resources(&doc, "iot:Subscribe"),
            vec![
                arn(&format!("topicfilter/device/{name}/command")),
                arn(&format!("topicfilter/device/{name}/response"))
            ]
        );
        assert_eq!(
            resources(&doc, "iot:Receive"),
            vec![
                arn(&format!("topic/device/{name}/command")),
                arn(&format!("topic/device/{name}/response"))
            ]
        );
    }
    let things = iot.list_things().send().await.unwrap();
    assert_eq!(things.things().len(), 5);

    // A second reconcile of every device (a spec change that leaves the
    // credentials alone) reads IoT Core and changes nothing there.
    let before = aws_requests(op);
    for name in &devices {
        ns.api::<Device>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"hmacGracePeriodSeconds": 3601}})),
            )
            .await
            .unwrap();
    }
    for name in &devices {
        wait_for(
            &format!("Device {name} reconciled again"),
            60,
            || get_opt(&devs, name),
            |d: &Device| {
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation && device_ready(d)
            },
        )
        .await;
    }
    let after = aws_requests(op);
    let reads = |c: &std::collections::BTreeMap<String, u64>| c.get("DescribeThing").copied().unwrap_or(0);
    assert!(
        reads(&after) >= reads(&before) + 5,
        "each device looked at IoT Core again: {before:?} -> {after:?}"
    );
    assert_eq!(
        mutating(&after),
        mutating(&before),
        "a reconcile of devices in order changes nothing: {before:?} -> {after:?}"
    );

    // Disable one: its certificate is revoked and its policy detached.
    ns.api::<Device>()
        .patch(
            "meter-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"enabled": false}})),
        )
        .await
        .unwrap();
    let d = wait_for(
        "meter-1 revoked in IoT Core",
        60,
        || get_opt(&devs, "meter-1"),
        |d: &Device| aws_status(d).is_some_and(|a| a.certificate_status == "REVOKED"),
    )
    .await;
    let st = aws_status(&d).unwrap();
    let cert = certificate(&iot, &st.certificate_id).await;
    assert_eq!(status_of(&cert), Some("REVOKED"));
    let attached = iot
        .list_attached_policies()
        .target(cert.certificate_arn().unwrap())
        .send()
        .await
        .unwrap();
    assert!(attached.policies().is_empty(), "a revoked certificate keeps no policy");
    // The others are untouched.
    let other = get_opt(&devs, "meter-2").await.unwrap();
    let other = certificate(&iot, &aws_status(&other).unwrap().certificate_id).await;
    assert_eq!(status_of(&other), Some("ACTIVE"));

    // Delete everything: the Devices' finalizers remove things,
    // certificates and policies; the Gateway's, after them, the CA.
    ns.api::<Device>()
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    ns.api::<Gateway>()
        .delete("cloud", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the Gateway and its Devices gone", 60, || async {
        let gws = ns.api::<Gateway>().list(&ListParams::default()).await.unwrap();
        let devs = ns.api::<Device>().list(&ListParams::default()).await.unwrap();
        gws.items.is_empty() && devs.items.is_empty()
    })
    .await;
    let things = iot.list_things().send().await.unwrap();
    let certs = iot.list_certificates().send().await.unwrap();
    let policies = iot.list_policies().send().await.unwrap();
    // (moto has no ListCACertificates: ask for the one that was registered.)
    let ca_left = iot
        .describe_ca_certificate()
        .certificate_id(&reg.ca_certificate_id)
        .send()
        .await;
    let names = |v: Vec<Option<&str>>| v.into_iter().flatten().map(str::to_string).collect::<Vec<_>>();
    assert!(
        things.things().is_empty(),
        "things left: {:?}",
        names(things.things().iter().map(|t| t.thing_name()).collect())
    );
    assert!(certs.certificates().is_empty(), "certificates left");
    assert!(
        policies.policies().is_empty(),
        "policies left: {:?}",
        names(policies.policies().iter().map(|p| p.policy_name()).collect())
    );
    let gone = ca_left
        .as_ref()
        .err()
        .and_then(|e| e.as_service_error())
        .is_some_and(|e| e.is_resource_not_found_exception());
    assert!(gone, "the CA is deregistered: {ca_left:?}");
    ns.cleanup().await;
}

/// An IoT endpoint that throttles every request: the SDK retries with
/// backoff (several attempts reach the endpoint), then the Gateway says
/// why it is not Ready, and nothing secret is in what it says.
#[tokio::test]
async fn a_throttling_aws_is_retried_then_reported_in_the_condition() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let count = count.clone();
            // Every request on the connection (the SDK keeps it alive).
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut started = false;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        started = true;
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    if !started {
                        continue;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = r#"{"message":"Rate exceeded"}"#;
                    let sent = write!(
                        writer,
                        "HTTP/1.1 429 Too Many Requests\r\nx-amzn-ErrorType: ThrottlingException\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let op = aws_operator();
    let ns = TestNs::new("fw-aws-throttle").await;
    let _leave = Leave(ns.name.clone());
    let gateways = ns.api::<Gateway>();
    ns.apply_yaml(&gateway_yaml("slow", &url)).await;
    let gw = wait_for(
        "Gateway slow reports the refusal",
        90,
        || get_opt(&gateways, "slow"),
        |g: &Gateway| {
            g.status
                .as_ref()
                .and_then(|s| ready_reason(&s.conditions))
                .is_some_and(|(s, r)| s == "False" && r == "AwsIotFailed")
        },
    )
    .await;
    let cond = gw
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        cond.message.contains("ThrottlingException") && cond.message.contains("Rate exceeded"),
        "{}",
        cond.message
    );
    let attempts = seen.load(Ordering::SeqCst);
    assert!(attempts >= 5, "the SDK retried before giving up: {attempts} requests");
    let counts = aws_requests(op);
    assert!(counts.values().sum::<u64>() >= 5, "{counts:?}");
    // Nothing of the CA's key in the condition or the operator's log.
    let key = ns.secret_value("slow-ca", "tls.key").await;
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!cond.message.contains(&body));
    assert!(!op.log_text().contains(&body), "the CA key is not in the log");
    // Deleting the Gateway still works (nothing was registered).
    ns.api::<Gateway>()
        .delete("slow", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("Gateway slow gone", 60, || async {
        get_opt(&gateways, "slow").await.is_none()
    })
    .await;
    ns.cleanup().await;
}
