//! Operator test harness: the shared kit plus the operator binary built from
//! this tree, one process per test binary.
#![allow(dead_code)]

pub use fleetward_testkit::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Starts the operator built from this tree with `args`, logging to
/// `<log_name>.log`; it exits when this process ends (its stdin closes).
pub fn spawn_operator(args: &[&str], log_name: &str) -> Workload {
    spawn_operator_with_env(args, log_name, &[])
}

/// `spawn_operator` with extra environment variables.
pub fn spawn_operator_with_env(args: &[&str], log_name: &str, vars: &[(&str, &str)]) -> Workload {
    let port = free_port();
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{log_name}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward-operator"));
    cmd.args(["--http-addr", &format!("127.0.0.1:{port}"), "--exit-on-stdin-eof"])
        .args(args)
        .env("KUBECONFIG", env("KUBECONFIG"))
        .env("FLEETWARD_KAFKA_BOOTSTRAP", env("KAFKA_BROKERS"))
        .env("RUST_LOG", "info,kube_runtime=warn")
        .envs(vars.iter().copied());
    Workload::spawn(cmd, format!("http://127.0.0.1:{port}"), log, "/health", 30)
}

/// Starts (once per test binary) the operator built from this tree.
pub fn operator() -> &'static Workload {
    static OP: OnceLock<Workload> = OnceLock::new();
    OP.get_or_init(|| {
        install_crds();
        let binary = std::env::args()
            .next()
            .map(|a| Path::new(&a).file_name().unwrap().to_string_lossy().into_owned())
            .unwrap_or_default();
        spawn_operator(&[], &format!("operator-{binary}-{}", std::process::id()))
    })
}
