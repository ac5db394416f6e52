//! The encryptor binary: configuration from the environment the operator
//! sets (see `Args`), `/metrics` and `/health`, stop on SIGTERM/SIGINT.
//! Stopping (or being killed) at any point loses and duplicates nothing:
//! see `pipeline`.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetward_encryptor::metrics::Metrics;
use fleetward_encryptor::pipeline::{self, SharedKeyring};
use fleetward_encryptor::{Args, keys, serve_http};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "encryptor failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let keyring = SharedKeyring::new(keys::from_file(&args.keyring_file)?);
    let metrics = Arc::new(Metrics::default());
    let settings = args.settings();
    tracing::info!(
        topic = %settings.topic,
        group = %settings.group_id,
        dead_letter_topic = %settings.dead_letter_topic,
        table = settings.table.as_str(),
        sensitive = ?settings.sensitive.names(),
        primary_key = keyring.current().primary_id(),
        "encryptor starting"
    );
    let http = tokio::spawn(serve_http(args.metrics_addr, metrics.clone()));
    tokio::spawn(pipeline::watch_keyring_file(
        args.keyring_file.clone(),
        keyring.clone(),
        Duration::from_secs(args.keyring_reload_seconds.max(1)),
        metrics.clone(),
    ));
    let pipeline = pipeline::start(settings, &args.database_url, keyring, metrics).await?;
    tokio::select! {
        _ = pipeline.run() => {}
        res = http => {
            res??;
        }
        _ = shutdown() => tracing::info!("encryptor stopping"),
    }
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
