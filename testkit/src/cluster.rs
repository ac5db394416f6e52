//! The local Kubernetes API server: its address, a client, the CRDs, and a
//! namespace per test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota, Secret};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;

use crate::wait::wait_for;

/// The checkout the tests run from: the running package's directory (cargo
/// sets `CARGO_MANIFEST_DIR` for `cargo test`) up to the workspace's
/// Cargo.lock. Not testkit's compile-time path: another checkout sharing
/// the target directory (CI's cache) may have built this crate, and cargo
/// reuses it unchanged.
pub fn repo_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
    package
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock above {}", package.display()))
        .canonicalize()
        .unwrap()
}

/// A service endpoint from the environment, or from `.dev/env` written by
/// `./deploy.sh dev-up`. Panics with instructions when neither has it.
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

pub fn kubectl() -> String {
    if Command::new("kubectl").arg("version").arg("--client").output().is_ok() {
        "kubectl".into()
    } else {
        repo_root().join(".cache/bin/kubectl").to_string_lossy().into_owned()
    }
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

/// A namespace for one test, deleted by `cleanup` at the end.
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
        // The cluster has a real node now, but these tests check what the
        // reconcilers write to the API server; the Deployments they create
        // must not start pods that would load the two cores and race the
        // tests. A quota of zero pods keeps the namespace pod-free (the
        // end-to-end test, which runs pods, does not use TestNs).
        let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "fleetward-tests-no-pods"},
            "spec": {"hard": {"pods": "0"}},
        }))
        .expect("quota");
        Api::<ResourceQuota>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &quota)
            .await
            .expect("create the no-pods quota");
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
            let api = self.dynamic(value["apiVersion"].as_str().expect("apiVersion"), &kind);
            let res = api.patch(&name, &pp, &Patch::Apply(&value)).await.map(drop);
            res.unwrap_or_else(|e| panic!("apply {kind}/{name}: {e}"));
        }
    }

    /// An API for any kind in this namespace, by apiVersion and kind (the
    /// harness does not depend on the crates that define them).
    pub fn dynamic(&self, api_version: &str, kind: &str) -> Api<DynamicObject> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        Api::namespaced_with(self.client.clone(), &self.name, &resource)
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

    /// Applies a Gateway and the given Devices and waits until all are Ready.
    pub async fn gateway_with_devices(&self, gateway_yaml: &str, devices: &[String]) {
        self.apply_yaml(gateway_yaml).await;
        for d in devices {
            self.apply_yaml(d).await;
        }
        let name_of = |yaml: &str| {
            serde_yaml::from_str::<serde_json::Value>(yaml).unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let gws = self.dynamic("fleetward.io/v1alpha1", "Gateway");
        let name = name_of(gateway_yaml);
        wait_for(&format!("Gateway {name}"), 60, || get_opt(&gws, &name), is_ready).await;
        let devs = self.dynamic("fleetward.io/v1alpha1", "Device");
        for d in devices {
            let name = name_of(d);
            wait_for(&format!("Device {name}"), 60, || get_opt(&devs, &name), is_ready).await;
        }
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ std::process::id() as u128);
    h.finish() as u32
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
    ready_condition(conditions).map(|c| (c.status.clone(), c.reason.clone()))
}

/// The `Ready` condition among `conditions`.
pub fn ready_condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// True when an object's `status.conditions` has `Ready=True` (any kind).
pub fn is_ready(obj: &DynamicObject) -> bool {
    obj.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Lists and starts watching one object by name (a `metadata.name` field
/// selector, as RBAC's `resourceNames` requires): `Ok` once the initial
/// listing is through, the API's refusal otherwise.
pub async fn watch_lists<K>(api: &Api<K>, name: &str) -> Result<(), String>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::runtime::watcher;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api.clone(), config));
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut events));
        match next.await {
            Ok(Some(Ok(watcher::Event::InitDone))) => return Ok(()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) | Err(_) => return Err("no answer".into()),
        }
    }
}
