use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// A bike-station feed (seed 000): an ingestor polls the source and
/// produces one Kafka record per station; an encryptor encrypts the
/// sensitive fields (Fernet) and stores rows in PostgreSQL. The operator
/// owns the feed's encryption keyring Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "StationFeed",
    namespaced,
    status = "StationFeedStatus",
    shortname = "fwfeed",
    doc = "A bike-station feed: an ingestor polls the station API and produces each record to Kafka; an encryptor encrypts its sensitive fields with the feed's keyring and stores them in PostgreSQL.",
    category = "fleetward",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.kafka.topic"),
    printcolumn(name = "Interval", type_ = "integer", json_path = ".spec.pollIntervalSeconds"),
    printcolumn(name = "Primary-Key", type_ = "string", json_path = ".status.primaryKeyId"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StationFeedSpec {
    /// Where station data comes from: exactly one of `jcdecaux` or `gbfs`.
    pub source: StationSource,

    /// Seconds between polls of the source.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 86400))]
    pub poll_interval_seconds: i64,

    pub kafka: FeedKafkaSpec,

    /// Station fields stored encrypted; the rest stay readable.
    #[serde(default = "default_sensitive")]
    #[schemars(length(min = 0, max = 8))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g == f))").message("sensitiveFields must not repeat a field"))]
    pub sensitive_fields: Vec<StationField>,

    /// Where the encryptor stores rows.
    pub postgres: FeedPostgresSpec,

    /// How long station rows are kept (a year by default), by their
    /// `last_update`: rows go a week at a time, by dropping a partition
    /// once every row in it is older; a record older than this when it
    /// arrives is not stored.
    #[serde(default)]
    pub retention: FeedRetention,

    /// Bump to rotate the encryption key: a new primary key is added to the
    /// keyring; older keys stay so existing rows remain readable.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub key_rotation: i64,

    /// Container images; defaults come from the operator's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<FeedImages>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedRetention {
    /// Days a station row is kept.
    #[serde(default = "crate::crd::gateway::default_retention_days")]
    #[schemars(range(min = 1, max = 36_500))]
    pub days: i64,
}

impl Default for FeedRetention {
    fn default() -> Self {
        Self {
            days: crate::crd::gateway::default_retention_days(),
        }
    }
}

fn default_interval() -> i64 {
    60
}

fn default_sensitive() -> Vec<StationField> {
    vec![StationField::Address, StationField::ContractName]
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jcdecaux) != has(self.gbfs)").message("set exactly one of source.jcdecaux or source.gbfs"))]
pub struct StationSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jcdecaux: Option<JcDecauxSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbfs: Option<GbfsSource>,
}

/// JCDecaux VLS API v1: `GET {baseUrl}/vls/v1/stations?apiKey=…&contract=…`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JcDecauxSource {
    #[serde(default = "default_jcdecaux_url")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub base_url: String,
    /// Contract (city), e.g. `Dublin`.
    #[schemars(length(min = 1, max = 100))]
    pub contract: String,
    /// Secret key holding the API key.
    pub api_key_secret_ref: SecretKeyRef,
}

fn default_jcdecaux_url() -> String {
    "https://api.jcdecaux.com".into()
}

/// General Bikeshare Feed Specification: `station_information` and
/// `station_status`, joined by `station_id`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GbfsSource {
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub station_information_url: String,
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub station_status_url: String,
    /// Contract name recorded with each station (GBFS has none).
    #[schemars(length(min = 1, max = 100))]
    pub system_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedKafkaSpec {
    /// Topic the ingestor produces to and the encryptor consumes.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic: String,
    /// Topic for records the encryptor cannot parse; default `<topic>.dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub dead_letter_topic: Option<String>,
    /// Bootstrap servers; defaults to the operator's configured Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedPostgresSpec {
    /// Secret key holding a `postgres://` connection URL.
    pub connection_secret_ref: SecretKeyRef,
    /// Table the rows go to.
    #[serde(default = "default_table")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub table: String,
}

fn default_table() -> String {
    "stations".into()
}

/// Station fields that may be encrypted (JCDecaux v1 names).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StationField {
    Address,
    ContractName,
    Name,
    Position,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedImages {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingestor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryptor: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StationFeedStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Key id new rows are encrypted with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_key_id: Option<String>,
    /// Every key id in the keyring (old ones still decrypt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
}
