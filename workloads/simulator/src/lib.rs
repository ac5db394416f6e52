//! A simulated device: connects to its gateway's broker with its own
//! certificate, publishes signed category payloads, verifies the signature
//! of commands it receives and acknowledges them, and can misbehave on
//! purpose (the attack modes) for tests and demos.

pub mod attack;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleetward_protocol::category::SampleState;
use fleetward_protocol::{
    Category, Command, Envelope, Rejection, ReplayWindow, command_topic, data_topic, new_message_id, raw,
    response_topic,
};
use fleetward_service::backoff::Backoff;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

/// The command action asking a meter for its reading now.
pub use fleetward_protocol::category::READ_METER;

#[derive(thiserror::Error, Debug)]
pub enum SimError {
    #[error("credentials for {device}: {reason}")]
    Credentials { device: String, reason: String },
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("mqtt: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
}

/// What a device holds: identity, certificate, key and HMAC secret.
#[derive(Clone)]
pub struct Credentials {
    pub device_id: String,
    pub category: Category,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub hmac: Vec<u8>,
    /// Kept after a rotation so commands signed just before it still verify.
    pub previous_hmac: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("device_id", &self.device_id)
            .field("category", &self.category)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// From the operator's Secret `<device>-credentials`.
    pub async fn from_secret(client: Client, namespace: &str, device: &str) -> Result<Self, SimError> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let secret = api.get(&fleetward_credentials::secret_name(device)).await?;
        Self::from_k8s(&secret, device)
    }

    pub fn from_k8s(secret: &Secret, device: &str) -> Result<Self, SimError> {
        let c = fleetward_credentials::Credentials::from_secret(secret).map_err(|e| SimError::Credentials {
            device: device.to_string(),
            reason: e.to_string(),
        })?;
        let category = Category::parse(&c.category).ok_or_else(|| SimError::Credentials {
            device: device.to_string(),
            reason: "unknown category".into(),
        })?;
        Ok(Self {
            device_id: c.device,
            category,
            cert_pem: c.cert_pem,
            key_pem: c.key_pem,
            ca_pem: c.ca_pem,
            hmac: c.hmac.into_bytes(),
            previous_hmac: c.previous_hmac.map(String::into_bytes),
        })
    }

    /// From a directory holding `tls.crt`, `tls.key`, `ca.crt`, `hmac.key`
    /// and `category` (what `kubectl get secret` would give a real device).
    pub fn from_dir(dir: &Path, device: &str) -> Result<Self, SimError> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).map_err(|e| SimError::Credentials {
                device: device.to_string(),
                reason: format!("{f}: {e}"),
            })
        };
        let category = Category::parse(read("category")?.trim()).ok_or_else(|| SimError::Credentials {
            device: device.to_string(),
            reason: "unknown category".into(),
        })?;
        Ok(Self {
            device_id: device.to_string(),
            category,
            cert_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
            ca_pem: read("ca.crt")?,
            hmac: read("hmac.key")?.trim().as_bytes().to_vec(),
            previous_hmac: None,
        })
    }

    /// The rustls client configuration of this identity.
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, SimError> {
        fleetward_protocol::tls::client_config(
            self.ca_pem.as_bytes(),
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
        )
        .map_err(|e| SimError::Tls(e.to_string()))
    }
}

/// Where and how a device connects.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    /// Seconds of clock skew accepted on commands.
    pub window_secs: i64,
    /// Acknowledge verified commands with an `{"ack": …}` data message.
    pub auto_ack: bool,
}

impl ConnectOptions {
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_string(),
            port,
            window_secs: 300,
            auto_ack: true,
        }
    }
}

/// Things that happen to a device.
#[derive(Debug)]
pub enum DeviceEvent {
    Connected,
    /// The backend's answer to one of our messages (`device/{id}/response`).
    Response(String),
    /// A command arrived; `verdict` says whether its signature, freshness
    /// and id checked out.
    Command {
        message_id: String,
        payload: String,
        verdict: Result<(), Rejection>,
    },
    /// A `device/{id}/command` message that is not even a command.
    BadCommand(String),
    Disconnected(String),
}

/// A connected simulated device.
pub struct Device {
    pub id: String,
    pub category: Category,
    creds: Arc<RwLock<Credentials>>,
    pub client: AsyncClient,
    state: std::sync::Mutex<SampleState>,
    /// Set by `stop`: the event loop ends instead of reconnecting.
    stopped: std::sync::atomic::AtomicBool,
}

impl Device {
    /// Connects and spawns the device's event loop; events arrive on the
    /// returned channel.
    pub async fn connect(
        creds: Credentials,
        opts: &ConnectOptions,
    ) -> Result<(Arc<Device>, mpsc::Receiver<DeviceEvent>), SimError> {
        let mut mqtt = MqttOptions::new(creds.device_id.clone(), opts.host.clone(), opts.port);
        mqtt.set_transport(Transport::Tls(TlsConfiguration::Rustls(creds.tls()?)));
        mqtt.set_keep_alive(Duration::from_secs(20));
        mqtt.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        mqtt.set_inflight(1000);
        // A persistent session: QoS 1 messages the broker has not yet
        // acknowledged when the connection drops are sent again on the
        // next connection (rumqttc drops them when the broker starts a
        // fresh session), and commands queued while away are delivered.
        mqtt.set_clean_session(false);
        let (client, eventloop) = AsyncClient::new(mqtt, 10_000);
        let device = Arc::new(Device {
            id: creds.device_id.clone(),
            category: creds.category,
            creds: Arc::new(RwLock::new(creds)),
            client,
            state: Default::default(),
            stopped: Default::default(),
        });
        let (tx, rx) = mpsc::channel(10_000);
        tokio::spawn(run(device.clone(), eventloop, tx, opts.clone()));
        Ok((device, rx))
    }

    /// Disconnects for good, as a switched-off device would: no reconnect,
    /// nothing answered. Its session stays at the broker.
    pub async fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.client.disconnect().await;
    }

    /// Installs new credentials (after a rotation); the old HMAC secret is
    /// kept for verifying commands signed just before.
    pub fn rotate(&self, mut creds: Credentials) {
        let mut cur = self.creds.write().expect("credentials lock");
        if creds.hmac != cur.hmac {
            creds.previous_hmac = Some(cur.hmac.clone());
        }
        *cur = creds;
    }

    pub fn hmac(&self) -> Vec<u8> {
        self.creds.read().expect("credentials lock").hmac.clone()
    }

    /// A signed message with `payload`, now.
    pub fn envelope(&self, payload: &serde_json::Value) -> Envelope {
        self.envelope_at(chrono::Utc::now().timestamp(), &new_message_id(), payload)
    }

    pub fn envelope_at(&self, timestamp: i64, message_id: &str, payload: &serde_json::Value) -> Envelope {
        Envelope::sign(&self.hmac(), &self.id, timestamp, message_id, raw(payload))
    }

    /// The next plausible reading of this device's category.
    pub fn reading(&self) -> serde_json::Value {
        self.category.sample(&mut self.state.lock().expect("sample lock"))
    }

    /// The answer to `cmd` when it asks this device for a meter reading
    /// (`{"action": "read_meter"}`) and the device is a meter.
    fn answer_read(&self, cmd: &Command) -> Option<serde_json::Value> {
        let payload: serde_json::Value = serde_json::from_str(cmd.payload.get()).ok()?;
        if payload.get("action")?.as_str()? != READ_METER {
            return None;
        }
        let state = self.state.lock().expect("sample lock");
        self.category.answer_read(&state, &cmd.message_id)
    }

    /// Publishes a signed reading; returns its message id.
    pub async fn send_reading(&self) -> Result<String, SimError> {
        let env = self.envelope(&self.reading());
        self.publish(&data_topic(&self.id), env.to_json().into_bytes()).await?;
        Ok(env.message_id)
    }

    /// Publishes raw bytes (QoS 1) on any topic; attacks use this.
    pub async fn publish(&self, topic: &str, body: Vec<u8>) -> Result<(), SimError> {
        self.client.publish(topic, QoS::AtLeastOnce, false, body).await?;
        Ok(())
    }

    /// Publishes raw bytes (QoS 1) as a retained message: one the broker
    /// would hand to every later subscriber, a replay it performs itself.
    pub async fn publish_retained(&self, topic: &str, body: Vec<u8>) -> Result<(), SimError> {
        self.client.publish(topic, QoS::AtLeastOnce, true, body).await?;
        Ok(())
    }

    fn verify_command(&self, cmd: &Command, now: i64, window: i64, seen: &mut ReplayWindow) -> Result<(), Rejection> {
        let creds = self.creds.read().expect("credentials lock");
        match cmd.verify(&creds.hmac, &self.id, now, window, seen) {
            Err(Rejection::BadSignature) => match &creds.previous_hmac {
                Some(prev) => cmd.verify(prev, &self.id, now, window, seen),
                None => Err(Rejection::BadSignature),
            },
            other => other,
        }
    }
}

async fn run(device: Arc<Device>, mut eventloop: EventLoop, tx: mpsc::Sender<DeviceEvent>, opts: ConnectOptions) {
    let mut seen = ReplayWindow::new();
    let mut backoff = Backoff::standard();
    loop {
        if device.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tx.try_send(DeviceEvent::Disconnected("stopped".into()));
            return;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::debug!(device = %device.id, session_present = ack.session_present, "connected");
                backoff.reset();
                let _ = device.client.try_subscribe(command_topic(&device.id), QoS::AtLeastOnce);
                let _ = device
                    .client
                    .try_subscribe(response_topic(&device.id), QoS::AtLeastOnce);
                let _ = tx.try_send(DeviceEvent::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ev = if p.topic == command_topic(&device.id) {
                    match Command::parse(&p.payload) {
                        Ok(cmd) => {
                            let now = chrono::Utc::now().timestamp();
                            let verdict = device.verify_command(&cmd, now, opts.window_secs, &mut seen);
                            // A verified `read_meter` is answered with the
                            // reading itself (which says which command it
                            // answers); anything else with an acknowledgement.
                            let reading = verdict.is_ok().then(|| device.answer_read(&cmd)).flatten();
                            if opts.auto_ack || reading.is_some() {
                                let result = if verdict.is_ok() { "ok" } else { "rejected" };
                                let answer = reading
                                    .unwrap_or_else(|| serde_json::json!({"ack": cmd.message_id, "result": result}));
                                let env = device.envelope(&answer);
                                let _ = device.client.try_publish(
                                    data_topic(&device.id),
                                    QoS::AtLeastOnce,
                                    false,
                                    env.to_json(),
                                );
                            }
                            DeviceEvent::Command {
                                message_id: cmd.message_id.clone(),
                                payload: cmd.payload.get().to_string(),
                                verdict,
                            }
                        }
                        Err(e) => DeviceEvent::BadCommand(e.to_string()),
                    }
                } else {
                    DeviceEvent::Response(String::from_utf8_lossy(&p.payload).into_owned())
                };
                if tx.send(ev).await.is_err() {
                    // Nobody listens any more; keep the connection serving publishes.
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.try_send(DeviceEvent::Disconnected(e.to_string()));
                backoff.wait().await;
            }
        }
    }
}
