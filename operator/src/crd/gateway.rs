use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::device::CertificateSpec;
use super::{PostgresTarget, SecretKeyRef};

/// An MQTT security gateway: the operator creates its CA (ECDSA P-256,
/// kept in `<name>-ca` and never regenerated while that Secret exists), the
/// broker's server certificate, a Mosquitto configuration (mutual TLS,
/// identity-as-username, per-device ACL, CRL), a client certificate for the
/// gateway workload, and a Deployment (Mosquitto + gateway) with a Service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.storage) || has(self.kafka)").message("storage reads the gateway's Kafka topic: set kafka.topic too"))]
#[x_kube(validation = Rule::new("self.provider != 'awsIot' || has(self.awsIot)").message("provider awsIot needs awsIot.region"))]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    shortname = "fwgw",
    doc = "An MQTT security gateway: its CA, the broker's and the gateway's certificates, a CRL, Mosquitto with mutual TLS, the gateway workload that checks every device message (signature, replay, rate, schema) and forwards it to Kafka, and its command API.",
    category = "fleetward",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Revoked", type_ = "integer", json_path = ".status.revokedCertificates"),
    printcolumn(name = "CA-Expiry", type_ = "string", json_path = ".status.caNotAfter"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Which broker the devices connect to: `mosquitto` (the operator runs
    /// one beside the gateway) or `awsIot` (AWS IoT Core: the operator
    /// registers the CA there and, for each Device, a thing, its
    /// certificate and a policy limited to its own topics).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("provider is immutable: create a new Gateway (its devices get new certificates) instead"))]
    pub provider: Provider,

    /// The AWS IoT Core account side, with `provider: awsIot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iot: Option<AwsIotSpec>,

    /// Lifetime of the gateway's CA. Only read when the CA is created.
    #[serde(default = "default_ca_validity")]
    #[schemars(range(min = 30, max = 36500))]
    pub ca_validity_days: i64,

    /// Lifetime and renewal of the broker's server certificate.
    #[serde(default = "default_server_cert")]
    pub server_certificate: CertificateSpec,

    /// Extra DNS names for the broker certificate (e.g. a load balancer's
    /// hostname). The Service's cluster DNS names and localhost are always
    /// included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub extra_dns_names: Vec<String>,

    /// Extra IP addresses for the broker certificate, for devices that reach
    /// the broker by address (a NodePort on a node's IP, a load balancer's
    /// IP). 127.0.0.1 is always included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 45)))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message("extraIpAddresses must be IP addresses"))]
    pub extra_ip_addresses: Vec<String>,

    /// How the broker is exposed.
    #[serde(default)]
    pub service_type: ServiceType,

    /// MQTT over TLS port of the broker and Service.
    #[serde(default = "default_mqtt_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub mqtt_port: i32,

    /// Where the broker keeps sessions and queued QoS 1 messages. Without
    /// it they live in the pod (emptyDir): a deleted or rescheduled pod
    /// loses the messages queued for the gateway. With it, a
    /// PersistentVolumeClaim `<name>-broker-data` keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<BrokerPersistence>,

    /// Message checks the gateway applies to every device message.
    #[serde(default)]
    pub security: SecurityPolicy,

    /// Forward valid messages over HTTP (seed 003's backend contract:
    /// `POST {url}/device/{id}/data`, the answer goes to `device/{id}/response`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSpec>,

    /// Produce valid messages to a Kafka topic, keyed by device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkSpec>,

    /// Store every accepted message in PostgreSQL: a telemetry writer (the
    /// encryptor workload) reads `kafka.topic` and writes one row per
    /// message, its payload encrypted with the Gateway's telemetry keyring
    /// (Secret `<name>-telemetry-keyring`, made once and kept when the
    /// Gateway goes, so stored rows stay readable). Needs `kafka`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<TelemetryStorage>,

    /// PostgreSQL for the audit trail of security events; without it the
    /// gateway writes them to its log only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<PostgresTarget>,

    /// How long stored rows are kept (a year by default). Rows go a week
    /// at a time, by dropping a partition once every row in it is older
    /// than this: a row lives at least its retention, at most a week more.
    #[serde(default)]
    pub retention: GatewayRetention,

    /// The HTTPS command API (`POST /command/{device_id}`).
    #[serde(default)]
    pub command_api: CommandApiSpec,

    /// Container images; defaults come from the operator's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<GatewayImages>,
}

/// Where devices connect.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Provider {
    #[default]
    Mosquitto,
    AwsIot,
}

/// AWS IoT Core settings. Credentials come from the operator's environment
/// (IRSA's web identity on EKS, the default chain elsewhere), never from
/// the resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsIotSpec {
    /// AWS region, e.g. `eu-west-1`.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
    /// Another address for the IoT control-plane API (a VPC endpoint, or a
    /// local AWS emulator in tests); the region's own by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = r"^https?://"))]
    pub endpoint_url: Option<String>,
}

fn default_ca_validity() -> i64 {
    3650
}

fn default_mqtt_port() -> i32 {
    8883
}

fn default_server_cert() -> CertificateSpec {
    CertificateSpec {
        validity_days: 365,
        renew_before_days: 30,
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryStorage {
    pub postgres: TelemetryPostgres,
    /// Change it to give the telemetry keyring a new primary key; older
    /// keys stay, so older rows keep decrypting.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub key_rotation: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryPostgres {
    /// Secret key holding a `postgres://` connection URL.
    pub connection_secret_ref: SecretKeyRef,
    /// Table the rows go to.
    #[serde(default = "default_telemetry_table")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub table: String,
}

/// Days each kind of this Gateway's rows is kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRetention {
    /// Telemetry rows (`storage`), by when the gateway accepted them.
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1, max = 36_500))]
    pub telemetry_days: i64,
    /// This gateway's audit rows (`audit`), by when the event happened.
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1, max = 36_500))]
    pub audit_days: i64,
}

impl Default for GatewayRetention {
    fn default() -> Self {
        Self {
            telemetry_days: default_retention_days(),
            audit_days: default_retention_days(),
        }
    }
}

/// A year (seed 004).
pub fn default_retention_days() -> i64 {
    365
}

fn default_telemetry_table() -> String {
    "telemetry".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerPersistence {
    /// Size of the volume, e.g. `1Gi`.
    #[serde(default = "default_broker_volume")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$"))]
    pub size: String,
    /// StorageClass of the claim; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_broker_volume() -> String {
    "1Gi".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Limits and windows of the gateway's message checks (seed 003).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicy {
    /// Accepted clock skew of a message timestamp, in seconds, either way.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1, max = 86400))]
    pub timestamp_window_seconds: i64,
    /// How long a message may wait at the broker (the gateway away, or
    /// slowed by its sinks) and still be checked: freshness is judged at
    /// the broker's receipt, and message ids are remembered this much
    /// longer than the window so that a replay is refused as long as a
    /// queued message is accepted. Older ones are refused as
    /// `expired_in_queue`. Memory per device: up to
    /// `burst + ratePerSecond * (2 * timestampWindowSeconds + maxQueueSeconds)` ids.
    #[serde(default = "default_max_queue")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_queue_seconds: i64,
    /// Largest accepted message, in bytes. With `kafka`, at most 995,904
    /// (a Kafka record's limit less room for the record's fields): a larger
    /// value is capped to it, so every accepted message fits a record.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 128, max = 16_777_216))]
    pub max_message_bytes: i64,
    /// Sustained messages per second allowed per device (token bucket rate).
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 100_000))]
    pub rate_per_second: i64,
    /// Burst allowed above the rate (token bucket size).
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: i64,
}

fn default_window() -> i64 {
    300
}
fn default_max_queue() -> i64 {
    900
}
fn default_max_bytes() -> i64 {
    65536
}
fn default_rate() -> i64 {
    10
}
fn default_burst() -> i64 {
    20
}

impl Default for SecurityPolicy {
    fn default() -> Self {
        Self {
            timestamp_window_seconds: default_window(),
            max_queue_seconds: default_max_queue(),
            max_message_bytes: default_max_bytes(),
            rate_per_second: default_rate(),
            burst: default_burst(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// Base URL of the backend, e.g. `https://backend.example:5000`.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// Request timeout in milliseconds.
    #[serde(default = "default_backend_timeout")]
    #[schemars(range(min = 10, max = 60000))]
    pub timeout_ms: i64,
}

fn default_backend_timeout() -> i64 {
    5000
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSinkSpec {
    /// Topic for validated telemetry.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
    /// Bootstrap servers; defaults to the operator's configured Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandApiSpec {
    /// HTTPS port of the command API.
    #[serde(default = "default_command_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Bearer key callers must present. When unset the operator generates
    /// one in the Secret `<name>-command-api` (key `api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
}

fn default_command_port() -> i32 {
    8443
}

impl Default for CommandApiSpec {
    fn default() -> Self {
        Self {
            port: default_command_port(),
            api_key_secret_ref: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayImages {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mosquitto: Option<String>,
    /// The telemetry writer (the encryptor image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<String>,
}

/// Observed state of a Gateway. Never holds key material.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// SHA-256 fingerprint of the CA certificate (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<Time>,
    /// Where devices connect, e.g. `mqtts://gw.ns.svc:8883`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Serial of the broker's server certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate_serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate_not_after: Option<Time>,
    /// Entries in the CRL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_certificates: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl_number: Option<i64>,
    /// Primary key id of the telemetry keyring (with `spec.storage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry_key_id: Option<String>,
    /// What is registered in AWS IoT Core (with `provider: awsIot`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_iot: Option<GatewayAwsIot>,
}

/// A Gateway's registrations in AWS IoT Core.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAwsIot {
    /// Id of the CA certificate registered with IoT Core.
    pub ca_certificate_id: String,
    pub ca_certificate_arn: String,
    /// The account's MQTT data endpoint (`iot:Data-ATS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_endpoint: Option<String>,
    /// The gateway workload's own certificate and policy there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_policy: Option<String>,
}
