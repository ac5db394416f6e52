//! The encryptor binary: configuration from the environment the operator
//! sets (see `Args`), `/metrics` and `/health`, stop on SIGTERM/SIGINT.
//! Stopping (or being killed) at any point loses and duplicates nothing:
//! see `pipeline`.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetward_encryptor::keys::{self, SharedKeyring};
use fleetward_encryptor::metrics::Metrics;
use fleetward_encryptor::pipeline;
use fleetward_encryptor::{Args, serve_http};
use fleetward_service::{logging, shutdown};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    logging::init(logging::Format::json_if(args.log_json), "info");
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
    let settings = args.settings()?;
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
    tokio::spawn(keys::watch_keyring_file(
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
        _ = shutdown::signal() => tracing::info!("encryptor stopping"),
    }
    Ok(())
}
