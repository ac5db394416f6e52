//! The billing binary: configuration from the environment the operator
//! sets on the Tariff's Deployment (see `Args`), `/metrics` and `/health`
//! on their own port, the API, the readings consumer and the scheduler;
//! stops on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetward_billing::api::{self, Api};
use fleetward_billing::ingest;
use fleetward_billing::metrics::Metrics;
use fleetward_billing::read::Gateway;
use fleetward_billing::service::Service;
use fleetward_service::http::MetricsServer;
use fleetward_service::{logging, shutdown};
use kube::ResourceExt;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "fleetward billing: meter readings → monthly bills, payments and defaulters"
)]
struct Args {
    #[arg(long, env = "FLEETWARD_NAMESPACE")]
    namespace: String,
    #[arg(long, env = "TARIFF_NAME")]
    tariff: String,
    /// `postgres://` URL (from a Secret). Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: String,
    /// The gateway's telemetry topic.
    #[arg(long, env = "KAFKA_TOPIC")]
    kafka_topic: String,
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "fleetward-billing")]
    kafka_group_id: String,
    /// The Gateway's record key (64 hex characters): a record without its
    /// valid MAC is not a reading (counted `unsigned`), whoever produced it.
    #[arg(long, env = "RECORD_KEY", hide_env_values = true)]
    record_key: Option<fleetward_protocol::record::RecordKey>,
    /// The gateway's command API, `https://host:port`; without it runs
    /// bill from telemetry alone (every bill estimated).
    #[arg(long, env = "GATEWAY_URL")]
    gateway_url: Option<String>,
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    gateway_api_key: Option<String>,
    /// The Gateway's CA certificate (PEM).
    #[arg(long, env = "GATEWAY_CA_FILE")]
    gateway_ca_file: Option<std::path::PathBuf>,
    /// Meters asked at once.
    #[arg(long, env = "READ_CONCURRENCY", default_value_t = 64)]
    read_concurrency: usize,
    #[arg(long, env = "BILLING_API_KEY", hide_env_values = true)]
    api_key: String,
    #[arg(long, env = "API_RATE_PER_SECOND", default_value_t = 20)]
    api_rate_per_second: u32,
    #[arg(long, env = "API_BURST", default_value_t = 40)]
    api_burst: u32,
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Days readings are kept (the Tariff's `spec.retention.readingsDays`).
    /// The namespace's readings go a week at a time once older than the
    /// longest retention of its Tariffs.
    #[arg(long, env = "READINGS_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    readings_retention_days: u32,
    /// How often the scheduler looks at the Tariff and the database.
    #[arg(long, env = "TICK_SECONDS", default_value_t = 5)]
    tick_seconds: u64,
    #[arg(long, env = "LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    logging::init(logging::Format::json_if(args.log_json), "info");
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "billing failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.api_key.len() < 32 {
        anyhow::bail!("BILLING_API_KEY must be at least 32 characters");
    }
    let metrics = Arc::new(Metrics::default());
    let gateway = match (&args.gateway_url, &args.gateway_api_key, &args.gateway_ca_file) {
        (Some(url), Some(key), Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("reading {}: {e}", ca.display()))?;
            Some(Gateway::new(url, key, &pem).map_err(anyhow::Error::msg)?)
        }
        (None, None, None) => None,
        _ => anyhow::bail!("GATEWAY_URL, GATEWAY_API_KEY and GATEWAY_CA_FILE go together"),
    };
    // Lazy: a database down at start is reported, not a crash loop.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&args.database_url)?;
    let client = kube::Client::try_default().await?;
    let tariffs: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        &args.namespace,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("fleetward.io", "v1alpha1", "Tariff")),
    );
    let created = tariffs
        .get(&args.tariff)
        .await?
        .creation_timestamp()
        .map(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or_default())
        .unwrap_or_else(chrono::Utc::now);
    let service = Service::new(
        pool.clone(),
        client,
        args.namespace.clone(),
        args.tariff.clone(),
        gateway,
        metrics.clone(),
        args.read_concurrency,
    );
    tracing::info!(tariff = %args.tariff, namespace = %args.namespace, topic = %args.kafka_topic,
        on_demand_reads = service.gateway.is_some(), "billing starting");
    let record_key = args.record_key.clone();
    if record_key.is_none() {
        tracing::warn!("no RECORD_KEY: readings are taken from the topic without proof that the gateway produced them");
    }
    let consumer = ingest::consumer(&args.kafka_brokers, &args.kafka_topic, &args.kafka_group_id)?;
    let health = MetricsServer::new(metrics.registry.clone(), "fleetward-billing", env!("CARGO_PKG_VERSION"));
    let api = Api::new(service.clone(), &args.api_key, args.api_rate_per_second, args.api_burst);
    tokio::spawn(fleetward_billing::db::keep_readings(
        pool.clone(),
        args.namespace.clone(),
        args.tariff.clone(),
        args.readings_retention_days,
    ));
    tokio::select! {
        r = health.serve(args.metrics_addr) => r?,
        r = api::serve(args.http_addr, api) => r?,
        _ = ingest::run(consumer, pool, args.namespace.clone(), record_key, metrics) => {}
        _ = service.clone().schedule(created, Duration::from_secs(args.tick_seconds.max(1))) => {}
        _ = shutdown::signal() => tracing::info!("billing stopping"),
    }
    Ok(())
}
