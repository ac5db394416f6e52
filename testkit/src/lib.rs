//! Shared harness for fleetward's integration tests, against the real local
//! services started by `./deploy.sh dev-up` / `./deploy.sh test`
//! (devenv/dev.sh): kube-apiserver, PostgreSQL, Kafka, Mosquitto.
//!
//! Every test works in a namespace of its own, so tests run in parallel.
//! A missing service is an error, never a skip: a test that silently does
//! nothing would pass without testing anything.

mod workload;
pub use workload::{Workload, metric_in};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fleetward_operator::crd::{Device, Gateway, StationFeed, Tariff};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota, Secret};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
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

/// Runs the operator's controllers inside this test process (once per test
/// binary), on a thread of their own so they outlive any single test's
/// runtime. For crates whose tests cannot start the operator binary.
pub fn operator_in_process() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        install_crds();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = fleetward_operator::context::Config {
                    kafka_bootstrap: env("KAFKA_BROKERS"),
                    ..Default::default()
                };
                let metrics = Arc::new(fleetward_operator::metrics::Metrics::default());
                let ctx = fleetward_operator::context::Context::new(client().await, config, metrics);
                tx.send(()).unwrap();
                fleetward_operator::controllers::run(ctx).await;
            });
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("operator started");
    });
}

/// A Kafka consumer (`BaseConsumer` or `StreamConsumer`) subscribed to
/// `topic` from its beginning, in a group of its own that commits nothing,
/// so a test reads everything there is and leaves no trace.
pub fn kafka_reader<C>(topic: &str) -> C
where
    C: rdkafka::config::FromClientConfig + rdkafka::consumer::Consumer,
{
    let c: C = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("group.id", unique("test-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
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

pub fn wait_port(port: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port} after {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
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
            let patch = Patch::Apply(&value);
            let res = match kind.as_str() {
                "Gateway" => self.api::<Gateway>().patch(&name, &pp, &patch).await.map(drop),
                "Device" => self.api::<Device>().patch(&name, &pp, &patch).await.map(drop),
                "Tariff" => self.api::<Tariff>().patch(&name, &pp, &patch).await.map(drop),
                "StationFeed" => self.api::<StationFeed>().patch(&name, &pp, &patch).await.map(drop),
                "Secret" => self.api::<Secret>().patch(&name, &pp, &patch).await.map(drop),
                "ConfigMap" => self.api::<ConfigMap>().patch(&name, &pp, &patch).await.map(drop),
                other => panic!("unexpected kind {other} in manifest"),
            };
            res.unwrap_or_else(|e| panic!("apply {kind}/{name}: {e}"));
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

    /// Applies a Gateway and the given Devices and waits until all are Ready.
    pub async fn gateway_with_devices(&self, gateway_yaml: &str, devices: &[String]) {
        self.apply_yaml(gateway_yaml).await;
        for d in devices {
            self.apply_yaml(d).await;
        }
        let gws = self.api::<Gateway>();
        let name = serde_yaml::from_str::<serde_json::Value>(gateway_yaml).unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        wait_for(&format!("Gateway {name}"), 60, || get_opt(&gws, &name), gateway_ready).await;
        let devs = self.api::<Device>();
        for d in devices {
            let name = serde_yaml::from_str::<serde_json::Value>(d).unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            wait_for(&format!("Device {name}"), 60, || get_opt(&devs, &name), device_ready).await;
        }
    }
}

/// A name no other test (or earlier run) uses: topics, tables, groups.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand_u32())
}

/// The 114 Dublin stations of testdata/, as the JCDecaux API sent them.
pub fn dublin_text() -> String {
    std::fs::read_to_string(repo_root().join("testdata/stations/jcdecaux-v1-dublin.json")).unwrap()
}

pub fn dublin() -> Vec<serde_json::Value> {
    serde_json::from_str(&dublin_text()).unwrap()
}

/// Polls `check` every 100 ms until it returns true; panics after `secs`.
pub async fn wait_until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    ready_condition(conditions).map(|c| (c.status.clone(), c.reason.clone()))
}

/// The `Ready` condition among `conditions`.
pub fn ready_condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
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
    device_yaml_with_category(name, gateway, "weatherStation", extra_spec)
}

pub fn device_yaml_with_category(name: &str, gateway: &str, category: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Device\nmetadata: {{name: {name}}}\nspec:\n  gatewayRef: {gateway}\n  category: {category}\n{extra_spec}\n"
    )
}

/// Makes a path readable by the `mosquitto` user, which Mosquitto drops to
/// when started as root.
fn open_up(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Real Mosquitto running a Gateway's operator-generated configuration,
/// certificates and CRL. Killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Broker {
    /// Writes the Gateway's ConfigMaps and broker Secret to `dir` exactly as
    /// the pod mounts them, only moving `/mosquitto/` to `dir` and the
    /// listener to a free loopback port, and starts Mosquitto.
    pub async fn start(ns: &TestNs, gw: &str, dir: &Path) -> Broker {
        // Devices can be Ready before their Gateway has written the broker
        // configuration; the Gateway's own Ready says it is all there.
        let gws = ns.api::<Gateway>();
        wait_for(&format!("Gateway {gw} Ready"), 60, || get_opt(&gws, gw), gateway_ready).await;
        std::fs::create_dir_all(dir).unwrap();
        open_up(dir, 0o755);
        for sub in ["config", "certs", "crl", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            open_up(&dir.join(sub), 0o777);
        }
        let cm = ns.api::<ConfigMap>().get(&format!("{gw}-mosquitto")).await.unwrap();
        let data = cm.data.unwrap();
        let port = free_port();
        let prefix = format!("{}/", dir.display());
        let listener = data["mosquitto.conf"]
            .lines()
            .find(|l| l.starts_with("listener "))
            .expect("listener line")
            .to_string();
        let conf = data["mosquitto.conf"]
            .replace("/mosquitto/", &prefix)
            .replace(&listener, &format!("listener {port} 127.0.0.1"));
        write(&dir.join("config"), "mosquitto.conf", &conf);
        write(&dir.join("config"), "acl", &data["acl"]);
        let secret = format!("{gw}-broker-tls");
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            let p = write(&dir.join("certs"), key, &ns.secret_value(&secret, key).await);
            open_up(Path::new(&p), 0o644);
        }
        let mut broker = Broker {
            child: None,
            dir: dir.to_path_buf(),
            port,
        };
        broker.write_crl(&ns.crl_pem(gw).await);
        broker.start_process();
        broker
    }

    fn start_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        self.child = Some(
            Command::new("mosquitto")
                .arg("-c")
                .arg(self.dir.join("config/mosquitto.conf"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("mosquitto runs"),
        );
        wait_port(self.port, 10);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn write_crl(&self, pem: &str) {
        let p = write(&self.dir.join("crl"), "crl.pem", pem);
        open_up(Path::new(&p), 0o644);
    }

    /// What the gateway sidecar does when the CRL ConfigMap changes.
    pub fn reload(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Graceful stop (SIGTERM): Mosquitto writes its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_process();
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    pub fn tls_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            self.port.to_string(),
            "--cafile".into(),
            self.ca_file().display().to_string(),
            "-V".into(),
            "mqttv5".into(),
        ]
    }
}

/// A client identity (certificate + key files) taken from a Secret.
pub struct Identity {
    pub cert: String,
    pub key: String,
}

pub async fn identity(ns: &TestNs, secret: &str, dir: &Path) -> Identity {
    Identity {
        cert: write(dir, &format!("{secret}.crt"), &ns.secret_value(secret, "tls.crt").await),
        key: write(dir, &format!("{secret}.key"), &ns.secret_value(secret, "tls.key").await),
    }
}

/// Publishes one QoS 1 message with mosquitto_pub; returns whether the broker
/// accepted it (connected and not refused by the ACL) and its output.
pub fn mosquitto_pub(b: &Broker, id: &Identity, topic: &str, msg: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(b.tls_args())
        .args(["--cert", &id.cert, "--key", &id.key, "-t", topic, "-m", msg, "-q", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("Not authorized"), text)
}
