//! Shared harness for tests against the real local control plane started by
//! `./deploy.sh dev-up` / `./deploy.sh test` (see devenv/dev.sh).
//!
//! Each test binary runs one operator process built from this tree; every
//! test works in a namespace of its own, so tests run in parallel.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fleetward_operator::crd::{Device, Gateway, StationFeed, Tariff};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Service endpoints from the environment, or from `.dev/env` written by
/// `./deploy.sh dev-up`. Missing services are an error, not a skip: a test
/// that silently does nothing would pass without testing anything.
pub fn env(key: &str) -> String {
    static FILE: OnceLock<HashMap<String, String>> = OnceLock::new();
    if let Ok(v) = std::env::var(key) {
        return v;
    }
    let file = FILE.get_or_init(|| {
        let path = repo_root().join(".dev/env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} not found: start the local services with `./deploy.sh dev-up` (or run `./deploy.sh test`)",
                path.display()
            )
        });
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    file.get(key)
        .cloned()
        .unwrap_or_else(|| panic!("{key} is not set and not in .dev/env; run `./deploy.sh dev-up`"))
}

pub async fn client() -> Client {
    let path = env("KUBECONFIG");
    let kc = Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("cannot read kubeconfig {path}: {e}"));
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("kube client")
}

pub struct Operator {
    child: Child,
    pub http: String,
    pub log: PathBuf,
}

/// Installs the CRDs from `crds/` (once per test binary).
pub fn install_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(kubectl())
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(repo_root().join("crds"))
            .env("KUBECONFIG", env("KUBECONFIG"))
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "installing CRDs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The API server serves a new CRD a moment after accepting it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(kubectl())
                .args(["get", "devices,gateways,tariffs,stationfeeds", "-A"])
                .env("KUBECONFIG", env("KUBECONFIG"))
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "CRDs not served after 30s");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

/// Starts (once per test binary) the operator built from this tree. It
/// exits when this process ends, because its stdin closes.
pub fn operator() -> &'static Operator {
    static OP: OnceLock<Operator> = OnceLock::new();
    OP.get_or_init(|| {
        install_crds();
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "operator-{}-{}.log",
            std::env::args()
                .next()
                .map(|a| Path::new(&a).file_name().unwrap().to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fleetward-operator"))
            .args(["--http-addr", &http, "--exit-on-stdin-eof"])
            .env("KUBECONFIG", env("KUBECONFIG"))
            .env("RUST_LOG", "info,kube_runtime=warn")
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("operator starts");
        let op = Operator {
            child,
            http: format!("http://{http}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&format!("{}/healthz", op.http)).is_none() {
            assert!(
                Instant::now() < deadline,
                "operator did not serve /healthz; log: {}",
                op.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        op
    })
}

impl Operator {
    pub fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.http)).expect("metrics endpoint answers")
    }

    /// Value of a counter/gauge line, e.g. `fleetward_reconciles_total{kind="device"}`.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn kubectl() -> String {
    if Command::new("kubectl").arg("version").arg("--client").output().is_ok() {
        "kubectl".into()
    } else {
        repo_root().join(".cache/bin/kubectl").to_string_lossy().into_owned()
    }
}

/// A namespace for one test, deleted when the test finishes successfully.
pub struct TestNs {
    pub name: String,
    pub client: Client,
}

impl TestNs {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let name = format!("{prefix}-{:08x}", rand_u32());
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some([("fleetward.io/test".to_string(), "true".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
        Self { name, client }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }

    /// Server-side applies a YAML manifest (one or more documents) into this
    /// namespace, whatever namespace the document names.
    pub async fn apply_yaml(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let mut value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().expect("kind").to_string();
            if kind == "Namespace" {
                continue;
            }
            value["metadata"]["namespace"] = self.name.clone().into();
            let name = value["metadata"]["name"].as_str().expect("name").to_string();
            let pp = PatchParams::apply("fleetward-tests").force();
            match kind.as_str() {
                "Gateway" => drop(
                    self.api::<Gateway>()
                        .patch(&name, &pp, &Patch::Apply(&value))
                        .await
                        .expect("apply Gateway"),
                ),
                "Device" => drop(
                    self.api::<Device>()
                        .patch(&name, &pp, &Patch::Apply(&value))
                        .await
                        .expect("apply Device"),
                ),
                "Tariff" => drop(
                    self.api::<Tariff>()
                        .patch(&name, &pp, &Patch::Apply(&value))
                        .await
                        .expect("apply Tariff"),
                ),
                "StationFeed" => drop(
                    self.api::<StationFeed>()
                        .patch(&name, &pp, &Patch::Apply(&value))
                        .await
                        .expect("apply StationFeed"),
                ),
                other => panic!("unexpected kind {other} in manifest"),
            }
        }
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.api::<Secret>().get_opt(name).await.expect("get secret")
    }

    pub async fn secret_value(&self, name: &str, key: &str) -> String {
        let s = self
            .secret(name)
            .await
            .unwrap_or_else(|| panic!("secret {name} exists"));
        let bytes = s
            .data
            .unwrap()
            .remove(key)
            .unwrap_or_else(|| panic!("secret {name} has {key}"));
        String::from_utf8(bytes.0).unwrap()
    }

    pub async fn crl_pem(&self, gateway: &str) -> String {
        let cm = self
            .api::<ConfigMap>()
            .get(&format!("{gateway}-crl"))
            .await
            .expect("CRL configmap");
        cm.data.unwrap().remove("crl.pem").expect("crl.pem")
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ std::process::id() as u128);
    h.finish() as u32
}

/// Polls `get` until `ok` holds, or panics after `secs` with the last value.
pub async fn wait_for<K, F, Fut>(what: &str, secs: u64, mut get: F, ok: impl Fn(&K) -> bool) -> K
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<K>>,
    K: std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    loop {
        if let Some(v) = get().await {
            if ok(&v) {
                return v;
            }
            last = Some(v);
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.expect("API reachable")
}

pub fn ready_reason(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn device_ready(d: &Device) -> bool {
    d.status
        .as_ref()
        .and_then(|s| ready_reason(&s.conditions))
        .is_some_and(|(s, _)| s == "True")
}

pub fn gateway_ready(g: &Gateway) -> bool {
    g.status
        .as_ref()
        .and_then(|s| ready_reason(&s.conditions))
        .is_some_and(|(s, _)| s == "True")
}

/// Runs openssl with `args`; returns (success, stdout+stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_string_lossy().into_owned()
}

pub const GATEWAY_YAML: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Gateway
metadata: {name: gw}
spec:
  extraDnsNames: [mqtt.test.example]
"#;

pub fn device_yaml(name: &str, gateway: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Device\nmetadata: {{name: {name}}}\nspec:\n  gatewayRef: {gateway}\n  category: weatherStation\n{extra_spec}\n"
    )
}
