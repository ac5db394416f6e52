//! Gateway test harness: a Gateway and its Devices made by the real
//! operator, real Mosquitto running the generated configuration, a loopback
//! HTTP backend, a Kafka topic, and the gateway binary started with exactly
//! the environment the operator put into its StatefulSet (paths and ports
//! moved to this machine).
#![allow(dead_code)]

pub use fleetward_testkit::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetward_simulator::{ConnectOptions, Credentials, Device, DeviceEvent};
use k8s_openapi::api::apps::v1::StatefulSet;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use sqlx::PgPool;
use tokio::sync::mpsc;

/// One HTTP request the backend received.
#[derive(Clone, Debug)]
pub struct BackendCall {
    pub device: String,
    pub body: String,
}

/// The seed-003 backend: records calls, answers like the seed's example.
pub struct Backend {
    pub url: String,
    pub calls: Arc<Mutex<Vec<BackendCall>>>,
    /// While set, every call gets 503 and is not recorded (an outage).
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    pub async fn start() -> Backend {
        use axum::extract::{Path as UrlPath, State};
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicBool, Ordering};
        type Shared = (Arc<Mutex<Vec<BackendCall>>>, Arc<AtomicBool>);
        let calls: Arc<Mutex<Vec<BackendCall>>> = Arc::default();
        let down: Arc<AtomicBool> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/device/{id}/data",
                axum::routing::post(
                    |State((calls, down)): State<Shared>, UrlPath(id): UrlPath<String>, body: String| async move {
                        if down.load(Ordering::SeqCst) {
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        calls.lock().unwrap().push(BackendCall { device: id, body });
                        axum::Json(serde_json::json!({"status": "received", "alert": "temperature normal"}))
                            .into_response()
                    },
                ),
            )
            .with_state((calls.clone(), down.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend {
            url: format!("http://{addr}"),
            calls,
            down,
        }
    }

    pub fn calls(&self) -> Vec<BackendCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// The gateway binary, with the environment it was started with.
pub struct GatewayProc {
    process: Workload,
    pub env: HashMap<String, String>,
    pub api_url: String,
}

/// Log, metrics and signals are those of any workload.
impl std::ops::Deref for GatewayProc {
    type Target = Workload;
    fn deref(&self) -> &Workload {
        &self.process
    }
}

impl std::ops::DerefMut for GatewayProc {
    fn deref_mut(&mut self) -> &mut Workload {
        &mut self.process
    }
}

impl GatewayProc {
    pub fn rejected(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "fleetward_gateway_messages_total{{reason=\"{reason}\",result=\"rejected\"}}"
        ))
    }

    pub fn accepted(&self) -> f64 {
        self.metric("fleetward_gateway_messages_total{reason=\"ok\",result=\"accepted\"}")
    }
}

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

/// Starts the gateway binary with the env of the operator's StatefulSet.
pub async fn start_gateway(ns: &TestNs, gw: &str, broker: &Broker, tmp: &Path) -> GatewayProc {
    let deploy = ns.api::<StatefulSet>().get(&format!("{gw}-gateway")).await.unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let container = pod.containers.into_iter().find(|c| c.name == "gateway").unwrap();
    let client_dir = tmp.join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        write(
            &client_dir,
            k,
            &ns.secret_value(&format!("{gw}-gateway-client"), k).await,
        );
    }
    let broker_dir = broker.dir.display().to_string();
    let mut env_map = container_env(ns, container.env.unwrap_or_default(), |v| {
        v.replace("/etc/fleetward/client", &client_dir.display().to_string())
            .replace("/mosquitto/", &format!("{broker_dir}/"))
    })
    .await;
    // What differs on this machine: the broker's port, free ports for the
    // gateway's own listeners, the broker's pid, and API access.
    let metrics_port = free_port();
    let api_port = free_port();
    env_map.insert("MQTT_PORT".into(), broker.port.to_string());
    env_map.insert("METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}"));
    env_map.insert("COMMAND_API_PORT".into(), api_port.to_string());
    env_map.insert("COMMAND_API_BIND".into(), "127.0.0.1".into());
    env_map.insert("MOSQUITTO_PID".into(), broker.pid().to_string());
    env_map.insert("KUBECONFIG".into(), env("KUBECONFIG"));
    env_map.insert("RUST_LOG".into(), "info,rdkafka=warn".into());
    let process = spawn_with_env("fleetward-gateway", &env_map, metrics_port, tmp.join("gateway.log"));
    GatewayProc {
        process,
        env: env_map,
        api_url: format!("https://localhost:{api_port}"),
    }
}

/// A container's environment as the kubelet would give it: literal values
/// through `literal` (which moves paths to this machine), `secretKeyRef`
/// values read from their Secrets.
pub async fn container_env(
    ns: &TestNs,
    vars: Vec<k8s_openapi::api::core::v1::EnvVar>,
    literal: impl Fn(String) -> String,
) -> HashMap<String, String> {
    let mut env_map = HashMap::new();
    for e in vars {
        let value = match (e.value, e.value_from) {
            (Some(v), _) => literal(v),
            (None, Some(from)) => {
                let r = from.secret_key_ref.expect("only secretKeyRef is used");
                ns.secret_value(&r.name, &r.key).await
            }
            _ => panic!("env {} has no value", e.name),
        };
        env_map.insert(e.name, value);
    }
    env_map
}

/// Starts a workspace binary with exactly `env` (and PATH), its output in
/// `log`, and waits for `/health` on its metrics port.
pub fn spawn_with_env(binary: &str, env: &HashMap<String, String>, metrics_port: u16, log: PathBuf) -> Workload {
    let mut cmd = Command::new(workspace_binary(binary));
    cmd.env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    Workload::spawn(cmd, format!("http://127.0.0.1:{metrics_port}"), log, "/health", 60)
}

pub fn socket(url: &str) -> SocketAddr {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap()
}

/// What an MQTT client made by hand saw: messages delivered to it, and
/// whether the broker closed or refused its connection.
#[derive(Debug, Default)]
pub struct RawSeen {
    pub connected: bool,
    pub refused: Option<String>,
    pub publishes: Vec<(String, Vec<u8>)>,
    pub dropped: usize,
}

/// An MQTT client with a device's certificate but any client id, will and
/// subscriptions: what an attacker holding that certificate can send.
/// Polls its own event loop; never reconnects.
pub async fn raw_client(
    h: &Harness,
    device: &str,
    client_id: &str,
    will: Option<rumqttc::LastWill>,
) -> (rumqttc::AsyncClient, Arc<Mutex<RawSeen>>, tokio::task::JoinHandle<()>) {
    use rumqttc::{Event, Packet};
    let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, device)
        .await
        .unwrap();
    let mut o = rumqttc::MqttOptions::new(client_id, "localhost", h.broker.port);
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        creds.tls().unwrap(),
    )))
    .set_keep_alive(Duration::from_secs(5))
    .set_max_packet_size(1 << 20, 1 << 20)
    .set_clean_session(true);
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (client, mut lp) = rumqttc::AsyncClient::new(o, 100);
    let seen: Arc<Mutex<RawSeen>> = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            match lp.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => s.lock().unwrap().connected = true,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    s.lock().unwrap().publishes.push((p.topic.clone(), p.payload.to_vec()))
                }
                Ok(_) => {}
                Err(e) => {
                    let mut s = s.lock().unwrap();
                    if s.connected {
                        s.dropped += 1;
                    } else {
                        s.refused = Some(e.to_string());
                    }
                    return;
                }
            }
        }
    });
    (client, seen, task)
}

/// An MQTT 5 client with a device's certificate and id, which may set user
/// properties and a will with properties: what a device speaking MQTT 5
/// can send. Polls its own event loop until aborted.
pub async fn raw_client_v5(
    h: &Harness,
    device: &str,
    will: Option<rumqttc::v5::mqttbytes::v5::LastWill>,
) -> (rumqttc::v5::AsyncClient, tokio::task::JoinHandle<()>) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{Event, MqttOptions};
    let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, device)
        .await
        .unwrap();
    let mut o = MqttOptions::new(device, "localhost", h.broker.port);
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        creds.tls().unwrap(),
    )))
    .set_keep_alive(Duration::from_secs(5))
    .set_clean_start(true);
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (client, mut lp) = rumqttc::v5::AsyncClient::new(o, 100);
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            match lp.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .expect("MQTT 5 client connected")
        .unwrap();
    (client, task)
}

/// Waits until a hand-made client is connected or refused.
pub async fn settled(seen: &Arc<Mutex<RawSeen>>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let s = seen.lock().unwrap();
            if s.connected || s.refused.is_some() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "MQTT client neither connected nor refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One device's flood: 60 KB bodies that are not JSON (QoS 0) alternating
/// with well-formed messages under a wrong key (QoS 1), as fast as its
/// connection takes them, for `secs`. Returns how many it published.
pub async fn flood(h: &Harness, device: &str, secs: u64) -> u64 {
    use fleetward_protocol::{Envelope, data_topic, new_message_id, raw};
    use rumqttc::QoS;
    let (client, seen, task) = raw_client(h, device, device, None).await;
    settled(&seen).await;
    let junk = format!("{{\"device_id\":\"{device}\",\"pad\":\"{}", "x".repeat(60_000));
    let topic = data_topic(device);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let (body, qos) = if sent.is_multiple_of(2) {
            (junk.clone(), QoS::AtMostOnce)
        } else {
            let env = Envelope::sign(
                b"not-the-device-key",
                device,
                chrono::Utc::now().timestamp(),
                &new_message_id(),
                raw(&serde_json::json!({"temperature": 20.0, "humidity": 50, "pressure": 1000, "wind_speed": 1})),
            );
            (env.to_json(), QoS::AtLeastOnce)
        };
        // Waits while the client's queue is full: the connection's pace.
        if client.publish(topic.as_str(), qos, false, body).await.is_err() {
            break;
        }
        sent += 1;
    }
    client.disconnect().await.ok();
    task.abort();
    sent
}

/// Resident memory of a process now, and its peak, in MiB (from /proc).
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
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
