//! Operator test harness: the shared kit plus the operator binary built from
//! this tree, one process per test binary.
#![allow(dead_code)]

pub use fleetward_testkit::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Operator {
    child: Child,
    pub http: String,
    pub log: PathBuf,
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
            .env("FLEETWARD_KAFKA_BOOTSTRAP", env("KAFKA_BROKERS"))
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
