//! fleetward encryptor: consumes station records (a StationFeed's) or
//! device telemetry (a Gateway's) from Kafka, encrypts the sensitive fields
//! as Fernet tokens with the keyring's primary key, and stores rows in
//! PostgreSQL in batches, idempotently, committing offsets only after the
//! rows are durable (seed 000's `encryption.py`, made crash-safe); what it
//! cannot parse goes to a dead-letter topic, sealed (`dead_letter`). Also
//! home of the export CLI (`fleetward-stations`).

pub mod db;
pub mod dead_letter;
pub mod error;
pub mod export;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetward_service::http::MetricsServer;

use crate::db::{RecordKind, TableName};
use crate::metrics::Metrics;
use crate::pipeline::Settings;
use crate::record::Sensitive;
use fleetward_protocol::record::RecordKey;

/// Configuration, from flags or (as the operator sets them) environment.
#[derive(Parser, Debug, Clone)]
#[command(version, about = "Kafka → Fernet field encryption → PostgreSQL")]
pub struct Args {
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    #[arg(long, env = "KAFKA_TOPIC")]
    pub kafka_topic: String,
    /// Consumer group; one per feed.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "fleetward-encryptor")]
    pub kafka_group_id: String,
    /// How long the group waits for a silent member before handing its
    /// partitions to others: after a crash, the replacement waits this long.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u32,
    /// Where unparseable records go, sealed (see `dead_letter`); default
    /// `<topic>.dlq`.
    #[arg(long, env = "DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// `postgres://` URL (from a Secret: it holds the password). Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// What the topic carries: `stations` (from an ingestor) or `telemetry`
    /// (from a gateway).
    #[arg(long, env = "RECORD_KIND", default_value = "stations")]
    pub kind: RecordKind,
    /// Table the rows go to; default `stations` or `telemetry` by kind.
    #[arg(long, env = "TABLE")]
    pub table: Option<TableName>,
    /// Station fields to encrypt, comma-separated: address, contract_name,
    /// name, position. (Telemetry always encrypts its whole payload.)
    #[arg(long, env = "SENSITIVE_FIELDS", default_value = "address,contract_name")]
    pub sensitive_fields: Sensitive,
    /// The keyring (`keyring.json` of the feed's keyring Secret, mounted).
    #[arg(long, env = "KEYRING_FILE")]
    pub keyring_file: PathBuf,
    /// How often the keyring file is checked for a rotation.
    #[arg(long, env = "KEYRING_RELOAD_SECONDS", default_value_t = 10)]
    pub keyring_reload_seconds: u64,
    /// Days a row is kept (by `last_update` for stations, `received_at`
    /// for telemetry): the table is partitioned by week, and a week goes
    /// once its every row is older than this (see `fleetward_partitions`).
    /// A record older than this when it arrives is not stored.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_days: u32,
    #[arg(long, env = "BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub batch_size: u32,
    #[arg(long, env = "BATCH_TIMEOUT_MS", default_value_t = 200)]
    pub batch_timeout_ms: u64,
    /// The producer's record key (64 hex characters, from the Gateway's or
    /// StationFeed's Secret). Records without its valid MAC are
    /// dead-lettered.
    #[arg(long, env = "RECORD_KEY", hide_env_values = true)]
    pub record_key: Option<RecordKey>,
    /// Address of `/metrics` and `/health`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    #[arg(long, env = "LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    /// The pipeline's settings: these arguments and the Kafka connection's
    /// security from the environment.
    pub fn settings(&self) -> Result<Settings, fleetward_protocol::kafka::KafkaSecurityError> {
        Ok(Settings {
            brokers: self.kafka_brokers.clone(),
            kafka: fleetward_protocol::kafka::Security::from_env()?,
            topic: self.kafka_topic.clone(),
            group_id: self.kafka_group_id.clone(),
            session_timeout_ms: self.kafka_session_timeout_ms,
            dead_letter_topic: self
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| format!("{}.dlq", self.kafka_topic)),
            kind: self.kind,
            table: self.table.clone().unwrap_or_else(|| {
                match self.kind {
                    RecordKind::Stations => "stations",
                    RecordKind::Telemetry => "telemetry",
                }
                .parse()
                .expect("a valid table name")
            }),
            sensitive: self.sensitive_fields.clone(),
            batch_size: self.batch_size as usize,
            batch_timeout: Duration::from_millis(self.batch_timeout_ms),
            record_key: self.record_key.clone(),
            retention: Duration::from_secs(u64::from(self.retention_days) * 86_400),
        })
    }
}

pub async fn serve_http(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    MetricsServer::new(
        metrics.registry.clone(),
        "fleetward-encryptor",
        env!("CARGO_PKG_VERSION"),
    )
    .serve(addr)
    .await
}
