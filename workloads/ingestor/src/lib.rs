//! fleetward ingestor: polls a bike-station source every interval and
//! produces one Kafka record per station (seed 000's `producer.py`, with
//! retries, validation, an idempotent producer and metrics).
//!
//! Records are the station's JSON with JCDecaux v1 field names, keyed by
//! station number so every update of a station lands in one partition, in
//! order.

pub mod metrics;
pub mod source;
pub mod station;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use fleetward_protocol::record::{RecordKey, mac_header};
use fleetward_service::http::MetricsServer;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::metrics::Metrics;
use crate::source::{ApiKey, Fetcher, RetryPolicy, Source};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    Jcdecaux,
    Gbfs,
}

/// Configuration, from flags or (as the operator sets them) environment.
#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "Polls a bike-station API and produces one Kafka record per station"
)]
pub struct Args {
    /// Which API to poll.
    #[arg(long, env = "STATION_SOURCE", value_enum)]
    pub source: SourceKind,
    /// JCDecaux API root; `/vls/v1/stations` is appended.
    #[arg(long, env = "JCDECAUX_BASE_URL", default_value = "https://api.jcdecaux.com")]
    pub jcdecaux_base_url: url::Url,
    /// JCDecaux contract (city), e.g. `Dublin`.
    #[arg(long, env = "JCDECAUX_CONTRACT", required_if_eq("source", "jcdecaux"))]
    pub jcdecaux_contract: Option<String>,
    /// JCDecaux API key (from a Secret). Never logged or shown in --help.
    #[arg(
        long,
        env = "JCDECAUX_API_KEY",
        hide_env_values = true,
        required_if_eq("source", "jcdecaux")
    )]
    pub jcdecaux_api_key: Option<ApiKey>,
    #[arg(long, env = "GBFS_STATION_INFORMATION_URL", required_if_eq("source", "gbfs"))]
    pub gbfs_station_information_url: Option<url::Url>,
    #[arg(long, env = "GBFS_STATION_STATUS_URL", required_if_eq("source", "gbfs"))]
    pub gbfs_station_status_url: Option<url::Url>,
    /// Recorded as `contract_name` of every GBFS station.
    #[arg(long, env = "GBFS_SYSTEM_NAME", required_if_eq("source", "gbfs"))]
    pub gbfs_system_name: Option<String>,
    #[arg(long, env = "POLL_INTERVAL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub poll_interval_seconds: u64,
    /// Timeout of one HTTP request.
    #[arg(long, env = "HTTP_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_timeout_ms: u64,
    /// Attempts per HTTP request (1 = no retry).
    #[arg(long, env = "HTTP_RETRY_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub http_retry_attempts: u32,
    /// First retry delay; doubles per retry, with jitter.
    #[arg(long, env = "HTTP_RETRY_BASE_MS", default_value_t = 500)]
    pub http_retry_base_ms: u64,
    #[arg(long, env = "HTTP_RETRY_MAX_MS", default_value_t = 30_000)]
    pub http_retry_max_ms: u64,
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    #[arg(long, env = "KAFKA_TOPIC")]
    pub kafka_topic: String,
    /// The StationFeed's record key (64 hex characters, from its Secret):
    /// every record carries its MAC, which the encryptor verifies.
    #[arg(long, env = "RECORD_KEY", hide_env_values = true)]
    pub record_key: Option<RecordKey>,
    /// Address of `/metrics` and `/health`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Log JSON lines instead of text.
    #[arg(long, env = "LOG_JSON")]
    pub log_json: bool,
    /// Stop after this many polls (0 = run until stopped). For one-off loads.
    #[arg(long, env = "MAX_POLLS", default_value_t = 0)]
    pub max_polls: u64,
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Kafka connection settings: {0}")]
    KafkaSettings(#[from] fleetward_protocol::kafka::KafkaSecurityError),
    #[error("metrics server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Args {
    pub fn to_source(&self) -> Result<Source, Error> {
        Ok(match self.source {
            SourceKind::Jcdecaux => Source::JcDecaux {
                base_url: self.jcdecaux_base_url.clone(),
                contract: self
                    .jcdecaux_contract
                    .clone()
                    .ok_or_else(|| Error::Config("JCDECAUX_CONTRACT is required".into()))?,
                api_key: self
                    .jcdecaux_api_key
                    .clone()
                    .ok_or_else(|| Error::Config("JCDECAUX_API_KEY is required".into()))?,
            },
            SourceKind::Gbfs => Source::Gbfs {
                station_information: self
                    .gbfs_station_information_url
                    .clone()
                    .ok_or_else(|| Error::Config("GBFS_STATION_INFORMATION_URL is required".into()))?,
                station_status: self
                    .gbfs_station_status_url
                    .clone()
                    .ok_or_else(|| Error::Config("GBFS_STATION_STATUS_URL is required".into()))?,
                system_name: self
                    .gbfs_system_name
                    .clone()
                    .ok_or_else(|| Error::Config("GBFS_SYSTEM_NAME is required".into()))?,
            },
        })
    }
}

/// Idempotent producer: a retried send after a lost acknowledgement does
/// not duplicate the record in the partition.
pub fn producer(brokers: &str) -> Result<FutureProducer, Error> {
    Ok(fleetward_protocol::kafka::client_config(brokers)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "60000")
        .set("client.id", "fleetward-ingestor")
        .create()?)
}

pub async fn serve_http(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), Error> {
    MetricsServer::new(
        metrics.registry.clone(),
        "fleetward-ingestor",
        env!("CARGO_PKG_VERSION"),
    )
    .serve(addr)
    .await
    .map_err(|source| Error::Serve { addr, source })
}

/// Polls until `shutdown` resolves (or `max_polls` is reached).
pub async fn run(
    args: Args,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let source = args.to_source()?;
    let fetcher = Fetcher::new(
        source,
        Duration::from_millis(args.http_timeout_ms),
        RetryPolicy {
            attempts: args.http_retry_attempts,
            base: Duration::from_millis(args.http_retry_base_ms),
            max: Duration::from_millis(args.http_retry_max_ms),
        },
    )
    .map_err(Error::HttpClient)?;
    let producer = producer(&args.kafka_brokers)?;
    let mut ticker = tokio::time::interval(Duration::from_secs(args.poll_interval_seconds));
    metrics.poll_interval.set(args.poll_interval_seconds as f64);
    // A poll that overran (retries) is not followed by a burst of catch-up polls.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        source = ?args.source,
        topic = %args.kafka_topic,
        interval_s = args.poll_interval_seconds,
        "ingestor started"
    );
    if args.record_key.is_none() {
        tracing::warn!("no RECORD_KEY: station records go unsigned, and an encryptor that verifies them refuses them");
    }
    tokio::pin!(shutdown);
    let mut polls = 0u64;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = poll_once(&fetcher, &producer, &args.kafka_topic, args.record_key.as_ref(), &metrics) => {}
        }
        polls += 1;
        if args.max_polls > 0 && polls >= args.max_polls {
            break;
        }
    }
    // Deliver what is queued before leaving.
    let _ = producer.flush(Duration::from_secs(10));
    tracing::info!("ingestor stopped");
    Ok(())
}

/// One poll: fetch, produce every station, wait for Kafka's
/// acknowledgements. Never fails the loop; failures are logged and counted.
pub async fn poll_once(
    fetcher: &Fetcher,
    producer: &FutureProducer,
    topic: &str,
    record_key: Option<&RecordKey>,
    metrics: &Metrics,
) {
    let started = Instant::now();
    let poll = match fetcher.poll(metrics).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "poll failed");
            metrics.errors.with_label_values(&[e.kind()]).inc();
            metrics.polls.with_label_values(&["error"]).inc();
            return;
        }
    };
    for why in &poll.skipped {
        tracing::warn!(reason = %why, "skipping malformed station");
    }
    metrics.skipped.inc_by(poll.skipped.len() as u64);

    let sends = poll.stations.iter().map(|s| async move {
        let (key, payload) = station::kafka_record(s);
        let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
        if let Some(k) = record_key {
            record = record.headers(mac_header(k, topic, key.as_bytes(), &payload));
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)
    });
    let results = futures::future::join_all(sends).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let failed = results.len() - ok;
    metrics.produced.inc_by(ok as u64);
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        tracing::warn!(error = %e, failed, "Kafka did not accept every station");
        metrics.errors.with_label_values(&["kafka"]).inc_by(failed as u64);
        metrics.polls.with_label_values(&["error"]).inc();
    } else {
        metrics.polls.with_label_values(&["ok"]).inc();
        metrics
            .last_success
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
    metrics.poll_duration.observe(started.elapsed().as_secs_f64());
    tracing::info!(
        produced = ok,
        skipped = poll.skipped.len(),
        ms = started.elapsed().as_millis() as u64,
        "poll done"
    );
}
