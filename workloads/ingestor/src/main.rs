//! The ingestor binary: configuration from the environment the operator
//! sets (see `Args`), `/metrics` and `/health`, stop on SIGTERM/SIGINT.

use std::sync::Arc;

use clap::Parser;
use fleetward_ingestor::metrics::Metrics;
use fleetward_ingestor::{Args, run, serve_http};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let metrics = Arc::new(Metrics::default());
    let http = tokio::spawn(serve_http(args.metrics_addr, metrics.clone()));
    let res = tokio::select! {
        res = run(args, metrics, shutdown()) => res,
        res = http => match res {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        },
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ingestor failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
