//! `/metrics` (Prometheus text format) and `/health`, served by the shared
//! server of every fleetward binary.

use std::net::SocketAddr;
use std::sync::Arc;

use fleetward_service::http::MetricsServer;

use crate::metrics::Metrics;

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    MetricsServer::new(
        metrics.registry.clone(),
        "fleetward-operator",
        env!("CARGO_PKG_VERSION"),
    )
    .serve(addr)
    .await
}
