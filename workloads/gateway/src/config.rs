//! Gateway configuration: flags or the environment variables the operator's
//! Gateway reconciler sets on the container.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(version, about = "fleetward MQTT security gateway")]
pub struct Config {
    /// Name of the Gateway resource this process serves.
    #[arg(long, env = "FLEETWARD_GATEWAY")]
    pub gateway: String,
    /// Namespace of the Gateway and its Devices.
    #[arg(long, env = "FLEETWARD_NAMESPACE")]
    pub namespace: String,

    #[arg(long, env = "MQTT_HOST", default_value = "localhost")]
    pub mqtt_host: String,
    #[arg(long, env = "MQTT_PORT", default_value_t = 8883)]
    pub mqtt_port: u16,
    /// MQTT client id; the broker keeps this session (and queued QoS 1
    /// messages) while the gateway is away.
    #[arg(long, env = "MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,
    #[arg(long, env = "MQTT_CA_FILE")]
    pub mqtt_ca_file: PathBuf,
    #[arg(long, env = "MQTT_CERT_FILE")]
    pub mqtt_cert_file: PathBuf,
    #[arg(long, env = "MQTT_KEY_FILE")]
    pub mqtt_key_file: PathBuf,

    #[arg(long, env = "TIMESTAMP_WINDOW_SECONDS", default_value_t = 300)]
    pub timestamp_window_seconds: i64,
    /// How long a message may have waited at the broker (see the Gateway's
    /// `security.maxQueueSeconds`).
    #[arg(long, env = "MAX_QUEUE_SECONDS", default_value_t = 900)]
    pub max_queue_seconds: i64,
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 65536)]
    pub max_message_bytes: usize,
    #[arg(long, env = "RATE_PER_SECOND", default_value_t = 10.0)]
    pub rate_per_second: f64,
    #[arg(long, env = "RATE_BURST", default_value_t = 20.0)]
    pub rate_burst: f64,
    /// Follow the rate limit, burst, timestamp window and queue age of the
    /// Gateway FLEETWARD_GATEWAY from its spec, live (the operator sets it);
    /// the variables above are then only the defaults of missing fields.
    #[arg(long, env = "LIMITS_FROM_GATEWAY", default_value_t = false)]
    pub limits_from_gateway: bool,
    /// Write the Devices' `status.lastSeen` and `status.online`, at most this
    /// many a second (the operator sets 50); 0 writes none.
    #[arg(long, env = "DEVICE_STATUS_WRITES_PER_SECOND", default_value_t = 0.0)]
    pub device_status_writes_per_second: f64,

    /// HTTP backend base URL (seed 003): `POST {url}/device/{id}/data`.
    #[arg(long, env = "BACKEND_URL")]
    pub backend_url: Option<String>,
    #[arg(long, env = "BACKEND_TIMEOUT_MS", default_value_t = 5000)]
    pub backend_timeout_ms: u64,
    /// Kafka bootstrap servers; with KAFKA_TOPIC, valid telemetry is produced there.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    #[arg(long, env = "KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// The Gateway's record key (64 hex characters): every Kafka record
    /// carries its HMAC, which the topic's consumers verify.
    #[arg(long, env = "RECORD_KEY", hide_env_values = true)]
    pub record_key: Option<fleetward_protocol::record::RecordKey>,

    /// PostgreSQL URL for the audit trail; without it, audit goes to the log only.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Days this gateway's audit rows are kept: its partition of the audit
    /// trail is cut into weeks, and a week goes once every row in it is
    /// older. With LIMITS_FROM_GATEWAY, the Gateway's
    /// `spec.retention.auditDays`, followed live, instead.
    #[arg(long, env = "AUDIT_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub audit_retention_days: u32,

    #[arg(long, env = "COMMAND_API_PORT", default_value_t = 8443)]
    pub command_api_port: u16,
    #[arg(long, env = "COMMAND_API_BIND", default_value = "0.0.0.0")]
    pub command_api_bind: String,
    #[arg(long, env = "COMMAND_TLS_CERT_FILE")]
    pub command_tls_cert_file: PathBuf,
    #[arg(long, env = "COMMAND_TLS_KEY_FILE")]
    pub command_tls_key_file: PathBuf,
    /// Bearer key callers of the command API must present.
    #[arg(long, env = "COMMAND_API_KEY", hide_env_values = true)]
    pub command_api_key: String,
    /// A second, scoped key: admitted only for `read_meter` sent to an
    /// electricity meter (the one the billing workloads hold).
    #[arg(long, env = "COMMAND_METER_KEY", hide_env_values = true)]
    pub command_meter_key: Option<String>,

    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// The broker plugin's receipt token file (shared with the broker):
    /// a stamp on a message counts only when this token follows it.
    /// Without it every message is judged at the gateway's own receipt.
    #[arg(long, env = "RECEIPT_TOKEN_FILE")]
    pub receipt_token_file: Option<PathBuf>,

    /// The CRL file Mosquitto reads (in a volume both containers mount):
    /// the gateway writes it from the CRL ConfigMap on every change, and
    /// the broker's plugin has Mosquitto reload it.
    #[arg(long, env = "CRL_FILE")]
    pub crl_file: Option<PathBuf>,
    /// The CRL's ConfigMap (key `crl.pem`), watched through the API: the
    /// serials it revokes go to the broker's fleetward_broker plugin, which
    /// closes their sessions at once.
    #[arg(long, env = "CRL_CONFIGMAP")]
    pub crl_configmap: Option<String>,
    /// A file the gateway holds locked while it runs: the broker's preStop
    /// waits for the lock, so the broker outlives the gateway's drain.
    #[arg(long, env = "RUN_LOCK_FILE")]
    pub run_lock_file: Option<PathBuf>,

    #[arg(long, env = "LOG_JSON", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_json: bool,
    /// On SIGTERM: how long the messages already received may take to be
    /// forwarded and acknowledged before the gateway disconnects anyway
    /// (what is left unacknowledged the broker redelivers to the next
    /// gateway). Keep it below the pod's termination grace period.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 20)]
    pub shutdown_drain_seconds: u64,
}

/// The largest record the gateway's Kafka producer sends (librdkafka's
/// `message.max.bytes`, set explicitly, and just under Kafka's default
/// broker limit of 1 MiB): a bigger one is refused by Kafka every time.
pub const KAFKA_MAX_RECORD_BYTES: usize = 1_000_000;
/// What a telemetry record adds around a message's payload (ids, times,
/// names), with room to spare.
pub const KAFKA_RECORD_OVERHEAD: usize = 4096;

impl Config {
    /// The size limit the checks apply: `maxMessageBytes`, capped with a
    /// Kafka sink so that every message accepted fits in a record Kafka
    /// takes (a larger limit would let one message be retried forever and
    /// hold back every device behind it).
    pub fn message_limit(&self) -> usize {
        match &self.kafka_topic {
            Some(_) => self
                .max_message_bytes
                .min(KAFKA_MAX_RECORD_BYTES - KAFKA_RECORD_OVERHEAD),
            None => self.max_message_bytes,
        }
    }

    pub fn client_id(&self) -> String {
        self.mqtt_client_id
            .clone()
            .unwrap_or_else(|| format!("fleetward-gateway-{}-{}", self.namespace, self.gateway))
    }

    /// Largest MQTT packet the client accepts: room for oversize messages
    /// to arrive and be refused (and audited) by the size check, instead of
    /// the MQTT client dropping the whole connection.
    pub fn mqtt_max_packet(&self) -> usize {
        2 * self.max_message_bytes + 8192
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[&str]) -> Config {
        let base = [
            "gateway",
            "--gateway=gw",
            "--namespace=ns",
            "--mqtt-ca-file=/ca",
            "--mqtt-cert-file=/c",
            "--mqtt-key-file=/k",
            "--command-tls-cert-file=/c",
            "--command-tls-key-file=/k",
            "--command-api-key=x",
        ];
        Config::try_parse_from(base.iter().chain(extra)).unwrap()
    }

    #[test]
    fn with_kafka_the_message_limit_fits_a_record() {
        let big = "--max-message-bytes=16777216";
        let kafka = ["--kafka-brokers=k:9092", "--kafka-topic=t"];
        assert_eq!(config(&[big]).message_limit(), 16_777_216, "no Kafka: as given");
        let capped = config(&[&[big][..], &kafka[..]].concat()).message_limit();
        assert_eq!(capped, KAFKA_MAX_RECORD_BYTES - KAFKA_RECORD_OVERHEAD);
        let small = config(&[&["--max-message-bytes=65536"][..], &kafka[..]].concat());
        assert_eq!(small.message_limit(), 65536, "a smaller limit stays");
    }
}
