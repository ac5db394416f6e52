//! Gateway test harness: a Gateway and its Devices made by the real
//! operator, real Mosquitto running the generated configuration, a loopback
//! HTTP backend, a Kafka topic, and the gateway binary started with exactly
//! the environment the operator put into its StatefulSet (paths and ports
//! moved to this machine). Used by the gateway and billing tests and the
//! gateway benches.

mod backend;
mod mqtt;
mod process;

pub use backend::{Backend, BackendCall};
pub use mqtt::{RawSeen, flood, raw_client, raw_client_v5, settled};
pub use process::{GatewayProc, container_env, spawn_with_env, start_gateway, start_gateway_with};

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_simulator::{ConnectOptions, Credentials, Device, DeviceEvent};
use fleetward_testkit::{Broker, TestNs, device_yaml_with_category, env, kafka_reader, operator_in_process};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use sqlx::PgPool;
use tokio::sync::mpsc;

pub struct Harness {
    pub ns: TestNs,
    pub gw: String,
    pub tmp: tempfile::TempDir,
    pub broker: Broker,
    pub backend: Backend,
    pub topic: String,
    pub gateway: GatewayProc,
    pub db: PgPool,
}

pub struct Setup<'a> {
    pub prefix: &'a str,
    /// (name, category, extra spec lines)
    pub devices: &'a [(&'a str, &'a str, &'a str)],
    /// Extra lines under the Gateway's `spec.security`.
    pub security: &'a str,
    /// Also forward to the loopback HTTP backend (Kafka always).
    pub backend: bool,
}

impl Harness {
    pub async fn start(setup: Setup<'_>) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        operator_in_process();
        let ns = TestNs::new(setup.prefix).await;
        let backend = Backend::start().await;
        let topic = format!("telemetry-{}", ns.name);
        ns.apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: audit-db}}\nstringData: {{url: \"{}\"}}\n",
            env("DATABASE_URL")
        ))
        .await;
        let backend_line = if setup.backend {
            format!("  backend: {{url: \"{}\", timeoutMs: 2000}}\n", backend.url)
        } else {
            String::new()
        };
        // A 300 s window unless the test sets its own.
        let window = if setup.security.contains("timestampWindowSeconds") {
            ""
        } else {
            "    timestampWindowSeconds: 300\n"
        };
        let gateway_yaml = format!(
            "apiVersion: fleetward.io/v1alpha1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n{backend_line}  \
             kafka: {{topic: {topic}, bootstrapServers: \"{}\"}}\n  \
             audit: {{connectionSecretRef: {{name: audit-db, key: url}}}}\n  \
             security:\n{window}{}\n",
            env("KAFKA_BROKERS"),
            setup.security
        );
        let devices: Vec<String> = setup
            .devices
            .iter()
            .map(|(n, c, extra)| device_yaml_with_category(n, "gw", c, extra))
            .collect();
        ns.gateway_with_devices(&gateway_yaml, &devices).await;
        let tmp = tempfile::tempdir().unwrap();
        let broker = Broker::start(&ns, "gw", &tmp.path().join("broker")).await;
        create_topic(&topic);
        let gateway = start_gateway(&ns, "gw", &broker, tmp.path()).await;
        let db = PgPool::connect(&env("DATABASE_URL")).await.unwrap();
        Harness {
            ns,
            gw: "gw".into(),
            tmp,
            broker,
            backend,
            topic,
            gateway,
            db,
        }
    }

    pub async fn device(&self, name: &str) -> (Arc<Device>, mpsc::Receiver<DeviceEvent>) {
        let creds = Credentials::from_secret(self.ns.client.clone(), &self.ns.name, name)
            .await
            .unwrap();
        let (dev, mut events) = Device::connect(creds, &ConnectOptions::new("localhost", self.broker.port))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(DeviceEvent::Connected)) => break,
                Ok(Some(_)) => continue,
                _ => panic!("device {name} did not connect"),
            }
        }
        (dev, events)
    }

    /// Audit rows of this test's gateway: (event, reason, device, message_id).
    pub async fn audit(&self) -> Vec<(String, Option<String>, Option<String>, Option<String>)> {
        sqlx::query_as(
            "SELECT event, reason, device_id, message_id FROM fleetward_gateway.gateway_audit \
             WHERE namespace = $1 ORDER BY id",
        )
        .bind(&self.ns.name)
        .fetch_all(&self.db)
        .await
        .unwrap_or_default()
    }

    /// Waits until the audit holds a row matching `pred`.
    pub async fn audit_has(
        &self,
        what: &str,
        pred: impl Fn(&(String, Option<String>, Option<String>, Option<String>)) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.audit().await.iter().any(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no audit row for {what}: {:#?}",
                self.audit().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An HTTPS client of the command API trusting the Gateway's CA, and
    /// the API's bearer key.
    pub async fn command_client(&self) -> (reqwest::Client, String) {
        let key = self.ns.secret_value("gw-command-api", "api-key").await;
        let ca = reqwest::Certificate::from_pem(self.ns.secret_value("gw-ca", "tls.crt").await.as_bytes()).unwrap();
        (reqwest::Client::builder().tls_certs_only([ca]).build().unwrap(), key)
    }

    /// Telemetry records on the Kafka topic, read from the beginning.
    pub fn consumer(&self) -> StreamConsumer {
        kafka_reader(&self.topic)
    }
}

/// Reads records until `done` says so or `secs` pass; returns the values.
pub async fn read_records(
    c: &StreamConsumer,
    secs: u64,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done(&out) {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => {
                if let Some(p) = m.payload() {
                    out.push(serde_json::from_slice(p).unwrap());
                }
            }
            Ok(Err(e)) => panic!("kafka: {e}"),
            Err(_) => break,
        }
    }
    out
}

pub fn create_topic(topic: &str) {
    let out = Command::new("java")
        .args(["-cp", &format!("{}/*", env("FLEETWARD_KAFKA_LIBS"))])
        .arg("org.apache.kafka.tools.TopicCommand")
        .args([
            "--bootstrap-server",
            &env("KAFKA_BROKERS"),
            "--create",
            "--if-not-exists",
        ])
        .args(["--topic", topic, "--partitions", "3", "--replication-factor", "1"])
        .output()
        .expect("java runs");
    assert!(
        out.status.success(),
        "create topic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nanoseconds since the Unix epoch: the send time the gateway benches
/// put in a message id (`device-seq-nanos`).
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Audit rows of one device in this test's namespace, by event.
pub async fn audit_rows(h: &Harness, device: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM fleetward_gateway.gateway_audit WHERE namespace = $1 AND device_id = $2")
        .bind(&h.ns.name)
        .bind(device)
        .fetch_one(&h.db)
        .await
        .unwrap_or(0)
}
