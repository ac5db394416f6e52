//! Harness for the ingestor's tests: the real binary against a loopback
//! HTTP source (testdata/) and the real local Kafka (`./deploy.sh dev-up`).
#![allow(dead_code)]

#[allow(unused_imports)] // each test binary uses a different part
pub use fleetward_testkit::{dublin, dublin_text, env, free_port, http_get, unique, wait_until};

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};

/// Serves `app` on a loopback port; returns `http://127.0.0.1:port`.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The ingestor binary, killed when dropped.
pub struct Ingestor {
    child: Child,
    pub metrics_url: String,
    pub log: PathBuf,
}

impl Ingestor {
    /// Starts the binary with `vars` (plus Kafka and a metrics port).
    pub fn start(topic: &str, vars: &[(&str, &str)], rust_log: &str) -> Self {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", unique("ingestor")));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward-ingestor"));
        cmd.env_clear()
            .env("KAFKA_BROKERS", env("KAFKA_BROKERS"))
            .env("KAFKA_TOPIC", topic)
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", rust_log);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("ingestor starts");
        let i = Ingestor {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&i.metrics_url).is_none() {
            assert!(
                Instant::now() < deadline,
                "ingestor did not serve /metrics; log:\n{}",
                i.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        i
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics(), series)
    }

    /// One scrape of `/metrics`, to read several series consistently.
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_url).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Ingestor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of the series in `text` whose line starts with `series`.
pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Records of `topic` from the beginning, by key (the last one per key),
/// until `keys` distinct keys were seen or `secs` passed.
pub fn consume_by_key(topic: &str, keys: usize, secs: u64) -> HashMap<String, serde_json::Value> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("group.id", unique("test-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
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
