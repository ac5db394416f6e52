//! `helm upgrade` from the previous release's chart carries the CRDs and
//! loses nothing, on the node of `./deploy.sh dev-up`:
//!
//! 1. The cluster is put on the previous release: its CRDs (the Device CRD
//!    without `lastSeen` and `online`), applied as its chart's `crds/`
//!    folder left them (no Helm ownership), and its chart installed
//!    (the operator only; this build's images: the machine has no registry
//!    to pull the previous ones from). A Gateway and two Devices become
//!    Ready. A `lastSeen` written into a Device's status is dropped by the
//!    API server.
//! 2. `helm upgrade --take-ownership` to this chart: the CRDs are its
//!    templates now, updated with it. The same write is kept, `kubectl get
//!    devices` has the new columns, and the Devices, their keys and
//!    certificates and the Gateway's CA are the same objects with the same
//!    contents, also after the operator restarts and reconciles them all.
//! 3. `helm uninstall` keeps the CRDs (and so every resource of theirs).

use std::path::Path;
use std::process::Command;

use fleetward_system_tests::*;
use fleetward_testkit::{GATEWAY_YAML, TestNs, device_yaml, rand_u32, wait_until_blocking};

/// The chart of the previous release: main before the CRDs became templates
/// and before Devices had `lastSeen` and `online`.
const PREVIOUS: &str = "81e6d9afdd954e11f8c0fce2f640e044b85ffe2c";
const RELEASE: &str = "fw-up";
/// Kept by `helm uninstall`.
const CRDS: [&str; 4] = [
    "devices.fleetward.io",
    "gateways.fleetward.io",
    "stationfeeds.fleetward.io",
    "tariffs.fleetward.io",
];

/// The operator only: no database, Kafka, Prometheus or Alertmanager.
fn values() -> Vec<String> {
    let local = repo_root().join("devenv/values-local.yaml");
    [
        "-f",
        local.to_str().unwrap(),
        "--set",
        "postgresql.enabled=false,kafka.enabled=false,prometheus.enabled=false,alertmanager.enabled=false",
        "--set",
        "stationApi.enabled=false,database.roles.enabled=false,grafana.dashboards.enabled=false",
        "--set",
        "database.url=postgres://unused@127.0.0.1:1/none,kafka.bootstrapServers=127.0.0.1:1",
        "--wait",
        "--timeout",
        "5m",
    ]
    .map(String::from)
    .to_vec()
}

/// The previous release's chart and CRDs, from the repository's history
/// (fetched from `origin` when a shallow clone lacks the commit).
fn previous_chart(dir: &Path) -> std::path::PathBuf {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(args)
            .output()
            .expect("git runs")
    };
    if !git(&["cat-file", "-e", &format!("{PREVIOUS}^{{commit}}")])
        .status
        .success()
    {
        let fetched = git(&["fetch", "--quiet", "--depth", "1", "origin", PREVIOUS]);
        assert!(
            fetched.status.success(),
            "{PREVIOUS} is not in this clone and could not be fetched from origin: {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
    }
    let archive = Command::new("git")
        .args([
            "-C",
            repo_root().to_str().unwrap(),
            "archive",
            PREVIOUS,
            "helm/fleetward",
            "crds",
        ])
        .output()
        .expect("git runs");
    assert!(
        archive.status.success(),
        "git archive {PREVIOUS}: {} (the test needs the repository's history: a full clone)",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut tar = Command::new("tar")
        .args(["-x", "-C", dir.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("tar runs");
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    assert!(tar.wait().unwrap().success(), "tar -x");
    dir.join("helm/fleetward")
}

/// A digest of secret data: compared, never printed.
fn digest(data: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// What must survive the upgrade: each Device's uid, serial and a digest of
/// its credentials, and the Gateway's uid and a digest of its CA.
fn fleet_state(ns: &str) -> Vec<String> {
    let mut state = Vec::new();
    for d in ["d1", "d2"] {
        let secret = jsonpath(ns, &["secret", &format!("{d}-credentials")], "{.data}");
        assert!(secret.contains("hmac.key"), "{d}'s credentials");
        state.push(format!(
            "{d} uid={} serial={} credentials={}",
            jsonpath(ns, &["device", d], "{.metadata.uid}"),
            jsonpath(ns, &["device", d], "{.status.serial}"),
            digest(&secret)
        ));
    }
    let ca = jsonpath(ns, &["secret", "gw-ca"], "{.data}");
    let gw = jsonpath(ns, &["gateway", "gw"], "{.metadata.uid}");
    state.push(format!("gw uid={gw} ca={}", digest(&ca)));
    state
}

/// Writes `lastSeen` and `online` into d1's status, as a gateway does, and
/// returns the `lastSeen` the API server kept (empty: dropped).
fn write_last_seen(ns: &str) -> String {
    kubectl(&[
        "-n",
        ns,
        "patch",
        "device",
        "d1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"lastSeen":"2026-12-07T10:00:00Z","online":true}}"#,
    ]);
    jsonpath(ns, &["device", "d1"], "{.status.lastSeen}")
}

/// Removes what the test made, also when it fails half-way: the fleet
/// (while the operator still runs to release the finalizers), the release
/// and both namespaces.
struct Teardown {
    release_ns: String,
    fleet_ns: Option<String>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(ns) = &self.fleet_ns {
            let _ = kubectl_try(&["-n", ns, "delete", "devices,gateways", "--all", "--timeout=60s"]);
            let _ = kubectl_try(&["delete", "namespace", ns, "--wait=false"]);
        }
        let _ = Command::new(helm_bin())
            .args([
                "uninstall",
                RELEASE,
                "-n",
                &self.release_ns,
                "--wait",
                "--timeout",
                "2m",
            ])
            .env("KUBECONFIG", fleetward_testkit::env("KUBECONFIG"))
            .output();
        let _ = kubectl_try(&["delete", "namespace", &self.release_ns, "--wait=false"]);
    }
}

fn operator_ready(ns: &str) {
    wait_until_blocking("the operator pod Ready", 180, || all_pods_ready(ns), || pods(ns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_from_the_previous_release_carries_the_crds_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let previous = previous_chart(dir.path());
    let release_ns = format!("fw-upgrade-{:08x}", rand_u32());
    let mut teardown = Teardown {
        release_ns: release_ns.clone(),
        fleet_ns: None,
    };

    // 1. The previous release: its CRDs as its crds/ folder installed them
    //    (replaced whole: no Helm labels or annotations, no newer field).
    fleetward_testkit::install_crds();
    kubectl(&["replace", "-f", dir.path().join("crds").to_str().unwrap()]);
    wait_until_blocking(
        "the previous Device CRD served",
        30,
        || !kubectl(&["get", "crd", "devices.fleetward.io", "-o", "yaml"]).contains("lastSeen"),
        || "devices.fleetward.io still has lastSeen".into(),
    );
    let mut install = vec![
        "install",
        RELEASE,
        previous.to_str().unwrap(),
        "-n",
        &release_ns,
        "--create-namespace",
    ];
    let values = values();
    install.extend(values.iter().map(String::as_str));
    helm(&install);
    operator_ready(&release_ns);

    // Pods none: the fleet's namespace has a quota of zero pods (no gateway
    // pod is needed for the Gateway's CA and the Devices' credentials).
    let fleet = TestNs::new("fw-upgrade-fleet").await;
    let ns = fleet.name.as_str();
    teardown.fleet_ns = Some(fleet.name.clone());
    fleet.apply_yaml(GATEWAY_YAML).await;
    for d in ["d1", "d2"] {
        fleet.apply_yaml(&device_yaml(d, "gw", "")).await;
    }
    ready(ns, "gateways", 120);
    ready(ns, "devices", 120);
    let before = fleet_state(ns);
    assert_eq!(
        write_last_seen(ns),
        "",
        "the previous Device CRD has no lastSeen: the API server drops it"
    );

    // 2. The upgrade.
    let chart = repo_root().join("helm/fleetward");
    let mut upgrade = vec![
        "upgrade",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        &release_ns,
        "--take-ownership",
    ];
    upgrade.extend(values.iter().map(String::as_str));
    helm(&upgrade);
    let crd = kubectl(&["get", "crd", "devices.fleetward.io", "-o", "json"]);
    let crd: serde_json::Value = serde_json::from_str(&crd).unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "{}",
        crd["metadata"]
    );
    assert_eq!(crd["metadata"]["annotations"]["meta.helm.sh/release-name"], RELEASE);
    wait_until_blocking(
        "the new Device CRD served",
        30,
        || kubectl(&["-n", ns, "get", "devices"]).contains("LASTSEEN"),
        || kubectl(&["-n", ns, "get", "devices"]),
    );
    assert_eq!(write_last_seen(ns), "2026-12-07T10:00:00Z", "the new field is kept");
    assert_eq!(
        fleet_state(ns),
        before,
        "the Devices, their credentials and the CA are unchanged"
    );

    // The operator restarts (as a new image would make it) and reconciles
    // every Device against the new CRD: nothing is issued again, and the
    // gateway's field stays.
    let old_leader = leader(&release_ns);
    kubectl(&["-n", &release_ns, "delete", "pods", "--all", "--wait=true"]);
    operator_ready(&release_ns);
    wait_until_blocking(
        "the restarted operator to lead",
        60,
        || {
            let now = leader(&release_ns);
            !now.is_empty() && now != old_leader
        },
        || kubectl_try(&["-n", &release_ns, "get", "lease", "-o", "yaml"]).1,
    );
    // A new leader reconciles every object once, at once.
    std::thread::sleep(std::time::Duration::from_secs(10));
    ready(ns, "devices", 120);
    assert_eq!(fleet_state(ns), before, "after the operator's restart too");
    assert_eq!(
        jsonpath(ns, &["device", "d1"], "{.status.lastSeen}"),
        "2026-12-07T10:00:00Z",
        "the operator leaves the gateway's field alone"
    );
    let table = kubectl(&["-n", ns, "get", "devices"]);
    assert!(table.lines().next().unwrap_or_default().contains("ONLINE"), "{table}");

    // 3. Uninstall keeps the CRDs. The fleet goes first, while the
    //    operator runs to release the Devices' finalizers.
    kubectl(&["-n", ns, "delete", "devices,gateways", "--all", "--timeout=120s"]);
    helm(&["uninstall", RELEASE, "-n", &release_ns, "--wait", "--timeout", "2m"]);
    for name in CRDS {
        let (kept, out) = kubectl_try(&["get", "crd", name]);
        assert!(kept, "{name} kept by helm uninstall: {out}");
    }
    drop(teardown);
}
