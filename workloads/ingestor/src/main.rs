//! The ingestor binary: configuration from the environment the operator
//! sets (see `Args`), `/metrics` and `/health`, stop on SIGTERM/SIGINT.

use std::sync::Arc;

use clap::Parser;
use fleetward_ingestor::metrics::Metrics;
use fleetward_ingestor::{Args, run, serve_http};
use fleetward_service::{logging, shutdown};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    logging::init(logging::Format::json_if(args.log_json), "info");
    let metrics = Arc::new(Metrics::default());
    let http = tokio::spawn(serve_http(args.metrics_addr, metrics.clone()));
    let res = tokio::select! {
        res = run(args, metrics, shutdown::signal()) => res,
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
