//! The fleetward operator binary.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use fleetward_operator::context::{Config, Context};
use fleetward_operator::crd::{Device, Gateway};
use fleetward_operator::metrics::Metrics;
use kube::api::ListParams;
use kube::{Api, Client};

#[derive(Parser, Debug)]
#[command(version, about = "Kubernetes operator for a secure IoT fleet")]
struct Args {
    /// Address for /metrics and /healthz.
    #[arg(long, env = "FLEETWARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "FLEETWARD_LOG_JSON")]
    log_json: bool,
    #[arg(long, env = "FLEETWARD_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
    #[arg(long, env = "FLEETWARD_MOSQUITTO_IMAGE")]
    mosquitto_image: Option<String>,
    #[arg(long, env = "FLEETWARD_INGESTOR_IMAGE")]
    ingestor_image: Option<String>,
    #[arg(long, env = "FLEETWARD_ENCRYPTOR_IMAGE")]
    encryptor_image: Option<String>,
    #[arg(long, env = "FLEETWARD_BILLING_IMAGE")]
    billing_image: Option<String>,
    /// Kafka bootstrap servers for resources that do not name their own.
    #[arg(long, env = "FLEETWARD_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Exit when stdin closes: lets a test harness tie the operator's
    /// lifetime to its own, even when the harness is killed.
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube_runtime=warn".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let mut config = Config::default();
    let set = |slot: &mut String, v: Option<String>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut config.gateway_image, args.gateway_image);
    set(&mut config.mosquitto_image, args.mosquitto_image);
    set(&mut config.ingestor_image, args.ingestor_image);
    set(&mut config.encryptor_image, args.encryptor_image);
    set(&mut config.billing_image, args.billing_image);
    set(&mut config.kafka_bootstrap, args.kafka_bootstrap);

    if args.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
    }

    let client = Client::try_default().await?;
    // Fail fast with a useful message when the CRDs are not installed.
    for (kind, res) in [
        (
            "Device",
            Api::<Device>::all(client.clone())
                .list(&ListParams::default().limit(1))
                .await
                .map(|_| ()),
        ),
        (
            "Gateway",
            Api::<Gateway>::all(client.clone())
                .list(&ListParams::default().limit(1))
                .await
                .map(|_| ()),
        ),
    ] {
        if let Err(e) = res {
            anyhow::bail!("cannot list {kind} resources ({e}); are the CRDs installed? `kubectl apply -f crds/`");
        }
    }

    let metrics = Arc::new(Metrics::default());
    let ctx = Context::new(client, config, metrics.clone());
    tracing::info!("fleetward operator starting");
    let http = tokio::spawn(fleetward_operator::http::serve(args.http_addr, metrics));
    tokio::select! {
        _ = fleetward_operator::controllers::run(ctx) => {
            tracing::info!("controllers stopped");
        }
        res = http => {
            anyhow::bail!("metrics server stopped: {res:?}");
        }
    }
    Ok(())
}
