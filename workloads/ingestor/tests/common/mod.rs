//! Harness for the ingestor's tests: the real binary against a loopback
//! HTTP source (testdata/) and the real local Kafka (`./deploy.sh dev-up`).
#![allow(dead_code)]

#[allow(unused_imports)] // each test binary uses a different part
pub use fleetward_testkit::{
    Workload, dublin, dublin_text, env, free_port, http_get, kafka_reader, metric_in, unique, wait_until,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Message, OwnedMessage};

/// Serves `app` on a loopback port; returns `http://127.0.0.1:port`.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Starts the ingestor binary with `vars` (plus Kafka and a metrics port).
pub fn start_ingestor(topic: &str, vars: &[(&str, &str)], rust_log: &str) -> Workload {
    let port = free_port();
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", unique("ingestor")));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward-ingestor"));
    cmd.env_clear()
        .env("KAFKA_BROKERS", env("KAFKA_BROKERS"))
        .env("KAFKA_TOPIC", topic)
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", rust_log)
        .envs(vars.iter().copied());
    Workload::spawn(cmd, format!("http://127.0.0.1:{port}"), log, "/metrics", 30)
}

/// Records of `topic` from the beginning, by key (the last one per key),
/// until `keys` distinct keys were seen or `secs` passed.
pub fn consume_by_key(topic: &str, keys: usize, secs: u64) -> HashMap<String, serde_json::Value> {
    let c: BaseConsumer = kafka_reader(topic);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut out = HashMap::new();
    while out.len() < keys && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let m: OwnedMessage = m.detach();
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            out.insert(key, serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    out
}
