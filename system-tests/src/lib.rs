//! What the end-to-end tests use to drive a cluster the way a user does:
//! `helm`, `kubectl` (apply, exec, port-forward-free Service addresses),
//! PostgreSQL through `kubectl exec … psql`, and Prometheus's HTTP API
//! through its Service address (the host routes Service addresses to the
//! node; plain GETs to others are testkit's `http_status`). Every call that
//! fails panics with the command's own output.

pub mod gateway;
pub mod webhook;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub use fleetward_testkit::{env, repo_root};

/// The host's address on the link to the node (pods reach it).
pub fn host_ip() -> String {
    env("FLEETWARD_HOST_IP")
}

/// The local node's address (NodePorts listen there).
pub fn node_ip() -> String {
    env("FLEETWARD_NODE_IP")
}

pub fn helm_bin() -> PathBuf {
    repo_root().join(".cache/bin/helm")
}

fn run(mut cmd: Command, stdin: Option<&str>) -> (bool, String, String) {
    cmd.env("KUBECONFIG", env("KUBECONFIG"));
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl args…`; panics with stderr when it fails.
pub fn kubectl(args: &[&str]) -> String {
    let mut cmd = Command::new(fleetward_testkit::kubectl());
    cmd.args(args);
    let (ok, out, err) = run(cmd, None);
    assert!(ok, "kubectl {}: {err}{out}", args.join(" "));
    out
}

/// `kubectl args…` that may fail: (success, stdout + stderr).
pub fn kubectl_try(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(fleetward_testkit::kubectl());
    cmd.args(args);
    let (ok, out, err) = run(cmd, None);
    (ok, out + &err)
}

/// `kubectl apply -f -` of a manifest.
pub fn kubectl_apply(manifest: &str) -> String {
    let mut cmd = Command::new(fleetward_testkit::kubectl());
    cmd.args(["apply", "-f", "-"]);
    let (ok, out, err) = run(cmd, Some(manifest));
    assert!(ok, "kubectl apply: {err}{out}");
    out
}

/// `kubectl -n ns get what… -o jsonpath=path`.
pub fn jsonpath(ns: &str, what: &[&str], path: &str) -> String {
    let mut args = vec!["-n", ns, "get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend(["-o", &p]);
    kubectl(&args)
}

/// Waits up to `secs` for every `kind` in `ns` to be Ready; describes them
/// when they are not.
pub fn ready(ns: &str, kind: &str, secs: u64) {
    let timeout = format!("--timeout={secs}s");
    let (ok, out) = kubectl_try(&["-n", ns, "wait", "--for=condition=Ready", kind, "--all", &timeout]);
    assert!(
        ok,
        "{kind} not Ready: {out}\n{}",
        kubectl_try(&["-n", ns, "describe", kind]).1
    );
}

/// The holder of the operator's Lease in `ns`: `<pod>_<random>`, per process.
pub fn leader(ns: &str) -> String {
    jsonpath(ns, &["lease", "fleetward-operator"], "{.spec.holderIdentity}")
}

/// The pod of a Lease holder's identity.
pub fn leader_pod(identity: &str) -> &str {
    identity.rsplit_once('_').map_or(identity, |(pod, _)| pod)
}

/// Kills `container` of `pod` outright (SIGKILL through the node's
/// containerd: no chance to clean up); the kubelet restarts it.
pub fn sigkill_container(ns: &str, pod: &str, container: &str) {
    let id = jsonpath(
        ns,
        &["pod", pod],
        &format!(r#"{{.status.containerStatuses[?(@.name=="{container}")].containerID}}"#),
    );
    let id = id.trim_start_matches("containerd://");
    assert!(!id.is_empty(), "{pod} has no running {container} container");
    let killed = Command::new("ctr")
        .args(["--address", &env("FLEETWARD_CONTAINERD_SOCK"), "--namespace", "k8s.io"])
        .args(["task", "kill", "--signal", "SIGKILL", id])
        .output()
        .expect("ctr runs");
    assert!(
        killed.status.success(),
        "ctr task kill: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
}

pub fn helm(args: &[&str]) -> String {
    let mut cmd = Command::new(helm_bin());
    cmd.args(args);
    let (ok, out, err) = run(cmd, None);
    assert!(ok, "helm {}: {err}{out}", args.join(" "));
    out
}

/// The files of `examples/` (not its subdirectories), in order, with every
/// `namespace: fleet-demo` moved to `namespace` and the Namespace object
/// left out (the release's namespace already exists).
pub fn examples_in(namespace: &str) -> String {
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| manifest_in(f, namespace))
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One file under `examples/` (e.g. `billing/tariff.yaml`), moved to
/// `namespace` as `examples_in` moves the others.
pub fn example_in(file: &str, namespace: &str) -> String {
    manifest_in(&repo_root().join("examples").join(file), namespace)
}

fn manifest_in(file: &std::path::Path, namespace: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
        if value.is_null() || value["kind"] == "Namespace" {
            continue;
        }
        value["metadata"]["namespace"] = namespace.into();
        docs.push(serde_yaml::to_string(&value).expect("YAML"));
    }
    docs.join("---\n")
}

/// A SQL query in the release's PostgreSQL pod (`psql -tA`): what an
/// operator of the cluster would run, with no database port opened.
pub fn psql(namespace: &str, release: &str, sql: &str) -> String {
    kubectl(&[
        "-n",
        namespace,
        "exec",
        &format!("statefulset/{release}-postgresql"),
        "--",
        "psql",
        "-h",
        "/var/run/postgresql",
        "-U",
        "fleetward",
        "-d",
        "fleetward",
        "-v",
        "ON_ERROR_STOP=1",
        "-tAc",
        sql,
    ])
}

/// `psql` in the release's PostgreSQL pod as a client from outside it
/// would connect: to the Service, with the connection URL `url` (given on
/// stdin, so its password is in no argument). Returns (success, stdout,
/// stderr): kubectl may write its own notices to stderr (e.g. `Unknown
/// stream id`), so an answer is read from stdout alone.
pub fn psql_with_url(namespace: &str, release: &str, url: &str, sql: &str) -> (bool, String, String) {
    let mut cmd = Command::new(fleetward_testkit::kubectl());
    cmd.args([
        "-n",
        namespace,
        "exec",
        "-i",
        &format!("statefulset/{release}-postgresql"),
        "--",
        "sh",
        "-c",
        r#"read -r url; exec psql "$url" -v ON_ERROR_STOP=1 -tAc "$1""#,
        "psql",
        sql,
    ]);
    run(cmd, Some(&format!("{url}\n")))
}

/// Prometheus's HTTP API through its Service address (the host routes the
/// Service range to the node). Returns the parsed JSON answer.
pub fn prometheus(base: &str, path: &str, query: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new("curl");
    cmd.args(["-fsS", "--max-time", "10", "--get"]);
    if let Some(q) = query {
        cmd.arg("--data-urlencode").arg(format!("query={q}"));
    }
    cmd.arg(format!("{base}{path}"));
    let (ok, out, err) = run(cmd, None);
    assert!(ok, "Prometheus {path} {query:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("Prometheus answer is not JSON ({e}): {out}"))
}

/// An instant query's result vector.
pub fn prom_query(base: &str, query: &str) -> Vec<serde_json::Value> {
    let answer = prometheus(base, "/api/v1/query", Some(query));
    assert_eq!(answer["status"], "success", "query {query}: {answer}");
    answer["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Sum of an instant query's values.
pub fn prom_sum(base: &str, query: &str) -> f64 {
    prom_query(base, query)
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .sum()
}

/// Pods of a namespace as `name phase ready/total`, for messages.
pub fn pods(namespace: &str) -> String {
    kubectl_try(&["-n", namespace, "get", "pods", "-o", "wide"]).1
}

/// True when the namespace has pods and every one is Running with all
/// containers ready.
pub fn all_pods_ready(namespace: &str) -> bool {
    let (ok, out) = kubectl_try(&[
        "-n",
        namespace,
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.status.phase} {.status.containerStatuses[*].ready}{\"\\n\"}{end}",
    ]);
    ok && !out.trim().is_empty()
        && out
            .lines()
            .all(|l| l.starts_with("Running ") && !l.split_whitespace().skip(1).any(|r| r != "true"))
}
