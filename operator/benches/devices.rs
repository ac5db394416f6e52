//! How fast the operator makes N Devices Ready on the local control plane,
//! and how much memory it needs for that.
//!
//!   cargo bench -p fleetward-operator --bench devices -- [N]     (default 1000)
//!
//! Needs the services of `./deploy.sh dev-up` (KUBECONFIG from `.dev/env`).
//! Baseline, same run, same client and concurrency: creating N plain
//! Secrets — the API server's own cost for N writes. The operator's work per
//! Device is at least three writes (finalizer, Secret, status) plus a key
//! generation and a signature, so the ratio shows how far it is from the
//! API-server floor.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetward_operator::crd::{Device, Gateway};
use fleetward_testkit::Workload;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use serde_json::json;

const CONCURRENCY: usize = 32;

fn kubeconfig_path() -> String {
    std::env::var("KUBECONFIG").ok().unwrap_or_else(|| {
        let env = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.dev/env"))
            .expect(".dev/env missing: run ./deploy.sh dev-up first");
        env.lines()
            .find_map(|l| l.strip_prefix("export KUBECONFIG="))
            .expect("KUBECONFIG in .dev/env")
            .to_string()
    })
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn is_ready(d: &Device) -> bool {
    d.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("N is a number"))
        .unwrap_or(1000);
    let path = kubeconfig_path();
    let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&path)?, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;

    let status = Command::new("kubectl")
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../crds"),
        ])
        .env("KUBECONFIG", &path)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "could not install CRDs");

    let elsewhere = Api::<Device>::all(client.clone())
        .list_metadata(&Default::default())
        .await?
        .items
        .len();
    if elsewhere > 0 {
        eprintln!(
            "note: {elsewhere} Devices already exist in the cluster; the operator reconciles them too, so the figures include them"
        );
    }
    let ns_name = format!("fleet-bench-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns_name}}))?,
        )
        .await?;

    let port = fleetward_testkit::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward-operator"));
    cmd.args(["--http-addr", &format!("127.0.0.1:{port}"), "--exit-on-stdin-eof"])
        .env("KUBECONFIG", &path)
        .env("RUST_LOG", "warn");
    let log = std::env::temp_dir().join(format!("{ns_name}-operator.log"));
    let operator = Workload::spawn(cmd, format!("http://127.0.0.1:{port}"), log, "/health", 30);
    let result = run(&client, &ns_name, n, &operator).await;
    if result.is_err() {
        eprintln!("operator log:\n{}", operator.log_text());
    }
    // Remove the namespace while the operator still runs, so Devices left
    // by a failed run do not keep it Terminating for ever (finalizers).
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while namespaces.get_opt(&ns_name).await.ok().flatten().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(operator);
    result
}

async fn run(client: &Client, ns: &str, n: usize, operator: &Workload) -> anyhow::Result<()> {
    let gateways: Api<fleetward_operator::crd::Gateway> = Api::namespaced(client.clone(), ns);
    gateways
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "fleetward.io/v1alpha1", "kind": "Gateway",
                "metadata": {"name": "bench-gw"}, "spec": {}
            }))?,
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gw = gateways.get("bench-gw").await?;
        if gw
            .status
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "gateway not Ready after 60s; is the operator running?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The gateway pod (Mosquitto and the gateway, which watches its keys
    // shards) runs on the node during the whole run: each shard write is
    // also sent to it.
    let pod_name = format!("{}-0", Gateway::workload_name("bench-gw"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let pod = pods.get_opt(&pod_name).await?;
        let ready = pod.as_ref().and_then(|p| p.status.as_ref()).is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "gateway pod {pod_name} not Ready after 180 s (are the images loaded? ./deploy.sh bench-devices loads them): {:?}",
            pod.and_then(|p| p.status).map(|s| s.container_statuses)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("  gateway pod {pod_name} Ready");

    // Baseline: N Secrets, same client, same concurrency.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("baseline-{i}")),
                        ..Default::default()
                    },
                    string_data: Some([("k".to_string(), "v".to_string())].into()),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &s).await.map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let baseline = t.elapsed();

    // N Devices: time from the first create until every one is Ready.
    let requests_before = operator.metric("fleetward_kube_api_requests_total");
    let by_kind_before = requests_by_kind(operator);
    let wakeups_before = by_labels(operator, "fleetward_reconcile_wakeups_total", &["kind", "cause"]);
    let devices: Api<Device> = Api::namespaced(client.clone(), ns);
    let watch = watcher(devices.clone(), watcher::Config::default()).applied_objects();
    let t = Instant::now();
    let create = stream::iter(0..n)
        .map(|i| {
            let devices = devices.clone();
            async move {
                let d: Device = serde_json::from_value(json!({
                    "apiVersion": "fleetward.io/v1alpha1", "kind": "Device",
                    "metadata": {"name": format!("dev-{i:05}")},
                    "spec": {"gatewayRef": "bench-gw", "category": "weatherStation"}
                }))
                .expect("valid device");
                devices.create(&PostParams::default(), &d).await.map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>();
    let wait_ready = async {
        let mut ready = std::collections::HashSet::new();
        let mut watch = std::pin::pin!(watch);
        while let Some(d) = watch.try_next().await? {
            if is_ready(&d) {
                ready.insert(kube::ResourceExt::name_any(&d));
                if ready.len() % 100 == 0 {
                    eprint!("\r  ready {}/{n}", ready.len());
                }
                if ready.len() == n {
                    break;
                }
            }
        }
        eprintln!();
        anyhow::Ok(())
    };
    let (created, waited) = tokio::join!(create, wait_ready);
    created?;
    waited?;
    let total = t.elapsed();
    let errors = operator.metric("fleetward_reconcile_errors_total");
    let reconciles = operator.metric("fleetward_reconciles_total{kind=\"device\"}");
    let reconcile_seconds = operator.metric("fleetward_reconcile_duration_seconds_sum{kind=\"device\"}");
    let requests = operator.metric("fleetward_kube_api_requests_total") - requests_before;
    let by_kind = requests_by_kind(operator);
    let wakeups = by_labels(operator, "fleetward_reconcile_wakeups_total", &["kind", "cause"]);
    let rss = peak_rss_mib(operator.pid());

    // Up to 1,000 Devices disabled at once: time until the Gateway's CRL
    // lists every one of their certificates.
    let revoked_n = n.min(1000);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let crl_name = fleetward_operator::crl::name("bench-gw");
    let listed = |cm: &ConfigMap| fleetward_operator::crl::parse(cm).map(|c| c.entries.len()).unwrap_or(0);
    let listed_before = listed(&retry(|| cms.get(&crl_name)).await?);
    let t = Instant::now();
    stream::iter(0..revoked_n)
        .map(|i| {
            let devices = devices.clone();
            async move {
                let patch = Patch::Merge(json!({"spec": {"enabled": false}}));
                let (name, pp) = (format!("dev-{i:05}"), PatchParams::default());
                retry(|| devices.patch(&name, &pp, &patch)).await.map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    // The bench's own patches are part of the time: printed apart, so a
    // slower API server is told from a slower operator.
    let patched = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now_listed = listed(&retry(|| cms.get(&crl_name)).await?) - listed_before;
        if now_listed >= revoked_n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "CRL lists {now_listed}/{revoked_n} after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revoke = t.elapsed();
    let by_kind_revoked = requests_by_kind(operator);
    let crl_writes = retry(|| cms.get(&crl_name)).await?;
    let crl_number = fleetward_operator::crl::parse(&crl_writes)
        .map(|c| c.number)
        .unwrap_or(0);

    // Every Device deleted: time until the operator has let all of them go
    // (certificates revoked, Secrets removed, finalizers released). One
    // DELETE per Device, as `kubectl delete devices --all` sends them (here
    // 32 at a time): a delete-collection request is worked through by the
    // API server one object at a time (its `--delete-collection-workers`
    // is 1) and answers only when all are marked, which timed the API
    // server (3,000 Devices: 71 s in that one call, 27 left to release
    // when it returned), not the operator.
    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let devices = devices.clone();
            async move {
                let (name, dp) = (format!("dev-{i:05}"), DeleteParams::default());
                // Gone already (a retried request that had landed): fine.
                retry(|| async {
                    match devices.delete(&name, &dp).await {
                        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                        other => other.map(|_| ()),
                    }
                })
                .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let marked_all = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let lp = Default::default();
        let items = retry(|| devices.list_metadata(&lp)).await?.items;
        let left = items.len();
        if left == 0 {
            break;
        }
        // Marked: the API server has set the deletion timestamp (its
        // delete-collection works through them one by one); the operator
        // releases only marked Devices.
        let marked = items.iter().filter(|d| d.metadata.deletion_timestamp.is_some()).count();
        eprint!("\r  deleting: {left} left, {marked} of them marked ");
        anyhow::ensure!(Instant::now() < deadline, "{left} Devices still there after 600 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!();
    let deleted = t.elapsed();
    let by_kind_deleted = requests_by_kind(operator);

    println!("devices                                   {n}");
    println!(
        "baseline: create {n} Secrets              {:.2} s",
        baseline.as_secs_f64()
    );
    println!(
        "create {n} Devices -> all Ready            {:.2} s  ({:.0} devices/s)",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    println!(
        "ratio Devices-Ready / Secrets baseline    {:.2} x",
        total.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("operator peak RSS (VmHWM) until all Ready   {rss:.1} MiB");
    println!("reconcile errors                          {}", errors as u64);
    // Each Device needs 3 writes of the operator (finalizer, Secret,
    // status) and an event; every reconcile beyond the first is a wake-up
    // from one of those writes.
    println!("device reconciles per Device              {:.2}", reconciles / n as f64);
    println!(
        "  mean time of a device reconcile         {:.0} ms",
        1000.0 * reconcile_seconds / reconciles.max(1.0)
    );
    for (key, count) in &wakeups {
        let Some(cause) = key.strip_prefix("device ") else {
            continue;
        };
        let per_device = (count - wakeups_before.get(key).unwrap_or(&0.0)) / n as f64;
        println!("  woken by {cause:<29}  {per_device:.3}");
    }
    println!("API requests per Device (operator)        {:.2}", requests / n as f64);
    per_device(&by_kind_before, &by_kind, n);
    println!(
        "disable {revoked_n} Devices -> all in the CRL      {:.2} s  (CRL number {crl_number})",
        revoke.as_secs_f64()
    );
    println!(
        "  the bench's {revoked_n} patches sent in         {:.2} s",
        patched.as_secs_f64()
    );
    println!("  API requests per disabled Device (operator, until all listed)");
    per_device(&by_kind, &by_kind_revoked, revoked_n);
    println!(
        "delete {n} Devices -> all released          {:.2} s",
        deleted.as_secs_f64()
    );
    println!(
        "  the bench's {n} deletes sent in          {:.2} s",
        marked_all.as_secs_f64()
    );
    println!("  API requests per deleted Device (operator)");
    per_device(&by_kind_revoked, &by_kind_deleted, n);
    println!(
        "operator peak RSS (VmHWM) overall         {:.1} MiB",
        peak_rss_mib(operator.pid())
    );
    let restarts: i32 = pods
        .get_opt(&pod_name)
        .await?
        .and_then(|p| p.status?.container_statuses)
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    println!("gateway pod container restarts during the run  {restarts}");
    Ok(())
}

/// What each "verb resource" grew by between two readings, per Device.
fn per_device(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    devices: usize,
) {
    let total: f64 = after.iter().map(|(k, v)| v - before.get(k).unwrap_or(&0.0)).sum();
    println!(
        "    all                                   {:.3}",
        total / devices as f64
    );
    for (kind, count) in after {
        let per_device = (count - before.get(kind).unwrap_or(&0.0)) / devices as f64;
        if per_device >= 0.0005 {
            println!("    {kind:<36}  {per_device:.3}");
        }
    }
}

/// The operator's API requests so far, by "verb resource".
fn requests_by_kind(operator: &Workload) -> std::collections::BTreeMap<String, f64> {
    by_labels(operator, "fleetward_kube_api_requests_total", &["verb", "resource"])
}

/// A counter's values so far, summed by the values of `names` (joined by a space).
fn by_labels(operator: &Workload, metric: &str, names: &[&str]) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let prefix = format!("{metric}{{");
    for line in operator.metrics().lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let key = names.iter().map(|n| label(n)).collect::<Vec<_>>().join(" ");
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// The bench's own reads and writes, retried when the connection drops
/// (the API server under load closes some): a measurement must not fail
/// on the client's side.
async fn retry<T, F, Fut>(mut call: F) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(kube::Error::Service(e)) if attempt < 30 => {
                attempt += 1;
                eprintln!("\n  (client: {e}; retrying)");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}
