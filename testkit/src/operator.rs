//! The operator inside the test process, and typed readiness checks of its
//! resources: for the operator's own tests and the system tests (feature
//! `operator`; the workloads' tests do not depend on the operator).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleetward_operator::crd::{Device, Gateway};

use crate::cluster::{client, env, install_crds, ready_reason};

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
                let ctx = fleetward_operator::context::Context::start(client().await, config, metrics)
                    .await
                    .expect("operator context");
                tx.send(()).unwrap();
                fleetward_operator::controllers::run(ctx).await;
            });
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("operator started");
    });
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
